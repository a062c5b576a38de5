"""Signals sent after committed changes: ``post_set_state`` and ``pipeline_event``.

Receivers are called the way Django calls signal receivers, so that receivers written for bamboo
keep working: ``receiver(signal=<the signal>, sender=<the sending class>, **named)``. They are
held strongly and called synchronously, in the process that made the change, after the change is
committed. A receiver that raises is logged; it never changes an outcome (bamboo, through Django,
lets the exception through).

Example::

    from culm.signals import pipeline_event, post_set_state, receiver

    @receiver(post_set_state)
    def on_state(sender, node_id, to_state, **kwargs):
        print(node_id, to_state)

    def on_event(sender, event, **kwargs):
        print(event.event_type, event.data)

    pipeline_event.connect(on_event)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from culm._printable import engine_logger

logger = engine_logger("culm.signals")

F = TypeVar("F", bound=Callable[..., Any])


def reraise_interrupt(exc: BaseException) -> None:
    """Raise ``exc`` again when it is the caller's Ctrl-C (a KeyboardInterrupt on the main thread);
    any other exception user code raises where it must not change an outcome (a receiver, a
    hook) is the user code's failure, SystemExit and GeneratorExit included: let through, it
    killed the engine thread that sent it, with its node RUNNING for ever."""
    if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
        raise exc


class Signal:
    """A list of receivers, each called as ``receiver(signal=self, sender=sender, **named)``."""

    def __init__(self, name: str = "signal", **django_options: Any) -> None:
        """``name`` shows in logs; Django's options (``use_caching``, ``providing_args``) are
        accepted so that a module written for ``django.dispatch.Signal`` imports unchanged."""
        self.name = name
        self._receivers: tuple[tuple[Hashable, Callable[..., Any], Any], ...] = ()
        self._lock = threading.Lock()
        # A plain attribute, not a property: the engine asks at every node step.
        self.has_receivers = False

    def connect(self, receiver: Callable[..., Any], sender: Any = None, weak: bool = True,
                dispatch_uid: Hashable | None = None) -> None:
        """Add ``receiver`` (once; connecting it again is a no-op).

        Args:
            receiver: Called with ``signal``, ``sender`` and the signal's named arguments.
            sender: When given, ``receiver`` only hears this sender (as in Django).
            weak: Accepted for Django's signature; receivers are always held strongly, so that a
                receiver defined in a function keeps receiving.
            dispatch_uid: Identifies the receiver instead of the callable itself (as in Django).
        """
        key = dispatch_uid if dispatch_uid is not None else (receiver, sender)
        with self._lock:
            if all(k != key for k, _, _ in self._receivers):
                self._receivers = (*self._receivers, (key, receiver, sender))
            self.has_receivers = bool(self._receivers)

    def disconnect(self, receiver: Callable[..., Any] | None = None, sender: Any = None,
                   dispatch_uid: Hashable | None = None) -> bool:
        """Remove ``receiver`` (or the one connected under ``dispatch_uid``); True if it was connected."""
        key = dispatch_uid if dispatch_uid is not None else (receiver, sender)
        with self._lock:
            kept = tuple(r for r in self._receivers if r[0] != key)
            removed = len(kept) != len(self._receivers)
            self._receivers = kept
            self.has_receivers = bool(self._receivers)
        return removed

    def send(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Call every receiver; exceptions are logged and swallowed.

        Returns:
            ``(receiver, response)`` pairs as Django's ``send_robust`` does (the exception as the
            response of a receiver that raised).
        """
        responses: list[tuple[Callable[..., Any], Any]] = []
        for _, receiver, only_from in self._receivers:
            if only_from is not None and only_from is not sender:
                continue
            try:
                responses.append((receiver, receiver(signal=self, sender=sender, **named)))
            except BaseException as exc:  # noqa: BLE001 - see reraise_interrupt
                reraise_interrupt(exc)
                logger.exception("receiver %r of signal %s raised", receiver, self.name)
                responses.append((receiver, exc))
        return responses

    def send_robust(self, sender: Any, **named: Any) -> list[tuple[Callable[..., Any], Any]]:
        """Django's name for :meth:`send` (which never lets a receiver's exception through)."""
        return self.send(sender, **named)

    def has_listeners(self, sender: Any = None) -> bool:
        """Whether a send from ``sender`` would reach a receiver (Django's): one connected for every
        sender, or for this one; with no ``sender``, only the former count, as in Django."""
        return any(only_from is None or only_from is sender for _, _, only_from in self._receivers)

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"


def receiver(signal: Signal | list[Signal] | tuple[Signal, ...], **kwargs: Any) -> Callable[[F], F]:
    """Decorator connecting a function to one or several signals (Django's ``receiver``)."""

    def connect(func: F) -> F:
        for sig in signal if isinstance(signal, list | tuple) else (signal,):
            sig.connect(func, **kwargs)
        return func

    return connect


class PipelineEvent:
    """The ``event`` of ``pipeline_event``: an event type and its data (bamboo's ``PipelineEvent``)."""

    __slots__ = ("event_type", "data")

    def __init__(self, event_type: str, data: dict[str, Any]) -> None:
        self.event_type = event_type
        self.data = data

    def as_dict(self) -> dict[str, Any]:
        """``{"event_type": ..., "data": ...}``."""
        return {"event_type": self.event_type, "data": self.data}

    def __repr__(self) -> str:
        return f"PipelineEvent({self.event_type!r}, {self.data!r})"


post_set_state = Signal("post_set_state")
pipeline_event = Signal("pipeline_event")
# Sent right before a component's execute / schedule, in the process that runs it, with the data
# objects the call gets (bamboo-pipeline's signals of the same names).
pre_service_execute = Signal("pre_service_execute")
pre_service_schedule = Signal("pre_service_schedule")
# bamboo sends these when a database error interrupts an engine step that it then replays. culm
# never interrupts a step half-way (a step is one transaction, done again whole after an error),
# so nothing sends them; they exist so that code connecting to them keeps importing.
execute_interrupt = Signal("execute_interrupt")
schedule_interrupt = Signal("schedule_interrupt")

__all__ = ["Signal", "PipelineEvent", "post_set_state", "pipeline_event", "pre_service_execute",
           "pre_service_schedule", "execute_interrupt", "schedule_interrupt", "receiver"]
