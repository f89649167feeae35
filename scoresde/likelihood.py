"""Exact log-likelihoods through the probability-flow ODE, encode/decode, bits/dim and dequantisation.

The probability-flow ODE `dx/dt = v(x, t) = f(x, t) - ½ g(t)² s(x, t)` moves
`p_t` exactly like the SDE does, and along its paths
`d log p_t(x_t)/dt = -∇·v(x_t, t)` (instantaneous change of variables, Chen et
al. 2018). Integrating the pair `(x, Δ)` with `dΔ/dt = ∇·v` from `eps` to `T`
gives `log p_eps(x) = log p_T(x_T) + Δ(T)` (Song et al. 2021, app. D.2), with the
SDE's prior standing in for `p_T`. `torchdiffeq.odeint` does the work on the
tensors' own device: no numpy, no `.item()` inside the ODE function, and no
autograd graph kept from one solver step to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._utils import (check_batch, check_callable, check_choice, check_eps, check_generator, check_int, check_positive,
                     check_solver_dtype, check_tensor, event_dim)
from .samplers import CountingScore
from .samplers.ode import DEFAULT_TIME, METHODS, ProbabilityFlowField, check_method, check_time, solve_ode
from .sde import SDE

__all__ = [
    "LikelihoodResult",
    "log_likelihood",
    "encode",
    "decode",
    "bits_per_dim",
    "dequantize",
    "dequantization_offset",
    "DIVERGENCES",
    "NOISES",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

DIVERGENCES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
# Exact divergence: how many basis vectors go through one batched VJP, as a budget on chunk·B·D.
# Small on CPU, where cache-sized chunks ran 5x faster than all D at once (mixture64, B=256);
# large on accelerators, which want wide batches.
_EXACT_BUDGET = {"cpu": 2**15}
_EXACT_BUDGET_DEFAULT = 2**22


@dataclass(frozen=True)
class LikelihoodResult:
    """`logp = prior_logp(z) + delta_logp`, in nats, for each sample of the batch.

    `stderr` is the Monte-Carlo standard error of `logp` over the `n_probes`
    Hutchinson probes (`None` for the exact divergence or a single probe)."""

    logp: Tensor  # (B,) log p_eps(x), nats
    z: Tensor  # like x: the latent x(T)
    nfe: int  # score evaluations spent
    delta_logp: Tensor  # (B,) ∫_eps^T ∇·v dt, nats
    stderr: Optional[Tensor] = None  # (B,) or None


def _exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """`tr(∂v/∂x)`, `(B,)`: row `i` of the Jacobian is `e_iᵀ J`, one batched VJP per chunk of basis vectors."""
    B, D = x.shape[0], event_dim(x)
    if not v.requires_grad:  # v does not depend on x
        return torch.zeros(B, device=x.device, dtype=x.dtype)
    div = torch.zeros(B, device=x.device, dtype=x.dtype)
    eye = torch.eye(D, device=x.device, dtype=x.dtype)
    chunk = max(1, min(D, _EXACT_BUDGET.get(x.device.type, _EXACT_BUDGET_DEFAULT) // (B * D)))
    for start in range(0, D, chunk):
        stop = min(D, start + chunk)
        basis = eye[start:stop, None, :].expand(stop - start, B, D).reshape((stop - start,) + tuple(x.shape))
        (rows,) = torch.autograd.grad(v, x, basis, retain_graph=True, is_grads_batched=True, allow_unused=True)
        if rows is not None:  # rows[i] = e_iᵀ J; its own entry i is J_ii
            div = div + rows.reshape(-1, B, D)[:, :, start:stop].diagonal(dim1=0, dim2=2).sum(-1)
    return div


def _hutchinson_divergence(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """`ε_pᵀ (∂v/∂x) ε_p` for each probe, `(P, B)`: one VJP per probe (a single plain VJP when `P = 1`)."""
    P, B = probes.shape[0], x.shape[0]
    if not v.requires_grad:
        return torch.zeros(P, B, device=x.device, dtype=x.dtype)
    if P == 1:
        (vjp,) = torch.autograd.grad(v, x, probes[0], allow_unused=True)
        vjp = None if vjp is None else vjp[None]
    else:
        (vjp,) = torch.autograd.grad(v, x, probes, is_grads_batched=True, allow_unused=True)
    if vjp is None:
        return torch.zeros(P, B, device=x.device, dtype=x.dtype)
    return (vjp * probes).reshape(P, B, -1).sum(-1)


def _draw_probes(shape: Tuple[int, ...], noise: str, ref: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    # Drawn on the generator's device, so one generator state gives the same probes wherever x lives.
    dev = generator.device if generator is not None else ref.device
    if noise == "gaussian":
        e = torch.randn(shape, generator=generator, device=dev, dtype=ref.dtype)
    else:
        e = torch.randint(0, 2, shape, generator=generator, device=dev).to(ref.dtype) * 2 - 1
    return e.to(ref.device)


# -- validation and the solve -------------------------------------------------------


def _check_common(sde, score_fn, x, name, method, rtol, atol, eps, options, time="t"):
    """The checks `log_likelihood`, `encode` and `decode` share; returns `(rtol, atol, eps, options, time)`, `time`
    "t" for fixed-grid methods."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    check_callable(score_fn, "score_fn")
    check_batch(x, name)
    check_solver_dtype(x, name)
    check_method(method)
    check_time(time)
    if not METHODS[method]["adaptive"]:
        time = "t"  # fixed grids (and a `step_size` option) are given in t, as for the ode sampler
    rtol, atol = check_positive(rtol, "rtol"), check_positive(atol, "atol")
    if eps is None:
        eps = sde.default_likelihood_eps
    eps = check_eps(eps, sde.T)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of torchdiffeq solver options, got {type(options).__name__}")
    return rtol, atol, eps, dict(options or {}), time


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    divergence: str = "hutchinson",
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    n_probes: int = 1,
    options: Optional[dict] = None,
    time: str = DEFAULT_TIME,
) -> LikelihoodResult:
    """`log p_eps(x) = log p_T(x(T)) + ∫_eps^T ∇·[f - ½ g² s](x(t), t) dt` along the probability-flow ODE, in nats.

    `divergence="exact"` takes the trace of the drift's Jacobian (`D` VJPs per
    score evaluation: small `D` only); `"hutchinson"` uses `n_probes` probes
    `ε` (`noise` `"rademacher"` or `"gaussian"`, drawn from `generator`), fixed
    along the trajectory, averaged, with their standard error in `stderr`. The
    estimate of `logp` is unbiased. `method` (any of torchdiffeq's, the same
    table as `sample(sampler="ode")`), `rtol`, `atol` go to `torchdiffeq.odeint`
    (fixed-grid methods take 100 uniform steps unless `options` has
    `step_size`); `options` is passed through. `eps=None` is
    `sde.default_likelihood_eps` (1e-5 for the built-ins; for another linear SDE
    the time of VP's noise level at 1e-5). `nfe` counts score evaluations.
    Memory does not grow with the solver steps. Each evaluation is one score
    call and its VJPs, except at the Runge-Kutta stages whose derivative the
    tableau weights by zero (dopri5's stage 2 of 6, dopri8's 2-5 of 13): there
    the score is called without a graph and the divergence is skipped, with
    the same result to the last bit.

    `time` is the variable the solver steps in: `"t"`, or the noise level
    `σ̃ = σ/m` as `"sigma"`, `"cbrt_sigma"` (σ̃^{1/3}) or `"log_sigma"` (-λ), for
    linear SDEs, with adaptive methods (fixed-grid methods step in t; see
    `benchmarks/likelihood_time.py` for what each costs at equal error).

    `logp` uses `sde.prior_logp` for `log p_T`. The SDE's prior is built for
    zero-mean data; data with mean `μ` adds roughly `m(T)·zᵀμ/s²` (prior std `s`)
    nats of bias — ~1e-5 nats/dim for the centred toy sets, ~1e-3 for the
    uncentred 10-D test mixture on VE. `z` and `delta_logp` are returned so a
    caller with a better `log p_T` can use it instead.
    """
    rtol, atol, eps, options, time = _check_common(sde, score_fn, x, "x", method, rtol, atol, eps, options, time)
    check_choice(divergence, "divergence", DIVERGENCES)
    check_choice(noise, "noise", NOISES)
    n_probes = check_int(n_probes, "n_probes")
    if divergence == "exact" and n_probes != 1:
        raise ValueError("n_probes applies to divergence='hutchinson' only")
    check_generator(generator)

    B = x.shape[0]
    x = x.detach()
    counted = CountingScore(score_fn)
    if divergence == "exact":
        field = ProbabilityFlowField(sde, counted, B, _exact_divergence, time=time)
        delta0 = torch.zeros(B, device=x.device, dtype=x.dtype)
    else:
        probes = _draw_probes((n_probes,) + tuple(x.shape), noise, x, generator)
        field = ProbabilityFlowField(sde, counted, B, lambda v, xx: _hutchinson_divergence(v, xx, probes), time=time)
        delta0 = torch.zeros(n_probes, B, device=x.device, dtype=x.dtype)
    z, delta = solve_ode(field, (x, delta0), eps, sde.T, x, method=method, rtol=rtol, atol=atol, options=options)
    prior = sde._prior_logp(z)
    if divergence == "exact":
        return LikelihoodResult(prior + delta, z, counted.calls, delta)
    stderr = delta.std(0) / math.sqrt(n_probes) if n_probes > 1 else None
    delta = delta.mean(0)
    return LikelihoodResult(prior + delta, z, counted.calls, delta, stderr)


