import os

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
