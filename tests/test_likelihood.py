"""Likelihood through the probability-flow ODE, checked against the exact Gaussian-mixture oracle.

With the oracle's exact score the only errors left are the ODE solver's and the
prior's (the SDE's prior `N(0, s² I)` stands in for the true `p_T`); the tests
measure each against closed-form log-densities."""

import math

import pytest
import torch

import scoresde
from scoresde.likelihood import (
    bits_per_dim,
    decode,
    dequantization_offset,
    dequantize,
    encode,
    log_likelihood,
)
from scoresde.metrics import sliced_w2

from conftest import CosineVPNoClosedForm, make_sdes

F64 = torch.float64
EPS = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These solves are thousands of tiny ops: a second intra-op thread only adds contention on a busy machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def centred(mix: scoresde.GaussianMixture) -> scoresde.GaussianMixture:
    """The same mixture shifted to mean zero (the data the SDE priors are built for)."""
    return scoresde.GaussianMixture(mix.weights, mix.means - mix.mean(), mix.eigvals, event_shape=mix.event_shape)


def mixtures():
    mix10 = scoresde.random_mixture(10)
    return {"ring8": scoresde.ring8(), "mix10": mix10, "mix10c": centred(mix10)}


def data(mix, n, dtype=F64, seed=0, device="cpu"):
    return mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


# -- accuracy with the exact score and exact divergence ---------------------------------


@pytest.mark.parametrize("mix_name", ["ring8", "mix10", "mix10c"])
def test_exact_divergence_matches_oracle(sde, mix_name):
    """Error = solver error + prior error; the first is measured with the true `p_T`, the second on its own."""
    mix = mixtures()[mix_name]
    x = data(mix, 16)
    D = mix.dim
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", rtol=1e-5, atol=1e-5, eps=EPS)
    true = mix.log_prob(x, EPS, sde=sde)
    log_pT = mix.log_prob(res.z, sde.T, sde=sde)
    solver_err = (log_pT + res.delta_logp - true).abs() / D
    prior_err = (sde.prior_logp(res.z) - log_pT).abs() / D
    total_err = (res.logp - true).abs() / D
    assert res.logp.shape == (16,) and res.z.shape == x.shape and res.nfe > 0
    assert torch.allclose(res.logp, sde.prior_logp(res.z) + res.delta_logp)
    # The solver alone: well inside the target at rtol = atol = 1e-5.
    assert solver_err.mean() < 2e-4, solver_err
    if mix_name != "mix10":
        # Zero-mean data, which the SDE priors are built for: the prior's error is small beside the target.
        assert prior_err.mean() < 5e-4, prior_err
    if mix_name == "mix10" and isinstance(sde, scoresde.VESDE):
        # Uncentred data: VE's prior N(0, σ_max²) misses p_T's mean shift by ~1.5e-3 nats/dim. That is the
        # SDE's approximation p_T ≈ prior, not solver error (which the assertion above bounds).
        assert 1e-3 < prior_err.mean() < 5e-3, prior_err
    else:
        assert total_err.mean() < 1e-3, total_err


@pytest.mark.slow
def test_exact_divergence_matches_oracle_64d(sde):
    """The benchmark's 64-D image-shaped mixture `(1, 8, 8)`: the same target on every SDE."""
    mix = scoresde.mixture64()
    x = data(mix, 16)
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
    true = mix.log_prob(x, EPS, sde=sde)
    solver_err = (mix.log_prob(res.z, sde.T, sde=sde) + res.delta_logp - true).abs() / 64
    assert solver_err.mean() < 1e-4, solver_err
    assert (res.logp - true).abs().mean() / 64 < 1e-3


def test_eps_gap_to_data_density_shrinks():
    """`log p_eps(x) -> log p_0(x)` as `eps -> 0`: the ODE result tracks the true data density ever closer."""
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    x = data(mix, 16)
    gaps = []
    for eps in (1e-1, 1e-2, 1e-3):
        res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", eps=eps)
        # still the right density at each eps ...
        assert (res.logp - mix.log_prob(x, eps, sde=sde)).abs().mean() < 2e-3
        gaps.append(float((res.logp - mix.log_prob(x)).abs().mean()))
    # ... and that density approaches p_0 roughly linearly in eps.
    assert gaps[0] > 3 * gaps[1] > 9 * gaps[2], gaps
    assert gaps[0] > 0.1


def test_user_linear_sde_without_closed_forms():
    mix, sde = scoresde.ring8(), CosineVPNoClosedForm()
    x = data(mix, 8)
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
    assert (res.logp - mix.log_prob(x, EPS, sde=sde)).abs().mean() / 2 < 1e-3


