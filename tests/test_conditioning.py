"""Conditioning with zero model error: guidance and the five observation methods against the oracle's exact
conditionals and posteriors (numbers, not shapes)."""

import pytest
import torch

import scoresde
from scoresde import GaussianMixture, Inpainting, Observation, guidance, metrics, sample
from scoresde.conditioning import DPS, SMC, PiGDM, RePaint, Replacement

F64 = torch.float64
VP = scoresde.VPSDE()
# small tensors: a second intra-op thread only waits on the other core
pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# -- labels: classifier-free and classifier guidance ---------------------------------------------------


RING = scoresde.ring8()


def _component_samples(mix, k, n, seed):
    x, lab = mix.sample(4 * n * mix.n_modes, generator=_gen(seed), dtype=F64, return_labels=True)
    return x[lab == k][:n]


@pytest.mark.parametrize("kind", ["classifier_free", "classifier"])
def test_exact_guidance_reproduces_the_requested_component(kind):
    # cfg at scale 0 with the exact conditional score, and classifier guidance at scale 1 with the exact
    # log p_t(y|x), are both the exact score of p(x | y): the sampler must return that component
    k, n = 3, 1000
    if kind == "classifier_free":
        s = guidance.classifier_free(RING.score_fn(VP), k, 0.0)
    else:
        s = guidance.classifier(RING.score_fn(VP), lambda x, t: RING.log_prob_y(x, t, sde=VP), k, scale=1.0)
    x = sample(VP, s, (n, 2), sampler="dpm_solver", steps=30, generator=_gen(0), dtype=F64)
    assert float((RING.classify(x) == k).double().mean()) >= 0.99
    res = metrics.mmd2(x, _component_samples(RING, k, n, 1))
    assert abs(float(res.value)) < 4 * float(res.stderr) + 1e-4, (float(res.value), float(res.stderr))


def test_guidance_scales_sharpen_and_batch_labels():
    # per-sample labels on overlapping modes; scale 0 matches exact samples of each class, and a larger cfg
    # scale samples ∝ p(x|y) p(y|x)^w: further from the other classes
    mix = scoresde.ring8(radius=1.0, std=0.3)
    labels = torch.arange(8).repeat(250)
    conf = lambda x: float(mix.log_prob_y(x).gather(1, labels[:, None]).mean())  # noqa: E731  log p(y|x) at t=0
    x0, x3 = (sample(VP, guidance.classifier_free(mix.score_fn(VP), labels, w), (2000, 2), sampler="dpm_solver",
                     steps=20, generator=_gen(0), dtype=F64) for w in (0.0, 3.0))
    x, lab = mix.sample(40000, generator=_gen(1), dtype=F64, return_labels=True)
    exact = torch.stack([x[lab == k][:250] for k in range(8)], 1).reshape(2000, 2)  # row i has label i % 8
    assert conf(x0) == pytest.approx(conf(exact), abs=0.05)
    assert conf(x3) > conf(x0) + 0.3, (conf(x3), conf(x0))


def test_conditional_likelihood_with_guidance_is_the_component_density():
    # log_likelihood takes a guided score: with the exact conditional score it gives log p(x | y) exactly
    k = 2
    x = _component_samples(RING, k, 16, 3)
    s = guidance.classifier_free(RING.score_fn(VP), k, 0.0)
    res = scoresde.log_likelihood(VP, s, x, divergence="exact", rtol=1e-6, atol=1e-6)
    comp = GaussianMixture([1.0], RING.means[k : k + 1], RING.eigvals[k : k + 1])
    # the ODE's prior term uses N(0, I) at T; swap in the component's exact p_T to leave solver error alone
    exact_T = comp.log_prob(res.z, VP.T, sde=VP) - VP.prior_logp(res.z)
    torch.testing.assert_close(res.logp + exact_T, comp.log_prob(x, 1e-5, sde=VP), rtol=0, atol=2e-4)


# -- observations: the exact posterior as ground truth ----------------------------------------------


def _correlated_gaussian(D=16, seed=0):
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    cov = Q @ torch.diag(torch.linspace(0.05, 1.0, D, dtype=F64)) @ Q.T
    return GaussianMixture([1.0], torch.zeros(1, D, dtype=F64), (0.5 * (cov + cov.T))[None])


