"""Steps vs quality on the user's own checkpoint: `scoresde bench solvers --ckpt RUN --data DATA [--nfe 5,10,20,50] [--n N]`.

Also `python -m benchmarks.user_model --ckpt RUN --data DATA ...` from the checkout's root.

Every sampler runs on the trained model at a ladder of NFE budgets (score evaluations, the final Tweedie
denoising step included: `steps` is the largest count whose counted NFE fits the budget; budgets below one
step's cost are skipped) plus the adaptive dopri5 ODE at a few tolerances (its NFE is what it spent). All
runs start from the same prior draw `x_T` and noise seed. Each run's `--n` samples are compared with `--n`
held-out points of `DATA`'s test split:

- unbiased MMD² ± standard error (`scoresde.metrics.mmd2`, RBF kernels at 5 multiples of the held-out data's
  median distance), beside the **two-sample floor**: the same statistic between the held-out reference and a
  second, disjoint set of `--n` real points (the rest of the test split when it has 2 n points, else a seeded
  subset of the training split, which is data the model has seen but still a draw from the data law). A
  perfect sampler lands within about ±2 floor-se of zero.
- images `(C, H, W)`: also the Fréchet distance and the unbiased KID (cubic polynomial kernel
  `(a·b/d + 1)³`, Bińkowski et al. 2018) on the penultimate features (64-D) of a small conv net trained,
  deterministically from `--seed`, on the training split: on its class labels when the data has them
  (digits, an .npz with `y`), else on the self-supervised proxy task of predicting a rotation by 0/90/180/270
  degrees (square images; other shapes use the seeded, untrained net: random conv features). Its state_dict
  is cached in the output folder (`feature_net.pt`) and reused when data, shape and seed match. Samples are
  clipped to the training data's range before the features (as saving them as pictures would), not for MMD².
- wall seconds of the sampling call (one thread; after an untimed warm-up call per sampler).

Writes `solvers_ckpt.{md,csv,json}` and `solvers_ckpt.png` to `--out` (default: `<run folder>/bench`) and
prints the table and one line per budget naming the sampler with the lowest MMD² (KID for images) among the runs
whose counted NFE is at or under it, whether that is at the two-sample floor, and the runs within 2 se of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from benchmarks._common import machine_note, write_results

# (label, sampler name, options)
SAMPLERS = [
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("pc (rd + langevin)", "pc", {}),
    ("sde (torchsde euler)", "sde", {"method": "euler"}),
    ("ode (rk4)", "ode", {"method": "rk4"}),
    ("dpm_solver", "dpm_solver", {}),
]
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)
QUICK_TOLS = (1e-2,)
DEFAULT_NFE = (5, 10, 20, 50)
QUICK_NFE = (5, 10)
RESULT = "solvers_ckpt"
FEATURE_NET = "feature_net.pt"
FEATURE_DIM = 64


def parse_nfe(text: str) -> List[int]:
    """'5,10,20,50' -> [5, 10, 20, 50] (sorted, unique); anything else is a ValueError naming --nfe."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--nfe must be a comma-separated list of positive integers such as 5,10,20,50, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"--nfe must be a comma-separated list of positive integers such as 5,10,20,50, got {text!r}")
    return sorted(set(vals))


def _parse_n(text) -> int:
    try:
        v = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--n must be an integer of at least 4, got {text!r}") from None
    if v < 4:
        raise ValueError(f"--n must be an integer of at least 4, got {v}")
    return v


# -- metrics in feature space ----------------------------------------------------------------------------------


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """`|μa - μb|² + tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½)` in float64 (the trace of the root by a symmetric eigensolve)."""
    a, b = a.double(), b.double()
    mu = a.mean(0) - b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    ra = (v * w.clamp_min(0).sqrt()) @ v.T
    m = ra @ cb @ ra
    tr_root = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(mu.square().sum() + ca.trace() + cb.trace() - 2 * tr_root)


