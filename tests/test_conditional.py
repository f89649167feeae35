"""Class-conditional score models and time-conditioned classifiers, trained on the 2-D ring (labels = modes),
checked against the exact answer: the requested mode, and the Bayes posterior p_t(y | x) of the mixture."""

import json

import pytest
import torch

import scoresde
from scoresde import guidance
from scoresde.config import TrainConfig
from scoresde.model import Classifier, ScoreModel
from scoresde.train import CHECKPOINT, Trainer, load, train

from conftest import states_equal, tiny

pytestmark = pytest.mark.usefixtures("one_thread")
RING = scoresde.ring8()  # the ring data set's own mixture: radius 2, std 0.15, 8 modes


# A fast recipe, pinned so these tests check guidance, not the library's training defaults: with "v", likelihood
# weighting and importance-sampled t, 300 steps leave the null label's unconditional score much worse (mean distance
# of its samples to the nearest mode 0.83 against 0.53 here).
RECIPE = dict(data="ring", n_train=4000, steps=300, batch_size=128, hidden=64, n_blocks=2, emb_dim=32, lr=3e-3, warmup=20,
              parameterization="eps", weighting="sigma2", importance_sampling=False, t_sampling="iid", eps=1e-5, ckpt_every=300, log_every=100,
              final_eval=False, seed=0)


def _ring_run(path, **kw):
    cfg = TrainConfig(**{**RECIPE, "out": str(path), **kw})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg, progress=False)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    return _ring_run(tmp_path_factory.mktemp("cond"), class_conditional=True, label_dropout=0.2)


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory):
    return _ring_run(tmp_path_factory.mktemp("clf"), classifier=True, final_eval=True)


def _mode_accuracy(sde, score_fn, k, n=200, seed=0):
    x = scoresde.sample(sde, score_fn, (n, 2), sampler="dpm_solver", steps=20, generator=torch.Generator().manual_seed(seed))
    return float((RING.classify(x) == k).float().mean())


def test_class_conditional_ring_samples_the_requested_mode(cond_run):
    model, sde = load(cond_run)
    assert isinstance(model, ScoreModel) and model.num_classes == 8 and not model.training
    x, t = torch.randn(6, 2), torch.full((6,), 0.4)
    assert torch.equal(model(x, t, None), model(x, t)) and torch.equal(model(x, t), model(x, t, torch.full((6,), 8)))
    assert not torch.allclose(model(x, t, torch.zeros(6, dtype=torch.long)), model(x, t))  # y=None: the null label
    ckpt = torch.load(cond_run / CHECKPOINT, weights_only=True)
    assert ckpt["num_classes"] == 8 and ckpt["model_config"]["net"]["num_classes"] == 8
    for k in range(8):  # measured: 1.000 for every mode (w = 0: 0.995 or more)
        assert _mode_accuracy(sde, guidance.classifier_free(model, k, 1.0), k, seed=k) >= 0.95, k
    # y = None is the unconditional score the null label learned: every mode, about 1/8 each
    x = scoresde.sample(sde, lambda x, t: model(x, t, None), (800, 2), sampler="dpm_solver", steps=20,
                        generator=torch.Generator().manual_seed(9))
    share = torch.bincount(RING.classify(x), minlength=8).float() / 800
    assert float(share.min()) > 0.06 and float(share.max()) < 0.2, share


def _bayes_log_posterior(sde, xt, t):
    """The exact log p_t(y | x_t) of the ring's equal-weight isotropic modes: softmax of -|x - m μ_k|² / 2(m² s² + σ²)."""
    m, s = sde.marginal_coefs(t)
    var = m**2 * 0.15**2 + s**2
    d2 = ((xt.double()[:, None, :] - m.double()[:, None, None] * RING.means[None]) ** 2).sum(-1)  # (B, K)
    return torch.log_softmax(-d2 / (2 * var.double()[:, None]), 1)


