"""Shared plumbing for the benchmark scripts: thread pinning, timing, peak memory, tables, output folder."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

# numpy's BLAS threads fight torch's on small machines (3-40x slowdowns seen): pin before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

from scoresde._report import fmt, markdown_table  # noqa: E402,F401  (re-exported for the scripts)

DEFAULT_OUT = Path("benchmarks") / "results"


def out_dir(path: str | os.PathLike | None) -> Path:
    p = Path(path) if path is not None else DEFAULT_OUT
    p.mkdir(parents=True, exist_ok=True)
    return p


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[object, float]:
    """Run `fn` once and return its result and wall seconds (device work included)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def reset_peak_memory(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: torch.device | str) -> float:
    """`torch.cuda.max_memory_allocated` on CUDA, else the process's peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def write_results(out: Path, name: str, rows: Sequence[Mapping[str, object]], meta: Mapping[str, object] | None = None) -> str:
    """Write `name.json`, `name.csv` and `name.md`; return the markdown table."""
    table = markdown_table(rows)
    (out / f"{name}.md").write_text(table)
    (out / f"{name}.json").write_text(json.dumps({"meta": dict(meta or {}), "rows": list(rows)}, indent=1, default=str))
    if rows:
        cols = list(rows[0].keys())
        csv = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
        (out / f"{name}.csv").write_text("\n".join(csv) + "\n")
    return table


def machine_note(device: torch.device | str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return f"{torch.cuda.get_device_name(d)}, torch {torch.__version__}"
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def load_run_case(ckpt: str, n: int, data: str | None = None):
    """`(model, sde, config, x, label)` for a trained run: its EMA model, its training config, the first `n`
    held-out points of `data` (default the run's own data; its training split if it has no test split) and a
    short label "<parent>/<run> (<sde>, <data>)"."""
    import scoresde
    from scoresde.data import load_data

    model, sde = scoresde.load(ckpt)
    cfg = torch.load(Path(ckpt) / "checkpoint.pt" if Path(ckpt).is_dir() else ckpt, map_location="cpu",
                     weights_only=False)["config"]
    d = load_data(data or cfg["data"], seed=123)
    x = (d.test if getattr(d, "test", None) is not None else d.train)[:n]
    where = Path(ckpt).resolve()
    where = where.parent if where.is_file() else where
    return model, sde, cfg, x, f"{where.parent.name}/{where.name} ({cfg['sde']}, {cfg['data']})"
