"""A dispatcher that only collects committed tasks, for a caller that runs them itself.

No threads and no clock: whoever holds it (a deterministic simulation, a step-by-step test) takes
the submitted tasks with :meth:`InlineDispatcher.take` and decides when each runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from culm.core.records import TaskRecord


class InlineDispatcher:
    """Keeps submitted tasks, in submission order, until taken."""

    def __init__(self) -> None:
        self.pending: list[TaskRecord] = []

    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Keep the committed ``tasks`` (None entries are skipped)."""
        self.pending.extend(t for t in tasks if t is not None)

    def take(self) -> list[TaskRecord]:
        """The tasks submitted since the last call, oldest first."""
        taken, self.pending = self.pending, []
        return taken

    def drop(self) -> None:
        """Forget what was submitted (a simulated crash loses the process's memory)."""
        self.pending = []

    def submitting(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to hold: the caller decides when each task runs."""
        return contextlib.nullcontext()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Whether every submitted task has been taken (nothing here runs them)."""
        return not self.pending

    def close(self) -> None:
        """Nothing to stop: no threads, no connections."""
