"""What every test suite shares: the one bounded wait, and a free port for a server a test starts.

``tests/`` is on ``sys.path`` for pytest (``pythonpath`` in pyproject.toml), so any test module
imports this as ``support``.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Args:
        predicate: Called at once, then every ``interval`` seconds.
        timeout: The bound: after ``timeout`` seconds (and one last call) it fails.
        interval: Seconds between two calls.
        what: What is waited for, for the failure's message.

    Raises:
        AssertionError: ``timeout`` passed and ``predicate`` never returned a truthy value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Ports handed out by free_port: below Linux's default ephemeral range (32768-60999), in a block of
# PORT_BLOCK per pytest-xdist worker (gw0, gw1, ...), so that two test processes never draw the same.
PORT_BASE, PORT_BLOCK = 20000, 500


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> Iterator[int]:
    """This process's block, in a random order, round and round: a test that asks for two ports
    before it starts either server gets two different ones."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = PORT_BASE + PORT_BLOCK * (int(worker) if worker.isdigit() else 0)
    if low + PORT_BLOCK > _ephemeral_low():
        return iter(())
    return itertools.cycle(random.sample(range(low, low + PORT_BLOCK), PORT_BLOCK))


_PORTS = _ports()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now, for a server the test starts next.

    Not one ``bind(("127.0.0.1", 0))`` picks: the kernel takes those from the ephemeral range, where
    any outgoing connection of any process (a database session of a test running beside this one,
    under ``pytest -n``) may take the port before the server binds it. Each pytest-xdist worker
    draws from a block of its own below that range; ``bind(0)`` only where no such block fits.
    """
    for _ in range(PORT_BLOCK):
        port = next(_PORTS, None)
        if port is None:
            break
        if _bindable(port):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
