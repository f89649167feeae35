"""Higher-order multistep exponential integrators (`DPMSolver(method="deis" | "ipndm")`) and the per-budget default:
declared orders against slopes on the exact flow map, identities with the other methods, NFE, errors."""

import pytest
import torch

import scoresde
from scoresde.samplers import DPMSolver, sample, timesteps
from test_samplers import GAUSS, RING, _sdes, exact_flow, fitted_order

F64 = torch.float64

# (sampler, step counts in the asymptotic range); the declared order is read from the object
ORDER_CASES = {
    "deis-eps-t3": (lambda: DPMSolver(3, method="deis", timesteps="log_snr", corrector=False), [32, 64, 128]),
    "deis-eps-t4": (lambda: DPMSolver(4, method="deis", timesteps="log_snr", corrector=False), [32, 64, 128]),
    "deis-data-lambda4": (lambda: DPMSolver(4, method="deis", prediction="data", basis="lambda", timesteps="log_snr",
                                            corrector=False), [32, 64, 128]),
    "deis-eps-t3+C": (lambda: DPMSolver(3, method="deis", timesteps="log_snr"), [32, 64, 128]),
    "deis-eps-vp_t4+C": (lambda: DPMSolver(4, method="deis", basis="vp_t", timesteps="log_snr"), [32, 64, 128]),
    "ipndm4": (lambda: DPMSolver(4, method="ipndm", timesteps="log_snr", corrector=False), [32, 64, 128]),
    # "auto" (exact-score recipe, vp_power grid): UniC's extra order shows at 16-64 steps (slope ~6.2), fades after
    "auto": (lambda: DPMSolver(method="auto"), [32, 64, 128]),
    "default": (lambda: DPMSolver(), [32, 64, 128]),
}


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "user_cosine"])
@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_pathwise_order(sde_name, case):
    if sde_name != "vp" and case not in ("deis-eps-t4", "deis-eps-t3+C", "default"):
        # the default on sub-VP and VE stops improving at ~1e-5 from 32 steps on (its grid runs to λ(eps) ≈ 9
        # there): its order is checked on VP; its few-step error on the other SDEs in test_default_on_other_sdes
        pytest.skip("other SDEs: one DEIS case per corrector setting")
    make, steps_list = ORDER_CASES[case]
    sampler = make()
    slope, errs = fitted_order(_sdes()[sde_name], sampler, steps_list)
    assert errs[-1] < errs[0]
    assert sampler.order - 0.3 < slope < sampler.order + 1.2, (sampler.order, slope, errs)


# the default before the per-budget DEIS recipe: 2M + UniC on the capped log-SNR grid, history as evaluated
OLD_DEFAULT = dict(order=2, method="dpm++", timesteps="log_snr_capped", correct_history=False)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "user_cosine"])
def test_default_on_other_sdes(sde_name):
    # below the old default on the single Gaussian (measured 0.89-0.91x at 5 steps, 0.18-0.73x at 10, 0.11-0.25x
    # at 20), and small; "auto" not above it
    sde = _sdes()[sde_name]
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = exact_flow(sde, x_T, 1e-3)
    e = lambda s, n: float((sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=s, steps=n, eps=1e-3, denoise=False) - ref).abs().max())
    for n, bound in ((5, 0.95), (10, 0.8), (20, 0.3)):
        assert e(DPMSolver(), n) < bound * e(DPMSolver(**OLD_DEFAULT), n)
        assert e(DPMSolver(method="auto"), n) < max(e(DPMSolver(**OLD_DEFAULT), n), 1e-4)
    assert e(DPMSolver(), 20) < 4e-3 and e(DPMSolver(method="auto"), 20) < 1e-3


