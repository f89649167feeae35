"""`ScoreModel`: the thin wrapper (in the manner of EDM's preconditioning) that turns a raw network into a score.

For any linear SDE with transition `x_t = m(t) x₀ + σ(t) ε`, the network sees
`c_in x_t` with `c_in = 1/√(m² σ_data² + σ²)` (unit-variance input at every `t`)
and the noise-level input `c_noise = log(σ/m)` (minus the half log-SNR, which
is what sets the difficulty of denoising, whatever the SDE), and its output is
read according to `parameterization`:

- `"eps"`:   `net ≈ ε`,            score `= -net / σ`
- `"score"`: `net ≈ ∇ log p_t`,    score `= net`
- `"x0"`:    `net ≈ E[x₀ | x_t]`,  score `= (m net - x_t) / σ²`  (Tweedie)
- `"v"`:     `net ≈ α ε - β x₀/σ_data`, score `= -(β c_in x_t + α net) / σ`, `α = m σ_data c_in`, `β = σ c_in`

Only the SDE's `Schedule` (`m`, `σ` and the conversions) is used, so every `LinearSDE` works.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._utils import TimeLike, append_dims, batch_time

PARAMETERIZATIONS = ("eps", "score", "x0", "v")

__all__ = ["ScoreModel", "Classifier", "PARAMETERIZATIONS"]


def _c_noise(sched) -> Tensor:
    # log σ is -inf at t = 0 exactly; clamp so the network input stays finite there.
    std = sched.sigma
    return torch.log(std.clamp_min(torch.finfo(std.dtype).tiny ** 0.5)) - torch.log(sched.m)


def _net_inputs(sde, x: Tensor, t: TimeLike, sigma_data: float):
    """`(c_in x, c_noise, schedule)` at `t`: what a network sees, the same for score models and classifiers."""
    # Shape only: the caller (a sampler, the loss) owns the values of t; a host sync here would cost every step.
    t = batch_time(t, x.shape[0], x)
    sched = sde._schedule(t)
    return x * append_dims(sched.c_in(sigma_data), x.ndim), _c_noise(sched), sched


def _check_wrapper_args(net, sde, sigma_data) -> None:
    if not hasattr(sde, "_schedule"):
        raise TypeError(f"sde must be a LinearSDE (with marginal_coefs), got {type(sde).__name__}")
    if not callable(net):
        raise TypeError(f"net must be callable, got {type(net).__name__}")
    if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
        raise ValueError(f"sigma_data must be positive and finite, got {sigma_data!r}")


class ScoreModel(nn.Module):
    """`s_θ(x, t) = read_out(net(c_in(t) x, c_noise(t)), x, t)`: a raw network as a score function of a linear SDE.

    `model(x, t, labels=None)` returns a tensor shaped like `x`; `t` is `(B,)` or
    a float. `sigma_data` is the data's per-coordinate std (it only scales the
    network's input); `event_shape` is the sample shape the model was trained on
    (used by `sample` on the command line)."""

    def __init__(
        self,
        net: nn.Module,
        sde,
        parameterization: str = "eps",
        *,
        sigma_data: float = 1.0,
        event_shape: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        _check_wrapper_args(net, sde, sigma_data)
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.sigma_data = float(sigma_data)
        self.event_shape = tuple(int(s) for s in event_shape) if event_shape is not None else None

    @property
    def num_classes(self) -> int:
        """Classes the network is conditioned on (0: unconditional); label `num_classes` is the null label."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, sigma_data={self.sigma_data:.4g}, event_shape={self.event_shape}"

    def preconditioning(self, t: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """`(m, σ, c_in, c_noise)` at `t`, each `(B,)`."""
        sched = self.sde._schedule(t)
        return sched.m, sched.sigma, sched.c_in(self.sigma_data), self._c_noise(sched)

    @staticmethod
    def _c_noise(sched) -> Tensor:
        return _c_noise(sched)

    def forward(self, x: Tensor, t: TimeLike, labels: Optional[Tensor] = None) -> Tensor:
        x_in, c_noise, sched = _net_inputs(self.sde, x, t, self.sigma_data)
        out = self.net(x_in, c_noise, labels) if labels is not None else self.net(x_in, c_noise)
        return self.output_to_score(out.to(x.dtype), x, sched)

    def output_to_score(self, out: Tensor, x: Tensor, sched) -> Tensor:
        """Read the network output as a score, for the chosen parameterization (conversions from `Schedule`)."""
        if self.parameterization == "eps":
            return sched.score_from_eps(out)
        if self.parameterization == "score":
            return out
        if self.parameterization == "x0":
            return sched.score_from_x0(x, out)
        return sched.score_from_v(x, out, self.sigma_data)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for `x_t = m x₀ + σ ε` (for tests and custom losses)."""
        sched = self.sde._schedule(batch_time(t, x0.shape[0], x0))
        if self.parameterization == "eps":
            return noise
        if self.parameterization == "score":
            return sched.score_from_eps(noise)
        if self.parameterization == "x0":
            return x0
        return sched.v_target(x0, noise, self.sigma_data)

    def config(self) -> Dict[str, Any]:
        """A plain description (network config, parameterization, sigma_data, event_shape) that `load` rebuilds from."""
        from .nets import net_config

        return {
            "net": dict(net_config(self.net)),
            "parameterization": self.parameterization,
            "sigma_data": self.sigma_data,
            "event_shape": list(self.event_shape) if self.event_shape is not None else None,
        }


class Classifier(nn.Module):
    """`logits(x, t) = net(c_in(t) x, c_noise(t))`, `(B, K)`: a time-conditioned classifier of `p_t(y | x)` for a linear SDE.

    The same inputs as `ScoreModel` (`c_in = 1/√(m² σ_data² + σ²)`, `c_noise = log(σ/m)`), so it works for every
    `LinearSDE`; trained by cross-entropy on `x_t = m x₀ + σ ε` (`scoresde train --classifier`). Its logits are
    what `scoresde.guidance.classifier(score_fn, clf, y, scale)` differentiates."""

    kind = "classifier"

    def __init__(self, net: nn.Module, sde, *, sigma_data: float = 1.0, event_shape: Optional[Sequence[int]] = None):
        super().__init__()
        _check_wrapper_args(net, sde, sigma_data)
        self.net = net
        self.sde = sde
        self.sigma_data = float(sigma_data)
        self.event_shape = tuple(int(s) for s in event_shape) if event_shape is not None else None

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the logits' width)."""
        return int(self.net.num_classes)

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, num_classes={self.num_classes}, sigma_data={self.sigma_data:.4g}, event_shape={self.event_shape}"

    def forward(self, x: Tensor, t: TimeLike) -> Tensor:
        x_in, c_noise, _ = _net_inputs(self.sde, x, t, self.sigma_data)
        return self.net(x_in, c_noise).to(x.dtype)

    def config(self) -> Dict[str, Any]:
        """A plain description that `load` rebuilds from (`kind` marks a classifier checkpoint)."""
        from .nets import net_config

        return {
            "kind": "classifier",
            "net": dict(net_config(self.net)),
            "sigma_data": self.sigma_data,
            "event_shape": list(self.event_shape) if self.event_shape is not None else None,
        }
