"""Denoising score matching for linear SDEs, with the weightings of Song et al. (2021a, 2021b).

`ℓ(x₀, t, ε) = ½ λ(t) ‖s_θ(m x₀ + σ ε, t) + ε/σ‖²` (summed over dimensions),
averaged over `t ~ U[eps, T]`, `ε ~ N(0, I)`. The per-sample function takes
injectable `t` and `noise`, so the DSM identity is testable at a fixed `t`; the
trainer draws `t` and `ε` for the whole global batch itself (see `train.py`).

Weightings: `"sigma2"` (`λ = σ²`, i.e. `½‖σ s + ε‖²`, the ε-prediction loss) and
`"likelihood"` (`λ = g²`, which makes the loss an upper bound on the negative
log-likelihood, Song et al. 2021b). With `importance_sampling=True`, `t` is
drawn with density `q(t) ∝ g²/σ²` and each sample is weighted by
`1/((T - eps) q(t))`, which keeps the expectation unchanged and, for the
likelihood weighting, makes the weight `λ/(σ² (T-eps) q) ≈ Z/(T - eps)` nearly
constant. `q` is tabulated once per SDE (inverse CDF on a grid in `log t`)
and the weight uses the exact density of that piecewise sampler, so the
estimator is unbiased for any grid and any `LinearSDE`.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ._utils import check_batch, check_number, check_time, flat_sum

WEIGHTINGS = ("sigma2", "likelihood")
T_SAMPLINGS = ("iid", "stratified", "antithetic")
REDUCTIONS = ("mean", "sum", "none")

__all__ = ["dsm_loss", "dsm_loss_per_sample", "classifier_loss_per_sample", "sample_time", "time_weight", "WEIGHTINGS", "T_SAMPLINGS"]

# sde -> {eps: table}; weak so a discarded SDE's table goes with it.
_IS_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_IS_GRID = 4097


def _check_options(sde, eps: float, weighting: str, importance_sampling: bool, t_sampling: str) -> float:
    if not hasattr(sde, "_schedule"):
        raise TypeError(f"sde must be a LinearSDE (with marginal_coefs), got {type(sde).__name__}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
    if not isinstance(importance_sampling, bool):
        raise TypeError(f"importance_sampling must be a bool, got {type(importance_sampling).__name__}")
    eps = check_number(eps, "eps", lo=0.0, hi=sde.T, hi_open=True)
    if importance_sampling and eps <= 0:
        raise ValueError("eps must be > 0 with importance_sampling=True (the density g²/σ² is not integrable at t = 0)")
    return float(eps)


def _is_table(sde, eps: float, ref: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """`(u, cdf, p_u)` on a grid in `u = log t` over `[log eps, log T]`: nodes, normalised CDF, and constant density per cell."""
    per_sde = _IS_TABLES.setdefault(sde, {})
    key = (eps, ref.device, ref.dtype)
    if key not in per_sde:
        if eps not in per_sde:
            with torch.no_grad():
                u = torch.linspace(math.log(eps), math.log(sde.T), _IS_GRID, dtype=torch.float64)
                t = u.exp().clamp(max=sde.T)
                sched = sde._schedule(t)
                # density in u: (g²/σ²)(t) · dt/du
                q = sched.g2 / sched.sigma.square() * t
                cells = 0.5 * (q[1:] + q[:-1]) * (u[1:] - u[:-1])
                cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cells.cumsum(0)])
                cdf = cdf / cdf[-1]
                p_u = (cdf[1:] - cdf[:-1]) / (u[1:] - u[:-1])
            if not bool(torch.isfinite(p_u).all() and (p_u > 0).all()):
                raise ValueError(f"importance sampling needs g²/σ² finite and positive on [eps, T] for {sde!r}")
            per_sde[eps] = (u, cdf, p_u)
        per_sde[key] = tuple(a.to(device=ref.device, dtype=ref.dtype) for a in per_sde[eps])
    return per_sde[key]


def _uniforms(n: int, t_sampling: str, generator, device, dtype) -> Tensor:
    if t_sampling == "stratified":
        # Low-discrepancy (Kingma et al. 2021): one uniform shift of an evenly spaced grid.
        u0 = torch.rand((), generator=generator, device=device, dtype=dtype)
        return torch.remainder(u0 + torch.arange(n, device=device, dtype=dtype) / n, 1.0)
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    if t_sampling == "antithetic":
        half = n // 2
        u = torch.cat([u[: n - half], 1 - u[:half]])
    return u


def sample_time(
    sde,
    n: int,
    *,
    eps: float = 1e-5,
    importance_sampling: bool = False,
    t_sampling: str = "iid",
    generator: Optional[torch.Generator] = None,
    device=None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """`n` diffusion times: `U[eps, T]`, or `q(t) ∝ g²/σ²` on `[eps, T]` by inverse CDF; `(n,)`."""
    eps = _check_options(sde, eps, "sigma2", importance_sampling, t_sampling)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    dtype = dtype or torch.get_default_dtype()
    r = _uniforms(n, t_sampling, generator, device, dtype)
    if not importance_sampling:
        return eps + (sde.T - eps) * r
    u, cdf, p_u = _is_table(sde, eps, r)
    i = (torch.searchsorted(cdf, r, right=True) - 1).clamp(0, len(p_u) - 1)
    return torch.exp(u[i] + (r - cdf[i]) / p_u[i]).clamp(eps, sde.T)


def time_weight(sde, t: Tensor, *, weighting: str = "sigma2", importance_sampling: bool = False, eps: float = 1e-5) -> Tensor:
    """`λ(t)/σ(t)²`, divided by `(T - eps) q(t)` when `t ~ q` (importance sampling): the factor on `½‖σ s + ε‖²`."""
    if weighting == "sigma2":
        w = torch.ones_like(t)
    else:
        sched = sde._schedule(t)
        w = sched.g2 / sched.sigma.square()
    if importance_sampling:
        u, _, p_u = _is_table(sde, eps, t)
        lt = t.log()
        i = (torch.searchsorted(u, lt, right=True) - 1).clamp(0, len(p_u) - 1)
        q = p_u[i] / t  # density in t of the piecewise sampler
        w = w / ((sde.T - eps) * q)
    return w


def dsm_loss_per_sample(
    model: Callable[..., Tensor],
    sde,
    x0: Tensor,
    *,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    weighting: str = "sigma2",
    importance_sampling: bool = False,
    t_sampling: str = "iid",
    eps: float = 1e-5,
    labels: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Per-sample `½ λ(t) ‖s(m x₀ + σ ε, t) + ε/σ‖²` (× importance weight), shape `(B,)`.

    `t` and `noise` default to fresh draws from `generator`; an injected `t` is
    taken to come from the sampler that `importance_sampling` names (so it is
    weighted accordingly). `model(x, t)` (or `model(x, t, labels)`) is any score function."""
    eps = _check_options(sde, eps, weighting, importance_sampling, t_sampling)
    check_batch(x0, "x0", finite=False)  # no NaN check: that would sync every training step
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    B = x0.shape[0]
    if t is None:
        t = sample_time(sde, B, eps=eps, importance_sampling=importance_sampling, t_sampling=t_sampling,
                        generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = check_time(t, B, x0, sde.T, "t")  # an injected t: checked once (one host sync)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}, got {getattr(noise, 'shape', type(noise).__name__)}")
    sched = sde._schedule(t)
    xt = sched.perturb(x0, noise)
    score = model(xt, t) if labels is None else model(xt, t, labels)
    # λ‖s + ε/σ‖² written as (λ/σ²)‖σ s + ε‖²: no division by a tiny σ.
    resid = sched.dsm_residual(score.to(x0.dtype), noise)
    w = time_weight(sde, t, weighting=weighting, importance_sampling=importance_sampling, eps=eps)
    return 0.5 * w * flat_sum(resid.square())


def dsm_loss(
    model: Callable[..., Tensor],
    sde,
    x0: Tensor,
    *,
    weighting: str = "sigma2",
    importance_sampling: bool = False,
    eps: float = 1e-5,
    generator: Optional[torch.Generator] = None,
    reduction: str = "mean",
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    t_sampling: str = "iid",
    labels: Optional[Tensor] = None,
) -> Tensor:
    """Denoising score matching loss `E_t E_ε ½ λ(t) ‖s(x_t, t) + ε/σ‖²`, reduced by `reduction` ("mean", "sum" or "none")."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    per = dsm_loss_per_sample(model, sde, x0, t=t, noise=noise, weighting=weighting, importance_sampling=importance_sampling,
                              t_sampling=t_sampling, eps=eps, labels=labels, generator=generator)
    return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


def classifier_loss_per_sample(
    classifier: Callable[[Tensor, Tensor], Tensor],
    sde,
    x0: Tensor,
    labels: Tensor,
    *,
    t: Optional[Tensor] = None,
    noise: Optional[Tensor] = None,
    t_sampling: str = "iid",
    eps: float = 1e-5,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Per-sample cross-entropy `-log softmax(f(m x₀ + σ ε, t))_y` of a time-conditioned classifier, shape `(B,)`.

    Its minimiser over `t ~ U[eps, T]` is `log p_t(y | x_t)` (up to a constant per `(x_t, t)`), the quantity
    classifier guidance differentiates. `t` and `noise` default to fresh draws from `generator`."""
    from torch.nn import functional as F

    eps = _check_options(sde, eps, "sigma2", False, t_sampling)
    check_batch(x0, "x0", finite=False)
    if not callable(classifier):
        raise TypeError(f"classifier must be callable, got {type(classifier).__name__}")
    B = x0.shape[0]
    if not isinstance(labels, Tensor) or labels.shape != (B,) or labels.is_floating_point():
        raise ValueError(f"labels must be a ({B},) integer tensor, got {getattr(labels, 'shape', type(labels).__name__)}")
    if t is None:
        t = sample_time(sde, B, eps=eps, t_sampling=t_sampling, generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = check_time(t, B, x0, sde.T, "t")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif not isinstance(noise, Tensor) or noise.shape != x0.shape:
        raise ValueError(f"noise must be a tensor shaped like x0 {tuple(x0.shape)}, got {getattr(noise, 'shape', type(noise).__name__)}")
    xt = sde._schedule(t).perturb(x0, noise)
    logits = classifier(xt, t)
    if logits.dtype in (torch.float16, torch.bfloat16):  # under autocast: the log-softmax in float32
        logits = logits.float()
    return F.cross_entropy(logits, labels, reduction="none")
