"""The command line, end to end: train a few steps, then sample and likelihood on that checkpoint; errors; benchmarks' quick modes."""

import json

import numpy as np
import torch
import pytest

from scoresde.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data", "ring", "--steps", "30", "--batch-size", "64", "--out", str(out), "--seed", "1", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out


def test_train_writes_a_loadable_checkpoint(run_dir):
    import scoresde

    model, sde = scoresde.load(run_dir)
    assert isinstance(sde, scoresde.VPSDE) and model.event_shape == (2,)
    assert not model.training


def test_sample_writes_png_and_npz(run_dir, tmp_path, capsys):
    png = tmp_path / "s.png"
    rc = main(["sample", "--ckpt", str(run_dir), "--sampler", "dpm_solver", "--steps", "10", "--n", "300", "--out", str(png), "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert png.stat().st_size > 1000
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (300, 2) and np.isfinite(x).all()
    # seeded: the same command gives the same samples
    main(["sample", "--ckpt", str(run_dir), "--sampler", "dpm_solver", "--steps", "10", "--n", "300", "--out", str(tmp_path / "t.png"), "--no-progress", "--device", "cpu"])
    assert np.array_equal(x, np.load(tmp_path / "t.npz")["x"])


def test_sample_accepts_module_class(run_dir, tmp_path):
    rc = main(["sample", "--ckpt", str(run_dir), "--sampler", "scoresde.samplers:EulerMaruyama", "--steps", "20", "--n", "50", "--out", str(tmp_path / "e.png"), "--no-progress", "--device", "cpu"])
    assert rc == 0 and np.load(tmp_path / "e.npz")["x"].shape == (50, 2)


def test_likelihood_prints_bits_per_dim(run_dir, capsys):
    rc = main(["likelihood", "--ckpt", str(run_dir), "--data", "ring", "--n", "40", "--divergence", "exact", "--json", "--no-progress", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["n"] == 40 and res["nfe"] > 0
    # an untrained-ish model on the ring: finite, and worse than the true density's ~0.79 bits/dim
    assert np.isfinite(res["bits_per_dim"]) and res["bits_per_dim"] > 0.5 and res["stderr"] > 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sample", "--ckpt", "/nonexistent/run", "--out", "x.png"], "no checkpoint"),
        (["sample", "--ckpt", "RUN", "--sampler", "bogus"], "unknown sampler"),
        (["sample", "--ckpt", "RUN", "--sampler", "nosuchmodule:Thing"], "cannot import"),
        (["train", "--data", "/nonexistent/file.npz", "--steps", "1"], "nonexistent"),
        (["train", "--steps", "1"], "--data"),
    ],
)
def test_errors_are_one_line(argv, needle, run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoresde: error:") and needle in err and len(err.splitlines()) == 1


def test_nan_data_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, 1.0], [np.nan, 2.0]] * 10))
    assert main(["train", "--data", str(bad), "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_help_answers(capsys):
    for cmd in ([], ["demo"], ["train"], ["sample"], ["likelihood"], ["bench"]):
        with pytest.raises(SystemExit) as e:
            main(cmd + ["--help"])
        assert e.value.code == 0
    assert "--sampler" in capsys.readouterr().out


@pytest.mark.parametrize("which", ["solvers", "likelihood", "training"])
def test_benchmarks_quick_modes_run(which, tmp_path):
    """Benchmarks must not rot: each `--quick` run writes its table."""
    assert main(["bench", which, "--quick", "--out", str(tmp_path)]) == 0
    assert list(tmp_path.glob("*.md")), "no markdown table written"


def test_demo_times_each_sampler_after_an_untimed_warm_up(monkeypatch):
    import time

    import scoresde.samplers as samplers
    from scoresde import demo

    calls = []

    def fake_sample(sde, fn, shape, *, sampler, stats=None, **kw):
        calls.append(shape[0])
        if len(calls) == 1:
            time.sleep(0.3)  # a slow first call, as a cold start is
        if stats is not None:
            stats["nfe"] = 7
        return torch.zeros(shape)

    monkeypatch.setattr(samplers, "sample", fake_sample)
    x, nfe, secs = demo._sample(None, None, 100, "pc", 5, {}, torch.Generator(), "cpu")
    assert calls == [demo.WARMUP_N, 100] and nfe == 7 and x.shape == (100, 2) and secs < 0.2


# -- labels, guidance, observations ------------------------------------------------------------------------


RING_CFG = ("n_train = 4000\nbatch_size = 128\nhidden = 64\nn_blocks = 2\nemb_dim = 32\nlr = 3e-3\nwarmup = 20\nseed = 0\n"
            'parameterization = "eps"\nweighting = "sigma2"\nimportance_sampling = false\nt_sampling = "iid"\neps = 1e-5\n')  # as tests/test_conditional.py's RECIPE


def _train(out, *flags, steps=300, final_eval=False):
    cfg = out.parent / f"{out.name}.toml"
    cfg.write_text(RING_CFG + f"final_eval = {'true' if final_eval else 'false'}\n")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", "--data", "ring", "--config", str(cfg), "--steps", str(steps), "--out", str(out), "--no-progress",
                     "--device", "cpu", *flags])
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cond"
    assert _train(out, "--class-conditional", "--label-dropout", "0.2") == 0
    return out


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "clf"
    assert _train(out, "--classifier", final_eval=True) == 0
    return out