def _flow(sde, score_fn, x, name: str, forward: bool, *, method: str = "dopri5", rtol: float = 1e-5,
          atol: float = 1e-5, eps: Optional[float] = None, options: Optional[dict] = None,
          time: str = DEFAULT_TIME) -> Tensor:
    rtol, atol, eps, options, time = _check_common(sde, score_fn, x, name, method, rtol, atol, eps, options, time)
    t0, t1 = (eps, sde.T) if forward else (sde.T, eps)
    field = ProbabilityFlowField(sde, CountingScore(score_fn), x.shape[0], time=time)
    return solve_ode(field, x.detach(), t0, t1, x, method=method, rtol=rtol, atol=atol, options=options)


def encode(sde: SDE, score_fn: ScoreFn, x: Tensor, **ode_options) -> Tensor:
    """`x(eps) -> x(T)`: the probability-flow ODE `dx/dt = f - ½ g² s` integrated forward (no gradients kept).

    `ode_options`: `method="dopri5"`, `rtol=1e-5`, `atol=1e-5`, `eps=None` (`sde.default_likelihood_eps`),
    `options` (torchdiffeq's), `time`, as for `log_likelihood`."""
    return _flow(sde, score_fn, x, "x", True, **ode_options)


def decode(sde: SDE, score_fn: ScoreFn, z: Tensor, **ode_options) -> Tensor:
    """`x(T) -> x(eps)`: the same ODE integrated backward from the latent `z` (the inverse of `encode`)."""
    return _flow(sde, score_fn, z, "z", False, **ode_options)


