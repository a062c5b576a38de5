"""No `culm worker` outlives the test session that started it.

Test code starts workers in process groups of their own (``start_new_session``), so that a test
can kill one with its pool. Such a worker does not die with the session: a session killed by
``timeout`` (SIGTERM), a teardown cut short, or a test that forgot one left workers running for
ever, taking tasks from their queues. This plugin (loaded by ``tests/conftest.py``):

* marks every process the session starts with ``CULMTEST_SESSION=<id>`` in its environment, so
  that the session can find its own workers, and only those (other sessions run beside it);
* turns SIGTERM into KeyboardInterrupt, so that a terminated session still tears its fixtures down
  (and stops its workers) instead of dying at once;
* at the very end of the session, after every fixture's teardown, kills any `culm worker` that
  still carries the session's mark and fails the session, naming them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

MARK = "CULMTEST_SESSION"
# Environments built from scratch (`{k: v for k in os.environ if not k.startswith("CULM_")}`) keep
# the mark: its name does not start with CULM_.
GRACE = 10.0  # seconds a worker the teardown stopped may take to be gone


def new_session_mark() -> str:
    """Give this process (and every process it starts from now on) a new session mark."""
    mark = uuid.uuid4().hex
    os.environ[MARK] = mark
    return mark


def _environ(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _argv(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def is_culm_worker(argv: list[str]) -> bool:
    """``python -m culm worker ...`` or ``python -m culm.cli worker ...`` (a pool process keeps
    its parent's command line), or the `culm` script's ``culm worker ...``."""
    if "worker" not in argv:
        return False
    before = argv[: argv.index("worker")]
    return any(word in ("culm", "culm.cli") or word.endswith("/culm") for word in before)


def marked_workers(mark: str, word: str | None = None) -> list[int]:
    """The live `culm worker` processes (pool processes included) whose environment has ``mark``
    (and, given one, whose command line has ``word``: a queue prefix)."""
    wanted = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid() or wanted not in _environ(entry).split(b"\0"):
            continue
        argv = _argv(entry)
        if is_culm_worker(argv) and (word is None or word in argv) and not _zombie(entry):
            found.append(int(entry))
    return sorted(found)


def kill_marked_workers(mark: str, word: str | None = None) -> list[int]:
    """SIGKILL every live `culm worker` with ``mark`` (and ``word``); returns their pids."""
    pids = marked_workers(mark, word)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


SESSION = new_session_mark()


def _terminate_as_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)


@pytest.hookimpl(trylast=True)  # after the runner's own, which tears the session's fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + GRACE
    while marked_workers(SESSION) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: " ".join(_argv(str(pid))).strip() for pid in marked_workers(SESSION)}
    if not left:
        return
    kill_marked_workers(SESSION)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(left)} culm worker process(es) started by this session outlived it (killed now):",
             *(f"  pid {pid}: {argv[:300]}" for pid, argv in left.items())]
    if reporter is not None:
        reporter.ensure_newline()
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
