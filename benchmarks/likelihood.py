"""Likelihood through the probability-flow ODE: accuracy against the exact density versus cost.

With the oracle's exact score the error left is the solver's (and, for the
Hutchinson estimator, its probe noise; and a small prior term, see below). For
the 2-D ring and the 64-D mixture, tolerances {1e-3, 1e-4, 1e-5} x {exact,
Hutchinson}: mean |log p - log p_eps| (nats, and per dim), NFE, wall seconds per
batch. Then the cost of one ODE-function evaluation against one forward + VJP
of the score (best of alternating runs), and peak memory against the number of solver steps.

    python -m benchmarks.likelihood [--quick] [--out DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import machine_note, markdown_table, out_dir, peak_memory_mb, reset_peak_memory, timed, write_results

import torch  # noqa: E402  (after _common pinned the BLAS threads)

import scoresde  # noqa: E402
from scoresde.likelihood import _draw_probes, _exact_divergence, _hutchinson_divergence, log_likelihood  # noqa: E402
from scoresde.samplers.ode import ProbabilityFlowField  # noqa: E402

EPS = 1e-5
TOLS = (1e-3, 1e-4, 1e-5)


def datasets(quick: bool):
    # (name, mixture, batch): the batch is what one `log_likelihood` call sees.
    return [("ring8", scoresde.ring8(), 64 if quick else 512), ("mixture64", scoresde.mixture64(), 16 if quick else 256)]


def accuracy_rows(sde, device, dtype, quick: bool):
    rows = []
    for name, mix, batch in datasets(quick):
        x = mix.sample(batch, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
        D = mix.dim
        sf = mix.score_fn(sde)
        true = mix.log_prob(x, EPS, sde=sde)
        log_likelihood(sde, sf, x[:2], divergence="exact", rtol=1e-2, atol=1e-2)  # warm caches
        for divergence in ("exact", "hutchinson"):
            for tol in TOLS:
                gen = torch.Generator(device=device).manual_seed(1)
                reset_peak_memory(device)
                res, secs = timed(lambda: log_likelihood(sde, sf, x, divergence=divergence, rtol=tol, atol=tol,
                                                         eps=EPS, generator=gen), device)
                err = (res.logp - true).abs()
                # Same solve with the true p_T in place of the SDE's prior: what is left is the solver (and probes).
                solver = (mix.log_prob(res.z, sde.T, sde=sde) + res.delta_logp - true).abs()
                row = {
                    "data": name, "D": D, "divergence": divergence, "rtol=atol": tol, "batch": batch,
                    "NFE": res.nfe, "wall s/batch": round(secs, 3), "ms/NFE": round(1e3 * secs / res.nfe, 2),
                    "mean abs err (nats)": float(err.mean()), "err/dim": float(err.mean()) / D,
                    "solver-only err/dim": float(solver.mean()) / D,
                    # Signed batch mean: Hutchinson's probe noise averages out of it (the estimator is unbiased).
                    "mean signed err/dim": float((res.logp - true).mean()) / D,
                }
                if torch.device(device).type == "cuda":
                    row["peak MB"] = round(peak_memory_mb(device), 1)
                rows.append(row)
                print(markdown_table([row]).splitlines()[-1], flush=True)
    return rows


def _paired(fn, base, device, reps: int):
    """Best seconds of `fn` and of `base` run alternately, and their ratio: on a shared machine the noise only
    adds time (medians of single calls moved by 50% between runs here), and alternating puts both on the same
    stretch of it."""
    fn(), base()
    pairs = [(timed(fn, device)[1], timed(base, device)[1]) for _ in range(reps)]
    a, b = min(a for a, _ in pairs), min(b for _, b in pairs)
    return a, b, a / b


def cost_rows(sde, device, dtype, quick: bool):
    """One evaluation of the likelihood's ODE function versus one forward + one VJP of the score alone."""
    rows = []
    reps = 3 if quick else 30
    for name, mix, batch in datasets(quick):
        x = mix.sample(batch, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
        sf = mix.score_fn(sde)
        t = torch.full((), 0.5, device=device, dtype=dtype)
        tb = t.expand(batch)
        e = _draw_probes(tuple(x.shape), "rademacher", x, torch.Generator(device=device).manual_seed(0))

        def score_fwd_vjp():
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                torch.autograd.grad(sf(xr, tb), xr, e)

        def score_fwd():
            with torch.no_grad():
                sf(x, tb)

        measured = []
        for divergence in ("hutchinson", "exact"):
            if divergence == "exact":
                func = ProbabilityFlowField(sde, sf, batch, _exact_divergence)
                delta = torch.zeros(batch, device=device, dtype=dtype)
            else:
                func = ProbabilityFlowField(sde, sf, batch, lambda v, xx: _hutchinson_divergence(v, xx, e[None]))
                delta = torch.zeros(1, batch, device=device, dtype=dtype)
            measured.append((divergence,) + _paired(lambda: func(t, (x, delta)), score_fwd_vjp, device, reps))
        # Timed after the pairs, warm as they are (timed first it ran 2-6x slower here).
        score_fwd()
        fwd = min(timed(score_fwd, device)[1] for _ in range(reps))
        for divergence, secs, base, ratio in measured:
            rows.append({"data": name, "D": mix.dim, "batch": batch, "divergence": divergence,
                         "score fwd ms": round(1e3 * fwd, 3), "score fwd+VJP ms": round(1e3 * base, 3),
                         "ODE func ms": round(1e3 * secs, 3), "ratio to fwd+VJP": round(ratio, 2)})
    return rows


def _memory_probe(steps: int, batch: int, divergence: str, device: str) -> dict:
    """One rk4 solve of `steps` steps; peak memory above the level just before it (in a fresh process on CPU)."""
    mix, sde = scoresde.mixture64(), scoresde.VPSDE()
    x = mix.sample(batch, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    sf = mix.score_fn(sde)
    # Warm-up on one sample: lazy initialisation (autograd, kernels, caches) is not the solve's memory.
    log_likelihood(sde, sf, x[:1], divergence=divergence, method="rk4", options={"step_size": 0.5})
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _current_rss_mb()
    res = log_likelihood(sde, sf, x, divergence=divergence, method="rk4", options={"step_size": (sde.T - EPS) / steps},
                         generator=torch.Generator(device=device).manual_seed(0))
    return {"NFE": res.nfe, "x MB": round(x.numel() * x.element_size() / 2**20, 3),
            "peak MB above start": round(peak_memory_mb(device) - before, 1)}


def _current_rss_mb() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_rows(device: str, quick: bool):
    rows = []
    # Exact divergence holds B·D·D numbers per evaluation (64 VJPs at once): a smaller batch.
    configs = [("hutchinson", 512 if quick else 2048)] + ([] if quick else [("exact", 64)])
    for divergence, batch in configs:
        for steps in (5, 50) if quick else (5, 50, 500):
            if torch.device(device).type == "cuda":
                r = _memory_probe(steps, batch, divergence, device)
            else:
                # ru_maxrss only ever rises: a fresh process per measurement.
                cmd = [sys.executable, "-m", "benchmarks.likelihood", "--threads", str(torch.get_num_threads()),
                       "--memory-probe", str(steps), str(batch), divergence]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            rows.append({"data": "mixture64", "batch": batch, "divergence": divergence, "rk4 steps": steps, **r})
            print(markdown_table([rows[-1]]).splitlines()[-1], flush=True)
    return rows


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["data"] for r in rows}, key=lambda n: [r["data"] for r in rows].index(n))
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for divergence, marker in (("exact", "o"), ("hutchinson", "s")):
            sel = [r for r in rows if r["data"] == name and r["divergence"] == divergence]
            ax.loglog([r["NFE"] for r in sel], [r["err/dim"] for r in sel], marker=marker, label=f"{divergence}: vs true log p")
            if divergence == "exact":
                ax.loglog([r["NFE"] for r in sel], [r["solver-only err/dim"] for r in sel], marker=marker, ls=":",
                          label="exact, true p_T as prior (solver only)")
            for r in sel:
                ax.annotate(f"{r['rtol=atol']:.0e}", (r["NFE"], r["err/dim"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(1e-3, color="grey", lw=0.8, ls="--", label="target 1e-3 nats/dim")
        ax.set_title(f"{name} (D={sel[0]['D']}), VP, exact score, dopri5")
        ax.set_xlabel("NFE (score evaluations)")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short NFE range
        ax.set_ylabel("mean |log p − log p_eps| per dim (nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.likelihood", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small batches, fewer repeats (< 60 s)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: these are many small ops)")
    p.add_argument("--memory-probe", nargs=3, metavar=("STEPS", "BATCH", "DIVERGENCE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, args.threads))
    if args.memory_probe:
        steps, batch, divergence = args.memory_probe
        print(json.dumps(_memory_probe(int(steps), int(batch), divergence, device)))
        return 0

    out = out_dir(args.out)
    sde, dtype = scoresde.VPSDE(), torch.float64
    t0 = time.perf_counter()
    print(f"# likelihood benchmark ({machine_note(device)}, VP SDE, float64, eps={EPS})", flush=True)
    acc = accuracy_rows(sde, device, dtype, args.quick)
    cost = cost_rows(sde, device, dtype, args.quick)
    mem = memory_rows(device, args.quick)
    meta = {"machine": machine_note(device), "sde": repr(sde), "dtype": str(dtype), "eps": EPS, "quick": args.quick,
            "command": "python -m benchmarks.likelihood" + (" --quick" if args.quick else "")}
    tables = [write_results(out, "likelihood", acc, meta), write_results(out, "likelihood_cost", cost, meta),
              write_results(out, "likelihood_memory", mem, meta)]
    plot(acc, out / "likelihood_error.png")
    print()
    for title, table in zip(("accuracy vs cost", "cost per ODE-function evaluation", "peak memory vs solver steps"), tables):
        print(f"## {title}\n\n{table}")
    print(f"wrote {out}/likelihood*.{{md,csv,json}} and likelihood_error.png in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