def test_deis_in_lambda_on_data_is_dpm_solver_3m():
    # the quadratic Lagrange interpolant of D in λ, integrated exactly, is DPM-Solver++(3M)'s update (the Taylor
    # terms with φ₂, φ₃); only the warm start differs (3M's 2S midpoint against a first-order step)
    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    ref = exact_flow(sde, x_T, 1e-3)
    e = lambda s: float((sample(sde, GAUSS.score_fn(sde), None, x_T=x_T, sampler=s, steps=32, eps=1e-3, denoise=False) - ref).abs().max())
    a = e(DPMSolver(3, method="deis", prediction="data", basis="lambda", timesteps="log_snr", corrector=False))
    b = e(DPMSolver(3, method="dpm++", timesteps="log_snr", corrector=False))
    assert a == pytest.approx(b, rel=0.05)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "user_cosine"])
def test_vp_t_basis_does_not_depend_on_the_clock(sde_name):
    # basis "vp_t" and the "vp_quadratic" grid read only λ: on VP they are basis "t" on the time-quadratic grid
    sde = _sdes()[sde_name]
    ref = torch.zeros(1, dtype=F64)
    ts = timesteps.vp_quadratic(sde, 10, 1e-3, ref)
    assert ts.shape == (11,) and float(ts[0]) == sde.T and float(ts[-1]) == 1e-3 and bool((ts[1:] < ts[:-1]).all())
    if sde_name == "vp":
        torch.testing.assert_close(ts, timesteps.time_quadratic(sde, 10, 1e-3, ref), rtol=1e-9, atol=1e-12)
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
        run = lambda basis: sample(sde, RING.score_fn(sde), None, x_T=x_T, steps=10, denoise=False,
                                   sampler=DPMSolver(3, method="deis", basis=basis, timesteps="time_quadratic"))
        torch.testing.assert_close(run("vp_t"), run("t"), rtol=1e-9, atol=1e-9)


def test_default_per_budget():
    # the default: DEIS tAB 3 in ε + UniC on the blend grid from 8 steps, 2M + UniC in D below; history corrected
    d = DPMSolver()
    assert (d.method, d.prediction, d.timesteps, d.order) == ("deis", "eps", "blend", 4)
    assert d.recipe_for(7) == ("dpm++", "data", 2, False) and d.recipe_for(8) == ("deis", "eps", 3, True) == d.recipe_for(100)
    assert DPMSolver(correct_history=True).recipe_for(5) == ("dpm++", "data", 2, True)
    assert d.nfe_per_step == 1 and d.nfe_init == 0
    a = DPMSolver(method="auto")
    assert (a.method, a.prediction, a.basis, a.timesteps, a.corrector) == ("deis", "data", "vp_t", "vp_power", True)
    e = DPMSolver(method="auto", prediction="eps", basis="t", timesteps="log_snr")  # options given are kept
    assert (e.prediction, e.basis, e.timesteps, e.order_for(14), e.order_for(15)) == ("eps", "t", "log_snr", 3, 4)
    a2 = DPMSolver(method="auto", order=2)
    assert a2.order_for(5) == a2.order_for(40) == 2 and a2.order == 3  # DEIS-2 + the corrector
    assert a.order_for(5) == a.order_for(14) == 3 and a.order_for(15) == 4 and a.order_for(40) == 4
    # a choice made turns the per-budget switch off: order 2 is DEIS-2 at every budget, method="dpm++" is 2M + UniC
    assert DPMSolver(2).recipe_for(5) == ("deis", "eps", 2, True)
    p = DPMSolver(method="dpm++")
    assert (p.recipe_for(5), p.recipe_for(50), p.order, p.timesteps) == (("dpm++", "data", 2, True),) * 2 + (3, "blend")
    # the blend grid: α = min(0.5, 0.03 N) of vp_quadratic in λ, the ends pinned
    sde, ref = scoresde.VPSDE(), torch.zeros(1, dtype=F64)
    for n in (5, 10, 20, 40):
        ts = timesteps.blend(sde, n, 1e-3, ref)
        a_n = min(0.5, 0.03 * n)
        lam = lambda g: sde._schedule(g(sde, n, 1e-3, ref)).lam
        torch.testing.assert_close(sde._schedule(ts).lam, a_n * lam(timesteps.vp_quadratic) + (1 - a_n) * lam(timesteps.log_snr_capped))
        assert float(ts[0]) == sde.T and float(ts[-1]) == 1e-3 and bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("kw", [dict(order=k, method=m) for m in ("deis", "ipndm") for k in (1, 2, 3, 4)]
                         + [dict(order=4, method="deis", corrector=False), {}])
