"""Linear observations of a sample, `y = A x + N(0, noise_std² I)`: what the conditioning methods condition on.

`Observation(A, y, noise_std)` is the general linear inverse problem (`A` an `(M, D)` matrix on the flattened
sample, or a linear callable); `Inpainting(x_known, mask)` the noise-free special case where `A` picks the
entries under `mask`. Both are validated where the user builds them; `bind(x)` checks them against the sample
shape and casts them once to the batch's device and dtype, giving the operations every method needs:
`A x`, `Aᵀ v`, the projection onto `{A x = y}`, and solves with `r² A Aᵀ + noise_std² I` (through one
eigendecomposition of `A Aᵀ`, so a solve costs two small matmuls per step).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ._utils import check_nonneg, check_tensor, event_dim

__all__ = ["Observation", "Inpainting", "BoundObservation"]

# A callable A is materialised as a matrix (its action on the identity) only where a method needs A Aᵀ or A⁺.
_MAX_MATERIALISE = 16384


class Observation:
    """`y = A x + N(0, noise_std² I)` of one sample `x` (flattened to `D` entries).

    `A`: an `(M, D)` tensor, or a linear callable taking a batch `(B, *event)` to `(B, M)` (its adjoint is taken
    by autograd). `y`: `(M,)` (one observation shared by the batch) or `(B, M)` (one per sample). `noise_std >= 0`;
    0 is a noise-free observation, which the returned samples then satisfy exactly."""

    def __init__(self, A: Union[Tensor, Callable[[Tensor], Tensor]], y: Tensor, noise_std: float = 0.0):
        if isinstance(A, Tensor):
            check_tensor(A, "A", min_ndim=2)
            if A.ndim != 2:
                raise ValueError(f"A must be an (M, D) matrix acting on the flattened sample, got shape {tuple(A.shape)}")
        elif not callable(A):
            raise TypeError(f"A must be an (M, D) tensor or a linear callable x -> (B, M), got {type(A).__name__}")
        check_tensor(y, "y", min_ndim=1)
        if y.ndim > 2:
            raise ValueError(f"y must have shape (M,) or (B, M), got {tuple(y.shape)}")
        if isinstance(A, Tensor) and y.shape[-1] != A.shape[0]:
            raise ValueError(f"y has {y.shape[-1]} entries per sample but A has {A.shape[0]} rows")
        self.A, self.y = A, y
        self.noise_std = check_nonneg(noise_std, "noise_std")

    @property
    def noise_free(self) -> bool:
        return self.noise_std == 0.0

    def __repr__(self) -> str:
        a = f"matrix {tuple(self.A.shape)}" if isinstance(self.A, Tensor) else getattr(self.A, "__name__", "callable")
        return f"{type(self).__name__}(A={a}, y={tuple(self.y.shape)}, noise_std={self.noise_std:g})"

    def matrix(self, event_shape, ref: Optional[Tensor] = None) -> Tensor:
        """`A` as an `(M, D)` matrix for samples of `event_shape` (a callable applied to the identity)."""
        D = math.prod(event_shape)
        dev = dict(device=ref.device, dtype=ref.dtype) if ref is not None else dict(dtype=self.y.dtype, device=self.y.device)
        if isinstance(self.A, Tensor):
            if self.A.shape[1] != D:
                raise ValueError(f"A has {self.A.shape[1]} columns (its inner dimension) but a sample has "
                                 f"{D} entries (shape {tuple(event_shape)})")
            return self.A.to(**dev)
        if D > _MAX_MATERIALISE:
            raise ValueError(f"A callable A on {D}-entry samples is too large to materialise (limit {_MAX_MATERIALISE}); "
                             "pass A as a matrix or use conditioning='dps'")
        eye = torch.eye(D, **dev).reshape((D,) + tuple(event_shape))
        cols = self._apply_callable(eye)
        return cols.T.contiguous()

    def _apply_callable(self, x: Tensor) -> Tensor:
        out = self.A(x)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"A must map a batch (B, ...) to (B, M), got {got} for input {tuple(x.shape)}")
        if out.shape[1] != self.y.shape[-1]:
            raise ValueError(f"A gives {out.shape[1]} entries per sample but y has {self.y.shape[-1]}")
        return out

    def bind(self, x: Tensor) -> "BoundObservation":
        """The observation checked against the batch `x` (shape and size) and cast to its device and dtype."""
        B, D = x.shape[0], event_dim(x)
        if self.y.ndim == 2 and self.y.shape[0] != B:
            raise ValueError(f"y has {self.y.shape[0]} rows (one observation per sample) but the batch has {B} samples")
        if isinstance(self.A, Tensor):
            A = self.matrix(x.shape[1:], x)
            return BoundObservation(self, x, A=A)
        self._apply_callable(torch.zeros((1,) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype))  # shape check
        return BoundObservation(self, x, A=None)


class Inpainting(Observation):
    """A noise-free observation of the entries where `mask` is True: they equal `x_known`'s.

    `x_known`: shaped like one sample (shared by the batch) or like the batch `(B, *event)`; `mask` (bool) shaped
    like one sample or like `x_known`. Entries of `x_known` outside the mask are ignored (they may be anything
    finite)."""

    def __init__(self, x_known: Tensor, mask: Tensor):
        check_tensor(x_known, "x_known", min_ndim=1)
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a bool tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            if mask.dtype.is_floating_point or mask.dtype.is_complex or not bool(((mask == 0) | (mask == 1)).all()):
                raise TypeError(f"mask must be a bool tensor (True = observed), got dtype {mask.dtype}")
            mask = mask.bool()
        if mask.shape != x_known.shape and mask.shape != x_known.shape[1:]:
            raise ValueError(f"mask must be shaped like one sample or like x_known {tuple(x_known.shape)}, "
                             f"got {tuple(mask.shape)}")
        if not bool(mask.any()):
            raise ValueError("mask observes nothing (no True entry)")
        self.x_known, self.mask = x_known, mask
        self.A, self.noise_std = None, 0.0
        self.y = x_known  # for repr and shape checks

    def __repr__(self) -> str:
        return f"Inpainting(x_known={tuple(self.x_known.shape)}, mask={tuple(self.mask.shape)}, observed={int(self.mask.sum())})"

    def _per_sample(self, event_shape) -> bool:
        """True when `x_known` is a batch (one known image per sample)."""
        event_shape = tuple(event_shape)
        if tuple(self.x_known.shape) == event_shape:
            return False
        if tuple(self.x_known.shape[1:]) == event_shape:
            return True
        raise ValueError(f"x_known must be shaped like one sample {event_shape} or like the batch (B, {', '.join(map(str, event_shape))}), "
                         f"got {tuple(self.x_known.shape)}")

    def matrix(self, event_shape, ref: Optional[Tensor] = None) -> Tensor:
        """The `(M, D)` selection matrix of the observed entries (for one mask shared by the batch)."""
        self._per_sample(event_shape)
        if self.mask.shape != tuple(event_shape):
            raise ValueError("a per-sample mask has no single matrix A")
        D = math.prod(event_shape)
        idx = self.mask.flatten().nonzero().flatten()
        dev = dict(device=ref.device, dtype=ref.dtype) if ref is not None else dict(dtype=self.x_known.dtype)
        return torch.eye(D, **dev)[idx.to(dev.get("device"))]

    def observed(self, event_shape) -> Tensor:
        """The observed values `(M,)` for one shared observation."""
        if self._per_sample(event_shape) or self.mask.shape != tuple(event_shape):
            raise ValueError("a per-sample inpainting has no single observation vector")
        return self.x_known.flatten()[self.mask.flatten()]

    def bind(self, x: Tensor) -> "BoundObservation":
        B, event = x.shape[0], tuple(x.shape[1:])
        per = self._per_sample(event)
        if per and self.x_known.shape[0] != B:
            raise ValueError(f"x_known holds {self.x_known.shape[0]} samples but the batch has {B}")
        if self.mask.shape not in (event, tuple(self.x_known.shape)):
            raise ValueError(f"mask must be shaped like one sample {event} or like x_known, got {tuple(self.mask.shape)}")
        return BoundObservation(self, x, A=None)


class BoundObservation:
    """An observation bound to a batch: every operation on flattened `(B, D)` states, on the batch's device/dtype.

    Inpainting is kept in masked form (`A x` = the entries under the mask, zeros elsewhere, so `A Aᵀ` is the
    diagonal mask): a per-sample mask costs nothing extra. A matrix `A` keeps `A` and one thin SVD, built
    lazily on first use, from which `A⁺`, `A Aᵀ` and `Aᵀ A` are read."""

    def __init__(self, obs: Observation, x: Tensor, A: Optional[Tensor]):
        self.obs, self.noise_std = obs, obs.noise_std
        self.event_shape = tuple(x.shape[1:])
        self.batch = x.shape[0]
        self._ref = x
        self.inpainting = isinstance(obs, Inpainting)
        self._A, self._decomp = A, None
        cast = dict(device=x.device, dtype=x.dtype)
        if self.inpainting:
            m = obs.mask.to(x.device).reshape(-1, x[0].numel()) if obs.mask.ndim > len(self.event_shape) else obs.mask.to(x.device).reshape(1, -1)
            self.mask = m  # (1 or B, D) bool
            self.y = (obs.x_known.to(**cast).reshape(-1, x[0].numel()) * m)  # (1 or B, D), zero off the mask
        else:
            y = obs.y.to(**cast)
            self.y = y[None] if y.ndim == 1 else y  # (1 or B, M)

    # -- A and its adjoint --------------------------------------------------------------------------

    def apply(self, xf: Tensor) -> Tensor:
        """`A x` for flattened `(B, D)` states."""
        if self.inpainting:
            return xf * self.mask
        if self._A is not None:
            return xf @ self._A.T
        return self.obs._apply_callable(xf.reshape((-1,) + self.event_shape))

    def residual(self, xf: Tensor) -> Tensor:
        """`y - A x`, `(B, M)`."""
        return self.y - self.apply(xf)

    @property
    def A(self) -> Tensor:
        if self._A is None:
            if self.inpainting:
                raise RuntimeError("inpainting is kept in masked form")
            self._A = self.obs.matrix(self.event_shape, self._ref)
        return self._A

    def _svd(self):
        """`A = U diag(S) Wᵀ` over its range (`S > 0`), computed once: `A Aᵀ`, `Aᵀ A`, `A⁺` and the observed
        coordinates all derive from it."""
        if self._decomp is None:
            U, S, Wh = torch.linalg.svd(self.A, full_matrices=False)
            keep = S > S.max() * max(self.A.shape) * torch.finfo(S.dtype).eps
            U, S, W = U[:, keep], S[keep], Wh[keep].T.contiguous()
            self._decomp = (U, S, W, (self.y @ U) / S)  # the last: Wᵀ x for any x with A x = y
        return self._decomp

    def gram(self):
        """`(W, d)` with `Aᵀ A = W diag(d) Wᵀ` over its range (`d > 0`; `W` is `(D, rank)`); for inpainting
        `W = None` and `d` the mask (the operations below are then elementwise)."""
        if self.inpainting:
            return None, self.mask.to(self._ref.dtype)
        _, S, W, _ = self._svd()
        return W, S * S

    def coords(self, xf: Tensor) -> Tensor:
        """The observed coordinates `Wᵀ x` of flattened `(B, D)` states (inpainting: the masked entries, zeros
        elsewhere): a noise-free observation fixes exactly these."""
        W, _ = self.gram()
        return xf * self.mask if W is None else xf @ W

    def observed_coords(self) -> Tensor:
        """`Wᵀ x₀` fixed by a noise-free observation, `(1 or B, rank)` (inpainting: `(1 or B, D)`, masked)."""
        return self.y if self.inpainting else self._svd()[3]

    def set_coords(self, xf: Tensor, c: Tensor) -> Tensor:
        """`x` with its observed coordinates replaced by `c`: `x + W (c - Wᵀ x)`."""
        W, _ = self.gram()
        return torch.where(self.mask, c, xf) if W is None else xf + (c - xf @ W) @ W.T

    def gram_apply(self, v: Tensor, coef: Tensor) -> Tensor:
        """`W diag(coef) Wᵀ v` for flattened `(B, D)` `v`, `coef` shaped like `gram()`'s `d`."""
        W, _ = self.gram()
        if W is None:
            return v * coef
        return ((v @ W) * coef) @ W.T

    def cov_solve(self, v: Tensor, r2) -> Tensor:
        """`(r² A Aᵀ + noise_std² I)⁻¹ v` for `(B, M)` residuals, `r2` a number or a `(B,)` tensor: in `A`'s column
        space `U diag(1/(r² S² + σ_y²)) Uᵀ v`, and `v/σ_y²` outside it. Directions where that matrix is zero
        (entries off an inpainting mask, outside the column space with no noise) give 0: the residual has none."""
        r2 = r2[:, None] if isinstance(r2, Tensor) and r2.ndim == 1 else r2
        s2 = self.noise_std**2
        if self.inpainting:
            d = self.mask.to(v.dtype)
            return v * d / (r2 * d + s2) if s2 > 0 else v * d / r2
        U, S, _, _ = self._svd()
        inside = v @ U
        out = (inside / (r2 * S * S + s2)) @ U.T
        if s2 > 0:
            out = out + (v - inside @ U.T) / s2
        return out

    def project(self, xf: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """The nearest point to `x` with `A x = y` (`y` defaults to the observation): `x + A⁺ (y - A x)`,
        `A⁺ = W diag(1/S) Uᵀ`."""
        y = self.y if y is None else y
        if self.inpainting:
            return torch.where(self.mask, y, xf)
        U, S, W, _ = self._svd()
        return xf + (((y - self.apply(xf)) @ U) / S) @ W.T

    def noised(self, m, sigma, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The observation carried to time `t` by the forward process, `m y + σ A z` (`z` standard normal
        `(B, D)`), plus `m σ_y ζ` for a noisy one, so that at `t → 0` it spreads as `A x₀` given `y` alone does."""
        y_t = m * self.y + sigma * self.apply(z)
        if self.noise_std > 0:
            zeta = torch.randn(y_t.shape, generator=generator, device=y_t.device, dtype=y_t.dtype)
            y_t = y_t + (m * self.noise_std) * zeta
        return y_t
