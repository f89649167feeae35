"""The exact-score oracle and the sample-quality metrics."""

import math

import pytest
import torch

import scoresde
from scoresde import metrics
from conftest import CosineVPNoClosedForm, make_sdes

f64 = torch.float64


MIXTURES = {
    "ring8": scoresde.ring8,
    "grid": scoresde.grid_mixture,
    "full5d": lambda: scoresde.random_mixture(5, 3, cov="full", seed=2),
    "iso3d": lambda: scoresde.random_mixture(3, 4, cov="iso", seed=3),
    "mix64": scoresde.mixture64,
}


@pytest.mark.parametrize("mix_name", list(MIXTURES))
@pytest.mark.parametrize("sde_name", ["vp", "ve", "cosine"])
def test_score_is_gradient_of_log_prob(mix_name, sde_name):
    mix, sde = MIXTURES[mix_name](), make_sdes()[sde_name]
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(32, generator=g, dtype=f64)
    t = 0.01 + 0.99 * torch.rand(32, generator=g, dtype=f64)
    mean, std = sde.marginal(x0, t)
    x = (mean + std.reshape((-1,) + (1,) * (x0.ndim - 1)) * torch.randn(x0.shape, generator=g, dtype=f64)).requires_grad_()
    (grad,) = torch.autograd.grad(mix.log_prob(x, t, sde=sde).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), t, sde=sde), grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mix.score_fn(sde)(x.detach(), t), grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "cosine"])
def test_single_gaussian_textbook_formula(sde_name):
    """One Gaussian N(μ, Σ): p_t = N(m μ, m² Σ + σ² I), score = -(m²Σ + σ²I)⁻¹(x - m μ)."""
    sde = make_sdes()[sde_name]
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=f64)
    cov = A @ A.T + 0.1 * torch.eye(3, dtype=f64)
    mu = torch.randn(3, generator=g, dtype=f64)
    mix = scoresde.GaussianMixture([1.0], mu[None], cov[None])
    x = torch.randn(6, 3, generator=g, dtype=f64)
    t = torch.linspace(0.05, 1.0, 6, dtype=f64)
    m, s = sde.marginal_coefs(t)
    for i in range(6):
        C = m[i] ** 2 * cov + s[i] ** 2 * torch.eye(3, dtype=f64)
        ref = torch.distributions.MultivariateNormal(m[i] * mu, C)
        assert torch.allclose(mix.log_prob(x[i : i + 1], t[i : i + 1], sde=sde), ref.log_prob(x[i]), rtol=1e-12)
        expected = -torch.linalg.solve(C, x[i] - m[i] * mu)
        torch.testing.assert_close(mix.score(x[i : i + 1], t[i : i + 1], sde=sde)[0], expected, rtol=1e-10, atol=1e-12)
    # at t = None it is the data density itself
    ref0 = torch.distributions.MultivariateNormal(mu, cov)
    torch.testing.assert_close(mix.log_prob(x), ref0.log_prob(x))


def test_log_prob_normalises_in_2d():
    """Importance sampling with a wide Gaussian proposal: E_q[p/q] = ∫p = 1."""
    mix = scoresde.ring8()
    g = torch.Generator().manual_seed(4)
    n, s = 400_000, 3.0
    z = s * torch.randn(n, 2, generator=g, dtype=f64)
    logq = torch.distributions.Normal(0.0, s).log_prob(z).sum(1)
    w = (mix.log_prob(z) - logq).exp()
    est, se = w.mean(), w.std() / math.sqrt(n)
    assert abs(est - 1.0) < 4 * se and se < 0.02
    # and each time-t marginal too (VE at t = 0.5: wider, still normalised)
    sde = scoresde.VESDE()
    w = (mix.log_prob(z, 0.3, sde=sde) - logq).exp()
    assert abs(w.mean() - 1.0) < 4 * w.std() / math.sqrt(n)


def test_sample_statistics_and_reproducibility():
    mix = scoresde.random_mixture(4, 3, cov="full", seed=5)
    a = mix.sample(200_000, generator=torch.Generator().manual_seed(9), dtype=f64)
    b = mix.sample(200_000, generator=torch.Generator().manual_seed(9), dtype=f64)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.mean(0), mix.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(a.T), mix.covariance(), atol=0.02, rtol=0)
    x, labels = mix.sample(5, generator=torch.Generator().manual_seed(9), return_labels=True)
    assert x.shape == (5, 4) and labels.shape == (5,)


