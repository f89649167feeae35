"""Samplers against the exact-score oracle: pathwise orders, distributions, reproducibility, adapters, errors."""

import math

import pytest
import torch

import scoresde
from scoresde.metrics import mmd2, mode_tv
from scoresde.samplers import (
    DPMSolver,
    EulerMaruyama,
    ODESampler,
    PCSampler,
    ReverseDiffusion,
    SDESampler,
    TorchSDEReverse,
    sample,
)
from conftest import CosineVPNoClosedForm

F64 = torch.float64
GAUSS = scoresde.GaussianMixture([1.0], [[1.0, -0.5]], [0.25])  # single Gaussian: the PF-ODE flow map is exact


def _sdes():
    return {"vp": scoresde.VPSDE(), "subvp": scoresde.SubVPSDE(), "ve": scoresde.VESDE(), "user_cosine": CosineVPNoClosedForm()}


def exact_flow(sde, x_T, eps):
    """PF-ODE flow map for N(μ, s² I) data: x_t = m_t μ + √(v_t / v_T) (x_T - m_T μ), v = m² s² + σ²."""
    m, std = sde.marginal_coefs(torch.tensor([sde.T, eps], dtype=F64))
    v = m**2 * 0.25 + std**2
    mu = GAUSS.means[0]
    return m[1] * mu + (v[1] / v[0]).sqrt() * (x_T - m[0] * mu)


def fitted_order(sde, sampler, steps_list, eps=1e-3):
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = exact_flow(sde, x_T, eps)
    errs = []
    for n in steps_list:
        x = sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=sampler, steps=n, eps=eps, denoise=False)
        errs.append(float((x - ref).abs().max()))
    logn = torch.tensor(steps_list, dtype=F64).log()
    loge = torch.tensor(errs, dtype=F64).log()
    slope = -((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()
    return float(slope), errs


# (sampler, step counts in the asymptotic range, declared order)
ORDER_CASES = {
    "ode-euler": (lambda: ODESampler("euler"), [64, 128, 256], 1),
    "ode-midpoint": (lambda: ODESampler("midpoint"), [32, 64, 128], 2),
    "ode-heun2": (lambda: ODESampler("heun2"), [32, 64, 128], 2),
    "ode-rk4": (lambda: ODESampler("rk4"), [16, 32, 64], 4),
    "dpm1": (lambda: DPMSolver(1, method="dpm++", timesteps="log_snr", corrector=False), [16, 32, 64], 1),
    "dpm2": (lambda: DPMSolver(2, method="dpm++", timesteps="log_snr", corrector=False), [16, 32, 64], 2),
    "dpm3": (lambda: DPMSolver(3, method="dpm++", timesteps="log_snr", corrector=False), [16, 32, 64], 3),
    # UniC raises the order by one at no extra NFE; the default grid is plain log-SNR from ~30 steps on
    "dpm1+unic": (lambda: DPMSolver(1, method="dpm++", timesteps="log_snr"), [16, 32, 64], 2),
    "dpm2+unic": (lambda: DPMSolver(2, method="dpm++", timesteps="log_snr_capped"), [32, 64, 128], 3),
    # the default: DEIS tAB 3 in ε + UniC on the blend grid (2M only below 8 steps)
    "dpm-default": (lambda: DPMSolver(), [32, 64, 128], 4),
    "dpm2+unic-nohist": (lambda: DPMSolver(2, method="dpm++", timesteps="log_snr", correct_history=False), [32, 64, 128], 3),
}


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "user_cosine"])
@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_pathwise_order(sde_name, case):
    if sde_name == "user_cosine" and case in ("ode-midpoint", "ode-heun2"):
        pytest.skip("user SDE: one solver per order is enough (quadrature marginals are slow)")
    make, steps_list, order = ORDER_CASES[case]
    sampler = make()
    assert sampler.order == order  # the table documents what the sampler declares; the fit reads the declaration
    order = sampler.order
    slope, errs = fitted_order(_sdes()[sde_name], sampler, steps_list)
    assert errs[-1] < errs[0]
    # At least the declared order; 3M on this smooth problem runs ahead of it (measured ~3.6-4).
    assert order - 0.3 < slope < order + 1.2, (slope, errs)


