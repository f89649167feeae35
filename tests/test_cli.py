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
