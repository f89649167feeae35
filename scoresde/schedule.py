"""`Schedule`: a linear SDE's coefficients at a set of times, and every conversion between score, ε, x̂₀ and v.

For `x_t = m(t) x₀ + σ(t) ε` (any `LinearSDE`), Tweedie's formula links the score to the other predictions:
`x̂₀ = (x + σ² s)/m`, `ε̂ = -σ s`, `s = (m x̂₀ - x)/σ²`. This module is the only place those formulas live:
the solvers, the final denoising step, `ScoreModel` and the losses all read them from here (as flow_matching's
`AffineProbPath` does for its paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from ._utils import append_dims

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """`m, σ, g², f` of a linear SDE at times `t` — a time grid `(N+1,)` or one time per sample `(B,)` — with
    `λ = log(m/σ)`. Index a grid (`schedule[i]`) for one time's 0-d row; a `(B,)` schedule broadcasts over a
    batch of any rank. Build it with `sde.schedule(t)` (checked) or `sde._schedule(t)` (solvers)."""

    t: Tensor
    m: Tensor
    sigma: Tensor
    g2: Tensor
    f: Tensor

    @property
    def lam(self) -> Tensor:
        """Half log-SNR `λ = log m - log σ`."""
        return self.m.log() - self.sigma.log()

    def __getitem__(self, i) -> "Schedule":
        return Schedule(self.t[i], self.m[i], self.sigma[i], self.g2[i], self.f[i])

    def __len__(self) -> int:
        return self.t.shape[0]

    def to(self, *args, **kwargs) -> "Schedule":
        return Schedule(*(v.to(*args, **kwargs) for v in (self.t, self.m, self.sigma, self.g2, self.f)))

    def floats(self) -> "Schedule":
        """The same table as Python lists (one host copy): per-step scalars with no tensor work in a loop."""
        return Schedule(*(v.tolist() for v in (self.t, self.m, self.sigma, self.g2, self.f)))  # type: ignore[arg-type]

    @staticmethod
    def _b(v: Tensor, x: Tensor) -> Tensor:
        return append_dims(v, x.ndim) if isinstance(v, Tensor) else v

    # -- conversions --------------------------------------------------------------------------

    def x0_from_score(self, x: Tensor, score: Tensor) -> Tensor:
        """Tweedie's denoiser `x̂₀ = (x + σ² s)/m`."""
        b = self._b
        return (x + b(self.sigma * self.sigma, x) * score) / b(self.m, x)

    def eps_from_score(self, score: Tensor) -> Tensor:
        """`ε̂ = -σ s`."""
        return -self._b(self.sigma, score) * score

    def score_from_eps(self, eps: Tensor) -> Tensor:
        """`s = -ε̂/σ`."""
        return -eps / self._b(self.sigma, eps)

    def score_from_x0(self, x: Tensor, x0: Tensor) -> Tensor:
        """`s = (m x̂₀ - x)/σ²`."""
        b = self._b
        return (b(self.m, x) * x0 - x) / b(self.sigma * self.sigma, x)

    def perturb(self, x0: Tensor, noise: Tensor) -> Tensor:
        """`x_t = m x₀ + σ ε`."""
        b = self._b
        return b(self.m, x0) * x0 + b(self.sigma, x0) * noise

    def dsm_residual(self, score: Tensor, noise: Tensor) -> Tensor:
        """`σ s + ε`: the denoising score matching residual `σ (s - ∇ log p_0t)` without dividing by a tiny `σ`."""
        return self._b(self.sigma, score) * score + noise

    # -- the v parameterisation (Salimans & Ho 2022), with data std `sigma_data` -------------------

    def c_in(self, sigma_data: float = 1.0) -> Tensor:
        """`1/√(m² σ_data² + σ²)`: the input scale that gives `x_t` unit variance."""
        return torch.rsqrt(self.m * self.m * sigma_data**2 + self.sigma * self.sigma)

    def v_coefs(self, sigma_data: float = 1.0) -> Tuple[Tensor, Tensor]:
        """`α = m σ_data c_in`, `β = σ c_in` (`α² + β² = 1`, `c_in x_t = α x₀/σ_data + β ε`)."""
        c = self.c_in(sigma_data)
        return self.m * sigma_data * c, self.sigma * c

    def v_target(self, x0: Tensor, noise: Tensor, sigma_data: float = 1.0) -> Tensor:
        """`v = α ε - β x₀/σ_data`."""
        a, b_ = self.v_coefs(sigma_data)
        return self._b(a, x0) * noise - self._b(b_, x0) * x0 / sigma_data

    def score_from_v(self, x: Tensor, v: Tensor, sigma_data: float = 1.0) -> Tensor:
        """From `v`: `ε̂ = β c_in x + α v`, then `s = -ε̂/σ`."""
        a, b_ = self.v_coefs(sigma_data)
        b = self._b
        return self.score_from_eps(b(b_ * self.c_in(sigma_data), x) * x + b(a, x) * v)