def test_dpm_solver_beats_ddim_and_rk4_at_equal_nfe():
    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = exact_flow(sde, x_T, 1e-3)
    err = lambda s, n: float((sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=s, steps=n, denoise=False) - ref).abs().max())
    # 20 NFE each; plain DPM-Solver++ on the log-SNR grid
    dpm = lambda k: DPMSolver(k, method="dpm++", timesteps="log_snr", corrector=False)
    assert err(dpm(3), 19) < 0.1 * err(dpm(1), 20)
    assert err(dpm(3), 19) < err(ODESampler("heun2"), 10)
    # UniC at no extra NFE: below the same predictor without it, on the same grid, once past ~15 steps
    # (at 6-12 steps on this single Gaussian either may win: the errors change sign)
    for n in (20, 40):
        assert err(DPMSolver(2, method="dpm++", timesteps="log_snr"), n) < 0.7 * err(dpm(2), n)
    # the default (DEIS tAB 3 in ε + UniC on the blend grid) stays well below DDIM and improves with steps
    assert err(DPMSolver(), 10) < 0.25 * err(dpm(1), 10)
    assert err(DPMSolver(), 40) < err(DPMSolver(), 20) < err(DPMSolver(), 10)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "user_cosine"])
def test_log_snr_capped_grid(sde_name):
    from scoresde.samplers import timesteps

    sde, ref = _sdes()[sde_name], torch.zeros(1, dtype=F64)
    for n in (1, 5, 10, 40):
        ts = timesteps.log_snr_capped(sde, n, 1e-3, ref)
        plain = timesteps.log_snr(sde, n, 1e-3, ref)
        assert ts.shape == (n + 1,) and float(ts[0]) == sde.T and float(ts[-1]) == 1e-3
        assert bool((ts[1:] < ts[:-1]).all())
        lam, lam_plain = sde.half_log_snr(ts), sde.half_log_snr(plain)
        if n == 1 or float(lam_plain[-2]) <= 3.0 * n / 10:  # nothing to cap: the plain log-SNR grid
            torch.testing.assert_close(lam, lam_plain, rtol=1e-9, atol=1e-9)
        else:  # uniform in λ up to the cap, then one step to eps
            torch.testing.assert_close(lam[-2], torch.tensor(3.0 * n / 10, dtype=F64), rtol=1e-9, atol=1e-9)
            d = lam[1:-1] - lam[:-2]
            torch.testing.assert_close(d, d[:1].expand_as(d), rtol=1e-9, atol=1e-9)
    # at 10 steps the cap bites on all four (plain penultimate λ: VP 3.6, sub-VP 7.7, VE 5.6, cosine 4.1); at 40 on none
    assert float(sde.half_log_snr(timesteps.log_snr_capped(sde, 10, 1e-3, ref))[-2]) == pytest.approx(3.0)
    assert float(sde.half_log_snr(timesteps.log_snr(sde, 40, 1e-3, ref))[-2]) < 3.0 * 40 / 10


def test_dopri5_reaches_small_eps_on_vp():
    # DESIGN.md: dopri5 down to a small eps may probe t < 0 ("underflow in dt") unless the solver lands on eps.
    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    for eps in (1e-3, 1e-5):
        st = {}
        x = sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler="ode", eps=eps, denoise=False, rtol=1e-8, atol=1e-8, stats=st)
        assert torch.isfinite(x).all()
        assert (x - exact_flow(sde, x_T, eps)).abs().max() < 1e-5
        assert st["nfe"] > 10


# -- distributions -----------------------------------------------------------------

RING = scoresde.ring8()
N_DIST = 1000


@pytest.fixture(scope="module")
def ring_data():
    return RING.sample(N_DIST, generator=torch.Generator().manual_seed(99), dtype=F64)


GENEROUS = {
    "euler_maruyama": dict(steps=500),
    "reverse_diffusion": dict(steps=500),
    "pc": dict(steps=200),
    "sde": dict(steps=300),
    "ode": dict(),
    "dpm_solver": dict(steps=20),
}


@pytest.mark.parametrize("name", list(GENEROUS))
def test_generous_steps_match_ring(name, ring_data):
    sde = scoresde.VPSDE()
    x = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler=name, generator=torch.Generator().manual_seed(1), dtype=F64, **GENEROUS[name])
    r = mmd2(x, ring_data)
    assert float(r.value) < 3 * float(r.stderr), (float(r.value), float(r.stderr))
    assert float(mode_tv(x, RING)) < 0.06


