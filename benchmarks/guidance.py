"""Controllable generation against the exact-score oracle: `python -m benchmarks.guidance [--quick] [--out DIR]`.

1. Inverse problems with an exact posterior (`GaussianMixture.posterior`), every conditioning method
   (replacement, RePaint with 2 and 8 jumps, DPS, ΠGDM, SMC) with the exact unconditional score, against steps
   and particles (batch size), `reverse_diffusion` (SMC also with `euler_maruyama` and `pc` at one setting):
   (a) a 2-D two-mode mixture with unequal weights seen through one coordinate with noise (posterior mode
       weights ≈ 0.10 / 0.90): TV of the posterior mode weights, MMD² ± se to exact posterior samples and the
       two-sample floor (MMD² of two exact sample sets of the same size);
   (b) a correlated 16-D Gaussian with 8 entries inpainted (noise-free): error of the mean and covariance of
       the completed entries against the exact Schur-complement conditional, whitened by it, beside the same
       errors for exact iid samples of the same size (the Monte Carlo floor), and MMD².
   Wall time and NFE per run; SMC's cost per step against unconditioned sampling and a bare score + VJP.
3. (`--part digits`) A class-conditional model trained on the 8x8 digits for `--budget` CPU seconds: at guidance
   scales 0, 1, 2, 4, a logistic regression on the real digits' pixels labels 100 samples per class; accuracy,
   within-class diversity and MMD² to the real class. Writes guidance_digits.* and guidance_digits.png.
2. Labels on the 2-D ring with the exact conditional score: classifier-free guidance (`mix.score_fn(sde)` as
   `f(x, t, y)`) and classifier guidance (`mix.log_prob_y`) at scales 0..4: fraction of samples in the requested
   mode and MMD² to exact samples of that mode (cfg scale 0 and classifier scale 1 are exact).
Writes guidance_a.*, guidance_b.*, guidance_cost.*, guidance_labels.* (md/csv/json) and guidance_error_a.png,
guidance_error_b.png, guidance_scatter.png, guidance_labels.png to the output folder; `--part` runs one part.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Dict, List

import torch

from benchmarks._common import machine_note, out_dir, timed, write_results

import scoresde  # noqa: E402
from scoresde import Inpainting, Observation  # noqa: E402
from scoresde.conditioning import DPS, SMC, PiGDM, RePaint, Replacement  # noqa: E402
from scoresde.guidance import classifier, classifier_free  # noqa: E402
from scoresde.metrics import mmd2  # noqa: E402
from scoresde.oracle import GaussianMixture  # noqa: E402

F64 = torch.float64
METHODS = [
    ("replacement", Replacement),
    ("repaint (2)", lambda: RePaint(jumps=2)),
    ("repaint (8)", lambda: RePaint(jumps=8)),
    ("dps", DPS),
    ("pigdm", PiGDM),
    ("smc", SMC),
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the two inverse problems ---------------------------------------------------------------------------


class Problem:
    """A prior, an observation, the exact posterior and how to score samples against it."""

    name: str
    mix: GaussianMixture
    obs: Observation
    post: GaussianMixture

    def completed(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()

    def floor(self, n: int) -> Dict[str, float]:
        """The metrics of exact iid posterior samples of size `n` (and the two-sample MMD² floor)."""
        a = self.post.sample(n, generator=_gen(1000 + n), dtype=F64)
        b = self.post.sample(n, generator=_gen(2000 + n), dtype=F64)
        out = {k + " (iid)": v for k, v in self.errors(a).items()}
        out["MMD² floor"] = float(mmd2(a, b).value)
        return out

    def reference(self, n: int) -> torch.Tensor:
        return self.post.sample(n, generator=_gen(3000 + n), dtype=F64)

    def metrics(self, x: torch.Tensor) -> Dict[str, float]:
        c = self.completed(x)
        r = mmd2(c, self.reference(len(c)))
        return {**self.errors(c), "MMD²": float(r.value), "MMD² ±": float(r.stderr)}


class Bimodal(Problem):
    """(a) Two unequal modes in 2-D, seen through the first coordinate with noise 0.5."""

    name = "a: 2-D bimodal, noisy x₁"
    key = "a"
    shape = (2,)

    def __init__(self):
        self.mix = GaussianMixture([0.25, 0.75], [[-1, -1.2], [1, 1.2]], [[0.3, 0.1], [0.3, 0.1]])
        self.obs = Observation(torch.tensor([[1.0, 0.0]]), torch.tensor([0.3]), 0.5)
        self.post = self.mix.posterior(self.obs)

    def errors(self, c):
        freq = torch.bincount(self.post.log_prob_y(c).argmax(1), minlength=2).double() / len(c)
        return {"mode TV": float(0.5 * (freq - self.post.weights).abs().sum())}


class Inpaint16(Problem):
    """(b) A correlated 16-D Gaussian (eigenvalues 0.05..1, random rotation), 8 random entries observed exactly."""

    name = "b: 16-D Gaussian, 8 entries inpainted"
    key = "b"
    shape = (16,)

    def __init__(self, D: int = 16, seed: int = 0):
        g = _gen(seed)
        Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
        lam = torch.logspace(math.log10(0.05), 0.0, D, dtype=F64)
        cov = Q @ torch.diag(lam) @ Q.T
        cov = 0.5 * (cov + cov.T)
        mean = 0.5 * torch.randn(D, generator=g, dtype=F64)
        self.mix = GaussianMixture([1.0], mean[None], cov[None])
        x_known = self.mix.sample(1, generator=g, dtype=F64)[0].float()
        self.mask = torch.zeros(D, dtype=torch.bool)
        self.mask[torch.randperm(D, generator=g)[: D // 2]] = True
        self.obs = Inpainting(x_known, self.mask)
        self.post = self.mix.posterior(self.obs)
        self.mu, self.cov = self.post.means[0], self.post.covariances()[0]
        self.L = torch.linalg.cholesky(self.cov)
        self.d = int((~self.mask).sum())

    def completed(self, x):
        return x.double()[:, ~self.mask]

    def errors(self, c):
        """Whitened by the exact conditional: `|L⁻¹ (m̂ - μ)|` and `|L⁻¹ Σ̂ L⁻ᵀ - I|_F / √d`."""
        dm = torch.linalg.solve_triangular(self.L, (c.mean(0) - self.mu)[:, None], upper=False)[:, 0]
        W = torch.linalg.solve_triangular(self.L, (c - c.mean(0)).T, upper=False)  # (d, n)
        S = W @ W.T / (len(c) - 1)
        return {"mean err": float(dm.norm()), "cov err": float((S - torch.eye(self.d, dtype=F64)).norm() / math.sqrt(self.d))}


def run_method(prob: Problem, make, steps: int, n: int, sampler: str = "reverse_diffusion", seed: int = 1):
    sde = scoresde.VPSDE()
    st: dict = {}
    x, secs = timed(lambda: scoresde.sample(sde, prob.mix.score_fn(sde), (n,) + prob.shape, sampler=sampler, steps=steps,
                                            condition=prob.obs, conditioning=make(), stats=st, generator=_gen(seed)))
    return x, secs, st


def inverse_rows(prob: Problem, steps_grid, particles_grid, base_steps, base_n, rows, panels, other_samplers=True):
    floors = {n: prob.floor(n) for n in sorted(set(particles_grid) | {base_n})}
    settings = [(s, base_n) for s in steps_grid] + [(base_steps, n) for n in particles_grid if n != base_n]
    for label, make in METHODS:
        for steps, n in settings:
            x, secs, st = run_method(prob, make, steps, n)
            row = {"problem": prob.key, "method": label, "sampler": "reverse_diffusion", "steps": steps, "particles": n,
                   "NFE": st["nfe"], "wall s": round(secs, 2), **prob.metrics(x), **floors[n]}
            if label == "smc":
                row["resampled"] = st.get("resampled", "")
            rows.append(row)
            print(_line(row), flush=True)
            if steps == base_steps and n == base_n:
                panels[label] = x
    if other_samplers:
        for sampler in ("euler_maruyama", "pc"):
            x, secs, st = run_method(prob, SMC, base_steps, base_n, sampler=sampler)
            row = {"problem": prob.key, "method": "smc", "sampler": sampler, "steps": base_steps, "particles": base_n,
                   "NFE": st["nfe"], "wall s": round(secs, 2), **prob.metrics(x), **floors[base_n],
                   "resampled": st.get("resampled", "")}
            rows.append(row)
            print(_line(row), flush=True)


def _line(row) -> str:
    return " | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


# -- SMC's cost per step ------------------------------------------------------------------------------


def cost_rows(prob: Problem, steps: int, n: int, rows, reps: int = 5):
    """Seconds per step, each the fastest of `reps` runs: unconditioned `reverse_diffusion` sampling; SMC; and bare
    replays of the exact `(x, t)` inputs SMC passed to the score (recorded in an untimed run; the mixture score's
    cost depends on its inputs), once as score evaluations alone and once with one VJP through Tweedie's x̂₀ of
    the twist `-½|A x̂₀ - y|²` (its gradient). The issue's bar: SMC within 1.3x of the unconditioned step plus one
    VJP, i.e. `smc / (uncond + (score+VJP - score))`."""
    sde = scoresde.VPSDE()
    score = prob.mix.score_fn(sde)
    shape = (n,) + prob.shape
    A = torch.eye(prob.shape[0])[:1] if prob.key == "a" else torch.eye(prob.shape[0])[prob.mask]
    y = prob.obs.y.reshape(-1) if prob.key == "a" else prob.obs.x_known[prob.mask]

    def uncond(fn=score):
        return scoresde.sample(sde, fn, shape, sampler="reverse_diffusion", steps=steps, generator=_gen(1))

    def smc(fn=score):
        return scoresde.sample(sde, fn, shape, sampler="reverse_diffusion", steps=steps, condition=prob.obs,
                               conditioning="smc", generator=_gen(1))

    calls: list = []
    smc(lambda x, t: calls.append((x.detach().clone(), t.detach().clone())) or score(x, t))

    def bare(vjp: bool):
        def go():
            for x, t in calls:
                if not vjp:
                    with torch.no_grad():
                        score(x, t)
                    continue
                sched = sde._schedule(t)
                with torch.enable_grad():
                    xg = x.requires_grad_(True)
                    x0 = sched.x0_from_score(xg, score(xg, t))
                    logp = -0.5 * (x0 @ A.T - y).square().sum()
                    torch.autograd.grad(logp, xg)
                x.requires_grad_(False)
        return go

    per = {}
    for name, fn in (("unconditioned RD", uncond), ("smc (RD)", smc), ("bare score", bare(False)), ("bare score + VJP", bare(True))):
        per[name] = min(timed(fn)[1] for _ in range(reps)) / steps
    vjp = max(per["bare score + VJP"] - per["bare score"], 0.0)
    rows.append({"problem": prob.key, "particles": n, "steps": steps, "score calls (smc)": len(calls),
                 **{f"{k} ms/step": round(1e3 * v, 3) for k, v in per.items()},
                 "smc / (uncond + VJP)": round(per["smc (RD)"] / (per["unconditioned RD"] + vjp), 3),
                 "smc / bare score+VJP": round(per["smc (RD)"] / per["bare score + VJP"], 3),
                 "smc / uncond": round(per["smc (RD)"] / per["unconditioned RD"], 3)})
    print(_line(rows[-1]), flush=True)


# -- labels on the ring -------------------------------------------------------------------------------


def label_rows(n: int, steps: int, scales, rows, panels, label: int = 0):
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    mode = GaussianMixture([1.0], mix.means[label : label + 1], [0.15**2])
    ref = mode.sample(n, generator=_gen(7), dtype=F64)
    fl = mmd2(mode.sample(n, generator=_gen(8), dtype=F64), ref)
    f = mix.score_fn(sde)
    y = torch.full((n,), label, dtype=torch.long)
    log_prob = lambda x, t: mix.log_prob_y(x, t, sde=sde)  # noqa: E731
    for kind in ("classifier-free", "classifier"):
        for w in scales:
            s = classifier_free(f, y, w) if kind == "classifier-free" else classifier(f, log_prob, y, w)
            st: dict = {}
            x, secs = timed(lambda: scoresde.sample(sde, s, (n, 2), sampler="reverse_diffusion", steps=steps, stats=st,
                                                    generator=_gen(1)))
            x = x.double()
            r = mmd2(x, ref)
            exact = (kind == "classifier-free" and w == 0) or (kind == "classifier" and w == 1)
            rows.append({"guidance": kind, "scale": w, "exact": "yes" if exact else "", "in mode": round(float((mix.classify(x) == label).double().mean()), 4),
                         "MMD² to mode": float(r.value), "±": float(r.stderr), "floor": float(fl.value), "NFE": st["nfe"], "wall s": round(secs, 2)})
            print(_line(rows[-1]), flush=True)
            if w in (0, 1, 4):
                panels[f"{kind}, scale {w}"] = x
    return mix


# -- plots -----------------------------------------------------------------------------------------------


def plot_inverse(rows, prob: str, base_steps, base_n, path):
    """Error vs steps (top) and vs particles (bottom), one line per method, log axes, floors dashed."""
    from scoresde.plotting import _plt, _save

    from matplotlib.ticker import NullFormatter

    plt = _plt()
    specs = ([("mode TV", "mode TV (iid)"), ("MMD²", "MMD² floor")] if prob == "a"
             else [("mean err", "mean err (iid)"), ("cov err", "cov err (iid)"), ("MMD²", "MMD² floor")])
    fig, axes = plt.subplots(2, len(specs), figsize=(4.8 * len(specs), 7.5), squeeze=False)
    rd = [r for r in rows if r["problem"] == prob and r["sampler"] == "reverse_diffusion"]
    for col, (metric, floor_key) in enumerate(specs):
        for r_i, (axis, fixed_key, fixed) in enumerate((("steps", "particles", base_n), ("particles", "steps", base_steps))):
            ax = axes[r_i, col]
            sel = [r for r in rd if r[fixed_key] == fixed]
            for i, (label, _) in enumerate(METHODS):
                pts = sorted((r[axis], r[metric]) for r in sel if r["method"] == label)
                ax.plot([q[0] for q in pts], [max(q[1], 1e-5) for q in pts], "o-", color=f"C{i}", label=label)
            if metric == "MMD²":  # the floor is itself an MMD² estimate, ~0: draw the standard error of SMC's instead
                fl = sorted((r[axis], r["MMD² ±"]) for r in sel if r["method"] == "smc")
                lab = "± 1 se of smc's MMD²"
            else:
                fl = sorted((r[axis], r[floor_key]) for r in sel if r["method"] == "smc")
                lab = "exact iid samples (floor)"
            ax.plot([q[0] for q in fl], [max(q[1], 1e-5) for q in fl], "k--", label=lab)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ticks = sorted({r[axis] for r in sel})
            ax.set_xticks(ticks, [str(v) for v in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(axis + (" (reverse_diffusion)" if axis == "steps" else ""))
            ax.set_title(f"({prob}) {metric} vs {axis}, {fixed_key} = {fixed}" + (" [≤ 0 drawn at 1e-5]" if metric == "MMD²" else ""), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_scatter(prob: Bimodal, panels, path, title):
    from scoresde.plotting import _plt, _save

    plt = _plt()
    n = len(panels) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.3), squeeze=False)
    g = torch.linspace(-3, 3, 200, dtype=F64)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    dens = prob.post.log_prob(torch.stack([X.flatten(), Y.flatten()], 1)).exp().reshape(X.shape)
    exact = prob.post.sample(2000, generator=_gen(5), dtype=F64)
    for ax, (name, x) in zip(axes[0], [("exact posterior", exact)] + list(panels.items())):
        x = x.detach().double()
        ax.contour(X.numpy(), Y.numpy(), dens.numpy(), levels=8, colors="0.5", linewidths=0.6)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C3" if name == "exact posterior" else "C0", alpha=0.4, rasterized=True)
        freq = float((prob.post.log_prob_y(x).argmax(1) == 0).double().mean())
        ax.set_title(f"{name}\nsmall-mode weight {freq:.3f} (exact {float(prob.post.weights[0]):.3f})", fontsize=8)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_labels(rows, mix, panels, path):
    from scoresde.plotting import _plt, _save

    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(1, 2 + n, figsize=(3.4 * (2 + n), 3.4), squeeze=False)
    ax1, ax2 = axes[0, 0], axes[0, 1]
    for i, kind in enumerate(("classifier-free", "classifier")):
        rr = [r for r in rows if r["guidance"] == kind]
        ax1.plot([r["scale"] for r in rr], [r["in mode"] for r in rr], "o-", color=f"C{i}", label=kind)
        ax2.errorbar([r["scale"] for r in rr], [r["MMD² to mode"] for r in rr], yerr=[r["±"] for r in rr], fmt="o-", color=f"C{i}", label=kind, capsize=2)
    ax1.set_xlabel("guidance scale")
    ax1.set_title("fraction in the requested mode", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("guidance scale")
    ax2.set_yscale("symlog", linthresh=1e-3)
    ax2.set_title("MMD² to exact samples of the mode", fontsize=9)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    ref = mix.sample(2000, generator=_gen(3), dtype=F64)
    for ax, (name, x) in zip(axes[0, 2:], panels.items()):
        ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", rasterized=True)
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", alpha=0.5, rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-2.8, 2.8)
        ax.set_ylim(-2.8, 2.8)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle("2-D ring, exact conditional score, requested mode 0 (right), reverse_diffusion", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# -- 3. a trained class-conditional model on the 8x8 digits ---------------------------------------------------


def pixel_classifier(data):
    """A logistic regression on the real digits' pixels (scikit-learn), the judge of the generated classes."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(data.train.flatten(1).numpy(), data.train_labels.numpy())
    acc = float((clf.predict(data.test.flatten(1).numpy()) == data.test_labels.numpy()).mean())
    return clf, acc