def _sample(ckpt, out, *flags, n=200):
    return main(["sample", "--ckpt", str(ckpt), "--n", str(n), "--out", str(out), "--no-progress", "--device", "cpu", *flags])


def test_train_class_conditional_and_classifier_flags(cond_dir, clf_dir, capsys):
    import scoresde

    model, _ = scoresde.load(cond_dir)
    clf, _ = scoresde.load(clf_dir)
    assert model.num_classes == 8 and isinstance(clf, scoresde.Classifier) and clf.num_classes == 8
    assert _train(clf_dir.parent / "clf2", "--classifier", steps=300, final_eval=True) == 0
    out = capsys.readouterr().out  # the run's summary: accuracy by noise level, against chance
    line = next(l for l in out.splitlines() if "test accuracy" in l)
    acc = {k: float(v) for k, v in (p.strip().split(": ") for p in line.split("test accuracy ")[1].split(" (chance")[0].split(", "))}
    assert acc["t=0.01"] > 0.97 and acc["t=1"] < 0.2 and "chance 0.13" in line, line


def test_sample_labels_land_in_their_modes(cond_dir, clf_dir, tmp_path, capsys):
    import scoresde

    ring = scoresde.ring8()
    assert _sample(cond_dir, tmp_path / "all.png", "--label", "all", "--guidance", "1") == 0
    assert "classifier-free, scale 1" in capsys.readouterr().out
    z = np.load(tmp_path / "all.npz")
    assert z["x"].shape == (1600, 2) and (tmp_path / "all.png").stat().st_size > 1000
    assert np.array_equal(z["y"], np.repeat(np.arange(8), 200))
    hit = ring.classify(torch.as_tensor(z["x"])).numpy() == z["y"]
    assert all(hit[z["y"] == k].mean() >= 0.95 for k in range(8)), [hit[z["y"] == k].mean() for k in range(8)]
    # label 3 alone gives the very samples it gets among all labels (one seeded call per label)
    assert _sample(cond_dir, tmp_path / "three.png", "--label", "3", "--guidance", "1") == 0
    assert np.array_equal(np.load(tmp_path / "three.npz")["x"], z["x"][z["y"] == 3])
    # classifier guidance on the model's unconditional branch, default scale 1 (Bayes' rule)
    assert _sample(cond_dir, tmp_path / "clf.png", "--classifier", str(clf_dir), "--label", "2", "--label", "6") == 0
    assert "classifier guidance, scale 1 (Bayes' rule)" in capsys.readouterr().out
    z = np.load(tmp_path / "clf.npz")
    assert (ring.classify(torch.as_tensor(z["x"])).numpy() == z["y"]).mean() > 0.85  # measured 0.92; unguided 1/8


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--ckpt", "RUN", "--label", "1"], "unconditional model"),
        (["--ckpt", "COND", "--label", "8"], "--label 8 is out of range: --ckpt COND has 8 classes (0..7)"),
        (["--ckpt", "COND", "--label", "two"], "--label must be a class index or 'all'"),
        (["--ckpt", "CLF"], "is a classifier run"),
        (["--ckpt", "RUN", "--classifier", "COND", "--label", "1"], "is a score model, not a classifier run"),
        (["--ckpt", "COND", "--guidance", "2"], "--guidance needs --label"),
        (["--ckpt", "RUN", "--inpaint", "known.npy"], "--inpaint IMAGE and --mask MASK go together"),
        (["--ckpt", "RUN", "--conditioning", "smc"], "--conditioning needs an observation"),
        (["--ckpt", "RUN", "--observe", "obs.npz", "--out", "obs.png"], "would overwrite the input"),
        (["--ckpt", "RUN", "--observe", "bad.npz"], "needs arrays A (M, D) and y (M,)"),
        (["--ckpt", "RUN", "--inpaint", "known.npy", "--mask", "none.npy"], "observes nothing"),
        (["--ckpt", "RUN", "--inpaint", "wide.npy", "--mask", "mask.npy"], "has shape (3,), the model's samples have shape (2,)"),
    ],
)
def test_conditional_sample_errors_are_one_line(argv, needle, run_dir, cond_dir, clf_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("known.npy", np.array([1.0, 0.0], np.float32))
    np.save("wide.npy", np.zeros(3, np.float32))
    np.save("mask.npy", np.array([True, False]))
    np.save("none.npy", np.array([False, False]))
    np.savez("obs.npz", A=np.ones((1, 2), np.float32), y=np.array([2.0], np.float32))
    np.savez("bad.npz", A=np.ones((1, 2), np.float32))
    names = {"RUN": str(run_dir), "COND": str(cond_dir), "CLF": str(clf_dir)}
    argv = [names.get(a, a) for a in argv]
    assert main(["sample", "--no-progress", "--device", "cpu", "--n", "5", *argv]) == 2
    err = capsys.readouterr().err.strip()
    for k, v in names.items():
        needle = needle.replace(k, v)
    assert err.startswith("scoresde: error:") and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "samples.png").exists()


