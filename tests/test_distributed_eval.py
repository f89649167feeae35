"""`scoresde sample` and `scoresde likelihood` under PyTorch's own launcher: two gloo processes give exactly what
one process gives (blocks seeded from (seed, block), gathered in order by rank 0)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import free_port, tiny
from scoresde.train import Trainer



def _run(args, nproc=None, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if nproc is None:
        cmd = [sys.executable, "-m", "scoresde"] + args
    else:  # torchrun, as the README writes it
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
               "-m", "scoresde"] + args
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    Trainer(tiny(tmp, steps=40), progress=False).fit()
    return tmp / "run"


def test_torchrun_sample_equals_one_process(run_dir, tmp_path):
    common = ["sample", "--ckpt", str(run_dir), "--num-samples", "250", "--batch-size", "100", "--steps", "8",
              "--seed", "5", "--no-progress"]
    _run(common + ["--out", str(tmp_path / "one.png")])
    _run(common + ["--out", str(tmp_path / "two.png")], nproc=2)
    one, two = np.load(tmp_path / "one.npz")["x"], np.load(tmp_path / "two.npz")["x"]
    assert one.shape == (250, 2) and np.array_equal(one, two)
    assert not np.array_equal(one[:100], one[100:200])  # the blocks have their own noise
    # a one-block run is unchanged by blocking: block 0 is seeded with --seed itself
    _run(["sample", "--ckpt", str(run_dir), "--num-samples", "100", "--steps", "8", "--seed", "5", "--no-progress",
          "--out", str(tmp_path / "first.png")])
    assert np.array_equal(np.load(tmp_path / "first.npz")["x"], one[:100])


def test_torchrun_likelihood_equals_one_process(run_dir):
    common = ["likelihood", "--ckpt", str(run_dir), "--data", "ring", "--num-samples", "120", "--batch-size", "40",
              "--divergence", "hutchinson", "--json", "--no-progress"]
    one = json.loads(_run(common).strip().splitlines()[-1])
    two = json.loads(_run(common, nproc=2).strip().splitlines()[-1])
    assert one["n"] == two["n"] == 120 and one["nfe"] == two["nfe"]
    assert two["bits_per_dim"] == pytest.approx(one["bits_per_dim"], abs=1e-9)
    assert two["stderr"] == pytest.approx(one["stderr"], abs=1e-9)
