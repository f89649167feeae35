"""Sampling: `sample(sde, score_fn, shape, sampler=...)` and the pluggable samplers behind it.

Samplers are objects (`Sampler`, or a bare `Predictor` run without corrector); the names of API.md map
to them only in `sample` through the local table in `_from_name` — there is no global registry.

NFE: pass `stats={}` to `sample` and it is filled with `{"nfe": score evaluations counted, "steps", "sampler"}`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .._utils import check_tensor, trusted
from ..sde import SDE, _check_shape
from .base import Corrector, Predictor, Sampler, ScoreFn
from .correctors import AnnealedLangevin, LangevinCorrector, NoneCorrector
from .denoise import tweedie_denoise
from .dpm_solver import DPMSolver
from .ode import ODESampler, ProbabilityFlowFunc
from .pc import PCSampler
from .predictors import EulerMaruyama, NonePredictor, ReverseDiffusion
from .sde import SDESampler, TorchSDEReverse
from . import timesteps

__all__ = [
    "sample",
    "Sampler",
    "Predictor",
    "Corrector",
    "PCSampler",
    "EulerMaruyama",
    "ReverseDiffusion",
    "NonePredictor",
    "LangevinCorrector",
    "AnnealedLangevin",
    "NoneCorrector",
    "SDESampler",
    "TorchSDEReverse",
    "ODESampler",
    "ProbabilityFlowFunc",
    "DPMSolver",
    "tweedie_denoise",
    "timesteps",
    "SAMPLERS",
]

SAMPLERS = ("euler_maruyama", "reverse_diffusion", "pc", "langevin", "sde", "ode", "dpm_solver")


def _from_name(name: str, options: dict) -> Sampler:
    """The sampler called `name` in API.md, built with `options`."""
    table: dict[str, Callable[..., Sampler]] = {
        "euler_maruyama": lambda **kw: PCSampler(EulerMaruyama(), "none", **kw),
        "reverse_diffusion": lambda **kw: PCSampler(ReverseDiffusion(), "none", **kw),
        "pc": PCSampler,
        "langevin": lambda corrector_steps=1, **kw: PCSampler("none", "ald", corrector_steps=corrector_steps, **kw),
        "sde": SDESampler,
        "ode": ODESampler,
        "dpm_solver": DPMSolver,
    }
    if name not in table:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} or a Sampler object, got {name!r}")
    try:
        return table[name](**options)
    except TypeError as e:
        raise TypeError(f"bad option for sampler={name!r}: {e}") from None


def _resolve_sampler(sampler, options: dict) -> Sampler:
    if isinstance(sampler, str):
        return _from_name(sampler, options)
    if isinstance(sampler, type) and issubclass(sampler, (Sampler, Predictor)):
        sampler = sampler(**options)
        options = {}
    if options:
        raise TypeError(f"sampler options {sorted(options)} apply to sampler names; set them on the {type(sampler).__name__} object")
    if isinstance(sampler, Sampler):
        return sampler
    if isinstance(sampler, Predictor):
        return PCSampler(sampler, "none")
    raise TypeError(f"sampler must be a name ({', '.join(SAMPLERS)}), a Sampler or a Predictor, got {type(sampler).__name__}")


class _CountingScore:
    """Wraps a score function and counts its calls: NFE from a counter, not from formulas (a host-side int)."""

    def __init__(self, fn: ScoreFn):
        self.fn, self.calls = fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(x, t)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return steps


def _initial_state(sde: SDE, shape, x_T, generator, device, dtype) -> Tensor:
    if x_T is not None:
        check_tensor(x_T, "x_T", min_ndim=2)
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        return x_T.to(device=device or x_T.device, dtype=dtype or x_T.dtype)
    if shape is None:
        raise ValueError("shape is required when x_T is not given")
    shape = _check_shape(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be batch-first with at least 2 dims, e.g. (B, D); got {shape}")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if device is None and generator is not None:
        device = generator.device
    return sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Optional[Sequence[int]],
    *,
    sampler: Union[str, Sampler, Predictor] = "pc",
    steps: int = 1000,
    x_T: Optional[Tensor] = None,
    denoise: bool = True,
    eps: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[torch.device, str]] = None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    stats: Optional[dict] = None,
    **sampler_options,
) -> Tensor:
    """Draw samples by solving the reverse-time SDE or probability-flow ODE of `sde` from `T` down to `eps`.

    `sampler` is a name (`euler_maruyama`, `reverse_diffusion`, `pc`, `langevin`, `sde`, `ode`, `dpm_solver`;
    `sampler_options` go to its constructor) or a `Sampler`/`Predictor` object. `x_T` replaces the prior draw.
    `denoise` ends with one Tweedie step at `eps` (1 NFE). Runs under `torch.no_grad()` (a score function that
    needs autograd can re-enable it inside). If `stats` is a dict it receives `nfe` (score evaluations counted),
    `steps` and `sampler`. Same `generator` state, same samples."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    steps = _check_steps(steps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps < sde.T):
        raise ValueError(f"eps must be a number in (0, T={sde.T}), got {eps!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict or None, got {type(stats).__name__}")
    solver = _resolve_sampler(sampler, sampler_options)
    solver.check(sde)
    x = _initial_state(sde, shape, x_T, generator, device, dtype)
    counted = _CountingScore(score_fn)
    with torch.no_grad(), trusted():
        x = solver.run(sde, counted, x, steps=steps, eps=float(eps), generator=generator, progress=progress)
        if denoise:
            x = tweedie_denoise(sde, counted, x, torch.full((x.shape[0],), float(eps), device=x.device, dtype=x.dtype))
    if stats is not None:
        stats.update(nfe=counted.calls, steps=steps, sampler=sampler if isinstance(sampler, str) else repr(solver))
    return x
