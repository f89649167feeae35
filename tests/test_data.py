import math

import numpy as np
import pytest
import torch

from scoresde.data import TOY, load_data, load_dataset, toy_sample


@pytest.mark.parametrize("name", TOY)
def test_toy_sets_are_seeded_2d_and_bounded(name):
    a, b = load_dataset(name, n_train=2000, n_test=500)
    assert a.shape == (2000, 2) and b.shape == (500, 2) and a.dtype == torch.float32
    assert float(a.abs().max()) < 3.5 and 0.7 < float(a.std()) < 1.6
    torch.testing.assert_close(load_dataset(name, n_train=2000, n_test=500)[0], a, rtol=0, atol=0)
    assert not torch.equal(a[:500], b)


def test_ring_is_the_oracle_ring():
    from scoresde.oracle import ring8

    x = toy_sample("ring", 4000, generator=torch.Generator().manual_seed(0))
    # the oracle's log-density is highest on its own samples: mean log p ≈ its entropy's negative
    lp = ring8().log_prob(x.double())
    assert abs(float(lp.mean()) - float(ring8().log_prob(ring8().sample(4000, dtype=torch.float64)).mean())) < 0.1


def test_checkerboard_fills_every_other_square():
    x = toy_sample("checkerboard", 5000, generator=torch.Generator().manual_seed(0))
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])).remainder(2)
    assert bool((parity == parity[0]).all())


def test_digits_scaled_dequantised_split():
    d = load_data("digits")
    assert d.train.shape[1:] == (1, 8, 8) and d.test.shape[1:] == (1, 8, 8)
    assert d.train.shape[0] + d.test.shape[0] == 1797 and d.test.shape[0] == 180
    assert float(d.train.min()) >= -1 and float(d.train.max()) <= 1
    assert d.step == pytest.approx(2 / 17) and d.num_classes == 10 and d.train_labels.shape == (d.train.shape[0],)
    # dequantisation: the noise lies within one bin of the raw value
    gap = d.train - d.train_raw
    assert float(gap.min()) >= 0 and float(gap.max()) < d.step and float(gap.std()) > 0.02
    torch.testing.assert_close(load_dataset("digits")[1], d.test, rtol=0, atol=0)  # fixed test split


