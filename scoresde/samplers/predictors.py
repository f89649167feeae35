"""Predictors: one step of the reverse-time SDE from `t_i` down to `t_{i+1}`.

On a `LinearSDE` both built-in predictors are one affine map per step, `x' = a_i x + b_i s(x, t_i) + c_i z`,
whose three scalars are tabulated once per call from the `Schedule`; any other SDE takes the generic form
through its drift, diffusion and `discretize` kernels.
"""

from __future__ import annotations

import abc

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._utils import append_dims
from ..schedule import Schedule
from ..sde import SDE
from .base import Predictor
from .timesteps import TimestepSpec

__all__ = ["AffineStep", "EulerMaruyama", "ReverseDiffusion", "NonePredictor", "PREDICTORS", "batch_times"]


def batch_times(ts: Tensor, batch: int) -> List[Tensor]:
    """Each grid time as the `(B,)` view score functions take; no copies, made once per call."""
    return [t.expand(batch) for t in ts]


class _AffineState(NamedTuple):
    sde: SDE
    ts: Tensor
    times: List[Tensor]
    coefs: Optional[Tuple[List[float], List[float], List[float]]]  # (a, b, c) per step, or None (generic SDE)


class AffineStep(Predictor):
    """A predictor that is `x' = a_i x + b_i s(x, t_i) + c_i z` on a linear SDE: subclasses give `coefficients`
    (from the schedule) and `generic_step` (for SDEs that are not linear). 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, *, timesteps: TimestepSpec = "auto"):
        self.timesteps = timesteps

    @abc.abstractmethod
    def coefficients(self, sched: Schedule, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """`(a, b, c)`, each `(N,)`, for the grid's `N` steps of length `h`."""

    @abc.abstractmethod
    def generic_step(self, sde: SDE, score_fn, x: Tensor, t: Tensor, t_next: Tensor, z: Tensor) -> Tensor:
        """The same step on an SDE that is not linear (no schedule), through its drift/diffusion kernels."""

    def init(self, sde, score_fn, ts, schedule, x, noise):
        coefs = None
        if schedule is not None:
            a, b, c = self.coefficients(schedule, schedule.t[:-1] - schedule.t[1:])
            coefs = (a.tolist(), b.tolist(), c.tolist())  # one host copy per call, then plain floats per step
        return _AffineState(sde, ts, batch_times(ts, x.shape[0]), coefs)

    def step(self, score_fn, x, i, state, noise):
        t = state.times[i]
        z = noise(i)
        if state.coefs is None:
            return self.generic_step(state.sde, score_fn, x, t, state.times[i + 1], z), state
        a, b, c = state.coefs
        out = torch.add(x * a[i], score_fn(x, t), alpha=b[i])
        return out.add_(z, alpha=c[i]), state


class EulerMaruyama(AffineStep):
    """Reverse-SDE Euler–Maruyama: `x' = x - [f - g² s](x, t) h + g(t) √h z`, `h = t - t'`.

    Song et al. 2021 (Score-SDE), Alg. 1 predictor. Strong order 1 (the noise `g(t)` is additive), weak order 1;
    1 NFE per step. On a linear SDE: `a = 1 - f h`, `b = g² h`, `c = g √h`."""

    order = 1.0
    weak_order = 1.0

    def coefficients(self, sched, h):
        rows = sched[:-1]
        return 1 - rows.f * h, rows.g2 * h, (rows.g2 * h).sqrt()

    def generic_step(self, sde, score_fn, x, t, t_next, z):
        h = append_dims(t - t_next, x.ndim)
        g = append_dims(sde._diffusion(t), x.ndim)
        x_mean = x - (sde._drift(x, t) - g * g * score_fn(x, t)) * h
        return x_mean + g * h.sqrt() * z


class ReverseDiffusion(AffineStep):
    """Reverse diffusion (ancestral): `x' = x - f_i + G_i² s(x, t) + G_i z`, `(f_i, G_i) = sde.discretize(x, t, t - t')`.

    Song et al. 2021, eq. 46. On a `LinearSDE` the discretisation is the exact Gaussian transition, so on VP and VE
    this is DDPM's / SMLD's ancestral step: `a = 2 - r`, `b = G²`, `c = G` with `r = m_i/m_{i+1}`,
    `G² = σ_i² - r² σ_{i+1}²`. Strong order 1, weak order 1; 1 NFE per step."""

    order = 1.0
    weak_order = 1.0

    def coefficients(self, sched, h):
        r = sched.m[:-1] / sched.m[1:]
        G2 = (sched.sigma[:-1] ** 2 - (r * sched.sigma[1:]) ** 2).clamp_min(0)
        return 2 - r, G2, G2.sqrt()

    def generic_step(self, sde, score_fn, x, t, t_next, z):
        f, G = sde._discretize(x, t, t - t_next)
        G = append_dims(G, x.ndim)
        return x - f + G * G * score_fn(x, t) + G * z


class NonePredictor(Predictor):
    """The identity: no move in time (for corrector-only samplers such as annealed Langevin). 0 NFE."""

    nfe_per_step = 0
    stochastic = False

    def step(self, score_fn, x, i, state, noise):
        return x, state


PREDICTORS = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion, "none": NonePredictor}
