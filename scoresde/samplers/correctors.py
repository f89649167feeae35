"""Correctors: Langevin MCMC moves at a fixed time `t` targeting `p_t` (Song et al. 2021, Alg. 4-5)."""

from __future__ import annotations


from torch import Tensor

from ..sde import SDE, LinearSDE
from .base import Corrector

__all__ = ["LangevinCorrector", "AnnealedLangevin", "NoneCorrector", "CORRECTORS"]


def _alphas(sde: SDE, ts: Tensor) -> Tensor:
    """Score-SDE's `α_i` per grid point: `(m(t_i)/m(t_{i+1}))²` for a linear SDE (VP: `1 - β_i`; VE: 1), else 1.

    Read off the schedule rather than `isinstance(sde, VPSDE)`, so a user's SDE gets the same rule."""
    if not isinstance(sde, LinearSDE):
        return ts.new_ones(ts.shape[0] - 1)
    m, _ = sde.marginal_coefs(ts)
    return (m[:-1] / m[1:]) ** 2


class LangevinCorrector(Corrector):
    """Langevin step sized by a signal-to-noise ratio: `x' = x + ε s + √(2ε) z`, `ε = 2 α (snr ‖z‖ / ‖s‖)²`.

    Song et al. 2021, Alg. 4 (norms averaged over the batch, as there). 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, snr: float = 0.16):
        self.snr = snr

    def prepare(self, sde, ts):
        return (_alphas(sde, ts),)

    def step(self, sde, score_fn, x, t, noise, coefs=None):
        alpha = coefs[0] if coefs is not None else 1.0
        s = score_fn(x, t)
        # Batch means, not per-sample norms: a sample sitting on a mode (‖s‖ ≈ 0) must not get a huge step.
        grad_norm = s.flatten(1).norm(dim=1).mean()
        noise_norm = noise.flatten(1).norm(dim=1).mean()
        step = 2 * alpha * (self.snr * noise_norm / grad_norm) ** 2
        x_mean = x + step * s
        return x_mean + (2 * step).sqrt() * noise, x_mean


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (NCSN): `x' = x + ε s + √(2ε) z`, `ε = 2 α (snr σ(t))²`, `σ(t)` the marginal std.

    Song & Ermon 2019 (step `∝ σ_i²`), in Score-SDE's form. 1 NFE per step."""

    nfe_per_step = 1

    def __init__(self, snr: float = 0.16):
        self.snr = snr

    def prepare(self, sde, ts):
        if isinstance(sde, LinearSDE):
            _, std = sde.marginal_coefs(ts[:-1])
        else:
            _, std = sde.marginal(ts[:-1, None], ts[:-1])
        return (2 * _alphas(sde, ts) * (self.snr * std) ** 2,)

    def step(self, sde, score_fn, x, t, noise, coefs=None):
        if coefs is None:
            raise RuntimeError("AnnealedLangevin.step needs the coefficients from prepare()")
        step = coefs[0]
        x_mean = x + step * score_fn(x, t)
        return x_mean + (2 * step).sqrt() * noise, x_mean


class NoneCorrector(Corrector):
    """No corrector. 0 NFE."""

    nfe_per_step = 0

    def step(self, sde, score_fn, x, t, noise, coefs=None):
        return x, x


CORRECTORS = {"langevin": LangevinCorrector, "ald": AnnealedLangevin, "annealed_langevin": AnnealedLangevin, "none": NoneCorrector}
