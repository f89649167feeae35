"""scoresde: score-based generative modelling through SDEs, with pluggable solvers.

Every sampler and the likelihood take a score function `score_fn(x, t)`, never a
specific network; `scoresde.oracle` gives the exact score of Gaussian-mixture
data for any linear SDE, so solvers can be checked with zero model error.
"""

from .sde import SDE, LinearSDE, VPSDE, SubVPSDE, VESDE, CosineVPSDE, ReverseSDE
from .oracle import GaussianMixture, ring8, grid_mixture, random_mixture, mixture64
from . import metrics, oracle

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "ReverseSDE",
    "GaussianMixture",
    "ring8",
    "grid_mixture",
    "random_mixture",
    "mixture64",
    "metrics",
    "oracle",
]
