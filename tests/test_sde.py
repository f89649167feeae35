"""SDEs: closed-form marginals, the generic LinearSDE quadrature, forward simulation, reverse views, validation."""

import math

import pytest
import torch

import scoresde
from conftest import CosineVPNoClosedForm, make_sdes

f64 = torch.float64


def closed_form(sde, t):
    """Marginal (scale, std) straight from the formulas in API.md, independent of the classes' code."""
    if isinstance(sde, scoresde.VESDE):
        # σ(t)² - σ_min² = σ_min² ((σ_max/σ_min)^{2t} - 1), the latter as expm1
        return torch.ones_like(t), sde.sigma_min * torch.expm1(2 * t * math.log(sde.sigma_max / sde.sigma_min)).sqrt()
    b0, b1 = sde.beta_min, sde.beta_max
    log_mean = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    m = log_mean.exp()
    # 1 - exp(a) written as -expm1(a): the same formula, without cancellation at small t
    one_minus = -torch.expm1(-0.5 * t**2 * (b1 - b0) - t * b0)
    if isinstance(sde, scoresde.SubVPSDE):
        return m, one_minus
    return m, one_minus.sqrt()


def cosine_closed_form(sde, t):
    u = sde.u0 + (sde.u1 - sde.u0) * t / sde.T
    m = torch.cos(u) / math.cos(sde.u0)
    # 1 - m² = sin(u - u0) sin(u + u0) / cos²(u0), without cancellation near t = 0
    var = torch.sin(u - sde.u0) * torch.sin(u + sde.u0) / math.cos(sde.u0) ** 2
    return m, var.sqrt()


class OnlySchedules(scoresde.LinearSDE):
    """A built-in SDE stripped to its two schedule functions: marginals must come from quadrature."""

    def __init__(self, base):
        super().__init__(T=base.T)
        self.base = base

    def drift_coef(self, t):
        return self.base.drift_coef(t)

    def diffusion(self, t):
        return self.base.diffusion(t)


TIMES = torch.cat([torch.tensor([0.0]), torch.logspace(-7, -2, 11, dtype=f64), torch.linspace(0.01, 1, 200, dtype=f64)])
BUILTINS = [scoresde.VPSDE(), scoresde.SubVPSDE(), scoresde.VESDE(), scoresde.VPSDE(0.5, 5.0), scoresde.VESDE(0.1, 10.0)]


