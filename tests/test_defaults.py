"""Defaults that fit every SDE: `eps=None` is a noise level (`sde.default_eps`), so a user's linear SDE with
`g(0) != 0` samples as well at the defaults as VP; and the checks of API.md's bad-input list, the same error
for the same mistake wherever it enters, on public SDE methods even inside a running sampler."""

import math

import pytest
import torch

import scoresde
from scoresde.metrics import mmd2
from scoresde.samplers import SAMPLERS, sample

F64 = torch.float64
RING = scoresde.ring8()  # modes of std 0.15


class OrnsteinUhlenbeck(scoresde.LinearSDE):
    """dx = -x dt + √2 dw (the README's): σ(1e-3) ≈ 0.045, several percent of the data scale."""

    def drift_coef(self, t):
        return -torch.ones_like(t)

    def diffusion(self, t):
        return torch.full_like(t, math.sqrt(2.0))


class ConstantBetaVP(scoresde.LinearSDE):
    """VP with a constant β = 12: σ(1e-3)/m ≈ 0.11, most of a ring mode's std."""

    def drift_coef(self, t):
        return torch.full_like(t, -6.0)

    def diffusion(self, t):
        return torch.full_like(t, math.sqrt(12.0))


def _user_sdes():
    return {"ou": OrnsteinUhlenbeck(T=6.0), "const_beta_vp": ConstantBetaVP()}


def within_mode_std(x):
    """Std of the offsets from each sample's nearest ring mode (0.15 for exact samples)."""
    return float((x - RING.means.to(x)[RING.classify(x)]).std())


def test_default_eps_is_vps_noise_level():
    assert scoresde.VPSDE().default_eps == 1e-3 and scoresde.SubVPSDE().default_eps == 1e-3
    assert scoresde.VESDE().default_eps == 1e-5
    lam_vp = scoresde.VPSDE().half_log_snr(torch.tensor([1e-3], dtype=F64))
    for sde in [*_user_sdes().values(), scoresde.CosineVPSDE()]:
        eps = sde.default_eps
        assert 0 < eps < sde.T
        torch.testing.assert_close(sde.half_log_snr(torch.tensor([eps], dtype=F64)), lam_vp, rtol=1e-9, atol=1e-9)
    # OU: σ²/m² = e^{2t} - 1 ≈ 2t, so the default is half VP's σ² at 1e-3
    ou_eps = OrnsteinUhlenbeck(T=6.0).default_eps
    assert ou_eps == pytest.approx(math.exp(-2 * float(lam_vp)) / 2, rel=1e-3)
    # the likelihood's smaller default follows the same rule
    assert scoresde.VPSDE().default_likelihood_eps == 1e-5
    assert OrnsteinUhlenbeck(T=6.0).default_likelihood_eps < ou_eps


@pytest.fixture(scope="module")
def ring_data():
    return RING.sample(1000, generator=torch.Generator().manual_seed(99), dtype=F64)


@pytest.fixture(scope="module")
def vp_runs(ring_data):
    sde = scoresde.VPSDE()
    return {name: sample(sde, RING.score_fn(sde), (1000, 2), sampler=name, generator=torch.Generator().manual_seed(1), dtype=F64)
            for name in SAMPLERS}


@pytest.mark.parametrize("sde_name", list(_user_sdes()))
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_at_its_defaults_reaches_vps_floor_on_a_user_sde(name, sde_name, ring_data, vp_runs):
    sde = _user_sdes()[sde_name]
    x = sample(sde, RING.score_fn(sde), (1000, 2), sampler=name, generator=torch.Generator().manual_seed(1), dtype=F64)
    r, r_vp = mmd2(x, ring_data), mmd2(vp_runs[name], ring_data)
    assert float(r.value) < max(float(r_vp.value), 0.0) + 3 * float(r.stderr), (float(r.value), float(r_vp.value))
    # the modes keep their width as on VP (a blurred end point would shrink it through the Tweedie step)
    assert abs(within_mode_std(x) - within_mode_std(vp_runs[name])) < 0.012


def test_a_clock_eps_blurs_a_user_sde():
    # what eps=1e-3 as the default did: σ/m ≈ 0.11 at the end, and Tweedie's posterior mean shrinks the modes
    sde = ConstantBetaVP()
    run = lambda eps: sample(sde, RING.score_fn(sde), (2000, 2), sampler="dpm_solver", steps=20, eps=eps,
                             generator=torch.Generator().manual_seed(1), dtype=F64)
    assert within_mode_std(run(1e-3)) < 0.13 < 0.145 < within_mode_std(run(None)) < 0.16


# -- validation where input enters; kernels trust it ------------------------------------------------------


def test_no_global_trusted_mode():
    import scoresde._utils as u

    assert not hasattr(u, "trusted")


