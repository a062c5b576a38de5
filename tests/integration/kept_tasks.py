"""A dispatcher for tests that run the engine loop's batches themselves."""

from __future__ import annotations

import contextlib

from culm.core.records import TaskRecord


class Held:
    """A dispatcher that keeps the tasks a commit makes, for the batches a test runs itself."""

    def __init__(self) -> None:
        self.tasks: list[TaskRecord] = []

    def submit(self, tasks):
        self.tasks.extend(t for t in tasks if t is not None)

    def submitting(self):
        return contextlib.nullcontext()

    def close(self) -> None:
        pass
