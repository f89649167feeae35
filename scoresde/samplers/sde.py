"""The reverse-time SDE through torchsde: the one adapter module between our `SDE` and torchsde's protocol.

torchsde's solvers are used unchanged, stepped interval by interval so that `sample()`'s loop (callback,
conditioning hook, NFE counter) runs at every grid point: the solver object is built once per call
(torchsde's `methods.select` and `ForwardSDE`, what `torchsde.sdeint` itself builds — it has no public
per-step entry, and calling `sdeint` per interval would re-run its shape check, one extra drift evaluation per
step) and its `step(t0, t1, y, extra)` is called for each interval, carrying the solver's extra state
(reversible Heun's) from one interval to the next.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._utils import append_dims
from .base import Sampler

__all__ = ["TorchSDEReverse", "SDESampler", "SDE_METHODS", "StepBrownian"]

# torchsde methods for diagonal/additive noise and the calculus each expects. Our noise g(t) does not depend on x,
# so the Itô and Stratonovich reverse SDEs coincide and one drift serves both.
SDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito",
               "midpoint": "stratonovich", "heun": "stratonovich", "euler_heun": "stratonovich",
               "reversible_heun": "stratonovich"}
# Strong orders for additive noise (g independent of x), as torchsde's solvers declare them for that case
# (its Euler: "1.0 if noise_type == additive"); weak order 1 for all but srk (1.5).
_STRONG_ORDER = {"euler": 1.0, "milstein": 1.0, "srk": 1.5, "midpoint": 1.0, "heun": 1.0, "euler_heun": 1.0,
                 "reversible_heun": 1.0}
_WEAK_ORDER = {"srk": 1.5}
# Drift (score) evaluations per step, counted (tests/test_samplers.py asserts them against the counter);
# reversible Heun evaluates once more when it starts (`nfe_init`).
_NFE_PER_STEP = {"euler": 1, "milstein": 1, "srk": 10, "midpoint": 2, "heun": 2, "euler_heun": 1, "reversible_heun": 1}
_NFE_INIT = {"reversible_heun": 1}


class TorchSDEReverse(torch.nn.Module):
    """torchsde's protocol for our reverse SDE in the increasing time `s = T - t`, on flattened `(B, D)` states.

    `dy = -[f - g² s](y, T - s) ds + g(T - s) dW_s`: substituting `t = T - s` flips the sign of the drift,
    and the reverse-time Brownian motion becomes an ordinary one."""

    noise_type = "diagonal"

    def __init__(self, sde, score_fn, shape, sde_type: str = "ito"):
        super().__init__()
        self.sde_type = sde_type
        self.reverse = sde.reverse(score_fn)
        self.T, self.shape = sde.T, tuple(shape)

    def _t(self, s, y: Tensor) -> Tensor:
        t = self.T - torch.as_tensor(s, device=y.device, dtype=y.dtype)
        return t.expand(y.shape[0])

    def f(self, s, y: Tensor) -> Tensor:
        return -self.reverse._drift(y.view(self.shape), self._t(s, y)).flatten(1)

    def g(self, s, y: Tensor) -> Tensor:
        return self.reverse._diffusion(self._t(s, y))[:, None].expand_as(y)

    def g_prod(self, s, y: Tensor, v: Tensor) -> Tensor:
        return self.reverse._diffusion(self._t(s, y))[:, None] * v

    def f_and_g_prod(self, s, y: Tensor, v: Tensor):
        # What Euler and Heun ask for: one time conversion and one g(t) for both (torchsde's default calls f and g apart).
        # The schedule on one time, broadcast; only the score gets the (B,) view.
        t1 = (self.T - torch.as_tensor(s, dtype=y.dtype)).to(y.device).reshape(1)
        fwd = self.reverse.forward
        g = fwd._diffusion(t1)
        x = y.view(self.shape)
        score = self.reverse.score_fn(x, t1.expand(y.shape[0]))
        drift = fwd._drift(x, t1) - append_dims(g * g, x.ndim) * score
        return -drift.flatten(1), g[:, None] * v


# Methods that query each step's Brownian increment exactly once, in order (so independent draws per call are
# a valid Brownian path); srk needs space-time Lévy areas and reversible_heun re-queries, so they keep the tree.
_ONE_QUERY_PER_STEP = ("euler", "milstein", "midpoint", "heun", "euler_heun")


class StepBrownian:
    """Brownian increments `W(tb) - W(ta) ~ N(0, (tb - ta) I)`: the loop's noise for the step, scaled by `√(tb - ta)`.

    Valid only for fixed-step solvers that ask for each step's increment once, in order. torchsde's
    `BrownianInterval` (kept for the other methods) builds a binary tree and draws twice per step: on the 2-D
    ring with the exact score that bookkeeping cost ~25% of the score's time (measured, benchmarks/solvers.py)."""

    def __init__(self, shape, dtype: torch.dtype, device: torch.device):
        self._shape, self._dtype, self._device = tuple(shape), dtype, device
        self.next_noise: Optional[Tensor] = None  # set by the sampler before each step

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("StepBrownian gives increments over [ta, tb] only (no point values or Lévy areas)")
        if self.next_noise is None:
            raise RuntimeError("StepBrownian was queried twice in one step")
        z, self.next_noise = self.next_noise, None
        dt = torch.as_tensor(tb - ta, dtype=self._dtype, device=self._device)
        return z.reshape(self._shape) * dt.sqrt()

    def __repr__(self) -> str:
        return f"StepBrownian(shape={self._shape}, dtype={self._dtype}, device={self._device})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self._device)
    shape = property(lambda self: self._shape)
    levy_area_approximation = property(lambda self: "none")

    def size(self):
        return self._shape


