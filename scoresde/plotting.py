"""Pictures a person would rather look at than read: 2-D scatters, image grids, quality-vs-NFE curves.

matplotlib is imported lazily (Agg backend, no display needed) so that the
library itself never pays for it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_samples(x: Tensor, path: str | Path, *, title: Optional[str] = None, reference: Optional[Tensor] = None) -> Path:
    """A scatter for 2-D samples (with `reference` in grey behind), an image grid for `(B, C, H, W)`."""
    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter_panels({title or "samples": x}, path, reference=reference)
    if x.ndim == 4 or (x.ndim == 3):
        return image_grid(x, path, title=title)
    raise ValueError(f"cannot picture samples of shape {tuple(x.shape)}: expected (B, 2) or (B, C, H, W)")


def scatter_panels(
    panels: Mapping[str, Tensor],
    path: str | Path,
    *,
    reference: Optional[Tensor] = None,
    max_points: int = 4000,
    lim: Optional[float] = None,
    ncols: int = 4,
) -> Path:
    """One 2-D scatter per entry of `panels`, sharing axes; `reference` (the data) drawn in grey under each."""
    plt = _plt()
    n = len(panels)
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    if lim is None:
        allpts = torch.cat([p.detach().float().cpu()[:max_points] for p in panels.values()])
        lim = float(allpts.abs().quantile(0.995)) * 1.15 if len(allpts) else 1.0
    for ax, (name, pts) in zip(axes.flat, panels.items()):
        pts = pts.detach().float().cpu()[:max_points]
        if reference is not None:
            ref = reference.detach().float().cpu()[:max_points]
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", rasterized=True)
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0", rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def image_grid(x: Tensor, path: str | Path, *, title: Optional[str] = None, nrow: Optional[int] = None) -> Path:
    """Images in `[-1, 1]` (or any range: min-max scaled) laid out in a square grid."""
    plt = _plt()
    x = x.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    x = x[:64]
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    lo, hi = x.min(), x.max()
    x = ((x - lo) / (hi - lo + 1e-12)).clamp(0, 1)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(4, 4 * grid.shape[1] / grid.shape[2]))
    ax.imshow(grid[0] if c == 1 else grid.permute(1, 2, 0), cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def quality_vs_nfe(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    ylabel: str = "MMD²",
    title: Optional[str] = None,
    floor: Optional[float] = None,
    logy: bool = True,
) -> Path:
    """Log-log lines, one per sampler: `curves[name] = [(nfe, value), ...]`; `floor` as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [max(p[1], 1e-12) if logy else p[1] for p in pts], "o-", label=name, color=f"C{i % 10}")
    if floor is not None:
        ax.axhline(floor, ls="--", c="0.5", label="noise floor")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("score evaluations (NFE)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path, *, title: str = "training loss") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
