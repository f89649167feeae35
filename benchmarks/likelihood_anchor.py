"""The ODE likelihood raced against score_sde_pytorch's, the anchor, on the same score and the same data.

The anchor's `likelihood.get_likelihood_fn` (scipy's RK45 in t on the flattened state, one Rademacher
Hutchinson probe, the drift and the probe's VJP from two separate score calls) runs from a checkout given by
path; nothing of it is installed or copied. Both solve the probability-flow ODE from eps = 1e-5 to T with
rtol = atol = tol and one Rademacher probe, the same probe for both (one seed draws the same values in the
anchor's `randint_like` and our generator), in float32 as the anchor runs its model. `scoresde.log_likelihood`
runs with its defaults (dopri5 stepping in σ̃^{1/3}, one score call per evaluation); `time="t"` is shown beside.

Each error is mean |log p - log p_ref| over the batch, log p_ref the same estimator (same probe) solved in
float64 at rtol = atol = 1e-9, the anchor's with the anchor's own prior: what is left is the solver's error.
Speed is the anchor's wall time over ours at the same tolerance (one torch thread; the two run alternately
`--repeats` times, the median of the per-pair ratios kept), and at equal error: that ratio times our NFE at the
tolerance over our NFE at the anchor's error (ours swept over rtol = atol in 1e-2 ... 1e-7, NFE interpolated
log-log; our wall time is proportional to NFE). Cases: the oracle's exact score (ring8 2-D, mixture64 64-D) under VP and VE, and trained networks
(`--ckpt RUN`, repeatable; VP, sub-VP or VE, on their own held-out data).

    python -m benchmarks.likelihood_anchor --anchor PATH/TO/score_sde_pytorch [--ckpt RUN ...] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from pathlib import Path

from benchmarks._common import load_run_case, machine_note, out_dir, write_results
from benchmarks.likelihood_time import nfe_at

import numpy as np  # noqa: E402
import torch  # noqa: E402

import scoresde  # noqa: E402

EPS = 1e-5
RACE_TOLS = (1e-3, 1e-5)
SWEEP_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
SEED = 0


def load_anchor(path: str):
    """`(sde_lib, likelihood)` modules of a score_sde_pytorch checkout (its root on sys.path, as its scripts run)."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in ("sde_lib.py", "likelihood.py", "models/utils.py") if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"--anchor {path}: not a score_sde_pytorch checkout (missing {', '.join(missing)})")
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("sde_lib"), importlib.import_module("likelihood")
    except ImportError as e:  # scipy, or a checkout of another layout
        raise SystemExit(f"--anchor {path}: could not import its likelihood module ({e})") from None


def anchor_sde(sde_lib, sde: scoresde.SDE):
    """The anchor's SDE with our SDE's parameters; None where it has no such class (cosine, user SDEs)."""
    if type(sde) is scoresde.VPSDE:
        return sde_lib.VPSDE(beta_min=sde.beta_min, beta_max=sde.beta_max)
    if type(sde) is scoresde.SubVPSDE:
        return sde_lib.subVPSDE(beta_min=sde.beta_min, beta_max=sde.beta_max)
    if type(sde) is scoresde.VESDE:
        return sde_lib.VESDE(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max)
    return None


class AnchorNet(torch.nn.Module):
    """Our score as the network the anchor's continuous `get_score_fn` expects: it reads the time from the label
    (999 t for VP and sub-VP, σ(t) for VE), returns -std(t) s(x, t) for VP and sub-VP (the anchor divides by its
    own std, so its formula is used here and the two cancel exactly) or s(x, t) for VE, on (B, D, 1, 1)."""

    def __init__(self, score_fn, sde: scoresde.SDE, a_sde, event_shape):
        super().__init__()
        self.score_fn, self.sde, self.a_sde, self.event_shape = score_fn, sde, a_sde, tuple(event_shape)
        self.ve = isinstance(sde, scoresde.VESDE)

    def forward(self, x, labels):
        B = x.shape[0]
        xx = x.reshape((B,) + self.event_shape)
        if self.ve:
            t = torch.log(labels / self.sde.sigma_min) / math.log(self.sde.sigma_max / self.sde.sigma_min)
            return self.score_fn(xx, t).reshape(x.shape)
        t = labels / 999
        std = self.a_sde.marginal_prob(torch.zeros_like(x), t)[1]
        return (-std.reshape(B, *([1] * (xx.dim() - 1))) * self.score_fn(xx, t)).reshape(x.shape)