def test_nfe_matches_declared_cost(kw):
    sde, steps = scoresde.VPSDE(), 7
    st = {}
    sample(sde, RING.score_fn(sde), (4, 2), sampler="dpm_solver", steps=steps, stats=st, denoise=False,
           generator=torch.Generator().manual_seed(0), **kw)
    assert st["nfe"] == steps * st["nfe_per_step"] + st["nfe_init"] == steps


def test_default_beats_the_old_default_at_10_and_20_nfe_on_the_ring():
    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = sample(sde, RING.score_fn(sde), None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9, eps=1e-3, denoise=False)
    err = lambda s, n: float((sample(sde, RING.score_fn(sde), None, x_T=x_T, sampler=s, steps=n, eps=1e-3, denoise=False) - ref)
                             .flatten(1).norm(dim=1).mean())
    # measured 0.41x / 0.73x (the default), 0.20x / 0.21x ("auto"; the earlier auto, DEIS in ε on vp_quadratic: 0.26x / 0.44x)
    for n, bound in ((10, 0.5), (20, 0.85)):
        assert err(DPMSolver(), n) < bound * err(DPMSolver(**OLD_DEFAULT), n)
        assert err(DPMSolver(method="auto"), n) < 0.3 * err(DPMSolver(**OLD_DEFAULT), n)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "user_cosine"])
