"""The probability-flow ODE `dx/dt = f(x, t) - ½ g(t)² s(x, t)` integrated by `torchdiffeq.odeint` from `T` down to `eps`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .base import Sampler
from .timesteps import TimestepSpec, get_timesteps

__all__ = ["ODESampler", "ProbabilityFlowFunc", "FIXED_METHODS", "ADAPTIVE_METHODS"]

# torchdiffeq's fixed-grid methods with their orders; the rest of its methods adapt their steps.
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
ADAPTIVE_METHODS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


class ProbabilityFlowFunc(torch.nn.Module):
    """`torchdiffeq`'s `func(t, x)` for the probability-flow ODE; counts its evaluations in `nfe`.

    torchdiffeq already integrates decreasing time grids, so the drift is used as is (negating it too would
    run the ODE the wrong way)."""

    def __init__(self, sde, score_fn, batch: int, progress: Optional[tqdm] = None):
        super().__init__()
        self.reverse = sde.reverse(score_fn, probability_flow=True)
        self.batch, self.progress, self.nfe = batch, progress, 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        if self.progress is not None:
            self.progress.update(1)
        return self.reverse.drift(x, t.to(x.dtype).expand(self.batch))


class ODESampler(Sampler):
    """Probability-flow ODE through `torchdiffeq.odeint` (Song et al. 2021, sec. 4.3).

    `method="dopri5"` (adaptive, `rtol`/`atol`, `steps` ignored; NFE ≈ 6 per accepted step) or a fixed-grid
    method (`euler` 1, `midpoint`/`heun2` 2, `heun3` 3, `rk4` 4 NFE per step, orders equal to NFE) on `steps`
    steps of the `timesteps` grid. Only the end state is kept: memory does not grow with the steps."""

    weak_order = None
    stochastic = False

    def __init__(self, method: str = "dopri5", *, rtol: float = 1e-5, atol: float = 1e-5,
                 timesteps: TimestepSpec = "uniform", options: Optional[dict] = None):
        if method not in FIXED_METHODS and method not in ADAPTIVE_METHODS:
            raise ValueError(f"method must be one of {sorted(FIXED_METHODS) + sorted(ADAPTIVE_METHODS)}, got {method!r}")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.timesteps, self.options = timesteps, dict(options or {})

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    @property
    def order(self) -> int:  # type: ignore[override]
        return FIXED_METHODS.get(self.method) or ADAPTIVE_METHODS[self.method]

    @property
    def nfe_per_step(self) -> Optional[int]:  # type: ignore[override]
        return None if self.adaptive else FIXED_METHODS[self.method]

    def run(self, sde, score_fn, x, *, steps, eps, generator=None, progress=False) -> Tensor:
        from torchdiffeq import odeint

        bar = tqdm(desc=f"ode ({self.method})", unit="nfe", leave=False) if progress else None
        func = ProbabilityFlowFunc(sde, score_fn, x.shape[0], bar)
        options = dict(self.options)
        if self.adaptive:
            t = torch.tensor([sde.T, eps], device=x.device, dtype=x.dtype)
            # Make dopri5 land exactly on eps: stepping past it probes t < 0, where VP's field is NaN
            # ("underflow in dt" with torchdiffeq 0.2.5).
            options.setdefault("step_t", t[1:])
        else:
            grid = get_timesteps(self.timesteps, sde, steps, eps, x)
            t = grid[[0, -1]]
            options.setdefault("grid_constructor", lambda f, y0, tt: grid)
        try:
            out = odeint(func, x, t, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        finally:
            if bar is not None:
                bar.close()
        return out[-1]