def run_anchor(likelihood_mod, a_sde, net, x, tol, method="RK45"):
    """(log p in nats per point, solver evaluations, score calls, wall s) from the anchor's likelihood_fn."""
    B, D = x.shape[0], x[0].numel()
    data = x.reshape(B, D, 1, 1).float()
    fn = likelihood_mod.get_likelihood_fn(a_sde, lambda v: v, hutchinson_type="Rademacher", rtol=tol, atol=tol,
                                          method=method, eps=EPS)
    torch.manual_seed(SEED)  # its probe: randint_like on the global generator
    t0 = time.perf_counter()
    bpd, z, nfe = fn(net, data)
    wall = time.perf_counter() - t0
    offset = 8.0  # 7 - inverse_scaler(-1) with the identity scaler
    logp = -(bpd.double() - offset) * D * math.log(2)
    return logp, int(nfe), 2 * int(nfe), wall


def run_ours(sde, score_fn, x, tol, time_var=None, dtype=torch.float32):
    kw = {} if time_var is None else {"time": time_var}
    t0 = time.perf_counter()
    r = scoresde.log_likelihood(sde, score_fn, x.to(dtype), divergence="hutchinson", noise="rademacher",
                                rtol=tol, atol=tol, eps=EPS, generator=torch.Generator().manual_seed(SEED), **kw)
    return r, time.perf_counter() - t0


def check_alignment(a_sde, net, score_fn, x) -> None:
    """The anchor's score of our network must be our score: one mismatch in the label or std conventions and the
    race compares two different ODEs."""
    mutils = importlib.import_module("models.utils")
    a_score = mutils.get_score_fn(a_sde, net, train=False, continuous=True)
    B = x.shape[0]
    for tv in (1e-3, 0.1, 0.5, 1.0):
        t = torch.full((B,), tv)
        ours = score_fn(x, t).reshape(B, -1)
        theirs = a_score(x.reshape(B, -1, 1, 1), t).reshape(B, -1)
        err = float((ours - theirs).norm() / ours.norm())
        if not err < 1e-4:
            raise RuntimeError(f"the anchor's score of our model differs from ours by {err:.1e} (relative) at t={tv}")


def race(name, sde, a_sde, likelihood_mod, score32, score64, event_shape, x, repeats, rows):
    net = AnchorNet(score32, sde, a_sde, event_shape)
    check_alignment(a_sde, net, score32, x)
    ref = scoresde.log_likelihood(sde, score64, x.double(), divergence="hutchinson", noise="rademacher", rtol=1e-9,
                                  atol=1e-9, eps=EPS, generator=torch.Generator().manual_seed(SEED))
    B = x.shape[0]
    z4 = ref.z.reshape(B, -1, 1, 1)
    ref_anchor = a_sde.prior_logp(z4).double() + ref.delta_logp  # the anchor's prior on the same latent
    ref_ours = ref.logp

    sweep = []  # (NFE, error) of ours over the tolerances: deterministic, so no timing needed
    for tol in SWEEP_TOLS:
        r, _ = run_ours(sde, score32, x, tol)
        sweep.append((r.nfe, float((r.logp.double() - ref_ours).abs().mean())))
    for tol in RACE_TOLS:
        # Alternate the two solves and keep the median of the per-pair ratios: on a shared machine the speed of
        # both drifts by tens of percent over a minute, and a pair run back to back sees the same drift.
        pairs = []
        for _ in range(repeats):
            lp_a, nfe_a, calls_a, wall_a = run_anchor(likelihood_mod, a_sde, net, x, tol)
            r, wall_o = run_ours(sde, score32, x, tol)
            pairs.append((wall_a, wall_o))
        ratio = float(np.median([a / o for a, o in pairs]))
        wall_a, wall_o = (float(np.median(w)) for w in zip(*pairs))
        err_a = float((lp_a - ref_anchor).abs().mean())
        err_o = float((r.logp.double() - ref_ours).abs().mean())
        rt, _ = run_ours(sde, score32, x, tol, time_var="t")
        err_t = float((rt.logp.double() - ref_ours).abs().mean())
        # At equal error: ours costs NFE(err_a)/NFE(tol) of its same-tol solve (wall time is proportional to NFE).
        nfe_eq = nfe_at(sweep, err_a)
        row = {"case": name, "tol": tol,
               "anchor evals (score calls)": f"{nfe_a} ({calls_a})", "anchor error": f"{err_a:.1e}",
               "anchor s": round(wall_a, 3),
               "ours NFE": r.nfe, "ours error": f"{err_o:.1e}", "ours s": round(wall_o, 3),
               "speed-up, same tol": round(ratio, 2),
               "error ours/anchor": round(err_o / err_a, 2) if err_a > 0 else float("nan"),
               "ours NFE at anchor's error": round(nfe_eq) if nfe_eq == nfe_eq else float("nan"),
               "speed-up, equal error": round(ratio * r.nfe / nfe_eq, 2) if nfe_eq == nfe_eq else float("nan"),
               "ours t-time NFE, error": f"{rt.nfe}, {err_t:.1e}",
               "score calls anchor/ours": round(calls_a / r.nfe, 2)}
        rows.append(row)
        print("  " + " | ".join(f"{k} {v}" for k, v in row.items()), flush=True)


