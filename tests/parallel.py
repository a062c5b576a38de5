"""The suite run by several processes at once (pytest-xdist, ``pytest -n 3 --dist loadfile``, as
``.ci/run`` runs it), and beside other test sessions on the same machine.

Each xdist worker is a test session of its own: its own ``worker_guard`` mark, backends, databases,
queue prefixes, shared directory (``components.SHARED_DIR``) and block of ports
(``support.free_port``). This plugin (loaded by ``tests/conftest.py``) keeps apart what a process
cannot have to itself:

* ``@pytest.mark.exclusive``: the test stops or restarts a service every other test uses (the local
  Redis). It runs while no other test runs, in this session's other workers or in any other session
  of this suite on the machine: every test holds a shared lock on :data:`LOCK` from its setup to its
  teardown, an exclusive test holds it exclusively. A turnstile keeps tests that start later from
  starving an exclusive test that waits.

``--dist loadfile`` sends each test file to one xdist worker whole: a module-scoped fixture (workers,
a browser, a server) is set up once, not once in each worker that ran one of its tests. (``--dist
loadgroup`` groups nothing with pytest 9.2 and pytest-xdist 3.8.0: xdist writes its group into
``item._nodeid``, which pytest 9.2 no longer reads.)
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

# Machine-wide: another session's Redis restart is as much in this one's way. $CULM_TEST_LOCK_DIR
# sets another place (a session a test runs inside its own must not wait for the test around it).
LOCK_DIR = Path(os.environ.get("CULM_TEST_LOCK_DIR") or tempfile.gettempdir())
LOCK = LOCK_DIR / "culm-tests-services.lock"
TURNSTILE = LOCK_DIR / "culm-tests-services.turnstile"
# A test waits at most this long for its turn: longer than any test may run (its timeout bounds
# each of setup, call and teardown), so that only a process that froze holding the lock fails it.
TURN_WAIT = 3600.0
GROUPED_SCOPES = {"module", "class", "package"}


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


def _take(fd: int, how: int, what: str) -> None:
    def taken() -> bool:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    wait_until(taken, TURN_WAIT, 0.05, what=what)


@contextmanager
def turn(exclusive: bool) -> Iterator[None]:
    """Hold the suite's lock: shared, or alone (``exclusive``) once every test running now is done."""
    lock, turnstile = _open(LOCK), _open(TURNSTILE)
    try:
        _take(turnstile, fcntl.LOCK_EX, f"the turnstile {TURNSTILE}")
        try:
            _take(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH,
                  f"{'every other test to end' if exclusive else 'an exclusive test to end'} ({LOCK})")
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield
    finally:
        # Unlocked before it is closed: a process the test forked shares this open file, and
        # would hold the lock for as long as it lives.
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(turnstile)
        os.close(lock)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    with turn(item.get_closest_marker("exclusive") is not None):
        return (yield)