def test_mixture64_shape_and_float32():
    mix = scoresde.mixture64()
    x = mix.sample(7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 1, 8, 8) and x.dtype == torch.float32
    sde = scoresde.VPSDE()
    s32 = mix.score(x, 0.5, sde=sde)
    s64 = mix.score(x.double(), 0.5, sde=sde)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-4)
    # far from every mode logsumexp keeps it finite
    far = torch.full((2, 1, 8, 8), 30.0)
    assert torch.isfinite(mix.log_prob(far)).all() and torch.isfinite(mix.score(far)).all()


def test_score_on_user_sde_matches_builtin_closed_forms():
    mix = scoresde.ring8()
    x = torch.randn(10, 2, dtype=f64)
    t = torch.linspace(0.01, 1, 10, dtype=f64)
    a = mix.score(x, t, sde=scoresde.CosineVPSDE())
    b = mix.score(x, t, sde=CosineVPNoClosedForm())
    torch.testing.assert_close(a, b)


def test_oracle_validation():
    with pytest.raises(ValueError, match="means"):
        scoresde.GaussianMixture([0.5, 0.5], [[0.0, 0.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="covs"):
        scoresde.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="weights"):
        scoresde.GaussianMixture([-1.0], [[0.0]], [1.0])
    mix = scoresde.ring8()
    with pytest.raises(ValueError, match="x must have shape"):
        mix.score(torch.zeros(3, 3), 0.5, sde=scoresde.VPSDE())
    with pytest.raises(ValueError, match="sde"):
        mix.score(torch.zeros(3, 2), 0.5)
    with pytest.raises(ValueError, match="n"):
        mix.sample(0)


# -- metrics -------------------------------------------------------------------


def test_mmd_is_unbiased_under_the_null_and_detects_a_shift():
    mix = scoresde.ring8()
    g = torch.Generator().manual_seed(11)
    vals, ses = [], []
    for _ in range(20):
        r = metrics.mmd2(mix.sample(500, generator=g, dtype=f64), mix.sample(500, generator=g, dtype=f64))
        vals.append(r.value)
        ses.append(r.stderr)
    vals, ses = torch.stack(vals), torch.stack(ses)
    # the mean of 20 unbiased estimates is within 3 standard errors of 0 ...
    assert vals.mean().abs() < 3 * vals.std() / math.sqrt(20)
    # ... and the reported stderr matches the spread actually seen (within a factor 2)
    assert 0.5 < ses.mean() / vals.std() < 2.0
    # a 10% radial scaling is detected far outside the noise
    r = metrics.mmd2(1.1 * mix.sample(2000, generator=g, dtype=f64), mix.sample(2000, generator=g, dtype=f64))
    assert r.value > 5 * r.stderr


def test_sliced_w2_known_value():
    """For two Gaussians that differ by a shift δ along every axis, every 1-D projection differs by θ·δ."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 3, generator=g, dtype=f64)
    shift = torch.tensor([1.0, 0.0, 0.0], dtype=f64)
    sw = metrics.sliced_w2(x + shift, x, n_projections=2000)
    # the same points shifted: each projection moves by θ·δ, and E_θ (θ·δ)² = |δ|²/d for uniform unit θ
    assert abs(sw.item() - math.sqrt(1 / 3)) < 0.02
    assert metrics.sliced_w2(x, x).item() == 0.0
    floor = metrics.floor_sliced_w2(scoresde.ring8(), 2000)
    assert 0 < floor < 0.2


def test_mode_tv():
    mix = scoresde.ring8()
    x, labels = mix.sample(4000, generator=torch.Generator().manual_seed(0), return_labels=True)
    assert (mix.classify(x) == labels).float().mean() > 0.999
    assert metrics.mode_tv(x, mix) < 0.05
    only_first = x[labels == 0]
    assert abs(metrics.mode_tv(only_first, mix).item() - 7 / 8) < 1e-6
