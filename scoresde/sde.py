"""Forward SDEs `dx = f(x, t) dt + g(t) dw` on `t in [0, T]`, and their reverse-time views.

The forward SDE is the single source of truth: the reverse SDE and the
probability-flow ODE (`SDE.reverse`) are thin views built from it and a score
function. A linear SDE `dx = f(t) x dt + g(t) dw` needs only its two schedule
functions (`LinearSDE`); everything else (marginals, prior, exact
discretisation, log-SNR, the `Schedule` table the solvers read) is derived, by
quadrature when no closed form is given.

Checked and unchecked methods: every public method that takes a time
(`drift`, `diffusion`, `marginal`, `discretize`, `prior_logp`, `drift_coef`,
`marginal_coefs`, `half_log_snr`, `schedule`) validates its arguments on every
call — `t` finite and in `[0, T]`, on any device (one host sync) — and then calls
the unchecked kernel of the same name with a leading underscore (`_drift`, ...),
which trusts a `(B,)` time tensor on the state's device and dtype. Solvers call
the kernels. A subclass may implement either name: a public method it defines
(`def diffusion(self, t)`, as in the README) becomes its kernel, and the checked
wrapper stays in front of it.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ._utils import (
    TimeLike,
    append_dims,
    check_nonneg,
    check_positive,
    check_shape,
    check_tensor,
    check_time,
    event_dim,
    flat_sum,
)
from .schedule import Schedule

ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "SDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "ReverseSDE",
    "Schedule",
]

# Public names whose subclass definitions become the unchecked kernel `_name` behind the checked wrapper.
_CHECKED = ("drift", "diffusion", "marginal", "discretize", "prior_logp",
            "drift_coef", "marginal_coefs", "half_log_snr", "schedule")

# Song et al.'s smallest sampling time for VP and sub-VP; any other LinearSDE samples down to VP's noise level there.
_VP_SAMPLE_EPS = 1e-3
_VP_LIKELIHOOD_EPS = 1e-5


def _checked(fn):
    fn._checks_inputs = True  # type: ignore[attr-defined]
    return fn


def _xt(self, x, t, name="x"):
    x = check_tensor(x, name, min_ndim=1, finite=False)
    return x, check_time(t, x.shape[0], x, self.T)


def _t(self, t):
    return check_time(t, None, None, self.T)


class SDE(abc.ABC):
    """A forward Itô SDE `dx = f(x, t) dt + g(t) dw`, `t in [0, T]`, with a tractable prior at `T`.

    Subclasses implement `drift`, `diffusion`, `marginal`, `prior_sample` and
    `prior_logp` (or their unchecked kernels `_drift`, ...); `reverse` and
    `discretize` come for free. `default_eps` is the smallest time samplers reach
    unless told otherwise."""

    T: float = 1.0
    default_eps: float = _VP_SAMPLE_EPS
    default_likelihood_eps: float = _VP_LIKELIHOOD_EPS
    default_timesteps: str = "uniform"  # the grid of the samplers whose `timesteps` is "auto"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _CHECKED:
            fn = cls.__dict__.get(name)
            if fn is None or getattr(fn, "_checks_inputs", False):
                continue
            inherited = next((b.__dict__[name] for b in cls.__mro__[1:] if name in b.__dict__), None)
            if inherited is None or not getattr(inherited, "_checks_inputs", False):
                continue
            setattr(cls, "_" + name, fn)
            delattr(cls, name)

    # -- checked public methods ---------------------------------------------------

    @_checked
    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """`f(x, t)`, shaped like `x` (batch-first, any trailing shape); `t` is `(B,)` or a float."""
        return self._drift(*_xt(self, x, t))

    @_checked
    def diffusion(self, t: TimeLike) -> Tensor:
        """`g(t)`, shape `(B,)`."""
        return self._diffusion(_t(self, t))

    @_checked
    def marginal(self, x0: Tensor, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """Mean (shaped like `x0`) and std (shape `(B,)`) of the transition `p_0t(x_t | x_0)`."""
        return self._marginal(*_xt(self, x0, t, "x0"))

    @_checked
    def discretize(self, x: Tensor, t: TimeLike, dt: TimeLike) -> Tuple[Tensor, Tensor]:
        """Forward step from `t - dt` to `t`: `x_t ≈ x + f_i + G_i z` with `(f_i, G_i)`, `G_i` of shape `(B,)`."""
        x, t = _xt(self, x, t)
        dt = check_time(dt, x.shape[0], x, None, "dt")
        if bool((dt > t * (1 + 1e-6)).any()):
            raise ValueError("dt must not exceed t (the step would start before time 0)")
        return self._discretize(x, t, dt)

    @_checked
    def prior_logp(self, z: Tensor) -> Tensor:
        """`log p_T(z)` in nats, shape `(B,)`."""
        return self._prior_logp(check_tensor(z, "z", min_ndim=2, finite=False))

    @abc.abstractmethod
    def prior_sample(
        self,
        shape: Sequence[int],
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> Tensor:
        """A sample of the prior `p_T`, of the given batch-first `shape`."""

    # -- kernels (trusted inputs) ----------------------------------------------------

    @abc.abstractmethod
    def _drift(self, x: Tensor, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _diffusion(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _marginal(self, x0: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]: ...

    @abc.abstractmethod
    def _prior_logp(self, z: Tensor) -> Tensor: ...

    def _discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> Tuple[Tensor, Tensor]:
        # Euler–Maruyama; LinearSDE replaces it with the exact Gaussian transition (DDPM for VP, SMLD for VE).
        return self._drift(x, t) * append_dims(dt, x.ndim), self._diffusion(t) * dt.sqrt()

    # -- derived -------------------------------------------------------------------

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE `dx = [f - g² s] dt + g dw̄`, or with `probability_flow` the ODE `dx = [f - ½ g² s] dt`."""
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, bool(probability_flow))


