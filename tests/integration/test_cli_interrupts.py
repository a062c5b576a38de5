"""Ctrl-C on the long-running commands exits 130 ("interrupted"), as the CLI's exit codes say
(docs/cli.md) and as `culm run` and `culm watch` already did: `culm serve` (uvicorn swallowed it)
and `culm worker` (Celery's warm shutdown returned) exited 0, so a script could not tell an
interrupted service from one that ended. `culm serve` is tested in tests/e2e/test_web_cli.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from backends import AMQP, REDIS, create_database, drop_database
from support import wait_until

from culm.storage import migrate

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def _terminal_like() -> None:
    # As a terminal's foreground job: SIGINT at its default (a job started in the background
    # inherits it ignored, and no Ctrl-C would reach the worker at all).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("kind", "broker", "how", "code"), [
    ("postgres", REDIS, signal.SIGINT, 130), ("mariadb", AMQP, signal.SIGINT, 130),
    ("postgres", REDIS, signal.SIGTERM, 0),
])
def test_worker_exits_130_when_interrupted(tmp_path: Path, kind: str, broker: str, how: int, code: int) -> None:
    db = create_database(kind)
    try:
        migrate.upgrade_database(db)
        log_path = tmp_path / "worker.log"
        log = open(log_path, "wb")  # noqa: SIM115 - owned by the child
        worker = subprocess.Popen(
            [sys.executable, "-m", "culm.cli", "worker", "--db", db, "--broker", broker,
             "--prefix", f"culmi{uuid.uuid4().hex[:8]}", "--concurrency", "1", "--pool", "threads"],
            env={**os.environ, "CULM_IMPORTS": ""}, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_terminal_like)
        log.close()
        try:
            wait_until(lambda: " ready." in log_path.read_text(errors="replace"), 60, 0.1, what="the worker to be ready")
            worker.send_signal(how)
            worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
        out = log_path.read_text(errors="replace")
        assert worker.returncode == code, out[-2000:]
        assert ("interrupted" in out.splitlines()[-1]) == (code == 130), out[-2000:]
        assert "Traceback" not in out, out[-3000:]
    finally:
        drop_database(db)
