import math

import pytest
import torch

import scoresde
from scoresde.losses import dsm_loss, dsm_loss_per_sample, sample_time, time_weight
from scoresde.nets import MLP
from scoresde.model import ScoreModel

from conftest import CosineVPNoClosedForm


def _gaussian(dim=3, mu=0.7, s=0.6):
    return scoresde.GaussianMixture([1.0], torch.full((1, dim), mu), torch.tensor([s * s]))


@pytest.mark.parametrize("t", [0.05, 0.3, 0.9])
def test_dsm_minimum_is_closed_form_for_gaussian_data(sde, t, gen):
    """Gaussian data N(μ, s²I): with the exact score, E ℓ = ½ D m²s²/(m²s² + σ²) (sigma2 weighting)."""
    D, s, n = 3, 0.6, 40_000
    mix = _gaussian(D, 0.7, s)
    x0 = mix.sample(n, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    loss = dsm_loss_per_sample(mix.score_fn(sde), sde, x0, t=tt, generator=gen)
    m, std = (float(v[0]) for v in sde.marginal_coefs(tt[:1]))
    r = m * m * s * s / (m * m * s * s + std * std)
    expected = 0.5 * D * r
    se = 0.5 * r * math.sqrt(2 * D / n)  # ℓ = ½ r χ²_D exactly
    assert abs(float(loss.mean()) - expected) < 4 * se
    assert float(loss.std()) == pytest.approx(0.5 * r * math.sqrt(2 * D), rel=0.03)


@pytest.mark.parametrize("t", [0.02, 0.5])
def test_dsm_identity_on_the_ring(sde, t, gen):
    """E ℓ(s + δ) - E ℓ(s) = ½ σ² E‖δ(x_t)‖² at the exact score s, for any perturbation δ; so the exact score is the minimum."""
    mix, n = scoresde.ring8(), 30_000
    x0 = mix.sample(n, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    exact = mix.score_fn(sde)
    _, std = sde.marginal_coefs(tt[:1])
    delta = lambda x: 0.5 * torch.sin(x) / std  # noqa: E731  (scaled so both terms are O(1))
    ell = dsm_loss_per_sample(exact, sde, x0, t=tt, noise=noise)
    ell_p = dsm_loss_per_sample(lambda x, t: exact(x, t) + delta(x), sde, x0, t=tt, noise=noise)
    m, _ = sde.marginal_coefs(tt)
    xt = m[:, None] * x0 + std * noise
    gap = 0.5 * std**2 * delta(xt).square().sum(1)
    diff = ell_p - ell
    se = float((diff - gap).std()) / math.sqrt(n)
    assert abs(float(diff.mean() - gap.mean())) < 4 * se
    assert float(ell_p.mean()) > float(ell.mean()) + 10 * se


@pytest.mark.parametrize("sde", [scoresde.VPSDE(), scoresde.VESDE(), CosineVPNoClosedForm()], ids=["vp", "ve", "user"])
def test_importance_sampling_is_unbiased(sde, gen):
    """Importance-sampled and plain likelihood-weighted losses have the same expectation."""
    mix, n, eps = scoresde.ring8(), 100_000, 1e-3
    exact = mix.score_fn(sde)
    fn = lambda x, t: exact(x, t) + 0.3 * torch.cos(x)  # noqa: E731
    x0 = mix.sample(n, generator=gen, dtype=torch.float64)
    plain = dsm_loss(fn, sde, x0, weighting="likelihood", eps=eps, generator=gen, reduction="none")
    imp = dsm_loss(fn, sde, x0, weighting="likelihood", importance_sampling=True, eps=eps, generator=gen, reduction="none")
    se = math.sqrt(float(plain.var()) / n + float(imp.var()) / n)
    assert abs(float(plain.mean() - imp.mean())) < 4 * se
    if not isinstance(sde, scoresde.VESDE):  # (VE's huge g² at large t makes the δ-term dominate both)
        assert float(imp.std()) < 0.7 * float(plain.std())  # and it reduces the variance


def test_importance_density_matches_g2_over_sigma2():
    """Samples of q(t) ∝ g²/σ² follow that law: the weight λ/(σ²(T-eps)q) is the constant Z/(T-eps)."""
    sde, eps = scoresde.VPSDE(), 1e-4
    t = sample_time(sde, 20_000, eps=eps, importance_sampling=True, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(t.min()) >= eps and float(t.max()) <= 1.0
    w = time_weight(sde, t, weighting="likelihood", importance_sampling=True, eps=eps)
    # VP: ∫ β/(1 - e^{-B}) dt = log(e^{B} - 1), B = ∫β.
    B = lambda s: float(sde.integral_beta(torch.tensor(s, dtype=torch.float64)))  # noqa: E731
    Z = math.log(math.expm1(B(1.0))) - math.log(math.expm1(B(eps)))
    torch.testing.assert_close(w, torch.full_like(w, Z / (1 - eps)), rtol=5e-3, atol=0)  # piecewise density on the grid
    assert abs(float(w.mean()) / (Z / (1 - eps)) - 1) < 1e-4
    # and the empirical CDF at the median of q matches 1/2
    med = math.log(math.expm1(B(eps))) + Z / 2
    # solve log(e^B - 1) = med for t with B(t) = 0.1 t + 9.95 t²
    Bm = math.log1p(math.exp(med))
    tm = (-0.1 + math.sqrt(0.01 + 4 * 9.95 * Bm)) / (2 * 9.95)
    assert abs(float((t < tm).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(len(t))


@pytest.mark.parametrize("mode", ["stratified", "antithetic"])
def test_t_sampling_options(mode):
    sde = scoresde.VPSDE()
    t = sample_time(sde, 1000, eps=1e-3, t_sampling=mode, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    assert abs(float(t.mean()) - (1 + 1e-3) / 2) < 0.003  # far tighter than iid's ~0.009 standard error


def test_generator_reproducibility_and_grad(gen):
    sde = scoresde.VPSDE()
    model = ScoreModel(MLP(2, hidden=16), sde)
    x0 = scoresde.ring8().sample(64, generator=gen)
    a = dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(3))
    b = dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.backward()
    assert all(p.grad is not None for p in model.parameters())
    # zero-initialised output: eps-prediction 0 gives ½ E‖ε‖² = D/2
    per = dsm_loss(model, sde, x0, generator=gen, reduction="none")
    assert per.shape == (64,) and abs(float(per.detach().mean()) - 1.0) < 0.3


def test_loss_validation(gen):
    sde, fn = scoresde.VPSDE(), scoresde.ring8().score_fn(scoresde.VPSDE())
    x0 = torch.randn(4, 2, generator=gen)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(fn, sde, x0, weighting="ml")
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(fn, sde, x0, eps=1.5)
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(fn, sde, x0, importance_sampling=True, eps=0.0)
    with pytest.raises(ValueError, match="noise"):
        dsm_loss(fn, sde, x0, noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="t must"):
        dsm_loss(fn, sde, x0, t=torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="reduction"):
        dsm_loss(fn, sde, x0, reduction="avg")
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(fn, sde, torch.randn(4))
