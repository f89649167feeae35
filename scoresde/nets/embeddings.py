"""Embeddings of the noise level (and class labels) for the score networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GaussianFourierFeatures(nn.Module):
    """`γ(c) = [sin 2πWc, cos 2πWc]`, `W ~ N(0, scale²)` fixed (Tancik et al. 2020; Song et al. 2021).

    `c` is the per-sample scalar the wrapper feeds the network (`ScoreModel`
    uses `log(σ(t)/m(t))`, which spans roughly [-10, 6]); `scale` sets the
    spread of frequencies per unit of `c`. `W` is a buffer drawn from a fixed
    seed, so a network rebuilt from its config gets the same features."""

    def __init__(self, dim: int, scale: float = 1.0, seed: int = 0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even int, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        proj = 2 * math.pi * c[:, None].to(self.W.dtype) * self.W[None, :]
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


class NoiseEmbedding(nn.Module):
    """`e(c, y) = MLP(γ(c)) + E[y]`: Fourier features of the noise level through a SiLU MLP, plus an optional label embedding.

    With `num_classes > 0` the label table has one extra row, the null label
    (index `num_classes`), used when `labels` is None or for classifier-free
    guidance's unconditional branch."""

    def __init__(self, emb_dim: int, fourier_dim: int = 64, fourier_scale: float = 1.0, num_classes: int = 0):
        super().__init__()
        self.fourier = GaussianFourierFeatures(fourier_dim, fourier_scale)
        self.mlp = nn.Sequential(nn.Linear(fourier_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = int(num_classes)
        self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes > 0 else None

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, c: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.mlp(self.fourier(c))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((c.shape[0],), self.null_label, device=c.device, dtype=torch.long)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("labels were given but the network was built with num_classes=0")
        return emb