GAUSS16 = _correlated_gaussian()
MASK = torch.arange(16) < 8
X_KNOWN = GAUSS16.sample(1, generator=_gen(5), dtype=F64)[0]
INPAINT = Inpainting(X_KNOWN, MASK)
EXACT = GAUSS16.posterior(INPAINT)  # over the 8 unobserved entries
CM, CC = EXACT.means[0], EXACT.covariances()[0]


def _inpaint_errors(method, steps=100, n=2000, seed=1, sampler="reverse_diffusion"):
    st = {}
    x = sample(VP, GAUSS16.score_fn(VP), (n, 16), sampler=sampler, steps=steps, condition=INPAINT,
               conditioning=method, stats=st, generator=_gen(seed), dtype=F64)
    assert torch.equal(x[:, MASK], X_KNOWN[MASK].expand(n, 8)), "a noise-free observation must hold exactly"
    xu = x[:, ~MASK]
    z = (xu.mean(0) - CM) / (CC.diagonal() / n).sqrt()  # the mean error in iid standard errors
    cov_err = float((torch.cov(xu.T) - CC).norm() / CC.norm())
    return float(z.abs().max()), cov_err, st


def test_smc_inpainting_matches_the_schur_complement_and_replacement_does_not():
    z_smc, cov_smc, st = _inpaint_errors("smc")
    assert st["conditioning"] == "smc" and st["ess"].shape == (100,)
    # resampling correlates the particles: allow for an effective sample size about half the batch
    assert z_smc < 4.0 * 2**0.5, z_smc
    assert cov_smc < 0.2, cov_smc
    z_rep, _, st_rep = _inpaint_errors("replacement")
    assert st_rep["conditioning"] == "replacement" and st_rep["nfe"] == 101
    assert z_rep > 3 * z_smc and z_rep > 15, (z_rep, z_smc)


def test_repaint_bias_shrinks_with_jumps():
    errs = [_inpaint_errors(RePaint(jumps=j), steps=25, n=1000)[0] for j in (0, 2, 8)]
    assert errs[0] > 1.4 * errs[1] > 1.4 * 1.4 * errs[2], errs
    _, _, st = _inpaint_errors(RePaint(jumps=3), steps=10, n=64)
    assert st["nfe"] == 10 * 4 + 1  # each step done once and redone `jumps` times, plus the final denoising


BIMODAL = GaussianMixture([0.25, 0.75], [[-1.0, -1.2], [1.0, 1.2]], [[0.3, 0.1], [0.3, 0.1]])
NOISY = Observation(torch.tensor([[1.0, 0.0]]), torch.tensor([0.3]), noise_std=0.5)
POST = BIMODAL.posterior(NOISY)


def _mode_tv(method, n, seed=2, sampler="reverse_diffusion", steps=100):
    st = {}
    x = sample(VP, BIMODAL.score_fn(VP), (n, 2), sampler=sampler, steps=steps, condition=NOISY, conditioning=method,
               stats=st, generator=_gen(seed), dtype=F64)
    freq = torch.bincount(POST.log_prob_y(x).argmax(1), minlength=2).double() / n
    return float(0.5 * (freq - POST.weights).abs().sum()), x, st


def test_smc_recovers_the_bimodal_posterior_weights():
    assert POST.weights[0] < 0.2  # an unequal, bimodal posterior
    tv_small, _, _ = _mode_tv("smc", 400)
    tv, x, st = _mode_tv("smc", 2000)
    assert tv < 0.03 and tv_small < 0.08, (tv, tv_small)
    assert st["nfe"] == 100 + 1 + 1  # one evaluation (with its VJP) per step, one at the start, the denoising
    res = metrics.mmd2(x, POST.sample(2000, generator=_gen(9), dtype=F64))
    assert float(res.value) < 5 * float(res.stderr) + 2e-4, (float(res.value), float(res.stderr))
    # the Tweedie-guided methods run, and are biased on it
    for method in ("dps", "pigdm"):
        tv_m, _, st_m = _mode_tv(method, 2000)
        assert st_m["conditioning"] == method and tv_m > 2 * tv + 0.02, (method, tv_m, tv)


