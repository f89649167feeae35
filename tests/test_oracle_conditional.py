"""The oracle's conditioning: exact posteriors given observations, conditional scores, log p_t(y | x)."""

import math

import pytest
import torch

import scoresde
from scoresde import GaussianMixture, Inpainting, Observation, guidance
from conftest import make_sdes

f64 = torch.float64


def _trapz_moments(logdens: torch.Tensor, grid: torch.Tensor, h: float):
    """Mass, mean and variance of an unnormalised 1-D density on a uniform grid (trapezoid ≈ exact for Gaussians)."""
    p = logdens.exp()
    mass = p.sum() * h
    mean = (grid * p).sum() * h / mass
    var = ((grid - mean) ** 2 * p).sum() * h / mass
    return mass, mean, var


def test_posterior_1d_against_bayes_on_a_grid():
    mix = GaussianMixture([0.5, 0.3, 0.2], [[-1.5], [0.2], [2.0]], [0.3, 0.1, 0.5])
    y, noise = 0.7, 0.4
    post = mix.posterior(Observation(torch.ones(1, 1, dtype=f64), torch.tensor([y], dtype=f64), noise_std=noise))
    grid = torch.linspace(-8, 8, 16001, dtype=f64)
    h = float(grid[1] - grid[0])
    loglik = -0.5 * ((y - grid) / noise) ** 2 - math.log(noise * math.sqrt(2 * math.pi))
    masses, means, vars_ = [], [], []
    for k in range(3):
        comp = torch.distributions.Normal(mix.means[k, 0], mix.eigvals[k, 0].sqrt())
        m, mu, v = _trapz_moments(mix.weights[k].log() + comp.log_prob(grid) + loglik, grid, h)
        masses.append(m), means.append(mu), vars_.append(v)
    masses = torch.stack(masses)
    torch.testing.assert_close(post.weights, masses / masses.sum(), rtol=0, atol=1e-8)
    torch.testing.assert_close(post.means[:, 0], torch.stack(means), rtol=0, atol=1e-8)
    torch.testing.assert_close(post.eigvals[:, 0], torch.stack(vars_), rtol=0, atol=1e-8)
    # and the whole posterior density on the grid: prior × likelihood / evidence
    logpost = mix.log_prob(grid[:, None]) + loglik - masses.sum().log()
    torch.testing.assert_close(post.log_prob(grid[::50, None]), logpost[::50], rtol=0, atol=1e-8)


