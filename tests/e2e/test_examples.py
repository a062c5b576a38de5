"""Every example runs as a script and finishes its pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=150, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FINISHED" in out.stdout
    assert list(tmp_path.iterdir()) == [], "examples keep their database in a temporary folder"


def test_quickstart_names_each_node_in_the_order_it_ran(tmp_path: Path) -> None:
    """The README's first command: a new user reads names, not 33-character ids."""
    script = EXAMPLES[0].parent / "quickstart.py"
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=150, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == ["  FINISHED  start (EmptyStartEvent)", "  FINISHED  example (ServiceActivity)",
                         "  FINISHED  end (EmptyEndEvent)"], out.stdout
    assert lines[3].startswith("pipeline p") and lines[3].endswith(" FINISHED") and len(lines) == 4, out.stdout
