"""Predictor–corrector sampling (Song et al. 2021, Alg. 1): per time step, corrector moves then one predictor step."""

from __future__ import annotations

from typing import Optional, Tuple, Union

from torch import Tensor
from tqdm.auto import trange

from .base import Corrector, NoiseSampler, Predictor, Sampler, default_noise_sampler, randn_like
from .correctors import CORRECTORS, NoneCorrector
from .predictors import PREDICTORS
from .timesteps import TimestepSpec, get_timesteps

__all__ = ["PCSampler"]


def _row(table: Optional[Tuple[Tensor, ...]], i: int) -> Optional[Tuple[Tensor, ...]]:
    return None if table is None else tuple(c[i] for c in table)


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

    Song et al. 2021, Alg. 1. NFE per step = predictor's + `corrector_steps` × corrector's. The default grid is
    uniform in time from `T` to `eps`. `noise_sampler(t, t_next)` replaces the predictor's noise (e.g. increments
    of one Brownian path shared across step counts); the corrector always draws from `generator`."""

    def __init__(
        self,
        predictor: Union[str, Predictor] = "reverse_diffusion",
        corrector: Union[str, Corrector] = "langevin",
        *,
        snr: float = 0.16,
        corrector_steps: int = 1,
        timesteps: TimestepSpec = "uniform",
        noise_sampler: Optional[NoiseSampler] = None,
    ):
        if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not snr > 0:
            raise ValueError(f"snr must be a positive number, got {snr!r}")
        if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be a non-negative int, got {corrector_steps!r}")
        if noise_sampler is not None and not callable(noise_sampler):
            raise TypeError(f"noise_sampler must be callable, got {type(noise_sampler).__name__}")
        self.predictor = _resolve(predictor, PREDICTORS, Predictor, "predictor")
        self.corrector = _resolve(corrector, CORRECTORS, Corrector, "corrector", snr=float(snr))
        self.corrector_steps = corrector_steps if not isinstance(self.corrector, NoneCorrector) else 0
        self.timesteps = timesteps
        self.noise_sampler = noise_sampler

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

    def run(self, sde, score_fn, x, *, steps, eps, generator=None, progress=False) -> Tensor:
        ts = get_timesteps(self.timesteps, sde, steps, eps, x)
        p_coefs = self.predictor.prepare(sde, ts)
        c_coefs = self.corrector.prepare(sde, ts) if self.corrector_steps else None
        noise = self.noise_sampler or default_noise_sampler(x, generator)
        batch = x.shape[0]
        for i in trange(len(ts) - 1, disable=not progress, desc="pc", leave=False):
            t, t_next = ts[i].expand(batch), ts[i + 1].expand(batch)
            # corrector: MCMC moves that keep p_t invariant
            for _ in range(self.corrector_steps):
                x, _ = self.corrector.step(sde, score_fn, x, t, randn_like(x, generator), _row(c_coefs, i))
            # predictor: one step down to t_next
            z = noise(ts[i], ts[i + 1]) if self.predictor.stochastic else None
            x, _ = self.predictor.step(sde, score_fn, x, t, t_next, z, _row(p_coefs, i))
        return x
