"""Training benchmark: step overhead on the 2-D ring, and digits (8x8) bits/dim against Gaussian baselines.

1. Ring throughput (CPU by default): steps/s of the full training step (loss,
   backward, clipping, AdamW, EMA, batch draw) against the bare forward +
   backward of the same loss on the same batch, interleaved, best of 15 blocks
   (medians reported beside). Target: full ≤ 1.2 × bare.
2. Digits: a score network (`--net mlp`, the default: a residual MLP 256x3 on the
   64 flattened pixels, "v" output, likelihood weighting with importance-sampled t,
   dropout 0.1, EMA 0.999; the MLP does ~10x more steps per CPU second than the
   U-Net; or `--net unet`) trained for a wall-clock budget (15 min in full mode, CPU),
   test bits/dim through the probability-flow ODE (Hutchinson, rtol=atol=1e-5),
   next to a diagonal-Gaussian and a full-covariance-Gaussian fit of the same
   dequantised training data, on the same test images. Target: beat both.
   Bits/dim are of the continuous density in the [-1, 1] scaling; the discrete
   (0..16 levels) figure adds log2(17/2) ≈ 3.09.

3. KL(p‖q) (`--part kl`): a model trained from an .npz of an oracle mixture (the 8-mode ring of radius 0.75 and
   std 0.08, a 4x4 grid, an 8-D full-covariance mixture) for 4000 steps, under the defaults and the
   alternatives in RECIPES; KL from the exact-divergence ODE likelihood of 3000 held-out points, and MMD² of
   1000 dpm_solver samples in standard errors, and the training's process CPU seconds. `--problems ring,grid
   --recipes defaults,v-lik-is` for a subset, `--seeds 0,1` for the spread over training seeds. "old-defaults" is the
   recipe the defaults replaced; the other alternatives were measured one factor at a time (README, Training).

    python -m benchmarks.training [--quick] [--part all|ring|digits|kl] [--out DIR] [--device cpu] [--net mlp|unet] [--budget S] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks._common import machine_note, markdown_table, out_dir, sync, write_results  # noqa: E402  (pins BLAS threads)

import torch  # noqa: E402


def ring_throughput(device: str, quick: bool) -> list[dict]:
    from scoresde.config import TrainConfig
    from scoresde.losses import dsm_loss_per_sample
    from scoresde.train import Trainer

    rows = []
    for hidden, batch in ((256, 512),) if quick else ((128, 256), (256, 512), (256, 2048)):
        tr = Trainer(TrainConfig(data="ring", hidden=hidden, batch_size=batch, out="", device=device, final_eval=False), progress=False)
        n_iter, reps = (8, 2) if quick else (30, 15)
        for _ in range(10):
            tr.train_step()
        x0, t, noise, _ = tr.global_batch(0)

        def bare():
            c = tr.config  # the same loss as the step's (weighting and importance weights), so only the overhead differs
            loss = dsm_loss_per_sample(tr.model, tr.sde, x0, t=t, noise=noise, weighting=c.weighting,
                                       importance_sampling=c.importance_sampling, eps=c.eps).mean()
            tr.opt.zero_grad(set_to_none=True)
            loss.backward()

        full_s, bare_s = [], []
        for _ in range(reps):  # interleaved, so a noisy neighbour hits both alike
            for fn, acc in ((tr.train_step, full_s), (bare, bare_s)):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(n_iter):
                    fn()
                sync(device)
                acc.append((time.perf_counter() - t0) / n_iter)
        # Best of the interleaved repeats: on a shared machine the fastest block of each is the one least hit by
        # other jobs (bursts land on one side or the other and swing a median ratio by ±0.1); the medians are kept too.
        f, b = min(full_s), min(bare_s)
        n_par = sum(p.numel() for p in tr.model.parameters())
        rows.append({"net": f"MLP {hidden}x3 ({n_par / 1e3:.0f}k params)", "batch": batch, "full step/s": 1 / f,
                     "bare fwd+bwd/s": 1 / b, "full/bare time": f / b, "target ≤ 1.2": "yes" if f / b <= 1.2 else "NO",
                     "median full/bare": statistics.median(full_s) / statistics.median(bare_s)})
    return rows


def gaussian_bpd(train: torch.Tensor, test: torch.Tensor, full: bool) -> torch.Tensor:
    """Test bits/dim of the maximum-likelihood Gaussian (diagonal or full covariance) fitted to `train`."""
    xtr, xte = train.flatten(1).double(), test.flatten(1).double()
    mu = xtr.mean(0)
    if full:
        cov = torch.cov(xtr.T) + 1e-9 * torch.eye(xtr.shape[1], dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov)
        logp = dist.log_prob(xte)
    else:
        logp = torch.distributions.Normal(mu, xtr.std(0)).log_prob(xte).sum(1)
    return -logp / (xte.shape[1] * math.log(2))


def digits(device: str, quick: bool, budget_s: float, net: str = "mlp") -> tuple[list[dict], dict]:
    from scoresde.config import TrainConfig
    from scoresde.data import load_data
    from scoresde.likelihood import bits_per_dim, log_likelihood
    from scoresde.train import Trainer

    data = load_data("digits")
    size = dict(hidden=128, n_blocks=2) if quick else dict(hidden=256, n_blocks=3, dropout=0.1)
    # "v" output: at large t the network's share of the score is damped by m(t), so an eps-output net's
    # off-data extrapolation cannot blow the ODE up (eps output, 512x3: z ~ 1e22 for 2/180 test images
    # after 600 s -> log p_T(z) = -inf). Likelihood weighting with importance sampling: the loss is the
    # bound on -log p that bits/dim measure.
    cfg = TrainConfig(data="digits", net=net, batch_size=128, channels=32, lr=1e-3, ema_decay=0.999 if not quick else 0.99,
                      warmup=100, out="", device=device, final_eval=False, seed=0, parameterization="v",
                      weighting="likelihood", importance_sampling=True, eps=1e-5, **size)
    tr = Trainer(cfg, progress=False)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        tr.train_step()
    train_s = time.perf_counter() - t0
    model = tr.ema.module.eval()
    n_test = 16 if quick else len(data.test)
    x = data.test[:n_test].to(device)
    t1 = time.perf_counter()
    res = log_likelihood(tr.sde, model, x, divergence="hutchinson", generator=torch.Generator(device=device).manual_seed(0),
                         rtol=1e-3 if quick else 1e-5, atol=1e-3 if quick else 1e-5)
    lik_s = time.perf_counter() - t1
    bpd = bits_per_dim(res.logp, x.shape[1:]).double().cpu()
    diag = gaussian_bpd(data.train, data.test[:n_test], full=False)
    full = gaussian_bpd(data.train, data.test[:n_test], full=True)
    offset = math.log2(17 / 2)

    def row(name, v, note=""):
        return {"model": name, "test bits/dim": float(v.mean()), "± se": float(v.std() / math.sqrt(len(v))),
                "median": float(v.median()), "discrete bits/dim": float(v.mean()) + offset, "note": note}

    rows = [
        row("diagonal Gaussian", diag),
        row("full-covariance Gaussian", full),
        row(f"{'U-Net' if net == 'unet' else 'MLP'} score model, {tr.step} steps", bpd,
            f"{train_s:.0f} s training, ODE {res.nfe} NFE, {lik_s:.0f} s, max |z| {float(res.z.abs().max()):.3g}"),
    ]
    n_bad = int((~torch.isfinite(bpd)).sum())
    beats = n_bad == 0 and float(bpd.mean()) < float(full.mean()) and float(bpd.mean()) < float(diag.mean())
    meta = {"steps": tr.step, "train_s": train_s, "n_test": n_test, "beats_both_gaussians": beats, "non_finite_test_images": n_bad,
            "params": sum(p.numel() for p in model.parameters()),
            "config": {k: v for k, v in cfg.to_dict().items() if k in ("net", "hidden", "n_blocks", "dropout", "parameterization", "weighting",
                                                                         "importance_sampling", "eps", "lr", "batch_size", "ema_decay", "warmup", "grad_clip", "sde")}}
    return rows, meta


# -- KL(p‖q) of trained models on oracle mixtures: how the default recipe was chosen -----------------------

def kl_problems():
    """Mixtures whose log-density is exact: the issue's 8-mode ring (std 0.08, radius 0.75), a 4x4 grid, and an
    8-D full-covariance mixture."""
    import scoresde

    return {
        "ring": ("ring 8 modes (r 0.75, std 0.08)", scoresde.ring8(radius=0.75, std=0.08)),
        "grid": ("grid 4x4 (spacing 0.5, std 0.06)", scoresde.grid_mixture(4, 0.5, 0.06)),
        "full8": ("8-D full-cov mixture (6 modes)", scoresde.random_mixture(8, 6, cov="full", seed=3)),
    }


# The alternatives below were measured from the old defaults: they restate the old t sampling, eps and EMA.
_OLD = {"t_sampling": "iid", "eps": 1e-5, "ema_decay": 0.995}
_VLI = {**_OLD, "parameterization": "v", "weighting": "likelihood", "importance_sampling": True}
# (name, TrainConfig overrides): the defaults first, then the alternatives measured against them
RECIPES = {
    "defaults": ("defaults (v output, likelihood + IS, stratified t, eps 1e-3, EMA 0.999)", {}),
    "old-defaults": ("the defaults before: eps output, σ² weighting, iid t, eps 1e-5, EMA 0.995",
                     {"parameterization": "eps", "weighting": "sigma2", "importance_sampling": False, "t_sampling": "iid",
                      "eps": 1e-5, "ema_decay": 0.995}),
    "v-lik-is": ("v output, likelihood weighting, importance-sampled t",
                 {"parameterization": "v", "weighting": "likelihood", "importance_sampling": True}),
    "v-lik-is-cosine": ("v, likelihood + IS, cosine lr", {"parameterization": "v", "weighting": "likelihood",
                                                          "importance_sampling": True, "lr_schedule": "cosine"}),
    "v-sigma2": ("v output, σ² weighting", {**_OLD, "parameterization": "v", "weighting": "sigma2", "importance_sampling": False}),
    "v-lik-is-ema999": ("v, likelihood + IS, EMA 0.999", {**_VLI, "ema_decay": 0.999}),
    "v-lik-is-strat": ("v, likelihood + IS, stratified t", {**_VLI, "t_sampling": "stratified"}),
    "v-lik-is-lr2e-3": ("v, likelihood + IS, lr 2e-3", {**_VLI, "lr": 2e-3}),
    "v-lik-is-strat-ema999": ("v, likelihood + IS, stratified t, EMA 0.999", {**_VLI, "t_sampling": "stratified", "ema_decay": 0.999}),
    "v-lik-is-strat-ema999-eps1e-3": ("v, likelihood + IS, stratified t, EMA 0.999, eps 1e-3",
                                      {**_VLI, "t_sampling": "stratified", "ema_decay": 0.999, "eps": 1e-3}),
    "defaults-lr2e-3": ("the defaults with lr 2e-3", {"lr": 2e-3}),
    "defaults-batch640": ("the defaults with batch 640", {"batch_size": 640}),
    "v-lik-is-strat-ema999-4blocks": ("v, likelihood + IS, stratified t, EMA 0.999, 4 blocks",
                                      {**_VLI, "t_sampling": "stratified", "ema_decay": 0.999, "n_blocks": 4}),
}


def kl_of_recipe(mix, overrides: dict, steps: int, n_test: int, folder, device: str, seed: int = 0) -> dict:
    """Train on 50 000 points of `mix` through an .npz file (as a user would), then KL(p‖q) = E_p[log p - log q]
    on held-out points with the exact-divergence ODE likelihood, and MMD² of 1000 dpm_solver samples."""
    import numpy as np

    import scoresde
    from scoresde.config import TrainConfig
    from scoresde.metrics import mmd2
    from scoresde.train import Trainer

    path = Path(folder) / "data.npz"
    np.savez(path, x=mix.sample(50000, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float().numpy())
    cfg = TrainConfig(data=str(path), steps=steps, out="", device=device, final_eval=False, seed=seed, **overrides)
    tr = Trainer(cfg, progress=False)
    # Process CPU time as well as wall time: on a shared machine the wall clock measures the neighbours too.
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        tr.train_step()
    sync(device)
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    model, sde = tr.ema.module.eval(), tr.sde
    x = mix.sample(n_test, generator=torch.Generator().manual_seed(7), dtype=torch.float32).to(device)
    res = scoresde.log_likelihood(sde, model, x, divergence="exact")
    gap = (mix.log_prob(x.double().cpu()) - res.logp.double().cpu())
    xs = scoresde.sample(sde, model, (1000,) + tuple(x.shape[1:]), sampler="dpm_solver", steps=20,
                         generator=torch.Generator(device=device).manual_seed(1), device=device).double().cpu()
    ref = mix.sample(1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    m = mmd2(xs, ref)
    return {"KL(p‖q) nats": float(gap.mean()), "± se": float(gap.std() / math.sqrt(len(gap))),
            "MMD²/se": float(m.value / m.stderr), "train CPU s": train_cpu, "train wall s": train_s}


def recipes(device: str, quick: bool, problems=None, names=None, seeds=(0,), steps=None) -> list[dict]:
    import tempfile

    steps, n_test = (steps or 150, 64) if quick else (steps or 4000, 3000)
    rows = []
    table = kl_problems()
    for key in problems or (["ring"] if quick else list(table)):
        pname, mix = table[key]
        for rkey in names or (["defaults", "old-defaults"] if quick else list(RECIPES)):
            rname, over = RECIPES[rkey]
            for seed in seeds:
                with tempfile.TemporaryDirectory() as d:
                    r = kl_of_recipe(mix, over, steps, n_test, d, device, seed)
                rows.append({"data": pname, "recipe": rkey, "what": rname, "changed": str(over or "(none)"), "steps": steps, "seed": seed, **r})
                print(f"  {pname} | {rkey} seed {seed}: KL {r['KL(p‖q) nats']:.4f} ± {r['± se']:.4f}, MMD²/se {r['MMD²/se']:.1f}, "
                      f"{r['train CPU s']:.0f} CPU s ({r['train wall s']:.0f} s wall)", flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (well under a minute)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=float, default=None, help="digits training seconds (default 900, quick 5)")
    p.add_argument("--net", choices=("mlp", "unet"), default="mlp", help="digits network (default mlp)")
    p.add_argument("--part", choices=("all", "ring", "digits", "kl"), default="all",
                   help="ring: step overhead; digits: bits/dim; kl: KL(p‖q) of the default recipe and its alternatives on oracle mixtures (default: all)")
    p.add_argument("--problems", default=None, help=f"kl: comma list of {', '.join(['ring', 'grid', 'full8'])} (default all)")
    p.add_argument("--recipes", default=None, help="kl: comma list of recipe keys (default all; see RECIPES)")
    p.add_argument("--seeds", default="0", help="kl: comma list of training seeds (default 0)")
    p.add_argument("--steps", type=int, default=None, help="kl: training steps (default 4000, quick 150)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on cpu: 1 — on small shared machines extra threads spin and thrash; the ratio is what is measured)")
    args = p.parse_args(argv)
    out = out_dir(args.out)
    budget = args.budget if args.budget is not None else (5.0 if args.quick else 900.0)
    threads = args.threads or (1 if torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)

    if args.part in ("all", "kl"):
        print("## KL(p‖q) of trained models on mixtures with exact log-density (4000 steps from an .npz, as `scoresde train`)\n", flush=True)
        split = lambda v: v.split(",") if v else None  # noqa: E731
        kl = recipes(args.device, args.quick, split(args.problems), split(args.recipes), tuple(int(s) for s in args.seeds.split(",")), args.steps)
        tag = "" if not (args.problems or args.recipes) else "_" + "_".join(filter(None, (args.problems, args.recipes))).replace(",", "-")
        if args.seeds != "0" or args.steps:
            tag += f"_s{args.seeds.replace(',', '-')}" + (f"_n{args.steps}" if args.steps else "")
        print(write_results(out, f"training_kl{tag}", kl, {"machine": machine_note(args.device), "quick": args.quick}))
        if args.part == "kl":
            return 0
    if args.part in ("all", "ring"):
        ring = ring_throughput(args.device, args.quick)
        t1 = write_results(out, "training_throughput", ring, {"machine": machine_note(args.device), "quick": args.quick})
        print("## Ring: full training step vs bare forward+backward (best of interleaved repeats)\n")
        print(t1)
    if args.part == "ring":
        return 0
    rows, meta = digits(args.device, args.quick, budget, args.net)
    t2 = write_results(out, "training_digits", rows, {"machine": machine_note(args.device), "quick": args.quick, **meta})
    print("\n## Digits 8x8: test bits/dim (continuous, [-1, 1] scale; discrete adds log2(8.5))\n")
    print(t2)
    print(f"\nThe score model beats both Gaussian fits: {'yes' if meta['beats_both_gaussians'] else 'NO'}  ({machine_note(args.device)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
