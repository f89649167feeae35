"""Training data: 2-D toy sets, scikit-learn's 8x8 digits, `.npz`/`.npy` arrays and folders of images.

`load_dataset(spec) -> (train, test)` gives two float32 tensors, batch first.
`load_data(spec)` gives the same plus labels and the quantisation step of
discrete data (the trainer re-draws the uniform dequantisation noise at every
step from the `train_raw` values; the test split is dequantised once, with a
fixed seed, so its bits/dim are those of a continuous density).

Specs: `ring` (the oracle's 8-mode ring, `scoresde.oracle.ring8`, so a trained
model can be compared with the exact truth), `checkerboard`, `moons`,
`swissroll`, `digits` (needs scikit-learn), `FILE.npz` (one array, or the one
named `x`), `FILE.npy`, or a folder of images (needs Pillow). Integer
(`uint8`) arrays and images are taken as 8-bit values and mapped to [-1, 1].

Labels (for class-conditional models and classifiers): the toy sets' modes or
parts (see `toy_sample`), the digits' classes, and an `.npz`'s integer array
`y` beside `x` (one label >= 0 per sample; `num_classes = max(y) + 1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

TOY = ("ring", "checkerboard", "moons", "swissroll")
TOY_CLASSES = {"ring": 8, "checkerboard": 8, "moons": 2, "swissroll": 3}  # labels of the toy sets (see `toy_sample`)
BUILTIN = TOY + ("digits",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

__all__ = ["Data", "MissingDependency", "load_data", "load_dataset", "toy_sample", "BUILTIN", "TOY", "TOY_CLASSES"]


@dataclass(frozen=True)
class Data:
    """A train/test split. `train` is dequantised once like `test`; `train_raw` (and `test_raw`) hold the bin left
    edges of quantised data (`step` is the bin width in the [-1, 1] scale, None for continuous data)."""

    train: Tensor
    test: Tensor
    train_labels: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None
    step: Optional[float] = None
    train_raw: Optional[Tensor] = None
    num_classes: int = 0
    test_raw: Optional[Tensor] = None  # quantised data: the test split's bin left edges (its discrete values)

    @property
    def levels(self) -> Optional[int]:
        """Discrete values per dimension of quantised data on [-1, 1] (None for continuous data)."""
        return None if self.step is None else int(round(2.0 / self.step))

    def test_codes(self, n: Optional[int] = None) -> Tensor:
        """The integer codes `k` of the first `n` test points of quantised data (for `discrete_bits_per_dim`)."""
        if self.step is None or self.test_raw is None:
            raise ValueError("test_codes: this data is not quantised")
        return torch.round((self.test_raw[:n] + 1.0) / self.step).long()


# -- toy sets -----------------------------------------------------------------------


def toy_sample(name: str, n: int, *, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               return_labels: bool = False) -> Tensor | Tuple[Tensor, Tensor]:
    """`n` points of a 2-D toy set, shape `(n, 2)`, roughly within [-2.5, 2.5]² (and their `(n,)` labels, see `TOY_CLASSES`).

    Labels: ring, the mode index k (the mode at angle 2πk/8); checkerboard, the filled square,
    `2 row + col // 2` with `row, col = floor(x₂) + 2, floor(x₁) + 2`; moons, 0 for the upper moon,
    1 for the lower; swissroll, which third of the roll's parameter range `a ∈ [1.5π, 4.5π)` the
    point comes from (0 innermost). The points are the same with or without labels."""
    g = generator
    if name == "ring":
        from .oracle import ring8

        x, y = ring8().sample(n, generator=g, dtype=dtype, return_labels=True)
        return (x, y) if return_labels else x
    r = lambda *s: torch.rand(s, generator=g, dtype=dtype)  # noqa: E731
    z = lambda *s: torch.randn(s, generator=g, dtype=dtype)  # noqa: E731
    if name == "checkerboard":
        # 4x4 board on [-2, 2]², every other square filled.
        x1 = r(n) * 4 - 2
        u = r(n)  # drawn before k, as before labels existed: the same points for the same seed
        k = torch.randint(0, 2, (n,), generator=g)
        col = torch.floor(x1)
        x2 = u - 2 * k.to(dtype) + col.remainder(2)
        x = torch.stack([x1, x2], 1)
        # from the draw's integer parts, not floor(x₂): u - 2 + 1 can round onto a square's edge
        row = col.remainder(2).long() - 2 * k + 2
        y = 2 * row + (col.long() + 2).clamp(0, 3) // 2
    elif name == "moons":
        a = r(n) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, a.cos(), 1 - a.cos())
        x2 = torch.where(upper, a.sin(), 0.5 - a.sin())
        x = (torch.stack([x, x2], 1) - torch.tensor([0.5, 0.25], dtype=dtype)) * 1.6 + 0.08 * z(n, 2)
        y = (~upper).long()
    elif name == "swissroll":
        u = r(n)
        a = 1.5 * math.pi * (1 + 2 * u)
        x = torch.stack([a * a.cos(), a * a.sin()], 1) / 6.0 + 0.05 * z(n, 2)
        y = (u * 3).long().clamp(max=2)
    else:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY)}")
    return (x, y) if return_labels else x


def _split(x: Tensor, test_fraction: float, seed: int, labels: Optional[Tensor] = None):
    n = x.shape[0]
    n_test = max(1, int(round(n * test_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    ys = (labels[tr], labels[te]) if labels is not None else (None, None)
    return x[tr], x[te], ys[0], ys[1]


def _check_array(x: Tensor, where: str) -> Tensor:
    if x.ndim < 2:
        raise ValueError(f"{where}: data must be at least 2-D (batch first, e.g. (N, D) or (N, C, H, W)), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 samples (for a train/test split), got {x.shape[0]}")
    if x.numel() == 0:
        raise ValueError(f"{where}: data is empty (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: data contains NaN or inf")
    return x


def _quantised(values: Tensor, levels: int, seed: int, test_fraction: float, labels=None, num_classes: int = 0) -> Data:
    """Integer values in [0, levels): `x = 2 (v + u)/levels - 1`, `u ~ U[0, 1)`, bin width `2/levels`."""
    raw = values.to(torch.float32) * (2.0 / levels) - 1.0
    tr, te, ytr, yte = _split(raw, test_fraction, seed, labels)
    step = 2.0 / levels
    g = torch.Generator().manual_seed(seed + 1)
    deq = lambda a: a + step * torch.rand(a.shape, generator=g)  # noqa: E731
    return Data(deq(tr), deq(te), ytr, yte, step, tr, num_classes, test_raw=te)


def _digits(seed: int, test_fraction: float) -> Data:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingDependency("the digits data set needs scikit-learn: pip install scikit-learn (or scoresde[data])") from None
    d = load_digits()
    values = torch.as_tensor(d.images, dtype=torch.float32).reshape(-1, 1, 8, 8)  # integers 0..16
    return _quantised(values, 17, seed, test_fraction, torch.as_tensor(d.target, dtype=torch.long), 10)


def _check_labels(y: np.ndarray, n: int, where: str) -> Tuple[Tensor, int]:
    """Class labels `y` of `n` samples: a 1-D integer array of length `n`, values >= 0; `num_classes = max + 1`."""
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: labels 'y' must be integers (class indices 0..K-1), got dtype {y.dtype}"
                         + ("; convert them with y.astype(int)" if np.issubdtype(y.dtype, np.floating) else ""))
    if y.ndim != 1:
        raise ValueError(f"{where}: labels 'y' must be 1-D, one per sample, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{where}: labels 'y' has {y.shape[0]} entries but 'x' has {n} samples")
    if y.size and int(y.min()) < 0:
        raise ValueError(f"{where}: labels 'y' must be >= 0 (class indices), got minimum {int(y.min())}")
    labels = torch.as_tensor(y.astype(np.int64))
    return labels, int(labels.max()) + 1 if labels.numel() else 0


def _from_array(a: np.ndarray, where: str, seed: int, test_fraction: float, y: Optional[np.ndarray] = None) -> Data:
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{where}: expected a numeric array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer):
        x = _check_array(torch.as_tensor(a.astype(np.int64)), where)
        if int(x.min()) < 0 or int(x.max()) > 255:
            raise ValueError(f"{where}: integer data must be 8-bit values in [0, 255], got range [{int(x.min())}, {int(x.max())}]")
        labels, k = _check_labels(y, x.shape[0], where) if y is not None else (None, 0)
        return _quantised(x, 256, seed, test_fraction, labels, k)
    x = _check_array(torch.as_tensor(a.astype(np.float32)), where)
    labels, k = _check_labels(y, x.shape[0], where) if y is not None else (None, 0)
    tr, te, ytr, yte = _split(x, test_fraction, seed, labels)
    return Data(tr, te, ytr, yte, num_classes=k)


class MissingDependency(ImportError):
    """An optional package (scikit-learn, Pillow) that a data set needs is not installed."""


def _load_file(path: Path, seed: int, test_fraction: float) -> Data:
    where = str(path)
    kind = "an .npz archive" if path.suffix == ".npz" else "a .npy array"
    with open(path, "rb") as f:  # OSError (permissions, ...) propagates as itself
        head = f.read(6)
    magic = b"PK\x03\x04" if path.suffix == ".npz" else b"\x93NUMPY"
    if not head.startswith(magic):
        # np.load would try to unpickle it and advise allow_pickle=True: wrong (it is not a pickle we wrote) and unsafe.
        raise ValueError(f"{where}: not {kind} (its first bytes are not the {'zip' if path.suffix == '.npz' else 'NumPy'} format's; "
                         f"{'empty file' if not head else 'damaged or another format'})")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                y = None
                if "x" in keys:
                    a = z["x"]
                    y = z["y"] if "y" in keys else None  # class labels beside the data
                elif len(keys) == 1:
                    a = z[keys[0]]
                else:
                    raise ValueError(f"{where}: an .npz must hold one array or one named 'x', found {keys or 'none'}")
        else:
            a, y = np.load(path, allow_pickle=False), None
    except ValueError as e:
        msg = str(e)
        if msg.startswith(where):
            raise
        if "pickle" in msg.lower() or "object arrays" in msg.lower():
            raise ValueError(f"{where}: holds an object (pickled) array; only numeric arrays are read") from None
        raise ValueError(f"{where}: cannot read {kind} ({' '.join(msg.split())[:160]})") from None
    except Exception as e:  # OSError, EOFError, zipfile.BadZipFile, ...: damaged or truncated
        raise ValueError(f"{where}: cannot read {kind}: damaged or truncated ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    return _from_array(a, where, seed, test_fraction, y)


def _load_images(folder: Path, seed: int, test_fraction: float) -> Data:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency("image folders need Pillow: pip install pillow (or scoresde[data])") from None
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    imgs = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()  # decode now: a truncated or damaged file fails here, named
                imgs.append(im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy())
        except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(f"{p}: cannot read the image ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    mode = "RGB" if any(im.mode == "RGB" for im in imgs) else "L"
    arrs = [np.asarray(im.convert(mode)) for im in imgs]
    sizes = {a.shape[:2] for a in arrs}
    if len(sizes) > 1:
        raise ValueError(f"{folder}: images must all have the same size, found {sorted(sizes)[:4]}")
    x = np.stack(arrs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
    return _from_array(x, str(folder), seed, test_fraction)


def load_data(spec: str, *, n_train: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0, test_fraction: float = 0.1) -> Data:
    """Load `spec` (a built-in name, a `.npz`/`.npy` file or an image folder) as a fixed train/test `Data` split.

    Toy sets draw `n_train` (default 50 000) and `n_test` (default 5 000) points
    from seeded generators; everything else is split by a seeded permutation."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"data must be a name or a path, got {type(spec).__name__}")
    if not (0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    s = str(spec)
    if s in TOY:
        n_train, n_test = n_train or 50_000, n_test or 5_000
        tr, ytr = toy_sample(s, n_train, generator=torch.Generator().manual_seed(seed), return_labels=True)
        te, yte = toy_sample(s, n_test, generator=torch.Generator().manual_seed(seed + 10_000), return_labels=True)
        return Data(tr, te, ytr, yte, num_classes=TOY_CLASSES[s])
    if s == "digits":
        return _digits(seed, test_fraction)
    path = Path(s).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data {s!r} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing file or folder")
    if path.is_dir():
        return _load_images(path, seed, test_fraction)
    if path.suffix not in (".npz", ".npy"):
        raise ValueError(f"data file {s!r} must be .npz or .npy (or give a folder of images)")
    return _load_file(path, seed, test_fraction)


def load_dataset(spec: str, **kwargs) -> Tuple[Tensor, Tensor]:
    """`(train, test)` float32 tensors, batch first, for `spec`; see `load_data` for the options."""
    d = load_data(spec, **kwargs)
    return d.train, d.test