def digits_rows(budget_s: float, per_class: int, scales, steps: int, rows: list, grids: dict, quick: bool):
    """Train a class-conditional digits model for `budget_s` CPU seconds, then sample `per_class` images of each
    class at each guidance scale (`classifier_free`, dpm_solver): the pixel classifier's accuracy on them and
    their diversity (mean within-class pairwise distance, and MMD² to the real test digits of the class)."""
    from scoresde.config import TrainConfig
    from scoresde.data import load_data
    from scoresde.train import Trainer

    data = load_data("digits")
    judge, judge_acc = pixel_classifier(data)
    size = dict(hidden=128, n_blocks=2) if quick else dict(hidden=256, n_blocks=3, dropout=0.1)
    cfg = TrainConfig(data="digits", class_conditional=True, batch_size=128, lr=1e-3, warmup=100, out="", device="cpu",
                      final_eval=False, parameterization="v", weighting="likelihood", importance_sampling=True,
                      ema_decay=0.99 if quick else 0.999, **size)
    tr = Trainer(cfg, progress=False)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < budget_s:
        tr.train_step()
    train_s = time.perf_counter() - t0
    model, sde = tr.ema.module.eval(), tr.sde
    K = data.num_classes
    labels = torch.arange(K).repeat_interleave(per_class)
    real = {k: data.test[data.test_labels == k].flatten(1).double() for k in range(K)}
    for w in scales:
        st: dict = {}
        x, sec = timed(lambda: scoresde.sample(sde, classifier_free(model, labels, w), (len(labels),) + tuple(model.event_shape),
                                               sampler="dpm_solver", order=2, method="dpm++", timesteps="log_snr_capped", correct_history=False,
                                               steps=steps, generator=torch.Generator().manual_seed(0), stats=st))
        x = x.clamp(-1, 1)
        pred = torch.as_tensor(judge.predict(x.flatten(1).numpy()))
        acc = float((pred == labels).double().mean())
        spread, mmds = [], []
        for k in range(K):
            xk = x[labels == k].flatten(1).double()
            spread.append(float(torch.pdist(xk).mean()))
            mmds.append(float(mmd2(xk, real[k][: len(xk)]).value))
        rows.append({"guidance scale": w, "accuracy (pixel classifier)": acc, "within-class distance": sum(spread) / K,
                     "real within-class distance": sum(float(torch.pdist(real[k]).mean()) for k in range(K)) / K,
                     "MMD² to real class (mean)": sum(mmds) / K, "NFE": st["nfe"], "s": sec,
                     "train steps": tr.step, "train s": round(train_s), "judge test accuracy": judge_acc})
        grids[w] = x
        print(f"  digits, scale {w}: accuracy {acc:.3f}, within-class distance {sum(spread) / K:.3f}", flush=True)


