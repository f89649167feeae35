"""Correctors: Langevin MCMC moves at a fixed time `t_i` targeting `p_t` (Song et al. 2021, Alg. 4-5)."""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from .base import Corrector
from .predictors import batch_times

__all__ = ["LangevinCorrector", "AnnealedLangevin", "NoneCorrector", "CORRECTORS"]


class _State(NamedTuple):
    times: List[Tensor]
    coefs: List[float]


def _alphas(schedule, ts: Tensor) -> Tensor:
    """Score-SDE's `α_i` per grid point: `(m(t_i)/m(t_{i+1}))²` for a linear SDE (VP: `1 - β_i`; VE: 1), else 1.

    Read off the schedule rather than `isinstance(sde, VPSDE)`, so a user's SDE gets the same rule."""
    if schedule is None:
        return torch.ones(ts.shape[0] - 1, dtype=torch.float64)
    return (schedule.m[:-1] / schedule.m[1:]) ** 2


class LangevinCorrector(Corrector):
    """Langevin step sized by a signal-to-noise ratio: `x' = x + ε s + √(2ε) z`, `ε = 2 α (snr ‖z‖ / ‖s‖)²`.

    Song et al. 2021, Alg. 4 (norms averaged over the batch, as there). 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, snr: float = 0.16):
        self.snr = snr

    def init(self, sde, ts, schedule, x):
        return _State(batch_times(ts, x.shape[0]), _alphas(schedule, ts).tolist())

    def step(self, score_fn, x, i, state, noise):
        s = score_fn(x, state.times[i])
        # Batch means, not per-sample norms: a sample sitting on a mode (‖s‖ ≈ 0) must not get a huge step.
        grad_norm = s.flatten(1).norm(dim=1).mean()
        noise_norm = noise.flatten(1).norm(dim=1).mean()
        step = 2 * state.coefs[i] * (self.snr * noise_norm / grad_norm) ** 2
        return x + step * s + (2 * step).sqrt() * noise


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (NCSN): `x' = x + ε s + √(2ε) z`, `ε = 2 α (snr σ(t))²`, `σ(t)` the marginal std.

    Song & Ermon 2019 (step `∝ σ_i²`), in Score-SDE's form. 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, snr: float = 0.16):
        self.snr = snr

    def init(self, sde, ts, schedule, x):
        if schedule is not None:
            std = schedule.sigma[:-1]
        else:
            _, std = sde._marginal(ts[:-1, None], ts[:-1])
        step = 2 * _alphas(schedule, ts).to(std) * (self.snr * std) ** 2
        return _State(batch_times(ts, x.shape[0]), step.tolist())

    def step(self, score_fn, x, i, state, noise):
        eps = state.coefs[i]
        out = torch.add(x, score_fn(x, state.times[i]), alpha=eps)
        return out.add_(noise, alpha=(2 * eps) ** 0.5)


class NoneCorrector(Corrector):
    """No corrector. 0 NFE."""

    nfe_per_step = 0

    def step(self, score_fn, x, i, state, noise):
        return x


CORRECTORS = {"langevin": LangevinCorrector, "ald": AnnealedLangevin, "annealed_langevin": AnnealedLangevin, "none": NoneCorrector}
