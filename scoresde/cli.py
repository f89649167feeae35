"""The `scoresde` command line: `demo`, `train`, `sample`, `likelihood`, `bench`.

Errors a user can cause (missing file, bad shape, NaN in data, unknown name)
print one line `scoresde: error: ...` and exit with status 2; nothing already
written is touched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

SAMPLER_NAMES = ("euler_maruyama", "reverse_diffusion", "pc", "langevin", "sde", "ode", "dpm_solver")
TOY_DATA = ("ring", "checkerboard", "moons", "swissroll", "digits")
EXACT_MAX_DIM = 16  # `likelihood --divergence auto`: exact trace up to this data dimension


class UserError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


def resolve_sampler(spec: str):
    """A sampler name from the table in API.md, or `module:Class` for a user's own sampler (instantiated with no arguments)."""
    if ":" not in spec:
        if spec not in SAMPLER_NAMES:
            raise UserError(f"unknown sampler {spec!r}; choose one of {', '.join(SAMPLER_NAMES)} or give module:Class")
        return spec
    mod_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"cannot import sampler {spec!r}: {e}") from None
    return obj() if isinstance(obj, type) else obj


# -- subcommands ----------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(out=Path(args.out), quick=args.quick, digits=args.digits, device=args.device, seed=args.seed)
    print(f"report written to {report}")
    return 0


TRAIN_FLAGS = ("data", "sde", "steps", "batch_size", "lr", "out", "device", "seed", "net", "parameterization", "ema_decay", "ckpt_every")
RUN_FILES = ("checkpoint.pt", "log.jsonl", "config.toml")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import CHECKPOINT, Trainer, TrainConfig, default_out

    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other (continue the run, or start it over)")
    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    if "out" in overrides:
        overrides["out"] = str(overrides["out"])
    if args.config is None and args.data is None:
        raise UserError("--data is required (or give --config FILE.toml that sets data)")
    config = config.replace(**overrides)
    if config.device != "auto":
        _check_device(config.device)
    out = Path(config.out) if config.out else default_out(config)
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not args.resume:
        if not args.force:
            raise UserError(f"{out} already holds a run ({', '.join(existing)}); continue it with --resume, "
                            f"start it over with --force, or give another --out")
    resume = args.resume
    if resume and not (out / CHECKPOINT).is_file():
        print(f"scoresde: note: no checkpoint in {out} to resume; starting a new run", file=sys.stderr)
        resume = False
    elif resume and args.steps is None and not _toml_sets(args.config, "steps"):
        from .train import read_checkpoint

        # --resume without --steps continues to the saved run's own target, not the default
        saved = read_checkpoint(out / CHECKPOINT, ("config",))["config"]
        if isinstance(saved, dict) and isinstance(saved.get("steps"), int) and saved["steps"] > 0:
            config = config.replace(steps=saved["steps"])
    trainer = Trainer(config, resume=resume, progress=not args.no_progress)  # checks data, device, config first
    if existing and not args.resume and trainer.rank == 0:  # --force: the old run goes only once the new one can start
        for f in [CHECKPOINT, "log.jsonl"] + [p.name for p in out.glob("samples_*.png")]:
            (out / f).unlink(missing_ok=True)
    if trainer.step >= trainer.config.steps:
        trainer.fit()  # trains nothing; releases a process group
        if trainer.rank != 0:
            return 0
        print(f"nothing to train: {trainer.out} is already at step {trainer.step} and --steps is {trainer.config.steps} "
              f"(give a larger --steps to continue); no evaluation run")
        return 0
    run_dir = trainer.fit()
    print(f"run folder: {run_dir}")
    return 0


def _toml_sets(path: Optional[str], field: str) -> bool:
    if not path:
        return False
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    d = tomllib.loads(Path(path).read_text())  # already parsed once by TrainConfig.from_toml: valid here
    return field in (d["train"] if set(d) == {"train"} and isinstance(d["train"], dict) else d)