def test_npz_npy_and_errors(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.savez(tmp_path / "one.npz", data=x)
    np.savez(tmp_path / "named.npz", x=x, y=np.arange(50))
    np.savez(tmp_path / "two.npz", a=x, b=x)
    np.save(tmp_path / "a.npy", x)
    for f in ("one.npz", "named.npz", "a.npy"):
        tr, te = load_dataset(str(tmp_path / f))
        assert tr.shape == (45, 3) and te.shape == (5, 3)
        torch.testing.assert_close(torch.cat([tr, te]).sort(0).values, torch.as_tensor(x).sort(0).values)
    with pytest.raises(ValueError, match="one array or one named 'x'"):
        load_dataset(str(tmp_path / "two.npz"))
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        load_dataset(str(tmp_path / "missing.npz"))
    bad = x.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        load_dataset(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "flat.npy", x[:, 0])
    with pytest.raises(ValueError, match="at least 2-D"):
        load_dataset(str(tmp_path / "flat.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="at least 2 samples"):
        load_dataset(str(tmp_path / "empty.npy"))
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(ValueError, match=".npz or .npy"):
        load_dataset(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="unknown toy"):
        toy_sample("spiral", 3)


def test_uint8_arrays_are_8bit_images(tmp_path):
    np.save(tmp_path / "u8.npy", np.random.default_rng(0).integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8))
    d = load_data(str(tmp_path / "u8.npy"))
    assert d.step == pytest.approx(2 / 256) and float(d.train.min()) >= -1 and float(d.train.max()) <= 1


def test_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    tr, te = load_dataset(str(tmp_path))
    assert tr.shape == (9, 3, 8, 8) and te.shape == (1, 3, 8, 8)
    Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="same size"):
        load_dataset(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(empty))


# -- labels -----------------------------------------------------------------------------------


def test_toy_labels_are_the_modes_and_parts():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    from scoresde.data import TOY_CLASSES
    from scoresde.oracle import ring8

    for name in TOY:  # the same points with or without labels, every class present
        x, y = toy_sample(name, 5000, generator=g(), return_labels=True)
        assert torch.equal(x, toy_sample(name, 5000, generator=g())) and y.dtype == torch.long
        counts = torch.bincount(y)
        assert len(counts) == TOY_CLASSES[name] and int(counts.min()) > 5000 / TOY_CLASSES[name] / 1.5
    x, y = toy_sample("ring", 5000, generator=g(), return_labels=True)
    assert torch.equal(y, ring8().classify(x))  # the mode index is the nearest mode (modes 5σ from any boundary)
    x, y = toy_sample("checkerboard", 5000, generator=g(), return_labels=True)
    row, col = torch.floor(x[:, 1]).long() + 2, torch.floor(x[:, 0]).long() + 2
    assert torch.equal(y, 2 * row + col // 2)
    x, y = toy_sample("moons", 5000, generator=g(), return_labels=True)
    a = torch.linspace(0, math.pi, 400)
    upper = (torch.stack([a.cos(), a.sin()], 1) - torch.tensor([0.5, 0.25])) * 1.6
    lower = (torch.stack([1 - a.cos(), 0.5 - a.sin()], 1) - torch.tensor([0.5, 0.25])) * 1.6
    nearer_lower = torch.cdist(x, lower).min(1).values < torch.cdist(x, upper).min(1).values
    assert float((nearer_lower.long() == y).float().mean()) > 0.99
    x, y = toy_sample("swissroll", 5000, generator=g(), return_labels=True)
    a = 6 * x.norm(dim=1)  # the roll's parameter (radius a/6), up to the noise
    bins = ((a / (1.5 * math.pi) - 1) / 2 * 3).floor().long().clamp(0, 2)
    assert float((bins == y).float().mean()) > 0.9  # 0.95 here: the noise blurs a/6 by 0.05 near the bin edges
    d = load_data("ring", n_train=500, n_test=100)
    assert d.num_classes == 8 and torch.equal(d.train_labels, ring8().classify(d.train)) and d.test_labels.shape == (100,)


def test_npz_labels_y_beside_x(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)  # labels a function of x: alignment survives the split
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    d = load_data(str(tmp_path / "xy.npz"))
    assert d.num_classes == 4 and d.train_labels.shape == (54,) and d.test_labels.shape == (6,)
    for xs, ys in ((d.train, d.train_labels), (d.test, d.test_labels)):
        assert torch.equal(ys, (xs[:, 0] > 0).long() + 2 * (xs[:, 1] > 0).long())
    np.savez(tmp_path / "u8.npz", x=np.arange(60, dtype=np.uint8).reshape(60, 1), y=np.arange(60, dtype=np.uint8) % 3)
    d = load_data(str(tmp_path / "u8.npz"))  # 8-bit data keeps its labels through dequantisation
    assert d.num_classes == 3 and torch.equal(d.train_labels, torch.round((d.train_raw[:, 0] + 1) * 128).long() % 3)
    assert load_data(str(tmp_path / "xy.npz")).num_classes == 4 and load_data("digits").num_classes == 10
    np.save(tmp_path / "plain.npy", x)
    assert load_data(str(tmp_path / "plain.npy")).num_classes == 0
    for bad, needle in ((y.astype(np.float32), "must be integers.*astype"), (y[:-1], "59 entries but 'x' has 60"),
                        (y - 1, "must be >= 0"), (y.reshape(30, 2), "must be 1-D"), (y > 0, "must be integers")):
        np.savez(tmp_path / "bad.npz", x=x, y=bad)
        with pytest.raises(ValueError, match=needle):
            load_data(str(tmp_path / "bad.npz"))