@dataclass(frozen=True, eq=False)
class ReverseSDE(SDE):
    """Reverse-time view of `forward` driven by `score_fn`: drift `f - g² s` (SDE) or `f - ½ g² s` (ODE).

    Time still runs forward in its arguments (`t` is the forward time); a
    solver integrates it from `T` down to `eps`. Marginals and prior are those
    of the forward SDE, whose marginals the reverse process shares."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False
    T: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "T", self.forward.T)

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        g2 = append_dims(self.forward._diffusion(t) ** 2, x.ndim)
        coef = 0.5 if self.probability_flow else 1.0
        return self.forward._drift(x, t) - coef * g2 * self.score_fn(x, t)

    def _diffusion(self, t: Tensor) -> Tensor:
        g = self.forward._diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g

    def _marginal(self, x0: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        return self.forward._marginal(x0, t)

    def prior_sample(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        return self.forward.prior_sample(shape, generator=generator, device=device, dtype=dtype)

    def _prior_logp(self, z: Tensor) -> Tensor:
        return self.forward._prior_logp(z)


# Gauss–Legendre rule on [0, 1], used by the generic LinearSDE quadrature.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)
_GL_X = (_GL_X + 1.0) / 2.0
_GL_W = _GL_W / 2.0


class LinearSDE(SDE):
    """`dx = f(t) x dt + g(t) dw`: subclasses give `drift_coef(t) = f(t)` and `diffusion(t) = g(t)`.

    Transition `x_t | x_0 ~ N(m(t) x_0, σ(t)² I)` with `m = exp ∫₀ᵗ f` and
    `σ² = m² ∫₀ᵗ g²/m²`. Without a closed form `marginal_coefs` overrides, both
    integrals are tabulated once (composite 8-point Gauss–Legendre on 4096
    panels, float64); a query adds one 8-point rule over its last partial
    panel: ~1e-12 relative for smooth schedules, also as `t -> 0`. The prior is `N(0, (m(T)² + σ(T)²) I)`: the marginal at `T` of
    zero-mean, unit-variance data (exactly `N(0, I)` for variance-preserving SDEs).

    `schedule(t)` tabulates `m, σ, λ = log(m/σ), g², f` at the times `t` with the conversions between score,
    ε, x̂₀ and v (`Schedule`); `default_eps` is the time at which `σ/m` equals VP's at `t = 1e-3`, and the samplers'
    default grid (`default_timesteps = "vp_matched"`) puts their steps at VP's uniform grid's noise levels.
    """

    _n_panels: int = 4096
    default_timesteps = "vp_matched"

    def __init__(self, T: float = 1.0):
        self.T = check_positive(T, "T")
        self._tables: dict = {}

    # -- what a subclass provides (either the public name or the kernel) --------------------------

    @abc.abstractmethod
    def _drift_coef(self, t: Tensor) -> Tensor:
        """`f(t)`, shape `(B,)`."""

    @abc.abstractmethod
    def _diffusion(self, t: Tensor) -> Tensor:
        """`g(t)`, shape `(B,)`."""

    # -- checked public methods ------------------------------------------------------------------

    @_checked
    def drift_coef(self, t: TimeLike) -> Tensor:
        """`f(t)`, shape `(B,)`."""
        return self._drift_coef(_t(self, t))

    @_checked
    def marginal_coefs(self, t: TimeLike) -> Tuple[Tensor, Tensor]:
        """`(m(t), σ(t))`, each `(B,)`: the scale and std of `p_0t`, by quadrature unless overridden."""
        return self._marginal_coefs(_t(self, t))

    @_checked
    def half_log_snr(self, t: TimeLike) -> Tensor:
        """`λ(t) = log m(t) - log σ(t)`, decreasing in `t` (the exponential integrators' time)."""
        return self._half_log_snr(_t(self, t))

    @_checked
    def schedule(self, t: TimeLike) -> Schedule:
        """`m, σ, g², f` at the times `t` (a grid or one time per sample) as a `Schedule`."""
        return self._schedule(_t(self, t))

    # -- kernels ----------------------------------------------------------------------------------

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return append_dims(self._drift_coef(t), x.ndim) * x

    def _marginal_coefs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        log_m, integral = self._quadrature(t)
        m = log_m.exp()
        return m, m * integral.clamp_min(0).sqrt()

    def _marginal(self, x0: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        m, std = self._marginal_coefs(t)
        return append_dims(m, x0.ndim) * x0, std

    def _half_log_snr(self, t: Tensor) -> Tensor:
        m, std = self._marginal_coefs(t)
        return m.log() - std.log()

    def _schedule(self, t: Tensor) -> Schedule:
        m, std = self._marginal_coefs(t)
        return Schedule(t, m, std, self._diffusion(t) ** 2, self._drift_coef(t))

    def _discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact transition from `t - dt` to `t`: `f_i = (r - 1) x`, `G_i² = σ(t)² - r² σ(t-dt)²`, `r = m(t)/m(t-dt)`.

        For VP this is DDPM's `x_i = √(1-β_i) x_{i-1} + √β_i z`; for VE it is SMLD's `G_i² = σ_i² - σ_{i-1}²`."""
        m1, s1 = self._marginal_coefs(t)
        m0, s0 = self._marginal_coefs((t - dt).clamp_min(0))
        r = m1 / m0
        G = (s1**2 - (r * s0) ** 2).clamp_min(0).sqrt()
        return append_dims(r - 1, x.ndim) * x, G

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of `half_log_snr` on `(0, T]`: the quadrature table's panel holding the root, then Newton steps
        `t ← t - (λ(t) - λ*)/λ'(t)` with `λ' = -g²/(2σ²)`, kept inside that panel (no host sync).

        The adaptive ODE solves call this once per evaluation in σ-time, so it must be cheap: 3 evaluations of the
        marginals instead of the 64 of a bisection."""
        _, _, I, _ = self._table(lam.device, lam.dtype)
        n, h = self._n_panels, self.T / self._n_panels
        # On the table, σ²/m² = I(t) increases with t; the root of λ(t) = λ* is where I = e^{-2λ*}.
        target = torch.exp(-2 * lam)
        j = (torch.searchsorted(I, target.reshape(-1)).reshape(lam.shape) - 1).clamp(0, n - 1)
        lo, hi = j.to(lam.dtype) * h, (j + 1).to(lam.dtype) * h
        frac = ((target - I[j]) / (I[j + 1] - I[j])).clamp(0, 1)
        t = (lo + frac * h).clamp_min(h * 1e-9)
        for _ in range(3):  # quadratic convergence from the panel: 2e-15 relative after 3 (1e-4 after 1)
            s = self._schedule(t)
            slope = -s.g2 / (2 * s.sigma**2)
            t = (t - (s.lam - lam) / slope).clamp(lo, hi).clamp_min(h * 1e-12)
        return t

    def prior_std(self) -> float:
        """Std of the isotropic Gaussian prior `p_T`."""
        m, std = self._marginal_coefs(torch.tensor([self.T], dtype=torch.float64))
        return float((m**2 + std**2).sqrt())

    def prior_sample(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        shape = check_shape(shape)
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std()

    def _prior_logp(self, z: Tensor) -> Tensor:
        s = self.prior_std()
        d = event_dim(z)
        return -0.5 * d * math.log(2 * math.pi * s * s) - flat_sum(z**2) / (2 * s * s)

    # -- default end times from the noise level ------------------------------------------------------

    def _time_at_vp_noise(self, t_vp: float) -> float:
        """The time at which `σ/m` equals the default VP's at `t_vp` (a noise level fits every SDE; a clock time one)."""
        key = ("eps_at_vp", t_vp)
        if key not in self._tables:
            lam = VPSDE()._half_log_snr(torch.tensor([t_vp], dtype=torch.float64))
            t = float(self.t_from_half_log_snr(lam)[0])
            if not (math.isfinite(t) and 0 < t < self.T):
                raise ValueError(f"{self!r} never reaches the noise level of VP at t={t_vp}: pass eps explicitly")
            self._tables[key] = t
        return self._tables[key]

    @property
    def default_eps(self) -> float:  # type: ignore[override]
        """Smallest sampling time: the time at which `σ(t)/m(t)` equals VP's at `t = 1e-3` (VP, sub-VP: 1e-3; VE: 1e-5)."""
        return self._time_at_vp_noise(_VP_SAMPLE_EPS)

    @property
    def default_likelihood_eps(self) -> float:  # type: ignore[override]
        """Smallest likelihood time: where `σ/m` equals VP's at `t = 1e-5` (the built-ins keep Song et al.'s 1e-5)."""
        return self._time_at_vp_noise(_VP_LIKELIHOOD_EPS)

    # -- the generic quadrature ---------------------------------------------------------------------

    def _table(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = tuple(a.to(device=device, dtype=dtype) for a in self._build_table())
        return self._tables[key]

    @torch.no_grad()
    def _build_table(self):
        """Node values of `F(t) = ∫₀ᵗ f` and `I(t) = ∫₀ᵗ g² e^{-2F}` and their derivatives, in float64."""
        f64 = torch.float64
        n, h = self._n_panels, self.T / self._n_panels
        nodes = torch.linspace(0.0, self.T, n + 1, dtype=f64)
        gx, gw = torch.tensor(_GL_X, dtype=f64), torch.tensor(_GL_W, dtype=f64)
        f = lambda s: self._drift_coef(s.reshape(-1)).to(f64).reshape(s.shape)  # noqa: E731
        g2 = lambda s: (self._diffusion(s.reshape(-1)).to(f64) ** 2).reshape(s.shape)  # noqa: E731
        left = nodes[:-1]
        # F at the panel nodes: composite Gauss–Legendre.
        inner = left[:, None] + h * gx[None, :]  # (n, 8) Gauss points of each panel
        F_nodes = torch.cat([torch.zeros(1, dtype=f64), torch.cumsum(h * (f(inner) * gw).sum(1), 0)])
        # F at the Gauss points themselves: a second rule on [left, point].
        sub = left[:, None, None] + h * gx[None, :, None] * gx[None, None, :]  # (n, 8, 8)
        F_inner = F_nodes[:-1, None] + h * gx[None, :] * (f(sub) * gw).sum(-1)
        q_inner = g2(inner) * torch.exp(-2 * F_inner)
        I_nodes = torch.cat([torch.zeros(1, dtype=f64), torch.cumsum(h * (q_inner * gw).sum(1), 0)])
        dF = f(nodes)
        dI = g2(nodes) * torch.exp(-2 * F_nodes)
        return F_nodes, dF, I_nodes, dI

    def _quadrature(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        """`(F(t), I(t))`: each the table value at the panel's left node plus an 8-point Gauss rule over
        the rest of the panel (`F` inside that rule by Hermite interpolation), which keeps its relative accuracy as `t -> 0`
        (where `I` can vanish like `t²`, e.g. sub-VP, and interpolation alone would not)."""
        F, dF, I, _ = self._table(t.device, t.dtype)
        n, h = self._n_panels, self.T / self._n_panels
        j = (t / h).floor().clamp(0, n - 1).long()
        left = j.to(t.dtype) * h

        def F_at(s: Tensor) -> Tensor:
            u = ((s - left) / h).clamp(0, 1)
            u2, u3 = u * u, u * u * u
            return ((2 * u3 - 3 * u2 + 1) * F[j] + (u3 - 2 * u2 + u) * h * dF[j]
                    + (-2 * u3 + 3 * u2) * F[j + 1] + (u3 - u2) * h * dF[j + 1])

        gx, gw = self._gauss(t)
        width = (t - left)[:, None]
        pts = left[:, None] + width * gx  # (B, 8)
        F_pts = F_at(pts.T).T
        g2 = self._diffusion(pts.reshape(-1)).reshape(pts.shape) ** 2
        f = self._drift_coef(pts.reshape(-1)).reshape(pts.shape)
        w = width[:, 0]
        return F[j] + w * (f * gw).sum(1), I[j] + w * (g2 * torch.exp(-2 * F_pts) * gw).sum(1)

    def _gauss(self, ref: Tensor) -> Tuple[Tensor, Tensor]:
        key = ("gauss", ref.device, ref.dtype)
        if key not in self._tables:
            self._tables[key] = (torch.tensor(_GL_X, device=ref.device, dtype=ref.dtype),
                                 torch.tensor(_GL_W, device=ref.device, dtype=ref.dtype))
        return self._tables[key]


_check_shape = check_shape  # kept for older imports


class VPSDE(LinearSDE):
    """Variance preserving (DDPM in continuous time): `dx = -½ β(t) x dt + √β(t) dw`, `β(t) = β_min + t (β_max - β_min)`.

    Song et al. 2021, "Score-Based Generative Modeling through SDEs". Prior `N(0, I)`. `default_eps = 1e-3`."""

    default_eps = _VP_SAMPLE_EPS  # type: ignore[assignment]
    default_likelihood_eps = _VP_LIKELIHOOD_EPS  # type: ignore[assignment]
    default_timesteps = "uniform"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        super().__init__(T)
        self.beta_min = check_nonneg(beta_min, "beta_min")
        self.beta_max = check_positive(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({beta_max}) must be >= beta_min ({beta_min})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})"

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        """`∫₀ᵗ β = β_min t + ½ t² (β_max - β_min)`."""
        return self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)

    def _drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def _diffusion(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def _marginal_coefs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        log_m = -0.5 * self.integral_beta(t)
        return log_m.exp(), (-torch.expm1(2 * log_m)).sqrt()

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        # ∫β(t) = log(1 + e^{-2λ}): solve the quadratic in t.
        return self._t_from_integral_beta(torch.nn.functional.softplus(-2 * lam))

    def _t_from_integral_beta(self, target: Tensor) -> Tensor:
        """Solve `∫₀ᵗ β = target` for `t` (a quadratic; written without cancellation)."""
        if self.beta_max == self.beta_min:
            return target / self.beta_min
        d = self.beta_max - self.beta_min
        return 2 * target / (self.beta_min + (self.beta_min**2 + 2 * d * target).sqrt())

    def prior_std(self) -> float:
        return 1.0


class SubVPSDE(VPSDE):
    """Sub-VP: drift as VP, `g(t)² = β(t) (1 - exp(-2 ∫₀ᵗ β))`; std `1 - exp(-∫₀ᵗ β)`. Song et al. 2021. Prior `N(0, I)`."""

    def _diffusion(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.integral_beta(t))).sqrt()

    def _marginal_coefs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        log_m = -0.5 * self.integral_beta(t)
        return log_m.exp(), -torch.expm1(2 * log_m)

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        # m / (1 - m²) = e^λ  =>  m = (√(1 + 4e^{2λ}) - 1) / (2 e^λ), then ∫β = -2 log m.
        # Written with e^{-λ} so it neither overflows for large λ nor cancels for small.
        a = torch.exp(-lam)
        m = 2.0 / (a + (a * a + 4).sqrt())
        return self._t_from_integral_beta(-2 * m.log())


class VESDE(LinearSDE):
    """Variance exploding (SMLD/NCSN): `dx = √(dσ²/dt) dw`, `σ(t) = σ_min (σ_max/σ_min)^t`. Prior `N(0, σ_max² I)`.

    The marginal std is the exact `√(σ(t)² - σ_min²)` of this SDE started at
    `t = 0`; Song et al.'s code uses `σ(t)` instead (the two differ by `σ_min²`). `default_eps = 1e-5` (theirs)."""

    default_eps = 1e-5  # type: ignore[assignment]
    default_likelihood_eps = _VP_LIKELIHOOD_EPS  # type: ignore[assignment]
    default_timesteps = "uniform"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        super().__init__(T)
        self.sigma_min = check_positive(sigma_min, "sigma_min")
        self.sigma_max = check_positive(sigma_max, "sigma_max")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({sigma_min}) must be < sigma_max ({sigma_max})")
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T})"

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t / self.T * self._log_ratio)

    def _drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def _diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def _marginal_coefs(self, t: Tensor) -> Tuple[Tensor, Tensor]:
        # σ(t)² - σ_min² = σ_min² expm1(2 t log ratio): no cancellation near t = 0.
        std = self.sigma_min * torch.expm1(2 * t / self.T * self._log_ratio).sqrt()
        return torch.ones_like(t), std

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        # σ_min² expm1(2 t L / T) = e^{-2λ}
        return self.T * torch.log1p(torch.exp(-2 * lam) / self.sigma_min**2) / (2 * self._log_ratio)

    def prior_std(self) -> float:
        return self.sigma_max


