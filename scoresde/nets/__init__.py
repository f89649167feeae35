"""Score networks: time-conditioned `net(x, c, labels=None) -> Tensor shaped like x`, knowing nothing about SDEs.

`c` is the per-sample noise-level input the wrapper (`scoresde.ScoreModel`)
chooses; the networks embed it with Gaussian Fourier features. Both networks
take optional class labels with a null label (index `num_classes`). `ClassifierNet` is either body with a
class head, `net(x, c) -> (B, K)` logits, for time-conditioned classifiers."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .embeddings import GaussianFourierFeatures, NoiseEmbedding
from .classifier import ClassifierNet
from .mlp import MLP
from .unet import UNet

NETS = {"mlp": MLP, "unet": UNet, "classifier": ClassifierNet}

__all__ = ["MLP", "UNet", "ClassifierNet", "GaussianFourierFeatures", "NoiseEmbedding", "NETS", "build_net", "net_config"]


def build_net(kind: str, **kwargs: Any) -> nn.Module:
    """Build a network by name (`"mlp"`, `"unet"` or `"classifier"`) from its constructor arguments."""
    if kind not in NETS:
        raise ValueError(f"net kind must be one of {sorted(NETS)}, got {kind!r}")
    return NETS[kind](**kwargs)


def net_config(net: nn.Module) -> Mapping[str, Any]:
    """`{"kind": ..., **constructor arguments}` of a built-in network, enough to rebuild it with `build_net`."""
    kind, cfg = getattr(net, "kind", None), getattr(net, "config", None)
    if kind not in NETS or not isinstance(cfg, dict):
        raise TypeError(f"cannot describe a {type(net).__name__} by a config: only scoresde.nets networks can be saved and rebuilt")
    return {"kind": kind, **cfg}