@pytest.mark.parametrize("name,kw", [("euler_maruyama", dict(steps=8)), ("ode", dict(method="euler", steps=4)), ("dpm_solver", dict(steps=2))])
def test_few_steps_are_detected(name, kw, ring_data):
    sde = scoresde.VPSDE()
    x = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler=name, generator=torch.Generator().manual_seed(1), dtype=F64, **kw)
    r = mmd2(x, ring_data)
    assert float(r.value) > 5 * float(r.stderr)


def test_user_linear_sde_euler_maruyama_matches_ring(ring_data):
    sde = CosineVPNoClosedForm()
    x = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler="euler_maruyama", steps=200, generator=torch.Generator().manual_seed(2), dtype=F64)
    r = mmd2(x, ring_data)
    assert float(r.value) < 3 * float(r.stderr)
    few = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(2), dtype=F64)
    assert float(mmd2(few, ring_data).value) > 5 * float(r.stderr)


def test_mixture64_dpm_solver_and_ode():
    mix = scoresde.mixture64()
    sde = scoresde.VPSDE()
    data = mix.sample(400, generator=torch.Generator().manual_seed(5), dtype=F64)
    for name, kw in [("dpm_solver", dict(steps=20)), ("ode", dict(method="rk4", steps=12))]:
        x = sample(sde, mix.score_fn(sde), (400, 1, 8, 8), sampler=name, generator=torch.Generator().manual_seed(3), dtype=F64, **kw)
        r = mmd2(x, data)
        assert x.shape == (400, 1, 8, 8)
        assert float(r.value) < 3 * float(r.stderr), name
        assert float(mode_tv(x, mix)) < 0.08
    few = sample(sde, mix.score_fn(sde), (400, 1, 8, 8), sampler="dpm_solver", steps=2, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert float(mmd2(few, data).value) > 5 * float(r.stderr)


def test_langevin_corrector_reduces_error(ring_data):
    # 5 reverse-diffusion steps on VE leave a visible error; Langevin moves at each p_t pull the samples back
    # towards it (MCMC is exact in the limit of many small moves). Measured: 0.040 -> 0.009.
    sde = scoresde.VESDE()
    kw = dict(steps=5, generator=torch.Generator().manual_seed(4), dtype=F64)
    plain = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler="reverse_diffusion", **kw)
    kw["generator"] = torch.Generator().manual_seed(4)
    corrected = sample(sde, RING.score_fn(sde), (N_DIST, 2), sampler="pc", corrector_steps=10, snr=0.3, **kw)
    e_plain, e_corr = mmd2(plain, ring_data), mmd2(corrected, ring_data)
    assert float(e_corr.value) + 2 * float(e_corr.stderr) < float(e_plain.value), (float(e_plain.value), float(e_corr.value))


# -- protocol, reproducibility, adapters ----------------------------------------------

ALL = [
    ("euler_maruyama", {}), ("reverse_diffusion", {}), ("pc", {}), ("langevin", {}),
    ("sde", {}), ("sde", dict(method="srk")), ("sde", dict(method="reversible_heun")),
    ("ode", {}), ("ode", dict(method="rk4")), ("dpm_solver", {}),
]


@pytest.mark.parametrize("name,kw", ALL)
def test_seeded_reproducibility(name, kw, device):
    sde = scoresde.VESDE()
    run = lambda seed: sample(sde, RING.score_fn(sde), (16, 2), sampler=name, steps=6, device=device,
                              generator=torch.Generator(device).manual_seed(seed), **kw)
    a, b, c = run(0), run(0), run(1)
    assert a.device.type == device.type and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the prior draw (and any noise) follows the generator


def _every_sampler_and_method():
    from scoresde.samplers import SAMPLERS, sampler_methods

    for name in SAMPLERS:
        methods = sampler_methods(name)
        for kw in ([dict(method=m) for m in methods] if methods else [{}]):
            yield name, kw
    yield "pc", dict(corrector_steps=2)
    yield "langevin", dict(corrector_steps=3)
    for order in (1, 2, 3):
        yield "dpm_solver", dict(order=order)


