"""Signals sent after committed changes: ``post_set_state`` and ``pipeline_event``.

Receivers are held strongly and called synchronously, in the process that made the change, after
the change is committed. A receiver that raises is logged; it never changes an outcome.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("culm.signals")


class Signal:
    """A list of receivers called with keyword arguments."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: tuple[Callable[..., Any], ...] = ()
        self._lock = threading.Lock()
        # A plain attribute, not a property: the engine asks at every node step.
        self.has_receivers = False

    def connect(self, receiver: Callable[..., Any]) -> None:
        """Add ``receiver`` (once; connecting it again is a no-op)."""
        with self._lock:
            if receiver not in self._receivers:
                self._receivers = (*self._receivers, receiver)
            self.has_receivers = bool(self._receivers)

    def disconnect(self, receiver: Callable[..., Any]) -> None:
        """Remove ``receiver`` if connected."""
        with self._lock:
            self._receivers = tuple(r for r in self._receivers if r != receiver)
            self.has_receivers = bool(self._receivers)

    def send(self, **kwargs: Any) -> None:
        """Call every receiver; exceptions are logged and swallowed."""
        for receiver in self._receivers:
            try:
                receiver(**kwargs)
            except Exception:
                logger.exception("receiver %r of signal %s raised", receiver, self.name)


class PipelineEvent:
    """The payload of ``pipeline_event``: an event type and its data."""

    __slots__ = ("event_type", "data")

    def __init__(self, event_type: str, data: dict[str, Any]) -> None:
        self.event_type = event_type
        self.data = data

    def as_dict(self) -> dict[str, Any]:
        return {"event_type": self.event_type, "data": self.data}

    def __repr__(self) -> str:
        return f"PipelineEvent({self.event_type!r}, {self.data!r})"


post_set_state = Signal("post_set_state")
pipeline_event = Signal("pipeline_event")

__all__ = ["Signal", "PipelineEvent", "post_set_state", "pipeline_event"]