def test_float32_and_float64(device):
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    x64 = data(mix, 16, device=device)
    out = {}
    for dtype in (torch.float32, F64):
        x = x64.to(dtype)
        res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
        assert res.logp.dtype == dtype and res.z.dtype == dtype and res.logp.device == x.device
        out[dtype] = res.logp.double()
    true = mix.log_prob(x64, EPS, sde=sde)
    assert (out[F64] - true).abs().mean() / 2 < 1e-4
    assert (out[torch.float32] - true).abs().mean() / 2 < 1e-3
    assert (out[torch.float32] - out[F64]).abs().max() < 5e-3


def test_fixed_grid_method():
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    x = data(mix, 8)
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", method="rk4")
    assert res.nfe == 4 * 100  # DEFAULT_FIXED_STEPS steps of 4 evaluations
    assert (res.logp - mix.log_prob(x, EPS, sde=sde)).abs().mean() / 2 < 1e-3
    coarse = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", method="euler", options={"step_size": 0.1})
    assert coarse.nfe == 10
    assert (coarse.logp - mix.log_prob(x, EPS, sde=sde)).abs().mean() > 1e-2  # 10 Euler steps really are worse


def test_any_trailing_shape():
    """Image-shaped samples `(B, 1, 4, 4)` give the same numbers as their flat `(B, 16)` version."""
    mix = scoresde.random_mixture(16, 4, event_shape=(1, 4, 4))
    flat = scoresde.GaussianMixture(mix.weights, mix.means, mix.eigvals)
    sde = scoresde.SubVPSDE()
    x = data(mix, 4)
    a = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
    b = log_likelihood(sde, flat.score_fn(sde), x.flatten(1), divergence="exact")
    assert a.z.shape == x.shape
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-8)
    assert (a.logp - mix.log_prob(x, EPS, sde=sde)).abs().mean() / 16 < 1e-3


# -- Hutchinson ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
@pytest.mark.parametrize("mix_name", ["ring8", "mix10c"])
def test_hutchinson_unbiased(noise, mix_name):
    mix, sde = mixtures()[mix_name], scoresde.VPSDE()
    x = data(mix, 8)
    exact = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
    res = log_likelihood(sde, mix.score_fn(sde), x, noise=noise, n_probes=256,
                         generator=torch.Generator().manual_seed(5))
    z = (res.logp - exact.logp) / res.stderr
    assert z.abs().max() < 4.0, z
    # The estimator really is noisy (one probe: SE · √256), so agreement is not vacuous.
    assert (res.stderr * 16).min() > 0.05


def test_hutchinson_single_probe_calls_average_to_exact():
    """The default `n_probes=1` path: independent calls (fresh probes each) average to the exact value."""
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    x = data(mix, 8)
    sf = mix.score_fn(sde)
    exact = log_likelihood(sde, sf, x, divergence="exact").logp
    g = torch.Generator().manual_seed(11)
    runs = torch.stack([log_likelihood(sde, sf, x, generator=g, rtol=1e-4, atol=1e-4).logp for _ in range(24)])
    se = runs.std(0) / math.sqrt(len(runs))
    assert runs.std(0).min() > 0.1  # single probes differ from one another
    assert ((runs.mean(0) - exact) / se).abs().max() < 4.0
    # The standard error reported for averaged probes is the spread of single probes over √n_probes.
    many = log_likelihood(sde, sf, x, n_probes=256, generator=g)
    ratio = runs.std(0) / (many.stderr * 16)
    assert ((ratio > 0.6) & (ratio < 1.6)).all(), ratio


