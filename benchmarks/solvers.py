"""Steps vs quality for every sampler, with the exact score: `python -m benchmarks.solvers [--quick] [--out DIR] [--device D]`.

For each SDE (VP, sub-VP, VE, cosine) and data set (2-D ring, 64-D mixture), each sampler at several NFE:
unbiased MMD² ± stderr to fresh data, sliced-W2 beside its floor, mode TV, pathwise error (deterministic
samplers, against dopri5 at 1e-9 from the same x_T), NFE from a counter, wall seconds, peak memory. Then
dpm_solver at 10 NFE against published fast samplers (DPM-Solver++(2M), UniPC, EDM's Heun, linear multistep) with
their recommended grids on the same ODE — also on two held-out mixtures the default was not tuned on — and the
framework overhead against bare score calls. Writes solvers.{md,csv,json}, fast10.*, fast10_summary.md,
overhead.*, and two PNGs.

`--race`: the same ODE raced against diffusers' schedulers and k-diffusion's samplers when importable;
`--race-runs RUN [RUN:K ...]` races them on trained default-VP runs instead of the exact mixtures.
`--trained RUN [RUN:K ...]`: the dpm_solver recipes (the default, the previous default, ablations) on trained
models, each against its own converged ODE; writes trained.*, trained_summary.md and solvers_trained.png.
`--along exact RUN [RUN:K ...]`: a picture of D and ε along converged paths with the default's and `auto`'s grids.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, List

import numpy as np
import torch
from torch import Tensor

from benchmarks._common import machine_note, out_dir, peak_memory_mb, reset_peak_memory, timed, write_results

import scoresde  # noqa: E402
from scoresde._utils import append_dims  # noqa: E402
from scoresde.metrics import floor_sliced_w2, mmd2, mode_tv, sliced_w2  # noqa: E402
from scoresde.samplers import DPMSolver, sample, timesteps  # noqa: E402

SDES = {"vp": scoresde.VPSDE, "subvp": scoresde.SubVPSDE, "ve": scoresde.VESDE, "cosine": scoresde.CosineVPSDE}
# (label, sampler name, options, NFE per step, deterministic)
SAMPLERS = [
    ("euler_maruyama", "euler_maruyama", {}, 1, False),
    ("reverse_diffusion", "reverse_diffusion", {}, 1, False),
    ("pc (rd + langevin)", "pc", {}, 2, False),
    ("sde (torchsde euler)", "sde", {}, 1, False),
    ("ode (rk4)", "ode", {"method": "rk4"}, 4, True),
    ("dpm_solver", "dpm_solver", {}, 1, True),
]
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-5)


# -- published fast samplers, in EDM's variables x̃ = x/m, σ = std/m (dx̃/dσ = (x̃ - D)/σ) ------------------

def _sigma_grid(sde, steps, eps, x, rho=7.0):
    ts = timesteps.edm(sde, steps, eps, x, rho=rho)
    sched = sde.schedule(ts)
    return ts, sched, sched.m, sched.sigma / sched.m


def _deriv(score_fn, xs, i, ts, sched, sig):
    x = sched.m[i] * xs
    d = sched[i].x0_from_score(x, score_fn(x, ts[i].expand(x.shape[0])))
    return (xs - d) / sig[i]


def edm_heun(sde, score_fn, x, steps, eps):
    """Karras et al. 2022, Alg. 1 (deterministic Heun, ρ = 7): 2 NFE per step."""
    ts, sched, m, sig = _sigma_grid(sde, steps, eps, x)
    xs = x / m[0]
    for i in range(steps):
        h = sig[i + 1] - sig[i]
        d0 = _deriv(score_fn, xs, i, ts, sched, sig)
        d1 = _deriv(score_fn, xs + h * d0, i + 1, ts, sched, sig)
        xs = xs + h * 0.5 * (d0 + d1)
    return m[-1] * xs


def _lms_coef(sig, i, j, k):
    poly = np.poly1d([1.0])
    for q in range(k):
        if q != j:
            poly = poly * np.poly1d([1.0, -sig[i - q]]) / (sig[i - j] - sig[i - q])
    integ = poly.integ()
    return float(integ(sig[i + 1]) - integ(sig[i]))


def lms(sde, score_fn, x, steps, eps, order=4):
    """k-diffusion's linear multistep (order 4) on the Karras σ grid: 1 NFE per step."""
    ts, sched, m, sig = _sigma_grid(sde, steps, eps, x)
    s = sig.double().cpu().numpy()  # coefficients once, before the loop
    coefs = [[_lms_coef(s, i, j, min(i + 1, order)) for j in range(min(i + 1, order))] for i in range(steps)]
    xs, ds = x / m[0], []
    for i in range(steps):
        ds.insert(0, _deriv(score_fn, xs, i, ts, sched, sig))
        del ds[order:]
        xs = xs + sum(c * d for c, d in zip(coefs[i], ds))
    return m[-1] * xs


def unipc(sde, score_fn, x, steps, eps, order=2, variant="bh2", grid="log_snr"):
    """UniPC (Zhao et al. 2023), data prediction: UniP-`order` predictor + UniC corrector, 1 NFE per step.

    Written from the paper's Algorithms 2-3 as an independent reference (own loop, no shared code with
    `dpm_solver`): `B(h) = h` ("bh1") or `e^h - 1` ("bh2"), first-order first step, lower order on the final
    steps, no corrector on the last step (it would cost one more NFE)."""
    ts = timesteps.get_timesteps(grid, sde, steps, eps, x)
    sched = sde.schedule(ts.double())
    m, std, lam = sched.m, sched.sigma, sched.lam
    rows_f = sched.floats()
    f = lambda v: float(v)  # coefficients are scalars; the benchmark is not timing this loop

    def data_pred(xx, i):
        return rows_f[i].x0_from_score(xx, score_fn(xx, ts[i].expand(xx.shape[0])))

    hist = [(0, data_pred(x, 0))]  # (grid index, D), newest last
    for step in range(1, steps + 1):
        k = min(order, step, steps + 1 - step)
        i0, d0 = hist[-1]
        hh = -(lam[step] - lam[i0])
        big_b = hh if variant == "bh1" else torch.expm1(hh)
        rks = [(lam[ij] - lam[i0]) / -hh for ij, _ in hist[-k:-1][::-1]]
        d1s = [(dj - d0) / f(rk) for rk, (_, dj) in zip(rks, hist[-k:-1][::-1])]
        r = torch.stack(rks + [torch.ones((), dtype=torch.float64)])
        rows, b, hphi, fact = [], [], torch.expm1(hh) / hh - 1, 1
        for q in range(1, k + 1):
            rows.append(r ** (q - 1))
            b.append(hphi * fact / big_b)
            fact *= q + 1
            hphi = hphi / hh - 1 / fact
        rows, b = torch.stack(rows), torch.stack(b)
        x_lin = f(std[step] / std[i0]) * x - f(m[step] * torch.expm1(hh)) * d0
        mb = f(m[step] * big_b)
        rho_p = [0.5] if k == 2 else [f(v) for v in torch.linalg.solve(rows[:-1, :-1], b[:-1])] if k > 2 else []
        x_pred = x_lin - mb * sum((rp * d for rp, d in zip(rho_p, d1s)), torch.zeros_like(x))
        if step == steps:
            return x_pred
        d_new = data_pred(x_pred, step)
        rho_c = [0.5] if k == 1 else [f(v) for v in torch.linalg.solve(rows, b)]
        x = x_lin - mb * (sum((rc * d for rc, d in zip(rho_c[:-1], d1s)), torch.zeros_like(x)) + rho_c[-1] * (d_new - d0))
        hist = (hist + [(step, d_new)])[-order:]
    return x


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def _data(name):
    """Tuning sets (ring, mix64: the default grid's cap was chosen on these) and held-out ones (grid16, rand16)."""
    if name == "grid16":
        return scoresde.grid_mixture(), (2,)  # 4x4 modes, spacing 1, std 0.1
    if name == "rand16":
        return scoresde.random_mixture(16, 16, cov="full", seed=5), (16,)
    return (scoresde.ring8(), (2,)) if name == "ring" else (scoresde.mixture64(), (1, 8, 8))


