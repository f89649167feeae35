"""Sampling: `sample(sde, score_fn, shape, sampler=...)` — the one loop — and the pluggable samplers behind it.

Samplers are step objects (`Sampler`, see `base.py`); the names of API.md map to them only here, through the
local table in `_from_name` — there is no global registry.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._utils import check_batch, check_callable, check_eps, check_generator, check_int, check_shape
from ..sde import SDE, LinearSDE
from .base import Corrector, Noise, NoiseSampler, Predictor, Sampler, ScoreFn, StepHook
from .correctors import AnnealedLangevin, LangevinCorrector, NoneCorrector
from .denoise import tweedie_denoise
from .dpm_solver import DPMSolver
from .ode import METHODS as ODE_METHODS, ODESampler, ProbabilityFlowField
from .pc import PCSampler
from .predictors import AffineStep, EulerMaruyama, NonePredictor, ReverseDiffusion
from .sde import SDE_METHODS, SDESampler, TorchSDEReverse
from . import timesteps

__all__ = [
    "sample",
    "Sampler",
    "Predictor",
    "Corrector",
    "Noise",
    "StepHook",
    "PCSampler",
    "AffineStep",
    "EulerMaruyama",
    "ReverseDiffusion",
    "NonePredictor",
    "LangevinCorrector",
    "AnnealedLangevin",
    "NoneCorrector",
    "SDESampler",
    "TorchSDEReverse",
    "ODESampler",
    "ProbabilityFlowField",
    "DPMSolver",
    "tweedie_denoise",
    "timesteps",
    "SAMPLERS",
    "sampler_methods",
    "CountingScore",
]

SAMPLERS = ("euler_maruyama", "reverse_diffusion", "pc", "langevin", "sde", "ode", "dpm_solver")


def sampler_methods(name: str) -> tuple:
    """The `method` values the sampler called `name` accepts (empty if it takes none)."""
    return {"sde": tuple(SDE_METHODS), "ode": tuple(ODE_METHODS)}.get(name, ())


def _from_name(name: str, options: dict) -> Sampler:
    """The sampler called `name` in API.md, built with `options`."""
    table: dict[str, Callable[..., Sampler]] = {
        "euler_maruyama": EulerMaruyama,
        "reverse_diffusion": ReverseDiffusion,
        "pc": PCSampler,
        # NCSN's geometric noise levels are a grid uniform in log-SNR: one noise schedule fits every SDE's clock
        "langevin": lambda corrector_steps=1, timesteps="log_snr", **kw: PCSampler(
            "none", "ald", corrector_steps=corrector_steps, timesteps=timesteps, **kw),
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
    if isinstance(sampler, type) and issubclass(sampler, Sampler):
        try:
            sampler = sampler(**options)
        except TypeError as e:
            raise TypeError(f"bad option for sampler={sampler.__name__}: {e}") from None
        options = {}
    if options:
        raise TypeError(f"sampler options {sorted(options)} apply to sampler names; set them on the {type(sampler).__name__} object")
    if isinstance(sampler, Sampler):
        return sampler
    raise TypeError(f"sampler must be a name ({', '.join(SAMPLERS)}) or a Sampler, got {type(sampler).__name__}")


class CountingScore:
    """A score function that counts its calls (NFE from a counter, not from formulas; a host-side int) and checks
    the first call's output: a tensor shaped exactly like `x` (metadata, no sync) and finite (one host sync)."""

    def __init__(self, fn: ScoreFn, name: str = "score_fn"):
        self.fn, self.calls, self.name = fn, 0, name

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        s = self.fn(x, t)
        if self.calls == 1:
            if not isinstance(s, Tensor) or s.shape != x.shape:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"{self.name} must return a tensor shaped like x {tuple(x.shape)}, got {got}")
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"{self.name} returned NaN or inf at its first evaluation (t={float(t.flatten()[0]):g})")
        return s


def _initial_state(sde: SDE, shape, x_T, generator, device, dtype) -> Tensor:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if x_T is not None:
        check_batch(x_T, "x_T")
        if shape is not None and tuple(check_shape(shape)) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        return x_T.to(device=device or x_T.device, dtype=dtype or x_T.dtype)
    if shape is None:
        raise ValueError("shape is required when x_T is not given")
    shape = check_shape(shape, min_ndim=2)
    if device is None and generator is not None:
        device = generator.device
    return sde.prior_sample(shape, generator=generator, device=device, dtype=dtype)