@pytest.mark.parametrize("method,args", [
    ("drift", lambda x: (x, 1.5)), ("diffusion", lambda x: (torch.tensor([0.5, 1.5]),)), ("marginal", lambda x: (x, -0.1)),
    ("marginal_coefs", lambda x: (torch.tensor([2.0]),)), ("drift_coef", lambda x: (torch.tensor([float("nan")]),)),
    ("half_log_snr", lambda x: (torch.tensor([1.01]),)), ("schedule", lambda x: (torch.tensor([-1.0]),)),
    ("discretize", lambda x: (x, 1.2, 0.1)),
])
@pytest.mark.parametrize("sde_name", ["vp", "user"])
def test_public_sde_methods_check_t_on_every_call(method, args, sde_name):
    sde = scoresde.VPSDE() if sde_name == "vp" else OrnsteinUhlenbeck(T=1.0)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\bt\b"):
        getattr(sde, method)(*args(x))


def test_public_sde_methods_check_t_inside_a_running_sampler():
    # A user's score function calls the public method while sample() runs: it is still checked.
    sde = scoresde.VPSDE()

    def score(x, t):
        m, std = sde.marginal_coefs(t + 0.5)  # a bug: past T for most of the run
        return -x / (m * m + std * std)[:, None]

    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1.0\]"):
        sample(sde, score, (4, 2), sampler="euler_maruyama", steps=5)


def test_user_subclass_methods_become_checked_kernels():
    sde = OrnsteinUhlenbeck(T=2.0)
    assert "diffusion" not in type(sde).__dict__ and "_diffusion" in type(sde).__dict__
    assert torch.equal(sde.diffusion(torch.tensor([0.3])), sde._diffusion(torch.tensor([0.3])))
    with pytest.raises(ValueError, match="T=2.0"):
        sde.diffusion(2.5)


@pytest.mark.parametrize("call", [
    lambda sde, s, x: sample(sde, s, (4, 2), steps=3, eps="small"),
    lambda sde, s, x: scoresde.log_likelihood(sde, s, x, eps="small"),
    lambda sde, s, x: scoresde.encode(sde, s, x, eps="small"),
    lambda sde, s, x: scoresde.decode(sde, s, x, eps="small"),
    lambda sde, s, x: scoresde.dsm_loss(s, sde, x, eps="small"),
])
def test_the_same_mistake_gives_the_same_error_everywhere(call):
    sde = scoresde.VPSDE()
    with pytest.raises(TypeError, match="eps must be a number"):
        call(sde, RING.score_fn(sde), torch.zeros(4, 2))


@pytest.mark.parametrize("entry", ["sample", "log_likelihood", "encode"])
def test_ode_method_table_is_one(entry):
    # one table, from torchdiffeq's own list, for the sampler and the likelihood
    from scoresde.samplers import sampler_methods
    from scoresde.samplers.ode import METHODS

    sde = scoresde.VPSDE()
    x = RING.sample(8, generator=torch.Generator().manual_seed(0))
    assert set(sampler_methods("ode")) == set(METHODS) and "explicit_adams" in METHODS and "scipy_solver" not in METHODS
    run = {"sample": lambda m: sample(sde, RING.score_fn(sde), (8, 2), sampler="ode", method=m, steps=10),
           "log_likelihood": lambda m: scoresde.log_likelihood(sde, RING.score_fn(sde), x, method=m).logp,
           "encode": lambda m: scoresde.encode(sde, RING.score_fn(sde), x, method=m)}[entry]
    assert torch.isfinite(run("explicit_adams")).all()
    with pytest.raises(ValueError, match="method"):
        run("scipy_solver")


def test_score_of_the_wrong_shape_or_nan_is_named():
    sde = scoresde.VPSDE()
    for bad in (lambda x, t: x[:1], lambda x, t: torch.zeros(()), lambda x, t: x.sum(1)):
        with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
            sample(sde, bad, (4, 2), sampler="dpm_solver", steps=3)
    with pytest.raises(ValueError, match="score_fn returned NaN"):
        sample(sde, lambda x, t: x * float("nan"), (4, 2), sampler="pc", steps=3)
    # NaN only later in the run: caught at the end, never returned silently
    late = lambda x, t: -x if float(t[0]) > 0.5 else x * float("nan")
    for name in ("euler_maruyama", "sde", "dpm_solver"):
        with pytest.raises(ValueError, match="NaN or inf"):
            sample(sde, late, (4, 2), sampler=name, steps=4)
    with pytest.raises(ValueError, match="NaN|underflow"):
        scoresde.log_likelihood(sde, late, torch.zeros(4, 2))


def test_float16_is_refused_by_the_ode_solver():
    sde = scoresde.VPSDE()
    with pytest.raises(TypeError, match="float32 or float64"):
        scoresde.log_likelihood(sde, RING.score_fn(sde), torch.zeros(4, 2, dtype=torch.float16))