def test_classifier_matches_the_bayes_posterior_and_falls_to_chance(clf_run):
    clf, sde = load(clf_run)
    assert isinstance(clf, Classifier) and clf.num_classes == 8 and not clf.training
    x0, y = RING.sample(4000, generator=torch.Generator().manual_seed(1), return_labels=True)
    accs = {}
    for t in (0.05, 0.3, 0.5, 1.0):
        tt = torch.full((4000,), t)
        xt = sde._schedule(tt).perturb(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))
        with torch.no_grad():
            logp = torch.log_softmax(clf(xt, tt), 1).double()
        exact = _bayes_log_posterior(sde, xt, tt)
        kl = float((exact.exp() * (exact - logp)).sum(1).mean())
        accs[t] = float((logp.argmax(1) == y).float().mean())
        bayes = float((exact.argmax(1) == y).float().mean())
        # measured: KL 0.016 / 0.010 / 0.010 / 0.019 nats, accuracy within 0.004 of Bayes'
        assert kl < 0.06 and abs(accs[t] - bayes) < 0.03, (t, kl, accs[t], bayes)
    assert accs[0.05] > 0.97 and accs[1.0] < 0.18 and accs[0.05] > accs[0.3] > accs[0.5] > accs[1.0]  # chance: 1/8
    log = [r for r in map(json.loads, (clf_run / "log.jsonl").read_text().splitlines()) if "chance" in r]
    rec = log[-1]  # the run's own summary: accuracy by noise level against chance
    assert rec["test_acc_t=0.01"] > 0.97 and rec["test_acc_t=1"] < 0.2 and 0.1 < rec["chance"] < 0.16


def test_classifier_guidance_with_the_loaded_classifier(cond_run, clf_run):
    model, sde = load(cond_run)
    clf, _ = load(clf_run)
    uncond = lambda x, t: model(x, t)  # noqa: E731  (the conditional model's null label: an unconditional score)
    acc1 = [_mode_accuracy(sde, guidance.classifier(uncond, clf, k, 1.0), k, seed=k) for k in range(0, 8, 2)]
    acc3 = [_mode_accuracy(sde, guidance.classifier(uncond, clf, k, 3.0), k, seed=k) for k in range(0, 8, 2)]
    # measured: 0.91-0.975 at scale 1 (Bayes' rule with two learned parts), 1.0 at scale 3; unguided: 1/8
    assert min(acc1) > 0.8 and sum(acc1) / 4 > 0.9 and min(acc3) > 0.97, (acc1, acc3)
    with pytest.raises(ValueError, match="outside"):
        guidance.classifier(uncond, clf, 8, 1.0)


def test_classifier_resume_is_bit_for_bit_and_load_gives_the_ema(tmp_path):
    full = torch.load(train(tiny(tmp_path, "full", classifier=True), progress=False) / CHECKPOINT, weights_only=True)
    part = tiny(tmp_path, "part", classifier=True, steps=20)
    train(part, progress=False)
    tr = Trainer(part.replace(steps=30), resume=True, progress=False)
    assert tr.resumed and isinstance(tr.model, Classifier)
    resumed = torch.load(tr.fit() / CHECKPOINT, weights_only=True)
    assert resumed["step"] == full["step"] == 30 and resumed["model_config"]["kind"] == "classifier"
    for key in ("model", "ema", "optimizer"):
        states_equal(resumed[key], full[key])
    clf, sde = load(tmp_path / "part")
    assert isinstance(clf, Classifier) and not clf.training and not any(p.requires_grad for p in clf.parameters())
    for p, q in zip(clf.parameters(), tr.ema.module.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(5, 2)
    assert clf(x, torch.full((5,), 0.3)).shape == (5, 8)
    s = guidance.classifier(scoresde.ring8().score_fn(sde), clf, torch.arange(5), 2.0)(x, torch.full((5,), 0.3))
    assert s.shape == (5, 2) and torch.isfinite(s).all()


def test_labelled_training_refuses_unlabelled_data_and_contradictions(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    for flag in ("classifier", "class_conditional"):
        with pytest.raises(ValueError, match=f"{flag}=True but data .* has no labels"):
            Trainer(tiny(tmp_path, data=str(tmp_path / "x.npy"), **{flag: True}), progress=False)
    with pytest.raises(ValueError, match="exclude each other"):
        TrainConfig(classifier=True, class_conditional=True)
    # importance sampling of t is the score loss's; a classifier draws t uniformly whatever the config says
    a = Trainer(tiny(tmp_path, "a", classifier=True, importance_sampling=True, eps=1e-3), progress=False).global_batch(0)[1]
    b = Trainer(tiny(tmp_path, "b", classifier=True, importance_sampling=False, eps=1e-3), progress=False).global_batch(0)[1]
    assert torch.equal(a, b)


def test_unet_classifier_trains_on_digits_a_few_steps(tmp_path):
    cfg = TrainConfig(data="digits", steps=3, batch_size=16, channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      emb_dim=32, final_eval=True, out=str(tmp_path / "digits"), classifier=True)
    tr = Trainer(cfg, progress=False)
    tr.fit()
    assert set(tr.last_eval) >= {"chance", "test_acc_t=0.01", "test_acc_t=1"} and tr.out.name == "digits"
    clf, _ = load(tr.out)
    assert clf.net.body_kind == "unet" and clf.num_classes == 10 and clf.event_shape == (1, 8, 8)
    assert clf(torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)).shape == (2, 10)