def test_hutchinson_probes_fixed_per_trajectory_and_reproducible():
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    x = data(mix, 8)
    sf = mix.score_fn(sde)
    g = torch.Generator().manual_seed(3)
    a = log_likelihood(sde, sf, x, n_probes=3, generator=g)
    # The generator advanced by exactly one draw of the probes, however many evaluations the solver made.
    ref = torch.Generator().manual_seed(3)
    torch.randint(0, 2, (3,) + tuple(x.shape), generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    assert a.nfe > 20
    b = log_likelihood(sde, sf, x, n_probes=3, generator=torch.Generator().manual_seed(3))
    c = log_likelihood(sde, sf, x, n_probes=3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.logp, b.logp) and torch.equal(a.stderr, b.stderr)
    assert not torch.allclose(a.logp, c.logp)
    assert log_likelihood(sde, sf, x, divergence="exact").stderr is None


def test_no_graph_kept():
    """Parameters of the score model and a grad-requiring input leave nothing attached to the outputs."""
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    lin = torch.nn.Linear(2, 2).double()
    exact = mix.score_fn(sde)

    def score(x, t):
        return exact(x, t) + 0.0 * lin(x)

    x = data(mix, 4).requires_grad_(True)
    for div in ("exact", "hutchinson"):
        res = log_likelihood(sde, score, x, divergence=div, generator=torch.Generator().manual_seed(0))
        assert res.logp.grad_fn is None and res.z.grad_fn is None and not res.logp.requires_grad
    with torch.no_grad():  # the divergence still works when the caller disabled autograd
        res = log_likelihood(sde, score, x.detach(), divergence="exact")
    assert (res.logp - mix.log_prob(x.detach(), EPS, sde=sde)).abs().mean() < 2e-3
    assert lin.weight.grad is None


@pytest.mark.parametrize("method,unused,stages", [("dopri5", (1,), 6), ("dopri8", (1, 2, 3, 4), 13)])
def test_divergence_skipped_where_the_tableau_gives_it_zero_weight(method, unused, stages, monkeypatch):
    """dopri5's stage 2 (dopri8's 2-5) enters neither the solution, the error estimate nor the dense output, so
    the divergence is not computed there: one score call without a graph per step attempt, the result unchanged
    to the last bit."""
    from scoresde.samplers import ode

    assert ode.METHODS[method]["unused_stages"] == unused  # read from torchdiffeq's tableau
    mix, sde = scoresde.ring8(), scoresde.VPSDE()
    exact = mix.score_fn(sde)
    graphs = []

    def score(x, t):
        graphs.append(torch.is_grad_enabled() and x.requires_grad)
        return exact(x, t)

    x = data(mix, 16)
    for div in ("hutchinson", "exact"):
        graphs.clear()
        kw = dict(divergence=div, method=method)
        res = log_likelihood(sde, score, x, generator=torch.Generator().manual_seed(0), **kw)
        skipped = graphs.count(False)
        monkeypatch.setitem(ode.METHODS, method, dict(ode.METHODS[method], unused_stages=()))
        graphs.clear()
        ref = log_likelihood(sde, score, x, generator=torch.Generator().manual_seed(0), **kw)
        monkeypatch.undo()
        assert graphs.count(False) == 0 and res.nfe == ref.nfe == len(graphs)
        assert (res.nfe - 2) % stages == 0  # f(t0) and the initial-step probe, then `stages` calls per attempt
        assert skipped == len(unused) * (res.nfe - 2) // stages > 0
        assert torch.equal(res.logp, ref.logp) and torch.equal(res.z, ref.z)


# -- encode / decode ----------------------------------------------------------------------


def test_decode_inverts_encode(sde):
    mix = scoresde.ring8()
    x = data(mix, 16)
    sf = mix.score_fn(sde)
    errs = []
    for tol in (1e-5, 1e-7):
        z = encode(sde, sf, x, rtol=tol, atol=tol)
        errs.append(float((decode(sde, sf, z, rtol=tol, atol=tol) - x).abs().max()))
    assert errs[0] < 1e-3 and errs[1] < 1e-5 and errs[1] < errs[0] / 30, errs
    # encode is the x-part of the likelihood solve.
    res = log_likelihood(sde, sf, x, divergence="exact")
    assert (res.z - encode(sde, sf, x)).abs().max() < 1e-3 * sde.prior_std()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_encoded_data_matches_prior(sde_name):
    sde, mix = make_sdes()[sde_name], scoresde.ring8()
    n = 2048
    x = data(mix, n, seed=2)
    z = encode(sde, mix.score_fn(sde), x, rtol=1e-4, atol=1e-4)
    g = torch.Generator().manual_seed(7)
    prior = [sde.prior_sample((n, 2), generator=g, dtype=F64) for _ in range(3)]
    floor = sliced_w2(prior[0], prior[1])
    dist = sliced_w2(z, prior[2])
    s = sde.prior_std()
    assert dist < 2.5 * floor, (float(dist), float(floor))
    # The metric can tell: the data itself (scaled to the prior's size) is far from the prior.
    assert sliced_w2(x * s / x.std(), prior[2]) > 4 * floor
    assert 0.9 < float(z.std() / s) < 1.1


# -- bits per dimension and dequantisation ------------------------------------------------


def test_bits_per_dim_known_gaussian():
    # At the mean of N(0, I) in D dims: log p = -D/2 log 2π, so bpd = ½ log2(2π) for every D.
    for D in (1, 3, 784):
        logp = torch.tensor([-0.5 * D * math.log(2 * math.pi)], dtype=F64)
        assert bits_per_dim(logp, D).item() == pytest.approx(0.5 * math.log2(2 * math.pi), rel=1e-12)
    # Shape and tensor forms, and the offset, agree with the int form.
    logp = torch.tensor([-10.0, -20.0], dtype=F64)
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(bits_per_dim(logp, (3, 4, 4)), bits_per_dim(logp, 48))
    assert torch.equal(bits_per_dim(logp, x), bits_per_dim(logp, 48))
    assert torch.allclose(bits_per_dim(logp, 48, offset=7.0), bits_per_dim(logp, 48) + 7.0)


def test_bits_per_dim_of_gaussian_data_through_the_ode():
    """Data N(μ, s² I): the ODE's bits/dim averages to the Gaussian's entropy ½ log2(2πe s²) per dim."""
    s, D = 0.5, 4
    # Zero mean, so that VP's N(0, I) prior is p_T to ~1e-5 and the test sees bits/dim, not the prior's error.
    mix = scoresde.GaussianMixture([1.0], [[0.0] * D], [s * s])
    sde = scoresde.VPSDE()
    x = data(mix, 256, seed=4)
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact")
    bpd = bits_per_dim(res.logp, x)
    analytic = (0.5 * D * math.log(2 * math.pi * s * s) + (x**2).sum(1) / (2 * s * s)) / (D * math.log(2))
    assert (bpd - analytic).abs().mean() < 3e-5 and (bpd - analytic).abs().max() < 3e-4
    entropy = 0.5 * math.log2(2 * math.pi * math.e * s * s)
    assert abs(float(bpd.mean()) - entropy) < 4 * float(bpd.std()) / math.sqrt(len(bpd))


@pytest.mark.parametrize("data_range,offset", [((-1.0, 1.0), 7.0), ((0.0, 1.0), 8.0)])
def test_dequantization_offset(data_range, offset):
    assert dequantization_offset(data_range) == pytest.approx(offset, abs=1e-12)
    lo, hi = data_range
    k = torch.arange(256, dtype=F64).repeat(4)[:, None].expand(1024, 3)
    x = lo + (hi - lo) * k / 255  # 8-bit data in the usual k/255 scaling
    y = dequantize(x, data_range=data_range, generator=torch.Generator().manual_seed(0))
    # y lies in bin k of width (hi - lo)/256 and fills it uniformly.
    u = (y - lo) / (hi - lo) * 256 - k
    assert (u >= 0).all() and (u < 1).all()
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.01
    # Uniform 8-bit data has 8 bits of entropy; the uniform density on [lo, hi) plus the offset gives exactly that.
    logp = torch.full((1024,), -3 * math.log(hi - lo), dtype=F64)
    assert torch.allclose(bits_per_dim(logp, 3, offset=dequantization_offset(data_range)), torch.full_like(logp, 8.0))
    same = dequantize(x, data_range=data_range, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, same)


# -- bad input ------------------------------------------------------------------------


def _bad_calls():
    sde, mix = scoresde.VPSDE(), scoresde.ring8()
    sf = mix.score_fn(sde)
    x = mix.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
    nan = x.clone()
    nan[1, 0] = float("nan")
    inf = x.clone()
    inf[0, 1] = float("inf")
    L = log_likelihood
    return [
        ("x", ValueError, lambda: L(sde, sf, nan)),
        ("x", ValueError, lambda: L(sde, sf, inf)),
        ("x", TypeError, lambda: L(sde, sf, x.numpy())),
        ("x", ValueError, lambda: L(sde, sf, x[:, 0])),
        ("x", ValueError, lambda: L(sde, sf, x[:0])),
        ("divergence", ValueError, lambda: L(sde, sf, x, divergence="trace")),
        ("noise", ValueError, lambda: L(sde, sf, x, noise="uniform")),
        ("method", ValueError, lambda: L(sde, sf, x, method="rk45")),
        ("method", ValueError, lambda: L(sde, sf, x, method="scipy_solver")),
        ("eps", ValueError, lambda: L(sde, sf, x, eps=0.0)),
        ("eps", ValueError, lambda: L(sde, sf, x, eps=-1e-3)),
        ("eps", ValueError, lambda: L(sde, sf, x, eps=1.0)),
        ("eps", TypeError, lambda: L(sde, sf, x, eps="small")),
        ("rtol", ValueError, lambda: L(sde, sf, x, rtol=0.0)),
        ("atol", ValueError, lambda: L(sde, sf, x, atol=-1e-5)),
        ("atol", ValueError, lambda: L(sde, sf, x, atol=float("nan"))),
        ("n_probes", ValueError, lambda: L(sde, sf, x, n_probes=0)),
        ("n_probes", ValueError, lambda: L(sde, sf, x, divergence="exact", n_probes=4)),
        ("generator", TypeError, lambda: L(sde, sf, x, generator=0)),
        ("sde", TypeError, lambda: L("vp", sf, x)),
        ("score_fn", TypeError, lambda: L(sde, None, x)),
        ("score_fn", ValueError, lambda: L(sde, lambda x, t: x[:, :1], x, divergence="exact")),
        ("options", TypeError, lambda: L(sde, sf, x, options=[1])),
        ("z", ValueError, lambda: decode(sde, sf, nan)),
        ("eps", ValueError, lambda: encode(sde, sf, x, eps=2.0)),
        ("x_shape_or_dim", ValueError, lambda: bits_per_dim(torch.zeros(2), 0)),
        ("x_shape_or_dim", TypeError, lambda: bits_per_dim(torch.zeros(2), "2")),
        ("offset", ValueError, lambda: bits_per_dim(torch.zeros(2), 2, offset=float("inf"))),
        ("data_range", ValueError, lambda: dequantize(x, data_range=(1.0, -1.0))),
        ("n_bins", ValueError, lambda: dequantize(x, n_bins=1)),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_input(i):
    name, exc, call = _bad_calls()[i]
    with pytest.raises(exc, match=name):
        call()


# -- CUDA only: the ODE function never waits on the device ----------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_function_does_not_sync(divergence):
    from scoresde.likelihood import _draw_probes, _exact_divergence, _hutchinson_divergence
    from scoresde.samplers.ode import ProbabilityFlowField

    sde, mix = scoresde.VPSDE(), scoresde.ring8()
    x = data(mix, 8, device="cuda")
    probes = _draw_probes((2,) + tuple(x.shape), "rademacher", x, None)
    div = _exact_divergence if divergence == "exact" else (lambda v, xx: _hutchinson_divergence(v, xx, probes))
    func = ProbabilityFlowField(sde, mix.score_fn(sde), 8, div)
    state = (x, torch.zeros(8, device="cuda", dtype=F64) if divergence == "exact" else torch.zeros(2, 8, device="cuda", dtype=F64))
    t = torch.tensor(0.5, device="cuda", dtype=F64)
    func(t, state)  # warm up caches (oracle parameters, tables)
    torch.cuda.set_sync_debug_mode("error")
    try:
        func(t, state)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# -- the divergence estimators on their own ------------------------------------------------


def test_exact_divergence_is_the_jacobian_trace_across_chunks():
    """A nonlinear field on `(B, 2, 5, 13)` samples (130 dims: two chunks of basis vectors) against full Jacobians."""
    from scoresde.likelihood import _exact_divergence, _hutchinson_divergence

    g = torch.Generator().manual_seed(0)
    W = torch.randn(130, 130, generator=g, dtype=F64) / 12
    x = torch.randn(3, 2, 5, 13, generator=g, dtype=F64).requires_grad_(True)
    field = lambda x: torch.tanh(x.flatten(1) @ W).reshape(x.shape) * x  # noqa: E731
    v = field(x)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda s: field(s[None])[0].flatten(), x[i].detach())
                       .reshape(130, 130).trace() for i in range(3)])
    torch.testing.assert_close(_exact_divergence(v, x), ref, rtol=1e-12, atol=1e-12)
    # Hutchinson with many Gaussian probes: unbiased for the same trace.
    probes = torch.randn((4000,) + tuple(x.shape), generator=g, dtype=F64)
    est = _hutchinson_divergence(v, x, probes)
    assert est.shape == (4000, 3)
    se = est.std(0) / math.sqrt(4000)
    assert ((est.mean(0) - ref) / se).abs().max() < 4


def test_network_score_model():
    """A real `ScoreModel` (an MLP, parameters requiring grad): exact and Hutchinson agree; no grads leak."""
    from scoresde.model import ScoreModel
    from scoresde.nets.mlp import MLP

    torch.manual_seed(0)
    sde = scoresde.VPSDE()
    net = MLP(3, hidden=32, n_blocks=1, emb_dim=16).double()
    torch.nn.init.normal_(net.out.weight, std=0.3)
    model = ScoreModel(net, sde)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = log_likelihood(sde, model, x, divergence="exact", rtol=1e-4, atol=1e-4)
    hutch = log_likelihood(sde, model, x, n_probes=64, rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(exact.logp).all()
    assert ((hutch.logp - exact.logp) / hutch.stderr).abs().max() < 4
    assert all(p.grad is None for p in model.parameters())
