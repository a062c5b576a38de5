"""Hooks for a metrics exporter (``culm.web.metrics``); each is None, and free, unless one is set.

The core cannot import the exporter (it depends on the core, not the other way round), so the
exporter installs plain callables here. They run outside any transaction and must be fast.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``(kind, code, version, ok, raised, seconds)`` after each component call (kind: "execute" or
#: "schedule"; raised: the call failed by an exception).
call_observer: Callable[[str, str, str | None, bool, bool, float], None] | None = None

#: ``(seconds,)`` after each committed engine step (one transaction and its follow-up work).
step_observer: Callable[[float], None] | None = None

#: ``(count,)`` whenever the number of user-code threads let go of (a node timeout cut their call
#: off, see ``culm.dispatch.threads``) that still run changes in this process: how many now.
abandoned_observer: Callable[[int], None] | None = None