def kid(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Unbiased KID (Bińkowski et al.): MMD² with `k(x, y) = (x·y/d + 1)³`,
    `1/(n(n-1)) Σ_{i≠j} k(a_i,a_j) + 1/(m(m-1)) Σ_{i≠j} k(b_i,b_j) - 2/(nm) Σ_{i,j} k(a_i,b_j)`, and its standard
    error from the U-statistic `h_ij` (pairs i ≠ j, equal sizes) as in `scoresde.metrics.mmd2`."""
    a, b = a.double(), b.double()
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    d = a.shape[1]
    kaa, kbb, kab = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    off = ~torch.eye(n, dtype=torch.bool)
    value = kaa[off].sum() / (n * (n - 1)) + kbb[off].sum() / (n * (n - 1)) - 2 * kab.mean()
    h = (kaa + kbb - kab - kab.T) * off
    hbar = h.sum(1) / (n - 1)
    var = 4.0 / n * hbar.var() + 2.0 / (n * (n - 1)) * h.square().sum() / (n * (n - 1))
    return float(value), float(var.clamp_min(0).sqrt())


class FeatureNet(nn.Module):
    """Three 3x3 convs (32, 64, 64 channels, the last two strided), global average pool, a 64-unit hidden layer
    (the features), a linear head."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _rotations(x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    k = torch.randint(0, 4, (len(x),), generator=g)
    return torch.stack([torch.rot90(xi, int(ki), dims=(1, 2)) for xi, ki in zip(x, k)]), k


def _fingerprint(x: Tensor) -> str:
    """A hash of the shape and the first 1000 samples: tells one data set from another without reading all of it."""
    h = hashlib.sha1(str(tuple(x.shape)).encode())
    h.update(x[:1000].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def feature_net(data, seed: int, out: Path, quick: bool, log=print) -> tuple[FeatureNet, dict]:
    """The feature network for `data` (a `scoresde.data.Data` of images), trained or read from `out/feature_net.pt`."""
    train = data.train
    c, hh, ww = train.shape[1:]
    labels = data.train_labels
    if labels is not None and data.num_classes > 1:
        task, k = "class labels", int(data.num_classes)
    elif hh == ww:
        task, k = "rotation prediction (self-supervised: 0/90/180/270 degrees)", 4
    else:
        task, k = "none (random conv features: seeded, untrained)", 1
    key = {"data": _fingerprint(train), "shape": [int(c), int(hh), int(ww)], "seed": int(seed), "task": task, "quick": bool(quick), "version": 2}
    path = out / FEATURE_NET
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                net = FeatureNet(int(c), k)
                net.load_state_dict(saved["state_dict"])
                log(f"feature net: reusing {path} ({task}; held-out accuracy {saved['info'].get('test_accuracy')})")
                return net.eval().requires_grad_(False), dict(saved["info"], cached=True)
        except Exception:
            pass  # unreadable or another version: train anew and overwrite
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(int(c), k)
    g = torch.Generator().manual_seed(seed + 1)
    steps = 0
    if k > 1:
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        n_steps = 150 if quick else min(1500, max(300, 15 * len(train) // 128))
        batch = min(128, len(train))
        net.train()
        for steps in range(1, n_steps + 1):
            idx = torch.randint(0, len(train), (batch,), generator=g)
            x = train[idx]
            x = x + 0.02 * torch.randn(x.shape, generator=g)  # a little noise: features that do not hinge on exact pixels
            if labels is not None and task == "class labels":
                y = labels[idx]
            else:
                x, y = _rotations(x, g)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval().requires_grad_(False)
    acc = None
    if k > 1:
        with torch.no_grad():
            te = data.test
            if task == "class labels" and data.test_labels is not None:
                y = data.test_labels
            else:
                te, y = _rotations(te, torch.Generator().manual_seed(seed + 2))
            acc = round(float((net(te).argmax(1) == y).float().mean()), 4)
    with torch.no_grad():  # one global scale: real features have mean square 1 per coordinate (KID's cubic kernel is scale-sensitive)
        scale = float(net.features(train[:2000]).square().mean().sqrt().clamp_min(1e-12))
    info = {"task": task, "train_steps": steps, "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 2),
            "feature_dim": FEATURE_DIM, "feature_scale": scale, "file": FEATURE_NET}
    torch.save({"key": key, "state_dict": net.state_dict(), "info": info}, path)
    log(f"feature net: trained on {task} in {info['seconds']} s, held-out accuracy {acc}; saved to {path}")
    return net, dict(info, cached=False)


# -- the sweep ----------------------------------------------------------------------------------------------------


def _steps_for(sde, name: str, opts: dict, budget: int, shape) -> Optional[int]:
    """The largest step count whose counted NFE (denoising step included) is at most `budget`, found by counting
    calls of a cheap stand-in score on 2 points; None when not even one step fits."""
    from scoresde import sample

    probe = lambda x, t: -x  # noqa: E731  (the standard normal's score: any finite function counts the same)
    x_T = torch.randn((2,) + tuple(shape), generator=torch.Generator().manual_seed(0))

    def nfe(steps):
        st: dict = {}
        sample(sde, probe, None, x_T=x_T, sampler=name, steps=steps, stats=st, generator=torch.Generator().manual_seed(0), **opts)
        return st["nfe"]

    per = nfe(2) - nfe(1)
    base = nfe(1) - per
    steps = (budget - base) // per if per > 0 else 0
    steps = max(steps, 1)
    while steps >= 1 and nfe(steps) > budget:
        steps -= 1
    while steps >= 1 and nfe(steps + 1) <= budget:
        steps += 1
    return steps if steps >= 1 else None


def _fmt(v, digits=4):
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _plot(rows: List[dict], floor: dict, budgets: Sequence[int], path: Path, image: bool, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metrics = [("MMD²", "±", "floor_mmd2", "floor_mmd2_se")]
    if image:
        metrics += [("KID", "KID ±", "floor_kid", "floor_kid_se"), ("FD", None, "floor_fd", None)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics), 4), squeeze=False)
    labels = list(dict.fromkeys(r["sampler"].split(",")[0] for r in rows))
    curve = {lab: sorted((r["NFE"], r["MMD²"]) for r in rows if r["sampler"].split(",")[0] == lab) for lab in labels}
    close = lambda a, b: len(a) == len(b) and all(p[0] == q[0] and math.isclose(p[1], q[1], rel_tol=1e-4, abs_tol=1e-9)  # noqa: E731
                                                  for p, q in zip(a, b))
    same = {lab: next((o for o in labels[:i] if close(curve[o], curve[lab])), None) for i, lab in enumerate(labels)}
    for ax, (col, se_col, fcol, fse_col) in zip(axes[0], metrics):
        for i, lab in enumerate(labels):
            pts = sorted((r["NFE"], r[col], r[se_col] if se_col else 0.0) for r in rows if r["sampler"].split(",")[0] == lab)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts] if se_col else None,
                        fmt="o-" if "dopri5" not in lab else "s--", ms=4, capsize=2, color=f"C{i % 10}",
                        label=lab + (f" (on top of {same[lab]})" if same[lab] else ""))
        fv = floor[fcol]
        if fse_col:
            band = 2 * floor[fse_col]
            ax.axhspan(-band, band, color="0.85", zorder=0, label=f"{col}: 0 ± 2 floor-se ({band:.2g})")
            ax.axhline(fv, color="0.4", ls=":", lw=1, label=f"{col}: floor estimate ({fv:.2g})")
            ax.set_yscale("symlog", linthresh=max(band, 1e-12))
        else:
            ax.axhspan(0, fv, color="0.85", zorder=0, label=f"{col}: two-sample floor ({fv:.3g})")
            ax.set_yscale("log")
            from matplotlib.ticker import LogLocator, ScalarFormatter

            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xscale("log")
        shown = sorted(set(budgets) | {v for v in (r["NFE"] for r in rows) if all(max(v, b) / min(v, b) >= 1.3 for b in budgets)})
        ax.set_xticks(shown, [str(v) for v in shown])
        ax.minorticks_off()
        ax.set_xlabel("score evaluations (NFE, counted)")
        ax.set_ylabel(col + (" (symlog: linear near 0)" if fse_col else ""))
        ax.grid(True, which="both", alpha=0.3)
        if ax is not axes[0][0]:  # the other panels' floors; the samplers' legend is the first panel's
            floor_items = [(h, lab) for h, lab in zip(*ax.get_legend_handles_labels()) if "floor" in lab or "perfect" in lab]
            ax.legend(*zip(*floor_items), fontsize=7, loc="best", framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the sampler legend to the right of the panels
    plt.close(fig)
    return path


def best_lines(rows: List[dict], budgets: Sequence[int], key: str, se_key: str, floor_band: float) -> List[dict]:
    """For each budget, the run with the lowest `key` among those whose counted NFE is within it, and the runs
    statistically tied with it (difference under 2 combined standard errors, treating the runs as independent);
    "at the floor" when it is within `floor_band` (2 floor-se) of 0, where n samples cannot tell it from the data."""
    out = []
    for b in budgets:
        cand = [r for r in rows if r["NFE"] <= b]
        if not cand:
            continue
        best = min(cand, key=lambda r: r[key])
        tied = [f"{r['sampler']} at {r['NFE']}" for r in cand
                if r is not best and r[key] - best[key] < 2 * math.hypot(r[se_key], best[se_key])]
        line = f"best at ≤ {b} NFE: {best['sampler']} ({key} {best[key]:.3g} ± {best[se_key]:.2g} at {best['NFE']} NFE"
        if key != "MMD²":
            line += f"; MMD² {best['MMD²']:.3g} ± {best['±']:.2g}"
        at_floor = abs(best[key]) <= floor_band
        line += ", at the two-sample floor)" if at_floor else ")"
        if tied:
            line += f"; within 2 se of it: {', '.join(tied[:5])}" + (f" and {len(tied) - 5} more" if len(tied) > 5 else "")
        out.append({"budget": b, "sampler": best["sampler"], "NFE": best["NFE"], key: best[key], "at_floor": at_floor,
                    "tied": tied, "line": line})
    return out


def run(args) -> int:
    import scoresde
    from scoresde.data import load_data
    from scoresde.metrics import mmd2
    from scoresde.model import ScoreModel
    from scoresde.plotting import is_image_event
    from scoresde.train import load

    torch.set_num_threads(1)  # two shared cores: one thread per measurement
    try:
        args.seed = int(args.seed)
    except (TypeError, ValueError):
        raise ValueError(f"--seed must be an integer, got {args.seed!r}") from None
    if args.data is None:
        raise ValueError("bench solvers --ckpt needs --data (the data set the model was trained on; its test split is the reference)")
    budgets = parse_nfe(args.nfe) if args.nfe is not None else list(QUICK_NFE if args.quick else DEFAULT_NFE)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, sde = load(args.ckpt, device=device)
    if not isinstance(model, ScoreModel):
        raise ValueError(f"{args.ckpt}: a classifier checkpoint (train --classifier), not a score model")
    data = load_data(args.data)
    event = tuple(int(s) for s in data.test.shape[1:])
    if model.event_shape is not None and tuple(model.event_shape) != event:
        raise ValueError(f"data {args.data!r} has samples of shape {event}, but the checkpoint's model was trained on "
                         f"{tuple(model.event_shape)}: give the data set the model was trained on")
    image = is_image_event(event)
    n_req = _parse_n(args.n) if args.n is not None else (100 if args.quick else 500) if image else (200 if args.quick else 1000)
    n = min(n_req, len(data.test))
    g = torch.Generator().manual_seed(args.seed)
    ref = data.test[:n]
    if len(data.test) >= 2 * n:
        floor_set, floor_src = data.test[n:2 * n], "a disjoint part of the test split"
    else:
        floor_set = data.train[torch.randperm(len(data.train), generator=g)[:n]]
        floor_src = "a seeded subset of the training split (the test split holds fewer than 2 n points)"
    if len(floor_set) < n:
        n = len(floor_set)
        ref = ref[:n]
    ckpt_path = Path(args.ckpt)
    out = Path(args.out) if args.out else (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    note = f" (the test split has only {len(data.test)} points)" if n < n_req else ""
    print(f"{args.ckpt}: {type(sde).__name__}, event shape {event}; {n} samples per run against {n} held-out points of "
          f"{args.data!r}{note}; floor from {floor_src}", flush=True)

    ref64, floor64 = ref.double(), floor_set.double()
    fl = mmd2(floor64, ref64)
    floor = {"floor_mmd2": float(fl.value), "floor_mmd2_se": float(fl.stderr), "source": floor_src, "n": n}
    feat = None
    if image:
        fnet, finfo = feature_net(data, args.seed, out, args.quick)
        lo, hi = float(data.train.min()), float(data.train.max())
        with torch.no_grad():
            scale = finfo["feature_scale"]
            feat = lambda x: fnet.features(x.float().cpu().clamp(lo, hi)) / scale  # noqa: E731
            f_ref, f_floor = feat(ref), feat(floor_set)
        floor["floor_fd"] = frechet_distance(f_floor, f_ref)
        floor["floor_kid"], floor["floor_kid_se"] = kid(f_floor, f_ref)
        floor["feature_net"] = finfo

    x_T = sde.prior_sample((n,) + event, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float32).to(device)
    tols = QUICK_TOLS if args.quick else ADAPTIVE_TOLS
    plan, skipped = [], []
    for label, name, opts in SAMPLERS:
        for b in budgets:
            steps = _steps_for(sde, name, opts, b, event)
            if steps is None:
                skipped.append(f"{label} at {b} NFE")
            else:
                plan.append((label, name, opts, b, steps))
    plan += [(f"ode (dopri5), tol {tol:g}", "ode", {"method": "dopri5", "rtol": tol, "atol": tol}, "adaptive", None) for tol in tols]
    if skipped:
        print(f"skipped (one step costs more than the budget): {', '.join(skipped)}", flush=True)

    rows: List[dict] = []
    warmed = set()
    t_all = time.perf_counter()
    for label, name, opts, b, steps in plan:
        kw = dict(opts, steps=steps) if steps is not None else dict(opts)
        if name not in warmed:  # first-call costs (imports, allocator) stay out of the timings
            scoresde.sample(sde, model, None, x_T=x_T[:16], sampler=name, generator=torch.Generator(device).manual_seed(0),
                            **(dict(kw, steps=1) if steps is not None else kw))
            warmed.add(name)
        st: dict = {}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = scoresde.sample(sde, model, None, x_T=x_T, sampler=name, stats=st,
                            generator=torch.Generator(device).manual_seed(args.seed + 1), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        x = x.detach().cpu()
        mm = mmd2(x.double(), ref64)
        row = {"sampler": label, "NFE budget": b, "steps": st["steps"] if steps is not None else "adaptive", "NFE": int(st["nfe"]),
               "MMD²": float(mm.value), "±": float(mm.stderr), "MMD²/se": round(float(mm.value) / max(float(mm.stderr), 1e-30), 2)}
        if feat is not None:
            with torch.no_grad():
                fx = feat(x)
            row["FD"] = frechet_distance(fx, f_ref)
            row["KID"], row["KID ±"] = kid(fx, f_ref)
        row["wall s"] = round(secs, 3)
        rows.append(row)
        print(" | ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
    sweep_s = time.perf_counter() - t_all

    key, se_key = ("KID", "KID ±") if image else ("MMD²", "±")
    best = best_lines(rows, budgets, key, se_key, 2 * floor["floor_kid_se" if image else "floor_mmd2_se"])
    floor_line = (f"two-sample floor ({n} vs {n} real points; {floor_src}): MMD² {floor['floor_mmd2']:.3g} ± {floor['floor_mmd2_se']:.2g}"
                  + (f", KID {floor['floor_kid']:.3g} ± {floor['floor_kid_se']:.2g}, FD {floor['floor_fd']:.3g}" if image else ""))
    meta = {"benchmark": "bench solvers --ckpt", "ckpt": str(args.ckpt), "data": str(args.data), "sde": repr(sde),
            "event_shape": list(event), "n": n, "seed": args.seed, "nfe_budgets": budgets, "adaptive_tols": list(tols),
            "budget_note": "NFE counts every score evaluation, the final Tweedie denoising step included",
            "skipped": skipped, "floor": floor, "ranked_by": key, "best": best, "sweep_seconds": round(sweep_s, 1),
            "machine": machine_note(device)}
    table = write_results(out, RESULT, rows, meta)
    summary = [floor_line] + [b["line"] for b in best]
    (out / f"{RESULT}.md").write_text(table + "\n" + "\n".join(f"- {s}" for s in summary) + "\n")
    png = _plot(rows, floor, budgets, out / f"{RESULT}.png", image,
                f"{Path(args.ckpt).name} on {Path(str(args.data)).name}: {n} samples vs held-out data, by NFE")
    print()
    print(table)
    for s in summary:
        print(s)
    print(f"sweep: {sweep_s:.1f} s; wrote {out / RESULT}.{{md,csv,json}} and {png}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scoresde bench solvers --ckpt", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    p.add_argument("--data", default=None, help="the data the model was trained on (its test split is the reference)")
    p.add_argument("--nfe", default=None, help=f"NFE budgets, comma-separated (default: {','.join(map(str, DEFAULT_NFE))}; --quick: {','.join(map(str, QUICK_NFE))})")
    p.add_argument("--n", "--num-samples", default=None, dest="n", help="samples per run and held-out points (default: 1000 vectors, 500 images; --quick 200/100)")
    p.add_argument("--out", default=None, help="output folder (default: <run folder>/bench)")
    p.add_argument("--quick", action="store_true", help="NFE 5,10, fewer samples, one dopri5 tolerance")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available else cpu)")
    p.add_argument("--seed", default="0", help="seed of x_T, the sampling noise, the floor subset and the feature net")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, TypeError, OSError) as e:
        print(f"user_model: error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
