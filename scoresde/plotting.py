"""Pictures a person would rather look at than read: 2-D scatters, image grids, quality-vs-NFE curves.

matplotlib is imported lazily (Agg backend, no display needed) so that the
library itself never pays for it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def is_image_event(event_shape: tuple) -> bool:
    """`(C, H, W)` with 1 or 3 channels and H, W >= 4: pictured as images; any other shape is a vector."""
    return len(event_shape) == 3 and event_shape[0] in (1, 3) and event_shape[1] >= 4 and event_shape[2] >= 4


def is_image_batch(x: Tensor) -> bool:
    """A batch `(B, C, H, W)` of images in the sense of `is_image_event`."""
    return x.ndim == 4 and is_image_event(tuple(x.shape[1:]))


def save_samples(x: Tensor, path: str | Path, *, title: Optional[str] = None, reference: Optional[Tensor] = None) -> Path:
    """A picture of any batch `x` (batch first), never an error for its shape:

    - `(B, C, H, W)` with 1 or 3 channels: an image grid on the data range [-1, 1];
    - `(B, 2)`: a scatter with `reference` (the data) in grey behind;
    - `(B, 1)`: a histogram (against `reference`'s);
    - anything else, `(B, D)` or `(B, d1, d2, ...)`: flattened to `(B, D)`, a pair plot of the first
      4 coordinates (histograms on the diagonal, scatters off it, `reference` in grey behind)."""
    x = x.detach().float().cpu()
    if is_image_batch(x):
        return image_grid(x, path, title=title)
    x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
    ref = None if reference is None else reference.detach().float().cpu().reshape(reference.shape[0], -1)
    if ref is not None and ref.shape[1] != x.shape[1]:
        ref = None
    if x.shape[1] == 2:
        return scatter_panels({title or "samples": x}, path, reference=ref)
    return pair_plot(x, path, title=title, reference=ref)


def _finite_rows(x: Tensor) -> Tensor:
    return x[torch.isfinite(x).all(1)] if x.numel() else x


def _limits(*arrays: Optional[Tensor], q: float = 0.995) -> tuple[float, float]:
    vals = torch.cat([a.reshape(-1) for a in arrays if a is not None and a.numel()] or [torch.zeros(1)])
    vals = vals[torch.isfinite(vals)]
    if vals.numel() == 0:
        return -1.0, 1.0
    lo, hi = float(vals.quantile(1 - q)), float(vals.quantile(q))
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def pair_plot(x: Tensor, path: str | Path, *, title: Optional[str] = None, reference: Optional[Tensor] = None,
              max_dims: int = 4, max_points: int = 2000) -> Path:
    """Marginal histograms (diagonal) and pairwise scatters (off-diagonal) of the first `max_dims` coordinates of `(B, D)` points."""
    plt = _plt()
    x = x.detach().float().cpu().reshape(x.shape[0], -1)
    d_all = x.shape[1]
    d = min(d_all, max_dims)
    n_bad = int((~torch.isfinite(x).all(1)).sum())
    x = _finite_rows(x)[:max_points, :d]
    ref = None if reference is None else _finite_rows(reference.detach().float().cpu().reshape(reference.shape[0], -1))[:max_points, :d]
    size = 2.3 if d > 1 else 4.0
    fig, axes = plt.subplots(d, d, figsize=(size * d + 0.6, size * d + 0.4), squeeze=False)
    for i in range(d):
        for j in range(d):
            ax = axes[i][j]
            li = _limits(x[:, i], None if ref is None else ref[:, i])
            if i == j:
                lab = "samples" if i == 0 else None
                if ref is not None:
                    ax.hist(ref[:, i].numpy(), bins=40, range=li, density=True, color="0.75", label="data" if i == 0 else None)
                if len(x):
                    ax.hist(x[:, i].numpy(), bins=40, range=li, density=True, histtype="step", color="C0", lw=1.4, label=lab)
                ax.set_xlim(*li)
            else:
                lj = _limits(x[:, j], None if ref is None else ref[:, j])
                if ref is not None:
                    ax.scatter(ref[:, j], ref[:, i], s=1, c="0.75", rasterized=True)
                ax.scatter(x[:, j], x[:, i], s=1, c="C0", rasterized=True)
                ax.set_xlim(*lj)
                ax.set_ylim(*li)
            ax.tick_params(labelsize=7)
            if i == d - 1:
                ax.set_xlabel(f"x[{j}]", fontsize=8)
            if j == 0 and i != j:
                ax.set_ylabel(f"x[{i}]", fontsize=8)
    if ref is not None or d == 1:
        axes[0][0].legend(fontsize=7, loc="upper right")
    head = title or "samples"
    note = [f"first {d} of {d_all} coordinates"] if d < d_all else []
    if n_bad:
        note.append(f"{n_bad} non-finite samples not shown")
    fig.suptitle(textwrap.fill(head + (" (" + "; ".join(note) + ")" if note else ""), 30 * d + 20), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def scatter_panels(
    panels: Mapping[str, Tensor],
    path: str | Path,
    *,
    reference: Optional[Tensor] = None,
    max_points: int = 4000,
    lim: Optional[float] = None,
    ncols: int = 4,
    title: Optional[str] = None,
) -> Path:
    """One 2-D scatter per entry of `panels`, sharing axes (with ticks); `reference` (the data) drawn in grey under each."""
    plt = _plt()
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.3 * nrows), squeeze=False)
    ref = None if reference is None else _finite_rows(reference.detach().float().cpu().reshape(reference.shape[0], -1))[:max_points]
    if lim is None:
        allpts = torch.cat([_finite_rows(p.detach().float().cpu())[:max_points] for p in panels.values()] + ([ref] if ref is not None else []))
        lim = float(allpts.abs().quantile(0.995)) * 1.15 if len(allpts) else 1.0
        lim = lim if math.isfinite(lim) and lim > 0 else 1.0
    for ax, (name, pts) in zip(axes.flat, panels.items()):
        pts = pts.detach().float().cpu()
        n_bad = int((~torch.isfinite(pts).all(1)).sum())
        pts = _finite_rows(pts)[:max_points]
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.8", rasterized=True)
        ax.scatter(pts[:, 0], pts[:, 1], s=1, c="C0", rasterized=True)
        ax.set_title(textwrap.fill(name + (f" ({n_bad} non-finite not shown)" if n_bad else ""), 42), fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    if ref is not None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", ms=3, c="0.7", label="data"), Line2D([], [], ls="", marker="o", ms=3, c="C0", label="samples")]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(textwrap.fill(title, 40 * ncols), fontsize=9)
    fig.tight_layout(rect=(0, 0.04 if ref is not None else 0, 1, 1))
    return _save(fig, path)


def _rgb(x: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """`(C, H, W)` on `value_range` as an `(H, W, 3)` picture on [0, 1] (grey repeated, other channel counts: the first)."""
    lo, hi = value_range
    x = torch.nan_to_num((x.detach().float().cpu() - lo) / (hi - lo), nan=0.5).clamp(0, 1)
    x = x if x.shape[0] == 3 else x[:1].expand(3, *x.shape[1:])
    return x.permute(1, 2, 0).clone()  # a writable copy (callers paint on it)


def inpainting_figure(known: Tensor, mask: Tensor, completions: Tensor, path: str | Path, *, title: Optional[str] = None,
                      max_shown: int = 32) -> Path:
    """Rows: the input with its unknown part in dark red, the mask (white: known), then the completions
    (`(B, C, H, W)`, up to `max_shown`, 8 to a row)."""
    plt = _plt()
    x = completions[:max_shown]
    ncol = max(2, min(8, x.shape[0]))
    nrows = 1 + math.ceil(x.shape[0] / ncol)
    h, w = known.shape[-2:]
    fig, axes = plt.subplots(nrows, ncol, figsize=(1.1 * ncol + 0.2, 1.1 * nrows * h / w + 0.6), squeeze=False)
    seen = mask.detach().cpu().bool().all(0)  # a pixel is shown as known only if every channel is
    inp = _rgb(known)
    inp[~seen] = torch.tensor([0.55, 0.08, 0.08])
    tiles = [(axes[0][0], inp, "input"), (axes[0][1], seen.float()[..., None].expand(h, w, 3), "mask")]
    tiles += [(ax, _rgb(xi), "completions" if i == 0 else None) for i, (ax, xi) in enumerate(zip(axes[1:].flat, x))]
    used = {id(ax) for ax, _, _ in tiles}
    for ax in axes.flat:
        if id(ax) not in used:
            ax.axis("off")
    for ax, img, name in tiles:
        ax.imshow(img.numpy(), interpolation="nearest", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])  # a frame, no ticks: a white mask stays visible on the white page
        if name:
            ax.set_title(name, fontsize=8, loc="left")
    if title:
        fig.suptitle(textwrap.fill(title, 14 * ncol), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(x: Tensor, path: str | Path, *, title: Optional[str] = None, nrow: Optional[int] = None,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Images laid out in a square grid on a fixed `value_range` (the data's [-1, 1], clipped: one outlier does not
    grey every tile), with dark blue separators (distinct from both black and white strokes)."""
    plt = _plt()
    x = x.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    x = x[:64]
    b, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    lo, hi = value_range
    x = torch.nan_to_num((x - lo) / (hi - lo), nan=0.5).clamp(0, 1)
    if c == 1:
        x = x.expand(b, 3, h, w)
    elif c != 3:
        x = x[:, :1].expand(b, 3, h, w)
    sep = torch.tensor([0.1, 0.15, 0.45]).view(3, 1, 1)
    grid = sep.expand(3, ncol * (h + 1) + 1, nrow * (w + 1) + 1).clone()
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    fig, ax = plt.subplots(figsize=(4, 4 * grid.shape[1] / grid.shape[2]))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(textwrap.fill(title, 60), fontsize=9)
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
    """Lines, one per sampler: `curves[name] = [(nfe, value), ...]`, NFE on a log axis.

    With `logy` the y axis is symmetric-log (linear within ±`floor`), so values at or below zero — an
    unbiased MMD² estimate within its noise — are drawn where they are, not clipped; the band within
    the `floor` (the two-sample noise floor) is shaded and labelled. The legend sits outside the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4))
    values = [p[1] for pts in curves.values() for p in pts if math.isfinite(p[1])]
    for i, (name, pts) in enumerate(curves.items()):
        pts = sorted(pts)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name, color=f"C{i % 10}")
    if floor is not None and floor > 0:
        ax.axhspan(-floor, floor, color="0.85", zorder=0, label=f"within the noise floor (±{floor:.2g})")
    ax.set_xscale("log")
    nfes = sorted({p[0] for pts in curves.values() for p in pts})
    if nfes:
        from matplotlib.ticker import NullFormatter

        shown, last = [], None
        for v in nfes:  # label the NFE values used, skipping any too close (in log scale) to the last one labelled
            if v > 0 and (last is None or v / last >= 1.3):
                shown.append(v)
                last = v
        ax.set_xticks(shown, [f"{v:g}" for v in shown])
        ax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        pos = [abs(v) for v in values if v != 0]
        linthresh = floor if floor is not None and floor > 0 else (min(pos) if pos else 1e-6)
        ax.set_yscale("symlog", linthresh=linthresh)
    ax.set_xlabel("score evaluations (NFE)")
    ax.set_ylabel(ylabel + (" (symlog: linear within the floor)" if logy else ""))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
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