@pytest.mark.parametrize("sde", BUILTINS, ids=repr)
def test_builtin_marginal_matches_closed_form(sde):
    x0 = torch.randn(len(TIMES), 3, dtype=f64, generator=torch.Generator().manual_seed(0))
    mean, std = sde.marginal(x0, TIMES)
    m, s = closed_form(sde, TIMES)
    torch.testing.assert_close(mean, m[:, None] * x0, rtol=1e-12, atol=0)
    torch.testing.assert_close(std, s, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("sde", BUILTINS, ids=repr)
def test_quadrature_matches_closed_form(sde):
    generic = OnlySchedules(sde)
    m, s = generic.marginal_coefs(TIMES)
    m_ref, s_ref = closed_form(sde, TIMES)
    assert ((m - m_ref) / m_ref).abs().max() <= 1e-6
    nz = TIMES > 0
    assert ((s[nz] - s_ref[nz]) / s_ref[nz]).abs().max() <= 1e-6
    assert s[0] == 0


def test_quadrature_on_cosine_schedule_no_builtin_has():
    sde = scoresde.CosineVPSDE()
    for cls_sde in (sde, CosineVPNoClosedForm()):
        m, s = cls_sde.marginal_coefs(TIMES)
        m_ref, s_ref = cosine_closed_form(sde, TIMES)
        assert ((m - m_ref) / m_ref).abs().max() <= 1e-6
        nz = TIMES > 0
        assert ((s[nz] - s_ref[nz]) / s_ref[nz]).abs().max() <= 1e-6
    # variance preserving: m² + σ² = 1, so the derived prior is N(0, I)
    assert abs(sde.prior_std() - 1.0) < 1e-7


def test_quadrature_stays_on_dtype_and_caches():
    sde = CosineVPNoClosedForm()
    t32 = torch.linspace(0, 1, 7, dtype=torch.float32)
    m, s = sde.marginal_coefs(t32)
    assert m.dtype == torch.float32 and s.dtype == torch.float32
    m64, s64 = sde.marginal_coefs(t32.double())
    torch.testing.assert_close(m, m64.float(), rtol=1e-5, atol=1e-6)
    n_tables = len(sde._tables)
    sde.marginal_coefs(t32)
    assert len(sde._tables) == n_tables


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine"])
def test_forward_euler_maruyama_matches_marginal(name):
    """Simulate dx = f dt + g dw from a fixed x0 over many paths; compare mean and std with `marginal` at t."""
    sde = make_sdes()[name]
    g = torch.Generator().manual_seed(7)
    n_paths, n_steps, t_end = 20000, 1000, 0.5
    x0 = torch.tensor([1.5, -0.5], dtype=f64)
    x = x0.expand(n_paths, 2).clone()
    dt = t_end / n_steps
    for i in range(n_steps):  # the unchecked kernels, as a solver calls them
        t = torch.full((n_paths,), i * dt, dtype=f64)
        x = x + sde._drift(x, t) * dt + scoresde._utils.append_dims(sde._diffusion(t), 2) * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=f64)
    mean, std = sde.marginal(x0[None], t_end)
    se_mean = std / math.sqrt(n_paths)
    # statistical tolerance (5 standard errors) plus the O(dt) bias of Euler–Maruyama
    assert ((x.mean(0) - mean[0]).abs() <= 5 * se_mean + 2 * dt * mean[0].abs()).all()
    emp_std = x.std(0)
    se_std = std / math.sqrt(2 * n_paths)
    assert ((emp_std - std).abs() <= 5 * se_std + 2 * dt * std).all()


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine"])
def test_discretize_is_the_exact_transition(name):
    """f_i, G_i compose: from t-dt to t the step maps N(m(t-dt)x0, σ(t-dt)²) onto N(m(t)x0, σ(t)²)."""
    sde = make_sdes()[name]
    t = torch.tensor([0.3, 0.7, 1.0], dtype=f64)
    dt = torch.tensor([0.01, 0.2, 0.5], dtype=f64)
    x0 = torch.ones(3, 1, dtype=f64)
    mean0, std0 = sde.marginal(x0, t - dt)
    f, G = sde.discretize(mean0, t, dt)
    mean1, std1 = sde.marginal(x0, t)
    r = (mean0 + f) / mean0
    torch.testing.assert_close(mean0 + f, mean1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((r[:, 0] ** 2 * std0**2 + G**2).sqrt(), std1, rtol=1e-8, atol=1e-12)


def test_vp_discretize_is_ddpm_and_ve_is_smld():
    vp, ve = scoresde.VPSDE(), scoresde.VESDE()
    t, dt = torch.tensor([0.5], dtype=f64), torch.tensor([0.001], dtype=f64)
    x = torch.full((1, 4), 2.0, dtype=f64)
    f, G = vp.discretize(x, t, dt)
    beta_i = -torch.expm1(-(vp.integral_beta(t) - vp.integral_beta(t - dt)))
    torch.testing.assert_close(f, ((1 - beta_i).sqrt() - 1)[:, None] * x)
    torch.testing.assert_close(G, beta_i.sqrt())
    f, G = ve.discretize(x, t, dt)
    assert (f == 0).all()
    torch.testing.assert_close(G, (ve.sigma(t) ** 2 - ve.sigma(t - dt) ** 2).sqrt())


def test_reverse_drift(sde):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 3, 2, generator=g, dtype=f64)  # any trailing shape
    t = torch.rand(5, generator=g, dtype=f64)
    score = lambda x, t: -x * (1 + t.reshape(-1, 1, 1, 1))  # noqa: E731
    rev, ode = sde.reverse(score), sde.reverse(score, probability_flow=True)
    g2 = sde.diffusion(t).reshape(-1, 1, 1, 1) ** 2
    torch.testing.assert_close(rev.drift(x, t), sde.drift(x, t) - g2 * score(x, t))
    torch.testing.assert_close(ode.drift(x, t), sde.drift(x, t) - 0.5 * g2 * score(x, t))
    torch.testing.assert_close(rev.diffusion(t), sde.diffusion(t))
    assert (ode.diffusion(t) == 0).all()
    assert rev.T == sde.T
    # the view keeps the forward SDE's marginals and prior
    torch.testing.assert_close(rev.marginal(x, t)[1], sde.marginal(x, t)[1])


def test_prior_sample_reproducible_and_prior_logp(sde):
    a = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(3), dtype=f64)
    b = sde.prior_sample((4000, 2), generator=torch.Generator().manual_seed(3), dtype=f64)
    assert torch.equal(a, b)
    s = sde.prior_std()
    assert abs(a.std().item() - s) < 0.05 * s
    z = torch.randn(3, 1, 2, 2, dtype=f64)
    ref = torch.distributions.Normal(0.0, s).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), ref)


def test_prior_matches_api():
    assert scoresde.VPSDE().prior_std() == 1.0
    assert scoresde.SubVPSDE().prior_std() == 1.0
    assert scoresde.VESDE(sigma_max=50.0).prior_std() == 50.0


def test_float32_and_device(device):
    sde = scoresde.VPSDE()
    x = torch.randn(4, 3, device=device)
    mean, std = sde.marginal(x, 0.5)
    assert mean.device == x.device and mean.dtype == torch.float32 and std.shape == (4,)
    z = sde.prior_sample((2, 3), device=device)
    assert z.device.type == device.type


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: scoresde.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: scoresde.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: scoresde.VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: scoresde.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: scoresde.VPSDE(T=0.0), "T"),
        (lambda: scoresde.VESDE(sigma_max=float("nan")), "sigma_max"),
        (lambda: scoresde.CosineVPSDE(delta=2.0), "delta"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_the_argument():
    sde = scoresde.VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="t"):
        sde.marginal(x, 1.5)
    with pytest.raises(ValueError, match=r"\[0, T"):
        sde.drift(x, torch.tensor([0.1, -0.2, 0.3]))
    with pytest.raises(ValueError, match="shape"):
        sde.drift(x, torch.zeros(4))
    with pytest.raises(TypeError, match="x0"):
        sde.marginal([[1.0, 2.0]], 0.1)
    with pytest.raises(TypeError, match="shape"):
        sde.prior_sample(3)
    with pytest.raises(ValueError, match="shape"):
        sde.prior_sample((0, 2))
    with pytest.raises(TypeError, match="score_fn"):
        sde.reverse("not a function")
