"""What every test suite shares: the one bounded wait.

``tests/`` is on ``sys.path`` for pytest (``pythonpath`` in pyproject.toml), so any test module
imports this as ``support``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
