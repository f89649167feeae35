"""The exact-score oracle: Gaussian-mixture data, whose every SDE marginal is known in closed form.

For data `Σ_k w_k N(μ_k, Σ_k)` and a linear SDE with transition
`N(m(t) x₀, σ(t)² I)`, the marginal is `p_t = Σ_k w_k N(m μ_k, m² Σ_k + σ² I)`.
So the true score `∇ log p_t` and the true `log p_t` are exact for every `t`:
samplers and likelihoods driven by `GaussianMixture.score_fn(sde)` carry zero
model error, and what is left is solver error alone.

Conditioning is exact too: each component is its own class (`score_fn(sde)(x, t, y)` is the score of
`N(m μ_y, m² Σ_y + σ² I)`, `log_prob_y` is `log p_t(y | x)`), and `posterior(obs)` is the posterior of `x₀`
given a linear Gaussian observation, again a Gaussian mixture, so conditional samplers are measured against it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._utils import TimeLike, batch_time, check_tensor, check_time
from .guidance import _batch_labels, check_labels
from .observation import Inpainting, Observation
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

    def _score_given(self, x: Tensor, t, sde, labels: Tensor) -> Tensor:
        """The score of `p_t(x | component labels_b)` per sample; label `K` is the null label (the unconditional
        score), any other label outside `[0, K)` gives NaN. No host sync: solvers call this every step."""
        logc, r, var, U = self._components(x, t, sde, False)
        K = self.n_modes
        # One-hot responsibilities reuse the mixture formula: the other components enter times an exact 0, so the
        # result is the single component's score; the null label K keeps the softmax (classifier_free sends it).
        onehot = (labels[:, None] == torch.arange(K, device=x.device)).to(logc.dtype)
        resp = torch.where((labels == K)[:, None], torch.softmax(logc, dim=1), onehot)
        resp = resp.masked_fill(((labels < 0) | (labels > K))[:, None], float("nan"))
        g = -(r / var) * resp[:, :, None]
        if U is not None:
            g = torch.einsum("bke,kde->bkd", g, U)
        return g.sum(1).reshape(x.shape)

    def score_fn(self, sde: LinearSDE, y: Optional[Union[int, Tensor]] = None) -> "_OracleScore":
        """The exact score of the marginals of `sde` as a callable `f(x, t, y=None)` for samplers, likelihoods and
        guidance: `y` a `(B,)` long tensor of component indices gives `∇ₓ log p_t(x | y)`, `None` `∇ₓ log p_t(x)`.

        With `y=labels` (an int or a `(B,)` long tensor in `[0, K)`) the callable is bound to them: `f(x, t)` is
        the conditional score of those components. Unbound, `f.num_classes == K` and label `K` is the null label
        (the unconditional score), as for a class-conditional `ScoreModel`, so `guidance.classifier_free` takes it.
        """
        if not hasattr(sde, "_marginal_coefs"):
            raise TypeError(f"sde must be a LinearSDE (with marginal_coefs), got {type(sde).__name__}")
        if y is not None:
            y = check_labels(y, "y", self.n_modes)
        return _OracleScore(self, sde, y)

    def log_prob_y(self, x: Tensor, t: Optional[TimeLike] = None, *, sde: Optional[LinearSDE] = None) -> Tensor:
        """`log p_t(y = k | x) = log w_k + log N(x; m μ_k, m² Σ_k + σ² I) - log p_t(x)`, shape `(B, K)`; `t=None`
        is `t = 0`. The exact noisy classifier: `∇ₓ log p_t(y | x) + ∇ₓ log p_t(x) = ∇ₓ log p_t(x | y)`."""
        check_tensor(x, "x", min_ndim=2, finite=False)
        logc, *_ = self._components(x, t, sde)
        return torch.log_softmax(logc, dim=1)

    def posterior(self, obs: Observation) -> "GaussianMixture":
        """The exact posterior `p(x₀ | y) ∝ p₀(x₀) N(y; A x₀, noise_std² I)`, again a Gaussian mixture (float64).

        Per component (Kalman form): `S = A Σ_k Aᵀ + σ² I`, `G = Σ_k Aᵀ S⁻¹`, `μ' = μ_k + G (y - A μ_k)`,
        `Σ' = Σ_k - G A Σ_k`, weight `∝ w_k N(y; A μ_k, S)`. `obs.y` must be one observation `(M,)` shared by
        the batch. A noise-free `Inpainting` gives the mixture over the unobserved entries only (the Schur
        complement), event shape `(D - M,)`, in the flattened order of `~mask`; a noise-free general
        `Observation` has a degenerate posterior (supported on `{A x = y}`) and raises."""
        if not isinstance(obs, Observation):
            raise TypeError(f"obs must be an Observation or Inpainting, got {type(obs).__name__}")
        if isinstance(obs, Inpainting):
            return self._posterior_inpainting(obs)
        if obs.y.ndim != 1:
            raise ValueError(f"posterior needs one observation shared by the batch: obs.y must have shape (M,), "
                             f"got {tuple(obs.y.shape)}")
        if obs.noise_free:
            raise ValueError("posterior of a noise-free general Observation is degenerate (supported on {A x = y}, "
                             "no density): give it noise_std > 0, or use Inpainting for observed entries")
        f64 = torch.float64
        if isinstance(obs.A, Tensor):
            A = obs.matrix(self.event_shape, torch.empty((), dtype=f64)).detach()
        else:
            # A callable is applied in its own dtype/device (its parameters may be float32), then cast.
            A = obs.matrix(self.event_shape).detach().to(device="cpu", dtype=f64)
        y = obs.y.detach().to(device="cpu", dtype=f64)
        check_tensor(y, "obs.y")
        M = A.shape[0]
        Sig, mu, s2 = self.covariances(), self.means, obs.noise_std**2
        AS = A @ Sig  # (K, M, D)
        S = AS @ A.T + s2 * torch.eye(M, dtype=f64)
        L = torch.linalg.cholesky(S)
        resid = y - mu @ A.T  # (K, M)
        gain = torch.cholesky_solve(AS, L).transpose(1, 2)  # Σ Aᵀ S⁻¹, (K, D, M)
        mean = mu + (gain @ resid[:, :, None])[:, :, 0]
        # Joseph form of Σ - G A Σ: the same matrix, but a sum of PSD terms, so rounding cannot make it indefinite.
        IGA = torch.eye(self.dim, dtype=f64) - gain @ A
        cov = IGA @ Sig @ IGA.transpose(1, 2) + s2 * gain @ gain.transpose(1, 2)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        w = self._posterior_weights(L, resid)
        return GaussianMixture(w, mean, cov, event_shape=self.event_shape)

    def _posterior_inpainting(self, obs: Inpainting) -> "GaussianMixture":
        """Condition on `x[mask] = x_known[mask]`: `μ_u + Σ_uo Σ_oo⁻¹ (x_o - μ_o)`, `Σ_uu - Σ_uo Σ_oo⁻¹ Σ_ou`."""
        f64 = torch.float64
        xo = obs.observed(self.event_shape).detach().to(device="cpu", dtype=f64)  # raises for a per-sample one
        check_tensor(xo, "x_known")
        mask = obs.mask.detach().to("cpu").flatten()
        o, u = mask.nonzero().flatten(), (~mask).nonzero().flatten()
        if u.numel() == 0:
            raise ValueError("mask observes every entry: the posterior is a point mass, nothing is left to infer")
        mu = self.means
        resid = xo - mu[:, o]  # (K, M)
        if self.eigvecs is None:
            # Diagonal components: the unobserved entries are independent of the observed ones; keep them diagonal.
            lam = self.eigvals
            L = torch.diag_embed(lam[:, o].sqrt())
            return GaussianMixture(self._posterior_weights(L, resid), mu[:, u], lam[:, u])
        Sig = self.covariances()
        Soo, Suo, Suu = Sig[:, o][:, :, o], Sig[:, u][:, :, o], Sig[:, u][:, :, u]
        L = torch.linalg.cholesky(Soo)
        gain = torch.cholesky_solve(Suo.transpose(1, 2), L).transpose(1, 2)  # Σ_uo Σ_oo⁻¹, (K, D-M, M)
        mean = mu[:, u] + (gain @ resid[:, :, None])[:, :, 0]
        cov = Suu - gain @ Suo.transpose(1, 2)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        return GaussianMixture(self._posterior_weights(L, resid), mean, cov)

    def _posterior_weights(self, L: Tensor, resid: Tensor) -> Tensor:
        """`w_k N(resid_k; 0, L_k L_kᵀ)` normalised, in log space (the evidence of a sharp observation underflows)."""
        z = torch.linalg.solve_triangular(L, resid[:, :, None], upper=False)[:, :, 0]
        logn = -0.5 * (z * z).sum(1) - torch.diagonal(L, dim1=1, dim2=2).log().sum(1) - 0.5 * resid.shape[1] * math.log(2 * math.pi)
        logw = self.weights.log() + logn
        return torch.exp(logw - torch.logsumexp(logw, 0))

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

    def covariances(self) -> Tensor:
        """The component covariances `Σ_k = U_k diag(λ_k) U_kᵀ`, `(K, D, D)` float64 (symmetric to rounding)."""
        if self.eigvecs is None:
            return torch.diag_embed(self.eigvals)
        c = self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(1, 2)
        return 0.5 * (c + c.transpose(1, 2))

    def covariance(self) -> Tensor:
        """Total covariance of `p₀`, `(D, D)` float64."""
        comp = self.covariances()
        d = self.means - self.mean()
        w = self.weights[:, None, None]
        return (w * (comp + d[:, :, None] * d[:, None, :])).sum(0)


class _OracleScore:
    """`f(x, t, y=None)`: the exact (conditional) score of a `GaussianMixture`'s marginals under `sde`.

    Checks shapes and dtypes only, never values (no host sync: solvers call it every step); labels are checked
    where they enter, in `score_fn(sde, y=...)` and the guidance functions."""

    def __init__(self, mix: GaussianMixture, sde: LinearSDE, labels: Optional[Tensor] = None):
        self.mix, self.sde, self.labels = mix, sde, labels
        # Unbound it is a conditional score over K classes (guidance reads this); bound, a plain f(x, t).
        self.num_classes: Optional[int] = mix.n_modes if labels is None else None

    def __repr__(self) -> str:
        bound = "" if self.labels is None else f", y={tuple(self.labels.shape) or int(self.labels)}"
        return f"GaussianMixture.score_fn({self.mix!r}, {type(self.sde).__name__}{bound})"

    def __call__(self, x: Tensor, t: TimeLike, y: Optional[Union[int, Tensor]] = None) -> Tensor:
        if self.labels is not None:
            if y is not None:
                raise ValueError("this score_fn is bound to labels (score_fn(sde, y=...)): call it as f(x, t), "
                                 "or take score_fn(sde) for f(x, t, y)")
            y = self.labels
        elif y is None:
            return self.mix._score(x, t, self.sde, False)
        elif isinstance(y, int) and not isinstance(y, bool):
            y = torch.tensor(y)
        if not isinstance(y, Tensor) or y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            got = f"dtype {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise TypeError(f"y must be None or a (B,) long tensor of component labels, got {got}")
        if y.ndim > 1:
            raise ValueError(f"y must be an int or have shape (B,), got {tuple(y.shape)}")
        return self.mix._score_given(x, t, self.sde, _batch_labels(y, x))


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
