import os
import socket

import pytest
import torch

import scoresde

# Two cores: numpy's BLAS threads and torch's fight each other.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


class CosineVPNoClosedForm(scoresde.LinearSDE):
    """A user-style SDE: only the two schedule functions (shares CosineVPSDE's math but not its class)."""

    def __init__(self):
        super().__init__(T=1.0)
        self._ref = scoresde.CosineVPSDE()

    def drift_coef(self, t):
        return self._ref.drift_coef(t)

    def diffusion(self, t):
        return self._ref.diffusion(t)


def make_sdes():
    return {
        "vp": scoresde.VPSDE(),
        "subvp": scoresde.SubVPSDE(),
        "ve": scoresde.VESDE(),
        "cosine": scoresde.CosineVPSDE(),
    }


SDE_NAMES = ["vp", "subvp", "ve", "cosine"]


@pytest.fixture(params=SDE_NAMES)
def sde(request):
    return make_sdes()[request.param]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def one_thread():
    # Two shared cores: a second intra-op thread makes small-network training many times slower under load.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(tmp_path, name="run", **kw):
    """A TrainConfig for a training run of a few seconds on the ring."""
    from scoresde.config import TrainConfig

    base = dict(data="ring", n_train=2000, steps=30, batch_size=64, hidden=32, n_blocks=2, emb_dim=32, lr=1e-3,
                warmup=5, ckpt_every=10, log_every=10, final_eval=False, out=str(tmp_path / name), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def states_equal(a, b):
    """Assert two (nested) state dicts hold bit-identical tensors and equal values."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            states_equal(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def free_port() -> int:
    """A TCP port free on this machine now (for a gloo process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