@pytest.mark.parametrize("name,kw", list(_every_sampler_and_method()))
def test_nfe_matches_declared_cost(name, kw):
    """API.md: for every fixed-step sampler and method, nfe == steps * nfe_per_step (+ nfe_init) (+ 1 with denoise),
    the declared values read from the sampler object (and reported in stats), the NFE from the counter."""
    from scoresde.samplers import _from_name

    sde, steps = scoresde.VPSDE(), 7
    declared = _from_name(name, dict(kw))
    st, st2 = {}, {}
    sample(sde, RING.score_fn(sde), (4, 2), sampler=name, steps=steps, stats=st, generator=torch.Generator().manual_seed(0), **kw)
    sample(sde, RING.score_fn(sde), (4, 2), sampler=name, steps=steps, stats=st2, denoise=False,
           generator=torch.Generator().manual_seed(0), **kw)
    assert st["nfe"] == st2["nfe"] + 1  # the Tweedie denoising step
    assert st["nfe_per_step"] == declared.nfe_per_step and st["nfe_init"] == declared.nfe_init
    if declared.nfe_per_step is None:  # adaptive, or not constant per step (Adams' RK4 warm start)
        assert name == "ode" and st2["nfe"] > 0
    else:
        assert st2["nfe"] == steps * declared.nfe_per_step + declared.nfe_init, (st2, declared)


def test_torchsde_euler_equals_our_euler_maruyama_on_shared_path():
    import torchsde

    sde = scoresde.VPSDE()
    steps, eps, B = 50, 1e-3, 6
    x_T = sde.prior_sample((B, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    span = sde.T - eps
    bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=(B, 2), dtype=F64, entropy=7)
    ours_noise = lambda t, t_next: bm(float(sde.T - t), float(sde.T - t_next)) / math.sqrt(float(t - t_next))
    ours = sample(sde, RING.score_fn(sde), None, x_T=x_T, sampler=EulerMaruyama(), noise_sampler=ours_noise,
                  steps=steps, denoise=False)
    theirs = sample(sde, RING.score_fn(sde), None, x_T=x_T, sampler=SDESampler("euler", bm=bm), steps=steps, denoise=False)
    # Both step the same grid now (torchsde's solver interval by interval): equal to rounding.
    assert (ours - theirs).abs().max() < 1e-12


def test_torchsde_srk_converges_strongly_with_additive_noise():
    # g(t) does not depend on x: torchsde's VJP of g must see zeros, and srk must beat euler on one path.
    import torchsde

    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=sde.T - 1e-3, size=(6, 2), dtype=F64, entropy=3, levy_area_approximation="space-time")
    run = lambda method, n: sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=SDESampler(method, bm=bm), steps=n, denoise=False)
    fine = run("srk", 200)
    assert (run("srk", 50) - fine).abs().max() < (run("euler", 50) - fine).abs().max()


def test_torchsde_adapter_shapes():
    sde = scoresde.VESDE()
    adapter = TorchSDEReverse(sde, RING.score_fn(sde), (3, 2))
    y = torch.randn(3, 2)
    s = torch.tensor(0.25)
    assert adapter.f(s, y).shape == (3, 2) and adapter.g(s, y).shape == (3, 2)
    # s = T - t: drift flips sign against the reverse SDE's drift at t = 0.75
    rev = sde.reverse(RING.score_fn(sde))
    assert torch.allclose(adapter.f(s, y), -rev.drift(y, torch.full((3,), 0.75)))


def test_objects_and_predictors_are_accepted():
    sde = scoresde.VPSDE()
    gen = lambda: torch.Generator().manual_seed(0)
    a = sample(sde, RING.score_fn(sde), (8, 2), sampler="reverse_diffusion", steps=5, generator=gen())
    b = sample(sde, RING.score_fn(sde), (8, 2), sampler=ReverseDiffusion(), steps=5, generator=gen())
    c = sample(sde, RING.score_fn(sde), (8, 2), sampler=PCSampler("reverse_diffusion", "none"), steps=5, generator=gen())
    assert torch.equal(a, b) and torch.equal(a, c)
    d = sample(sde, RING.score_fn(sde), (8, 2), sampler=DPMSolver, order=2, steps=5, generator=gen())
    assert d.shape == (8, 2)


