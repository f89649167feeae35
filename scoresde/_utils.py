"""Small tensor helpers shared by every module: broadcasting per-sample scalars, and the checkers that
validate a user's input where it enters (one checker per argument kind, the same error for the same mistake).

Kernels (solver steps, SDE internals `_drift`, `_marginal_coefs`, ...) trust their inputs: `t` is a `(B,)`
tensor on the state's device and dtype. Only the public boundary calls the checkers below; the ones that
look at values (`check_time`, `check_tensor(finite=True)`) cost one host sync and never run inside a loop.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

TimeLike = Union[float, int, Tensor]


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """View a `(B,)` tensor as `(B, 1, ..., 1)` with `ndim` dimensions, for any rank (0-d stays 0-d)."""
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def flat_sum(x: Tensor) -> Tensor:
    """Sum over every dimension but the batch: `(B, ...) -> (B,)`."""
    return x.flatten(1).sum(1)


def event_dim(x: Tensor) -> int:
    """Number of elements per sample."""
    return math.prod(x.shape[1:])


# -- checkers for the public boundary -----------------------------------------------------------------


def check_tensor(x: object, name: str, *, min_ndim: int = 1, finite: bool = True) -> Tensor:
    """Raise `TypeError`/`ValueError` naming `name` for a non-tensor, too few dims, a non-float dtype or NaN/inf.

    The finiteness check costs one host sync: call it once at a public entry point, never inside a loop."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s) (batch first), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def check_batch(x: object, name: str, *, finite: bool = True) -> Tensor:
    """A batch-first tensor `(B, ...)` with at least one non-empty sample."""
    check_tensor(x, name, min_ndim=2, finite=finite)
    if x.shape[0] == 0 or event_dim(x) == 0:
        raise ValueError(f"{name} must hold at least one non-empty sample, got shape {tuple(x.shape)}")
    return x


def check_time(t: object, batch: Optional[int], ref: Optional[Tensor], T: Optional[float], name: str = "t") -> Tensor:
    """`t` (a number, a 0-d tensor or a `(batch,)` tensor) as a `(batch,)` tensor on `ref`'s device and dtype,
    finite and in `[0, T]` (`T=None`: only `>= 0`). `batch=None` accepts any 1-D length. One host sync."""
    if isinstance(t, bool) or not isinstance(t, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__}")
    if ref is None:
        ref = t if isinstance(t, Tensor) and t.is_floating_point() else torch.empty((), dtype=torch.get_default_dtype())
    if isinstance(t, Tensor):
        if t.ndim > 1 or (batch is not None and t.ndim == 1 and t.shape[0] != batch):
            want = f"({batch},)" if batch is not None else "1-D"
            raise ValueError(f"{name} must be a scalar or have shape {want}, got {tuple(t.shape)}")
        if t.is_complex():
            raise TypeError(f"{name} must be real, got dtype {t.dtype}")
        t = t.to(device=ref.device, dtype=ref.dtype)
        t = t.expand(batch if batch is not None else 1) if t.ndim == 0 else t
    else:
        t = torch.full((batch if batch is not None else 1,), float(t), device=ref.device, dtype=ref.dtype)
    if t.numel():
        lo, hi = torch.aminmax(t)
        lo, hi = float(lo), float(hi)  # the one host sync
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} must be finite, got NaN or inf")
        if lo < 0.0 or (T is not None and hi > T * (1 + 1e-6)):
            where = f"[0, T={T}]" if T is not None else "[0, inf)"
            raise ValueError(f"{name} must lie in {where}, got values in [{lo}, {hi}]")
    return t


def check_number(value: object, name: str, *, lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite real number (not a bool) within the given bounds, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    ok = math.isfinite(v)
    ok = ok and (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        lb = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        ub = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        where = f" in {lb or '(-inf'}, {ub or 'inf)'}" if (lo is not None or hi is not None) else ""
        raise ValueError(f"{name} must be a finite number{where}, got {value!r}")
    return v


def check_positive(value: object, name: str) -> float:
    return check_number(value, name, lo=0.0, lo_open=True)


def check_nonneg(value: object, name: str) -> float:
    return check_number(value, name, lo=0.0)


def check_int(value: object, name: str, *, minimum: int = 1) -> int:
    """An int (not a bool) `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def check_eps(eps: object, T: float, name: str = "eps") -> float:
    """The smallest time a solver reaches: a number in `(0, T)`."""
    return check_number(eps, name, lo=0.0, hi=T, lo_open=True, hi_open=True)


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_generator(generator: object, name: str = "generator") -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_callable(fn: object, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def check_shape(shape: object, name: str = "shape", *, min_ndim: int = 1) -> Tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{name} must be a non-empty tuple of ints (batch first), got {shape!r}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"{name} must have positive sizes, got {tuple(shape)}")
    if len(shape) < min_ndim:
        raise ValueError(f"{name} must be batch-first with at least {min_ndim} dims, e.g. (B, D); got {tuple(shape)}")
    return tuple(shape)


def check_solver_dtype(x: Tensor, name: str) -> None:
    """The ODE solvers' error control needs at least single precision."""
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64 for the ODE solver, got {x.dtype} (cast it with .float())")


def batch_time(t: TimeLike, batch: int, ref: Tensor, name: str = "t") -> Tensor:
    """`t` as a `(batch,)` tensor on `ref`'s device and dtype, checking its shape only (no host sync): for
    callables that solvers call every step (a `ScoreModel`, an oracle score), where the solver owns `t`."""
    if isinstance(t, Tensor):
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
        return t if (t.dtype == ref.dtype and t.device == ref.device) else t.to(device=ref.device, dtype=ref.dtype)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__}")
    return torch.full((batch,), float(t), device=ref.device, dtype=ref.dtype)