def oracle_cases(sde_lib, likelihood_mod, quick, repeats, rows):
    problems = [("ring8", scoresde.ring8(), 64 if quick else 256), ("mixture64", scoresde.mixture64(), 8 if quick else 64)]
    for pname, mix, B in problems:
        x = mix.sample(B, generator=torch.Generator().manual_seed(1))
        for sname, sde in (("VP", scoresde.VPSDE()), ("VE", scoresde.VESDE())):
            race(f"oracle {pname} {sname}", sde, anchor_sde(sde_lib, sde), likelihood_mod, mix.score_fn(sde),
                 mix.score_fn(sde), x.shape[1:], x, repeats, rows)


def network_cases(sde_lib, likelihood_mod, ckpts, quick, repeats, rows):
    import copy

    for ck in ckpts:
        model, sde, cfg, x, label = load_run_case(ck, 16 if quick else 64)
        a_sde = anchor_sde(sde_lib, sde)
        if a_sde is None:
            print(f"  {ck}: the anchor has no {type(sde).__name__}; skipped", flush=True)
            continue
        race(f"network {label}", sde, a_sde, likelihood_mod, model, copy.deepcopy(model).double(),
             tuple(model.event_shape), x.float(), repeats, rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.likelihood_anchor", description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", default=None, metavar="PATH",
                   help="a checkout of score_sde_pytorch (github.com/yang-song/score_sde_pytorch); needs scipy")
    p.add_argument("--ckpt", action="append", default=[], help="a trained run (repeatable): adds a network case")
    p.add_argument("--no-oracle", action="store_true", help="only the network cases")
    p.add_argument("--quick", action="store_true", help="small batches, one repeat")
    p.add_argument("--repeats", type=int, default=5,
                   help="alternating anchor/ours timing pairs per case, median ratio kept (default 5)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.anchor is None:
        print("likelihood anchor race: no --anchor checkout given; skipped. Without the anchor, "
              "`python -m benchmarks.likelihood_time` gives our NFE against t-time dopri5 at equal error.")
        return 0
    sde_lib, likelihood_mod = load_anchor(args.anchor)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else max(1, args.repeats)
    out = out_dir(args.out)
    t0 = time.perf_counter()
    rows = []
    print(f"# ODE likelihood against score_sde_pytorch ({machine_note('cpu')}, float32, eps={EPS}, "
          f"one Rademacher probe)", flush=True)
    if not args.no_oracle:
        oracle_cases(sde_lib, likelihood_mod, args.quick, repeats, rows)
    network_cases(sde_lib, likelihood_mod, args.ckpt, args.quick, repeats, rows)
    for tol in RACE_TOLS:
        sp = [r["speed-up, same tol"] for r in rows if r["tol"] == tol]
        eq = [r["speed-up, equal error"] for r in rows if r["tol"] == tol and r["speed-up, equal error"] == r["speed-up, equal error"]]
        if sp:
            print(f"tol {tol:g}: speed-up geometric mean {math.exp(np.mean(np.log(sp))):.2f} at the same tolerance"
                  + (f", {math.exp(np.mean(np.log(eq))):.2f} at equal error" if eq else ""), flush=True)
    meta = {"machine": machine_note("cpu"), "eps": EPS, "race_tols": RACE_TOLS, "sweep_tols": SWEEP_TOLS, "repeats": repeats,
            "command": "python -m benchmarks.likelihood_anchor --anchor PATH" + (" --quick" if args.quick else "")
            + "".join(f" --ckpt {c}" for c in args.ckpt)}
    table = write_results(out, "likelihood_anchor", rows, meta)
    print(f"\n{table}\nwrote {out}/likelihood_anchor.{{md,csv,json}} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
