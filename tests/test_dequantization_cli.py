"""`scoresde likelihood` on discrete data: digits on the discrete scale by default from the loader's own grid,
the grid flags checked against the data, and a note (never a silent guess) for continuous data that looks discrete."""

import json
import math

import numpy as np
import pytest

from scoresde.cli import main

from conftest import tiny


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from scoresde.train import train

    out = tmp_path_factory.mktemp("digits")
    train(tiny(out, data="digits", net="mlp", steps=5, batch_size=32))
    return out / "run"


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory):
    from scoresde.train import train

    out = tmp_path_factory.mktemp("ring")
    train(tiny(out, steps=5))
    return out / "run"


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def run(*argv):
    return main(["likelihood", *argv, "--json", "--no-progress", "--device", "cpu"])


def test_digits_default_to_the_discrete_scale(digits_run, capsys):
    assert run("--ckpt", str(digits_run), "--data", "digits", "--n", "6", "--batch-size", "3") == 0
    res = _json(capsys)
    assert res["dequantization"] == "uniform" and res["levels"] == 17 and res["data_range"] == [-1.0, 1.0]
    assert res["n"] == 6 and res["dequant_samples"] == 1 and math.isfinite(res["bits_per_dim"])
    # the continuous density of the dequantised split, for comparison, is labelled as such
    assert run("--ckpt", str(digits_run), "--data", "digits", "--n", "6", "--dequantization", "none") == 0
    cont = _json(capsys)
    assert cont["dequantization"] == "none" and cont["levels"] is None
    # K = 2 draws per point: the same contract fields
    assert run("--ckpt", str(digits_run), "--data", "digits", "--n", "4", "--dequant-samples", "2",
               "--dequantization", "truncated-normal") == 0
    tn = _json(capsys)
    assert {"bits_per_dim", "stderr", "n", "nfe"} <= tn.keys() and tn["dequant_samples"] == 2


@pytest.mark.parametrize("flags, needle", [
    (["--levels", "16"], "has 17 levels"),
    (["--data-range", "0,1"], "[-1, 1]"),
])
def test_digits_grid_flags_that_contradict_the_data_fail(digits_run, capsys, flags, needle):
    assert run("--ckpt", str(digits_run), "--data", "digits", "--n", "4", *flags) == 2
    assert needle in capsys.readouterr().err


def test_user_data_on_a_grid(vector_run, tmp_path, capsys):
    g = np.random.default_rng(0)
    x = (-1 + 2 * g.integers(0, 5, size=(400, 2)) / 4).astype(np.float32)  # 5 levels over [-1, 1]
    f = tmp_path / "grid.npz"
    np.savez(f, x=x)
    # no --levels: the density of the values as given, with a one-line note that they look discrete
    assert run("--ckpt", str(vector_run), "--data", str(f), "--n", "8") == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["dequantization"] == "none"
    assert "distinct values" in out.err and "--levels" in out.err
    # with the grid: uniform dequantisation on the discrete scale
    assert run("--ckpt", str(vector_run), "--data", str(f), "--n", "8", "--levels", "5") == 0
    res = _json(capsys)
    assert res["dequantization"] == "uniform" and res["levels"] == 5
    # a wrong grid is an error that names the deviation
    assert run("--ckpt", str(vector_run), "--data", str(f), "--n", "8", "--levels", "4") == 2
    assert "max deviation" in capsys.readouterr().err
    # dequantisation without a grid is an error, not a guess
    assert run("--ckpt", str(vector_run), "--data", str(f), "--n", "8", "--dequantization", "uniform") == 2
    assert "--levels" in capsys.readouterr().err
