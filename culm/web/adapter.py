"""What the service reads beyond single :mod:`culm.api` calls, in one place.

The listing is ``culm.api.list_pipelines``; live changes come from the state-change feed
(``Runtime.changes``), read by one thread and fanned out to every client. Wait reasons
(``wait_reason`` on each entry of ``get_pipeline_states``) are being added by other work: until they
land, :func:`states_with_wait_reasons` fills in the little it can tell from the state alone. The
stored tree of a pipeline has no public reader yet; :func:`pipeline_tree` is it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import datetime
from typing import Any

from culm import api

logger = logging.getLogger("culm.web")

LIST_LIMIT_MAX = 500


def list_pipelines(runtime: Any, state: str | None = None, name: str | None = None,
                   created_after: datetime | None = None, created_before: datetime | None = None,
                   limit: int = 50, offset: int = 0) -> api.EngineAPIResult:
    """``{"total", "counts": {state: n}, "items": [...]}``, newest first."""
    return api.list_pipelines(runtime, state=state, name=name, created_after=created_after,
                              created_before=created_before, limit=limit, offset=offset)


def pipeline_tree(runtime: Any, root_id: str) -> dict | None:
    """The tree a root pipeline was started with (None when unknown)."""
    with runtime.store.reading() as unit:
        found = unit.get_pipeline(root_id)
    return found[0] if found else None


def states_with_wait_reasons(runtime: Any, root_id: str) -> api.EngineAPIResult:
    """The flat state tree of a pipeline, each entry with a ``wait_reason`` (``{"kind", "text"}`` or None)."""
    found = api.get_pipeline_states(runtime, root_id)
    if not found.result or not found.data:
        return found
    for entry in found.data[root_id]["children"].values():
        entry.setdefault("wait_reason", _fallback_reason(entry))
    found.data[root_id].setdefault("wait_reason", _fallback_reason(found.data[root_id]))
    return found


def _fallback_reason(entry: dict) -> dict | None:
    state = entry["state"]
    if state == "FAILED":
        return {"kind": "failed", "text": "failed: retry, skip or revoke it"}
    if state == "SUSPENDED":
        return {"kind": "paused", "text": "paused by an operator"}
    return None


# ---------------------------------------------------------------------------------------------
# Live changes: one reader, fanned out to every subscriber
# ---------------------------------------------------------------------------------------------


def _change_dict(change: Any) -> dict[str, Any]:
    return {"seq": change.seq, "root_id": change.root_id, "node_id": change.node_id,
            "from_state": change.from_state, "to_state": change.to_state, "version": change.version,
            "loop": change.loop, "time": change.time}


def sse_event(change: dict[str, Any]) -> str:
    """A change as one server-sent event (``id``, ``event: state``, ``data``)."""
    return f"id: {change['seq']}\nevent: state\ndata: {json.dumps(change, separators=(',', ':'))}\n\n"


#: Events a slow client may have waiting before it is told to reload instead.
BACKLOG = 20_000


class Subscription:
    """One client's waiting events (of one pipeline, or of every pipeline's root state).

    Lives on the client's event loop: the hub appends encoded events there and wakes it, so a
    thousand idle watchers hold no thread, and a busy one writes what piled up in one chunk.
    """

    def __init__(self, hub: ChangeHub, root_id: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.root_id = root_id
        self.loop = loop
        self.pending: list[str] = []
        self.wake = asyncio.Event()
        self.overflowed = False

    def add(self, text: str) -> None:
        if len(self.pending) >= BACKLOG:
            self.pending.clear()
            self.overflowed = True  # the client reloads the whole state tree when told
        self.pending.append(text)
        self.wake.set()

    async def take(self, timeout: float) -> str:
        """Every event waiting now, as one chunk ("" when none came within ``timeout``)."""
        if not self.pending:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return ""
        self.wake.clear()
        chunk = "".join(self.pending)
        self.pending.clear()
        if self.overflowed:
            self.overflowed = False
            chunk = "event: reload\ndata: {}\n\n" + chunk
        return chunk

    def close(self) -> None:
        self.hub.unsubscribe(self)


class ChangeHub:
    """Follows the change feed in one thread and hands each change to the subscribers that want it:
    those of its pipeline, and for a root pipeline's own state, those of every pipeline (the list).

    Each change is encoded once; the thread passes batches to each event loop with one wake-up,
    and the loop hands the text to its subscribers.

    Args:
        runtime: the service's runtime.
    """

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[dict[str, Any], str]]] = {}
        self.delivered = 0

    def subscribe(self, root_id: str | None) -> Subscription:
        """A new subscription, fed on the running event loop."""
        sub = Subscription(self, root_id, asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="culm-web-changes", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def publish(self, change: dict[str, Any]) -> None:
        """Queue ``change`` for the event loops that have subscribers (called by the reader thread)."""
        text = sse_event(change)
        with self._lock:
            loops = {sub.loop for sub in self._subs}
            wake = []
            for loop in loops:
                box = self._outbox.setdefault(loop, [])
                if not box:
                    wake.append(loop)
                box.append((change, text))
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._deliver, loop)
            except RuntimeError:  # that loop is closed: its clients are gone
                with self._lock:
                    self._outbox.pop(loop, None)
                    self._subs = {s for s in self._subs if s.loop is not loop}

    def _deliver(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._outbox.pop(loop, [])
            subs = [s for s in self._subs if s.loop is loop]
        for change, text in batch:
            root = change["root_id"]
            is_root = change["node_id"] == root
            for sub in subs:
                if sub.root_id == root or (sub.root_id is None and is_root):
                    sub.add(text)
                    self.delivered += 1

    def _run(self) -> None:
        after: int | None = None
        while not self._stop.is_set():
            try:
                if after is None:
                    after = int(self.runtime.last_change_seq())
                # A bounded wait, so that close() is noticed within a second.
                for change in self.runtime.changes(after=after, timeout=1.0):
                    after = change.seq
                    self.publish(_change_dict(change))
            except Exception:  # noqa: BLE001 - a database hiccup must not end live updates
                logger.exception("reading state changes failed; retrying")
                self._stop.wait(1.0)