class _NotLinear(scoresde.SDE):
    T = 1.0

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float32).reshape(-1))

    def marginal(self, x0, t):
        raise NotImplementedError

    def prior_sample(self, shape, *, generator=None, device=None, dtype=None):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def prior_logp(self, z):
        raise NotImplementedError


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(sampler="nope"), ValueError, "sampler"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.5), ValueError, "eps"),
    (dict(shape=(0, 2)), ValueError, "shape"),
    (dict(shape=(4,)), ValueError, "shape"),
    (dict(shape="4x2"), TypeError, "shape"),
    (dict(shape=None), ValueError, "shape"),
    (dict(x_T=torch.tensor([[0.0, float("nan")]])), ValueError, "x_T"),
    (dict(x_T=torch.zeros(3, 2), shape=(4, 2)), ValueError, "shape"),
    (dict(sampler="ode", method="rk5"), ValueError, "method"),
    (dict(sampler="dpm_solver", order=5), ValueError, "order"),
    (dict(sampler="dpm_solver", bogus=1), TypeError, "bogus"),
    (dict(sampler="pc", predictor="leapfrog"), ValueError, "predictor"),
    (dict(sampler="pc", snr=-1.0), ValueError, "snr"),
    (dict(sampler=DPMSolver(), order=2), TypeError, "options"),
    (dict(sampler=42), TypeError, "sampler"),
    (dict(score_fn=None), TypeError, "score_fn"),
])
def test_bad_inputs_raise_naming_the_argument(kwargs, exc, word):
    sde = scoresde.VPSDE()
    args = dict(sde=sde, score_fn=RING.score_fn(sde), shape=(4, 2))
    args.update(kwargs)
    with pytest.raises(exc, match=word):
        sample(args.pop("sde"), args.pop("score_fn"), args.pop("shape"), steps=args.pop("steps", 3), **args)


def test_dpm_solver_needs_a_linear_sde():
    with pytest.raises(TypeError, match="LinearSDE"):
        sample(_NotLinear(), lambda x, t: -x, (4, 2), sampler="dpm_solver", steps=3)
    # the generic predictors only need drift and diffusion
    x = sample(_NotLinear(), lambda x, t: -x, (4, 2), sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


def test_dpm_solver_equals_an_independent_unipc():
    # UniP-2 (bh2) is DPM-Solver++(2M); with UniC it must match the benchmark's own UniPC loop (written apart from
    # dpm_solver, from the paper) to rounding, on a user SDE too
    from benchmarks.solvers import unipc

    for sde in (scoresde.VPSDE(), scoresde.VESDE(), CosineVPNoClosedForm()):
        x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
        score = RING.score_fn(sde)
        for grid in ("log_snr", "uniform", "log_snr_capped"):
            ours = sample(sde, score, None, x_T=x_T, sampler=DPMSolver(2, method="dpm++", timesteps=grid, correct_history=False), steps=10, eps=1e-3, denoise=False)
            torch.testing.assert_close(ours, unipc(sde, score, x_T, 10, 1e-3, 2, "bh2", grid), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion"])
def test_weak_order_in_variance(name):
    # Gaussian data, exact score: the sampler's output is Gaussian and its variance error is the weak error of the
    # second moment, O(h^weak_order). 2e5 samples: the variance's Monte Carlo error is ~0.3%, the error at 64 steps 2-10%.
    predictor = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion}[name]()
    sde, var = scoresde.VPSDE(), 0.25
    gauss = scoresde.GaussianMixture([1.0], [[0.5]], [var])
    steps, errs = [16, 32, 64], []
    for n in steps:
        x = sample(sde, gauss.score_fn(sde), (200_000, 1), sampler=PCSampler(predictor, "none"), steps=n, generator=torch.Generator().manual_seed(n),
                   dtype=F64, denoise=False)
        errs.append(abs(float(x.var()) / var - 1))
    slope = -math.log(errs[-1] / errs[0]) / math.log(steps[-1] / steps[0])
    declared = predictor.weak_order
    assert declared == 1.0 and declared - 0.3 < slope < declared + 0.5, (slope, errs)


# -- strong (pathwise) order of the stochastic samplers, on one Brownian path ------------------------------

STRONG_CASES = {
    "euler_maruyama": (EulerMaruyama, [32, 64, 128, 256]),
    "reverse_diffusion": (ReverseDiffusion, [32, 64, 128, 256]),
    **{f"sde-{m}": (lambda m=m: SDESampler(m), [32, 64, 128, 256]) for m in ("euler", "milstein", "heun", "midpoint", "euler_heun", "srk")},
    "sde-reversible_heun": (lambda: SDESampler("reversible_heun"), [256, 512, 1024]),  # unstable below ~100 steps on VP
}


@pytest.fixture(scope="module")
def brownian_problems():
    import torchsde

    out = {}
    for name, sde in (("vp", scoresde.VPSDE()), ("ve", scoresde.VESDE())):
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
        bm = torchsde.BrownianInterval(t0=0.0, t1=sde.T - 1e-3, size=(16, 2), dtype=F64, entropy=5,
                                       levy_area_approximation="space-time")
        ref = sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=SDESampler("srk", bm=bm), steps=1536, eps=1e-3, denoise=False)
        out[name] = (sde, x_T, bm, ref)
    return out


