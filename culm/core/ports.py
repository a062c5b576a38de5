"""The interfaces the core needs from the outside world, kept small on purpose.

Storage implements :class:`Store` (see ``culm.storage``), dispatch implements :class:`Dispatcher`
(see ``culm.dispatch``). The core imports neither of them. :class:`WorkerRegistry` is what the
distributed runtime's workers need from storage to tell live workers from dead ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from culm.core.records import TaskRecord, WorkerInfo


class Store(Protocol):
    """Hands out units of work. A unit's methods are domain verbs (see ``SqlUnit``)."""

    dialect: str

    def transaction(self) -> AbstractContextManager[Any]:
        """A read-write unit committed at the end of the block."""

    def reading(self) -> AbstractContextManager[Any]:
        """A read-only unit."""


class Dispatcher(Protocol):
    """Moves committed tasks to whoever runs them (threads here, Celery workers there)."""

    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Hand over tasks whose rows are committed; called after the commit."""


class WorkerRegistry(Protocol):
    """Which worker processes are alive: each beats its row; a dead one is buried once."""

    def register(self, owner: str, threads: int, prefix: str) -> None:
        """Add this process's row, under its lease owner id."""

    def beat(self, owner: str) -> bool:
        """Stamp the owner's row with the database's time; False when it has no row (buried)."""

    def unregister(self, owner: str) -> None:
        """Remove the owner's row (a clean shutdown)."""

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker."""

    def dead(self, dead_after: float) -> list[tuple[WorkerInfo, bool]]:
        """(worker, silent) of the workers to bury: silent longer than ``dead_after``, or gone."""

    def bury(self, owner: str, silent_after: float | None) -> list[str] | None:
        """Delete a dead worker's row and free its leases; the freed task ids, None when another
        relay buried it first or it beat again."""
