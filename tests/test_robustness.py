"""Issue 11: nothing a user does loses work, shows a traceback, or hides a failure (trainer, CLI, data files, checkpoints)."""

import io
import json
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresde
from scoresde.cli import main
from scoresde.config import TrainConfig
from scoresde.train import CHECKPOINT, CheckpointError, Trainer, TrainingInterrupted, ema_warmup_decay, load, train


from conftest import states_equal as _states_equal, tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def toml(tmp_path, name="c.toml", **fields):
    p = tmp_path / name
    p.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items()))
    return str(p)


SMALL = dict(hidden=32, n_blocks=2, emb_dim=32, warmup=5, log_every=5, ckpt_every=10, eval_samples=64, eval_bpd=8, eval_steps=5)


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoresde: error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in err and "weights_only" not in err and "unsafe" not in err.lower()
    return err


# -- 1. EMA warm-up -------------------------------------------------------------------------------------


def test_ema_warmup_decay_ramp():
    assert ema_warmup_decay(0.995, 0) == pytest.approx(0.1)
    assert ema_warmup_decay(0.995, 90) == pytest.approx(0.91)
    assert ema_warmup_decay(0.995, 10**6) == 0.995


def test_short_moons_run_loads_a_model_at_the_data_scale(tmp_path, capsys):
    """`scoresde train --data moons --steps 300` (default net, batch, EMA): the loaded EMA samples within 30% of
    the data's std per coordinate. A constant decay of 0.995 would keep 0.995^300 ≈ 22% of the random init."""
    cfg = toml(tmp_path, final_eval=False)
    out = tmp_path / "moons"
    assert main(["train", "--data", "moons", "--steps", "300", "--config", cfg, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    model, sde = scoresde.load(out)
    with torch.no_grad():
        x = scoresde.sample(sde, model, (2000, 2), sampler="dpm_solver", steps=20, generator=torch.Generator().manual_seed(0))
    data = scoresde.data.load_dataset("moons")[1]
    ratio = x.std(0) / data.std(0)
    assert ((ratio - 1).abs() < 0.3).all(), ratio.tolist()


def test_old_checkpoint_without_ema_step_loads_and_resumes_with_its_constant_decay(tmp_path):
    tr = Trainer(tiny(tmp_path, steps=10, ema_decay=0.9), progress=False)
    tr.fit()
    path = tmp_path / "run" / CHECKPOINT
    ck = torch.load(path, weights_only=True)
    assert ck["ema_step"] == 10 and ck["ema_schedule"] == "warmup"
    del ck["ema_step"], ck["ema_schedule"]  # as written before the warm-up existed
    torch.save(ck, path)
    load(path)
    old = Trainer(tiny(tmp_path, steps=11, ema_decay=0.9), resume=True, progress=False)
    assert old.ema_schedule == "constant" and old.ema_step == 10
    before = [p.clone() for p in old.ema.module.parameters()]
    old.train_step()
    for e0, e1, m in zip(before, old.ema.module.parameters(), old.model.parameters()):
        assert torch.equal(e1, torch.lerp(e0, m, 1 - 0.9))


# -- 2. any vector shape trains, evaluates, samples -----------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (1,), (2, 3, 2)])
def test_vector_data_of_any_shape_trains_evaluates_and_samples(shape, tmp_path, capsys):
    g = np.random.default_rng(0)
    f = tmp_path / "d.npy"
    np.save(f, g.normal(size=(300,) + shape).astype(np.float32))
    out = tmp_path / "run"
    cfg = toml(tmp_path, **SMALL)
    assert main(["train", "--data", str(f), "--steps", "10", "--batch-size", "32", "--config", cfg, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    assert list(out.glob("samples_*.png"))
    png = tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(out), "--steps", "5", "--n", "50", "--out", str(png), "--no-progress", "--device", "cpu"]) == 0
    assert png.stat().st_size > 1000 and np.load(tmp_path / "s.npz")["x"].shape == (50,) + shape
    capsys.readouterr()
    assert main(["likelihood", "--ckpt", str(out), "--data", str(f), "--n", "8", "--json", "--no-progress", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(res["bits_per_dim"]) and res["divergence"] == "exact"  # auto: exact up to 16 dimensions


def test_pictures_of_any_batch_shape_never_fail(tmp_path):
    from scoresde.plotting import save_samples

    for i, shape in enumerate([(40, 2), (40, 1), (40, 7), (40, 2, 2, 2), (40, 3, 8, 8), (40, 1, 8, 8), (40, 5, 2, 3)]):
        x = torch.randn(shape)
        x[0] = float("nan")
        assert save_samples(x, tmp_path / f"p{i}.png", reference=torch.randn(shape)).stat().st_size > 1000


# -- 3. an existing run is not overwritten -------------------------------------------------------------


def test_train_into_an_existing_run_refuses_unless_force(tmp_path, capsys):
    out, cfg = tmp_path / "run", toml(tmp_path, final_eval=False, **{k: v for k, v in SMALL.items() if not k.startswith("eval")})
    argv = ["train", "--data", "ring", "--steps", "10", "--batch-size", "32", "--config", cfg, "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    before = (out / CHECKPOINT).read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, str(out), "--resume", "--force")
    assert (out / CHECKPOINT).read_bytes() == before
    assert main(argv + ["--force", "--seed", "5"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # one run's records only


# -- 4. damaged checkpoints ------------------------------------------------------------------------------


def _damaged(kind: str, good: bytes) -> bytes:
    if kind == "random":
        return np.random.default_rng(0).bytes(4096)
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    buf = io.BytesIO()
    if kind == "npz":
        np.savez(buf, x=np.zeros((3, 2)))
    elif kind == "dict":
        torch.save({"weights": torch.zeros(3)}, buf)
    elif kind == "tensor":
        torch.save(torch.zeros(3), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("good")
    run = train(tiny(tmp, steps=10), progress=False)
    return Path(run)


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "npz", "dict", "tensor"])
def test_damaged_checkpoints_give_one_line_naming_the_file(kind, good_run, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(_damaged(kind, (good_run / CHECKPOINT).read_bytes()))
    with pytest.raises(ValueError, match="bad.pt"):
        load(bad)
    assert main(["sample", "--ckpt", str(bad), "--n", "10", "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, str(bad))
    assert main(["likelihood", "--ckpt", str(bad), "--data", "ring", "--n", "10", "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, str(bad))
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(bad.read_bytes())
    assert main(["train", "--data", "ring", "--steps", "20", "--out", str(run), "--resume", "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, str(run / CHECKPOINT))
    with pytest.raises(CheckpointError):
        Trainer(tiny(tmp_path, steps=20), resume=True, progress=False)


# -- 5. other raw tracebacks ------------------------------------------------------------------------------


def test_nan_loss_arrives_as_one_line(tmp_path, monkeypatch, capsys):
    orig = Trainer.global_batch

    def poisoned(self, step):
        x0, t, noise, labels = orig(self, step)
        return (x0 * float("nan") if step == 3 else x0), t, noise, labels

    monkeypatch.setattr(Trainer, "global_batch", poisoned)
    assert main(["train", "--data", "ring", "--steps", "10", "--batch-size", "32", "--config", toml(tmp_path, **SMALL),
                 "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, "training loss is nan at step 4")


@pytest.mark.parametrize("cmd", ["train", "sample", "likelihood"])
def test_bogus_device_is_one_line(cmd, good_run, tmp_path, capsys):
    argv = {"train": ["train", "--data", "ring", "--steps", "1", "--out", str(tmp_path / "r")],
            "sample": ["sample", "--ckpt", str(good_run), "--out", str(tmp_path / "s.png")],
            "likelihood": ["likelihood", "--ckpt", str(good_run), "--data", "ring"]}[cmd]
    assert main(argv + ["--device", "bogus", "--no-progress"]) == 2
    one_error_line(capsys, "bogus")


def test_broken_png_in_an_image_folder_is_named(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    good = (folder / "ok0.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])
    (folder / "junk.png").write_bytes(b"\x89PNG not really")
    assert main(["train", "--data", str(folder), "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, "broken.png")


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_random_bytes_array_file_is_named_without_unsafe_advice(suffix, tmp_path, capsys):
    f = tmp_path / f"junk{suffix}"
    f.write_bytes(np.random.default_rng(1).bytes(2000))
    assert main(["train", "--data", str(f), "--steps", "1", "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
    err = one_error_line(capsys, str(f))
    assert "pickle" not in err.lower()
    z = tmp_path / "obj.npz"
    np.savez(z, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="obj.npz.*object") as e:
        scoresde.data.load_dataset(str(z))
    assert "allow_pickle" not in str(e.value)
    t = tmp_path / "trunc.npz"
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((100, 2)))
    t.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ValueError, match="trunc.npz"):
        scoresde.data.load_dataset(str(t))


# -- 6. checks before training ------------------------------------------------------------------------------


def test_bad_eval_sampler_fails_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match="eval_sampler"):
        TrainConfig(eval_sampler="foo")
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "ring"\neval_sampler = "foo"\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
    one_error_line(capsys, "eval_sampler", "foo")
    assert not (tmp_path / "r").exists()


# -- 7. stale temp files, SIGINT / SIGTERM ------------------------------------------------------------------


def test_stale_temp_files_are_removed_when_a_run_starts(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / f".{CHECKPOINT}.tmp999999999", out / f".{CHECKPOINT}.tmp", out / ".config.toml.tmp424242424"]
    for p in stale:
        p.write_bytes(b"x" * 100)
    train(tiny(tmp_path, steps=3, ckpt_every=3), progress=False)
    assert not any(p.exists() for p in stale)
    assert (out / CHECKPOINT).is_file()


def _signal_at(monkeypatch, step, signum):
    orig = Trainer.train_step

    def step_then_signal(self):
        loss = orig(self)
        if self.step == step:
            os.kill(os.getpid(), signum)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_is_bit_exact(signum, tmp_path, monkeypatch):
    full = torch.load(Path(train(tiny(tmp_path, "full", dropout=0.1), progress=False)) / CHECKPOINT, weights_only=True)
    _signal_at(monkeypatch, 7, signum)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name} at step 7"):
        train(tiny(tmp_path, "part", dropout=0.1), progress=False)
    monkeypatch.undo()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    path = tmp_path / "part" / CHECKPOINT
    assert torch.load(path, weights_only=True)["step"] == 7
    resumed = torch.load(Path(train(tiny(tmp_path, "part", dropout=0.1), resume=True, progress=False)) / CHECKPOINT, weights_only=True)
    for key in ("model", "ema", "optimizer"):
        _states_equal(resumed[key], full[key])
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]


def test_interrupt_on_a_rank_other_than_0_says_so_and_the_cli_stays_quiet(tmp_path, monkeypatch, capsys):
    import scoresde.cli as cli

    trainer = Trainer(tiny(tmp_path, "r1"), progress=False)
    trainer.rank, trainer.world_size = 1, 2  # as the second of two DDP ranks sees itself, without the process group
    monkeypatch.setattr(Trainer, "_agree_on_stop", lambda self: self._interrupt is not None)
    _signal_at(monkeypatch, 7, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit()
    e = info.value
    assert e.checkpoint is None and e.rank == 1 and "None" not in str(e) and "rank 0 saves the checkpoint" in str(e)
    assert not (tmp_path / "r1" / CHECKPOINT).exists()  # only rank 0 writes

    def raise_it(args):
        raise e

    monkeypatch.setattr(cli, "cmd_train", raise_it)
    capsys.readouterr()
    assert main(["train", "--data", "ring"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == ""


def test_cli_interrupt_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys):
    _signal_at(monkeypatch, 4, signal.SIGINT)
    out = tmp_path / "r"
    rc = main(["train", "--data", "ring", "--steps", "50", "--batch-size", "32", "--config", toml(tmp_path, **SMALL), "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SIGINT at step 4" in err and "--resume" in err, err
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 4


# -- 8. friction ---------------------------------------------------------------------------------------------


def test_help_shows_defaults(capsys):
    for cmd in (["train"], ["sample"], ["likelihood"]):
        with pytest.raises(SystemExit):
            main(cmd + ["--help"])
    out = capsys.readouterr().out
    assert "(default: 5000)" in out and "(default: dpm_solver)" in out and "(default: 500)" in out and "cosine" in out


def test_resume_log_has_no_repeated_steps_and_fewer_steps_says_so(tmp_path, capsys):
    out, cfg = tmp_path / "run", toml(tmp_path, final_eval=False, **{k: v for k, v in SMALL.items() if not k.startswith("eval")})
    base = ["train", "--data", "ring", "--sde", "cosine", "--batch-size", "32", "--config", cfg, "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(base + ["--steps", "14"]) == 0  # logs 5, 10; checkpoint at 10 and 14
    with open(out / "log.jsonl", "a") as f:  # as if killed after logging step 15 but before the next checkpoint
        f.write(json.dumps({"step": 15, "loss": 1.0}) + "\n")
    assert main(base + ["--steps", "20", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20], steps
    capsys.readouterr()
    assert main(base + ["--steps", "10", "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 20


def test_resume_without_steps_continues_to_the_saved_target_and_missing_checkpoint_is_one_note(tmp_path, capsys):
    out, cfg = tmp_path / "run", toml(tmp_path, final_eval=False, **{k: v for k, v in SMALL.items() if not k.startswith("eval")})
    base = ["train", "--data", "ring", "--batch-size", "32", "--config", cfg, "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(base + ["--steps", "10", "--resume"]) == 0  # nothing to resume: a new run, said in one line
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoresde: note:") and len(err.splitlines()) == 1, err
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    ck["config"]["steps"] = 20  # as if a 20-step run had been stopped at step 10
    torch.save(ck, out / CHECKPOINT)
    assert main(base + ["--resume"]) == 0
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 20
