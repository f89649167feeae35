"""The reverse-time SDE through `torchsde.sdeint`: a thin adapter, torchsde's solvers unchanged."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .base import Sampler

__all__ = ["TorchSDEReverse", "SDESampler", "SDE_METHODS"]

# torchsde methods for diagonal/additive noise and the calculus each expects. Our noise g(t) does not depend on x,
# so the Itô and Stratonovich reverse SDEs coincide and one drift serves both.
SDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito",
               "midpoint": "stratonovich", "heun": "stratonovich", "euler_heun": "stratonovich",
               "reversible_heun": "stratonovich"}
_STRONG_ORDER = {"euler": 0.5, "milstein": 1.0, "srk": 1.5, "midpoint": 0.5, "heun": 1.0, "euler_heun": 0.5,
                 "reversible_heun": 1.0}


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
        return -self.reverse.drift(y.view(self.shape), self._t(s, y)).flatten(1)

    def g(self, s, y: Tensor) -> Tensor:
        return self.reverse.diffusion(self._t(s, y))[:, None].expand_as(y)


# Methods that query each step's Brownian increment exactly once, in order (so independent draws per call are
# a valid Brownian path); srk needs space-time Lévy areas and reversible_heun re-queries, so they keep the tree.
_ONE_QUERY_PER_STEP = ("euler", "milstein", "midpoint", "heun", "euler_heun")


class StepBrownian:
    """Brownian increments `W(tb) - W(ta) ~ N(0, (tb - ta) I)`, one fresh draw from `generator` per query.

    Valid only for fixed-step solvers that ask for each step's increment once, in order. torchsde's
    `BrownianInterval` (kept for the other methods) builds a binary tree and draws twice per step: on the 2-D
    ring with the exact score that bookkeeping cost ~25% of the score's time (measured, benchmarks/solvers.py)."""

    def __init__(self, shape, dtype: torch.dtype, device: torch.device, generator: Optional[torch.Generator]):
        self._shape, self._dtype, self._device, self._generator = tuple(shape), dtype, device, generator

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("StepBrownian gives increments over [ta, tb] only (no point values or Lévy areas)")
        dt = torch.as_tensor(tb - ta, dtype=self._dtype, device=self._device)
        return torch.randn(self._shape, generator=self._generator, dtype=self._dtype, device=self._device) * dt.sqrt()

    def __repr__(self) -> str:
        return f"StepBrownian(shape={self._shape}, dtype={self._dtype}, device={self._device})"

    dtype = property(lambda self: self._dtype)
    device = property(lambda self: self._device)
    shape = property(lambda self: self._shape)
    levy_area_approximation = property(lambda self: "none")

    def size(self):
        return self._shape


class SDESampler(Sampler):
    """Reverse-time SDE `dx = [f - g² s] dt + g dw̄` integrated by `torchsde.sdeint` on a uniform grid of `steps` steps.

    `method` is passed explicitly (torchsde's own default for diagonal noise is the costly `srk`):
    `euler` (1 NFE/step, strong order ½), `milstein` (1; with additive noise as Euler), `srk` (strong 1.5, several NFE),
    `reversible_heun` (1 amortised), `heun`/`midpoint` (2). The Brownian path is `bm` if given (to share one path
    across runs); otherwise for the methods that query each step once (euler, milstein, heun, midpoint, euler_heun)
    one normal draw per step from `generator` (`StepBrownian`), and a `torchsde.BrownianInterval` seeded from
    `generator` for srk and reversible_heun."""

    weak_order = 1.0

    def __init__(self, method: str = "euler", *, bm=None):
        if method not in SDE_METHODS:
            raise ValueError(f"method must be one of {sorted(SDE_METHODS)}, got {method!r}")
        self.method, self.bm = method, bm

    @property
    def order(self) -> float:  # type: ignore[override]
        return _STRONG_ORDER[self.method]

    @property
    def nfe_per_step(self) -> Optional[int]:  # type: ignore[override]
        return {"euler": 1, "milstein": 1, "reversible_heun": 1, "euler_heun": 2, "heun": 2, "midpoint": 1}.get(self.method)

    def brownian(self, x: Tensor, span: float, generator: Optional[torch.Generator], steps: int):
        """A Brownian path on `[0, span]` for flattened states, drawn from `generator`."""
        import torchsde

        size = (x.shape[0], x[0].numel())
        if self.method in _ONE_QUERY_PER_STEP:
            return StepBrownian(size, x.dtype, x.device, generator)
        entropy = None
        if generator is not None:  # one draw, before the loop
            entropy = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        levy = "space-time" if self.method == "srk" else "none"
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=size, dtype=x.dtype, device=x.device, entropy=entropy,
                                         levy_area_approximation=levy, dt=span / steps)

    def run(self, sde, score_fn, x, *, steps, eps, generator=None, progress=False) -> Tensor:
        import torchsde

        span = sde.T - eps
        func = TorchSDEReverse(sde, score_fn, x.shape, SDE_METHODS[self.method])
        bm = self.bm if self.bm is not None else self.brownian(x, span, generator, steps)
        # Times in float64 even for float32 states: torchsde accumulates t += dt, and float32 rounding would add
        # a sliver step (one more NFE) at the end.
        s = torch.tensor([0.0, span], device=x.device, dtype=torch.float64)
        ys = torchsde.sdeint(func, x.flatten(1), s, bm=bm, method=self.method, dt=span / steps, adaptive=False)
        return ys[-1].view(x.shape)