def quality_grid(sdes, datasets, nfes, n, device, dtype, rows, curves, panels):
    for data_name in datasets:
        mix, ev = _data(data_name)
        if data_name == "mix64" and len(nfes) > 2:
            # 64-D costs ~3x per score call on 2 CPU cores: fewer samples, NFE up to 250, to finish in minutes.
            n, nfes = n // 2, [v for v in nfes if v <= 250]
        data = mix.sample(n, generator=torch.Generator().manual_seed(11), dtype=dtype).to(device)
        floor_mmd = mmd2(mix.sample(n, generator=torch.Generator().manual_seed(12), dtype=dtype).to(device), data)
        floor_w2 = float(floor_sliced_w2(mix, n, dtype=dtype))
        for sde_name in sdes:
            sde = SDES[sde_name]()
            score = mix.score_fn(sde)
            x_T = sde.prior_sample((n,) + ev, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
            ref = sample(sde, score, None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9)
            runs = [(label, name, opts, max(1, nfe // per), det) for label, name, opts, per, det in SAMPLERS for nfe in nfes
                    if nfe // per >= 1 and not (name == "dpm_solver" and nfe > 100)]
            runs += [(f"ode (dopri5, tol {tol:g})", "ode", {"rtol": tol, "atol": tol}, 1, True) for tol in ADAPTIVE_TOLS]
            for label, name, opts, steps, det in runs:
                reset_peak_memory(device)
                st: dict = {}
                x, secs = timed(lambda: sample(sde, score, None, x_T=x_T, sampler=name, steps=steps, stats=st,
                                               generator=torch.Generator(device).manual_seed(1), **opts), device)
                mm = mmd2(x, data)
                row = {"data": data_name, "sde": sde_name, "sampler": label, "NFE": st["nfe"],
                       "MMD²": float(mm.value), "±": float(mm.stderr), "MMD² floor ±": float(floor_mmd.stderr),
                       "sliced-W2": float(sliced_w2(x, data)), "W2 floor": floor_w2,
                       "mode TV": float(mode_tv(x, mix)),
                       "path err": float((x - ref).flatten(1).norm(dim=1).mean()) if det else "",
                       "wall s": round(secs, 3), "peak MB": round(peak_memory_mb(device), 1)}
                rows.append(row)
                print(" | ".join(str(v if not isinstance(v, float) else f"{v:.4g}") for v in row.values()), flush=True)
                if data_name == "ring" and sde_name == "vp":
                    curves.setdefault("ode (dopri5)" if "dopri5" in label else label, []).append((st["nfe"], float(mm.value)))  # symlog axis: negative MMD² stays visible
                    if st["nfe"] in (10, 11, 20, 21) or "1e-05" in label:
                        panels[f"{label}, NFE {st['nfe']}"] = x


PUBLISHED = "published"  # marks the contenders whose per-case minimum is the bar for `dpm_solver`


def fast_samplers(sdes, datasets, n, device, dtype, rows):
    """Pathwise error at 10 NFE (no final denoising), same x_T, against dopri5 at 1e-9; the published samplers run
    with the grids their authors recommend (log-SNR for low resolution, uniform time for high; ρ = 7 for EDM's)."""
    eps = 1e-3
    plain = lambda k, grid: DPMSolver(k, method="dpm++", timesteps=grid, corrector=False)
    contenders: List[tuple[str, str, Callable]] = [
        ("dpm_solver (ours, default: DEIS tAB 3 in ε + UniC, blend grid)", "ours", lambda s, f, x: sample(s, f, None, x_T=x, sampler="dpm_solver", steps=10, eps=eps, denoise=False)),
        ("dpm_solver 2M + UniC, log_snr_capped (the previous default)", "ablation", lambda s, f, x: sample(s, f, None, x_T=x, sampler=DPMSolver(2, method="dpm++", timesteps="log_snr_capped", correct_history=False), steps=10, eps=eps, denoise=False)),
        ("dpm_solver 2M without UniC, log_snr_capped", "ablation", lambda s, f, x: sample(s, f, None, x_T=x, sampler=DPMSolver(2, method="dpm++", timesteps="log_snr_capped", corrector=False), steps=10, eps=eps, denoise=False)),
        ("dpm_solver 3M + UniC, log_snr_capped", "ablation", lambda s, f, x: sample(s, f, None, x_T=x, sampler=DPMSolver(3, method="dpm++", timesteps="log_snr_capped"), steps=9, eps=eps, denoise=False)),
        # 2M as the reference code runs it: first-order last step when steps < 15 (lower_order_final)
        ("DPM-Solver++(2M), log-SNR", PUBLISHED, lambda s, f, x: sample(s, f, None, x_T=x, sampler=plain(2, "log_snr"), steps=10, eps=eps, denoise=False)),
        ("DPM-Solver++(2M), time-uniform", PUBLISHED, lambda s, f, x: sample(s, f, None, x_T=x, sampler=plain(2, "uniform"), steps=10, eps=eps, denoise=False)),
        ("UniPC-2 (bh2), log-SNR", PUBLISHED, lambda s, f, x: unipc(s, f, x, 10, eps, 2, "bh2", "log_snr")),
        ("UniPC-2 (bh2), time-uniform", PUBLISHED, lambda s, f, x: unipc(s, f, x, 10, eps, 2, "bh2", "uniform")),
        ("UniPC-3 (bh1), log-SNR", PUBLISHED, lambda s, f, x: unipc(s, f, x, 10, eps, 3, "bh1", "log_snr")),
        ("UniPC-3 (bh1), time-uniform", PUBLISHED, lambda s, f, x: unipc(s, f, x, 10, eps, 3, "bh1", "uniform")),
        ("EDM Heun, rho=7", PUBLISHED, lambda s, f, x: edm_heun(s, f, x, 5, eps)),
        ("linear multistep (4), rho=7", PUBLISHED, lambda s, f, x: lms(s, f, x, 10, eps)),
    ]
    for data_name in datasets:
        mix, ev = _data(data_name)
        for sde_name in sdes:
            sde = SDES[sde_name]()
            x_T = sde.prior_sample((n,) + ev, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
            ref = sample(sde, mix.score_fn(sde), None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9, eps=eps, denoise=False)
            case = []
            for label, kind, run in contenders:
                counter = Counter(mix.score_fn(sde))
                with torch.no_grad():
                    x = run(sde, counter, x_T)
                case.append({"data": data_name, "sde": sde_name, "sampler": label, "kind": kind, "NFE": counter.calls,
                             "path err": float((x - ref).flatten(1).norm(dim=1).mean())})
                print(case[-1], flush=True)
            best = min(r["path err"] for r in case if r["kind"] == PUBLISHED)
            for r in case:
                r["/ best published"] = round(r["path err"] / best, 3)
            rows += case


def fast_summary(rows) -> str:
    """One line per case: ours, the best published sampler and the ratio (the target is ratio ≤ 1)."""
    out = ["| data | sde | ours (10 NFE) | best published | by | ours / best |", "|---|---|---|---|---|---|"]
    met = 0
    for key in dict.fromkeys((r["data"], r["sde"]) for r in rows):
        case = [r for r in rows if (r["data"], r["sde"]) == key]
        ours = next(r for r in case if r["kind"] == "ours")
        best = min((r for r in case if r["kind"] == PUBLISHED), key=lambda r: r["path err"])
        met += ours["path err"] <= best["path err"]
        out.append(f"| {key[0]} | {key[1]} | {ours['path err']:.4f} | {best['path err']:.4f} | {best['sampler']} | {ours['/ best published']:.2f} |")
    n_cases = len(out) - 2
    return "\n".join(out) + f"\n\ndpm_solver at or below the best published sampler in {met} of {n_cases} cases"


def overhead(n, nfe, device, dtype, rows, reps=9):
    """Wall time of each fixed-step sampler over the time of the bare score calls it makes (VP, ring).

    The bare calls replay the exact `(x, t)` inputs the sampler passed to the score (recorded in an untimed run):
    the mixture score's cost depends on its inputs (far-off points underflow to subnormals), so calls on some
    other fixed input would not be the same work. Sampler and replay alternate `reps` times; the table gives
    the ratio of the fastest of each and the median of the per-pair ratios."""
    import statistics

    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    score = mix.score_fn(sde)
    x = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    for label, name, opts, per, _ in SAMPLERS:
        run = lambda fn, st=None: sample(sde, fn, None, x_T=x, sampler=name, steps=nfe // per, stats=st,
                                         generator=torch.Generator(device).manual_seed(1), **opts)
        calls: list = []
        run(lambda xx, tt: calls.append((xx.clone(), tt.clone())) or score(xx, tt))

        def bare():
            with torch.no_grad():
                for xx, tt in calls:
                    score(xx, tt)

        st: dict = {}
        secs, base = [], []
        for _ in range(reps):
            secs.append(timed(lambda: run(score, st), device)[1])
            base.append(timed(bare, device)[1])
        rows.append({"sampler": label, "NFE": st["nfe"], "sampler s": round(min(secs), 3), "bare score s": round(min(base), 3),
                     "ratio (fastest)": round(min(secs) / min(base), 3),
                     "ratio (median of pairs)": round(statistics.median(a / b for a, b in zip(secs, base)), 3)})
        print(rows[-1], flush=True)



class _OrnsteinUhlenbeck(scoresde.LinearSDE):
    """dx = -x dt + √2 dw on [0, 6] (the README's user SDE, g(0) ≠ 0)."""

    def drift_coef(self, t):
        return -torch.ones_like(t)

    def diffusion(self, t):
        return torch.full_like(t, 2.0**0.5)


class _ConstantBetaVP(scoresde.LinearSDE):
    """VP with constant β = 12 (g(0) ≠ 0)."""

    def drift_coef(self, t):
        return torch.full_like(t, -6.0)

    def diffusion(self, t):
        return torch.full_like(t, 12.0**0.5)


def user_sde_defaults(n, rows, names=("euler_maruyama", "pc", "langevin", "dpm_solver")):
    """The defaults behind `eps=None` and `timesteps="auto"` on user SDEs with g(0) ≠ 0: each sampler at its default
    steps on VP and on two user SDEs, with the defaults and with what they replaced (eps = 1e-3 on the clock, a
    time-uniform grid). Ring data (mode std 0.15): MMD²/se to fresh data, and the std of offsets from the nearest mode."""
    mix = scoresde.ring8()
    data = mix.sample(n, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    width = lambda x: float((x - mix.means.to(x)[mix.classify(x)]).std())  # noqa: E731
    sdes = {"vp": scoresde.VPSDE(), "ou": _OrnsteinUhlenbeck(T=6.0), "const_beta_vp": _ConstantBetaVP()}
    for name in names:
        variants = [("defaults", {})]
        if name != "dpm_solver":
            variants.append(("timesteps=uniform", {"timesteps": "uniform"}))
        variants.append(("eps=1e-3", {"eps": 1e-3}))
        for sde_name, sde in sdes.items():
            for label, kw in variants:
                if sde_name == "vp" and label != "defaults" and not (name == "langevin" and "timesteps" in kw):
                    continue  # identical to the defaults on VP
                steps = 20 if name == "dpm_solver" else 1000
                x = sample(sde, mix.score_fn(sde), (n, 2), sampler=name, steps=steps, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1), **kw)
                r = mmd2(x, data)
                rows.append({"sampler": name, "steps": steps, "sde": sde_name, "setting": label,
                             "MMD²/se": round(float(r.value) / float(r.stderr), 2), "mode width": round(width(x), 4),
                             "data width": round(width(data), 4)})
                print(rows[-1], flush=True)

# -- the race against the real peers: diffusers' schedulers and k-diffusion's samplers, exact score ---------------
#
# Everything is in the half log-SNR λ = log(m/σ), in which the VP probability-flow ODE does not depend on the β
# schedule: diffusers' discrete `alphas_cumprod` (linear betas 1e-4..0.02, 1000 steps) give each timestep a λ, and
# the continuous VP SDE (β 0.1..20) is run on the horizon that puts λ(T) at timestep 999's and eps at timestep 0's
# ("aligned end points": T ≈ 1.003). Each peer configuration integrates from its own first noise level to its own
# last (σ_min, or σ = 0 for final_sigmas_type="zero": the reference then runs to t = 1e-9) and is scored against
# dopri5 at rtol = atol = 1e-9 over the same end points from the same x_T; ours runs on the best configuration's
# end points too (ending at σ = 0 = its steps minus one, then the Tweedie step, at the same NFE).

RACE_NFES = (10, 20)
_TRAIN_STEPS = 1000


def _race_data(name):
    """Tuning problems (ring, mix64: the default was chosen on these) and held-out ones (rand16, grid16, iso32)."""
    if name == "rand16":
        return scoresde.random_mixture(16, 16, cov="full", seed=5), (16,)
    if name == "iso32":
        return scoresde.random_mixture(32, 6, cov="iso", seed=7), (32,)
    return _data(name)


def _race_run(spec: str):
    """A trained VP run (`RUN`, or `RUN:K` for class K under classifier-free guidance at scale 1) as a race case:
    `(score_for, event shape)`. The race's VP has the default β schedule on a horizon ~0.3% longer than T = 1
    (diffusers' λ at timestep 999); there the network is called at t = 1, so every solver and the reference
    integrate the same field. In float64, as the exact-score cases run."""
    _, sde, score, shape = _trained_case(spec, torch.float64)
    if type(sde) is not scoresde.VPSDE or (sde.beta_min, sde.beta_max, sde.T) != (0.1, 20.0, 1.0):
        raise SystemExit(f"--race-runs {spec}: the race needs a run trained on the default VP SDE "
                         f"(beta 0.1-20, T = 1, diffusers' linear-β table), got {sde!r}")
    return (lambda race_sde: (lambda x, t: score(x, t.clamp(max=sde.T)))), shape


class _VPTable:
    """diffusers' discrete VP table as half log-SNRs, and the continuous VP time for each λ."""

    def __init__(self):
        betas = torch.linspace(1e-4, 0.02, _TRAIN_STEPS, dtype=torch.float64)
        ac = torch.cumprod(1 - betas, 0)
        self.log_sigma = 0.5 * (torch.log1p(-ac) - ac.log())  # log of k-diffusion's σ = √((1-ᾱ)/ᾱ) = e^{-λ}
        self.vp = scoresde.VPSDE()

    def lam_of_timestep(self, ts: Tensor) -> Tensor:
        """The inverse of diffusers' `_sigma_to_t` (linear in log σ between integer timesteps)."""
        t = ts.double().clamp(0, _TRAIN_STEPS - 1)
        lo = t.floor().long().clamp(max=_TRAIN_STEPS - 2)
        w = t - lo
        return -((1 - w) * self.log_sigma[lo] + w * self.log_sigma[lo + 1])

    def t_of_lam(self, lam) -> float:
        return float(self.vp.t_from_half_log_snr(torch.as_tensor(lam, dtype=torch.float64).reshape(1))[0])


_T_ZERO = 1e-9  # "σ = 0": VP at t = 1e-9 has σ ≈ 1e-5, far below every mode's width


def _vp_on(table, lam_start):
    return scoresde.VPSDE(T=table.t_of_lam(lam_start))


def _diffusers_configs():
    """(label, scheduler class, kwargs) for every diffusers scheduler and grid to try; [] without diffusers."""
    try:
        import diffusers  # noqa: F401
    except Exception:
        return []
    import inspect
    import diffusers as dif

    grids = [("linspace", dict(timestep_spacing="linspace")), ("leading", dict(timestep_spacing="leading", steps_offset=1)),
             ("trailing", dict(timestep_spacing="trailing")), ("karras", dict(use_karras_sigmas=True)),
             ("exponential", dict(use_exponential_sigmas=True)), ("lu_lambdas", dict(use_lu_lambdas=True))]
    finals = [("final 0", dict(final_sigmas_type="zero")), ("final σ_min", dict(final_sigmas_type="sigma_min"))]
    families = [
        ("DPMSolverMultistep 2M", "DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
        ("DPMSolverMultistep 3M", "DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++")),
        ("DPMSolverMultistep 2M heun", "DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++", solver_type="heun")),
        ("DPMSolverSinglestep 2S", "DPMSolverSinglestepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
        ("DPMSolverSinglestep 3S", "DPMSolverSinglestepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++")),
        ("UniPC bh1 order 2", "UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=2)),
        ("UniPC bh1 order 3", "UniPCMultistepScheduler", dict(solver_type="bh1", solver_order=3)),
        ("UniPC bh2 order 2", "UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=2)),
        ("UniPC bh2 order 3", "UniPCMultistepScheduler", dict(solver_type="bh2", solver_order=3)),
        ("DEIS order 2", "DEISMultistepScheduler", dict(solver_order=2)),
        ("DEIS order 3", "DEISMultistepScheduler", dict(solver_order=3)),
        ("SA-Solver (tau 0) 3/4", "SASolverScheduler", dict(predictor_order=3, corrector_order=4, tau_func=lambda t: 0)),
        ("SA-Solver (tau 0) 2/2", "SASolverScheduler", dict(predictor_order=2, corrector_order=2, tau_func=lambda t: 0)),
        ("PNDM (PLMS)", "PNDMScheduler", dict(skip_prk_steps=True)),
        ("PNDM (PRK warm-up)", "PNDMScheduler", dict(skip_prk_steps=False)),
        ("DDIM", "DDIMScheduler", dict(set_alpha_to_one=True)),
        ("DDIM, final ᾱ_0", "DDIMScheduler", dict(set_alpha_to_one=False)),
        ("Euler", "EulerDiscreteScheduler", {}),
        ("Heun", "HeunDiscreteScheduler", {}),
        ("LMS", "LMSDiscreteScheduler", {}),
        ("KDPM2", "KDPM2DiscreteScheduler", {}),
    ]
    out = []
    for label, cls_name, base in families:
        cls = getattr(dif, cls_name, None)
        if cls is None:
            continue
        accepted = inspect.signature(cls.__init__).parameters
        for g_label, g in grids:
            if not all(k in accepted for k in g):
                continue
            for f_label, f in (finals if "final_sigmas_type" in accepted else [("", {})]):
                kw = dict(base, **g, **f)
                out.append((f"{label}, {g_label}" + (f", {f_label}" if f_label else ""), cls, kw))
    return out


# Schedulers whose model output at each call is read at `sigmas[step_index]`: diffusers rounds their timesteps to
# integers on Karras/exponential/λ grids, so the timestep a network would see is not quite that σ. Both readings run
# ("σ-exact" feeds the score at the σ the solver assumes) and the better one counts: the peer at its best.
_SIGMA_INDEXED = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
                  "DEISMultistepScheduler", "SASolverScheduler", "EulerDiscreteScheduler", "LMSDiscreteScheduler")


def _run_diffusers(cls, kw, nfe, score_for, table, x_T, sigma_exact=False):
    """One scheduler at the most inference steps whose model calls fit `nfe`; returns (x_vp, λ_start, λ_end, calls)
    or None when it cannot run. The model output is ε̂ = -σ s(x, t) at the VP time of each timestep's λ (or, with
    `sigma_exact`, of the σ the scheduler's step reads)."""
    import warnings

    sched = None
    for steps in range(nfe, 0, -1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched = cls(**kw)
                sched.set_timesteps(steps)
        except Exception:
            return None
        if len(sched.timesteps) <= nfe:
            break
    ts = sched.timesteps
    kd_style = "scale_model_input" in type(sched).__dict__ and hasattr(sched, "sigmas") and \
        type(sched).__name__ in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler")
    lam_start = float(table.lam_of_timestep(ts[:1])[0])
    if hasattr(sched, "sigmas") and not isinstance(sched.sigmas, type(None)) and type(sched).__name__ not in ("PNDMScheduler", "DDIMScheduler"):
        s_last = float(sched.sigmas[-1])
    else:
        ac_final = float(sched.final_alpha_cumprod)
        s_last = ((1 - ac_final) / ac_final) ** 0.5
    lam_end = math.inf if s_last == 0 else -math.log(s_last)
    sde = _vp_on(table, lam_start)
    score = score_for(sde)
    x = x_T * (1 + float(sched.sigmas[0]) ** 2) ** 0.5 if kd_style else x_T.clone()
    calls = 0
    for t in ts:
        xin = sched.scale_model_input(x, t)
        if sigma_exact:
            k = sched.step_index if sched.step_index is not None else int((sched.timesteps == t).nonzero()[0])
            lam = -torch.as_tensor(float(sched.sigmas[k]), dtype=torch.float64).log().reshape(1)
        else:
            lam = table.lam_of_timestep(torch.as_tensor(t).reshape(1))
        tc = sde.t_from_half_log_snr(lam)
        tb = tc.to(x.dtype).expand(x.shape[0])
        sig = sde.marginal_coefs(tb)[1]
        eps_hat = -append_dims(sig, x.ndim) * score(xin, tb)
        calls += 1
        x = sched.step(eps_hat, t, x).prev_sample
    if kd_style:
        x = x / (1 + s_last**2) ** 0.5
    return x.to(x_T.dtype), lam_start, lam_end, calls


def _kdiffusion_sampling():
    """k-diffusion's `sampling` module, or None. Its package `__init__` imports training dependencies (CLIP,
    torchvision, wandb) that the samplers never use: if that import fails the sampling module is loaded from the
    installed package with the one helper it takes from `utils` (append_dims)."""
    try:
        from k_diffusion import sampling  # type: ignore

        return sampling
    except Exception:
        pass
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        root = list(spec.submodule_search_locations)[0]
        pkg = types.ModuleType("_kd_stub")
        pkg.__path__ = [root]
        utils = types.ModuleType("_kd_stub.utils")
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
        sys.modules["_kd_stub"], sys.modules["_kd_stub.utils"] = pkg, utils
        sspec = importlib.util.spec_from_file_location("_kd_stub.sampling", f"{root}/sampling.py")
        mod = importlib.util.module_from_spec(sspec)
        sspec.loader.exec_module(mod)
        return mod
    except Exception:
        return None


def _kdiffusion_configs(kd):
    if kd is None:
        return []
    # (label, function, extra kwargs, NFE for n sigmas ending at σ > 0 / at 0)
    samplers = [
        ("euler", kd.sample_euler, {}, lambda n, z: n),
        ("heun", kd.sample_heun, {}, lambda n, z: 2 * n - z),
        ("dpm_2", kd.sample_dpm_2, {}, lambda n, z: 2 * n - z),
        ("lms", kd.sample_lms, {}, lambda n, z: n),
        ("dpmpp_2m", kd.sample_dpmpp_2m, {}, lambda n, z: n),
        ("dpmpp_2s (eta 0)", kd.sample_dpmpp_2s_ancestral, dict(eta=0.0), lambda n, z: 2 * n - z),
        ("dpmpp_2m_sde (eta 0)", kd.sample_dpmpp_2m_sde, dict(eta=0.0), lambda n, z: n),
        ("dpmpp_3m_sde (eta 0)", kd.sample_dpmpp_3m_sde, dict(eta=0.0), lambda n, z: n),
    ]
    grids = [("karras ρ=7", lambda n, lo, hi: kd.get_sigmas_karras(n, lo, hi, rho=7.0, device="cpu")),
             ("exponential", lambda n, lo, hi: kd.get_sigmas_exponential(n, lo, hi, device="cpu")),
             ("polyexponential ρ=1", lambda n, lo, hi: kd.get_sigmas_polyexponential(n, lo, hi, rho=1.0, device="cpu"))]
    return [(f"k-diffusion {s}, {g}, {'final 0' if z else 'final σ_min'}", fn, extra, cost, grid, z)
            for s, fn, extra, cost in samplers for g, grid in grids for z in (1, 0)]


def _run_kdiffusion(cfg, nfe, score_for, table, x_T):
    label, fn, extra, cost, grid, zero = cfg
    n = max((k for k in range(1, nfe + 1) if cost(k, zero) <= nfe), default=0)
    if n == 0:
        return None
    lo, hi = float(table.log_sigma[0].exp()), float(table.log_sigma[-1].exp())
    sigmas = grid(n, lo, hi).double()  # n + 1 values ending at 0
    if not zero:
        sigmas = grid(n + 1, lo, hi).double()[:-1]  # n + 1 values from σ_max to σ_min: n steps
    lam_start, lam_end = -math.log(float(sigmas[0])), (math.inf if float(sigmas[-1]) == 0 else -math.log(float(sigmas[-1])))
    sde = _vp_on(table, lam_start)
    score = score_for(sde)
    calls = [0]

    def denoiser(xk, sigma):
        calls[0] += 1
        rho = sigma.double().reshape(-1)[:1].expand(xk.shape[0])
        t = sde.t_from_half_log_snr(-rho.log()).to(xk.dtype)
        m = append_dims((1 + rho * rho).rsqrt().to(xk.dtype), xk.ndim)
        xv = xk * m
        row = sde._schedule(t.double())
        return row.x0_from_score(xv, score(xv, t))

    x = x_T * (1 + float(sigmas[0]) ** 2) ** 0.5
    x = fn(denoiser, x, sigmas.to(x.dtype), disable=True, **extra)
    x = x / (1 + float(sigmas[-1]) ** 2) ** 0.5
    return x, lam_start, lam_end, calls[0]


def _ours(sde_of, score_for, x_T, nfe, lam_start, lam_end, table, sampler="dpm_solver", **opts):
    """Our sampler on the given end points: to σ_min with `nfe` steps; to σ = 0 with `nfe - 1` steps and Tweedie."""
    sde = sde_of(lam_start)
    if math.isinf(lam_end):
        eps = table.t_of_lam(float(-table.log_sigma[0]))
        return sample(sde, score_for(sde), None, x_T=x_T, sampler=sampler, steps=nfe - 1, eps=eps, denoise=True, **opts)
    return sample(sde, score_for(sde), None, x_T=x_T, sampler=sampler, steps=nfe, eps=table.t_of_lam(lam_end), denoise=False, **opts)


def peer_race(datasets, nfes, n, dtype, rows, ours_variants=None, peers=True, only=None):
    """Per case and NFE: every peer configuration's pathwise error (each on its own end points, against dopri5 at
    1e-9 from the same x_T) and ours on the best one's end points; rows carry "kind" peer/ours/variant. `only`: a
    set of peer labels to run (the rest skipped). `ours_variants` ({label: sample options}) also run on the best
    peer's end points (kind "variant@best", with "/ best peer"): how the README's variants were compared."""
    table = _VPTable()
    dif_cfgs = _diffusers_configs() if peers else []
    kd = _kdiffusion_sampling() if peers else None
    kd_cfgs = _kdiffusion_configs(kd)
    if peers and not dif_cfgs:
        print("peer race: diffusers is not importable (pip install 'scoresde[bench]'): diffusers schedulers skipped")
    if peers and not kd_cfgs:
        print("peer race: k-diffusion is not importable: its samplers skipped")
    refs: dict = {}
    for data_name in datasets:
        if data_name in RACE_CASES:
            mix, ev = _race_data(data_name)
            score_for = mix.score_fn
        else:  # a trained run
            score_for, ev = _race_run(data_name)
        x_T = torch.randn((n,) + ev, generator=torch.Generator().manual_seed(0), dtype=dtype)

        def reference(lam_start, lam_end):
            key = (data_name, round(lam_start, 9), lam_end)
            if key not in refs:
                sde = _vp_on(table, lam_start)
                eps = _T_ZERO if math.isinf(lam_end) else table.t_of_lam(lam_end)
                refs[key] = sample(sde, score_for(sde), None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9, eps=eps, denoise=False)
            return refs[key]

        err = lambda x, a, b: float((x - reference(a, b)).flatten(1).norm(dim=1).mean())
        canon = (float(-table.log_sigma[-1]), float(-table.log_sigma[0]))
        for nfe in nfes:
            case = []
            runs = [(lab, lambda c=cls, k=kw: _run_diffusers(c, k, nfe, score_for, table, x_T)) for lab, cls, kw in dif_cfgs]
            runs += [(lab + ", σ-exact time", lambda c=cls, k=kw: _run_diffusers(c, k, nfe, score_for, table, x_T, True))
                     for lab, cls, kw in dif_cfgs if cls.__name__ in _SIGMA_INDEXED and any(g in lab for g in ("karras", "exponential", "lu_lambdas"))]
            runs += [(cfg[0], lambda c=cfg: _run_kdiffusion(c, nfe, score_for, table, x_T)) for cfg in kd_cfgs]
            for label, run in runs:
                if only is not None and label not in only:
                    continue
                try:
                    with torch.no_grad():
                        res = run()
                except Exception as e:  # a scheduler/grid combination the peer does not support
                    res = None
                    print(f"  {label}: skipped ({type(e).__name__}: {str(e)[:80]})", flush=True)
                if res is None:
                    continue
                x, a, b, calls = res
                if not bool(torch.isfinite(x).all()):
                    continue
                case.append({"data": data_name, "NFE budget": nfe, "sampler": label, "kind": "peer", "NFE": calls,
                             "λ start": round(a, 4), "λ end": b if math.isinf(b) else round(b, 4), "path err": err(x, a, b), "_ends": (a, b)})
            for label, opts in (ours_variants or {"dpm_solver (default)": {}}).items():
                x = _ours(lambda a: _vp_on(table, a), score_for, x_T, nfe, *canon, table, **opts)
                case.append({"data": data_name, "NFE budget": nfe, "sampler": label, "kind": "ours" if not case or label.endswith("(default)") else "variant",
                             "NFE": nfe, "λ start": round(canon[0], 4), "λ end": round(canon[1], 4), "path err": err(x, *canon)})
            peers_here = [r for r in case if r["kind"] == "peer"]
            if peers_here:
                best = min(peers_here, key=lambda r: r["path err"])
                a, b = best["_ends"]
                # ours, method="auto" (the recipe for exact scores) and any variants, all on the best peer's end points
                at_best = [("dpm_solver (default)", "ours@best", {}), ('dpm_solver method="auto"', "auto@best", {"method": "auto"})]
                at_best += [(label, "variant@best", opts) for label, opts in (ours_variants or {}).items()]
                for label, kind, opts in at_best:
                    x = _ours(lambda s: _vp_on(table, s), score_for, x_T, nfe, a, b, table, **opts)
                    case.append({"data": data_name, "NFE budget": nfe, "sampler": f"{label}, on the best peer's end points",
                                 "kind": kind, "NFE": nfe, "λ start": round(a, 4), "λ end": b if math.isinf(b) else round(b, 4),
                                 "path err": err(x, a, b)})
                for r in case:
                    r.pop("_ends", None)
                for r in case:
                    r["/ best peer"] = round(r["path err"] / best["path err"], 3)
            for r in sorted(case, key=lambda r: r["path err"])[:5]:
                print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            rows += case


def race_summary(rows) -> str:
    """Per case and NFE: the best diffusers and the best k-diffusion configuration, ours, and the ratio."""
    out = ["| data | NFE | ours (default) | best diffusers | err | best k-diffusion | err | ours / best peer | `auto` / best peer |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["data"], r["NFE budget"]) for r in rows):
        case = [r for r in rows if (r["data"], r["NFE budget"]) == key]
        ours = next((r for r in case if r["kind"] == "ours@best"), None)
        if ours is None:
            continue
        best = lambda pred: min((r for r in case if r["kind"] == "peer" and pred(r["sampler"])), key=lambda r: r["path err"], default=None)
        bd, bk = best(lambda s: not s.startswith("k-diffusion")), best(lambda s: s.startswith("k-diffusion"))
        cell = lambda r: (r["sampler"], f"{r['path err']:.3g}") if r else ("(not installed)", "")
        peer_err = min(r["path err"] for r in (bd, bk) if r)
        auto = next((r for r in case if r["kind"] == "auto@best"), None)
        auto_cell = f"{auto['path err'] / peer_err:.2f}" if auto else ""
        out.append(f"| {key[0]} | {key[1]} | {ours['path err']:.3g} | {' | '.join(cell(bd))} | {' | '.join(cell(bk))} | "
                   f"{ours['path err'] / peer_err:.2f} | {auto_cell} |")
    return "\n".join(out)


RACE_CASES = ["ring", "mix64", "rand16", "grid16", "iso32"]  # tuning: ring, mix64; held out: the rest


def race_main(args) -> int:
    torch.set_num_threads(1)  # small tensors: a second intra-op thread only slows them on shared cores
    out = out_dir(args.out)
    rows: list = []
    cases = args.race_runs or (["ring"] if args.quick else RACE_CASES)
    peer_race(cases, (10,) if args.quick else RACE_NFES, 32 if args.quick else args.race_n, torch.float64, rows)
    meta = {"machine": machine_note(torch.device("cpu")), "n": args.race_n, "quick": args.quick}
    print(write_results(out, "race", rows, meta))
    summary = race_summary(rows)
    (out / "race_summary.md").write_text(summary + "\n")
    print(summary)
    return 0


# The recipes `--trained` compares; "previous default" is the default before the per-budget DEIS recipe.
TRAINED_RECIPES = {
    "default": {},
    "previous default (2M + UniC, capped log-SNR)": dict(order=2, method="dpm++", timesteps="log_snr_capped", correct_history=False),
    "default without the history correction": dict(correct_history=False),
    "DEIS-3 in ε + UniC, blend grid, at every budget": dict(order=3),
    "2M + UniC, blend grid, history as evaluated (the default below 8 steps)": dict(order=2, method="dpm++", correct_history=False),
    "2M + UniC, blend grid, corrected history": dict(order=2, method="dpm++"),
    "DEIS-3 in ε + UniC, capped log-SNR grid": dict(order=3, method="deis", timesteps="log_snr_capped"),
    "DEIS-3 in ε + UniC, vp_quadratic grid": dict(order=3, method="deis", timesteps="vp_quadratic"),
    "auto": dict(method="auto"),
}
TRAINED_NFES = (5, 6, 8, 10, 15, 20, 30)


def _trained_case(spec: str, dtype: torch.dtype = torch.float32):
    """`RUN` or `RUN:K` (class K under classifier-free guidance, scale 1): (label, sde, score_fn, event shape), the
    network in `dtype`."""
    from scoresde.guidance import classifier_free

    path, _, label = spec.partition(":")
    model, sde = scoresde.load(path)
    model = model.to(dtype)
    score = classifier_free(model, int(label), 1.0) if label else model
    return f"{path.rstrip('/').split('/')[-1]}{':y' + label if label else ''}", sde, score, tuple(model.event_shape)


def trained_models(specs, nfes, n, rows, recipes=TRAINED_RECIPES):
    """dpm_solver recipes on trained models: mean per-sample L2 distance to the model's own probability-flow ODE
    solved by dopri5 at rtol = atol = 1e-6 from the same x_T (solver error only, the network's error is the same
    for all), relative to the mean norm of that solution; float32, as the models run."""
    from scoresde.samplers import _initial_state

    for spec in specs:
        case, sde, score, shape = _trained_case(spec)
        x_T = _initial_state(sde, (n,) + shape, None, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
        ref = sample(sde, score, None, x_T=x_T, sampler="ode", rtol=1e-6, atol=1e-6, denoise=False)
        scale = float(ref.flatten(1).norm(dim=1).mean())
        for nfe in nfes:
            errs = {}
            for label, opts in recipes.items():
                x = sample(sde, score, None, x_T=x_T, sampler=DPMSolver(**opts), steps=nfe, denoise=False)
                errs[label] = float((x - ref).flatten(1).norm(dim=1).mean()) / scale
            base = errs["previous default (2M + UniC, capped log-SNR)"]
            for label, e in errs.items():
                rows.append({"model": case, "NFE": nfe, "recipe": label, "rel. path err": e, "/ previous default": round(e / base, 3),
                             "/ default": round(e / errs["default"], 3)})
            print(f"{case:<16} NFE {nfe:>3}: default {errs['default']:.3g}, previous {base:.3g} "
                  f"({errs['default'] / base:.2f}x)", flush=True)


def trained_summary(rows) -> str:
    """Per recipe and NFE: geometric mean and max over the models of the error over the previous default's."""
    nfes = sorted({r["NFE"] for r in rows})
    out = ["| recipe | " + " | ".join(f"{n} NFE" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for label in dict.fromkeys(r["recipe"] for r in rows):
        cells = []
        for n in nfes:
            v = [r["/ previous default"] for r in rows if r["recipe"] == label and r["NFE"] == n]
            cells.append(f"{math.exp(sum(map(math.log, v)) / len(v)):.2f} (max {max(v):.2f})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def trained_plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recipes = [r for r in dict.fromkeys(r["recipe"] for r in rows) if not r.startswith("previous")]
    models = list(dict.fromkeys(r["model"] for r in rows))
    ncols = 3
    nrows = -(-len(recipes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), sharey=True, squeeze=False)
    for ax in axes.flat[len(recipes):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, recipes):
        for m in models:
            pts = sorted((r["NFE"], r["/ previous default"]) for r in rows if r["recipe"] == label and r["model"] == m)
            ax.plot(*zip(*pts), marker=".", lw=1, alpha=0.7, label=m)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("NFE")
    for row in axes:
        row[0].set_ylabel("path error / previous default's")
    axes.flat[0].legend(fontsize=6, loc="lower left", ncol=2)
    fig.suptitle("dpm_solver recipes on trained models (against each model's own converged ODE)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trained_main(args) -> int:
    torch.set_num_threads(1)
    out = out_dir(args.out)
    rows: list = []
    nfes = [int(v) for v in args.nfe.split(",")] if args.nfe else list(TRAINED_NFES)
    trained_models(args.trained, nfes, args.trained_n, rows)
    print(write_results(out, "trained", rows, {"machine": machine_note("cpu"), "n": args.trained_n, "models": args.trained}))
    summary = trained_summary(rows)
    (out / "trained_summary.md").write_text(summary + "\n")
    trained_plot(rows, out / "solvers_trained.png")
    print(summary)
    print(f"wrote {out}/trained.md, trained_summary.md, solvers_trained.png")
    return 0


# `--auto`: method="auto" against the default on exact mixtures, six SDEs (the built-ins and two user SDEs)
AUTO_SDES = {**SDES, "ou (user)": _OrnsteinUhlenbeck, "constant β (user)": _ConstantBetaVP}
AUTO_DATA = {"ring": lambda: _data("ring"), "grid16": lambda: _data("grid16"), "rand16": lambda: _data("rand16"),
             "mix64": lambda: _data("mix64"),
             "rand8 (seed 21)": lambda: (scoresde.random_mixture(8, 5, cov="full", seed=21), (8,)),
             "iso48 (seed 3)": lambda: (scoresde.random_mixture(48, 10, cov="iso", seed=3), (48,))}


def auto_vs_default(nfes, n, rows, eps=1e-3):
    """Pathwise error of `method="auto"` over the default's, same x_T, against dopri5 at 1e-9 (float64)."""
    for d_name, make in AUTO_DATA.items():
        mix, ev = make()
        for s_name, cls in AUTO_SDES.items():
            sde = cls()
            x_T = sde.prior_sample((n,) + ev, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            ref = sample(sde, mix.score_fn(sde), None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9, eps=eps, denoise=False)
            for nfe in nfes:
                e = {lab: float((sample(sde, mix.score_fn(sde), None, x_T=x_T, sampler=DPMSolver(**kw), steps=nfe, eps=eps,
                                        denoise=False) - ref).flatten(1).norm(dim=1).mean())
                     for lab, kw in (("default", {}), ("auto", {"method": "auto"}))}
                rows.append({"data": d_name, "sde": s_name, "NFE": nfe, "default": e["default"], "auto": e["auto"],
                             "auto / default": round(e["auto"] / e["default"], 3)})


def auto_main(args) -> int:
    torch.set_num_threads(1)
    out = out_dir(args.out)
    rows: list = []
    auto_vs_default(RACE_NFES, 128, rows)
    print(write_results(out, "auto_vs_default", rows, {"machine": machine_note("cpu"), "n": 128}))
    q = [r["auto / default"] for r in rows]
    worst = max(rows, key=lambda r: r["auto / default"])
    print(f"auto / default over {len(q)} cases: geometric mean {math.exp(sum(map(math.log, q)) / len(q)):.3f}, "
          f"above 1 in {sum(v > 1 for v in q)}, max {worst['auto / default']:.2f} ({worst['data']}, {worst['sde']}, "
          f"{worst['NFE']} NFE)")
    return 0


# `--along`: what the solver meets on the way, D and ε along the converged path, with the two grids marked
ALONG_PATHS = 4


def _along_case(spec: str):
    """`exact` (the oracle's ring8 under VP) or a trained `RUN[:K]`: (label, sde, score_fn, event shape)."""
    if spec == "exact":
        sde = scoresde.VPSDE()
        return "exact score (ring8, VP)", sde, scoresde.ring8().score_fn(sde), (2,)
    return _trained_case(spec)


def along_path(specs, out, steps=10) -> list:
    """Per case: D = (x + σ² s)/m and ε = -σ s along dopri5 paths (rtol = atol = 1e-6) from 4 prior draws, against
    VP's t^{0.4} at the same noise level (the axis in which `vp_power`'s steps are even), and the t of the
    default's and `auto`'s grids at `steps` steps. Returns one summary row per case: the largest |D| jump between
    neighbouring path points in the first tenth of the axis (high noise) over its jump in the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchdiffeq import odeint

    from scoresde.samplers import _initial_state

    vp = scoresde.VPSDE()
    fig, axes = plt.subplots(2, len(specs), figsize=(4.2 * len(specs), 6.4), squeeze=False)
    rows = []
    for col, spec in enumerate(specs):
        label, sde, score, shape = _along_case(spec)
        dtype = torch.float64 if spec == "exact" else torch.float32
        eps = sde.default_eps
        x_T = _initial_state(sde, (ALONG_PATHS,) + shape, None, torch.Generator().manual_seed(0), torch.device("cpu"), dtype)
        # the axis: VP's t^{0.4} at each noise level, from the SDE's own λ(T) to λ(eps)
        lam_ends = sde.half_log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
        u_ends = vp.t_from_half_log_snr(lam_ends) ** 0.4
        u = torch.linspace(float(u_ends[0]), float(u_ends[1]), 301, dtype=torch.float64)
        ts = sde.t_from_half_log_snr(vp._half_log_snr(u ** 2.5)).clamp(eps, sde.T)
        ts[0], ts[-1] = sde.T, eps
        flow = sde.reverse(score, probability_flow=True)
        B = x_T.shape[0]
        with torch.no_grad():
            xs = odeint(lambda t, y: flow.drift(y, t.clamp(eps, sde.T).to(y.dtype).expand(B)), x_T, ts.to(dtype),
                        rtol=1e-6, atol=1e-6)
            sched = sde._schedule(ts.to(dtype))
            d_path, e_path = [], []
            for i in range(len(ts)):
                s = score(xs[i], ts[i].to(dtype).expand(B))
                d_path.append(sched[i].x0_from_score(xs[i], s).flatten(1)[:, 0])
                e_path.append(sched[i].eps_from_score(s).flatten(1)[:, 0])
        d_path, e_path = torch.stack(d_path), torch.stack(e_path)
        jumps = d_path.diff(dim=0).abs().max(dim=1).values
        head = len(jumps) // 10
        rows.append({"case": label, "max |ΔD| high noise (first tenth)": f"{float(jumps[:head].max()):.3g}",
                     "max |ΔD| rest": f"{float(jumps[head:].max()):.3g}",
                     "ratio": round(float(jumps[:head].max() / jumps[head:].max()), 2)})
        for row, (path, name) in enumerate(((d_path, "D (data prediction), 1st coordinate"),
                                             (e_path, "ε (noise prediction), 1st coordinate"))):
            ax = axes[row, col]
            ax.plot(u.numpy(), path.numpy(), lw=1)
            lo, hi = np.quantile(path.numpy(), [0.02, 0.98])
            pad = 0.25 * (hi - lo) + 1e-3
            ax.set_ylim(lo - pad, hi + pad)  # the high-noise blow-up of D runs off the top: its start is what shows
            for name_g, solver, color, y in (("default", DPMSolver(), "C3", 0.02), ("auto", DPMSolver(method="auto"), "k", 0.08)):
                grid = solver.grid(sde, steps, eps, torch.zeros((), dtype=torch.float64))
                gu = vp.t_from_half_log_snr(sde.half_log_snr(grid.to(torch.float64))) ** 0.4
                ax.plot(gu.numpy(), np.full(len(gu), lo - pad + y * (hi - lo + 2 * pad)), "|", color=color, ms=8,
                        label=f"{name_g} grid, {steps} steps")
            ax.set_title(f"{label}\n{name}", fontsize=8)
            ax.invert_xaxis()
            ax.set_xlabel("VP t^0.4 at the same noise level (sampling runs right to left)", fontsize=7)
        axes[0, col].legend(fontsize=6, loc="upper left")
    fig.suptitle("What a fixed-step solver meets: D and ε along converged probability-flow paths", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return rows


def along_main(args) -> int:
    torch.set_num_threads(1)
    out = out_dir(args.out)
    rows = along_path(args.along, out / "solvers_along_path.png")
    print(write_results(out, "along_path", rows, {"machine": machine_note("cpu"), "paths": ALONG_PATHS}))
    print(f"wrote {out}/along_path.md, solvers_along_path.png")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.solvers", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one SDE, the ring, two NFE values (< 1 min)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--race", action="store_true", help="only the race against diffusers' and k-diffusion's samplers "
                   "(when importable; pip install 'scoresde[bench]'): ours / best peer at 10 and 20 NFE per case")
    p.add_argument("--race-runs", nargs="+", metavar="RUN[:K]", help="with --race: race on these trained runs (default "
                   "VP SDE; RUN:K: class K under classifier-free guidance) instead of the exact mixtures")
    p.add_argument("--race-n", type=int, default=128, help="x_T samples per race case (default 128)")
    p.add_argument("--trained", nargs="+", metavar="RUN[:K]", help="only the dpm_solver recipes on these trained runs "
                   "(RUN:K: class K under classifier-free guidance): path error against each model's own converged ODE")
    p.add_argument("--trained-n", type=int, default=256, help="x_T samples per trained model (default 256)")
    p.add_argument("--nfe", default=None, help=f"with --trained: comma-separated NFE (default {','.join(map(str, TRAINED_NFES))})")
    p.add_argument("--auto", action="store_true", help='only dpm_solver method="auto" against the default on exact '
                   "mixtures under six SDEs, pathwise error at 10 and 20 NFE (30 s)")
    p.add_argument("--along", nargs="+", metavar="RUN[:K]|exact", help="only a picture: D and ε along converged "
                   "probability-flow paths of these runs (`exact`: the oracle's ring under VP), with the default's "
                   "and auto's 10-step grids marked; writes solvers_along_path.png")
    args = p.parse_args(argv)
    if args.along:
        return along_main(args)
    if args.auto:
        return auto_main(args)
    if args.race or args.race_runs:
        return race_main(args)
    if args.trained:
        return trained_main(args)
    out, device, dtype = out_dir(args.out), torch.device(args.device), torch.float64
    if args.quick:
        sdes, datasets, nfes, n, n_path, n_over, nfe_over = ["vp"], ["ring"], [10, 50], 400, 64, 2000, 50
    else:
        sdes, datasets, nfes, n, n_path, n_over, nfe_over = list(SDES), ["ring", "mix64"], [10, 20, 50, 100, 250, 1000], 1000, 256, 10000, 100
    rows, curves, panels = [], {}, {}
    quality_grid(sdes, datasets, nfes, n, device, dtype, rows, curves, panels)
    fast_rows: list = []
    fast_samplers(sdes, datasets + ([] if args.quick else ["grid16", "rand16"]), n_path, device, dtype, fast_rows)
    over_rows: list = []
    overhead(n_over, nfe_over, device, torch.float32, over_rows)
    default_rows: list = []
    if not args.quick:
        user_sde_defaults(1000, default_rows)
    meta = {"machine": machine_note(device), "n": n, "quick": args.quick}
    print(write_results(out, "solvers", rows, meta))
    print(write_results(out, "fast10", fast_rows, meta))
    summary = fast_summary(fast_rows)
    (out / "fast10_summary.md").write_text(summary + "\n")
    print(summary)
    print(write_results(out, "overhead", over_rows, meta))
    if default_rows:
        print(write_results(out, "user_sde_defaults", default_rows, meta))
    from scoresde.plotting import quality_vs_nfe, scatter_panels

    mix, _ = _data("ring")
    quality_vs_nfe(curves, out / "solvers_quality.png", title=f"VP, 2-D ring, exact score: MMD² vs NFE (n={n})",
                   floor=max(float(rows[0]["MMD² floor ±"]), 1e-6))
    scatter_panels(panels, out / "solvers_scatter.png", reference=mix.sample(n, generator=torch.Generator().manual_seed(11)), ncols=4)
    print(f"wrote {out}/solvers.md, fast10.md, overhead.md, solvers_quality.png, solvers_scatter.png  ({machine_note(device)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