def test_smc_with_predictor_corrector_moves():
    tv, _, st = _mode_tv("smc", 2000, sampler="pc", steps=50)
    assert st["conditioning"] == "smc" and tv < 0.04, tv
    assert st["nfe"] == 50 * 2 + 1 + 1


def test_noise_free_general_observation_holds_exactly_for_every_method():
    g = _gen(4)
    A = torch.randn(3, 16, generator=g, dtype=F64)
    obs = Observation(A, A @ X_KNOWN, noise_std=0.0)
    for method in ("replacement", RePaint(jumps=1), "dps", "pigdm", "smc"):
        x = sample(VP, GAUSS16.score_fn(VP), (64, 16), sampler="reverse_diffusion", steps=20, condition=obs,
                   conditioning=method, generator=_gen(0), dtype=F64)
        torch.testing.assert_close(x @ A.T, (A @ X_KNOWN).expand(64, 3), rtol=0, atol=1e-9)
    # and a callable A is the same operator
    x = sample(VP, GAUSS16.score_fn(VP), (64, 16), sampler="dpm_solver", steps=10, dtype=F64,
               condition=Observation(lambda v: v @ A.T, A @ X_KNOWN), generator=_gen(0))
    torch.testing.assert_close(x @ A.T, (A @ X_KNOWN).expand(64, 3), rtol=0, atol=1e-9)


def test_default_method_and_which_samplers_take_which():
    st = {}
    for sampler, expect in (("reverse_diffusion", "smc"), ("euler_maruyama", "smc"), ("pc", "smc"),
                            ("dpm_solver", "pigdm"), ("sde", "pigdm")):
        sample(VP, BIMODAL.score_fn(VP), (32, 2), sampler=sampler, steps=8, condition=NOISY, stats=st, dtype=F64)
        assert st["conditioning"] == expect, sampler
    # the guided-score methods work with deterministic samplers, adaptive ones included
    for method in (DPS(), PiGDM(scale=0.5)):
        x = sample(VP, BIMODAL.score_fn(VP), (32, 2), sampler="ode", condition=NOISY,
                   conditioning=method, stats=st, dtype=F64)
        assert torch.isfinite(x).all() and st["conditioning"] == method.name
    for method, sampler in (("replacement", "ode"), ("repaint", "dpm_solver"), ("smc", "sde"), ("repaint", "sde")):
        with pytest.raises(ValueError, match=f"conditioning {method!r} does not work with sampler"):
            sample(VP, BIMODAL.score_fn(VP), (8, 2), sampler=sampler, steps=4, condition=NOISY, conditioning=method)


def test_smc_is_reproducible_from_the_generator():
    a = sample(VP, BIMODAL.score_fn(VP), (256, 2), sampler="reverse_diffusion", steps=20, condition=NOISY,
               generator=_gen(7), dtype=F64)
    b = sample(VP, BIMODAL.score_fn(VP), (256, 2), sampler="reverse_diffusion", steps=20, condition=NOISY,
               generator=_gen(7), dtype=F64)
    assert torch.equal(a, b)


def test_other_sdes_condition_too():
    # nothing in the methods is VP-specific: VE and a user's linear SDE through the schedule alone
    from conftest import CosineVPNoClosedForm

    for sde, n, steps in ((scoresde.VESDE(), 2000, 50), (CosineVPNoClosedForm(), 500, 30)):
        x = sample(sde, BIMODAL.score_fn(sde), (n, 2), sampler="reverse_diffusion", steps=steps, condition=NOISY,
                   generator=_gen(3), dtype=F64)
        freq = torch.bincount(POST.log_prob_y(x).argmax(1), minlength=2).double() / n
        assert float(0.5 * (freq - POST.weights).abs().sum()) < 0.04 * (2000 / n) ** 0.5, type(sde).__name__


# -- bad input: clear errors naming the argument --------------------------------------------------