# -- bits per dimension and dequantisation ------------------------------------------


def bits_per_dim(logp: Tensor, x_shape_or_dim: Union[int, Sequence[int], Tensor], *, offset: float = 0.0) -> Tensor:
    """`bpd = -logp / (D ln 2) + offset`, `D` the number of dimensions per sample.

    `x_shape_or_dim` is `D` itself, the per-sample shape `x.shape[1:]`, or the
    batch `x` (a tensor). For 8-bit data `offset` converts the density of
    dequantised, rescaled data into bits of the discrete data: see
    `dequantization_offset` (7 for `[-1, 1]`, 8 for `[0, 1]`)."""
    check_tensor(logp, "logp", finite=False)
    if isinstance(x_shape_or_dim, Tensor):
        D = event_dim(x_shape_or_dim)
    elif isinstance(x_shape_or_dim, int) and not isinstance(x_shape_or_dim, bool):
        D = x_shape_or_dim
    elif isinstance(x_shape_or_dim, (tuple, list, torch.Size)) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in x_shape_or_dim):
        D = math.prod(x_shape_or_dim)
    else:
        raise TypeError(f"x_shape_or_dim must be an int, a per-sample shape or a tensor, got {x_shape_or_dim!r}")
    if D <= 0:
        raise ValueError(f"x_shape_or_dim must give a positive number of dimensions, got {x_shape_or_dim!r}")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        raise ValueError(f"offset must be a finite number, got {offset!r}")
    return -logp / (D * math.log(2)) + offset


def dequantization_offset(data_range: Tuple[float, float] = (-1.0, 1.0), n_bins: int = 256) -> float:
    """`log2(n_bins / (hi - lo))`: bits/dim to add to `bits_per_dim` of data dequantised by `dequantize`.

    Dequantised data has one bin of width `w = (hi - lo) / n_bins` per discrete
    value, so `P(k) ≥ exp E_u[log p(y)] · w^D` (Jensen; Theis et al. 2016) and
    `-log2 P(k) / D ≤ bpd(y) + log2(1/w)`. For 8 bits: **7** for `[-1, 1]`,
    **8** for `[0, 1]` (the offsets of Song et al. 2021, whose data is
    `(255 x + u) / 256`). If instead noise of one grid step `(hi - lo)/(n_bins - 1)`
    is added to data left on the grid `k/255` (not what `dequantize` does), the
    offset is `log2((n_bins - 1)/(hi - lo))`: log2(127.5) ≈ 6.994 for `[-1, 1]`,
    log2(255) ≈ 7.994 for `[0, 1]`."""
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2, got {n_bins!r}")
    return math.log2(n_bins / (hi - lo))


def dequantize(
    x: Tensor,
    *,
    data_range: Tuple[float, float] = (-1.0, 1.0),
    n_bins: int = 256,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Uniform dequantisation `y = lo + (hi - lo)(k + u)/n_bins`, `u ~ U[0, 1)`, of data on the grid `x = lo + (hi - lo) k/(n_bins - 1)`.

    For 8-bit images scaled as `2k/255 - 1` (`data_range=(-1, 1)`) or `k/255`
    (`(0, 1)`): `y` fills `[lo, hi)`, bin `k` being `[lo + w k, lo + w (k+1))`
    with `w = (hi - lo)/n_bins`. Then bits/dim of the discrete data is at most
    `bits_per_dim(log_likelihood(..., y).logp, y, offset=dequantization_offset(data_range, n_bins))`."""
    check_tensor(x, "x", min_ndim=1)
    dequantization_offset(data_range, n_bins)  # validates data_range and n_bins
    lo, hi = (float(v) for v in data_range)
    k = ((x - lo) / (hi - lo) * (n_bins - 1)).round().clamp(0, n_bins - 1)
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    return lo + (hi - lo) * (k + u) / n_bins
