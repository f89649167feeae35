"""Training: `train(config) -> run folder`, the `Trainer` behind it, and `load(path) -> (EMA ScoreModel, sde)`.

With `config.classifier` the same trainer (data, SDE, batches, EMA, checkpoints, resume, DDP) fits a
time-conditioned classifier `p_t(y | x_t)` by cross-entropy on `x_t = m x₀ + σ ε` instead, and reports its
test accuracy by noise level; `load` then gives `(Classifier, sde)`.

One step: draw the global batch (a seeded per-epoch permutation), its
dequantisation noise, diffusion times and Gaussian noise from a generator
re-seeded from `(seed, step)`; each DDP rank takes its contiguous slice of that
global batch, so 1 process or N processes see the same numbers; then the
per-sample DSM loss, AdamW with linear warm-up and gradient clipping, and an
EMA of the weights (`torch.optim.swa_utils.AveragedModel`). Because every
random draw is a function of `(seed, step)`, a resumed run repeats an
uninterrupted one bit for bit on the CPU.

Run folder: `checkpoint.pt` (written atomically: temp file, fsync, `os.replace`;
model, EMA, optimizer, step, RNG states and the full config, loadable with
`torch.load(weights_only=True)`), `config.toml`, `log.jsonl`, `samples_<step>.png`.

Multi-GPU / multi-node: launch with `torchrun --nproc_per_node=N -m scoresde.cli train ...`;
with `WORLD_SIZE > 1` the process group is initialised from the environment
(NCCL on CUDA, gloo on CPU), the model is wrapped in DistributedDataParallel,
and rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from .config import TrainConfig, build_sde, sde_config, sde_from_config
from .data import load_data
from .losses import classifier_loss_per_sample, dsm_loss_per_sample, sample_time
from .model import Classifier, ScoreModel
from .nets import ClassifierNet, build_net

__all__ = ["TrainConfig", "Trainer", "train", "load", "classifier_summary", "CHECKPOINT", "CheckpointError", "TrainingInterrupted", "read_checkpoint", "ema_warmup_decay"]

CHECKPOINT = "checkpoint.pt"
FORMAT = 1
# Fields that may change when a run is resumed (they do not change what is computed).
_RESUMABLE = {"steps", "device", "channels_last", "compile", "out", "log_every", "ckpt_every", "eval_every", "final_eval", "eval_samples", "eval_bpd", "eval_sampler", "eval_steps"}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (damaged, truncated, another format, or missing keys)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived during `fit`; a checkpoint of the last finished step was saved first
    (by rank 0; on the other DDP ranks `checkpoint` is None and `rank` says which rank this is)."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: Optional[Path], rank: int = 0):
        super().__init__(message)
        self.signum, self.step, self.checkpoint, self.rank = signum, step, checkpoint, rank


def learning_rate(c: TrainConfig, step: int) -> float:
    """`lr · min(1, (step+1)/warmup)`, times `½(1 + cos(π (step - warmup)/(steps - warmup)))` after the warm-up
    for `lr_schedule="cosine"`."""
    lr = c.lr * min(1.0, (step + 1) / c.warmup) if c.warmup > 0 else c.lr
    if c.lr_schedule == "cosine" and step >= c.warmup and c.steps > c.warmup:
        lr *= 0.5 * (1 + math.cos(math.pi * (step - c.warmup) / (c.steps - c.warmup)))
    return lr


def ema_warmup_decay(decay: float, n: int) -> float:
    """The EMA decay at update `n` (0-based count of earlier updates): `min(decay, (1 + n) / (10 + n))`.

    A warm-up as in Song et al.'s and Karras et al.'s code: early updates average over only
    the ~n steps seen so far, so a short run's EMA holds (almost) no weight of the random
    initialisation (with a constant 0.995, 300 steps keep 0.995^300 ≈ 22% of it). The first
    update (n = 0) copies the weights, as `AveragedModel` does."""
    return min(decay, (1.0 + n) / (10.0 + n))


def ema_warmup_multi_avg_fn(decay: float):
    """An `AveragedModel` `multi_avg_fn` applying `ema_warmup_decay` (it reads `num_averaged` on the host:
    the trainer's own update counts on the host instead and is bit-identical to this)."""

    @torch.no_grad()
    def fn(ema_list, model_list, num_averaged):
        _ema_lerp(ema_list, model_list, ema_warmup_decay(decay, int(num_averaged)))

    return fn


def _constant_multi_avg_fn(decay: float):
    @torch.no_grad()
    def fn(ema_list, model_list, num_averaged):
        _ema_lerp(ema_list, model_list, decay)

    return fn


def _ema_lerp(ema_list, model_list, decay: float) -> None:
    # As torch.optim.swa_utils.get_ema_multi_avg_fn, with the decay a Python float (no host sync).
    if ema_list and torch.is_floating_point(ema_list[0]):
        torch._foreach_lerp_(ema_list, model_list, 1.0 - decay)
    else:
        torch._foreach_mul_(ema_list, decay)
        torch._foreach_add_(ema_list, model_list, alpha=1.0 - decay)


def _resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={name!r} is not a device (use cpu, cuda, cuda:N, or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception:
            raise ValueError(f"device={name!r} is not available here") from None
    return dev


def default_out(config: TrainConfig) -> Path:
    stem = Path(config.data).stem or "data"
    return Path("runs") / f"{stem}-{config.sde}{'-classifier' if config.classifier else ''}"


# Noise levels (as fractions of T) at which a classifier run reports its test accuracy.
CLASSIFIER_EVAL_T = (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)


def _step_seed(seed: int, step: int, stream: int = 0) -> int:
    # Distinct, reproducible seeds per (seed, step, stream); stays below 2^63.
    return ((seed * 1_000_003 + stream) << 32) + step & (2**63 - 1)


class Trainer:
    """Owns the model, its EMA, the optimiser and the data of one run; `fit()` trains to `config.steps` and returns the run folder."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, progress: bool = True):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.progress = progress
        self._setup_distributed()
        self.out = Path(config.out) if config.out else default_out(config)
        ckpt = None
        if resume:
            path = self.out / CHECKPOINT
            if path.is_file():
                ckpt = read_checkpoint(path, _RESUME_KEYS)
                try:
                    saved = TrainConfig.from_dict(ckpt["config"])
                except (TypeError, ValueError) as e:
                    raise CheckpointError(f"{path}: the checkpoint's saved config is not valid ({_one_line(e)})") from None
                config = _merge_resumed(saved, config)
            elif self.rank == 0:
                warnings.warn(f"resume: no checkpoint in {self.out}, starting a new run", stacklevel=2)
        self.config = c = config
        self.device = _resolve_device(c.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and the default CUDA stream follow the current device
        if c.batch_size % self.world_size:
            raise ValueError(f"batch_size ({c.batch_size}) must be divisible by the number of processes ({self.world_size})")

        data = load_data(c.data, n_train=c.n_train or None, seed=c.seed if c.data in ("ring", "checkerboard", "moons", "swissroll") else 0)
        if c.batch_size > data.train.shape[0]:
            raise ValueError(f"batch_size ({c.batch_size}) exceeds the {data.train.shape[0]} training samples of {c.data!r}")
        for flag in ("class_conditional", "classifier"):
            if getattr(c, flag) and data.num_classes == 0:
                raise ValueError(f"{flag}=True but data {c.data!r} has no labels (an .npz can hold them as an integer array 'y' beside 'x')")
        if c.classifier and data.num_classes < 2:
            raise ValueError(f"classifier=True needs at least 2 classes; data {c.data!r} has {data.num_classes}")
        self.data_step = data.step
        train_x = data.train_raw if data.train_raw is not None else data.train
        self.train_x = train_x.to(self.device)
        labelled = c.class_conditional or c.classifier
        self.train_y = data.train_labels.to(self.device) if labelled else None
        self.test_x = data.test
        self.test_y = data.test_labels if labelled else None
        # Classes the run knows: a conditional score model's labels (null label = num_classes) or a classifier's K.
        self.num_classes = data.num_classes if labelled else 0
        self.event_shape = tuple(train_x.shape[1:])

        self.sde = build_sde(c)
        torch.manual_seed(c.seed)  # network initialisation
        sigma_data = float(data.train.std()) if ckpt is None else ckpt["model_config"]["sigma_data"]
        if c.classifier:
            kind, net_kwargs = _net_spec(c, self.event_shape, 0)
            net_kwargs.pop("num_classes")
            net = ClassifierNet(kind, self.num_classes, **net_kwargs)
            self.model = Classifier(net, self.sde, sigma_data=sigma_data, event_shape=self.event_shape).to(self.device)
        else:
            kind, net_kwargs = _net_spec(c, self.event_shape, self.num_classes)
            net = build_net(kind, **net_kwargs)
            self.model = ScoreModel(net, self.sde, c.parameterization, sigma_data=sigma_data, event_shape=self.event_shape).to(self.device)
        # Before the EMA copy and the optimiser: both then hold (and AdamW's fused kernel sees) channels-last tensors too.
        self.channels_last = c.channels_last and kind == "unet"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # EMA with warm-up (see `ema_warmup_decay`); checkpoints written before the warm-up existed carry no
        # "ema_schedule" and resume with the constant decay they were trained with.
        self.ema_schedule = "warmup" if ckpt is None else ckpt.get("ema_schedule", "constant")
        avg_fn = ema_warmup_multi_avg_fn if self.ema_schedule == "warmup" else _constant_multi_avg_fn
        self.ema = AveragedModel(self.model, multi_avg_fn=avg_fn(c.ema_decay), use_buffers=True)
        self.ema_step = 0  # EMA updates done (== ema.n_averaged, counted on the host)
        self.ema.module.eval()
        self._ema_groups: Optional[list] = None  # cached (EMA tensors, model tensors) per device/dtype, see _update_ema
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self._dropout_gen: Optional[torch.Generator] = None
        self.ddp = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # The compiled forward shares the model's parameters; checkpoints keep the plain module's state dict.
        self._forward = _compiled(self.ddp) if c.compile else self.ddp
        fused = self.device.type in ("cuda", "cpu")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay, fused=fused)
        self.amp = c.amp and self.device.type == "cuda"
        self.step = 0
        self.gen = torch.Generator(device=self.device)
        self._perm_epoch, self._perm = -1, None
        if ckpt is not None:
            try:
                self._restore(ckpt)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                raise CheckpointError(f"{self.out / CHECKPOINT}: cannot resume from this checkpoint ({type(e).__name__}: {_one_line(e)})") from None
        self.resumed = ckpt is not None
        self.last_eval: Optional[Dict[str, Any]] = None  # a classifier run's last accuracy record

    # -- setup ---------------------------------------------------------------------------

    def _setup_distributed(self) -> None:
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._owns_pg = False
        if self.world_size > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
            self._owns_pg = True
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if dist.is_initialized():
            self.world_size = dist.get_world_size()

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self._ema_groups = None
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        # Older checkpoints have no "ema_step"; their EMA counted its updates in n_averaged (one per step).
        self.ema_step = int(ckpt["ema_step"]) if "ema_step" in ckpt else int(self.ema.n_averaged)
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])

    # -- one step ----------------------------------------------------------------------------

    def _batch_indices(self, step: int) -> Tensor:
        n, B = self.train_x.shape[0], self.config.batch_size
        per_epoch = n // B
        epoch, i = divmod(step, per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_step_seed(self.config.seed, epoch, stream=1))
            self._perm, self._perm_epoch = torch.randperm(n, generator=g).to(self.device), epoch
        return self._perm[i * B : (i + 1) * B]

    def global_batch(self, step: int) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        """`(x0, t, noise, labels)` of the whole global batch at `step`: the same on every rank."""
        c, g = self.config, self.gen
        g.manual_seed(_step_seed(c.seed, step))
        idx = self._batch_indices(step)
        x0 = self.train_x[idx]
        if self.data_step is not None:
            x0 = x0 + self.data_step * torch.rand(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        # A classifier's cross-entropy is unweighted: its t is uniform, whatever the score model's sampling of t.
        t = sample_time(self.sde, x0.shape[0], eps=c.eps, importance_sampling=c.importance_sampling and not c.classifier,
                        t_sampling=c.t_sampling, generator=g, device=x0.device, dtype=x0.dtype)
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        labels = None
        if self.train_y is not None:
            labels = self.train_y[idx]
            if c.class_conditional:  # dropout to the null label: the same net learns the unconditional score
                drop = torch.rand(labels.shape, generator=g, device=labels.device) < c.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return x0, t, noise, labels

    def train_step(self) -> Tensor:
        """One optimisation step; returns the (detached) mean loss of this rank's share."""
        c = self.config
        x0, t, noise, labels = self.global_batch(self.step)
        b = c.batch_size // self.world_size
        sl = slice(self.rank * b, (self.rank + 1) * b)
        self._seed_dropout(_step_seed(c.seed, self.step, stream=2 + self.rank))
        x0, noise = x0[sl], noise[sl]
        if self.channels_last:  # what the convolutions read: no layout reorder in the first layer
            x0, noise = x0.contiguous(memory_format=torch.channels_last), noise.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
            if c.classifier:
                loss = classifier_loss_per_sample(self._forward, self.sde, x0, labels[sl], t=t[sl], noise=noise, eps=c.eps).mean()
            else:
                loss = dsm_loss_per_sample(self._forward, self.sde, x0, t=t[sl], noise=noise, weighting=c.weighting,
                                           importance_sampling=c.importance_sampling, eps=c.eps,
                                           labels=None if labels is None else labels[sl]).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._params, c.grad_clip, foreach=True)
        lr = learning_rate(c, self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self._update_ema()
        self.step += 1
        return loss.detach()

    def _seed_dropout(self, seed: int) -> None:
        """Seed the generator that dropout on `self.device` draws from.

        `torch.manual_seed` would do it too, but it also queues a lazy seed for every
        other backend (CUDA, XPU, MTIA, ...), each capturing a Python stack trace:
        ~0.2 ms a call, more than a whole small-MLP optimizer step. Seeding only the
        device's default generator sets the same state where dropout reads it."""
        if self._dropout_gen is None:
            dev = self.device
            if dev.type == "cpu":
                self._dropout_gen = torch.default_generator
            elif dev.type == "cuda":
                self._dropout_gen = torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
            else:  # pragma: no cover - other backends: the general (slower) call
                torch.manual_seed(seed)
                return
        self._dropout_gen.manual_seed(seed)

    def _update_ema(self) -> None:
        """`self.ema.update_parameters(self.model)`, without re-walking both module trees every step.

        `AveragedModel.update_parameters` collects (and detaches) every parameter and buffer of
        both models, groups them by device and dtype, then applies its `multi_avg_fn` (here
        `ema_warmup_multi_avg_fn`: one foreach lerp) — the collection costs ~0.3 ms a step for a
        small MLP on the CPU. The first update (which, at `n_averaged == 0`, copies the weights)
        goes through `update_parameters` itself; later ones apply the same `multi_avg_fn` to the
        same groups, cached, with the decay of update n (`ema_warmup_decay`) computed from a host-side count
        (`self.ema_step`, saved in the checkpoint), and count `n_averaged` the same way, so the EMA is
        bit-identical to `update_parameters` with `ema_warmup_multi_avg_fn`."""
        if self._ema_groups is None:
            if self.ema_step == 0:
                self.ema.update_parameters(self.model)
                self._ema_groups = _ema_groups(self.ema, self.model)
                self.ema_step = 1
                return
            self._ema_groups = _ema_groups(self.ema, self.model)
        n, d = self.ema_step, self.config.ema_decay
        decay = ema_warmup_decay(d, n) if self.ema_schedule == "warmup" else d
        for ema_tensors, model_tensors in self._ema_groups:
            _ema_lerp(ema_tensors, model_tensors, decay)
        self.ema.n_averaged += 1
        self.ema_step = n + 1

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train to `config.steps` (from the resumed step) and return the run folder.

        SIGINT / SIGTERM (in the main thread) stop the loop after the current step: a checkpoint
        of that step is saved, then `TrainingInterrupted` is raised (a second signal aborts at once).
        A resumed run that has already reached `config.steps` trains and evaluates nothing."""
        c = self.config
        main = self.rank == 0
        if self.step >= c.steps:
            self._teardown()
            return self.out
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.out)
            if self.resumed:
                _truncate_log(self.out / "log.jsonl", self.step)
            else:
                (self.out / "log.jsonl").unlink(missing_ok=True)  # a fresh run: no records of an earlier one
            _atomic_write_text(self.out / "config.toml", c.to_toml())
        # On the CPU a host read of the loss is free, so check every step; on CUDA batch the checks to avoid syncs.
        check_every = 1 if self.device.type == "cpu" else min(c.log_every, 50)
        pending: list[Tuple[int, Tensor]] = []
        bar = None
        if main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=f"train {Path(c.data).name}{' classifier' if c.classifier else ''}", unit="step", dynamic_ncols=True)
        t0, ema_loss = time.perf_counter(), None
        self._interrupt = None
        restore = self._install_signal_handlers()
        try:
            while self.step < c.steps:
                loss = self.train_step()
                pending.append((self.step, loss))
                s = self.step
                due_ckpt = s % c.ckpt_every == 0 or s == c.steps
                due_eval = c.eval_every > 0 and s % c.eval_every == 0
                stop = self._interrupt is not None and self.world_size == 1
                flush = len(pending) >= check_every or s % c.log_every == 0 or due_ckpt or due_eval or stop
                if flush:
                    values = torch.stack([v for _, v in pending]).tolist()
                    for (st, _), v in zip(pending, values):
                        if not math.isfinite(v):
                            raise NonFiniteLossError(f"training loss is {v} at step {st} (of {c.steps}); lower lr, raise grad_clip strictness or check the data")
                    pending.clear()
                    for v in values:
                        ema_loss = v if ema_loss is None else 0.98 * ema_loss + 0.02 * v
                    if bar is not None:
                        bar.update(len(values))
                        bar.set_postfix(loss=f"{ema_loss:.4f}", refresh=False)
                    if main and s % c.log_every == 0:
                        self._log({"step": s, "loss": ema_loss, "lr": self.opt.param_groups[0]["lr"], "time_s": time.perf_counter() - t0})
                    if self.world_size > 1:
                        stop = self._agree_on_stop()  # every rank flushes at the same steps: no rank waits alone
                if due_ckpt and main:
                    self.save_checkpoint()
                if stop:
                    signum = self._interrupt or signal.SIGINT
                    name = signal.Signals(signum).name
                    if main:
                        path = self.out / CHECKPOINT
                        if not due_ckpt:
                            self.save_checkpoint()
                        msg = f"interrupted by {name} at step {s} of {c.steps}; checkpoint saved to {path} (continue with --resume)"
                    else:  # only rank 0 writes checkpoints
                        path = None
                        msg = f"rank {self.rank}: interrupted at step {s} of {c.steps}; rank 0 saves the checkpoint"
                    raise TrainingInterrupted(msg, signum, s, path, rank=self.rank)
                if due_eval and main:
                    self.evaluate()
            if main and c.final_eval:
                self.evaluate()
        finally:
            restore()
            if bar is not None:
                bar.close()
            self._teardown()
        return self.out

    def _install_signal_handlers(self):
        """SIGINT/SIGTERM set a flag the loop reads after each step; returns a function restoring the old handlers."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {}

        def handler(signum, frame):
            if self._interrupt is not None:  # the second signal: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._interrupt = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - not allowed here
                pass

        def restore():
            for sig, h in old.items():
                signal.signal(sig, h)

        return restore

    def _agree_on_stop(self) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([0 if self._interrupt is None else int(self._interrupt)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        v = int(flag.item())
        if v and self._interrupt is None:
            self._interrupt = v
        return bool(v)

    def _teardown(self) -> None:
        if self._owns_pg:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns_pg = False

    def _log(self, record: Dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- checkpoints and evaluation ---------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "noise": self.gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "sde": sde_config(self.sde),
            "model_config": self.model.config(),
            "num_classes": self.num_classes,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "ema_step": self.ema_step,
            "ema_schedule": self.ema_schedule,
            "rng": rng,
        }

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        path = Path(path) if path is not None else self.out / CHECKPOINT
        _atomic_save(self.state_dict(), path)
        return path

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """EMA samples (PNG) and test bits/dim, when the sampler and likelihood modules are available; for a
        classifier run, its test accuracy at the noise levels `CLASSIFIER_EVAL_T` instead."""
        if self.config.classifier:
            return self._evaluate_classifier()
        c, model, rec = self.config, self.ema.module, {"step": self.step}
        dev = self.device
        try:
            from .samplers import sample
            from .plotting import save_samples
        except ImportError:  # pragma: no cover
            sample = None
        if sample is not None and c.eval_samples > 0:
            g = torch.Generator(device=dev).manual_seed(_step_seed(c.seed, self.step, stream=7))
            images = _looks_like_images(self.event_shape, len(c.channel_mults))
            x = sample(self.sde, model, (c.eval_samples,) + self.event_shape, sampler=c.eval_sampler, steps=c.eval_steps,
                       generator=g, device=dev, progress=self.progress)
            ref = None if images else self.test_x[: c.eval_samples]
            save_samples(x[:64] if images else x, self.out / f"samples_{self.step:07d}.png",
                         title=f"EMA samples, step {self.step} ({c.eval_sampler}, {c.eval_steps} steps)", reference=ref)
        if c.eval_bpd > 0:
            if self.progress:
                from tqdm.auto import tqdm

                tqdm.write(f"evaluating step {self.step}: bits/dim of {min(c.eval_bpd, len(self.test_x))} test points "
                           f"(probability-flow ODE; set eval_bpd = 0 to skip)")
            try:
                from .likelihood import bits_per_dim, log_likelihood
            except ImportError:  # pragma: no cover
                log_likelihood = None
            if log_likelihood is not None:
                xt = self.test_x[: c.eval_bpd].to(dev)
                div = "exact" if math.prod(self.event_shape) <= 8 else "hutchinson"
                with torch.enable_grad():
                    # rtol/atol 1e-4: a progress check, not the final number (use `scoresde likelihood` for that)
                    res = log_likelihood(self.sde, model, xt, divergence=div, rtol=1e-4, atol=1e-4,
                                         generator=torch.Generator(device=dev).manual_seed(c.seed))
                # bin width Δ in the [-1, 1] scale: P(bin) ≈ p(x) Δ^D, so the discrete bits/dim add -log2 Δ
                offset = -math.log2(self.data_step) if self.data_step else 0.0
                bpd = bits_per_dim(res.logp, self.event_shape).double()
                rec["test_bpd"] = float(bpd.mean())
                rec["test_bpd_se"] = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
                if self.data_step:
                    rec["test_bpd_discrete"] = rec["test_bpd"] + offset
        self._log(rec)
        if self.progress and len(rec) > 1:
            from tqdm.auto import tqdm

            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        return rec

    def classifier_accuracy(self, t_fractions=CLASSIFIER_EVAL_T, *, batch: int = 2048) -> Dict[float, float]:
        """Test accuracy of the EMA classifier on `x_t = m x₀ + σ ε` at `t = f T` for each fraction `f`, with fixed noise."""
        model, dev = self.ema.module, self.device
        x, y = self.test_x, self.test_y
        out = {}
        for f in t_fractions:
            g = torch.Generator(device=dev).manual_seed(_step_seed(self.config.seed, 0, stream=8))
            correct = 0
            for i in range(0, len(x), batch):
                x0, yy = x[i : i + batch].to(dev), y[i : i + batch].to(dev)
                t = torch.full((len(x0),), f * self.sde.T, device=dev, dtype=x0.dtype)
                xt = self.sde._schedule(t).perturb(x0, torch.randn(x0.shape, generator=g, device=dev, dtype=x0.dtype))
                correct += int((model(xt, t).argmax(1) == yy).sum())
            out[f] = correct / len(x)
        return out

    def _evaluate_classifier(self) -> Dict[str, float]:
        acc = self.classifier_accuracy()
        counts = torch.bincount(self.test_y, minlength=self.num_classes)
        rec: Dict[str, Any] = {"step": self.step, "chance": float(counts.max()) / len(self.test_y)}
        rec.update({f"test_acc_t={f * self.sde.T:g}": a for f, a in acc.items()})
        self.last_eval = rec
        self._log(rec)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(classifier_summary(rec))
        return rec


def classifier_summary(rec: Dict[str, Any]) -> str:
    """One line: a classifier run's test accuracy by noise level, against chance (the majority class's share)."""
    accs = ", ".join(f"t={k.split('=', 1)[1]}: {v:.3f}" for k, v in rec.items() if k.startswith("test_acc_t="))
    return f"step {rec['step']}: test accuracy {accs} (chance {rec['chance']:.3f})"


def _ema_groups(ema: AveragedModel, model: nn.Module) -> list:
    """The `(EMA tensors, model tensors)` lists `AveragedModel.update_parameters` hands its `multi_avg_fn`, one pair
    per (device, dtype) (parameters then buffers, as with `use_buffers=True`), detached; they alias the live tensors."""
    if not (ema.use_buffers and ema.multi_avg_fn is not None):
        raise ValueError("the cached EMA update needs AveragedModel(..., multi_avg_fn=..., use_buffers=True)")
    groups: Dict[Tuple[torch.device, torch.dtype], Tuple[list, list]] = {}
    pairs = zip(itertools.chain(ema.module.parameters(), ema.module.buffers()), itertools.chain(model.parameters(), model.buffers()))
    for p_ema, p_model in pairs:
        if p_model.device != p_ema.device:
            raise ValueError("the cached EMA update needs the EMA on the model's device")
        e, m = groups.setdefault((p_ema.device, p_ema.dtype), ([], []))
        e.append(p_ema.detach())
        m.append(p_model.detach())
    return list(groups.values())


def _compiled(module: nn.Module):
    """`torch.compile(module)` (a missing compiler toolchain surfaces at the first call: the first step fails)."""
    # dynamic=False: training batches all have one shape; a second shape (another data set through the same
    # UNet.forward in one process) then recompiles for it, where marking it dynamic made inductor fail
    # (InductorError on a symbolic shape, the U-Net benchmark's 3x32x32 case after its 8x8 one).
    return torch.compile(module, dynamic=False)


def _looks_like_images(event_shape: Tuple[int, ...], levels: int) -> bool:
    """(C, H, W) with 1 or 3 channels and H, W divisible by the U-Net's downsampling (and at least 4): images.
    Any other shape (N, D), (N, 1), (N, A, B, C, ...) is a vector, flattened into the MLP."""
    if len(event_shape) != 3:
        return False
    c, h, w = event_shape
    k = 2 ** max(levels - 1, 0)
    return c in (1, 3) and h >= 4 and w >= 4 and h % k == 0 and w % k == 0


def _net_spec(c: TrainConfig, event_shape: Tuple[int, ...], num_classes: int):
    kind = c.net
    if kind == "auto":
        kind = "unet" if _looks_like_images(event_shape, len(c.channel_mults)) else "mlp"
    if kind == "unet":
        if len(event_shape) != 3:
            raise ValueError(f"net='unet' needs image data (C, H, W), got samples of shape {event_shape}")
        return kind, dict(in_channels=event_shape[0], channels=c.channels, channel_mults=tuple(c.channel_mults),
                          num_res_blocks=c.num_res_blocks, attention_levels=tuple(c.attention_levels), emb_dim=c.emb_dim,
                          fourier_scale=c.fourier_scale, num_classes=num_classes, dropout=c.dropout)
    return kind, dict(dim=math.prod(event_shape), hidden=c.hidden, n_blocks=c.n_blocks, emb_dim=c.emb_dim,
                      fourier_scale=c.fourier_scale, num_classes=num_classes, dropout=c.dropout)


def _merge_resumed(saved: TrainConfig, given: TrainConfig) -> TrainConfig:
    """The saved config, with the fields that may change taken from `given`.

    Any other field the caller set to a non-default value that disagrees with
    the saved run is an error (so a resumed run cannot silently change)."""
    default = TrainConfig()
    bad = [f for f in saved.to_dict() if f not in _RESUMABLE and getattr(given, f) != getattr(saved, f) and getattr(given, f) != getattr(default, f)]
    if bad:
        detail = ", ".join(f"{f}: saved {getattr(saved, f)!r}, given {getattr(given, f)!r}" for f in bad)
        raise ValueError(f"cannot resume with a different configuration ({detail})")
    return saved.replace(**{f: getattr(given, f) for f in _RESUMABLE if getattr(given, f) != getattr(default, f) or f == "steps"})


def _atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file in the same folder, fsync, then `os.replace`: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temp_files(folder: Path) -> list:
    """Remove the temporary files (`.checkpoint.pt.tmp<PID>`, `.config.toml.tmp<PID>`) that a process killed
    during a save leaves behind, unless that process is still alive; return the paths removed."""
    removed = []
    for pattern in (f".{CHECKPOINT}.tmp*", ".config.toml.tmp*"):
        for p in Path(folder).glob(pattern):
            suffix = p.name.rsplit(".tmp", 1)[-1]
            pid = int(suffix) if suffix.isdigit() else None
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                continue
            try:
                p.unlink()
                removed.append(p)
            except OSError:  # pragma: no cover
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # not a pid
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _truncate_log(path: Path, step: int) -> None:
    """Drop the records of steps after `step` (logged after the checkpoint a run resumes from), so they are not repeated."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    _atomic_write_text(path, "".join(k + "\n" for k in keep))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a score model as `config` says (continuing the run in `config.out` with `resume`); return the run folder."""
    return Trainer(config, resume=resume, progress=progress).fit()


_LOAD_KEYS = ("model_config", "sde", "ema")
_RESUME_KEYS = ("config", "model_config", "sde", "model", "ema", "optimizer", "step")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def read_checkpoint(path: str | os.PathLike, required: Tuple[str, ...] = _LOAD_KEYS) -> Dict[str, Any]:
    """The dict in a scoresde checkpoint file, read with `torch.load(weights_only=True)` on the CPU.

    Every way a file can fail to be one (random bytes, empty, truncated, another format such as
    an `.npz` renamed `.pt`, a torch file that is not a dict or lacks `required` keys) raises
    `CheckpointError` (a `ValueError`) naming the file; unreadable files raise `OSError` as usual."""
    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the checkpoint file is empty (0 bytes)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # UnpicklingError, EOFError, RuntimeError (zip reader), BadZipFile, ... : all mean "not a checkpoint"
        # Not the exception's text: torch's UnpicklingError runs to many lines and advises weights_only=False.
        raise CheckpointError(f"{p}: not a readable scoresde checkpoint (damaged, truncated or another format; torch.load raised {type(e).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{p}: not a scoresde checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{p}: not a scoresde checkpoint (missing {', '.join(missing)})")
    return ckpt


def load(path: str | os.PathLike, device: Optional[str | torch.device] = None) -> Tuple[ScoreModel | Classifier, Any]:
    """`(model, sde)` from a checkpoint file or a run folder: the EMA weights, in eval mode, on `device` (default cpu).

    A classifier run (`train --classifier`) gives `(classifier, sde)`, `classifier(x, t) -> (B, K)` logits.
    A missing file raises `FileNotFoundError`; a file that is not a readable scoresde checkpoint `CheckpointError` (a `ValueError`)."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r} (expected a run folder holding {CHECKPOINT}, or a checkpoint file)")
    ckpt = read_checkpoint(p, _LOAD_KEYS)
    try:
        mc, sde = ckpt["model_config"], sde_from_config(ckpt["sde"])
        net_cfg = dict(mc["net"])
        net = build_net(net_cfg.pop("kind"), **net_cfg)
        if mc.get("kind") == "classifier":
            model = Classifier(net, sde, sigma_data=mc["sigma_data"], event_shape=mc["event_shape"])
        else:
            model = ScoreModel(net, sde, mc["parameterization"], sigma_data=mc["sigma_data"], event_shape=mc["event_shape"])
        ema = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
        model.load_state_dict(ema)
    except Exception as e:  # KeyError, TypeError, ValueError, RuntimeError (state dict mismatch), AttributeError, ...
        raise CheckpointError(f"{p}: not a scoresde checkpoint or damaged ({type(e).__name__}: {_one_line(e)})") from None
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(dev).eval().requires_grad_(False)
    return model, sde