def _resolve_conditioning(sde: SDE, solver: Sampler, condition, conditioning, x: Tensor):
    """`(hook, bound observation)` for `sample`'s `condition`/`conditioning`, checked against the sampler."""
    from ..conditioning import Method, resolve
    from ..observation import Observation

    if condition is None:
        if conditioning is None:
            return None, None
        if isinstance(conditioning, StepHook) and not isinstance(conditioning, Method):
            if solver.whole:
                raise ValueError(f"conditioning needs a sampler that steps on a grid; {solver!r} solves in one call")
            return conditioning, None  # a user's own hook
        raise ValueError("conditioning was given without condition= (an Observation or Inpainting)")
    if not isinstance(condition, Observation):
        raise TypeError(f"condition must be a scoresde.Observation or Inpainting, got {type(condition).__name__}")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"conditioning on an observation needs a LinearSDE (Tweedie's x̂₀, forward noising); got {type(sde).__name__}")
    method = resolve(conditioning, solver)
    bound = condition.bind(x)
    return method.bind(bound, sde), bound


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Optional[Sequence[int]],
    *,
    sampler: Union[str, Sampler] = "pc",
    steps: int = 1000,
    x_T: Optional[Tensor] = None,
    denoise: bool = True,
    eps: Optional[float] = None,
    condition=None,
    conditioning=None,
    callback: Optional[Callable[[int, Tensor, Tensor], None]] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[torch.device, str]] = None,
    dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    stats: Optional[dict] = None,
    noise_sampler: Optional[NoiseSampler] = None,
    **sampler_options,
) -> Tensor:
    """Draw samples by solving the reverse-time SDE or probability-flow ODE of `sde` from `T` down to `eps`.

    `sampler` is a name (`euler_maruyama`, `reverse_diffusion`, `pc`, `langevin`, `sde`, `ode`, `dpm_solver`;
    `sampler_options` go to its constructor) or a `Sampler` object. `eps=None` is `sde.default_eps` (a noise
    level, not a clock time: VP 1e-3, VE 1e-5, any other linear SDE where `σ/m` equals VP's there). `x_T`
    replaces the prior draw. `denoise` ends with one Tweedie step at `eps` (1 NFE). `callback(step, t, x)` runs
    after every step (once, at the end, for samplers that solve in one call). `noise_sampler(t, t_next)` replaces
    the per-step standard normal noise (e.g. increments of one Brownian path shared across step counts). Runs
    under `torch.no_grad()` (a score function that needs autograd can re-enable it inside). If `stats` is a dict
    it receives `nfe` (score evaluations counted), `steps`, `sampler`, `nfe_per_step` (declared; None when
    adaptive) and `nfe_init`. Same `generator` state, same samples.

    `condition` is an `Observation`/`Inpainting` to sample the posterior given it; `conditioning` the method (a
    name of `scoresde.conditioning.METHODS`, a method object, or None: SMC where the sampler allows it, else
    ΠGDM); `stats["conditioning"]` names it (and `stats["ess"]` is SMC's effective sample size per step). A
    `StepHook` object may be passed as `conditioning` alone, to act on the loop."""
    # -- validate where the user's input enters; everything below trusts it --------------------------
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    check_callable(score_fn, "score_fn")
    steps = check_int(steps, "steps")
    eps = sde.default_eps if eps is None else check_eps(eps, sde.T)
    check_generator(generator)
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict or None, got {type(stats).__name__}")
    if callback is not None:
        check_callable(callback, "callback")
    if noise_sampler is not None:
        check_callable(noise_sampler, "noise_sampler")
    solver = _resolve_sampler(sampler, sampler_options)
    solver.check(sde)
    x = _initial_state(sde, shape, x_T, generator, device, dtype)
    hook, bound = _resolve_conditioning(sde, solver, condition, conditioning, x)
    counted = CountingScore(score_fn)

    with torch.no_grad():
        ts = solver.grid(sde, steps, float(eps), x)
        n = len(ts) - 1
        guided = hook.guide(counted) if hook is not None else counted
        if solver.whole:
            x = solver.solve(sde, guided, x, ts, progress)
            if callback is not None:
                callback(n - 1, ts[-1].expand(x.shape[0]), x)
        else:
            schedule = sde._schedule(ts.to(torch.float64)) if isinstance(sde, LinearSDE) else None
            noise = Noise(x, ts, generator, noise_sampler)
            state = solver.init(sde, guided, ts, schedule, x, noise)
            hook_state = hook.init(sde, guided, ts, schedule, x, noise) if hook is not None else None
            bar = tqdm(total=n, desc=type(solver).__name__, leave=False) if progress else None
            for i in range(n):
                if hook is None:
                    x, state = solver.step(guided, x, i, state, noise)
                else:  # the condition acts here
                    x, state, hook_state = hook.step(guided, x, i, hook_state, solver, state, noise)
                if callback is not None:
                    callback(i, ts[i + 1].expand(x.shape[0]), x)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            if hook is not None:
                x = hook.finish(x, hook_state, stats)
        if denoise:
            x = tweedie_denoise(sde, guided, x, ts[-1].expand(x.shape[0]))
        if bound is not None and bound.noise_std == 0:  # a noise-free observation holds exactly
            x = bound.project(x.flatten(1)).reshape(x.shape)
    if not bool(torch.isfinite(x).all()):  # one host sync per call
        raise ValueError(f"sampling with {solver!r} produced NaN or inf (score_fn was finite at its first evaluation, "
                         "so it or the solver diverged during the run; more steps or a smaller step near eps may help)")
    if stats is not None:
        stats.update(nfe=counted.calls, steps=steps, sampler=sampler if isinstance(sampler, str) else repr(solver),
                     nfe_per_step=solver.nfe_per_step, nfe_init=solver.nfe_init, eps=float(eps))
        if hook is not None:
            stats["conditioning"] = getattr(hook, "name", "") or repr(hook)
    return x
