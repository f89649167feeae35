"""The README is part of the product: its test command is what CI runs, and its code runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    m = re.search(r"^(pip install torch==2\.13\.0 && pip install -e '\.\[test\]' && .*pytest.*)$", README, re.M)
    assert m, "README must give the one-line test command"
    assert m.group(1) in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_opens_with_the_demo_command():
    setup = README[: README.index("## ", README.index("## ") + 3)]
    assert "scoresde demo" in setup


PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("i", range(len(PY_BLOCKS)))
def test_readme_python_blocks_run(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(PY_BLOCKS[i], f"README.md[python block {i}]", "exec"), {"__name__": f"readme_block_{i}"})
