"""Predictors: one step of the reverse-time SDE from `t` down to `t_next`."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .._utils import append_dims
from ..sde import SDE, LinearSDE
from .base import Predictor

__all__ = ["EulerMaruyama", "ReverseDiffusion", "NonePredictor", "PREDICTORS"]


class EulerMaruyama(Predictor):
    """Reverse-SDE Euler–Maruyama: `x' = x - [f - g² s](x, t) h + g(t) √h z`, `h = t - t'`.

    Song et al. 2021 (Score-SDE), Alg. 1 predictor. Strong order ½, weak order 1; 1 NFE per step."""

    order = 0.5
    weak_order = 1.0
    nfe_per_step = 1

    def prepare(self, sde: SDE, ts: Tensor) -> Optional[Tuple[Tensor, ...]]:
        if not isinstance(sde, LinearSDE):
            return None
        # f = f(t) x: the step is x' = (1 - f h) x + g² h s + g √h z; tabulate the three scalars once per grid.
        t, h = ts[:-1], ts[:-1] - ts[1:]
        g = sde.diffusion(t)
        return 1 - sde.drift_coef(t) * h, g * g * h, g * h.sqrt()

    def step(self, sde, score_fn, x, t, t_next, noise, coefs=None):
        if coefs is not None:
            keep, score_w, noise_w = coefs
            x_mean = x * keep + score_w * score_fn(x, t)
            return x_mean + noise_w * noise, x_mean
        h = append_dims(t - t_next, x.ndim)
        g = append_dims(sde.diffusion(t), x.ndim)
        x_mean = x - (sde.drift(x, t) - g * g * score_fn(x, t)) * h
        return x_mean + g * h.sqrt() * noise, x_mean


class ReverseDiffusion(Predictor):
    """Reverse diffusion (ancestral): `x' = x - f_i + G_i² s(x, t) + G_i z`, with `(f_i, G_i) = sde.discretize(x, t, t - t')`.

    Song et al. 2021, eq. 46. On a `LinearSDE` the discretisation is the exact Gaussian transition, so on VP and VE
    this is DDPM's / SMLD's ancestral step. Weak order 1; 1 NFE per step."""

    order = 0.5
    weak_order = 1.0
    nfe_per_step = 1

    def prepare(self, sde: SDE, ts: Tensor) -> Optional[Tuple[Tensor, ...]]:
        if not isinstance(sde, LinearSDE):
            return None
        # A linear SDE's f_i is (r_i - 1) x: tabulate r_i - 1 and G_i for the whole grid in one call.
        one = ts.new_ones(ts.shape[0] - 1, 1)
        f, G = sde.discretize(one, ts[:-1], ts[:-1] - ts[1:])
        return f[:, 0], G

    def step(self, sde, score_fn, x, t, t_next, noise, coefs=None):
        if coefs is not None:
            r_minus_1, G = coefs
            f = r_minus_1 * x
        else:
            f, G = sde.discretize(x, t, t - t_next)
            G = append_dims(G, x.ndim)
        x_mean = x - f + G * G * score_fn(x, t)
        return x_mean + G * noise, x_mean


class NonePredictor(Predictor):
    """The identity: no move in time (for corrector-only samplers such as annealed Langevin). 0 NFE."""

    nfe_per_step = 0
    stochastic = False

    def step(self, sde, score_fn, x, t, t_next, noise, coefs=None):
        return x, x


PREDICTORS = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion, "none": NonePredictor}
