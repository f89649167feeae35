"""The extension points: `Predictor`, `Corrector` and `Sampler` ABCs.

A sampler turns a prior sample `x_T` into a sample at the smallest time `eps`
by integrating the reverse-time SDE or the probability-flow ODE of an `SDE`
driven by a score function. Each class declares its cost and accuracy as
class attributes, which the tests read:

- `order`: strong (pathwise) order, or the ODE order for deterministic solvers;
- `weak_order`: order in distribution (`None` for ODE-only solvers);
- `nfe_per_step`: score evaluations per step (`None` when adaptive).

Random numbers come only from the `noise` tensors the loops pass in (drawn
with the caller's `generator`), so one generator state gives one sample.
"""

from __future__ import annotations

import abc
from typing import Callable, ClassVar, Optional, Tuple

import torch
from torch import Tensor

from ..sde import SDE

ScoreFn = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # (t, t_next) -> standard normal noise shaped like x

__all__ = ["Predictor", "Corrector", "Sampler", "ScoreFn", "NoiseSampler"]


class Predictor(abc.ABC):
    """One step of a reverse-time solver from `t` down to `t_next < t`.

    `prepare(sde, ts)` may tabulate per-step coefficients for the whole time
    grid once (e.g. schedule values that cost a quadrature per call); `step`
    then receives the row of that table for its step as `coefs`."""

    order: ClassVar[float] = 0
    weak_order: ClassVar[Optional[float]] = None
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def prepare(self, sde: SDE, ts: Tensor) -> Optional[Tuple[Tensor, ...]]:
        """Per-step coefficients for the grid `ts` (`(N+1,)`, decreasing): tensors with a leading `N` axis, or None."""
        return None

    @abc.abstractmethod
    def step(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        noise: Optional[Tensor],
        coefs: Optional[Tuple[Tensor, ...]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Advance `x` at times `t` (`(B,)`) to `t_next`; return `(x_next, x_next_mean)` (the mean omits the noise).

        `noise` is a standard normal tensor shaped like `x` (None for deterministic predictors);
        `coefs` is this step's slice of `prepare`'s output."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Corrector(abc.ABC):
    """MCMC moves at a fixed time `t` that leave `p_t` invariant (in the limit of small steps)."""

    nfe_per_step: ClassVar[int] = 1

    def prepare(self, sde: SDE, ts: Tensor) -> Optional[Tuple[Tensor, ...]]:
        """Per-step coefficients for the grid `ts`, like `Predictor.prepare`."""
        return None

    @abc.abstractmethod
    def step(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        t: Tensor,
        noise: Tensor,
        coefs: Optional[Tuple[Tensor, ...]] = None,
    ) -> Tuple[Tensor, Tensor]:
        """One corrector move at time `t`; returns `(x, x_mean)`."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Sampler(abc.ABC):
    """A whole solver: from `x_T` at time `T` to `x` at time `eps`, in `steps` steps (before any final denoising).

    `sample()` validates the inputs, draws `x_T`, calls `run` inside
    `torch.no_grad()` and `scoresde._utils.trusted()`, then denoises."""

    order: ClassVar[Optional[float]] = None
    weak_order: ClassVar[Optional[float]] = None
    nfe_per_step: ClassVar[Optional[int]] = 1
    stochastic: ClassVar[bool] = True

    def check(self, sde: SDE) -> None:
        """Raise `TypeError`/`ValueError` if this sampler cannot handle `sde` (called once by `sample`)."""
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde.SDE, got {type(sde).__name__}")

    @abc.abstractmethod
    def run(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        *,
        steps: int,
        eps: float,
        generator: Optional[torch.Generator] = None,
        progress: bool = False,
    ) -> Tensor:
        """Integrate from `x` (a prior sample at `sde.T`) down to time `eps`; return the state there."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def randn_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """Standard normal noise shaped like `x`, from `generator` (which must live on `x`'s device)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def default_noise_sampler(x: Tensor, generator: Optional[torch.Generator]) -> NoiseSampler:
    """Fresh independent noise per call; a user may instead pass `noise_sampler(t, t_next)` (e.g. from one Brownian path)."""
    return lambda t, t_next: randn_like(x, generator)


def expand_time(t: Tensor, batch: int) -> Tensor:
    """A grid time (0-d) as the `(B,)` view score functions and SDE methods take; no copy, no host sync."""
    return t.expand(batch)

