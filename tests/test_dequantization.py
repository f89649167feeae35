"""Discrete bits/dim against the oracle: a known mixture density quantised on a coarse grid, whose exact bin
probabilities `P(k)` are products of normal CDF differences (diagonal Gaussians), so every estimator's bound and
gap is measured, not guessed."""

import math

import pytest
import torch

import scoresde
from scoresde.dequantization import discrete_bits_per_dim, discrete_codes

F64 = torch.float64
EXACT = dict(divergence="exact", rtol=1e-6, atol=1e-6)


pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny ops: a second thread only contends


def smooth_mixture(D):
    """A smooth diagonal mixture: its density varies a lot across a bin of width 0.5 (a loose ELBO)."""
    means = [[-0.5, 0.3], [0.4, -0.2], [0.1, 0.6]]
    var = [[0.09, 0.16], [0.0625, 0.09], [0.12, 0.05]]
    return scoresde.GaussianMixture([0.5, 0.3, 0.2], [m[:D] for m in means], [v[:D] for v in var])


def bin_log_prob(mix, sde, k, lo, w, t, scale):
    """`log ∫ p_t` over the bins `scale·[lo + w k, lo + w (k+1))` of codes `k` (B, D): exact for diagonal covariances."""
    m, s = (float(v[0]) for v in sde.marginal_coefs(torch.tensor([t], dtype=F64)))
    mu, sd = m * mix.means, (m**2 * mix.eigvals + s**2).sqrt()  # p_t's components (C, D)
    cdf = lambda b: torch.special.ndtr((b[:, None, :] - mu) / sd)  # noqa: E731
    mass = (cdf(scale * (lo + w * (k + 1))) - cdf(scale * (lo + w * k))).log().sum(-1)
    return torch.logsumexp(mass + mix.weights.log(), 1)


def quantised(mix, n, levels, lo, hi, seed=0):
    """Codes `k` of `n` mixture samples (clamped into the grid) and the grid values `lo + (hi - lo) k/(levels - 1)`."""
    xs = mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    k = ((xs - lo) / ((hi - lo) / levels)).floor().clamp(0, levels - 1)
    return k, lo + (hi - lo) * k / (levels - 1)