def test_bad_observations_and_labels_raise_clear_errors():
    with pytest.raises(ValueError, match="noise_std"):
        Observation(torch.eye(2), torch.zeros(2), noise_std=-0.1)
    with pytest.raises(ValueError, match="y contains NaN"):
        Observation(torch.eye(2), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="inner dimension"):
        sample(VP, BIMODAL.score_fn(VP), (8, 2), condition=Observation(torch.ones(1, 3), torch.zeros(1)), steps=2)
    with pytest.raises(ValueError, match="y has 2 entries per sample but A has 1 rows"):
        Observation(torch.ones(1, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="mask must be shaped like"):
        Inpainting(torch.zeros(4), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="x_known must be shaped like one sample"):
        sample(VP, GAUSS16.score_fn(VP), (8, 16), condition=Inpainting(torch.zeros(4), torch.ones(4, dtype=torch.bool)), steps=2)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        Inpainting(torch.zeros(4), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="conditioning must be one of"):
        sample(VP, BIMODAL.score_fn(VP), (8, 2), condition=NOISY, conditioning="magic", steps=2)
    with pytest.raises(ValueError, match="without condition"):
        sample(VP, BIMODAL.score_fn(VP), (8, 2), conditioning="smc", steps=2)
    with pytest.raises(TypeError, match="condition must be a scoresde.Observation"):
        sample(VP, BIMODAL.score_fn(VP), (8, 2), condition=torch.zeros(2), steps=2)
    with pytest.raises(ValueError, match="shared by the batch"):
        per_sample = Inpainting(torch.zeros(8, 2, dtype=F64), torch.tensor([True, False]))
        sample(VP, BIMODAL.score_fn(VP), (8, 2), sampler="reverse_diffusion", condition=per_sample, steps=2, dtype=F64)
    with pytest.raises(TypeError, match="no autograd history"):
        sample(VP, lambda x, t: BIMODAL.score(x.detach(), t, sde=VP).detach(), (8, 2), sampler="dpm_solver",
               condition=NOISY, conditioning="dps", steps=2)
    # labels: out of range for the oracle's K, and any label for an unconditional model
    with pytest.raises(ValueError, match=r"y holds labels in \[0, 8\], outside \[0, 8\)"):
        guidance.classifier_free(RING.score_fn(VP), torch.tensor([0, 8]), 1.0)
    net = scoresde.nets.MLP(2, hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match="unconditional model"):
        guidance.classifier_free(scoresde.ScoreModel(net, VP), 1, 1.0)
    with pytest.raises(TypeError, match="integer class labels"):
        guidance.classifier(RING.score_fn(VP), lambda x, t: RING.log_prob_y(x, t, sde=VP), torch.tensor([0.5]))
    bad = guidance.classifier(RING.score_fn(VP), lambda x, t: RING.log_prob_y(x, t, sde=VP), 9)
    with pytest.raises(ValueError, match="classifier's number of classes"):
        bad(torch.zeros(2, 2, dtype=F64), torch.full((2,), 0.5, dtype=F64))


def test_per_sample_inpainting_with_replacement():
    # one known image per sample: the batch is not one posterior, but replacement and ΠGDM still apply per sample
    xk = GAUSS16.sample(32, generator=_gen(1), dtype=F64)
    mask = torch.rand(32, 16, generator=_gen(2)) < 0.5
    for method in ("replacement", "pigdm"):
        x = sample(VP, GAUSS16.score_fn(VP), (32, 16), sampler="reverse_diffusion", steps=10,
                   condition=Inpainting(xk, mask), conditioning=method, dtype=F64, generator=_gen(0))
        assert torch.equal(x[mask], xk[mask])


def test_guidance_stays_bounded_with_an_imperfect_score():
    # A trained network's x̂₀ Jacobian (I + σ² ∇s)/m multiplies its error by 1/m at large t: 1.1 × the exact score
    # stands in for one. Without the cap on the guidance step (it may not move A x̂₀ past the residual), ΠGDM
    # reached |x| ~ 4e5 here and SMC's proposal 1e25 on the noisy problem; with it every sample stays in range.
    for mix, cond, D in ((GAUSS16, INPAINT, 16), (BIMODAL, NOISY, 2)):
        exact = mix.score_fn(VP)
        for sampler, method in (("dpm_solver", "pigdm"), ("dpm_solver", "dps"), ("reverse_diffusion", "pigdm"),
                                ("reverse_diffusion", "smc"), ("euler_maruyama", "smc")):
            x = sample(VP, lambda x, t: 1.3 * exact(x, t), (256, D), sampler=sampler, steps=50, condition=cond,
                       conditioning=method, generator=_gen(0), dtype=F64)
            assert float(x.abs().max()) < 5.0, (D, sampler, method, float(x.abs().max()))
