"""Live state changes for every client from one reader of the change feed (``Runtime.changes``)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from culm._printable import engine_logger

logger = engine_logger("culm.web")


def _change_dict(change: Any) -> dict[str, Any]:
    return {"seq": change.seq, "root_id": change.root_id, "node_id": change.node_id,
            "from_state": change.from_state, "to_state": change.to_state, "version": change.version,
            "loop": change.loop, "time": change.time}


def sse_event(change: dict[str, Any]) -> str:
    """A change as one server-sent event (``id``, ``event: state``, ``data``)."""
    return f"id: {change['seq']}\nevent: state\ndata: {json.dumps(change, separators=(',', ':'))}\n\n"


#: Events a slow client may have waiting before it is told to reload instead.
BACKLOG = 20_000
# Live streams one process serves at once, and one client address holds at once (a browser opens
# at most 6 connections to one server over HTTP/1.1; a console tab holds one stream). Each stream
# holds a connection and a file descriptor for as long as the client keeps it: without a bound, a
# viewer token opening thousands exhausted the service's file descriptors (1,024 by default) and
# slowed every change's delivery.
MAX_STREAMS = 1_000
MAX_STREAMS_PER_CLIENT = 32


class TooManyStreams(Exception):
    """A new live stream would go past MAX_STREAMS or MAX_STREAMS_PER_CLIENT."""


class Subscription:
    """One client's waiting events (of one pipeline, or of every pipeline's root state).

    Lives on the client's event loop: the hub appends encoded events there and wakes it, so a
    thousand idle watchers hold no thread, and a busy one writes what piled up in one chunk.
    """

    def __init__(self, hub: ChangeHub, root_id: str | None, loop: asyncio.AbstractEventLoop,
                 client: str = "") -> None:
        self.hub = hub
        self.root_id = root_id
        self.loop = loop
        self.client = client
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
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[dict[str, Any], str]]] = {}
        self.delivered = 0

    def subscribe(self, root_id: str | None, client: str = "") -> Subscription:
        """A new subscription of ``client`` (its address), fed on the running event loop.

        Raises:
            TooManyStreams: the process serves MAX_STREAMS streams, or ``client`` holds
                MAX_STREAMS_PER_CLIENT, already.
        """
        sub = Subscription(self, root_id, asyncio.get_running_loop(), client)
        with self._lock:
            if len(self._subs) >= MAX_STREAMS:
                raise TooManyStreams(f"this service already serves {MAX_STREAMS:,} live streams")
            if self._per_client.get(client, 0) >= MAX_STREAMS_PER_CLIENT:
                raise TooManyStreams(f"this client already holds {MAX_STREAMS_PER_CLIENT} live streams")
            self._per_client[client] = self._per_client.get(client, 0) + 1
            self._subs.add(sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="culm-web-changes", daemon=True)
                self._thread.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.discard(sub)
                left = self._per_client[sub.client] - 1
                if left:
                    self._per_client[sub.client] = left
                else:
                    del self._per_client[sub.client]

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
            # Without a root: the roots' own changes, and a node failing or leaving FAILED (a
            # RUNNING pipeline's count of failed nodes, which the list shows, changes with it).
            listed = change["node_id"] == root or "FAILED" in (change["to_state"], change["from_state"])
            for sub in subs:
                if sub.root_id == root or (sub.root_id is None and listed):
                    sub.add(text)
                    self.delivered += 1

    def _run(self) -> None:
        after: int | None = None  # every change up to here has been published
        seen: set[int] = set()  # published changes above ``after`` (a gap below them is still open)
        while not self._stop.is_set():
            try:
                if after is None:
                    after = int(self.runtime.last_change_seq())
                # A bounded wait, so that close() is noticed within a second. On PostgreSQL and
                # MySQL a change may commit late with a lower seq: restarting from the highest seq
                # seen would skip it, so the next read starts below the open gap and skips what
                # was already published.
                for change in self.runtime.changes(after=after, timeout=1.0):
                    if change.seq in seen:
                        continue
                    seen.add(change.seq)
                    self.publish(_change_dict(change))
                    while after + 1 in seen:
                        after += 1
                        seen.discard(after)
                if seen:  # a gap that stayed open for a whole read: a rolled-back write, given up
                    after = max(seen)
                    seen.clear()
            except Exception:  # noqa: BLE001 - a database hiccup must not end live updates
                logger.exception("reading state changes failed; retrying")
                self._stop.wait(1.0)
