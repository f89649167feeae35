"""The exact-score oracle: Gaussian-mixture data, whose every SDE marginal is known in closed form.

For data `Σ_k w_k N(μ_k, Σ_k)` and a linear SDE with transition
`N(m(t) x₀, σ(t)² I)`, the marginal is `p_t = Σ_k w_k N(m μ_k, m² Σ_k + σ² I)`.
So the true score `∇ log p_t` and the true `log p_t` are exact for every `t`:
samplers and likelihoods driven by `GaussianMixture.score_fn(sde)` carry zero
model error, and what is left is solver error alone.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._utils import TimeLike, batch_time, check_tensor, check_time
from .sde import LinearSDE

__all__ = ["GaussianMixture", "ring8", "grid_mixture", "random_mixture", "mixture64"]


class GaussianMixture:
    """`p₀(x) = Σ_k w_k N(x; μ_k, Σ_k)` over samples of shape `event_shape`, with exact `log p_t` and `∇ log p_t`.

    `covs` is isotropic (shape `(K,)`: variances), diagonal (`(K, D)`) or full
    (`(K, D, D)`, eigendecomposed once, so `m² Σ + σ² I = U diag(m² λ + σ²) Uᵀ`
    costs no new factorisation per `t`). Parameters are kept in float64 and
    cast once per device/dtype.
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        means: Tensor | Sequence[Sequence[float]],
        covs: Tensor | Sequence,
        *,
        event_shape: Optional[Sequence[int]] = None,
    ):
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must have shape (K, D) with K = len(weights) = {w.shape[0]}, got {tuple(mu.shape)}")
        if not (torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not torch.isfinite(mu).all():
            raise ValueError("means contain NaN or inf")
        K, D = mu.shape
        c = torch.as_tensor(covs, dtype=torch.float64)
        if c.ndim == 0:
            c = c.expand(K)
        if c.shape == (K,):
            lam, U = c[:, None].expand(K, D).clone(), None
        elif c.shape == (K, D):
            lam, U = c.clone(), None
        elif c.shape == (K, D, D):
            if not torch.allclose(c, c.transpose(1, 2)):
                raise ValueError("covs must be symmetric")
            lam, U = torch.linalg.eigh(c)
        else:
            raise ValueError(f"covs must have shape (K,), (K, D) or (K, D, D) with K={K}, D={D}; got {tuple(c.shape)}")
        if not (torch.isfinite(lam).all() and (lam > 0).all()):
            raise ValueError("covs must be positive definite")
        if event_shape is None:
            event_shape = (D,)
        event_shape = tuple(int(s) for s in event_shape)
        if math.prod(event_shape) != D:
            raise ValueError(f"event_shape {event_shape} does not hold D={D} elements")
        self.weights = w / w.sum()
        self.means, self.eigvals, self.eigvecs = mu, lam, U
        self.event_shape = event_shape
        self._cache: dict = {}

    def __repr__(self) -> str:
        kind = "full" if self.eigvecs is not None else "diagonal"
        return f"GaussianMixture(K={self.n_modes}, D={self.dim}, event_shape={self.event_shape}, covs={kind})"

    @property
    def n_modes(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _params(self, ref: Tensor):
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            cast = lambda a: None if a is None else a.to(device=ref.device, dtype=ref.dtype)  # noqa: E731
            self._cache[key] = (cast(self.weights.log()), cast(self.means), cast(self.eigvals), cast(self.eigvecs))
        return self._cache[key]

    def _coefs(self, x: Tensor, t: Optional[TimeLike], sde: Optional[LinearSDE], checked: bool = True) -> Tuple[Tensor, Tensor]:
        B = x.shape[0]
        if t is None:
            one = torch.ones(B, device=x.device, dtype=x.dtype)
            return one, torch.zeros_like(one)
        if sde is None:
            raise ValueError("sde is required when t is given")
        if not hasattr(sde, "_marginal_coefs"):
            raise TypeError(f"sde must be a LinearSDE (with marginal_coefs), got {type(sde).__name__}")
        # A user's call checks t's values (one host sync); the bound score_fn, which solvers call every step, only its shape.
        t = check_time(t, B, x, sde.T) if checked else batch_time(t, B, x)
        return sde._marginal_coefs(t)

    def _components(self, x: Tensor, t, sde, checked: bool = True) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-component log-density `(B, K)`, whitened residual pieces for the score."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        logw, mu, lam, U = self._params(x)
        m, s = self._coefs(x, t, sde, checked)
        xf = x.flatten(1)  # (B, D)
        r = xf[:, None, :] - m[:, None, None] * mu[None]  # (B, K, D)
        if U is not None:
            r = torch.einsum("bkd,kde->bke", r, U)  # coordinates in each component's eigenbasis
        var = (m * m)[:, None, None] * lam[None] + (s * s)[:, None, None]  # (B, K, D)
        logn = -0.5 * ((r * r) / var + var.log()).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)
        return logw[None] + logn, r, var, U

    def log_prob(self, x: Tensor, t: Optional[TimeLike] = None, *, sde: Optional[LinearSDE] = None) -> Tensor:
        """`log p_t(x)` in nats, shape `(B,)`; `t=None` is the data density `p₀`."""
        check_tensor(x, "x", min_ndim=2, finite=False)
        logc, *_ = self._components(x, t, sde)
        return torch.logsumexp(logc, dim=1)

    def score(self, x: Tensor, t: Optional[TimeLike] = None, *, sde: Optional[LinearSDE] = None) -> Tensor:
        """`∇ₓ log p_t(x) = -Σ_k r_k(x) (m² Σ_k + σ² I)⁻¹ (x - m μ_k)`, `r_k` the posterior responsibilities."""
        check_tensor(x, "x", min_ndim=2, finite=False)
        return self._score(x, t, sde, True)

    def _score(self, x: Tensor, t, sde, checked: bool) -> Tensor:
        logc, r, var, U = self._components(x, t, sde, checked)
        resp = torch.softmax(logc, dim=1)  # (B, K)
        g = -(r / var) * resp[:, :, None]  # (B, K, D)
        if U is not None:
            g = torch.einsum("bke,kde->bkd", g, U)
        return g.sum(1).reshape(x.shape)

    def score_fn(self, sde: LinearSDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact score of the marginals of `sde`, as a `score_fn(x, t)` for samplers and likelihoods."""
        if not hasattr(sde, "_marginal_coefs"):
            raise TypeError(f"sde must be a LinearSDE (with marginal_coefs), got {type(sde).__name__}")
        return partial(_bound_score, self, sde)

    def sample(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
        return_labels: bool = False,
    ) -> Tensor | Tuple[Tensor, Tensor]:
        """`n` samples of `p₀`, shape `(n, *event_shape)` (and their component labels)."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive int, got {n!r}")
        dtype = dtype or torch.get_default_dtype()
        ref = torch.empty((), device=device, dtype=dtype)
        logw, mu, lam, U = self._params(ref)
        labels = torch.multinomial(logw.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, device=device, dtype=dtype) * lam[labels].sqrt()
        if U is not None:
            z = torch.einsum("bkd,bd->bk", U[labels], z)
        x = (mu[labels] + z).reshape((n,) + self.event_shape)
        return (x, labels) if return_labels else x

    def classify(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean for each sample, `(B,)` long."""
        _, mu, _, _ = self._params(x)
        return torch.cdist(x.flatten(1), mu).argmin(1)

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        """Total covariance of `p₀`, `(D, D)` float64."""
        if self.eigvecs is None:
            comp = torch.diag_embed(self.eigvals)
        else:
            comp = self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)
        d = self.means - self.mean()
        w = self.weights[:, None, None]
        return (w * (comp + d[:, :, None] * d[:, None, :])).sum(0)


def _bound_score(mix: GaussianMixture, sde: LinearSDE, x: Tensor, t: Tensor) -> Tensor:
    return mix._score(x, t, sde, False)


def ring8(radius: float = 2.0, std: float = 0.15, n_modes: int = 8) -> GaussianMixture:
    """The 2-D ring: `n_modes` equal-weight isotropic Gaussians evenly spaced on a circle."""
    a = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([a.cos(), a.sin()], 1)
    return GaussianMixture(torch.ones(n_modes), means, torch.full((n_modes,), std**2))


def grid_mixture(n_side: int = 4, spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """`n_side × n_side` equal-weight isotropic Gaussians on a square grid centred at 0."""
    c = (torch.arange(n_side, dtype=torch.float64) - (n_side - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(torch.ones(n_side**2), means, torch.full((n_side**2,), std**2))


def random_mixture(
    dim: int,
    n_modes: int = 8,
    *,
    cov: str = "diag",
    seed: int = 0,
    event_shape: Optional[Sequence[int]] = None,
) -> GaussianMixture:
    """A reproducible random mixture in `dim` dimensions: means `~N(0, 0.64 I)`, variances in [0.02, 0.2],
    weights `∝ exp(0.5 N(0,1))`; `cov` is `"iso"`, `"diag"` or `"full"` (random eigenbasis)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    w = torch.exp(0.5 * torch.randn(n_modes, generator=g, dtype=f64))
    means = 0.8 * torch.randn(n_modes, dim, generator=g, dtype=f64)
    var = 0.02 + 0.18 * torch.rand(n_modes, dim, generator=g, dtype=f64)
    if cov == "iso":
        covs = var[:, 0]
    elif cov == "diag":
        covs = var
    elif cov == "full":
        Q, _ = torch.linalg.qr(torch.randn(n_modes, dim, dim, generator=g, dtype=f64))
        covs = Q @ torch.diag_embed(var) @ Q.transpose(1, 2)
        covs = 0.5 * (covs + covs.transpose(1, 2))
    else:
        raise ValueError(f"cov must be 'iso', 'diag' or 'full', got {cov!r}")
    return GaussianMixture(w, means, covs, event_shape=event_shape)


def mixture64() -> GaussianMixture:
    """The 64-dimensional benchmark mixture (8 diagonal modes), samples shaped `(1, 8, 8)` like tiny images."""
    return random_mixture(64, 8, cov="diag", seed=0, event_shape=(1, 8, 8))
