"""Bits/dim of discrete data: the data's grid made explicit, uniform and truncated-normal dequantisation, IWAE bounds.

A continuous model `p` of discrete data is scored on the discrete scale by the
probability it gives each data point's bin. Data with `levels` values per
dimension over `data_range = (lo, hi)` is read as the grid
`x = lo + (hi - lo) k/(levels - 1)`, `k = 0..levels-1` (how integer data is
usually scaled: `2k/255 - 1` for 8-bit images in `[-1, 1]`), or given as the
integer codes `k` themselves. Bin `k` of the model's space is
`B_k = [lo + w k, lo + w (k+1))`, `w = (hi - lo)/levels`, per dimension: the
bins tile `[lo, hi)`, as `scoresde.dequantize`, the trainer's dequantisation of
quantised data (`scoresde.data`) and Song et al. (2021) / i-DODE's
`(k + u)/256` all have it. Then

    P(k) = ∫_{B_k} p(y) dy  ≥  log (1/K) Σ_j p(y_j) / q(y_j | k),   y_j ~ q(· | k)

for any density `q(· | k)` on `B_k` (Jensen for `K = 1`; the importance-weighted
bound of Burda et al. 2016 for `K > 1`, which rises with `K` in expectation to
`log P(k)`). Two choices of `q`:

- `"uniform"`: `y = lo + w (k + u)`, `u ~ U[0, 1)^D`, `q = w^{-D}` (Theis et al.
  2016; Ho et al. 2019 for the importance-weighted form).
- `"truncated-normal"`: i-DODE's training-free dequantisation (Zheng et al.
  2023, "Improved Techniques for Maximum Likelihood Estimation for Diffusion
  ODEs", ICML, Sec. "truncated-normal dequantization"; the equation numbers of
  the paper were not reachable from here, so this follows its official code,
  thu-ml/i-DODE `model_vdm.py`, `eval_type == "tn"`). At the ODE's start time
  `τ = eps`, with `m = m(τ)`, `σ = σ(τ)`: `y = m c_k + σ ε`, `c_k` the bin
  centre, `ε ~ N(0, I)` truncated to `[-a, a]^D`, `a = m (w/2)/σ`, so `y` stays in
  the scaled bin `m B_k`. The discrete model is "draw `x_τ` from the model's
  `p_τ`, output the bin of `x_τ/m`": `P(k) = ∫_{m B_k} p_τ` and
  `log P(k) ≥ E_q[log p_τ(y) - log q(y)]`. A model trained on the grid values
  themselves (no dequantisation) has `p_τ ≈ Σ_k P(k) N(m c_k, σ²)`, which `q`
  matches up to the truncation: the bound is then nearly tight where the
  uniform one is not. For `K = 1` the closed-form entropy of `q` replaces
  `-log q(y)` (as the paper's code does: same expectation, less variance).
  The paper's CIFAR-10 setting (256 levels, the model's smallest time
  `γ_min = -13.3`, `σ ≈ 1.3e-3`) has `a ≈ 3.0`; for coarse data the bins are
  wider and `τ = 1e-5` gives a much larger `a` (≈ 59 for the 17-level digits).
  So `eps=None` here means the `τ` of `a = 3` (`truncated_normal_time`), the
  paper's regime on any grid; an explicit `eps` is used as given.

A model trained on uniformly dequantised data (the trainer's default for
quantised data) has a density spread over each whole bin; there the uniform
bound is the tight one and the truncated normal at a small `τ` is loose (its
noise fills a width of ~`4σ`, not `w`). Measure both: `bench` `dequantization`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._utils import check_choice, check_eps, check_generator, check_int, check_tensor, event_dim
from .sde import SDE

__all__ = ["DEQUANTIZATIONS", "DiscreteLikelihoodResult", "discrete_bits_per_dim", "discrete_codes", "truncated_normal_time"]

DEQUANTIZATIONS = ("uniform", "truncated-normal")
# Grid check: a value may sit this fraction of one grid step off its grid point (float32 round-off of
# 2k/255 - 1 is ~1e-7 of a step; real off-grid data, such as dequantised data, is off by up to half a step).
_GRID_TOL = 1e-3
# The truncated normal's default half-width in noise stds: what i-DODE's CIFAR-10 setting has (256 levels over
# [-1, 1] at γ_min = -13.3). A width, not a clock time, so it means the same on every grid and SDE.
TN_DEFAULT_A = 3.0


@dataclass(frozen=True)
class DiscreteLikelihoodResult:
    """A lower bound on `log P(k)` for each data point, on the discrete scale, and its bits/dim.

    `bpd = -logp / (D ln 2)` (no offset: `logp` is already a log-probability of the
    discrete data); `mean` and `stderr` are the mean bits/dim and its standard
    error over the data points (each point's estimate carries its own draw of the
    dequantisation noise and Hutchinson probes, so the spread includes both).
    `log_weights[:, j] = log p(y_j) - log q(y_j | k)`: any `k` of them give the
    `k`-sample bound by log-mean-exp, and `logp` is that over all `K` (except the
    truncated normal with `K = 1`, whose `logp` takes `q`'s entropy in closed form)."""

    logp: Tensor  # (B,) nats
    bpd: Tensor  # (B,)
    log_weights: Tensor  # (B, K)
    nfe: int  # score evaluations of the one batched solve over B·K rows
    dequantization: str
    samples: int
    levels: int
    data_range: Tuple[float, float]
    eps: float  # the ODE's start time (the truncated normal's τ)

    @property
    def mean(self) -> float:
        """Mean bits/dim over the data points."""
        return float(self.bpd.double().mean())

    @property
    def stderr(self) -> float:
        """`std(bpd)/√B` over the data points (nan for one point)."""
        B = self.bpd.shape[0]
        return float(self.bpd.double().std() / math.sqrt(B)) if B > 1 else float("nan")


def _check_grid(levels, data_range) -> Tuple[int, float, float]:
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels must be an int (the number of discrete values per dimension), got {levels!r}")
    if levels < 2:
        raise ValueError(f"levels must be >= 2 (the number of discrete values per dimension), got {levels}")
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (lo, hi), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be finite (lo, hi) with hi > lo, got {data_range!r}")
    return levels, lo, hi


def discrete_codes(x: Tensor, levels: int, data_range: Tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """The integer codes `k` (a long tensor shaped like `x`) of data on the grid `lo + (hi - lo) k/(levels - 1)`.

    Integer `x` are taken as the codes and checked to lie in `0..levels-1`. Float
    `x` must lie on the grid: otherwise a `ValueError` names the largest
    deviation (in grid steps) and, when `x` sits on the bins' left edges
    `lo + (hi - lo) k/levels` instead (as `scoresde.data`'s `train_raw`), says so."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must be numbers on the data's grid or integer codes, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0 or event_dim(x) == 0:
        raise ValueError(f"x must be a batch (B, ...) of at least one non-empty sample, got shape {tuple(x.shape)}")
    levels, lo, hi = _check_grid(levels, data_range)
    if x.is_floating_point():
        check_tensor(x, "x")  # NaN / inf
    else:
        k = x.long()
        bad = (k < 0) | (k >= levels)
        if bool(bad.any()):
            raise ValueError(f"integer x are codes 0..{levels - 1} (levels={levels}); got values "
                             f"{int(k.min())}..{int(k.max())}")
        return k
    step = (hi - lo) / (levels - 1)
    pos = (x.double() - lo) / step  # in grid steps
    k = pos.round()
    dev = (pos - k).abs()
    outside = (k < 0) | (k > levels - 1)
    worst = float(torch.where(outside, torch.full_like(dev, math.inf), dev).max())
    if worst > _GRID_TOL:
        i = int(torch.where(outside, torch.full_like(dev, math.inf), dev).flatten().argmax())
        v = float(x.flatten()[i])
        what = "outside data_range" if math.isinf(worst) else f"max deviation {worst:.3g} grid steps"
        msg = (f"x is not on the grid of levels={levels} values lo + (hi - lo) k/(levels - 1) over "
               f"data_range=({lo:g}, {hi:g}) (step {step:.6g}): {what}, at x = {v:.6g}")
        edges = (x.double() - lo) * (levels / (hi - lo))
        if float((edges - edges.round()).abs().max()) <= _GRID_TOL and float(edges.min()) > -0.5 \
                and float(edges.max()) < levels - 0.5:
            msg += (f"; x lies on the bins' left edges lo + (hi - lo) k/levels instead: pass the integer codes "
                    f"k = round((x - lo) * levels/(hi - lo))")
        raise ValueError(msg)
    return k.long()


def truncated_normal_time(sde: SDE, levels: int, data_range: Tuple[float, float] = (-1.0, 1.0),
                          a: float = TN_DEFAULT_A) -> float:
    """The time `τ` at which the truncated normal's half-width `a = m(τ) (w/2)/σ(τ)`, `w = (hi - lo)/levels`: `σ/m = w/(2a)`.

    `a = 3` is i-DODE's CIFAR-10 setting; pass the result as `eps` to
    `discrete_bits_per_dim(..., dequantization="truncated-normal")`."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    levels, lo, hi = _check_grid(levels, data_range)
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and a > 0):
        raise ValueError(f"a must be a positive number, got {a!r}")
    lam = torch.tensor([math.log(2 * a * levels / (hi - lo))], dtype=torch.float64)  # half log-SNR log(m/σ)
    return check_eps(float(sde.t_from_half_log_snr(lam)[0]), sde.T, "truncated_normal_time")


def _truncated_normal(shape, a: float, ref: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """`N(0, 1)` truncated to `[-a, a]`, by inverting its CDF: `ε = √2 erfinv((2u - 1) erf(a/√2))`."""
    dev = generator.device if generator is not None else ref.device
    u = torch.rand(shape, generator=generator, device=dev, dtype=ref.dtype).to(ref.device)
    one = 1 - torch.finfo(ref.dtype).eps  # erfinv(±1) = ±inf, reached at u = 0 when erf(a/√2) rounds to 1
    e = math.sqrt(2) * torch.erfinv(((2 * u - 1) * math.erf(a / math.sqrt(2))).clamp(-one, one))
    return e.clamp(-a, a)


def _log_erf(z: float) -> float:
    """`log erf(z)` for `z > 0`, without cancellation when `erf(z)` is near 1."""
    return math.log1p(-math.erfc(z)) if z > 0.5 else math.log(math.erf(z))


def discrete_bits_per_dim(
    sde: SDE,
    score_fn,
    x: Tensor,
    *,
    levels: int,
    data_range: Tuple[float, float] = (-1.0, 1.0),
    dequantization: str = "uniform",
    samples: int = 1,
    generator: Optional[torch.Generator] = None,
    **likelihood_options,
) -> DiscreteLikelihoodResult:
    """Bits/dim of discrete `x` on the discrete scale: `-log2 P̂(k)/D`, `log P̂(k) = log (1/K) Σ_j p(y_j)/q(y_j|k) ≤ log P(k)`.

    `x`: data on the grid `lo + (hi - lo) k/(levels - 1)` of `levels` values per
    dimension over `data_range`, or the integer codes `k` (see `discrete_codes`;
    off-grid data raises a `ValueError`). `dequantization` `"uniform"` or
    `"truncated-normal"` chooses `q` (see the module's docstring); `samples` is
    `K`: the `K` draws of every point go through one batched solve of `B·K` rows.
    `likelihood_options` go to `log_likelihood` (`divergence`, `noise`,
    `method`, `rtol`, `atol`, `eps`, `n_probes`, `options`); `eps` is also the
    truncated normal's time `τ` (`None`: `sde.default_likelihood_eps` for uniform,
    `truncated_normal_time(sde, levels, data_range, a=3)` for the truncated
    normal). Noise and probes come from `generator`.
    With `divergence="hutchinson"` and `K > 1`, the bound holds up to the
    probes' noise (`exp` of an unbiased `log p` estimate is biased up by about
    half its variance); `divergence="exact"` keeps it a bound."""
    from .likelihood import log_likelihood

    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")
    codes = discrete_codes(x, levels, data_range)
    levels, lo, hi = _check_grid(levels, data_range)
    check_choice(dequantization, "dequantization", DEQUANTIZATIONS)
    samples = check_int(samples, "samples")
    check_generator(generator)
    if "generator" in likelihood_options:
        raise TypeError("pass generator once, as discrete_bits_per_dim's own argument")
    eps = likelihood_options.pop("eps", None)
    if eps is None:
        tn = dequantization == "truncated-normal"
        eps = truncated_normal_time(sde, levels, (lo, hi), TN_DEFAULT_A) if tn else sde.default_likelihood_eps
    eps = check_eps(eps, sde.T)

    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    k = codes.to(dtype)
    B, D, K = x.shape[0], event_dim(x), samples
    shape = (K,) + tuple(x.shape)
    w = (hi - lo) / levels
    if dequantization == "uniform":
        dev = generator.device if generator is not None else x.device
        u = torch.rand(shape, generator=generator, device=dev, dtype=dtype).to(x.device)
        y = lo + w * (k + u)  # uniform on bin k
        log_q = torch.full((K, B), -D * math.log(w), device=x.device, dtype=dtype)
        entropy = None
    else:
        t = torch.tensor([eps], dtype=torch.float64)
        m, s = (float(v[0]) for v in sde.marginal_coefs(t))
        a = m * (w / 2) / s  # the bin's half-width in units of the noise std
        e = _truncated_normal(shape, a, k, generator)
        y = m * (lo + w * (k + 0.5)) + s * e  # inside m·B_k
        log_norm = D * (0.5 * math.log(2 * math.pi) + _log_erf(a / math.sqrt(2)) + math.log(s))
        log_q = -0.5 * e.reshape(K, B, -1).pow(2).sum(-1) - log_norm
        # E[ε²] = 1 - 2aφ(a)/Z under N(0, 1) truncated to [-a, a], Z = erf(a/√2): the entropy in closed form
        z = math.erf(a / math.sqrt(2))
        e2 = 1.0 - 2 * a * math.exp(-0.5 * a * a) / (math.sqrt(2 * math.pi) * z) if z > 0 else 0.0
        entropy = 0.5 * D * e2 + log_norm
    res = log_likelihood(sde, score_fn, y.reshape((K * B,) + tuple(x.shape[1:])), eps=eps, generator=generator,
                         **likelihood_options)
    log_p = res.logp.reshape(K, B)
    log_w = log_p - log_q
    if K == 1 and entropy is not None:
        logp = log_p[0] + entropy  # E_q[log p] + H(q): the paper's K = 1 estimate
    else:
        logp = torch.logsumexp(log_w, 0) - math.log(K)
    bpd = -logp / (D * math.log(2))
    return DiscreteLikelihoodResult(logp, bpd, log_w.transpose(0, 1), res.nfe, dequantization, K, levels, (lo, hi), eps)
