"""Deadlock and serialization victims: a transaction the server rolled back so that another could go on.

Commands and engine steps take row locks in one order (see docs/distributed.md, "Row locks"), which
keeps deadlocks between them rare; they cannot be ruled out entirely on a server database (index
and gap locks, several rows locked by one statement in the server's scan order). A victim's
transaction was rolled back as a whole, so running it again from the start is always safe: a
command is retried here, a few times with a growing, jittered pause, and never surfaces as a
refusal; an engine batch is retried by its runner (:mod:`culm.dispatch.runner`).

A leaf module (standard library only), so that the API, the dispatchers and the store share it
without depending on one another; the CLI and the service ask it whether a failed call was an
outage of the database (:func:`is_outage`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from culm._printable import engine_logger

logger = engine_logger("culm.storage")

T = TypeVar("T")

ATTEMPTS = 8
FIRST_PAUSE = 0.01  # seconds; doubles with each attempt (full jitter), up to MAX_PAUSE
MAX_PAUSE = 0.5

# PostgreSQL SQLSTATEs: serialization_failure, deadlock_detected.
_PG_STATES = frozenset({"40001", "40P01"})
# MySQL / MariaDB error codes: lock wait timeout, deadlock found when trying to get lock.
_MY_CODES = frozenset({1205, 1213})


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or used (a lost connection, a
    server that is down or out of connections): a driver's PEP 249 ``OperationalError`` or
    ``InterfaceError`` (culm's stores speak to the drivers directly, so theirs come through
    unwrapped), SQLAlchemy's wrapping of one, or an ``OSError``. Not a fault of the caller's or
    the engine's: the same call may work in a moment."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"OperationalError", "InterfaceError"})


def is_lock_victim(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it wraps) says the server rolled the transaction back
    to break a deadlock or a serialization conflict."""
    for e in causes(exc):
        if getattr(e, "sqlstate", None) in _PG_STATES:
            return True
        args = getattr(e, "args", ())
        if type(e).__module__.startswith(("pymysql", "MySQLdb")) and args and args[0] in _MY_CODES:
            return True
    return False


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (SQLAlchemy's ``orig``, ``__cause__``, ``__context__``),
    each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def pause(attempt: int) -> float:
    """How long to wait before try ``attempt + 1`` (full jitter, so victims do not meet again)."""
    return random.uniform(0, min(MAX_PAUSE, FIRST_PAUSE * 2**attempt))


def retrying(call: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """Run ``call`` (one whole transaction); run it again while it is a lock victim, at most
    ``attempts`` (ATTEMPTS) times in all (the last victim's error is raised)."""
    attempts = attempts or ATTEMPTS
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not is_lock_victim(exc):
                raise
            wait = pause(attempt)
            logger.info("%s was a deadlock victim (%s); trying again in %.3fs", what, type(exc).__name__, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
