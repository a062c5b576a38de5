"""Every runnable Python example of README.md runs (a fenced ```python block without `...`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[str]:
    return [code for code in BLOCK.findall(README.read_text(encoding="utf-8")) if "..." not in code]


def test_readme_has_runnable_examples() -> None:
    assert len(runnable_blocks()) >= 2


@pytest.mark.parametrize("code", runnable_blocks(), ids=lambda code: code.strip().splitlines()[-1][:40])
def test_readme_block_runs(code: str, tmp_path: Path) -> None:
    # Each block runs in its own interpreter and folder: a block may create ./culm.db.
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'readme.db'}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=100, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr


def test_quick_start_finishes(tmp_path: Path) -> None:
    quick_start = runnable_blocks()[0]
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'readme.db'}"}
    out = subprocess.run([sys.executable, "-c", quick_start], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert out.stdout.strip() == "FINISHED ['FINISHED', 'FINISHED', 'FINISHED']"


def test_readme_names_the_ci_command() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash .ci/run" in text
    assert ".venv/bin/pytest -q" in text and ".venv/bin/pytest -q" in ci
    # the parallel run as .ci/run starts it (its process count stands for $PROCESSES)
    assert ".venv/bin/pytest -q -n 3 --dist loadfile" in text
    assert 'exec .venv/bin/pytest -q -n "$PROCESSES" --dist loadfile' in ci and "    PROCESSES=3\n" in ci


def test_the_install_section_names_every_extra() -> None:
    """`culm serve` needs the `web` extra, which the install lines left out: a new user following
    them got an ImportError from `culm serve`."""
    import tomllib

    extras = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"]
    text = README.read_text(encoding="utf-8")
    install = text[text.index("## Install"):text.index("## Two commands")]
    for name in set(extras) - {"dev"}:
        assert f"culm[{name}]" in install, name
    assert ". .venv/bin/activate" in text  # `culm ...` in the README needs the environment's bin