def test_inpaint_and_observe_on_the_ring(cond_dir, tmp_path, capsys):
    np.save(tmp_path / "known.npy", np.array([2.0, 123.0], np.float32))  # the unobserved entry may hold anything finite
    np.save(tmp_path / "mask.npy", np.array([True, False]))
    flags = ["--sampler", "euler_maruyama", "--steps", "100", "--conditioning", "smc"]
    assert _sample(cond_dir, tmp_path / "inp.png", "--inpaint", str(tmp_path / "known.npy"), "--mask", str(tmp_path / "mask.npy"), *flags) == 0
    out = capsys.readouterr().out
    assert "conditioning: smc; ESS min" in out and "of 200 particles" in out
    z = np.load(tmp_path / "inp.npz")
    assert np.array_equal(z["x"][:, 0], np.full(200, 2.0, np.float32)) and z["mask"].tolist() == [True, False]
    assert np.abs(z["x"][:, 1]).mean() < 0.6  # x₀ = 2 leaves the mode at (2, 0) (the next ones are at y = ±1.41)
    np.savez(tmp_path / "obs.npz", A=np.array([[1.0, 1.0]], np.float32), y=np.array([2.0], np.float32), noise_std=np.array(0.1))
    assert _sample(cond_dir, tmp_path / "o.png", "--observe", str(tmp_path / "obs.npz"), *flags) == 0
    assert "conditioning: smc" in capsys.readouterr().out
    s = np.load(tmp_path / "o.npz")["x"].sum(1)
    assert abs(s.mean() - 2.0) < 0.05 and s.std() < 0.25, (s.mean(), s.std())  # A x ≈ y, within the noise


def test_digits_labels_and_inpainting_write_images(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--class-conditional", "--steps", "2", "--batch-size", "16", "--out", str(run),
                 "--config", str(_digits_toml(tmp_path)), "--no-progress", "--device", "cpu"]) == 0
    flags = ["--steps", "4", "--n", "6", "--no-progress", "--device", "cpu"]
    assert main(["sample", "--ckpt", str(run), "--label", "0", "--label", "3", "--out", str(tmp_path / "d.png"), *flags]) == 0
    assert (tmp_path / "d_label0.png").stat().st_size > 500 and (tmp_path / "d_label3.png").is_file()
    assert not (tmp_path / "d.png").exists() and np.load(tmp_path / "d.npz")["y"].tolist() == [0] * 6 + [3] * 6
    img = np.zeros((8, 8), np.uint8)
    img[:, 2:6] = 255  # a bar
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255  # the top half is known
    Image.fromarray(img).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["sample", "--ckpt", str(run), "--inpaint", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "--sampler", "euler_maruyama", "--conditioning", "replacement", "--out", str(tmp_path / "c.png"), *flags]) == 0
    assert "conditioning: replacement" in capsys.readouterr().out and (tmp_path / "c.png").stat().st_size > 500
    x = np.load(tmp_path / "c.npz")["x"]
    assert x.shape == (6, 1, 8, 8) and np.array_equal(x[:, 0, :4], np.broadcast_to(img[:4] / 127.5 - 1, (6, 4, 8)).astype(np.float32))


def _digits_toml(tmp_path):
    p = tmp_path / "d.toml"
    p.write_text("channels = 8\nnum_res_blocks = 1\nemb_dim = 32\nfinal_eval = false\n")
    return p


def test_likelihood_anchor_race_skips_without_a_checkout_and_refuses_a_wrong_one(tmp_path, capsys):
    from benchmarks import likelihood_anchor

    assert likelihood_anchor.main([]) == 0
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a score_sde_pytorch checkout"):
        likelihood_anchor.main(["--anchor", str(tmp_path)])