@pytest.mark.parametrize("sde_name,case", [("vp", c) for c in STRONG_CASES] + [("ve", "euler_maruyama"), ("ve", "reverse_diffusion"), ("ve", "sde-heun")])
def test_strong_order_on_a_shared_brownian_path(sde_name, case, brownian_problems):
    """Additive noise (g does not depend on x): every method converges pathwise at least at its declared order,
    ours fed the path's increments through `noise_sampler`, torchsde's through `bm`; reference: srk at 1536 steps."""
    sde, x_T, bm, ref = brownian_problems[sde_name]
    make, steps_list = STRONG_CASES[case]
    sampler = make()
    noise = lambda t, tn: bm(float(sde.T - t), float(sde.T - tn)) / math.sqrt(float(t - tn))
    errs = []
    for n in steps_list:
        kw = dict(sampler=SDESampler(sampler.method, bm=bm)) if isinstance(sampler, SDESampler) else dict(sampler=sampler, noise_sampler=noise)
        x = sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, steps=n, eps=1e-3, denoise=False, **kw)
        errs.append(float((x - ref).abs().max()))
    logn, loge = torch.tensor(steps_list, dtype=F64).log(), torch.tensor(errs, dtype=F64).log()
    slope = float(-((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum())
    declared = sampler.order
    assert declared - 0.3 < slope < declared + 1.2, (slope, errs)


def test_callback_and_step_hook_see_every_step():
    # the loop's two per-step entry points: callback (previews) and the hook where a condition acts
    from scoresde.samplers import StepHook

    class PinFirstCoordinate(StepHook):
        """A replacement-style hook: after each step the first coordinate is the forward-noised value 0."""

        def after_step(self, score_fn, x, i, state, sampler, sampler_state, noise):
            x = x.clone()
            x[:, 0] = 0.0
            return x, sampler_state, (state or 0) + 1

        def finish(self, x, state, stats):
            stats["hook_steps"] = state
            return x

    sde, seen, st = scoresde.VPSDE(), [], {}
    for name in ("euler_maruyama", "pc", "sde", "dpm_solver", ("ode", dict(method="rk4"))):
        name, kw = (name, {}) if isinstance(name, str) else name
        seen.clear()
        x = sample(sde, RING.score_fn(sde), (16, 2), sampler=name, steps=6, stats=st, denoise=False,
                   callback=lambda i, t, x: seen.append((i, float(t[0]), float(x[:, 0].abs().max()))),
                   conditioning=PinFirstCoordinate(), **kw)
        ts = scoresde.samplers.timesteps.get_timesteps(_from_name_grid(name, kw), sde, 6, sde.default_eps, x)
        assert [s[0] for s in seen] == list(range(6)) and st["hook_steps"] == 6
        assert [s[1] for s in seen] == pytest.approx(ts[1:].tolist())
        assert all(s[2] == 0.0 for s in seen) and bool((x[:, 0] == 0).all())
    with pytest.raises(ValueError, match="conditioning"):
        sample(sde, RING.score_fn(sde), (4, 2), sampler="ode", conditioning=PinFirstCoordinate())


def _from_name_grid(name, kw):
    from scoresde.samplers import _from_name

    return _from_name(name, dict(kw)).timesteps


def test_every_named_sampler_takes_a_grid():
    # sampler options go to the sampler's constructor: a grid for each of them (a regression: the bare predictors had none)
    sde = scoresde.VPSDE()
    for name in ("euler_maruyama", "reverse_diffusion", "pc", "langevin", "sde", "dpm_solver"):
        a = sample(sde, RING.score_fn(sde), (8, 2), sampler=name, steps=4, timesteps="log_snr", generator=torch.Generator().manual_seed(0))
        b = sample(sde, RING.score_fn(sde), (8, 2), sampler=name, steps=4, timesteps="uniform", generator=torch.Generator().manual_seed(0))
        assert not torch.equal(a, b), name
