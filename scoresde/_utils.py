"""Small tensor helpers shared by every module: broadcasting per-sample scalars,
turning user times into `(B,)` tensors, and validation at the public boundary."""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Optional, Union

import torch
from torch import Tensor

TimeLike = Union[float, int, Tensor]

_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("scoresde_trusted", default=False)


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Skip the value checks of SDE methods inside solver loops.

    Samplers and the likelihood validate their inputs once at the entry point,
    then build every time themselves; re-checking `0 <= t <= T` on each call
    would cost a host round-trip per step."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """View a `(B,)` tensor as `(B, 1, ..., 1)` with `ndim` dimensions, for any rank."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def flat_sum(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch: `(B, ...) -> (B,)`."""
    return x.flatten(1).sum(1)


def event_dim(x: Tensor) -> int:
    """Number of elements per sample."""
    return math.prod(x.shape[1:])


def check_tensor(x: object, name: str, *, min_ndim: int = 1, finite: bool = True) -> Tensor:
    """Raise `TypeError`/`ValueError` naming `name` for a non-tensor, too few dims or NaN/inf.

    The finiteness check costs one host sync: call it once at a public entry
    point, never inside a solver loop."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s) (batch first), got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def batch_time(t: TimeLike, batch: int, ref: Tensor, T: Optional[float] = None, name: str = "t") -> Tensor:
    """Return `t` as a `(batch,)` tensor on `ref`'s device and dtype.

    Accepts a Python number, a 0-d tensor or a `(batch,)` tensor. When `T` is
    given, checks `0 <= t <= T`; for tensors that are not on the CPU the range
    check is skipped, because it would force a host sync on every call."""
    if isinstance(t, bool):
        raise TypeError(f"{name} must be a number or a tensor, got bool")
    if isinstance(t, (int, float)):
        if not math.isfinite(t):
            raise ValueError(f"{name} must be finite, got {t}")
        if T is not None and not (0.0 <= t <= T):
            raise ValueError(f"{name}={t} is outside [0, T={T}]")
        return torch.full((batch,), float(t), device=ref.device, dtype=ref.dtype)
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__}")
    if _TRUSTED.get() and t.shape == (batch,) and t.dtype == ref.dtype and t.device == ref.device:
        return t
    if t.ndim == 0:
        t = t.expand(batch)
    elif t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    t = t.to(device=ref.device, dtype=ref.dtype)
    if T is not None and t.device.type == "cpu" and t.numel() > 0 and not _TRUSTED.get():
        lo, hi = torch.aminmax(t)
        if not (bool(torch.isfinite(t).all()) and float(lo) >= 0.0 and float(hi) <= T * (1 + 1e-6)):
            raise ValueError(f"{name} must lie in [0, T={T}], got values in [{float(lo)}, {float(hi)}]")
    return t


def time_only(t: TimeLike, T: Optional[float] = None, name: str = "t", ref: Optional[Tensor] = None) -> Tensor:
    """`t` as a 1-D tensor when no state `x` is at hand (for `diffusion(t)` and friends)."""
    if isinstance(t, Tensor):
        if _TRUSTED.get() and t.ndim == 1 and (ref is None or (t.dtype == ref.dtype and t.device == ref.device)):
            return t
        ref = t if (ref is None and t.is_floating_point()) else ref
        batch = 1 if t.ndim == 0 else t.shape[0]
        if t.ndim > 1:
            raise ValueError(f"{name} must be a scalar or 1-D, got shape {tuple(t.shape)}")
    else:
        batch = 1
    if ref is None:
        ref = torch.empty((), dtype=torch.get_default_dtype())
    return batch_time(t, batch, ref, T, name)


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def check_nonneg(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be non-negative and finite, got {value}")
    return float(value)