def group_bounds(log_w, k):
    """The `k`-sample bound of each point, averaged over the `K/k` disjoint groups of its `K` draws: `(B,)`."""
    B, K = log_w.shape
    return (torch.logsumexp(log_w.reshape(B, K // k, k), -1) - math.log(k)).mean(1)


def test_uniform_elbo_matches_quadrature_and_bounds_log_p():
    """K draws of uniform noise in one solve: their mean log weight is E_u[log p(y)] + D log w (Gauss–Legendre
    over the bin, exact density), below log P(k), and each weight is the oracle's log p(y_j) + D log w."""
    sde, mix, (L, lo, hi) = scoresde.VPSDE(), smooth_mixture(2), (8, -2.0, 2.0)
    w, eps = (hi - lo) / L, 1e-5
    k, x = quantised(mix, 6, L, lo, hi)
    K = 48
    res = discrete_bits_per_dim(sde, mix.score_fn(sde), x, levels=L, data_range=(lo, hi), samples=K, eps=eps,
                                generator=torch.Generator().manual_seed(1), **EXACT)
    assert res.logp.shape == (6,) and res.log_weights.shape == (6, K) and res.nfe > 0
    # the draws, re-made from the same generator state: each weight is the exact log p(y) + D log w up to the solver
    u = torch.rand((K, 6, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    y = lo + w * (k + u)
    exact_w = mix.log_prob(y.reshape(-1, 2), eps, sde=sde).reshape(K, 6).T + 2 * math.log(w)
    assert (res.log_weights - exact_w).abs().max() < 5e-3
    # E_u[log p] by 24-point Gauss–Legendre per axis over each bin
    gx, gw = (torch.as_tensor(v, dtype=F64) for v in __import__("numpy").polynomial.legendre.leggauss(24))
    nodes = 0.5 * (gx + 1)  # on [0, 1]
    grid = torch.stack(torch.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    wts = (0.25 * gw[:, None] * gw[None, :]).reshape(-1)
    pts = lo + w * (k[:, None, :] + grid[None])  # (B, 576, 2)
    elbo = (mix.log_prob(pts.reshape(-1, 2), eps, sde=sde).reshape(6, -1) * wts).sum(1) + 2 * math.log(w)
    mc = res.log_weights.mean(1)
    se = res.log_weights.std(1) / math.sqrt(K)
    assert ((mc - elbo).abs() < 4 * se + 5e-3).all(), (mc - elbo, se)
    logP = bin_log_prob(mix, sde, k, lo, w, eps, 1.0)
    assert (elbo < logP).all() and (logP - elbo).mean() > 0.02  # Jensen's gap: real, and the estimate sees it
    assert torch.allclose(res.logp, torch.logsumexp(res.log_weights, 1) - math.log(K))
    assert torch.allclose(res.bpd, -res.logp / (2 * math.log(2)))
    assert res.mean == pytest.approx(float(res.bpd.mean())) and res.stderr == pytest.approx(float(res.bpd.std()) / math.sqrt(6))


def test_importance_weighted_bound_rises_with_k_towards_log_p():
    """1-D, 8 levels, 16 points, 256 draws each in one solve: the k-sample bound (averaged over disjoint groups) rises
    with k, stays below log P(k) up to Monte-Carlo error, and at k = 256 has closed most of the ELBO's gap."""
    sde, mix, (L, lo, hi) = scoresde.VPSDE(), smooth_mixture(1), (8, -2.0, 2.0)
    w, eps = (hi - lo) / L, 1e-5
    k, x = quantised(mix, 16, L, lo, hi, seed=3)
    res = discrete_bits_per_dim(sde, mix.score_fn(sde), x, levels=L, data_range=(lo, hi), samples=256, eps=eps,
                                generator=torch.Generator().manual_seed(2), **EXACT)
    logP = bin_log_prob(mix, sde, k, lo, w, eps, 1.0)
    gaps = {j: float((logP - group_bounds(res.log_weights, j)).mean()) for j in (1, 4, 16, 256)}
    # (seeds 3..8 give gaps of 0.03-0.14 nats at k = 1, 0.01-0.04 at 4, -0.004..0.006 at 256: MC noise ~0.005)
    assert gaps[1] > gaps[4] > gaps[16] > -0.01, gaps
    assert gaps[1] > 0.02 and abs(gaps[256]) < 0.2 * gaps[1], gaps
    assert torch.allclose(res.logp, group_bounds(res.log_weights, 256))


def test_truncated_normal_is_tight_for_a_model_of_discrete_data():
    """Data that is really discrete: a mixture of narrow bumps at the bin centres (the density of a model trained on
    the grid values). At τ with a = m (w/2)/σ = 3 (i-DODE's regime), the truncated normal's bound is within 0.01
    nats/dim of log P(k) = log ∫_{m B_k} p_τ, while uniform noise over the whole bin loses ~0.6 nats/dim
    (both K = 1 ELBOs, averaged over replicates)."""
    sde, (L, lo, hi) = scoresde.VPSDE(), (4, -1.0, 1.0)
    w = (hi - lo) / L
    centres = lo + w * (torch.arange(L, dtype=F64) + 0.5)
    means = torch.cartesian_prod(centres, centres)
    probs = torch.rand(L * L, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.2
    mix = scoresde.GaussianMixture(probs / probs.sum(), means, torch.full((L * L, 2), (0.002 * w) ** 2, dtype=F64))
    tau = scoresde.truncated_normal_time(sde, L, (lo, hi), a=3.0)
    m, s = (float(v[0]) for v in sde.marginal_coefs(torch.tensor([tau], dtype=F64)))
    assert m * (w / 2) / s == pytest.approx(3.0, rel=1e-6)
    k = torch.cartesian_prod(torch.arange(L, dtype=F64), torch.arange(L, dtype=F64))[::3]  # 6 of the 16 cells
    x = lo + (hi - lo) * k / (L - 1)
    kw = dict(levels=L, data_range=(lo, hi), eps=tau, **EXACT)
    R = 16  # K = 1 carries the noise of log p_τ(y) about its mean: average 16 replicates of each point
    tn = discrete_bits_per_dim(sde, mix.score_fn(sde), x.repeat(R, 1), dequantization="truncated-normal",
                               generator=torch.Generator().manual_seed(3), **kw)
    uni = discrete_bits_per_dim(sde, mix.score_fn(sde), x.repeat(R, 1), generator=torch.Generator().manual_seed(3), **kw)
    m = float(sde.marginal_coefs(torch.tensor([tau], dtype=F64))[0][0])
    logP_tn = bin_log_prob(mix, sde, k, lo, w, tau, m)
    logP_u = bin_log_prob(mix, sde, k, lo, w, tau, 1.0)
    elbo = tn.logp.reshape(R, -1)
    gap_tn, se = (logP_tn - elbo.mean(0)) / 2, elbo.std(0) / math.sqrt(R) / 2
    assert (gap_tn > -4 * se).all() and (gap_tn < 0.01 + 4 * se).all(), (gap_tn, se)
    elbo_u = uni.logp.reshape(R, -1).mean(0)
    # uniform's own draws are noisy (p_τ varies e^4.5-fold across a bin): compared on the mean over the 96 rows
    assert float((logP_u - elbo_u).mean()) / 2 > 0.3, (logP_u - elbo_u) / 2
    assert float((elbo.mean(0) - elbo_u).mean()) > 0.6
    # K truncated-normal draws (per-draw log q instead of the closed-form entropy): a bound too, as tight
    tn8 = discrete_bits_per_dim(sde, mix.score_fn(sde), x, dequantization="truncated-normal", samples=8,
                                generator=torch.Generator().manual_seed(4), **kw)
    gap8 = (logP_tn - tn8.logp) / 2
    assert (gap8 > -2e-3).all() and (gap8 < 0.01).all(), gap8


def test_truncated_normal_at_small_tau_is_loose_for_a_smooth_density():
    """The other side (what the digits benchmark sees for a model trained on dequantised data): for a smooth
    density the truncated normal at τ = 1e-5 fills ~4σ(τ) ≪ w of the bin, so its bound sits far below the
    uniform one, though still a bound of its own log P(k)."""
    sde, mix, (L, lo, hi) = scoresde.VPSDE(), smooth_mixture(2), (8, -2.0, 2.0)
    w, eps = (hi - lo) / L, 1e-5
    k, x = quantised(mix, 6, L, lo, hi, seed=5)
    kw = dict(levels=L, data_range=(lo, hi), eps=eps, generator=torch.Generator().manual_seed(0), **EXACT)
    tn = discrete_bits_per_dim(sde, mix.score_fn(sde), x, dequantization="truncated-normal", **kw)
    uni = discrete_bits_per_dim(sde, mix.score_fn(sde), x, **kw)
    m = float(sde.marginal_coefs(torch.tensor([eps], dtype=F64))[0][0])
    assert torch.equal(uni.logp, uni.log_weights[:, 0])  # K = 1: the one draw's log p(y) + D log w
    assert (tn.logp < bin_log_prob(mix, sde, k, lo, w, eps, m)).all()
    assert (tn.logp < uni.logp - 2.0).all()


def test_codes_and_grid_values_give_the_same_answer_and_seeds_repeat():
    sde, mix, (L, lo, hi) = scoresde.VPSDE(), smooth_mixture(2), (8, -2.0, 2.0)
    k, x = quantised(mix, 4, L, lo, hi)
    sf = mix.score_fn(sde)
    kw = dict(levels=L, data_range=(lo, hi), samples=2, divergence="exact", rtol=1e-4, atol=1e-4)
    a = discrete_bits_per_dim(sde, sf, x.float(), generator=torch.Generator().manual_seed(0), **kw)
    b = discrete_bits_per_dim(sde, sf, k.long(), generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.logp, b.logp) and a.logp.dtype == torch.float32
    assert torch.equal(discrete_codes(x, L, (lo, hi)), k.long())


def test_grid_and_argument_errors():
    sde, mix = scoresde.VPSDE(), smooth_mixture(2)
    sf = mix.score_fn(sde)
    grid = torch.tensor([[-1.0, 1.0], [0.0, 0.5]], dtype=F64)  # on the 5-level grid of (-1, 1)
    call = lambda x, **kw: discrete_bits_per_dim(sde, sf, x, **{"levels": 5, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=r"max deviation 0\.2 grid steps"):
        call(grid + 0.1)  # 0.1 off a grid of step 0.5
    with pytest.raises(ValueError, match="left edges"):
        call(-1 + 2 * torch.tensor([[0.0, 3.0], [4.0, 1.0]], dtype=F64) / 5)  # bin left edges, as data.py's raw values
    with pytest.raises(ValueError, match="outside data_range"):
        call(torch.tensor([[-1.5, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="codes 0..4"):
        call(torch.tensor([[0, 5]]))
    with pytest.raises(ValueError, match="levels"):
        call(grid, levels=1)
    with pytest.raises(TypeError, match="levels"):
        call(grid, levels=5.0)
    with pytest.raises(ValueError, match="data_range"):
        call(grid, data_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="dequantization"):
        call(grid, dequantization="variational")
    with pytest.raises(ValueError, match="samples"):
        call(grid, samples=0)
    with pytest.raises(ValueError, match="NaN"):
        call(torch.tensor([[float("nan"), 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="eps"):
        call(grid, eps=0.0)
    with pytest.raises(TypeError):
        call(grid, bogus_option=1)
    with pytest.raises(ValueError, match="a must be"):
        scoresde.truncated_normal_time(sde, 5, a=0.0)


@pytest.mark.parametrize("dequantization", ["uniform", "truncated-normal"])
def test_runs_on_the_data_device(device, dequantization):
    sde, mix, (L, lo, hi) = scoresde.VPSDE(), smooth_mixture(2), (8, -2.0, 2.0)
    _, x = quantised(mix, 3, L, lo, hi)
    res = discrete_bits_per_dim(sde, mix.score_fn(sde), x.float().to(device), levels=L, data_range=(lo, hi),
                                dequantization=dequantization, samples=2, rtol=1e-3, atol=1e-3,
                                generator=torch.Generator(device=device).manual_seed(0))
    assert res.logp.device.type == torch.device(device).type and res.log_weights.shape == (3, 2)
    # eps=None: the ODE's default start for uniform; for the truncated normal the τ of a = 3, whatever the grid
    tau = scoresde.truncated_normal_time(sde, L, (lo, hi), 3.0) if dequantization != "uniform" else sde.default_likelihood_eps
    assert res.eps == tau
    assert torch.isfinite(res.bpd).all()
