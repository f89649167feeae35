"""`scoresde bench solvers --ckpt RUN --data DATA`: every sampler on a user's own checkpoint at a ladder of NFE budgets."""

import json
import math

import numpy as np
import pytest
import torch

from scoresde.cli import main

from conftest import tiny

FIXED = {"euler_maruyama", "reverse_diffusion", "pc (rd + langevin)", "sde (torchsde euler)", "ode (rk4)", "dpm_solver"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from scoresde.train import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(tiny(tmp_path_factory.mktemp("bench_ckpt"), steps=20), resume=False, progress=False)
    finally:
        torch.set_num_threads(n)


def test_bench_ckpt_quick_rows_and_best_line(run_dir, tmp_path, one_thread, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "solvers", "--ckpt", str(run_dir), "--data", "ring", "--quick", "--n", "64", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    res = json.loads((out / "solvers_ckpt.json").read_text())
    rows, meta = res["rows"], res["meta"]
    budgets = meta["nfe_budgets"]
    assert budgets == [5, 10]
    fixed = [r for r in rows if r["NFE budget"] != "adaptive"]
    # one row per sampler x budget (rk4's 4 NFE per step + the denoising step still fit 5)
    assert {(r["sampler"], r["NFE budget"]) for r in fixed} == {(s, b) for s in FIXED for b in budgets}
    assert len(fixed) == len(FIXED) * len(budgets)
    for r in fixed:
        assert 1 <= r["NFE"] <= r["NFE budget"], r
    assert any("dopri5" in r["sampler"] and r["NFE"] > 0 for r in rows)
    for r in rows:
        assert math.isfinite(r["MMD²"]) and math.isfinite(r["±"]) and r["±"] > 0, r
        assert r["wall s"] >= 0
    floor = meta["floor"]
    assert math.isfinite(floor["floor_mmd2"]) and floor["floor_mmd2_se"] > 0
    # one best line per budget, naming a sampler of the table that fits the budget
    names = {r["sampler"] for r in rows}
    assert [b["budget"] for b in meta["best"]] == budgets
    for b in meta["best"]:
        assert b["sampler"] in names and b["NFE"] <= b["budget"]
        assert b["line"].startswith(f"best at ≤ {b['budget']} NFE: {b['sampler']}")
    printed = capsys.readouterr().out
    assert all(b["line"] in printed for b in meta["best"])
    assert (out / "solvers_ckpt.md").read_text().count("best at ≤") == len(budgets)
    assert (out / "solvers_ckpt.png").stat().st_size > 5000


def test_bench_ckpt_shape_mismatch_is_one_line(run_dir, tmp_path, capsys):
    data = tmp_path / "three_d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    rc = main(["bench", "solvers", "--ckpt", str(run_dir), "--data", str(data), "--quick", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("scoresde: error:")
    assert "(3,)" in err and "(2,)" in err
    assert not (tmp_path / "o" / "solvers_ckpt.json").exists()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ckpt", "/nonexistent/run", "--data", "ring"], "no checkpoint"),
        (["--ckpt", "RUN", "--data", "ring", "--nfe", "5,ten"], "--nfe"),
        (["--ckpt", "RUN", "--data", "ring", "--nfe", "0,10"], "--nfe"),
        (["--ckpt", "RUN"], "--data"),
    ],
)
def test_bench_ckpt_bad_input_is_one_line(run_dir, extra, needle, capsys):
    argv = ["bench", "solvers"] + [str(run_dir) if a == "RUN" else a for a in extra]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
