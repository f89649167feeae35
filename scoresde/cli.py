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
    import os

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    # under torchrun each rank takes its own GPU
    return f"cuda:{os.environ['LOCAL_RANK']}" if "LOCAL_RANK" in os.environ else "cuda"


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


TRAIN_FLAGS = ("data", "sde", "steps", "batch_size", "lr", "out", "device", "seed", "net", "parameterization", "ema_decay", "ckpt_every",
               "class_conditional", "label_dropout", "classifier", "compile", "channels_last")
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
    if trainer.rank == 0 and trainer.last_eval is not None and args.no_progress:  # with a progress bar it was written already
        from .train import classifier_summary

        print(classifier_summary(trainer.last_eval))
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
    from .model import Classifier

    sampler = resolve_sampler(args.sampler)
    device = _check_device(args.device or _default_device())
    _check_sample_flags(args)
    model, sde = load(args.ckpt, device=device)
    if isinstance(model, Classifier):
        raise UserError(f"--ckpt {args.ckpt} is a classifier run (train --classifier); give a score model as --ckpt "
                        f"and this run as --classifier")
    event = tuple(model.event_shape)
    clf = _load_classifier(args.classifier, model, sde, device) if args.classifier else None
    labels = _parse_labels(args.label, model, clf, args)
    condition, picture = _read_condition(args, event, device)
    score_fns, guidance_note = _guided_scores(model, clf, labels, args.guidance)
    out = Path(args.out)
    npz = out.with_suffix(".npz")
    pngs = _picture_paths(labels, out, event)
    inputs = [a for a in (args.inpaint, args.mask, args.observe) if a]
    for p in [npz] + pngs:  # the outputs must not overwrite the inputs (nothing already written is lost)
        if any(p.resolve() == Path(a).resolve() for a in inputs):
            raise UserError(f"--out {args.out} would overwrite the input {p}; give another --out")

    # Fixed blocks of --batch-size, block b seeded from (seed, b) and solved by rank b mod N under torchrun: the
    # same samples for the same seed whatever the number of processes (see scoresde.distributed).
    from .distributed import Ranks, block_generator, blocks

    cuts = blocks(args.n, args.batch_size)
    groups, stats_all = [], []
    with Ranks(device) as ranks:
        for label, score_fn in score_fns:
            # One call per label, each from the same seed: label K's samples do not depend on the other labels asked for.
            mine = []
            for b in ranks.mine(len(cuts)):
                stats: dict = {}
                extra = {} if condition is None else dict(condition=condition, conditioning=args.conditioning)
                with torch.no_grad():
                    x = sample(sde, score_fn, (cuts[b].stop - cuts[b].start,) + event, sampler=sampler, steps=args.steps,
                               generator=block_generator(args.seed, b, device), device=device,
                               progress=not args.no_progress and len(cuts) == 1, stats=stats, **extra)
                mine.append((x.detach().cpu(), stats))
            done = ranks.gather(mine, len(cuts))
            if done is not None:
                groups.append((label, torch.cat([x for x, _ in done])))
                stats_all.append(dict(done[0][1], nfe=sum(st.get("nfe", 0) for _, st in done), blocks=len(done)))
        if not ranks.is_main:
            return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    x_all = torch.cat([x for _, x in groups]).detach().cpu().numpy()
    arrays = dict(x=x_all)
    if labels is not None:
        import numpy as np

        arrays["y"] = np.repeat(np.asarray(labels, dtype=np.int64), args.n)
    if picture is not None:
        arrays.update({k: v.detach().cpu().numpy() for k, v in picture.items()})
    _atomic_npz(npz, **arrays)
    title = f"{args.sampler}, {args.steps} steps, {args.n} samples of shape {event}" + (f", {guidance_note}" if guidance_note else "")
    _write_pictures(groups, pngs, title, picture, args.ckpt, event)
    what = f"{args.n} samples of shape {event}" + (f" for each of {len(groups)} labels" if len(groups) > 1 else "")
    print(f"wrote {', '.join(map(str, pngs))} and {npz} ({what})")
    if guidance_note:
        print(f"guidance: {guidance_note}")
    if condition is not None:
        for (label, _), st in zip(groups, stats_all):
            print(_conditioning_line(st, label, args.n))
    return 0


