"""A time-conditioned residual MLP for vector data (any trailing shape, flattened)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .embeddings import NoiseEmbedding


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.lin1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Zero-initialised output: every block starts as the identity, so depth does not destabilise early training.
        nn.init.zeros_(self.lin2.weight)
        nn.init.zeros_(self.lin2.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.lin1(F.silu(h)) + self.emb(emb)
        return h + self.lin2(self.dropout(F.silu(r)))


class MLP(nn.Module):
    """`h₀ = W_in x`, `h_{k+1} = h_k + W₂ SiLU(W₁ SiLU(h_k) + A e)`, output `W_out SiLU(h_K)`; `e` the noise(+label) embedding.

    `net(x, c, labels=None)`: `x` of shape `(B, *event)` with `prod(event) = dim`,
    `c` of shape `(B,)` the noise-level input chosen by the wrapper; returns a
    tensor shaped like `x`. Knows nothing about SDEs."""

    kind = "mlp"

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        n_blocks: int = 3,
        emb_dim: int = 128,
        fourier_scale: float = 1.0,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("n_blocks", n_blocks), ("emb_dim", emb_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.config = dict(dim=dim, hidden=hidden, n_blocks=n_blocks, emb_dim=emb_dim,
                           fourier_scale=fourier_scale, num_classes=num_classes, dropout=dropout)
        self.dim = dim
        self.embed = NoiseEmbedding(emb_dim, fourier_scale=fourier_scale, num_classes=num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim, dropout) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def num_classes(self) -> int:
        return self.embed.num_classes

    def features(self, x: Tensor, c: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """The body's output `SiLU(h_K)`, `(B, hidden)`, before the output layer (a classifier's head reads it)."""
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must hold {self.dim} values per sample, got shape {tuple(x.shape)}")
        emb = self.embed(c, labels)
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = block(h, emb)
        return F.silu(h)

    def forward(self, x: Tensor, c: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        return self.out(self.features(x, c, labels)).reshape(x.shape)
