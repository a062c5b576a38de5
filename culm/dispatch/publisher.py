"""The publisher of a submitting runtime (``Runtime(url, broker=...)``), made when it first publishes.

Celery, kombu and the broker's client library take about a third of a second to import. A
runtime that submits work (a ``culm`` control command on a cluster, ``culm serve --broker``, a
script) often publishes nothing: a command the engine refuses, a pause, a read. So the Celery app
is built at the first task to publish, under a lock; until then nothing of Celery is imported.
Whether Celery is installed at all is still checked at once (``find_spec``, no import), so that a
runtime without the extra fails where it is made, not after its first command committed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from culm.core.records import TaskRecord
    from culm.dispatch.celery import CeleryDispatcher


def _installed(module: str) -> bool:
    if module in sys.modules:  # imported already (whose __spec__ Celery's lazy modules may leave None)
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class LazyCeleryDispatcher:
    """A :class:`culm.dispatch.celery.CeleryDispatcher` made on first use (the Dispatcher port).

    Args:
        broker: broker URL.
        **options: what ``CeleryDispatcher`` takes (``prefix``, ``max_countdown``, Celery settings).

    Raises:
        ModuleNotFoundError: Celery is not installed (the ``celery`` extra).
    """

    def __init__(self, broker: str, **options: Any) -> None:
        for module in ("celery", "kombu"):
            if not _installed(module):
                raise ModuleNotFoundError(
                    f"No module named {module!r} (pip install 'culm[celery]')", name=module
                )
        self._broker = broker
        self._options = options
        self._made: CeleryDispatcher | None = None
        self._lock = threading.Lock()
        self.engine: Any = None

    @property
    def made(self) -> bool:
        """Whether the Celery app was built (something was published or asked of it)."""
        return self._made is not None

    def _dispatcher(self) -> CeleryDispatcher:
        with self._lock:
            if self._made is None:
                from culm.dispatch.celery import CeleryDispatcher

                self._made = CeleryDispatcher(self._broker, **self._options)
                self._made.bind(self.engine)
            return self._made

    def bind(self, engine: Any) -> None:
        self.engine = engine
        if self._made is not None:
            self._made.bind(engine)

    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        if any(task is not None for task in tasks):
            self._dispatcher().submit(tasks)

    def submitting(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to hold: the workers take tasks from the broker as they come."""
        return contextlib.nullcontext()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True at once: the tasks run in worker processes, not in this one."""
        return True

    def close(self) -> None:
        if self._made is not None:
            self._made.close()

    def __getattr__(self, name: str) -> Any:
        # The rest of CeleryDispatcher (app, publish, queue_for, prefix...) builds it first.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._dispatcher(), name)