def _check_sample_flags(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, refused before a model is loaded."""
    if args.guidance is not None and not args.label:
        raise UserError("--guidance needs --label (the class to guide towards)")
    if args.classifier and not args.label:
        raise UserError("--classifier needs --label (the class to guide towards)")
    if (args.inpaint is None) != (args.mask is None):
        raise UserError("--inpaint IMAGE and --mask MASK go together (the mask says which entries of IMAGE are known)")
    if args.inpaint is not None and args.observe is not None:
        raise UserError("--inpaint and --observe exclude each other (an inpainting is one kind of observation)")
    if args.conditioning is not None and args.inpaint is None and args.observe is None:
        raise UserError("--conditioning needs an observation: --inpaint IMAGE --mask MASK, or --observe FILE.npz")


def _load_classifier(path: str, model, sde, device):
    from . import load
    from .config import sde_config
    from .model import Classifier

    clf, clf_sde = load(path, device=device)
    if not isinstance(clf, Classifier):
        raise UserError(f"--classifier {path} is a score model, not a classifier run (train one with scoresde train --classifier)")
    if sde_config(clf_sde) != sde_config(sde):
        raise UserError(f"--classifier {path} was trained on {clf_sde!r} but --ckpt's model on {sde!r}; "
                        f"p_t(y | x) depends on the SDE: train the classifier with the same --sde and parameters")
    if clf.event_shape is not None and tuple(clf.event_shape) != tuple(model.event_shape):
        raise UserError(f"--classifier {path} classifies samples of shape {tuple(clf.event_shape)} but the model draws {tuple(model.event_shape)}")
    return clf


def _parse_labels(given, model, clf, args) -> Optional[list]:
    """`--label` values (ints, or `all`) as class indices in the order given, without repeats, checked against the classes known."""
    if not given:
        return None
    source = f"--classifier {args.classifier}" if clf is not None else f"--ckpt {args.ckpt}"
    k = clf.num_classes if clf is not None else model.num_classes
    if k == 0:
        raise UserError(f"--label: {args.ckpt} is an unconditional model (trained without --class-conditional); "
                        f"train one with --class-conditional, or guide this one with --classifier RUN")
    labels = []
    for v in given:
        if v.strip().lower() == "all":
            vals = list(range(k))
        else:
            try:
                vals = [int(v)]
            except ValueError:
                raise UserError(f"--label must be a class index or 'all', got {v!r}") from None
        for y in vals:
            if not 0 <= y < k:
                raise UserError(f"--label {y} is out of range: {source} has {k} classes (0..{k - 1})")
            if y not in labels:
                labels.append(y)
    return labels


def _guided_scores(model, clf, labels, scale):
    """`[(label, score_fn), ...]` and a note saying which guidance at which scale (None without labels).

    Default scale: the one that samples the learned conditional `p(x | y)` itself, undistorted — 0 for
    classifier-free guidance (the conditional score, one network call per step) and 1 for classifier guidance
    (Bayes' rule). Larger values sharpen towards the class, at the cost of diversity."""
    from . import guidance

    if labels is None:
        return [(None, model)], None
    if clf is not None:
        w = 1.0 if scale is None else scale
        note = f"classifier guidance, scale {w:g}" + (" (Bayes' rule)" if w == 1 else "")
        return [(y, guidance.classifier(model, clf, y, w)) for y in labels], note
    w = 0.0 if scale is None else scale
    note = f"classifier-free, scale {w:g}" + (" (the conditional score)" if w == 0 else "")
    return [(y, guidance.classifier_free(model, y, w)) for y in labels], note


def _conditioning_line(stats: dict, label, n: int) -> str:
    """The method the sampler used (and SMC's effective sample sizes over the steps)."""
    head = (f"label {label}: " if label is not None else "") + f"conditioning: {stats.get('conditioning', '?')}"
    ess = stats.get("ess")
    if ess is not None:
        import torch

        e = torch.as_tensor(ess, dtype=torch.float64).flatten()
        if e.numel():
            head += f"; ESS min {float(e.min()):.1f}, mean {float(e.mean()):.1f}, final {float(e[-1]):.1f} (of {n} particles)"
    return head


def _read_condition(args, event, device):
    """The observation `--inpaint/--mask` or `--observe` describe (or None), and what the picture shows of it."""
    import torch

    from .observation import Inpainting, Observation

    if args.inpaint is not None:
        known = _read_sample(args.inpaint, event, "--inpaint")
        mask = _read_mask(args.mask, event)
        return Inpainting(known.to(device), mask.to(device)), {"known": known, "mask": mask}
    if args.observe is not None:
        import numpy as np

        p = Path(args.observe)
        if not p.is_file():
            raise UserError(f"--observe {args.observe}: no such file")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.keys()}
        except Exception as e:
            raise UserError(f"--observe {args.observe}: not a readable .npz ({type(e).__name__}: {_one_line(e)})") from None
        missing = [k for k in ("A", "y") if k not in arrays]
        if missing:
            raise UserError(f"--observe {args.observe}: needs arrays A (M, D) and y (M,), and optionally noise_std; "
                            f"missing {', '.join(missing)} (found {', '.join(arrays) or 'none'})")
        for k in ("A", "y"):
            if not np.issubdtype(arrays[k].dtype, np.number):
                raise UserError(f"--observe {args.observe}: {k} must be numeric, got dtype {arrays[k].dtype}")
        noise = arrays.get("noise_std", np.zeros(()))
        if noise.size != 1:
            raise UserError(f"--observe {args.observe}: noise_std must be one number, got shape {noise.shape}")
        A = torch.as_tensor(arrays["A"], dtype=torch.float32, device=device)
        y = torch.as_tensor(arrays["y"], dtype=torch.float32, device=device)
        if A.ndim == 2 and A.shape[1] != math.prod(event):
            raise UserError(f"--observe {args.observe}: A has {A.shape[1]} columns but a sample has {math.prod(event)} entries (shape {event})")
        try:
            obs = Observation(A, y, float(noise.reshape(())))
        except (TypeError, ValueError) as e:
            raise UserError(f"--observe {args.observe}: {_one_line(e)}") from None
        return obs, {"A": A.cpu(), "y_obs": y.cpu()}
    return None, None


def _read_array(path: str, flag: str):
    """An `.npy` array or an image file (PNG, ...) as a numpy array (images: `(H, W)` or `(H, W, 3)` uint8)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag} {path}: no such file")
    if p.suffix.lower() == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except Exception as e:
            raise UserError(f"{flag} {path}: not a readable .npy array ({type(e).__name__}: {_one_line(e)})") from None
    try:
        from PIL import Image
    except ImportError:
        raise UserError(f"{flag} {path}: reading images needs Pillow (pip install pillow), or give a .npy array") from None
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot read the image ({_one_line(e)})") from None


def _read_sample(path: str, event, flag: str):
    """One sample shaped `event` from an image (8-bit values mapped to [-1, 1]) or an `.npy` (floats as they are,
    in the model's data scale; integers as 8-bit values)."""
    import numpy as np
    import torch

    a = _read_array(path, flag)
    is_image = Path(path).suffix.lower() != ".npy"
    if is_image:
        a = _image_to_event(a, event, flag, path)
    if a.ndim == len(event) + 1 and a.shape[0] == 1:
        a = a[0]
    if tuple(a.shape) != tuple(event):
        raise UserError(f"{flag} {path}: has shape {tuple(a.shape)}, the model's samples have shape {tuple(event)}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise UserError(f"{flag} {path}: expected numbers, got dtype {a.dtype}")
    x = torch.as_tensor(a.astype(np.float32) * (2 / 255) - 1 if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32))
    if not bool(torch.isfinite(x).all()):
        raise UserError(f"{flag} {path}: holds NaN or inf (put any finite value where the mask is False)")
    return x


def _image_to_event(a, event, flag: str, path: str):
    """An `(H, W)` / `(H, W, 3)` image array as `(C, H, W)` for `event = (C, H, W)` (grey <-> RGB converted)."""
    import numpy as np

    if len(event) != 3:
        raise UserError(f"{flag} {path}: an image, but the model's samples have shape {tuple(event)}, not (C, H, W); give a .npy")
    c = event[0]
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[-1] != c:
        a = a.mean(-1, keepdims=True).round().astype(np.uint8) if c == 1 else np.repeat(a[..., :1], c, -1)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _read_mask(path: str, event):
    """A mask shaped like one sample (True: observed, kept); an image is read as grey, white (>= 128) observed, and
    an `(H, W)` mask covers every channel."""
    import numpy as np
    import torch

    a = _read_array(path, "--mask")
    if Path(path).suffix.lower() != ".npy":
        a = (a.mean(-1) if a.ndim == 3 else a) >= 128
    elif a.dtype != bool:
        if not np.issubdtype(a.dtype, np.number) or not np.isin(a, (0, 1)).all():
            raise UserError(f"--mask {path}: must be bool or 0/1 values (1: observed), got dtype {a.dtype}")
        a = a.astype(bool)
    if len(event) == 3 and a.shape == tuple(event[1:]):
        a = np.broadcast_to(a[None], tuple(event))
    if a.ndim == len(event) + 1 and a.shape[0] == 1:
        a = a[0]
    if tuple(a.shape) != tuple(event):
        raise UserError(f"--mask {path}: has shape {tuple(a.shape)}, the model's samples have shape {tuple(event)}")
    if not a.any():
        raise UserError(f"--mask {path}: observes nothing (no True/white entry); True or white marks the known entries")
    return torch.as_tensor(np.array(a, dtype=bool))  # a copy: broadcast views are read-only


def _picture_paths(labels, out: Path, event) -> list:
    """Where the PNGs go: `out`, or with labels (other than 2-D samples, drawn as panels of one picture)
    one `<out>_label<K>.png` per label."""
    if labels is None or tuple(event) == (2,):
        return [out]
    return [out.with_name(f"{out.stem}_label{k}{out.suffix}") for k in labels]


def _write_pictures(groups, paths: list, title: str, picture, ckpt: str, event) -> None:
    """The PNGs of a sampling run: 2-D samples in one picture (a panel per label); anything else one picture per
    label, for inpainting the input, the mask and the completions."""
    from .plotting import inpainting_figure, is_image_event, save_samples, scatter_panels

    n = groups[0][1].shape[0]
    reference = _training_data(ckpt, event, n)
    if tuple(event) == (2,) and (groups[0][0] is not None or picture is not None):
        panels = {(f"label {k}" if k is not None else "samples"): x for k, x in groups}
        scatter_panels(panels, paths[0], reference=reference, ncols=min(4, len(panels)), title=title)
        return
    for (k, x), p in zip(groups, paths):
        t = title + (f", label {k}" if k is not None else "")
        if picture is not None and "mask" in picture and is_image_event(tuple(event)):
            inpainting_figure(picture["known"], picture["mask"], x, p, title=t)
        else:
            save_samples(x, p, title=t, reference=reference)


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


def _data_range(s: str) -> tuple:
    try:
        lo, hi = (float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {s!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise argparse.ArgumentTypeError(f"expected LO,HI with LO < HI, got {s!r}")
    return lo, hi


def _discretisation(args: argparse.Namespace, data, n: int):
    """`(x, levels, data_range, dequantization)` for `likelihood`: the data's grid is never guessed.

    Quantised data (digits, 8-bit arrays and images) has its levels and range from the loader: the integer codes of
    the test split go to `discrete_bits_per_dim`, and a contradicting `--levels`/`--data-range` is an error. Other
    data is continuous unless `--levels` says otherwise (then it must lie on that grid)."""
    import torch

    deq = args.dequantization
    if data.step is not None and data.test_raw is not None:
        levels, rng = data.levels, (-1.0, 1.0)
        if args.levels is not None and args.levels != levels:
            raise UserError(f"--levels {args.levels}: --data {args.data} has {levels} levels per value (the loader "
                            f"quantises it so); leave --levels out")
        if args.data_range is not None and tuple(args.data_range) != rng:
            raise UserError(f"--data-range {args.data_range[0]:g},{args.data_range[1]:g}: --data {args.data} is mapped to "
                            f"[-1, 1] by the loader; leave --data-range out")
        if deq == "none":  # the density of the loader's fixed-seed dequantised test split, on the continuous scale
            return data.test[:n], None, None, "none"
        codes = data.test_codes(n)
        return codes, levels, rng, "uniform" if deq == "auto" else deq
    x = data.test[:n]
    if args.levels is None:
        if deq not in ("auto", "none"):
            raise UserError(f"--dequantization {deq} needs the data's discretisation: give --levels L "
                            "(and --data-range LO,HI, default -1,1)")
        if args.data_range is not None:
            raise UserError("--data-range applies with --levels (the data's discretisation)")
        values = torch.unique(data.test)  # the whole split: a few points always look discrete
        if len(values) <= 256 and len(values) * 4 <= data.test.numel():
            print(f"note: --data takes only {len(values)} distinct values in [{float(values[0]):g}, {float(values[-1]):g}]; "
                  "if it is discrete, give --levels L --data-range LO,HI for bits/dim on the discrete scale "
                  "(this is the density of the values as given)", file=sys.stderr)
        return x, None, None, "none"
    if deq == "none":
        raise UserError("--levels with --dequantization none: the discrete scale needs uniform or truncated-normal")
    rng = tuple(args.data_range) if args.data_range is not None else (-1.0, 1.0)
    from .dequantization import discrete_codes

    try:
        discrete_codes(x, args.levels, rng)
    except ValueError as e:
        raise UserError(f"--levels {args.levels} --data-range {rng[0]:g},{rng[1]:g}: {e}") from None
    return x, args.levels, rng, "uniform" if deq == "auto" else deq


def cmd_likelihood(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from . import bits_per_dim, discrete_bits_per_dim, load, log_likelihood
    from .data import load_data

    device = _check_device(args.device or _default_device())
    model, sde = load(args.ckpt, device=device)
    from .model import Classifier

    if isinstance(model, Classifier):
        raise UserError(f"--ckpt {args.ckpt} is a classifier run (train --classifier): it has no likelihood; give a score model")
    data = load_data(args.data)
    divergence = args.divergence
    if divergence == "auto":  # exact costs D score-Jacobian rows; for small D that is cheaper than noisy probes
        divergence = "exact" if math.prod(model.event_shape) <= EXACT_MAX_DIM else "hutchinson"
    x, levels, data_range, deq = _discretisation(args, data, args.n)
    x = x.to(device)
    if tuple(x.shape[1:]) != tuple(model.event_shape):
        raise UserError(f"--data samples have shape {tuple(x.shape[1:])}, the model expects {tuple(model.event_shape)}")
    if deq == "none" and args.dequant_samples != 1:
        raise UserError("--dequant-samples applies to discrete data (uniform or truncated-normal dequantisation)")
    from .distributed import Ranks, block_generator, blocks

    cuts = blocks(len(x), args.batch_size)
    from .dequantization import TN_DEFAULT_A, truncated_normal_time

    # the ODE's start; for the truncated normal the τ of its default half-width a = 3 (i-DODE's regime), on any grid
    tau = None if deq == "none" else (truncated_normal_time(sde, levels, data_range, TN_DEFAULT_A)
                                      if deq == "truncated-normal" else sde.default_likelihood_eps)
    with Ranks(device) as ranks:
        mine = []
        todo = ranks.mine(len(cuts))
        for b in tqdm(todo, desc="likelihood", unit="batch", disable=args.no_progress or len(todo) <= 1):
            # block b's noise and probes from (seed, b): any number of torchrun processes gives the same numbers
            g = block_generator(args.seed, b, device)
            if deq == "none":
                res = log_likelihood(sde, model, x[cuts[b]], divergence=divergence, generator=g)
                mine.append((bits_per_dim(res.logp, x.shape[1:]).cpu(), res.nfe))
            else:  # -log2 P(k)/D on the discrete scale; the block's K draws of every point in one solve
                res = discrete_bits_per_dim(sde, model, x[cuts[b]], levels=levels, data_range=data_range, dequantization=deq,
                                            samples=args.dequant_samples, divergence=divergence, eps=tau, generator=g)
                mine.append((res.bpd.cpu(), res.nfe))
        done = ranks.gather(mine, len(cuts))
        if done is None:
            return 0
    bpd, nfe = [v for v, _ in done], sum(k for _, k in done)
    bpd = torch.cat(bpd).double().cpu()
    mean, se = float(bpd.mean()), float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    result = {"bits_per_dim": mean, "stderr": se, "n": len(bpd), "nfe": nfe, "divergence": divergence,
              "dequantization": deq, "levels": levels, "data_range": list(data_range) if data_range else None,
              "dequant_samples": args.dequant_samples if deq != "none" else None, "eps": tau}
    if args.json:
        print(json.dumps(result))
    else:
        scale = ("continuous scale: the density of the data as given" if deq == "none" else
                 f"discrete scale: {levels} levels over [{data_range[0]:g}, {data_range[1]:g}], {deq} dequantisation, "
                 f"K={args.dequant_samples}, τ={tau:.3g}")
        print(f"bits/dim = {mean:.4f} ± {se:.4f} (n={len(bpd)}, {nfe} score evaluations, {divergence} divergence; {scale})")
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


USER_BENCH_FLAGS = ("data", "nfe", "n", "seed")  # bench solvers --ckpt: passed on as text; benchmarks/user_model.py checks them


def cmd_bench(args: argparse.Namespace) -> int:
    given = [f for f in USER_BENCH_FLAGS if getattr(args, f) is not None]
    if args.ckpt is None and given:
        raise UserError(f"bench: --{given[0]} applies to the user-model benchmark: give --ckpt RUN (bench solvers --ckpt RUN --data DATA)")
    if args.ckpt is not None and args.which != "solvers":
        raise UserError(f"bench {args.which}: --ckpt applies to bench solvers only (every sampler on your model)")
    mod = _benchmark_module("user_model" if args.ckpt is not None else args.which)
    argv = (["--quick"] if args.quick else []) + (["--out", str(args.out)] if args.out else [])
    if args.device:
        argv += ["--device", args.device]
    if args.ckpt is not None:
        argv += ["--ckpt", args.ckpt] + [a for f in given for a in (f"--{f}", str(getattr(args, f)))]
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
    t.add_argument("--class-conditional", action="store_const", const=True, default=None, dest="class_conditional",
                   help="condition the score model on the data's labels (toy sets' modes/parts, digits, an .npz's y), "
                        "with label dropout to a null label for classifier-free guidance (sample --label K)")
    t.add_argument("--label-dropout", type=_unit_float, default=None, dest="label_dropout",
                   help=f"with --class-conditional: probability of the null label in training (default: {D.label_dropout})")
    t.add_argument("--classifier", action="store_const", const=True, default=None,
                   help="train a time-conditioned classifier p_t(y | x) on noised data instead (for sample --classifier); "
                        "the run reports its test accuracy by noise level")
    t.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the network's forward (the first steps compile: seconds to minutes; "
                        "measured in the README)")
    t.add_argument("--channels-last", action="store_const", const=True, default=None, dest="channels_last",
                   help="U-Net: channels-last (NHWC) weights and batches (off by default: slower on the CPU, see the README)")
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
    s.add_argument("--n", "--num-samples", type=_positive_int, default=1000, dest="n",
                   help="number of samples (under torchrun write --num-samples: torchrun reads --n as its own --nnodes)")
    s.add_argument("--batch-size", type=_positive_int, default=1000, dest="batch_size",
                   help="samples per solve (block b is seeded from (--seed, b): the same samples for any number of "
                        "torchrun processes; SMC conditioning treats each block as its particles)")
    s.add_argument("--out", default="samples.png", help="PNG to write; the samples go to the same name with .npz")
    s.add_argument("--label", action="append", default=None, metavar="K",
                   help="class to sample (repeat for several, or 'all'); needs a --class-conditional checkpoint or "
                        "--classifier; --n samples per label, all from the same seed; images: one grid per label (<out>_label<K>.png)")
    s.add_argument("--guidance", type=_finite_float, default=None, metavar="W",
                   help="guidance scale: classifier-free s(x|y) + W (s(x|y) - s(x)), or with --classifier s(x) + W ∇log p_t(y|x); "
                        "default: 0 classifier-free, 1 with --classifier, the values that sample the learned p(x | y) "
                        "itself; larger W sharpens towards the class and loses diversity")
    s.add_argument("--classifier", default=None, metavar="RUN",
                   help="classifier guidance with a run of train --classifier (same data and SDE); works with an unconditional --ckpt")
    s.add_argument("--inpaint", default=None, metavar="IMAGE",
                   help="complete IMAGE (PNG, or .npy in the model's data scale) where --mask is False; "
                        "the PNG shows the input, the mask and the completions")
    s.add_argument("--mask", default=None, metavar="MASK",
                   help="PNG (white = known) or .npy (True/1 = known), shaped like one sample or (H, W) for every channel")
    s.add_argument("--observe", default=None, metavar="FILE.npz",
                   help="sample given a linear observation y = A x + N(0, noise_std²): arrays A (M, D) on the flattened sample, "
                        "y (M,), optional noise_std")
    s.add_argument("--conditioning", default=None, choices=("replacement", "repaint", "dps", "pigdm", "smc"),
                   help="method for --inpaint / --observe (default: the library's choice for the sampler); "
                        "replacement, repaint and smc need a stochastic --sampler (euler_maruyama, reverse_diffusion, pc)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sample)

    lk = parser("likelihood", help="bits/dim of data under a trained model, via the probability-flow ODE")
    lk.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    lk.add_argument("--data", required=True, help=f"{', '.join(TOY_DATA)}, FILE.npz, FILE.npy or IMAGE_DIR (its test split)")
    lk.add_argument("--n", "--num-samples", type=_positive_int, default=500, dest="n",
                    help="number of data points (under torchrun write --num-samples)")
    lk.add_argument("--batch-size", type=_positive_int, default=250, dest="batch_size",
                    help="points per ODE solve; under torchrun the blocks are spread over the ranks")
    lk.add_argument("--divergence", choices=("auto", "exact", "hutchinson"), default="auto",
                    help=f"trace of the score Jacobian; auto is exact up to {EXACT_MAX_DIM} dimensions, Hutchinson's estimator above")
    lk.add_argument("--levels", type=_positive_int, default=None,
                    help="discrete values per dimension of the data, on the grid LO + (HI - LO) k/(levels - 1); known for "
                         "digits (17) and 8-bit data (256): leave it out there")
    lk.add_argument("--data-range", type=_data_range, default=None, dest="data_range", metavar="LO,HI",
                    help="with --levels: the range the grid spans, and the bins of width (HI - LO)/levels tile "
                         "(default: -1,1)")
    lk.add_argument("--dequantization", choices=("auto", "uniform", "truncated-normal", "none"), default="auto",
                    help="discrete data: bits/dim of P(bin) bounded with uniform noise, or i-DODE's truncated normal "
                         "(Zheng et al. 2023); none: the density of the data as given; auto: uniform for discrete data "
                         "(digits, 8-bit, --levels), none otherwise")
    lk.add_argument("--dequant-samples", type=_positive_int, default=1, dest="dequant_samples", metavar="K",
                    help="noise draws per point: K > 1 gives the importance-weighted bound log mean_j p/q (tighter; "
                         "K times the rows per solve)")
    lk.add_argument("--json", action="store_true", help="print one JSON object")
    lk.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    lk.add_argument("--seed", type=int, default=0, help="random seed (Hutchinson probes)")
    lk.add_argument("--no-progress", action="store_true", help="no progress bar")
    lk.set_defaults(func=cmd_likelihood)

    b = parser("bench", help="run a benchmark: tables and plots against the exact-score oracle, or every sampler on your model (solvers --ckpt)")
    b.add_argument("which", choices=("solvers", "likelihood", "training"))
    b.add_argument("--quick", action="store_true", help="a smoke-sized run (under a minute)")
    b.add_argument("--out", default=None, help="output folder (default: benchmarks/results; with --ckpt: <run folder>/bench)")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    b.add_argument("--ckpt", default=None, help="solvers only: run folder or checkpoint file; every sampler on this model at a ladder of NFE, "
                                                "against held-out --data (MMD² ± se and its two-sample floor; images also FD and KID)")
    b.add_argument("--data", default=None, help="with --ckpt: the data set the model was trained on (its test split is the reference)")
    b.add_argument("--nfe", default=None, help="with --ckpt: NFE budgets, comma-separated (default: 5,10,20,50; --quick: 5,10)")
    b.add_argument("--n", "--num-samples", default=None, dest="n", help="with --ckpt: samples per run (default: 1000 vectors, 500 images)")
    b.add_argument("--seed", default=None, help="with --ckpt: random seed (default: 0)")
    b.set_defaults(func=cmd_bench)
    return p


def _parameterizations():
    from .model import PARAMETERIZATIONS

    return tuple(PARAMETERIZATIONS)


def _finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s}")
    return v


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
