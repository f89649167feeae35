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


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    overrides = {k: getattr(args, k) for k in ("data", "sde", "steps", "batch_size", "lr", "out", "device", "seed") if getattr(args, k) is not None}
    if "out" in overrides:
        overrides["out"] = str(overrides["out"])
    if args.config is None and args.data is None:
        raise UserError("--data is required (or give --config FILE.toml that sets data)")
    config = config.replace(**overrides) if hasattr(config, "replace") else _replace(config, overrides)
    run_dir = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"run folder: {run_dir}")
    return 0


def _replace(config, overrides):
    import dataclasses

    return dataclasses.replace(config, **overrides)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from . import load, sample
    from .plotting import save_samples

    sampler = resolve_sampler(args.sampler)
    device = args.device or _default_device()
    model, sde = load(args.ckpt, device=device)
    shape = (args.n,) + tuple(model.event_shape)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        x = sample(sde, model, shape, sampler=sampler, steps=args.steps, generator=gen, device=device, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npz = out.with_suffix(".npz")
    _atomic_npz(npz, x=x.detach().cpu().numpy())
    save_samples(x, out, title=f"{args.sampler}, {args.steps} steps")
    print(f"wrote {out} and {npz} ({args.n} samples of shape {tuple(shape[1:])})")
    return 0


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

    device = args.device or _default_device()
    model, sde = load(args.ckpt, device=device)
    _, test = load_dataset(args.data)
    x = test[: args.n].to(device)
    if tuple(x.shape[1:]) != tuple(model.event_shape):
        raise UserError(f"--data samples have shape {tuple(x.shape[1:])}, the model expects {tuple(model.event_shape)}")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    bpd, nfe = [], 0
    chunks = list(torch.split(x, args.batch_size))
    for chunk in tqdm(chunks, desc="likelihood", unit="batch", disable=args.no_progress or len(chunks) == 1):
        res = log_likelihood(sde, model, chunk, divergence=args.divergence, generator=gen)
        bpd.append(bits_per_dim(res.logp, chunk.shape[1:]))
        nfe += res.nfe
    bpd = torch.cat(bpd).double().cpu()
    mean, se = float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    result = {"bits_per_dim": mean, "stderr": se, "n": len(bpd), "nfe": nfe, "divergence": args.divergence}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"bits/dim = {mean:.4f} ± {se:.4f} (n={len(bpd)}, {nfe} score evaluations, {args.divergence} divergence)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    mod = importlib.import_module(f"benchmarks.{args.which}")
    argv = (["--quick"] if args.quick else []) + (["--out", str(args.out)] if args.out else [])
    if args.device:
        argv += ["--device", args.device]
    return int(mod.main(argv) or 0)


# -- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scoresde",
        description="Score-based generative modelling through SDEs: train, sample with pluggable solvers, compute likelihoods.",
        epilog="Run `scoresde demo` for a tour (a few minutes on a CPU); `scoresde COMMAND --help` for each command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="train a small model on the 2-D ring, sample with several solvers, compare with the exact truth, write a report")
    d.add_argument("--out", default="scoresde-demo", help="output folder (default: ./scoresde-demo)")
    d.add_argument("--quick", action="store_true", help="a smaller, faster run (about a minute)")
    d.add_argument("--digits", action="store_true", help="also train a small U-Net on scikit-learn's 8x8 digits")
    d.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available else cpu)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a score model by denoising score matching")
    t.add_argument("--data", default=None, help=f"{', '.join(TOY_DATA)}, FILE.npz, FILE.npy or IMAGE_DIR")
    t.add_argument("--sde", choices=("vp", "subvp", "ve"), default=None, help="forward SDE (default vp)")
    t.add_argument("--steps", type=_positive_int, default=None, help="optimisation steps")
    t.add_argument("--batch-size", type=_positive_int, default=None, dest="batch_size", help="global batch size")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    t.add_argument("--config", default=None, help="TOML file with TrainConfig fields; flags given here override it")
    t.add_argument("--out", default=None, help="run folder (checkpoints, samples, config)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available else cpu)")
    t.add_argument("--seed", type=int, default=None, help="random seed")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained model; writes a PNG and an .npz")
    s.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    s.add_argument("--sampler", default="dpm_solver", help=f"{', '.join(SAMPLER_NAMES)} or module:Class (default dpm_solver)")
    s.add_argument("--steps", type=_positive_int, default=20, help="time steps (default 20)")
    s.add_argument("--n", type=_positive_int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--out", default="samples.png", help="PNG to write; the samples go to the same name with .npz")
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample)

    lk = sub.add_parser("likelihood", help="bits/dim of data under a trained model, via the probability-flow ODE")
    lk.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    lk.add_argument("--data", required=True, help=f"{', '.join(TOY_DATA)}, FILE.npz, FILE.npy or IMAGE_DIR (its test split)")
    lk.add_argument("--n", type=_positive_int, default=500, help="number of data points (default 500)")
    lk.add_argument("--batch-size", type=_positive_int, default=250, dest="batch_size")
    lk.add_argument("--divergence", choices=("exact", "hutchinson"), default="hutchinson")
    lk.add_argument("--json", action="store_true", help="print one JSON object")
    lk.add_argument("--device", default=None)
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--no-progress", action="store_true")
    lk.set_defaults(func=cmd_likelihood)

    b = sub.add_parser("bench", help="run a benchmark: tables and plots against the exact-score oracle")
    b.add_argument("which", choices=("solvers", "likelihood", "training"))
    b.add_argument("--quick", action="store_true", help="a smoke-sized run (under a minute)")
    b.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    b.add_argument("--device", default=None)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if os.environ.get("SCORESDE_DEBUG"):
            raise
        print(f"scoresde: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
