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


class SDESampler(Sampler):
    """Reverse-time SDE `dx = [f - g² s] dt + g dw̄` integrated by `torchsde.sdeint` on a uniform grid of `steps` steps.

    `method` is passed explicitly (torchsde's own default for diagonal noise is the costly `srk`):
    `euler` (1 NFE/step, strong order ½), `milstein` (1; with additive noise as Euler), `srk` (strong 1.5, several NFE),
    `reversible_heun` (1 amortised), `heun`/`midpoint` (2). The Brownian path is a `torchsde.BrownianInterval`
    seeded from `generator`, or `bm` if given (to share one path across runs)."""

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
        """A Brownian path on `[0, span]` for flattened states, seeded from `generator` (one draw, before the loop)."""
        import torchsde

        entropy = None
        if generator is not None:
            entropy = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        levy = "space-time" if self.method == "srk" else "none"
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=(x.shape[0], x[0].numel()), dtype=x.dtype,
                                         device=x.device, entropy=entropy, levy_area_approximation=levy,
                                         dt=span / steps)

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
