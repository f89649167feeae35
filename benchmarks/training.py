"""Training benchmark: step overhead on the 2-D ring, and digits (8x8) bits/dim against Gaussian baselines.

1. Ring throughput (CPU by default): steps/s of the full training step (loss,
   backward, clipping, AdamW, EMA, batch draw) against the bare forward +
   backward of the same loss on the same batch, interleaved, best of 15 blocks
   (medians reported beside). Target: full ≤ 1.2 × bare.
2. Digits: a score network (`--net mlp`, the default: a residual MLP 256x3 on the
   64 flattened pixels, dropout 0.1; or `--net unet`: the U-Net at 16 channels, mults (1, 2), one residual
   block per level, attention only in the middle block), both with "v" output, likelihood weighting with
   importance-sampled t, EMA 0.999 (DIGITS_RECIPE), trained for a budget of this process's CPU seconds
   (`--budget`, 900 by default; a comma list measures at each point of one run; `--set FIELD=VALUE`
   overrides the recipe), test bits/dim through the probability-flow ODE (Hutchinson, rtol=atol=1e-5),
   next to a diagonal-Gaussian and a full-covariance-Gaussian fit of the same
   dequantised training data, on the same test images. Target: beat both.
   Bits/dim are of the continuous density in the [-1, 1] scaling; the discrete
   (0..16 levels) figure adds log2(17/2) ≈ 3.09.
2b. U-Net step (`--part unet`): the full training step against the bare forward + backward, plain,
   channels-last and `torch.compile`, on the digits U-Net and on a 3x32x32 U-Net (CPU time on the CPU).

3. KL(p‖q) (`--part kl`): a model trained from an .npz of an oracle mixture (the 8-mode ring of radius 0.75 and
   std 0.08, a 4x4 grid, an 8-D full-covariance mixture) for 4000 steps, under the defaults and the
   alternatives in RECIPES; KL from the exact-divergence ODE likelihood of 3000 held-out points, and MMD² of
   1000 dpm_solver samples in standard errors, and the training's process CPU seconds. `--problems ring,grid
   --recipes defaults,v-lik-is` for a subset, `--seeds 0,1` for the spread over training seeds. "old-defaults" is the
   recipe the defaults replaced; the other alternatives were measured one factor at a time (README, Training).

    python -m benchmarks.training [--quick] [--part all|ring|unet|digits|kl] [--out DIR] [--device cpu] [--net mlp|unet]
                                  [--budget S[,S...]] [--set FIELD=VALUE] [--tag T] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks._common import machine_note, markdown_table, out_dir, sync, write_results  # noqa: E402  (pins BLAS threads)

import torch  # noqa: E402


def step_overhead(tr, device: str, n_iter: int, reps: int) -> tuple[float, float, float, float]:
    """`(full s, bare s, median full s, median bare s)` per step: the trainer's whole step (batch draw, loss,
    backward, clipping, AdamW, EMA) against the bare forward + backward of the same loss on one fixed batch,
    through the same (possibly compiled) forward, in interleaved blocks of `n_iter` calls."""
    from scoresde.losses import dsm_loss_per_sample

    c = tr.config
    x0, t, noise, _ = tr.global_batch(0)
    if tr.channels_last:
        x0, noise = x0.contiguous(memory_format=torch.channels_last), noise.contiguous(memory_format=torch.channels_last)

    def bare():
        loss = dsm_loss_per_sample(tr._forward, tr.sde, x0, t=t, noise=noise, weighting=c.weighting,
                                   importance_sampling=c.importance_sampling, eps=c.eps).mean()
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()

    for _ in range(3):  # warm-up (and, with compile, the compilation itself)
        tr.train_step()
        bare()
    # On the CPU, this process's CPU time (one torch thread): on a shared machine the wall clock also counts
    # the time other jobs hold the cores (seen: 10x the CPU time with 5 jobs on 2 cores). CUDA: wall time.
    clock = time.process_time if torch.device(device).type == "cpu" else time.perf_counter
    full_s, bare_s = [], []
    for _ in range(reps):  # interleaved, so a noisy neighbour hits both alike
        for fn, acc in ((tr.train_step, full_s), (bare, bare_s)):
            sync(device)
            t0 = clock()
            for _ in range(n_iter):
                fn()
            sync(device)
            acc.append((clock() - t0) / n_iter)
    # Best of the interleaved repeats: on a shared machine the fastest block of each is the one least hit by
    # other jobs (bursts land on one side or the other and swing a median ratio by ±0.1); the medians are kept too.
    return min(full_s), min(bare_s), statistics.median(full_s), statistics.median(bare_s)


def ring_throughput(device: str, quick: bool) -> list[dict]:
    from scoresde.config import TrainConfig
    from scoresde.train import Trainer

    rows = []
    for hidden, batch in ((256, 640),) if quick else ((128, 256), (256, 640), (256, 2048)):
        tr = Trainer(TrainConfig(data="ring", hidden=hidden, batch_size=batch, out="", device=device, final_eval=False), progress=False)
        for _ in range(7):
            tr.train_step()
        f, b, fm, bm = step_overhead(tr, device, *((8, 2) if quick else (30, 15)))
        n_par = sum(p.numel() for p in tr.model.parameters())
        rows.append({"net": f"MLP {hidden}x3 ({n_par / 1e3:.0f}k params)", "batch": batch, "full step/s": 1 / f,
                     "bare fwd+bwd/s": 1 / b, "full/bare time": f / b, "target ≤ 1.2": "yes" if f / b <= 1.2 else "NO",
                     "median full/bare": fm / bm})
    return rows


def unet_throughput(device: str, quick: bool, folder) -> list[dict]:
    """The U-Net's step overhead, and channels-last and `torch.compile` against the plain step: on the digits
    (8x8, the benchmark's digits U-Net) and on random 3x32x32 images (an .npz, the U-Net at channels 32,
    mults (1, 2, 2)). Each variant is its own Trainer with the same seed, so the same weights and batches."""
    import numpy as np

    from scoresde.config import TrainConfig
    from scoresde.train import Trainer

    path = Path(folder) / "rgb32.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, size=(512, 3, 32, 32), dtype=np.uint8))
    cases = [("digits 8x8", dict(data="digits", **DIGITS_RECIPE, **DIGITS_NET["unet"])),
             ("3x32x32", {**DIGITS_RECIPE, "data": str(path), "channels": 32, "channel_mults": (1, 2, 2), "num_res_blocks": 1,
                          "attention_levels": (-1,), "batch_size": 32})]
    variants = [("plain", {}), ("channels_last", {"channels_last": True})]
    if not quick:
        variants.append(("compile", {"compile": True}))
    rows = []
    for name, kw in cases[:1] if quick else cases:
        base = None
        for vname, over in variants:
            cfg = TrainConfig(**{**kw, "net": "unet", "out": "", "device": device, "final_eval": False, "channels_last": False, **over})
            tr = Trainer(cfg, progress=False)
            try:
                f, b, fm, bm = step_overhead(tr, device, *((2, 2) if quick else (4, 5)))
            except Exception as e:  # compile without a working toolchain fails at the first call
                rows.append({"data": name, "variant": vname, "note": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:120]}"})
                continue
            base = f if base is None else base
            n_par = sum(p.numel() for p in tr.model.parameters())
            rows.append({"data": name, "variant": vname, "params": f"{n_par / 1e3:.0f}k", "batch": cfg.batch_size,
                         "full step ms": 1e3 * f, "bare fwd+bwd ms": 1e3 * b, "full/bare time": f / b,
                         "median full/bare": fm / bm, "step time / plain": f / base, "note": ""})
            print(f"  U-Net {name} {vname}: {1e3 * f:.1f} ms/step, bare {1e3 * b:.1f} ms, full/bare {f / b:.3f}", flush=True)
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


# The digits recipe shared by both networks: "v" output (at large t the network's share of the score is damped
# by m(t), so an eps-output net's off-data extrapolation cannot blow the ODE up: eps output, MLP 512x3, gave
# z ~ 1e22 for 2/180 test images after 600 s -> log p_T(z) = -inf); likelihood weighting with importance
# sampling (the loss is the bound on -log p that bits/dim measure). Given explicitly, so that changes to
# TrainConfig's defaults do not change this benchmark.
DIGITS_RECIPE = dict(batch_size=128, lr=1e-3, ema_decay=0.999, warmup=100, parameterization="v",
                     weighting="likelihood", importance_sampling=True, eps=1e-5, sde="vp")
DIGITS_NET = {
    "mlp": dict(hidden=256, n_blocks=3, dropout=0.1),
    # Chosen by equal-CPU-time runs (README "Images"): at 200 CPU s, 16 channels with one residual block per level
    # and no attention outside the middle block matched 32 channels (-1.128 vs -1.122 ± 0.019 bits/dim) at half the
    # step's cost (the step is compute-bound: convolutions are ~60% of it) and less than half the ODE evaluation's.
    "unet": dict(channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=()),
}
DIGITS_NET_QUICK = {"mlp": dict(hidden=128, n_blocks=2), "unet": dict(channels=16, num_res_blocks=1, attention_levels=())}


def digits(device: str, quick: bool, budgets: Sequence[float], net: str = "mlp", overrides: Optional[dict] = None):
    """Train on digits and, each time this process's training CPU time (`time.process_time`: what "CPU minutes"
    means on a shared machine, where other jobs' load stretches the wall time, not this; wall time on CUDA)
    passes a value in `budgets`, measure the EMA model's test bits/dim (outside the training clock). Yields
    `(rows, meta)` after each budget, the rows so far (the Gaussian baselines first)."""
    from scoresde.config import TrainConfig
    from scoresde.data import load_data
    from scoresde.likelihood import bits_per_dim, log_likelihood
    from scoresde.train import Trainer

    data = load_data("digits")
    size = (DIGITS_NET_QUICK if quick else DIGITS_NET)[net]
    recipe = dict(DIGITS_RECIPE, ema_decay=0.99) if quick else DIGITS_RECIPE
    cfg = TrainConfig(**{**dict(data="digits", net=net, out="", device=device, final_eval=False, seed=0), **recipe, **size,
                         **(overrides or {})})
    tr = Trainer(cfg, progress=False)
    n_test = 16 if quick else len(data.test)
    x = data.test[:n_test].to(device)
    diag = gaussian_bpd(data.train, data.test[:n_test], full=False)
    full = gaussian_bpd(data.train, data.test[:n_test], full=True)
    offset = math.log2(17 / 2)

    def row(name, v, note=""):
        return {"model": name, "test bits/dim": float(v.mean()), "± se": float(v.std() / math.sqrt(len(v))),
                "median": float(v.median()), "discrete bits/dim": float(v.mean()) + offset, "note": note}

    rows = [row("diagonal Gaussian", diag), row("full-covariance Gaussian", full)]
    meta = {"n_test": n_test, "params": sum(p.numel() for p in tr.model.parameters()),
            "config": {k: v for k, v in cfg.to_dict().items() if k in ("net", "parameterization", "weighting", "importance_sampling", "eps",
                                                                         "lr", "batch_size", "ema_decay", "warmup", "grad_clip", "sde",
                                                                         "channels_last", "compile", *size, *(overrides or {}))},
            "budgets": []}
    clock = time.process_time if torch.device(device).type == "cpu" else time.perf_counter
    train_s = wall_s = 0.0
    for budget_s in sorted(budgets):
        t0, w0 = clock(), time.perf_counter()
        while train_s + (clock() - t0) < budget_s:
            tr.train_step()
        sync(device)
        train_s, wall_s = train_s + clock() - t0, wall_s + time.perf_counter() - w0
        model = tr.ema.module.eval()
        t1 = time.perf_counter()
        with torch.enable_grad():
            res = log_likelihood(tr.sde, model, x, divergence="hutchinson", generator=torch.Generator(device=device).manual_seed(0),
                                 rtol=1e-3 if quick else 1e-5, atol=1e-3 if quick else 1e-5)
        lik_s = time.perf_counter() - t1
        bpd = bits_per_dim(res.logp, x.shape[1:]).double().cpu()
        rows.append(row(f"{'U-Net' if net == 'unet' else 'MLP'} score model, {tr.step} steps", bpd,
                        f"{train_s:.0f} CPU s training ({wall_s:.0f} s wall), ODE {res.nfe} NFE, {lik_s:.0f} s, max |z| {float(res.z.abs().max()):.3g}"))
        n_bad = int((~torch.isfinite(bpd)).sum())
        beats = n_bad == 0 and float(bpd.mean()) < float(full.mean()) and float(bpd.mean()) < float(diag.mean())
        meta["budgets"].append({"budget_s": budget_s, "steps": tr.step, "train_cpu_s": train_s, "train_wall_s": wall_s,
                                "beats_both_gaussians": beats, "non_finite_test_images": n_bad})
        meta.update(meta["budgets"][-1])
        yield rows, meta


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


# The alternatives below were measured from the old defaults: they restate the old t sampling, eps, EMA and
# batch (512 before batch 640 became the default).
_OLD = {"t_sampling": "iid", "eps": 1e-5, "ema_decay": 0.995, "batch_size": 512}
_VLI = {**_OLD, "parameterization": "v", "weighting": "likelihood", "importance_sampling": True}
# (name, TrainConfig overrides): the defaults first, then the alternatives measured against them
RECIPES = {
    "defaults": ("defaults (v output, likelihood + IS, stratified t, eps 1e-3, EMA 0.999, batch 640)", {}),
    "old-defaults": ("the defaults before: eps output, σ² weighting, iid t, eps 1e-5, EMA 0.995",
                     {"parameterization": "eps", "weighting": "sigma2", "importance_sampling": False, "t_sampling": "iid",
                      "eps": 1e-5, "ema_decay": 0.995, "batch_size": 512}),
    "v-lik-is": ("v output, likelihood weighting, importance-sampled t",
                 {"parameterization": "v", "weighting": "likelihood", "importance_sampling": True, "batch_size": 512}),
    "v-lik-is-cosine": ("v, likelihood + IS, cosine lr", {"parameterization": "v", "weighting": "likelihood",
                                                          "importance_sampling": True, "lr_schedule": "cosine", "batch_size": 512}),
    "v-sigma2": ("v output, σ² weighting", {**_OLD, "parameterization": "v", "weighting": "sigma2", "importance_sampling": False}),
    "v-lik-is-ema999": ("v, likelihood + IS, EMA 0.999", {**_VLI, "ema_decay": 0.999}),
    "v-lik-is-strat": ("v, likelihood + IS, stratified t", {**_VLI, "t_sampling": "stratified"}),
    "v-lik-is-lr2e-3": ("v, likelihood + IS, lr 2e-3", {**_VLI, "lr": 2e-3}),
    "v-lik-is-strat-ema999": ("v, likelihood + IS, stratified t, EMA 0.999", {**_VLI, "t_sampling": "stratified", "ema_decay": 0.999}),
    "v-lik-is-strat-ema999-eps1e-3": ("v, likelihood + IS, stratified t, EMA 0.999, eps 1e-3",
                                      {**_VLI, "t_sampling": "stratified", "ema_decay": 0.999, "eps": 1e-3}),
    "defaults-lr2e-3": ("the defaults (batch 512) with lr 2e-3", {"batch_size": 512, "lr": 2e-3}),
    "defaults-batch512": ("the defaults with batch 512 (the defaults before batch 640)", {"batch_size": 512}),
    "defaults-cosine": ("the defaults (batch 512) with a cosine learning-rate decay", {"batch_size": 512, "lr_schedule": "cosine"}),
    "defaults-cosine-lr2e-3": ("the defaults (batch 512) with a cosine decay from lr 2e-3",
                               {"batch_size": 512, "lr_schedule": "cosine", "lr": 2e-3}),
    "defaults-eps3e-3": ("the defaults (batch 512) with eps 3e-3", {"batch_size": 512, "eps": 3e-3}),
    "defaults-lr5e-4": ("the defaults (batch 512) with lr 5e-4", {"batch_size": 512, "lr": 5e-4}),
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


def recipes(device: str, quick: bool, problems=None, names=None, seeds=(0,), steps=None, n_test=None) -> list[dict]:
    import tempfile

    steps, n_test = (steps or 150, n_test or 64) if quick else (steps or 4000, n_test or 3000)
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


def _parse_sets(items: Sequence[str]) -> dict:
    """`["channels=16", "attention_levels=[]"]` -> `{"channels": 16, "attention_levels": []}` (values read as TOML)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")
        out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke-sized run (well under a minute)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", default=None,
                   help="digits training budget in CPU seconds of this process (wall seconds on CUDA; default 900, quick 5); "
                        "a comma list (300,600,900) measures bits/dim at each, in one run")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="digits: override a TrainConfig field of the recipe (TOML value syntax, e.g. channels=16, attention_levels=[]); repeatable")
    p.add_argument("--tag", default="", help="digits: suffix of the result files (training_digits_<net><tag>.md)")
    p.add_argument("--net", choices=("mlp", "unet"), default="mlp", help="digits network (default mlp)")
    p.add_argument("--part", choices=("all", "ring", "unet", "digits", "kl"), default="all",
                   help="ring: the MLP's step overhead; unet: the U-Net's, with channels-last and torch.compile; digits: bits/dim; kl: KL(p‖q) of the default recipe and its alternatives on oracle mixtures (default: all)")
    p.add_argument("--problems", default=None, help=f"kl: comma list of {', '.join(['ring', 'grid', 'full8'])} (default all)")
    p.add_argument("--recipes", default=None, help="kl: comma list of recipe keys (default all; see RECIPES)")
    p.add_argument("--seeds", default="0", help="kl: comma list of training seeds (default 0)")
    p.add_argument("--steps", type=int, default=None, help="kl: training steps (default 4000, quick 150)")
    p.add_argument("--kl-test", type=int, default=None, help="kl: held-out points for KL (default 3000, quick 64)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default on cpu: 1 — on small shared machines extra threads spin and thrash; the ratio is what is measured)")
    args = p.parse_args(argv)
    out = out_dir(args.out)
    budgets = [float(b) for b in args.budget.split(",")] if args.budget else [5.0 if args.quick else 900.0]
    threads = args.threads or (1 if torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)

    if args.part in ("all", "kl"):
        print("## KL(p‖q) of trained models on mixtures with exact log-density (4000 steps from an .npz, as `scoresde train`)\n", flush=True)
        split = lambda v: v.split(",") if v else None  # noqa: E731
        kl = recipes(args.device, args.quick, split(args.problems), split(args.recipes), tuple(int(s) for s in args.seeds.split(",")), args.steps, args.kl_test)
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
    if args.part in ("all", "unet"):
        import tempfile

        print("## U-Net: full training step vs bare forward+backward, channels-last and torch.compile (best of interleaved repeats)\n", flush=True)
        with tempfile.TemporaryDirectory() as d:
            unet = unet_throughput(args.device, args.quick, d)
        print(write_results(out, "training_unet_throughput", unet, {"machine": machine_note(args.device), "quick": args.quick}))
        if args.part == "unet":
            return 0
    name = f"training_digits_{args.net}{args.tag}"
    for rows, meta in digits(args.device, args.quick, budgets, args.net, _parse_sets(args.set)):
        t2 = write_results(out, name, rows, {"machine": machine_note(args.device), "quick": args.quick, **meta})  # after each budget
        print(f"\n## Digits 8x8 after {meta['train_cpu_s']:.0f} s: test bits/dim (continuous, [-1, 1] scale; discrete adds log2(8.5))\n")
        print(t2)
        print(f"\nThe score model beats both Gaussian fits: {'yes' if meta['beats_both_gaussians'] else 'NO'}  ({machine_note(args.device)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
