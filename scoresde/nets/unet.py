"""A compact U-Net for small images (8x8 to 32x32), in the spirit of DDPM++/NCSN++, written with einops."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from .embeddings import NoiseEmbedding


def _groups(ch: int) -> int:
    # As many groups as possible up to 32, each holding at least 2 channels.
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 2:
            return g
    return 1


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """`h = conv(SiLU(GN(x)))`, `h = GN(h)(1 + s) + b` with `(s, b) = A e`, `out = skip(x) + conv(SiLU(h))` (FiLM time modulation)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over pixels, `x + W_o softmax(QKᵀ/√d) V`, with a zero-initialised output projection."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        if ch % heads:
            heads = 1
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three h d) x y -> three b h (x y) d", three=3, h=self.heads)
        o = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(o, "b h (x y) d -> b (h d) x y", x=H, y=W))


class UNet(nn.Module):
    """U-Net `(B, C, H, W) -> (B, C, H, W)`: per level `num_res_blocks` FiLM residual blocks (+ attention at the levels in
    `attention_levels`), stride-2 down / nearest-up convolutions, skip connections, and an attention middle block.

    Level `i` has `channels * channel_mults[i]` channels at resolution `H / 2^i`;
    `H` and `W` must be divisible by `2^(len(channel_mults) - 1)`. The default
    (64 channels, mults (1, 2), attention at the lowest level) suits 8x8 digits;
    `(1, 2, 2)` with `channels=128` suits 32x32. `net(x, c, labels=None)` with
    `c` the wrapper's `(B,)` noise-level input. Knows nothing about SDEs."""

    kind = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (-1,),
        heads: int = 4,
        emb_dim: Optional[int] = None,
        fourier_scale: float = 1.0,
        num_classes: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        for name, v in (("in_channels", in_channels), ("channels", channels), ("num_res_blocks", num_res_blocks)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not channel_mults or any(m <= 0 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults}")
        n_levels = len(channel_mults)
        attn = {lv % n_levels for lv in attention_levels}
        emb_dim = emb_dim or 4 * channels
        self.config = dict(in_channels=in_channels, channels=channels, channel_mults=list(channel_mults),
                           num_res_blocks=num_res_blocks, attention_levels=list(attention_levels), heads=heads,
                           emb_dim=emb_dim, fourier_scale=fourier_scale, num_classes=num_classes, dropout=dropout)
        self.in_channels, self.n_levels = in_channels, n_levels
        self.embed = NoiseEmbedding(emb_dim, fourier_scale=fourier_scale, num_classes=num_classes)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for lv, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(self._stage(ch, channels * mult, emb_dim, dropout, lv in attn, heads))
                ch = channels * mult
                skips.append(ch)
            if lv < n_levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch, heads), ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for lv, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(self._stage(ch + skips.pop(), channels * mult, emb_dim, dropout, lv in attn, heads))
                ch = channels * mult
            if lv > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    @staticmethod
    def _stage(cin, cout, emb_dim, dropout, attention, heads) -> nn.ModuleList:
        mods = [ResBlock(cin, cout, emb_dim, dropout)]
        if attention:
            mods.append(Attention(cout, heads))
        return nn.ModuleList(mods)

    @property
    def num_classes(self) -> int:
        return self.embed.num_classes

    @staticmethod
    def _run(stage, h: Tensor, emb: Tensor) -> Tensor:
        if isinstance(stage, nn.ModuleList):
            h = stage[0](h, emb)
            for m in stage[1:]:
                h = m(h)
            return h
        return stage(h)

    def encode(self, x: Tensor, c: Tensor, labels: Optional[Tensor] = None):
        """The down path and middle block: `(h, skips, emb)`, `h` of shape `(B, C_last, H / 2^(L-1), W / 2^(L-1))`
        (a classifier's head pools it; the decoder reads all three)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        f = 2 ** (self.n_levels - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image height and width must be divisible by {f} for {self.n_levels} levels, got {tuple(x.shape[2:])}")
        emb = self.embed(c, labels)
        h = self.inp(x)
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, emb)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        return h, hs, emb

    @property
    def out_channels_encoded(self) -> int:
        """Channels of `encode`'s `h` (the last level's)."""
        return self.config["channels"] * self.config["channel_mults"][-1]

    def forward(self, x: Tensor, c: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        h, hs, emb = self.encode(x, c, labels)
        for stage in self.up:
            if isinstance(stage, nn.ModuleList):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(stage, h, emb)
        return self.out(h)