class _State(NamedTuple):
    solver: object
    s: Tensor  # the grid in s = T - t, float64
    shape: tuple
    bm: object
    extra: tuple


class SDESampler(Sampler):
    """Reverse-time SDE `dx = [f - g² s] dt + g dw̄` stepped by a torchsde solver on the sampler's time grid.

    `method` (torchsde's own default for diagonal noise would be the costly `srk`): `euler`, `milstein` (1 NFE
    per step; with additive noise both are strong order 1), `euler_heun` (1), `heun` and `midpoint` (2),
    `reversible_heun` (1, plus 1 when it starts), `srk` (10: its diagonal-noise tableau, strong order 1.5). The Brownian path is `bm` if given
    (to share one path across runs); otherwise for the methods that query each step once (euler, milstein, heun,
    midpoint, euler_heun) the loop's noise for the step (`StepBrownian`: `generator` or `noise_sampler`), and a
    `torchsde.BrownianInterval` seeded from `generator` for srk and reversible_heun."""

    def __init__(self, method: str = "euler", *, bm=None, timesteps="auto"):
        if method not in SDE_METHODS:
            raise ValueError(f"method must be one of {sorted(SDE_METHODS)}, got {method!r}")
        self.method, self.bm, self.timesteps = method, bm, timesteps

    order = property(lambda self: _STRONG_ORDER[self.method])  # type: ignore[assignment]
    weak_order = property(lambda self: _WEAK_ORDER.get(self.method, 1.0))  # type: ignore[assignment]
    nfe_per_step = property(lambda self: _NFE_PER_STEP[self.method])  # type: ignore[assignment]
    nfe_init = property(lambda self: _NFE_INIT.get(self.method, 0))  # type: ignore[assignment]

    def brownian(self, x: Tensor, span: float, generator: Optional[torch.Generator], steps: int):
        """A Brownian path on `[0, span]` for flattened states."""
        import torchsde

        size = (x.shape[0], x[0].numel())
        if self.method in _ONE_QUERY_PER_STEP:
            return StepBrownian(size, x.dtype, x.device)
        entropy = None
        if generator is not None:  # one draw, before the loop
            entropy = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        levy = "space-time" if self.method == "srk" else "none"
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=size, dtype=x.dtype, device=x.device, entropy=entropy,
                                         levy_area_approximation=levy, dt=span / steps)

    def init(self, sde, score_fn, ts, schedule, x, noise):
        from torchsde._core import base_sde, methods

        func = TorchSDEReverse(sde, score_fn, x.shape, SDE_METHODS[self.method])
        # Times in float64 even for float32 states, as torchsde keeps them.
        s = (sde.T - ts.detach().to(torch.float64)).cpu()
        span = float(s[-1] - s[0])
        bm = self.bm if self.bm is not None else self.brownian(x, span, noise.generator, len(ts) - 1)
        solver = methods.select(method=self.method, sde_type=func.sde_type)(
            sde=base_sde.ForwardSDE(func), bm=bm, dt=span / (len(ts) - 1), adaptive=False, rtol=1e-5, atol=1e-4,
            dt_min=1e-5, options={})
        y = x.flatten(1)
        return _State(solver, s, tuple(x.shape), bm, solver.init_extra_solver_state(s[0], y))

    def step(self, score_fn, x, i, state, noise):
        if isinstance(state.bm, StepBrownian):
            state.bm.next_noise = noise(i)
        y, extra = state.solver.step(state.s[i], state.s[i + 1], x.flatten(1), state.extra)
        return y.view(state.shape), state._replace(extra=extra)
