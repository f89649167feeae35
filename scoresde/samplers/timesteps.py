"""Time grids for the samplers: `(steps + 1,)` tensors decreasing from `T` to `eps`.

The grid belongs to the sampler call, never to the SDE. Grids other than
`uniform` are defined in the log-SNR variable `λ(t) = log m(t) - log σ(t)` of
a `LinearSDE` and mapped back with `sde.t_from_half_log_snr`, so they work
unchanged on a user's new SDE.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

from ..sde import SDE, LinearSDE

__all__ = ["uniform", "vp_matched", "vp_quadratic", "log_snr", "log_snr_capped", "edm", "time_quadratic", "vp_power", "blend", "get_timesteps", "TIMESTEPS"]


def _finish(t: Tensor, sde: SDE, eps: float, ref: Tensor) -> Tensor:
    # Pin the ends exactly: inverting λ numerically must not move the start off T or the end off eps.
    t = t.clone()
    t[0], t[-1] = sde.T, eps
    return t.to(device=ref.device, dtype=ref.dtype)


def _f64(ref: Tensor) -> dict:
    return dict(device=ref.device, dtype=torch.float64)


def uniform(sde: SDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """Uniform in time, `t_i = T + i/N (eps - T)` (Song et al. 2021)."""
    return _finish(torch.linspace(sde.T, eps, steps + 1, **_f64(ref)), sde, eps, ref)


def time_quadratic(sde: SDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """Uniform in `√t` (DPM-Solver's "time_quadratic"): finer steps near the data."""
    s = torch.linspace(sde.T**0.5, eps**0.5, steps + 1, **_f64(ref))
    return _finish(s * s, sde, eps, ref)


def _lambda_ends(sde: LinearSDE, eps: float, ref: Tensor):
    ends = torch.tensor([sde.T, eps], **_f64(ref))
    lam = sde.half_log_snr(ends)
    return lam[0], lam[1]


def log_snr(sde: LinearSDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """Uniform in half-log-SNR `λ` (DPM-Solver's "logSNR" grid; Lu et al. 2022)."""
    lam_T, lam_eps = _lambda_ends(sde, eps, ref)
    lam = torch.linspace(0, 1, steps + 1, **_f64(ref)) * (lam_eps - lam_T) + lam_T
    return _finish(sde.t_from_half_log_snr(lam), sde, eps, ref)


def edm(sde: LinearSDE, steps: int, eps: float, ref: Tensor, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022's grid in `σ = e^{-λ}` (std over scale): `σ_i = (σ_max^{1/ρ} + i/N (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ`."""
    lam_T, lam_eps = _lambda_ends(sde, eps, ref)
    a, b = torch.exp(-lam_T / rho), torch.exp(-lam_eps / rho)
    sigma = (a + torch.linspace(0, 1, steps + 1, **_f64(ref)) * (b - a)) ** rho
    return _finish(sde.t_from_half_log_snr(-sigma.log()), sde, eps, ref)


def log_snr_capped(sde: LinearSDE, steps: int, eps: float, ref: Tensor, cap: float = 3.0) -> Tensor:
    """Uniform in `λ` from `λ_T` to `λ_{N-1} = min(λ_{N-1}^{log-SNR}, cap · N/10)`, then one last step to `λ(eps)`.

    Past `λ ≈ 3` (noise ≈ 5% of a unit data scale) the data prediction barely moves, yet a plain log-SNR grid
    spends a step per `Δλ` there: sub-VP reaches `λ(eps) = 9.1` and VE (exact std) 6.6 against VP's 4.6. The cap
    leaves that tail to the last step and spends the rest where the ODE bends; it grows with `N` (no cap from
    ~30 steps on VP/sub-VP/VE), so many-step grids are plain log-SNR and solvers keep their order. Tuned with
    `dpm_solver` (2M + UniC) at 10 NFE on the exact-score benchmark (cap 2.5-3.5 swept; 3 at or below the best
    published sampler in all 8 SDE/data cases, see benchmarks/solvers.py)."""
    return _finish(sde.t_from_half_log_snr(_log_snr_capped_lam(sde, steps, eps, ref, cap)), sde, eps, ref)


def _log_snr_capped_lam(sde: LinearSDE, steps: int, eps: float, ref: Tensor, cap: float = 3.0) -> Tensor:
    lam_T, lam_eps = _lambda_ends(sde, eps, ref)
    lam = lam_T + (lam_eps - lam_T) * torch.linspace(0, 1, steps + 1, **_f64(ref))
    pen = min(float(lam[-2]), cap * steps / 10)
    if steps > 1 and pen < float(lam[-2]) and pen > float(lam_T):
        lam[:-1] = lam_T + (pen - lam_T) * torch.linspace(0, 1, steps, **_f64(ref))
    return lam


def vp_matched(sde: LinearSDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """Song et al.'s uniform grid of the default VP SDE carried to `sde` through the noise level: `t_i` is where
    `sde`'s `λ` equals VP's at the `i`-th point of a uniform grid in VP's clock (spanning `sde`'s own `λ(T)` to
    `λ(eps)`). On VP it is the uniform grid; on a user's SDE it puts the steps at the noise levels they would have
    on VP, whatever the user's clock (a uniform grid on `[eps, 6]` for an Ornstein–Uhlenbeck process spends one
    step from σ ≈ 0.11 to the end)."""
    from ..sde import VPSDE

    vp = VPSDE()
    lam_T, lam_eps = _lambda_ends(sde, eps, ref)
    s = torch.linspace(0, 1, steps + 1, **_f64(ref))
    ends = vp.t_from_half_log_snr(torch.stack([lam_T, lam_eps]))  # VP's closed form extends past T = 1 if needed
    lam = vp._half_log_snr(ends[0] + s * (ends[1] - ends[0]))
    return _finish(sde.t_from_half_log_snr(lam), sde, eps, ref)


def vp_quadratic(sde: LinearSDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """DPM-Solver's "time_quadratic" grid of the default VP SDE (uniform in `√t` on VP's clock) carried to `sde`
    through the noise level, between `sde`'s own `λ(T)` and `λ(eps)`: on VP it is `time_quadratic`; on any other
    SDE it puts the steps at the same noise levels whatever its clock. Steps shrink towards the data like `√t`."""
    return vp_power(sde, steps, eps, ref, power=2.0)


# The power of `dpm_solver(method="auto")`'s grid (measured, see `vp_power`).
VP_POWER = 2.5


def vp_power(sde: LinearSDE, steps: int, eps: float, ref: Tensor, power: float = VP_POWER) -> Tensor:
    """Uniform in `t^{1/p}` on the default VP SDE's clock (`p = power`, 2.5 by default; 2 is `vp_quadratic`),
    carried to `sde` through the noise level between its own `λ(T)` and `λ(eps)`: large steps at high noise,
    where an exact or smooth score's ODE is nearly linear, and steps that shrink like `t^{1 - 1/p}` towards the data.

    The grid of `dpm_solver(method="auto")` (DEIS tAB in D + UniC), the recipe for exact scores. Measured with that
    solver at 10 and 20 NFE on the exact-score race (`benchmarks/solvers.py --race`): with order 4, `p` = 2.5-3
    all within 0.5x the best diffusers/k-diffusion configuration (2: 0.81x on the 4x4 grid at 20 NFE); on five
    trained unconditional models (order 4 throughout) 2.5 had the smallest worst case of 2.25, 2.5 and 2.75 from
    10 to 30 NFE (at most 1.4x the default's error, against 2.3x and 2.4x)."""
    return _finish(sde.t_from_half_log_snr(_vp_power_lam(sde, steps, eps, ref, power)), sde, eps, ref)


def _vp_power_lam(sde: LinearSDE, steps: int, eps: float, ref: Tensor, power: float) -> Tensor:
    from ..sde import VPSDE

    vp = VPSDE()
    lam_T, lam_eps = _lambda_ends(sde, eps, ref)
    ends = vp.t_from_half_log_snr(torch.stack([lam_T, lam_eps])) ** (1.0 / power)
    s = ends[0] + torch.linspace(0, 1, steps + 1, **_f64(ref)) * (ends[1] - ends[0])
    return vp._half_log_snr(s ** power)


def blend_weight(steps: int) -> float:
    """The weight of `vp_quadratic` in `blend`: `min(0.5, 0.03 N)` (0.3 at 10 steps, 0.5 from 17 on)."""
    return min(0.5, 0.03 * steps)


def blend(sde: LinearSDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """`λ_i = α λ_i^{vp_quadratic} + (1 - α) λ_i^{log_snr_capped}`, `α = blend_weight(N)`: between the two in log-SNR.

    Exact scores want the steps where the mixture's ODE bends, mid-way in `λ` (`vp_quadratic`: large first steps
    at high noise); trained networks were solved better with even steps at high noise (`log_snr_capped`).
    Measured with the default `dpm_solver` (DEIS-3 in ε + UniC) at 10 and 20 NFE on eight trained models and the exact-score
    race (`benchmarks/solvers.py --trained`, `--race`): with `α = 0` it is at 0.74-1.51x the best peer on the race,
    with `α = 1` at up to 5.7x the previous default's error on a trained model at 10 NFE; `α` = 0.3 at 10 NFE
    and 0.5 at 20 keep both under 1 (0.51-0.91x the best peer; 0.23-0.91x the previous default)."""
    a = blend_weight(steps)
    lam = a * _vp_power_lam(sde, steps, eps, ref, 2.0) + (1 - a) * _log_snr_capped_lam(sde, steps, eps, ref)
    return _finish(sde.t_from_half_log_snr(lam), sde, eps, ref)


TIMESTEPS = {"uniform": uniform, "vp_matched": vp_matched, "time_quadratic": time_quadratic, "log_snr": log_snr, "edm": edm,
             "log_snr_capped": log_snr_capped, "vp_quadratic": vp_quadratic, "vp_power": vp_power,
             "blend": blend}

TimestepSpec = Union[str, Tensor, Callable[[SDE, int, float, Tensor], Tensor]]


def get_timesteps(spec: TimestepSpec, sde: SDE, steps: int, eps: float, ref: Tensor) -> Tensor:
    """A grid from a name in `TIMESTEPS`, a callable `(sde, steps, eps, ref) -> ts`, or an explicit decreasing tensor."""
    if isinstance(spec, Tensor):
        ts = spec.to(device=ref.device, dtype=ref.dtype)
        # Once per call, before any loop: a host sync here is fine.
        if ts.ndim == 1 and ts.shape[0] >= 2 and not (bool((ts[1:] < ts[:-1]).all()) and float(ts[0]) <= sde.T and float(ts[-1]) > 0):
            raise ValueError(f"timesteps must decrease strictly within (0, T={sde.T}]")
    elif callable(spec):
        ts = spec(sde, steps, eps, ref)
    elif isinstance(spec, str):
        if spec == "auto":  # the SDE's own default: uniform for the built-ins, VP-matched for other linear SDEs
            spec = getattr(sde, "default_timesteps", "uniform")
        if spec not in TIMESTEPS:
            raise ValueError(f"timesteps must be 'auto', one of {sorted(TIMESTEPS)}, a callable or a tensor; got {spec!r}")
        if spec != "uniform" and spec != "time_quadratic" and not isinstance(sde, LinearSDE):
            raise TypeError(f"timesteps={spec!r} needs a LinearSDE (log-SNR); sde is a {type(sde).__name__}")
        ts = TIMESTEPS[spec](sde, steps, eps, ref)
    else:
        raise TypeError(f"timesteps must be a name, a callable or a tensor, got {type(spec).__name__}")
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"timesteps must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    return ts