class CosineVPSDE(LinearSDE):
    """A VP SDE with the cosine schedule of Nichol & Dhariwal 2021, given only by its two schedule functions.

    `ᾱ(t) = cos²(u(t)) / cos²(u₀)` with the angle `u(t) = u₀ + (u₁ - u₀) t/T`,
    `u₀ = π/2 · s/(1+s)`, `u₁ = π/2 - δ`; then `β(t) = 2 u'(t) tan u(t)`,
    `f = -½β`, `g = √β`. The marginals come from `LinearSDE`'s quadrature —
    this class is the example of how little a new SDE needs."""

    def __init__(self, s: float = 0.008, delta: float = 0.01, T: float = 1.0):
        super().__init__(T)
        self.s, self.delta = check_positive(s, "s"), check_positive(delta, "delta")
        self.u0, self.u1 = math.pi / 2 * s / (1 + s), math.pi / 2 - delta
        if self.u1 <= self.u0:
            raise ValueError(f"delta ({delta}) is too large for s ({s}): the angle range is empty")

    def __repr__(self) -> str:
        return f"CosineVPSDE(s={self.s}, delta={self.delta}, T={self.T})"

    def _beta(self, t: Tensor) -> Tensor:
        du = (self.u1 - self.u0) / self.T
        return 2 * du * torch.tan(self.u0 + du * t)

    def drift_coef(self, t):
        return -0.5 * self._beta(t)

    def diffusion(self, t):
        return self._beta(t).sqrt()
