"""Predictor–corrector sampling (Song et al. 2021, Alg. 1): per time step, corrector moves then one predictor step."""

from __future__ import annotations

from typing import Optional, Union

from .base import Corrector, Predictor, Sampler
from .correctors import CORRECTORS, NoneCorrector
from .predictors import PREDICTORS
from .timesteps import TimestepSpec

__all__ = ["PCSampler"]


def _resolve(obj, table: dict, base: type, kind: str, **kwargs):
    """A predictor/corrector from a name (built with `kwargs` where it takes them) or an instance."""
    if isinstance(obj, str):
        if obj not in table:
            raise ValueError(f"{kind} must be one of {sorted(table)} or a {base.__name__} instance, got {obj!r}")
        cls = table[obj]
        return cls() if cls is NoneCorrector or base is Predictor else cls(**kwargs)
    if not isinstance(obj, base):
        raise TypeError(f"{kind} must be a name or a {base.__name__} instance, got {type(obj).__name__}")
    return obj


class PCSampler(Sampler):
    """Predictor–corrector: at each `t_i`, `corrector_steps` corrector moves at `t_i`, then one predictor step to `t_{i+1}`.

    Song et al. 2021, Alg. 1. A composite step: its state is the predictor's and the corrector's. NFE per step =
    predictor's + `corrector_steps` × corrector's. The default grid (`"auto"`) is uniform in time on the built-in SDEs and VP-matched (`timesteps.vp_matched`) on others. The
    predictor's noise follows `sample`'s `noise_sampler` when one is given; corrector moves always draw fresh noise."""

    def __init__(
        self,
        predictor: Union[str, Predictor] = "reverse_diffusion",
        corrector: Union[str, Corrector] = "langevin",
        *,
        snr: float = 0.16,
        corrector_steps: int = 1,
        timesteps: TimestepSpec = "auto",
    ):
        if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
            raise ValueError(f"snr must be a positive number, got {snr!r}")
        if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
        self.predictor = _resolve(predictor, PREDICTORS, Predictor, "predictor")
        self.corrector = _resolve(corrector, CORRECTORS, Corrector, "corrector", snr=float(snr))
        self.corrector_steps = corrector_steps if not isinstance(self.corrector, NoneCorrector) else 0
        self.timesteps = timesteps

    @property
    def order(self):  # type: ignore[override]
        return self.predictor.order

    @property
    def weak_order(self):  # type: ignore[override]
        return self.predictor.weak_order

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.predictor.nfe_per_step + self.corrector_steps * self.corrector.nfe_per_step

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.predictor.stochastic or self.corrector_steps > 0

    def check(self, sde) -> None:
        self.predictor.check(sde)

    def init(self, sde, score_fn, ts, schedule, x, noise):
        c_state = self.corrector.init(sde, ts, schedule, x) if self.corrector_steps else None
        return self.predictor.init(sde, score_fn, ts, schedule, x, noise), c_state

    def step(self, score_fn, x, i, state, noise):
        p_state, c_state = state
        # corrector: MCMC moves that keep p_t invariant
        for _ in range(self.corrector_steps):
            x = self.corrector.step(score_fn, x, i, c_state, noise.fresh())
        # predictor: one step down to t_{i+1}
        x, p_state = self.predictor.step(score_fn, x, i, p_state, noise)
        return x, (p_state, c_state)
