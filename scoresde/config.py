"""`TrainConfig`: every knob of a training run, a frozen dataclass that round-trips through TOML and checkpoints.

Names map to objects only here (`build_sde`, and `nets.build_net`): the rest of
the library takes objects.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from .losses import T_SAMPLINGS, WEIGHTINGS
from .model import PARAMETERIZATIONS
from .sde import CosineVPSDE, LinearSDE, SubVPSDE, VESDE, VPSDE

SDE_NAMES = ("vp", "subvp", "ve", "cosine")
LR_SCHEDULES = ("constant", "cosine")
NET_NAMES = ("auto", "mlp", "unet")
# The sampler names of API.md (as `scoresde.samplers.SAMPLERS`; kept here so a config is checked without importing the samplers).
SAMPLER_NAMES = ("euler_maruyama", "reverse_diffusion", "pc", "langevin", "sde", "ode", "dpm_solver")

__all__ = ["TrainConfig", "build_sde", "sde_config", "sde_from_config", "SDE_NAMES"]


@dataclass(frozen=True)
class TrainConfig:
    """A training run, described by plain values (see each group's comment). `from_toml` reads the same names."""

    # data: a built-in name (ring, checkerboard, moons, swissroll, digits), FILE.npz / FILE.npy, or an image folder
    data: str = "ring"
    n_train: int = 0  # toy sets only: points drawn (0: 50 000)
    # forward SDE and its parameters (only those of the chosen SDE are used)
    sde: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    # network: "auto" is the MLP for vectors, the U-Net for images (B, C, H, W)
    net: str = "auto"
    hidden: int = 256  # MLP width
    n_blocks: int = 3  # MLP residual blocks
    channels: int = 32  # U-Net base channels
    channel_mults: Tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: Tuple[int, ...] = (-1,)
    emb_dim: int = 128
    fourier_scale: float = 1.0
    dropout: float = 0.0
    # Training defaults chosen by measurement (benchmarks/training.py --part kl, README "Training"): "v" output,
    # likelihood weighting with importance-sampled, stratified t from eps = 1e-3, EMA 0.999 and batch 640 took the
    # issue's ring from KL 0.42 nats (eps output, σ² weighting, iid t from 1e-5, EMA 0.995) to 0.019 in 4000 steps.
    parameterization: str = "v"
    class_conditional: bool = False  # condition on the data set's labels (see data.py), with a null label
    label_dropout: float = 0.1  # probability of the null label in training, for classifier-free guidance
    classifier: bool = False  # train a time-conditioned classifier p_t(y | x) instead (t ~ U[eps, T]; weighting, importance_sampling unused)
    # loss
    weighting: str = "likelihood"
    importance_sampling: bool = True
    # stratified: one shifted grid of the batch's t (low discrepancy); with importance sampling the batch's t are
    # log-uniform-like over [eps, T], and iid draws leave whole decades of log t empty in a batch of a short run.
    t_sampling: str = "stratified"
    # 1e-3 as the samplers' VP default: below it (σ < 0.01) the DSM target is pure noise, and q(t) ∝ g²/σ² spent
    # a fifth of the batch there with eps = 1e-5. The likelihood still integrates to 1e-5.
    eps: float = 1e-3
    # optimisation
    steps: int = 5000
    # the global batch, split across DDP ranks; 640 over 512: KL 0.019 against 0.022 on the ring, 0.032 against
    # 0.037 on the 4x4 grid and 0.058 against 0.070 on the 8-D mixture in 4000 steps, at 1.25x the compute
    batch_size: int = 640
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 200  # linear learning-rate warm-up, in steps
    lr_schedule: str = "constant"  # after the warm-up: "constant", or "cosine" (half a cosine down to 0 at `steps`)
    grad_clip: float = 1.0  # max gradient norm (0: off)
    ema_decay: float = 0.999  # the cap of the warm-up min(decay, (1+n)/(10+n)); reached at n ≈ 9000
    amp: bool = False  # bfloat16 autocast on CUDA (ignored on CPU)
    # U-Net only: weights and batches in channels-last (NHWC) memory format. Off by default: mixed on the CPU
    # (README; `benchmarks.training --part unet`: 0.91x the step time for the digits U-Net and a 3x32x32 one, but
    # 1.1x for the default 32-channel U-Net at 8x8, where GroupNorm's channels-last CPU kernel took 4.5x longer);
    # not measured on CUDA here. The MLP has no 4-D tensors: a no-op there.
    channels_last: bool = False
    compile: bool = False  # torch.compile the network's forward (first steps compile: seconds to minutes)
    # run
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    out: str = ""  # run folder ("": runs/<data>-<sde>)
    log_every: int = 100
    ckpt_every: int = 1000
    eval_every: int = 0  # periodic evaluation (0: only at the end, when final_eval)
    final_eval: bool = True
    eval_samples: int = 1000  # EMA samples drawn for the picture
    eval_bpd: int = 256  # test points for bits/dim (0: skip)
    eval_sampler: str = "dpm_solver"
    eval_steps: int = 20

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("float",) and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
            if f.type.startswith("Tuple") and isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self._check()

    def _check(self) -> None:
        def choice(name, options):
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}, got {getattr(self, name)!r}")

        choice("sde", SDE_NAMES)
        choice("net", NET_NAMES)
        choice("parameterization", PARAMETERIZATIONS)
        choice("weighting", WEIGHTINGS)
        choice("t_sampling", T_SAMPLINGS)
        choice("lr_schedule", LR_SCHEDULES)
        if isinstance(self.eval_sampler, str):  # checked here, before any training step, not at the final evaluation
            choice("eval_sampler", SAMPLER_NAMES)
        for f in fields(self):
            v = getattr(self, f.name)
            want = {"int": int, "float": float, "bool": bool, "str": str}.get(f.type)
            if want is not None and (not isinstance(v, want) or (want is not bool and isinstance(v, bool))):
                raise TypeError(f"{f.name} must be {f.type}, got {v!r}")
            if want is float and not math.isfinite(v):
                raise ValueError(f"{f.name} must be finite, got {v}")
        for name in ("steps", "batch_size", "hidden", "n_blocks", "channels", "num_res_blocks", "emb_dim", "log_every", "ckpt_every", "eval_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "T", "beta_max", "sigma_min", "sigma_max", "fourier_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_train", "warmup", "eval_every", "eval_samples", "eval_bpd", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "beta_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("ema_decay", "dropout", "label_dropout"):
            if not (0 <= getattr(self, name) < 1):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (0 <= self.eps < self.T):
            raise ValueError(f"eps must be in [0, T), got {self.eps}")
        if not self.data:
            raise ValueError("data must name a data set or a file")
        if not self.channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive ints, got {self.channel_mults}")
        if self.classifier and self.class_conditional:
            raise ValueError("classifier and class_conditional exclude each other (a classifier predicts the labels; "
                             "a class-conditional score model is given them)")
        if self.importance_sampling and self.eps <= 0:
            raise ValueError("eps must be > 0 with importance_sampling")
        build_sde(self)  # SDE parameter consistency (e.g. sigma_min < sigma_max)

    # -- conversions -------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """Plain values only (tuples become lists), as written to TOML and into checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**dict(d))

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """Read a TOML file of `TrainConfig` fields, at top level or under a `[train]` table."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            d = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
        if set(d) == {"train"} and isinstance(d["train"], dict):
            d = d["train"]
        return cls.from_dict(d)

    def to_toml(self) -> str:
        lines = []
        for k, v in self.to_dict().items():
            lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


# -- SDEs by name ---------------------------------------------------------------------


def build_sde(config: TrainConfig) -> LinearSDE:
    """The SDE a config names, with its parameters."""
    return sde_from_config(
        {"kind": config.sde, "beta_min": config.beta_min, "beta_max": config.beta_max,
         "sigma_min": config.sigma_min, "sigma_max": config.sigma_max, "T": config.T}
    )


def sde_config(sde: LinearSDE) -> Dict[str, Any]:
    """A plain description of a built-in SDE (for checkpoints)."""
    kinds = {VPSDE: "vp", SubVPSDE: "subvp", VESDE: "ve", CosineVPSDE: "cosine"}
    kind = kinds.get(type(sde))
    if kind is None:
        raise TypeError(f"cannot describe {type(sde).__name__} by a config; only {', '.join(k.__name__ for k in kinds)} are saved by name")
    keys = {"vp": ("beta_min", "beta_max"), "subvp": ("beta_min", "beta_max"), "ve": ("sigma_min", "sigma_max"), "cosine": ("s", "delta")}[kind]
    return {"kind": kind, "T": sde.T, **{k: getattr(sde, k) for k in keys}}


def sde_from_config(c: Mapping[str, Any]) -> LinearSDE:
    kind, T = c.get("kind"), c.get("T", 1.0)
    if kind in ("vp", "subvp"):
        return (VPSDE if kind == "vp" else SubVPSDE)(c.get("beta_min", 0.1), c.get("beta_max", 20.0), T)
    if kind == "ve":
        return VESDE(c.get("sigma_min", 0.01), c.get("sigma_max", 50.0), T)
    if kind == "cosine":
        return CosineVPSDE(c.get("s", 0.008), c.get("delta", 0.01), T)
    raise ValueError(f"sde must be one of {', '.join(SDE_NAMES)}, got {kind!r}")