def plot_digit_grids(grids: dict, per_class: int, path):
    from scoresde.plotting import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6))
    for ax, (w, x) in zip(axes, grids.items()):
        K = x.shape[0] // per_class
        cols = min(per_class, 10)
        imgs = x.reshape(K, per_class, 8, 8)[:, :cols]  # row k: class k
        canvas = imgs.permute(0, 2, 1, 3).reshape(K * 8, cols * 8)
        ax.imshow(canvas.numpy(), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"guidance scale {w}", fontsize=9)
        ax.axis("off")
    fig.suptitle("class-conditional digits (row k: requested class k), classifier-free guidance, dpm_solver", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.guidance", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and particles (about a minute)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default="cpu", help="accepted for `scoresde bench`; this benchmark runs on the CPU")
    p.add_argument("--part", default="all", choices=["all", "a", "b", "cost", "labels", "digits"],
                   help="one part only (the full run's parts can run side by side)")
    p.add_argument("--budget", type=float, default=None, help="digits training seconds (default 900; quick 20)")
    args = p.parse_args(argv)
    out = out_dir(args.out)
    t_start = time.perf_counter()
    if args.quick:
        steps_grid, particles_grid, base_steps, base_n = [25, 50], [250, 500], 50, 500
        label_n, label_steps, scales = 500, 50, [0, 1, 2, 4]
    else:
        steps_grid, particles_grid, base_steps, base_n = [25, 50, 100, 200], [250, 1000, 2000, 4000], 100, 2000
        label_n, label_steps, scales = 2000, 200, [0, 0.5, 1, 2, 3, 4]
    meta = {"machine": machine_note("cpu"), "quick": args.quick, "sde": "VP", "base steps": base_steps, "base particles": base_n}
    want = lambda part: args.part in ("all", part)  # noqa: E731
    problems = {"a": Bimodal, "b": Inpaint16}
    for key, cls in problems.items():
        if not want(key):
            continue
        prob, rows, scatter = cls(), [], {}
        print(f"## ({prob.name})", flush=True)
        inverse_rows(prob, steps_grid, particles_grid, base_steps, base_n, rows, scatter)
        print(write_results(out, f"guidance_{key}", rows, {**meta, "problem": prob.name, "seconds": round(time.perf_counter() - t_start)}))
        plot_inverse(rows, key, base_steps, base_n, out / f"guidance_error_{key}.png")
        if key == "a":
            plot_scatter(prob, scatter, out / "guidance_scatter.png",
                         f"(a) posterior samples, reverse_diffusion, {base_steps} steps, {base_n} particles, over the exact posterior density")
    if want("cost"):
        cost: list = []
        for cls in problems.values():
            cost_rows(cls(), base_steps, base_n, cost, reps=2 if args.quick else 5)
        print(write_results(out, "guidance_cost", cost, meta))
    if want("labels"):
        label: list = []
        lpanels: dict = {}
        ring = label_rows(label_n, label_steps, scales, label, lpanels)
        print(write_results(out, "guidance_labels", label, {**meta, "steps": label_steps, "n": label_n}))
        plot_labels(label, ring, lpanels, out / "guidance_labels.png")
    if want("digits"):
        drows: list = []
        grids: dict = {}
        budget = args.budget if args.budget is not None else (20.0 if args.quick else 900.0)
        per_class = 10 if args.quick else 100
        digits_rows(budget, per_class, [0, 1, 2, 4], 10 if args.quick else 20, drows, grids, args.quick)
        print(write_results(out, "guidance_digits", drows, {**meta, "budget_s": budget, "per_class": per_class}))
        plot_digit_grids(grids, per_class, out / "guidance_digits.png")
    print(f"wrote {out}/guidance_* (part {args.part}) in {time.perf_counter() - t_start:.0f} s ({machine_note('cpu')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
