"""The sampler protocol: step objects driven by the one loop in `sample()` (diffrax's `init`/`step` shape).

A sampler moves a prior sample `x_T` down a time grid `T = t_0 > t_1 > ... > t_N = eps`. `sample()` owns the
loop — the prior draw, the grid, the `Schedule` table, noise from the caller's `generator`, the NFE counter,
`progress`, `callback` and the conditioning hook — and calls, once per call and then once per step:

    state = sampler.init(sde, score_fn, ts, schedule, x, noise)   # tabulate per-step scalars, histories
    x, state = sampler.step(score_fn, x, i, state, noise)   # from t_i to t_{i+1}

`schedule` is `sde.schedule(ts)` for a `LinearSDE` (float64) and None otherwise. `noise(i)` is the standard
normal noise of step `i` (from the user's `noise_sampler` when given: one Brownian path shared across step
counts); `noise.fresh()` an independent draw (Langevin moves). Samplers that only make sense as one whole call
(an adaptive ODE solve) set `whole = True` and implement `solve` instead.

Each class declares its cost and accuracy as class attributes, which the tests read:

- `order`: strong (pathwise) order, or the ODE order for deterministic solvers;
- `weak_order`: order in distribution (`None` for ODE-only solvers);
- `nfe_per_step`: score evaluations per step (`None` when adaptive or not constant);
- `nfe_init`: evaluations spent once per call besides them (0 for nearly all), so that
  `nfe == steps * nfe_per_step + nfe_init (+ 1 with denoise)`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Optional, Tuple

import torch
from torch import Tensor

from ..schedule import Schedule
from ..sde import SDE
from .timesteps import TimestepSpec, get_timesteps

ScoreFn = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]  # (t, t_next) -> standard normal noise shaped like x

__all__ = ["Sampler", "Predictor", "Corrector", "StepHook", "Noise", "ScoreFn", "NoiseSampler"]


class Noise:
    """The loop's source of randomness for one call: `noise(i)` for step `i`, `noise.fresh()` for extra draws."""

    def __init__(self, x: Tensor, ts: Tensor, generator: Optional[torch.Generator],
                 noise_sampler: Optional[NoiseSampler] = None):
        self._shape, self._device, self._dtype = x.shape, x.device, x.dtype
        self._ts, self.generator, self._sampler = ts, generator, noise_sampler

    def fresh(self) -> Tensor:
        return torch.randn(self._shape, generator=self.generator, device=self._device, dtype=self._dtype)

    def __call__(self, i: int) -> Tensor:
        if self._sampler is None:
            return self.fresh()
        return self._sampler(self._ts[i], self._ts[i + 1])


class Sampler(abc.ABC):
    """A reverse-time solver as a step object. Subclasses set the declarations and implement `step`
    (and `init` when they tabulate anything), or set `whole = True` and implement `solve`."""

    order: ClassVar[Optional[float]] = None
    weak_order: ClassVar[Optional[float]] = None
    nfe_per_step: ClassVar[Optional[int]] = 1
    nfe_init: ClassVar[int] = 0
    stochastic: ClassVar[bool] = True
    whole: ClassVar[bool] = False
    timesteps: TimestepSpec = "auto"  # the SDE's `default_timesteps`: uniform on the built-ins

    def check(self, sde: SDE) -> None:
        """Raise `TypeError`/`ValueError` if this sampler cannot handle `sde` (called once by `sample`)."""

    def grid(self, sde: SDE, steps: int, eps: float, ref: Tensor) -> Tensor:
        """The `(steps + 1,)` time grid from `T` down to `eps`, in `ref`'s dtype and device."""
        return get_timesteps(self.timesteps, sde, steps, eps, ref)

    def init(self, sde: SDE, score_fn: ScoreFn, ts: Tensor, schedule: Optional[Schedule], x: Tensor,
             noise: "Noise") -> Any:
        """Per-call state: tabulated coefficients, histories. Called once, before the first step."""
        return sde

    def step(self, score_fn: ScoreFn, x: Tensor, i: int, state: Any, noise: Noise) -> Tuple[Tensor, Any]:
        """Advance `x` from `ts[i]` to `ts[i + 1]`; return the new state and sampler state."""
        raise NotImplementedError(f"{type(self).__name__} implements neither step nor solve")

    def solve(self, sde: SDE, score_fn: ScoreFn, x: Tensor, ts: Tensor, progress: bool) -> Tensor:
        """For `whole` samplers: integrate from `ts[0]` to `ts[-1]` in one call."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Predictor(Sampler):
    """A one-step reverse-time solver (the predictor of predictor–corrector sampling); a `Sampler` on its own."""


class Corrector(abc.ABC):
    """MCMC moves at a fixed time `t_i` that leave `p_t` invariant (in the limit of small steps)."""

    nfe_per_step: ClassVar[int] = 1

    def init(self, sde: SDE, ts: Tensor, schedule: Optional[Schedule], x: Tensor) -> Any:
        """Per-call state (tabulated step sizes); called once, before the first step."""
        return None

    @abc.abstractmethod
    def step(self, score_fn: ScoreFn, x: Tensor, i: int, state: Any, noise: Tensor) -> Tensor:
        """One move at `ts[i]` with the standard normal `noise`; returns the new `x`."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class StepHook(abc.ABC):
    """Where a condition acts on the loop (the conditioning methods of `scoresde.conditioning` are hooks):

    - `guide(score_fn)` may replace the score every step uses (DPS, ΠGDM: a guided score);
    - `step` runs each step; by default `sampler.step` then `after_step`, which may replace the state
      (replacement); a hook may override `step` to redo it (RePaint) or to propose and reweight the batch as
      particles (SMC), calling `sampler.step` or reading the sampler's coefficients itself;
    - `finish(x, state, stats)` ends the loop (a last resampling) and reports into `stats`.

    Every score call goes through the loop's counter."""

    def guide(self, score_fn: ScoreFn) -> ScoreFn:
        return score_fn

    def init(self, sde: SDE, score_fn: ScoreFn, ts: Tensor, schedule: Optional[Schedule], x: Tensor, noise: Noise) -> Any:
        return None

    def step(self, score_fn: ScoreFn, x: Tensor, i: int, state: Any, sampler: Sampler, sampler_state: Any,
             noise: Noise) -> Tuple[Tensor, Any, Any]:
        """The step from `ts[i]` to `ts[i + 1]`: return `(x, sampler_state, state)`."""
        x, sampler_state = sampler.step(score_fn, x, i, sampler_state, noise)
        return self.after_step(score_fn, x, i, state, sampler, sampler_state, noise)

    def after_step(self, score_fn: ScoreFn, x: Tensor, i: int, state: Any, sampler: Sampler, sampler_state: Any,
                   noise: Noise) -> Tuple[Tensor, Any, Any]:
        """After the sampler's step to `ts[i + 1]`: return `(x, sampler_state, state)`."""
        return x, sampler_state, state

    def finish(self, x: Tensor, state: Any, stats: Optional[dict]) -> Tensor:
        """After the loop, before the final denoising: the final `x`; report what was measured into `stats`."""
        return x