def test_vp_power_grid(sde_name):
    # uniform in t^{1/p} on VP's clock, carried to any SDE through λ; p = 2 is vp_quadratic, the ends pinned
    sde, ref = _sdes()[sde_name], torch.zeros(1, dtype=F64)
    vp = scoresde.VPSDE()
    for n in (1, 7, 20):
        ts = timesteps.vp_power(sde, n, 1e-3, ref)
        assert ts.shape == (n + 1,) and float(ts[0]) == sde.T and float(ts[-1]) == 1e-3 and bool((ts[1:] < ts[:-1]).all())
        u = vp.t_from_half_log_snr(sde.half_log_snr(ts)) ** (1 / timesteps.VP_POWER)  # VP's time at the same noise level
        torch.testing.assert_close(u[1:] - u[:-1], (u[1:] - u[:-1]).mean().expand(n), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(timesteps.vp_power(sde, n, 1e-3, ref, power=2.0), timesteps.vp_quadratic(sde, n, 1e-3, ref))
    assert timesteps.get_timesteps("vp_power", sde, 5, 1e-3, ref).shape == (6,)


def test_corrected_history_keeps_the_noise_prediction_corrector_stable():
    # UniC evaluates the score at the predicted x_i and replaces x_i by the corrected one; the history keeps the
    # prediction made at the predicted point. In ε that mismatch is weighted by σ ≈ 1 at high noise and grows
    # step after step (a trained network's error set it off: 30-1000x the error of 2M + UniC at 10 NFE).
    # A score with a network-like error, ε off by 0.1 tanh(W x) at every noise level, shows it.
    sde = scoresde.VPSDE()
    x_T = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    W = torch.randn(2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    base = RING.score_fn(sde)
    score = lambda x, t: base(x, t) - 0.1 * torch.tanh(x @ W) / sde._schedule(t).sigma.reshape(-1, 1)
    ref = sample(sde, score, None, x_T=x_T, sampler="ode", rtol=1e-9, atol=1e-9, denoise=False)
    err = lambda s, n: float((sample(sde, score, None, x_T=x_T, sampler=s, steps=n, denoise=False) - ref).norm(dim=1).mean())
    # measured: 0.024 against 1.44 without the correction, and 0.052 for the old default
    assert err(DPMSolver(), 10) < 0.05 * err(DPMSolver(correct_history=False), 10)
    assert err(DPMSolver(), 10) < 0.6 * err(DPMSolver(**OLD_DEFAULT), 10)
    # the same correction in D leaves 2M's order alone and makes no difference without a corrector
    assert err(DPMSolver(corrector=False), 10) == err(DPMSolver(corrector=False, correct_history=False), 10)


@pytest.mark.parametrize("method", ["deis", "dpm++"])
@pytest.mark.parametrize("sde_name", ["vp", "ve", "user_cosine"])
def test_corrected_history_slope_is_exact_for_unit_variance_gaussian_data(method, sde_name):
    # For N(μ, I) data the prediction is affine in x, ε with slope σ/(m² + σ²) and D with m/(m² + σ²): moving
    # the prediction from the predicted to the corrected point by that slope is then the score re-evaluated there.
    sde = _sdes()[sde_name]
    mix = scoresde.GaussianMixture(torch.tensor([1.0], dtype=F64), torch.tensor([[0.5, -1.0]], dtype=F64), torch.ones(1, 2, dtype=F64))
    solver = DPMSolver(method=method)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    ts = solver.grid(sde, 12, 1e-3, x)
    st = solver.init(sde, None, ts, sde._schedule(ts), x, None)
    dx = 0.01 * torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    for i in (1, 6, 11):
        row, t = st.rows[i], ts[i].expand(4)
        pred = (lambda y: row.eps_from_score(mix.score_fn(sde)(y, t))) if st.eps else (lambda y: row.x0_from_score(y, mix.score_fn(sde)(y, t)))
        torch.testing.assert_close(pred(x + dx) - pred(x), st.slope[i] * dx, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw,word", [(dict(method="rk4"), "method"), (dict(order=5, method="deis"), "order"),
                                     (dict(order=4, method="dpm++"), "order"), (dict(method="ipndm", prediction="data"), "prediction"),
                                     (dict(method="deis", basis="sigma"), "basis")])
def test_bad_options(kw, word):
    sde = scoresde.VPSDE()
    with pytest.raises(ValueError, match=word):
        sample(sde, RING.score_fn(sde), (4, 2), sampler="dpm_solver", steps=3, **kw)


def test_along_path_exact_score_is_smooth_at_high_noise(tmp_path, one_thread):
    """`benchmarks.solvers --along exact`: with the exact score, D barely moves at high noise (the ODE is nearly
    linear there, which is what `auto`'s large first steps rely on), so its largest jump between neighbouring path
    points in the first tenth of the axis is below the one in the rest; the picture is written."""
    from benchmarks.solvers import along_path

    (row,) = along_path(["exact"], tmp_path / "along.png")
    assert row["ratio"] < 1.0, row
    assert float(row["max |ΔD| high noise (first tenth)"]) < 0.05
    assert (tmp_path / "along.png").stat().st_size > 10_000


def test_race_run_is_the_trained_field_clamped_at_T(tmp_path, one_thread):
    """`benchmarks.solvers --race-runs`: a default-VP run becomes a float64 score on the race's slightly longer
    horizon that equals the network at t ≤ 1 and the network at t = 1 beyond; other SDEs are refused in one line."""
    from benchmarks.solvers import _race_run
    from conftest import tiny
    from scoresde.train import train

    vp_run = train(tiny(tmp_path, "vp", steps=10), resume=False, progress=False)
    score_for, shape = _race_run(str(vp_run))
    assert shape == (2,)
    model, _ = scoresde.load(vp_run)
    model = model.double()
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    race_sde = scoresde.VPSDE(T=1.003)
    s = score_for(race_sde)
    t = torch.tensor([0.2, 0.5, 1.0, 1.002, 1.003], dtype=torch.float64)
    got = s(x, t)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, model(x, t.clamp(max=1.0)))
    assert not torch.allclose(got[:4], model(x, torch.full((5,), 0.5, dtype=torch.float64))[:4])  # t matters
    ve_run = train(tiny(tmp_path, "ve", steps=10, sde="ve"), resume=False, progress=False)
    with pytest.raises(SystemExit, match="default VP SDE"):
        _race_run(str(ve_run))
