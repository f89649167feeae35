"""The variable the adaptive probability-flow solves step in (`time=`): the same answers in t and in the noise level.

A change of variable leaves the ODE's solution and `∫ ∇·v` unchanged, so every `time` must give the oracle's
exact log-density and invert its own encode; only the cost may differ (benchmarks/likelihood_time.py)."""

import pytest
import torch

import scoresde
from scoresde.likelihood import decode, encode, log_likelihood
from scoresde.samplers.ode import TIME_VARIABLES, ProbabilityFlowField

from conftest import CosineVPNoClosedForm

F64 = torch.float64
EPS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny ops: a second thread only contends


def sdes():
    return {"vp": scoresde.VPSDE(), "subvp": scoresde.SubVPSDE(), "ve": scoresde.VESDE(), "user": CosineVPNoClosedForm()}


@pytest.mark.parametrize("time", TIME_VARIABLES)
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "user"])
def test_every_time_variable_gives_the_exact_log_density(time, sde_name):
    sde, mix = sdes()[sde_name], scoresde.ring8()
    x = mix.sample(16, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(sde, mix.score_fn(sde), x, divergence="exact", rtol=1e-5, atol=1e-5, eps=EPS, time=time)
    true = mix.log_prob(x, EPS, sde=sde)
    solver_err = (mix.log_prob(res.z, sde.T, sde=sde) + res.delta_logp - true).abs() / 2
    assert solver_err.mean() < 2e-4, solver_err
    assert torch.allclose(res.logp, sde.prior_logp(res.z) + res.delta_logp)
    # The same latent as the t-time solve: both are x(T) of the one ODE.
    ref = encode(sde, mix.score_fn(sde), x, rtol=1e-7, atol=1e-7, eps=EPS)
    assert (res.z - ref).abs().max() < 1e-3 * sde.prior_std()


@pytest.mark.parametrize("time", TIME_VARIABLES[1:])
def test_time_variable_converges_and_inverts(time):
    """Tighter tolerances give smaller errors in every variable, and decode inverts encode."""
    sde, mix = scoresde.VPSDE(), scoresde.ring8()
    x = mix.sample(16, generator=torch.Generator().manual_seed(1), dtype=F64)
    sf = mix.score_fn(sde)
    true = mix.log_prob(x, EPS, sde=sde)
    errs = []
    for tol in (1e-3, 1e-6):
        r = log_likelihood(sde, sf, x, divergence="exact", rtol=tol, atol=tol, eps=EPS, time=time)
        errs.append(float((mix.log_prob(r.z, sde.T, sde=sde) + r.delta_logp - true).abs().mean()))
    assert errs[1] < errs[0] / 30, errs
    z = encode(sde, sf, x, rtol=1e-7, atol=1e-7, time=time)
    assert (decode(sde, sf, z, rtol=1e-7, atol=1e-7, time=time) - x).abs().max() < 1e-4


def test_hutchinson_in_noise_level_time_is_unbiased():
    sde, mix = scoresde.VPSDE(), scoresde.ring8()
    x = mix.sample(4, generator=torch.Generator().manual_seed(2), dtype=F64).repeat_interleave(64, 0)
    r = log_likelihood(sde, mix.score_fn(sde), x, eps=EPS, time="cbrt_sigma", generator=torch.Generator().manual_seed(3))
    est = r.logp.reshape(4, 64)
    true = mix.log_prob(x[::64], EPS, sde=sde)
    se = est.std(1) / 8
    assert ((est.mean(1) - true).abs() < 4 * se + 2e-3).all(), (est.mean(1) - true, se)


@pytest.mark.parametrize("time", ["sigma", "log_sigma"])
def test_ode_sampler_adaptive_in_noise_level_time(time):
    """`sample(sampler="ode")` with an adaptive method steps in `time`: the same end point as in t."""
    sde, mix = scoresde.VESDE(), scoresde.ring8()
    sf = mix.score_fn(sde)
    z = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = decode(sde, sf, z, rtol=1e-8, atol=1e-8, eps=1e-3)
    out = scoresde.sample(sde, sf, (32, 2), sampler=scoresde.samplers.ODESampler("dopri5", rtol=1e-6, atol=1e-6, time=time),
                          x_T=z, eps=1e-3, dtype=F64, denoise=False)
    assert (out - ref).abs().max() < 1e-3


def test_user_sde_inverse_of_half_log_snr():
    """`t_from_half_log_snr` of a LinearSDE given by its two schedule functions, against VP's closed form."""

    class UserVP(scoresde.LinearSDE):
        def drift_coef(self, t):
            return -0.5 * (0.1 + 19.9 * t)

        def diffusion(self, t):
            return (0.1 + 19.9 * t).sqrt()

    t = torch.cat([torch.logspace(-8, -1, 40, dtype=F64), torch.linspace(0.1, 1.0, 40, dtype=F64)])
    lam = scoresde.VPSDE().half_log_snr(t)
    got = UserVP().t_from_half_log_snr(lam)
    assert ((got - t) / t).abs().max() < 1e-10
    # And for a schedule with no closed form at all: the round trip through its own quadrature.
    s = CosineVPNoClosedForm()
    assert ((s.t_from_half_log_snr(s.half_log_snr(t)) - t) / t).abs().max() < 1e-10


def test_bad_time_variable_and_general_sde():
    sde, mix = scoresde.VPSDE(), scoresde.ring8()
    x = mix.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(ValueError, match="time must be one of"):
        log_likelihood(sde, mix.score_fn(sde), x, time="lambda")
    with pytest.raises(ValueError, match="time must be one of"):
        scoresde.samplers.ODESampler(time="tau")
    # A general (non-linear) SDE has no noise level: the field steps in t.

    class OU(scoresde.SDE):  # dx = -x³ dt + dw
        T = 1.0

        def drift(self, x, t):
            return -x**3

        def diffusion(self, t):
            return torch.ones_like(torch.as_tensor(t, dtype=F64).reshape(-1))

        def marginal(self, x0, t):
            raise NotImplementedError

        def prior_logp(self, z):
            raise NotImplementedError

        def prior_sample(self, shape, *, generator=None, device=None, dtype=None):
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    field = ProbabilityFlowField(OU(), mix.score_fn(sde), 4, time="sigma")
    assert field.time == "t"
    assert torch.equal(field.to_u(torch.tensor([0.25, 1.0], dtype=F64)), torch.tensor([0.25, 1.0], dtype=F64))
