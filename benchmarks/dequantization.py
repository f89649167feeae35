"""Bits/dim of the 180 test digits on the discrete scale: uniform dequantisation (k = 1, the ELBO), its
importance-weighted bound (k = 8) and i-DODE's truncated-normal dequantisation, on one trained score model.

Digits are 17 levels per pixel; the loader maps them to [-1, 1] with bins of
width w = 2/17, and the trainer learns the uniformly dequantised density. Each
row is a lower bound (up to Hutchinson noise, see below) on log P(k) of a
discrete model made from the same score model: the uniform rows on the bins
B_k of p_eps, the truncated-normal rows at time τ on the bins m(τ) B_k of p_τ
(i-DODE's), so a lower bits/dim is a better bound or a better discrete model.
Differences are paired over the same points. The truncated normal is evaluated
at τ = eps (the ODE's start; i-DODE starts at its model's smallest time) and
at the τ where its truncation a = m (w/2)/σ is 3 (what i-DODE's smallest time
gives on CIFAR-10's 256 levels) or √3 (noise std of the uniform's, w/√12).

    python -m scoresde train --data digits --net mlp --steps 8000 --batch-size 128 --out runs/digits-mlp
    python -m benchmarks.dequantization --ckpt runs/digits-mlp [--n 180] [--samples 8] [--probes 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks._common import machine_note, out_dir, write_results

import torch  # noqa: E402  (after _common pinned the BLAS threads)

import scoresde  # noqa: E402
from scoresde.data import load_data  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dequantization", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a digits run folder (scoresde train --data digits ...)")
    p.add_argument("--n", type=int, default=180, help="test digits (the split has 180)")
    p.add_argument("--samples", type=int, default=8, help="K: draws per point (bounds for every k dividing K)")
    p.add_argument("--probes", type=int, default=16, help="Hutchinson probes per row")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, sde = scoresde.load(args.ckpt, device=device)
    data = load_data("digits")
    levels, w = int(round(2 / data.step)), data.step
    codes = torch.round((data.test_raw[: args.n] + 1) / data.step).long().to(device)
    D, eps = codes[0].numel(), sde.default_likelihood_eps
    K = args.samples
    P = args.probes
    # One solve of K draws per point per configuration gives every k-sample bound, k | K: the mean over the K/k
    # disjoint groups of log-mean-exp of k log weights (k = 1: the ELBO, estimated with K draws, not one). With
    # Hutchinson's estimator, exp of a noisy log p is biased up (by up to half the variance: ~7.5 nats sd per
    # point with one probe on this model), so every row averages P probes per row (variance / P).
    configs = [
        ("uniform", eps, "uniform"),
        ("truncated-normal", eps, "truncated normal, τ = eps (the ODE's start)"),
        ("truncated-normal", scoresde.truncated_normal_time(sde, levels, (-1, 1), 3.0), "truncated normal, a = 3 (i-DODE's CIFAR-10 a)"),
        ("truncated-normal", scoresde.truncated_normal_time(sde, levels, (-1, 1), math.sqrt(3)), "truncated normal, a = √3"),
    ]
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= K and K % k == 0]
    print(f"# digits: {len(codes)} test points, {levels} levels, D={D}, K={K}, {P} probes; {machine_note(device)}", flush=True)
    rows, base = [], None
    for deq, tau, name in configs:
        g = torch.Generator(device=device).manual_seed(args.seed)
        m, s = (float(v[0]) for v in sde.marginal_coefs(torch.tensor([tau], dtype=torch.float64)))
        t0 = time.perf_counter()
        res = scoresde.discrete_bits_per_dim(sde, model, codes, levels=levels, data_range=(-1, 1), dequantization=deq,
                                             samples=K, eps=tau, generator=g, divergence="hutchinson", n_probes=P)
        secs = time.perf_counter() - t0
        log_w = res.log_weights.double().cpu()
        for k in ks:
            bound = (torch.logsumexp(log_w.reshape(len(codes), K // k, k), -1) - math.log(k)).mean(1)
            bpd = -bound / (D * math.log(2))
            if base is None:
                base = bpd  # uniform, k = 1
            diff = bpd - base
            rows.append({
                "dequantisation": name, "k": k, "τ": f"{tau:.3g}", "a = m w/(2σ)": f"{m * w / 2 / s:.3g}",
                "bits/dim": round(float(bpd.mean()), 3), "± se": round(float(bpd.std() / math.sqrt(len(bpd))), 3),
                "vs uniform k=1 (paired)": "" if diff.abs().max() == 0 else
                f"{float(diff.mean()):+.3f} ± {float(diff.std() / math.sqrt(len(diff))):.3f}",
                "NFE": res.nfe, "wall s": round(secs, 1),
            })
            print(rows[-1], flush=True)
    out = out_dir(args.out)
    meta = {"machine": machine_note(device), "ckpt": str(args.ckpt), "n": len(codes), "levels": levels, "seed": args.seed,
            "divergence": "hutchinson, Rademacher",
            "command": f"python -m benchmarks.dequantization --ckpt {args.ckpt} --n {args.n} --samples {K} --probes {P}"}
    table = write_results(out, "dequantization", rows, meta)
    print(f"\n{table}\nwrote {out}/dequantization.{{md,csv,json}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
