"""scoresde: score-based generative modelling through SDEs, with pluggable solvers.

Every sampler and the likelihood take a score function `score_fn(x, t)`, never a
specific network; `scoresde.oracle` gives the exact score of Gaussian-mixture
data for any linear SDE, so solvers can be checked with zero model error.
"""

from .sde import SDE, LinearSDE, VPSDE, SubVPSDE, VESDE, CosineVPSDE, ReverseSDE
from .oracle import GaussianMixture, ring8, grid_mixture, random_mixture, mixture64
from .samplers import (
    sample,
    Sampler,
    Predictor,
    Corrector,
    PCSampler,
    EulerMaruyama,
    ReverseDiffusion,
    LangevinCorrector,
    AnnealedLangevin,
    SDESampler,
    ODESampler,
    DPMSolver,
)
from .likelihood import LikelihoodResult, log_likelihood, encode, decode, bits_per_dim, dequantize, dequantization_offset
from .dequantization import DiscreteLikelihoodResult, discrete_bits_per_dim, discrete_codes, truncated_normal_time
from .model import Classifier, ScoreModel
from .observation import Observation, Inpainting
from .losses import dsm_loss
from .config import TrainConfig
from .train import Trainer, load
from . import conditioning, guidance, metrics, nets, oracle

__version__ = "0.1.0"

__all__ = [
    # SDEs
    "SDE", "LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "ReverseSDE",
    # the exact-score oracle
    "GaussianMixture", "ring8", "grid_mixture", "random_mixture", "mixture64", "oracle", "metrics",
    # sampling
    "sample", "Sampler", "Predictor", "Corrector", "PCSampler", "EulerMaruyama", "ReverseDiffusion",
    "LangevinCorrector", "AnnealedLangevin", "SDESampler", "ODESampler", "DPMSolver",
    # likelihood
    "LikelihoodResult", "log_likelihood", "encode", "decode", "bits_per_dim", "dequantize", "dequantization_offset",
    "DiscreteLikelihoodResult", "discrete_bits_per_dim", "discrete_codes", "truncated_normal_time",
    # conditioning
    "Observation", "Inpainting", "guidance", "conditioning",
    # training
    "ScoreModel", "Classifier", "dsm_loss", "nets", "TrainConfig", "Trainer", "load",
]  # fmt: skip
