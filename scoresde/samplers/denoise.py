"""The final denoising step at the smallest time `eps`."""

from __future__ import annotations

from torch import Tensor

from .._utils import append_dims
from ..sde import SDE

__all__ = ["tweedie_denoise"]


def tweedie_denoise(sde: SDE, score_fn, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's formula `E[x₀ | x_t] = (x + σ(t)² s(x, t)) / m(t)` at `t` (`(B,)`, trusted); 1 NFE.

    For an `SDE` that is not linear (no schedule) it takes the noise-free reverse Euler step
    `x + [g² s - f] t` from `t` to 0, as Score-SDE's final `x_mean` does."""
    s = score_fn(x, t)
    if hasattr(sde, "_schedule"):
        return sde._schedule(t).x0_from_score(x, s)
    g = append_dims(sde._diffusion(t), x.ndim)
    return x + (g * g * s - sde._drift(x, t)) * append_dims(t, x.ndim)
