"""No `culm worker` a test session starts outlives it: the session-end check (worker_guard) fails
a session that left one and kills it; a session stopped by SIGTERM (`timeout pytest ...`) still
tears its backends down; a backend's teardown stops its workers whatever else fails in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from backends import HERE, REPO, own_backend
from support import wait_until
from worker_guard import SESSION, kill_marked_workers, marked_workers

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

LEAVES_A_WORKER = '''
import os
from pathlib import Path

from backends import drop_database, own_backend


def test_starts_a_worker_and_forgets_it(tmp_path):
    Path(os.environ["INNER_DIR"], "mark").write_text(os.environ["CULMTEST_SESSION"])
    backend = own_backend("postgres-redis", tmp_path)
    backend.start_workers(1)
    backend.workers = []  # forgotten: no teardown will stop it
    drop_database(backend.db_url)
'''

WAITS_FOR_SIGTERM = '''
import os
import time
from pathlib import Path

import pytest
from backends import own_backend


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    backend = own_backend("postgres-redis", tmp_path_factory.mktemp("inner"))
    try:
        backend.start_workers(1)
        yield backend
    finally:
        backend.teardown()


def test_waits_for_sigterm(backend):
    Path(os.environ["INNER_DIR"], "mark").write_text(os.environ["CULMTEST_SESSION"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
'''


def _inner(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    """A pytest session of its own running ``source`` (with the worker guard, as tests/ has it)."""
    (tmp_path / "test_inner.py").write_text(source)
    env = dict(os.environ, INNER_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "worker_guard", "-p", "no:cacheprovider",
                             "-c", os.devnull, "--rootdir", str(tmp_path), "test_inner.py"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_session_that_leaves_a_worker_running_fails_and_kills_it(tmp_path: Path) -> None:
    inner = _inner(tmp_path, LEAVES_A_WORKER)
    mark = ""
    try:
        out, _ = inner.communicate(timeout=180)
        mark = (tmp_path / "mark").read_text()
    finally:
        inner.kill()
        if mark:
            kill_marked_workers(mark)
    assert inner.returncode == 1, out
    # the worker's main process and its pool of 2
    assert "3 culm worker process(es) started by this session outlived it (killed now):" in out, out
    assert "1 passed" in out
    assert marked_workers(mark) == []


def test_a_session_stopped_by_sigterm_stops_its_workers(tmp_path: Path) -> None:
    inner = _inner(tmp_path, WAITS_FOR_SIGTERM)
    mark = ""
    try:
        mark = wait_until(lambda: (tmp_path / "mark").exists() and (tmp_path / "mark").read_text(), 120, 0.1,
                          what="the inner session's test to run")
        assert marked_workers(mark), "the inner session's worker is not running"
        inner.send_signal(signal.SIGTERM)  # as `timeout` does
        out, _ = inner.communicate(timeout=90)
        left = wait_until(lambda: marked_workers(mark) == [] or None, 30, 0.2,
                          what="the inner session's workers to be gone")
        assert left is True, out
    finally:
        inner.kill()
        if mark:
            kill_marked_workers(mark)


class _RuntimeThatWillNotClose:
    """Stands for a teardown step that raises (pytest-timeout's exception, a broken runtime)."""

    def close(self) -> None:
        raise RuntimeError("close failed")


def test_a_failing_teardown_step_still_stops_the_workers(tmp_path: Path) -> None:
    backend = own_backend("postgres-redis", tmp_path)
    try:
        backend.start_workers(2)
        assert marked_workers(SESSION, backend.prefix)
        backend._runtimes.append(_RuntimeThatWillNotClose())  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="close failed"):
            backend.teardown()
        assert marked_workers(SESSION, backend.prefix) == []
    finally:
        kill_marked_workers(SESSION, backend.prefix)
