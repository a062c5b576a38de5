"""Every Python example in docs/*.md runs (blocks that name servers of your own say so and are skipped)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = "# not run by the docs test"


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        for i, code in enumerate(BLOCK.findall(path.read_text(encoding="utf-8"))):
            if NOT_RUN not in code:
                found.append((f"{path.name}#{i + 1}", code))
    return found


def test_docs_have_runnable_examples() -> None:
    assert len(blocks()) >= 5


@pytest.mark.parametrize(("where", "code"), blocks(), ids=[w for w, _ in blocks()])
def test_docs_block_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {**os.environ, "CULM_DATABASE_URL": f"sqlite:///{tmp_path / 'docs.db'}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=100, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{where}:\n{out.stdout}{out.stderr}"
