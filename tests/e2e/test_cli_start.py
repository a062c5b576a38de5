"""What a ``culm`` command loads before it does anything: ``culm --help``, ``culm --version`` and a
mistyped argument answer without the engine, SQLAlchemy, Celery or FastAPI (docs/architecture.md,
the lazy package faces). Each case runs the real command in its own process and reads the modules
it imported from ``python -X importtime``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("sqlalchemy", "celery", "kombu", "fastapi", "uvicorn", "culm.core.engine", "culm.storage.sql",
         "culm.model.validator", "culm.data.sandbox_eval")


def _imported(args: list[str], cwd: Path) -> tuple[int, str, set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "culm", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", done.stderr, re.M))
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    return done.returncode, "\n".join(errors), modules


@pytest.mark.parametrize(("args", "code"), [
    (["--help"], 0),
    (["--version"], 0),
    ([], 2),                                # `culm` alone: the commands, exit 2
    (["stauts", "x"], 2),                   # a mistyped command
    (["list", "--limit", "lots"], 2),       # a bad option value
    (["run", "--timeout", "-1", "t.json"], 2),
    (["status", "--help"], 0),
])
def test_help_and_argument_errors_load_no_engine_nor_database(args: list[str], code: int, tmp_path: Path) -> None:
    returncode, stderr, modules = _imported(args, tmp_path)
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert not [m for m in HEAVY if m in modules], sorted(m for m in modules if m.startswith(HEAVY))
    assert not list(tmp_path.iterdir()), "no file is created"


def test_a_command_that_reads_the_database_does_load_it(tmp_path: Path) -> None:
    """The check above can see SQLAlchemy when it is loaded: `culm list` needs it."""
    returncode, stderr, modules = _imported(["list", "--db", f"sqlite:///{tmp_path / 'c.db'}"], tmp_path)
    assert returncode == 0, stderr
    assert "sqlalchemy" in modules
