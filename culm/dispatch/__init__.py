"""How work moves: threads and timers in this process (embedded), Celery and its worker
(distributed), inline (a caller runs each task itself: the deterministic simulation).

What other packages may use is named here. The Celery names need the ``celery`` extra and are
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from culm.dispatch.inline import InlineDispatcher
from culm.dispatch.threads import ThreadDispatcher

if TYPE_CHECKING:
    from culm.dispatch.celery import CeleryDispatcher, queue_names, run_worker

__all__ = [
    # embedded
    "ThreadDispatcher",
    "InlineDispatcher",
    # distributed
    "CeleryDispatcher",
    "run_worker",
    "queue_names",
]

_CELERY_NAMES = frozenset({"CeleryDispatcher", "run_worker", "queue_names"})


def __getattr__(name: str) -> Any:
    # Celery is an extra: importing the package for the embedded dispatchers must not need it.
    if name in _CELERY_NAMES:
        from culm.dispatch import celery

        return getattr(celery, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