def _check_device(name: str) -> str:
    """`name` if torch accepts it as a device that exists here, else a UserError (the trainer's own check)."""
    from .train import _resolve_device

    try:
        _resolve_device(name)
    except ValueError as e:
        raise UserError(str(e).replace("device=", "--device ", 1)) from None
    return name


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from . import load, sample
    from .plotting import save_samples

    sampler = resolve_sampler(args.sampler)
    device = _check_device(args.device or _default_device())
    model, sde = load(args.ckpt, device=device)
    shape = (args.n,) + tuple(model.event_shape)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        x = sample(sde, model, shape, sampler=sampler, steps=args.steps, generator=gen, device=device, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npz = out.with_suffix(".npz")
    _atomic_npz(npz, x=x.detach().cpu().numpy())
    save_samples(x, out, title=f"{args.sampler}, {args.steps} steps, {args.n} samples of shape {tuple(shape[1:])}",
                 reference=_training_data(args.ckpt, x.shape[1:], len(x)))
    print(f"wrote {out} and {npz} ({args.n} samples of shape {tuple(shape[1:])})")
    return 0


def _training_data(ckpt: str, event_shape, n: int):
    """The test split of the data a checkpoint was trained on (drawn in grey behind its samples), or None if it cannot be had."""
    from .plotting import is_image_event
    from .train import CHECKPOINT, read_checkpoint

    if is_image_event(tuple(event_shape)):
        return None
    try:
        from .data import load_dataset

        p = Path(ckpt)
        data = read_checkpoint(p / CHECKPOINT if p.is_dir() else p, ("config",))["config"]["data"]
        test = load_dataset(data)[1]
        return test[:n] if tuple(test.shape[1:]) == tuple(event_shape) else None
    except Exception:  # a moved or deleted data file only costs the grey backdrop
        return None


def _atomic_npz(path: Path, **arrays) -> None:
    import os

    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def cmd_likelihood(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from . import bits_per_dim, load, log_likelihood
    from .data import load_dataset

    device = _check_device(args.device or _default_device())
    model, sde = load(args.ckpt, device=device)
    _, test = load_dataset(args.data)
    divergence = args.divergence
    if divergence == "auto":  # exact costs D score-Jacobian rows; for small D that is cheaper than noisy probes
        divergence = "exact" if math.prod(model.event_shape) <= EXACT_MAX_DIM else "hutchinson"
    x = test[: args.n].to(device)
    if tuple(x.shape[1:]) != tuple(model.event_shape):
        raise UserError(f"--data samples have shape {tuple(x.shape[1:])}, the model expects {tuple(model.event_shape)}")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    bpd, nfe = [], 0
    chunks = list(torch.split(x, args.batch_size))
    for chunk in tqdm(chunks, desc="likelihood", unit="batch", disable=args.no_progress or len(chunks) == 1):
        res = log_likelihood(sde, model, chunk, divergence=divergence, generator=gen)
        bpd.append(bits_per_dim(res.logp, chunk.shape[1:]))
        nfe += res.nfe
    bpd = torch.cat(bpd).double().cpu()
    mean, se = float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    result = {"bits_per_dim": mean, "stderr": se, "n": len(bpd), "nfe": nfe, "divergence": divergence}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bits/dim = {mean:.4f} ± {se:.4f} (n={len(bpd)}, {nfe} score evaluations, {divergence} divergence)")
    return 0


def _benchmark_module(which: str):
    """`benchmarks.<which>`: the reference scripts live in a source checkout (they are not installed); found from
    the current folder or beside the package of an editable install."""
    here = Path(__file__).resolve().parents[1]
    for root in (Path.cwd(), here):
        if (root / "benchmarks" / f"{which}.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module(f"benchmarks.{which}")
    raise UserError(f"bench {which}: the reference benchmarks are scripts in a scoresde source checkout "
                    "(benchmarks/), not part of the installed package; run this from the checkout's root")


def cmd_bench(args: argparse.Namespace) -> int:
    mod = _benchmark_module(args.which)
    argv = (["--quick"] if args.quick else []) + (["--out", str(args.out)] if args.out else [])
    if args.device:
        argv += ["--device", args.device]
    return int(mod.main(argv) or 0)


# -- parser -------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' after every option that has a default worth showing (not None, not a False switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "%(default)" in (action.help or "") or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .config import NET_NAMES, SDE_NAMES, TrainConfig

    D = TrainConfig()
    p = argparse.ArgumentParser(
        prog="scoresde",
        description="Score-based generative modelling through SDEs: train, sample with pluggable solvers, compute likelihoods.",
        epilog="Run `scoresde demo` for a tour (a few minutes on a CPU); `scoresde COMMAND --help` for each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def parser(name, **kw):
        return sub.add_parser(name, formatter_class=_Formatter, **kw)

    d = parser("demo", help="train a small model on the 2-D ring, sample with several solvers, compare with the exact truth, write a report")
    d.add_argument("--out", default="scoresde-demo", help="output folder")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (about a minute)")
    d.add_argument("--digits", action="store_true", help="also train a small MLP on scikit-learn's 8x8 digits (on 2 CPU cores about 35 s more with --quick, about 70 s without)")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available else cpu)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.set_defaults(func=cmd_demo)

    # train: flags default to None so that a --config file's values stand unless a flag is given; the help shows TrainConfig's defaults.
    t = parser("train", help="train a score model by denoising score matching",
               description="Train a score model. Flags override --config FILE.toml, which overrides the defaults shown; "
                           "every TrainConfig field can be set in the TOML file.")
    t.add_argument("--data", default=None, help=f"{', '.join(TOY_DATA)}, FILE.npz, FILE.npy or IMAGE_DIR (required unless --config sets it)")
    t.add_argument("--sde", choices=SDE_NAMES, default=None, help=f"forward SDE (default: {D.sde})")
    t.add_argument("--steps", type=_positive_int, default=None, help=f"optimisation steps (default: {D.steps})")
    t.add_argument("--batch-size", type=_positive_int, default=None, dest="batch_size", help=f"global batch size (default: {D.batch_size})")
    t.add_argument("--lr", type=_positive_float, default=None, help=f"learning rate (default: {D.lr})")
    t.add_argument("--net", choices=NET_NAMES, default=None, help=f"network; auto is the U-Net for (C, H, W) images, the MLP otherwise (default: {D.net})")
    t.add_argument("--parameterization", choices=_parameterizations(), default=None, help=f"what the network outputs (default: {D.parameterization})")
    t.add_argument("--ema-decay", type=_unit_float, default=None, dest="ema_decay",
                   help=f"EMA decay, ramped up as min(decay, (1+n)/(10+n)) over the first updates n (default: {D.ema_decay})")
    t.add_argument("--ckpt-every", type=_positive_int, default=None, dest="ckpt_every", help=f"checkpoint interval in steps (default: {D.ckpt_every})")
    t.add_argument("--config", default=None, help="TOML file with TrainConfig fields; flags given here override it")
    t.add_argument("--out", default=None, help="run folder: checkpoint, config, log, sample pictures (default: runs/<data>-<sde>)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--force", action="store_true", help="start over in a run folder that already holds a run (its checkpoint and log are deleted)")
    t.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    t.add_argument("--seed", type=int, default=None, help=f"random seed (default: {D.seed})")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = parser("sample", help="draw samples from a trained model; writes a PNG and an .npz")
    s.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    s.add_argument("--sampler", default="dpm_solver", help=f"{', '.join(SAMPLER_NAMES)} or module:Class")
    s.add_argument("--steps", type=_positive_int, default=20, help="time steps")
    s.add_argument("--n", "--num-samples", type=_positive_int, default=1000, dest="n", help="number of samples")
    s.add_argument("--out", default="samples.png", help="PNG to write; the samples go to the same name with .npz")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    lk = parser("likelihood", help="bits/dim of data under a trained model, via the probability-flow ODE")
    lk.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    lk.add_argument("--data", required=True, help=f"{', '.join(TOY_DATA)}, FILE.npz, FILE.npy or IMAGE_DIR (its test split)")
    lk.add_argument("--n", "--num-samples", type=_positive_int, default=500, dest="n", help="number of data points")
    lk.add_argument("--batch-size", type=_positive_int, default=250, dest="batch_size", help="points per ODE solve")
    lk.add_argument("--divergence", choices=("auto", "exact", "hutchinson"), default="auto",
                    help=f"trace of the score Jacobian; auto is exact up to {EXACT_MAX_DIM} dimensions, Hutchinson's estimator above")
    lk.add_argument("--json", action="store_true", help="print one JSON object")
    lk.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    lk.add_argument("--seed", type=int, default=0, help="random seed (Hutchinson probes)")
    lk.add_argument("--no-progress", action="store_true", help="no progress bar")
    lk.set_defaults(func=cmd_likelihood)

    b = parser("bench", help="run a benchmark: tables and plots against the exact-score oracle")
    b.add_argument("which", choices=("solvers", "likelihood", "training"))
    b.add_argument("--quick", action="store_true", help="a smoke-sized run (under a minute)")
    b.add_argument("--out", default=None, help="output folder (default: benchmarks/results)")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    b.set_defaults(func=cmd_bench)
    return p


def _parameterizations():
    from .model import PARAMETERIZATIONS

    return tuple(PARAMETERIZATIONS)


def _unit_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s!r}") from None
    if not (0 <= v < 1):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s}")
    return v


def _user_errors() -> tuple:
    """Exception types that mean 'what the user asked for cannot be done' (one line, exit 2), not a bug here."""
    from .data import MissingDependency
    from .train import NonFiniteLossError

    return (UserError, ValueError, TypeError, OSError, NonFiniteLossError, MissingDependency)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
        text += f": {e.filename}"
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as e:
        if e.rank == 0:  # the other DDP ranks stay quiet: rank 0 says where the checkpoint is
            print(f"scoresde: {_one_line(e)}", file=sys.stderr)
        return 128 + int(e.signum)
    except _user_errors() as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
