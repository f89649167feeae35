"""Markdown tables for reports and benchmarks."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def fmt(v: object) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Iterable[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(columns) if columns is not None else list(rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
