"""The variable the adaptive likelihood solve steps in: NFE at equal error, t against the noise level σ̃ = σ/m.

`log_likelihood(..., time=...)` integrates the probability-flow ODE and its divergence in `t`, `σ̃`, `σ̃^{1/3}`
or `log σ̃ = -λ` (the half log-SNR). For each case a sweep of rtol = atol in {1e-2, ..., 1e-6} traces error
against NFE; the table gives, at the error t-time dopri5 reaches at 1e-3 and at 1e-5, the NFE each variable needs
for that same error (log-log interpolation along its own curve) divided by t-time's NFE: below 1 is fewer
evaluations at equal error.

Cases: the oracle's exact score (ring8 2-D and mixture64 64-D, exact divergence) under VP, sub-VP, VE and a user
`LinearSDE` (the cosine schedule, only its two schedule functions given), where the error is against the exact
`log p`; and trained networks (`--ckpt RUN`, repeatable), where the error is against a solve at rtol = atol =
1e-9 on held-out data (`--data`, default the run's own).

    python -m benchmarks.likelihood_time [--quick] [--ckpt RUN ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from benchmarks._common import load_run_case, machine_note, out_dir, write_results

import numpy as np  # noqa: E402
import torch  # noqa: E402

import scoresde  # noqa: E402

EPS = 1e-5
TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
VARIABLES = ("t", "sigma", "cbrt_sigma", "log_sigma")


def sdes():
    return {"VP": scoresde.VPSDE(), "sub-VP": scoresde.SubVPSDE(), "VE": scoresde.VESDE(),
            "cosine (user LinearSDE)": scoresde.CosineVPSDE()}


def curve(run, tols):
    """[(nfe, err)] for one time variable over the tolerances."""
    out = []
    for tol in tols:
        nfe, err = run(tol)
        out.append((nfe, err))
    return out


def nfe_at(curve_pts, err: float) -> float:
    """NFE (or whatever cost the points' first coordinate is) at which this curve of (cost, error) reaches `err`, by
    log-log interpolation (errors decrease along the curve)."""
    pts = sorted(curve_pts, key=lambda p: p[0])
    le = np.log([max(e, 1e-300) for _, e in pts])
    ln = np.log([n for n, _ in pts])
    target = math.log(err)
    for i in range(len(pts) - 1):
        a, b = le[i], le[i + 1]
        if (a - target) * (b - target) <= 0 and a != b:
            w = (target - a) / (b - a)
            return float(math.exp(ln[i] + w * (ln[i + 1] - ln[i])))
    if target > le.max():  # even its loosest solve is more accurate
        return float(pts[0][0])
    return float("nan")  # never reached on this sweep


def study(name, make_run, tols, rows):
    curves = {v: curve(lambda tol: make_run(v, tol), tols) for v in VARIABLES}
    for ref_tol in (1e-3, 1e-5):
        i = tols.index(ref_tol)
        nfe_t, err_t = curves["t"][i]
        row = {"case": name, "t-time tol": ref_tol, "t NFE": nfe_t, "t error": f"{err_t:.1e}"}
        for v in VARIABLES[1:]:
            row[f"{v} NFE ratio"] = round(nfe_at(curves[v], err_t) / nfe_t, 2)
        rows.append(row)
        print("  " + " | ".join(f"{k} {w}" for k, w in row.items()), flush=True)
    return curves


def oracle_cases(quick: bool, rows, curves_out):
    problems = [("ring8", scoresde.ring8(), 64 if quick else 256), ("mixture64", scoresde.mixture64(), 4 if quick else 16)]
    tols = (1e-3, 1e-5) if quick else TOLS
    for pname, mix, B in problems:
        x = mix.sample(B, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for sname, sde in sdes().items():
            sf = mix.score_fn(sde)
            true = mix.log_prob(x, EPS, sde=sde)

            def run(v, tol):
                r = scoresde.log_likelihood(sde, sf, x, divergence="exact", rtol=tol, atol=tol, eps=EPS, time=v)
                # The exact p_T in place of the SDE's prior: what is left is the solver's error.
                return r.nfe, float((mix.log_prob(r.z, sde.T, sde=sde) + r.delta_logp - true).abs().mean())

            name = f"oracle {pname} {sname}"
            curves_out[name] = study(name, run, tols, rows)


def network_cases(ckpts, data, quick: bool, rows, curves_out):
    tols = (1e-3, 1e-5) if quick else TOLS
    for ck in ckpts:
        model, sde, cfg, x, label = load_run_case(ck, 16 if quick else 64, data)
        model, x = model.double(), x.double()
        D = x[0].numel()
        div = "exact" if D <= 16 else "hutchinson"
        kw = dict(divergence=div, eps=EPS)
        ref = scoresde.log_likelihood(sde, model, x, rtol=1e-9, atol=1e-9, generator=torch.Generator().manual_seed(0), **kw)

        def run(v, tol):
            r = scoresde.log_likelihood(sde, model, x, rtol=tol, atol=tol, time=v,
                                        generator=torch.Generator().manual_seed(0), **kw)
            return r.nfe, float((r.logp - ref.logp).abs().mean())

        name = f"network {label[:-1]}, {div})"
        curves_out[name] = study(name, run, tols, rows)


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    n = len(curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, cs) in zip(axes.flat, curves.items()):
        for v, pts in cs.items():
            ax.loglog([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], "o-", ms=3, label=v)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("NFE", fontsize=7)
        ax.set_ylabel("mean |error| (nats)", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap on a short NFE range
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.likelihood_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two tolerances, small batches")
    p.add_argument("--ckpt", action="append", default=[], help="a trained run (repeatable): adds a network case")
    p.add_argument("--data", default=None, help="held-out data for the networks (default: each run's own)")
    p.add_argument("--no-oracle", action="store_true", help="only the network cases")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = out_dir(args.out)
    t0 = time.perf_counter()
    rows, curves = [], {}
    print(f"# likelihood time variable ({machine_note('cpu')}, float64, eps={EPS}, dopri5)", flush=True)
    if not args.no_oracle:
        oracle_cases(args.quick, rows, curves)
    network_cases(args.ckpt, args.data, args.quick, rows, curves)
    meta = {"machine": machine_note("cpu"), "eps": EPS, "tols": TOLS, "quick": args.quick,
            "command": "python -m benchmarks.likelihood_time" + (" --quick" if args.quick else "")
            + "".join(f" --ckpt {c}" for c in args.ckpt),
            # every (NFE, error) point, so the plot can be redrawn and other error levels compared
            "curves": {name: {v: pts for v, pts in cs.items()} for name, cs in curves.items()}}
    table = write_results(out, "likelihood_time", rows, meta)
    plot(curves, out / "likelihood_time.png")
    print(f"\n{table}\nwrote {out}/likelihood_time.{{md,csv,json}} and likelihood_time.png in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
