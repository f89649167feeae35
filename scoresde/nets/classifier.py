"""A time-conditioned classifier network: the MLP's or the U-Net's body with a class head, `net(x, c) -> (B, K)` logits.

Like the score networks it knows nothing about SDEs: `c` is the per-sample noise-level input the wrapper
(`scoresde.model.Classifier`) chooses. The body is built exactly as the score network of the same kind
(without label conditioning) and only its decoder is left out, so the same configuration fields size both."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mlp import MLP
from .unet import UNet, _groups

BODIES = {"mlp": MLP, "unet": UNet}


class ClassifierNet(nn.Module):
    """`logits = W · pool(body(x, c))`: the MLP's features `SiLU(h_K)`, or the U-Net encoder's last map through
    GroupNorm, SiLU and a spatial mean, then one linear layer to `num_classes` logits.

    `ClassifierNet(body="mlp"|"unet", num_classes=K, **body_kwargs)`, `body_kwargs` those of `MLP` / `UNet`
    (their `num_classes`, the label conditioning, is not taken: a classifier sees no labels)."""

    kind = "classifier"

    def __init__(self, body: str, num_classes: int, **body_kwargs: Any):
        super().__init__()
        if body not in BODIES:
            raise ValueError(f"body must be one of {sorted(BODIES)}, got {body!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if body_kwargs.get("num_classes"):
            raise ValueError("body_kwargs: a classifier's body is not label-conditioned (num_classes is the head's)")
        body_kwargs.pop("num_classes", None)
        self.config = dict(body=body, num_classes=num_classes, **{k: list(v) if isinstance(v, tuple) else v for k, v in body_kwargs.items()})
        self.body_kind = body
        self.body = BODIES[body](**body_kwargs)
        # Only the encoder is used: dropping the decoder keeps every parameter in the loss (DDP needs that).
        if body == "mlp":
            self.body.out = None
            width = self.body.blocks[0].lin1.in_features
            self.pool = nn.Identity()
        else:
            self.body.up, self.body.out = None, None
            width = self.body.out_channels_encoded
            self.pool = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU())
        self.head = nn.Linear(width, num_classes)
        # Zero logits at the start: the loss begins at log K and early gradients are the features', not noise.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the logits' width)."""
        return self.config["num_classes"]

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if self.body_kind == "mlp":
            h = self.body.features(x, c)
        else:
            h = self.pool(self.body.encode(x, c)[0]).mean(dim=(-2, -1))
        return self.head(h)
