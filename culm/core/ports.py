"""The interfaces the core needs from the outside world, kept small on purpose.

Storage implements :class:`Store` (see ``culm.storage``), dispatch implements :class:`Dispatcher`
(see ``culm.dispatch``). The core imports neither of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from culm.core.records import TaskRecord


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