def test_posterior_2d_one_noisy_coordinate_against_bayes_on_a_grid():
    covs = torch.tensor([[[0.3, 0.12], [0.12, 0.2]], [[0.15, -0.05], [-0.05, 0.4]]], dtype=f64)
    mix = GaussianMixture([0.6, 0.4], [[-1.0, 0.5], [1.2, -0.3]], covs)
    y, noise = 0.3, 0.5
    post = mix.posterior(Observation(torch.tensor([[1.0, 0.0]], dtype=f64), torch.tensor([y], dtype=f64), noise))
    g = torch.linspace(-6, 6, 801, dtype=f64)
    h = float(g[1] - g[0])
    X = torch.cartesian_prod(g, g)  # (N, 2)
    loglik = -0.5 * ((y - X[:, 0]) / noise) ** 2 - math.log(noise * math.sqrt(2 * math.pi))
    mass = []
    for k in range(2):
        comp = torch.distributions.MultivariateNormal(mix.means[k], covs[k])
        p = (mix.weights[k].log() + comp.log_prob(X) + loglik).exp()
        mk = p.sum() * h * h
        mean = (X * p[:, None]).sum(0) * h * h / mk
        d = X - mean
        cov = (d[:, :, None] * d[:, None, :] * p[:, None, None]).sum(0) * h * h / mk
        mass.append(mk)
        torch.testing.assert_close(post.means[k], mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(post.covariances()[k], cov, rtol=0, atol=1e-8)
    mass = torch.stack(mass)
    torch.testing.assert_close(post.weights, mass / mass.sum(), rtol=0, atol=1e-8)


def test_posterior_full_covariance_information_form():
    mix = scoresde.random_mixture(4, 3, cov="full", seed=5)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 4, generator=g, dtype=f64)
    y = torch.tensor([0.4, -0.7], dtype=f64)
    s = 0.3
    post = mix.posterior(Observation(A, y, noise_std=s))
    Sig = mix.covariances()
    for k in range(3):
        prec = torch.linalg.inv(Sig[k]) + A.T @ A / s**2  # Σ'⁻¹ = Σ⁻¹ + AᵀA/σ²
        cov = torch.linalg.inv(prec)
        mean = cov @ (torch.linalg.solve(Sig[k], mix.means[k]) + A.T @ y / s**2)
        torch.testing.assert_close(post.covariances()[k], cov, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(post.means[k], mean, rtol=1e-10, atol=1e-12)
    # weights: w_k N(y; A μ_k, A Σ_k Aᵀ + σ² I), evaluated directly
    logev = torch.stack([
        torch.distributions.MultivariateNormal(A @ mix.means[k], A @ Sig[k] @ A.T + s**2 * torch.eye(2, dtype=f64)).log_prob(y)
        for k in range(3)
    ]) + mix.weights.log()
    torch.testing.assert_close(post.weights, torch.softmax(logev, 0), rtol=1e-10, atol=1e-12)
    # the density itself is Bayes' rule: log p(x|y) = log p(x) + log N(y; A x, σ² I) - log p(y)
    x = mix.sample(50, generator=g, dtype=f64)
    loglik = torch.distributions.MultivariateNormal(x @ A.T, s**2 * torch.eye(2, dtype=f64)).log_prob(y)
    torch.testing.assert_close(post.log_prob(x), mix.log_prob(x) + loglik - torch.logsumexp(logev, 0), rtol=1e-10, atol=1e-10)
    # importance sampling (prior proposal, likelihood weights) agrees on the component weights within its error
    n = 200_000
    xs, lab = mix.sample(n, generator=g, dtype=f64, return_labels=True)
    lw = torch.distributions.MultivariateNormal(xs @ A.T, s**2 * torch.eye(2, dtype=f64)).log_prob(y)
    wn = torch.softmax(lw, 0)
    est = torch.zeros(3, dtype=f64).index_add_(0, lab, wn)
    ess = 1.0 / (wn * wn).sum()
    assert ess > 1000
    assert (est - post.weights).abs().max() < 5 * (0.25 / ess).sqrt()
    # a callable A (its matrix taken from the identity) gives the same posterior
    post_c = mix.posterior(Observation(lambda v: v.flatten(1) @ A.T, y, noise_std=s))
    torch.testing.assert_close(post_c.means, post.means)
    torch.testing.assert_close(post_c.covariances(), post.covariances())
    torch.testing.assert_close(post_c.weights, post.weights)


def test_inpainting_posterior_is_the_schur_complement():
    g = torch.Generator().manual_seed(3)
    B = torch.randn(6, 6, generator=g, dtype=f64)
    cov = B @ B.T + 0.2 * torch.eye(6, dtype=f64)
    mu = torch.randn(6, generator=g, dtype=f64)
    mix = GaussianMixture([1.0], mu[None], cov[None], event_shape=(2, 3))
    mask = torch.tensor([[True, False, False], [True, False, True]])
    x_known = torch.randn(2, 3, generator=g, dtype=f64)
    post = mix.posterior(Inpainting(x_known, mask))
    assert post.event_shape == (3,) and post.dim == 3
    o, u = mask.flatten(), ~mask.flatten()  # unobserved entries in flattened order of ~mask
    Soo, Suo, Suu = cov[o][:, o], cov[u][:, o], cov[u][:, u]
    xo = x_known.flatten()[o]
    mean = mu[u] + Suo @ torch.linalg.solve(Soo, xo - mu[o])
    c = Suu - Suo @ torch.linalg.solve(Soo, Suo.T)
    torch.testing.assert_close(post.means[0], mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post.covariances()[0], c, rtol=1e-10, atol=1e-12)
    # the conditional density is the joint over the observed marginal
    xu = torch.randn(20, 3, generator=g, dtype=f64)
    full = torch.empty(20, 6, dtype=f64)
    full[:, o], full[:, u] = xo, xu
    marg = torch.distributions.MultivariateNormal(mu[o], Soo).log_prob(xo)
    torch.testing.assert_close(post.log_prob(xu), mix.log_prob(full.reshape(20, 2, 3)) - marg, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_inpainting_posterior_weights(cov):
    mix = scoresde.random_mixture(5, 2, cov=cov, seed=7)
    mask = torch.tensor([True, False, True, False, False])
    x_known = torch.tensor([0.3, 99.0, -0.4, 99.0, 99.0], dtype=f64)  # entries off the mask are ignored
    post = mix.posterior(Inpainting(x_known, mask))
    Sig = mix.covariances()
    logev = mix.weights.log() + torch.stack([
        torch.distributions.MultivariateNormal(mix.means[k, mask], Sig[k][mask][:, mask]).log_prob(x_known[mask]) for k in range(2)
    ])
    torch.testing.assert_close(post.weights, torch.softmax(logev, 0), rtol=1e-10, atol=1e-12)
    assert (post.eigvecs is None) == (cov == "diag")  # a diagonal mixture stays diagonal (cheap scores)
    xu = torch.randn(10, 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    full = x_known.repeat(10, 1)
    full[:, ~mask] = xu
    torch.testing.assert_close(post.log_prob(xu), mix.log_prob(full) - torch.logsumexp(logev, 0), rtol=1e-10, atol=1e-10)


def _noisy(mix, sde, n, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, generator=g, dtype=f64)
    t = 0.02 + 0.96 * torch.rand(n, generator=g, dtype=f64)
    mean, std = sde.marginal(x0, t)
    return mean + std[:, None] * torch.randn(x0.shape, generator=g, dtype=f64), t


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_conditional_score_is_the_component_score(sde_name, cov):
    sde = make_sdes()[sde_name]
    mix = scoresde.random_mixture(3, 4, cov=cov, seed=1)
    x, t = _noisy(mix, sde, 24, 0)
    labels = torch.arange(24) % 4
    f = mix.score_fn(sde)
    assert f.num_classes == 4
    cond = f(x, t, labels)
    Sig = mix.covariances()
    for k in range(4):
        single = GaussianMixture([1.0], mix.means[k : k + 1], Sig[k : k + 1])
        xk = x[labels == k].clone().requires_grad_()
        (grad,) = torch.autograd.grad(single.log_prob(xk, t[labels == k], sde=sde).sum(), xk)
        torch.testing.assert_close(cond[labels == k], grad, rtol=1e-9, atol=1e-10)
        # bound to one label (an int) or to the batch's labels: the same numbers as a plain f(x, t)
        torch.testing.assert_close(mix.score_fn(sde, y=k)(x[labels == k], t[labels == k]), grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mix.score_fn(sde, y=labels)(x, t), cond, rtol=0, atol=0)
    # y=None is the old unconditional score, bit for bit; label K is the null label (what classifier_free sends)
    assert torch.equal(f(x, t), mix._score(x, t, sde, False))
    assert torch.equal(f(x, t, None), mix.score(x, t, sde=sde))
    torch.testing.assert_close(f(x, t, torch.full((24,), 4)), f(x, t))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_mixture_identity_and_bayes_rule(sde_name):
    sde = make_sdes()[sde_name]
    mix = scoresde.random_mixture(3, 4, cov="full", seed=2)
    x, t = _noisy(mix, sde, 16, 1)
    f = mix.score_fn(sde)
    uncond = f(x, t)
    conds = torch.stack([f(x, t, torch.full((16,), k)) for k in range(4)], 1)  # (B, K, D)
    lpy = mix.log_prob_y(x, t, sde=sde)
    torch.testing.assert_close(lpy.exp().sum(1), torch.ones(16, dtype=f64), rtol=0, atol=1e-12)
    # Σ_k p_t(k | x) ∇ log p_t(x | k) = ∇ log p_t(x)
    torch.testing.assert_close((lpy.exp()[:, :, None] * conds).sum(1), uncond, rtol=1e-9, atol=1e-10)
    # log p_t(k | x) = log w_k + log N_k(x) - log p_t(x)
    Sig = mix.covariances()
    for k in range(4):
        single = GaussianMixture([1.0], mix.means[k : k + 1], Sig[k : k + 1])
        expect = mix.weights[k].log() + single.log_prob(x, t, sde=sde) - mix.log_prob(x, t, sde=sde)
        torch.testing.assert_close(lpy[:, k], expect, rtol=1e-10, atol=1e-10)
        # Bayes' rule: ∇ log p_t(k | x) + ∇ log p_t(x) = ∇ log p_t(x | k) (classifier guidance at scale 1)
        xg = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(mix.log_prob_y(xg, t, sde=sde)[:, k].sum(), xg)
        torch.testing.assert_close(grad + uncond, conds[:, k], rtol=1e-8, atol=1e-9)
    # t = None is the data distribution
    torch.testing.assert_close(mix.log_prob_y(x), torch.log_softmax(
        torch.stack([GaussianMixture([1.0], mix.means[k : k + 1], Sig[k : k + 1]).log_prob(x) for k in range(4)], 1)
        + mix.weights.log(), 1), rtol=1e-10, atol=1e-10)


def test_guidance_with_the_oracle():
    sde = make_sdes()["vp"]
    mix = scoresde.random_mixture(2, 3, cov="diag", seed=4)
    x, t = _noisy(mix, sde, 12, 2)
    y = torch.arange(12) % 3
    f = mix.score_fn(sde)
    cond, uncond = f(x, t, y), f(x, t)
    torch.testing.assert_close(guidance.classifier_free(f, y, 0.0)(x, t), cond, rtol=0, atol=0)
    torch.testing.assert_close(guidance.classifier_free(f, y, 2.0)(x, t), 3 * cond - 2 * uncond)
    cg = guidance.classifier(f, lambda v, tt: mix.log_prob_y(v, tt, sde=sde), y, 1.0)
    torch.testing.assert_close(cg(x, t), cond, rtol=1e-8, atol=1e-9)
    with pytest.raises(ValueError, match=r"y holds labels .* outside \[0, 3\)"):
        guidance.classifier_free(f, torch.tensor([0, 3]), 1.0)


def test_bad_inputs_name_the_argument():
    sde = make_sdes()["vp"]
    mix = scoresde.random_mixture(3, 4, seed=0)
    x = torch.zeros(2, 3, dtype=f64)
    with pytest.raises(ValueError, match=r"y holds labels in \[0, 4\], outside \[0, 4\)"):
        mix.score_fn(sde, y=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"y holds labels in \[-1"):
        mix.score_fn(sde, y=-1)
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        mix.score_fn(sde, y=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="y must be None or a"):
        mix.score_fn(sde)(x, 0.5, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="y has 3 labels but the batch has 2"):
        mix.score_fn(sde)(x, 0.5, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="bound to labels"):
        mix.score_fn(sde, y=1)(x, 0.5, torch.tensor([0, 1]))
    # the per-call labels are checked for shape only (no host sync per step): an invalid one poisons its sample
    s = mix.score_fn(sde)(x, 0.5, torch.tensor([1, 7]))
    assert torch.isfinite(s[0]).all() and torch.isnan(s[1]).all()
    A = torch.randn(2, 3, dtype=f64)
    with pytest.raises(ValueError, match=r"obs.y must have shape \(M,\), got \(5, 2\)"):
        mix.posterior(Observation(A, torch.zeros(5, 2, dtype=f64), noise_std=0.1))
    with pytest.raises(ValueError, match="A has 4 columns"):
        mix.posterior(Observation(torch.randn(2, 4, dtype=f64), torch.zeros(2, dtype=f64), noise_std=0.1))
    with pytest.raises(ValueError, match="noise-free general Observation is degenerate.*noise_std > 0.*Inpainting"):
        mix.posterior(Observation(A, torch.zeros(2, dtype=f64)))
    with pytest.raises(ValueError, match="per-sample inpainting"):
        mix.posterior(Inpainting(torch.zeros(5, 3, dtype=f64), torch.tensor([True, False, False])))
    with pytest.raises(ValueError, match="observes every entry"):
        mix.posterior(Inpainting(torch.zeros(3, dtype=f64), torch.ones(3, dtype=torch.bool)))
    with pytest.raises(TypeError, match="obs must be an Observation"):
        mix.posterior(torch.zeros(3))
    with pytest.raises(ValueError, match="x must have shape"):
        mix.log_prob_y(torch.zeros(2, 4, dtype=f64))
    with pytest.raises(ValueError, match="sde is required"):
        mix.log_prob_y(x, 0.5)
