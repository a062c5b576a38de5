"""The reads the service needs beyond today's :mod:`culm.api`, in one place.

The pipeline listing (``culm.api.list_pipelines``), wait reasons (``wait_reason`` on each entry of
``get_pipeline_states``) and the state-change feed (``Runtime.changes``) are being added by other
work. Each function here calls the public name when it exists and otherwise falls back on the
smallest stand-in (a listing query, polling of state trees); only this module changes when they land.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from culm import api
from culm.storage import codec
from culm.storage import schema as s

logger = logging.getLogger("culm.web")

LIST_LIMIT_MAX = 500


def _epoch(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else value


def _iso(value: Any) -> Any:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return value


def list_pipelines(runtime: Any, state: str | None = None, name: str | None = None,
                   created_after: datetime | None = None, created_before: datetime | None = None,
                   limit: int = 50, offset: int = 0) -> api.EngineAPIResult:
    """``{"total", "counts": {state: n}, "items": [...]}``, newest first, through the public API when it has it."""
    public = getattr(api, "list_pipelines", None)
    if public is not None:
        return public(runtime, state=state, name=name, created_after=created_after,
                      created_before=created_before, limit=limit, offset=offset)
    return api.EngineAPIResult(True, "success", None, _list_fallback(
        runtime, state, name, _epoch(created_after), _epoch(created_before), limit, offset))


def _list_fallback(runtime: Any, state: str | None, name: str | None, after: float | None,
                   before: float | None, limit: int, offset: int) -> dict[str, Any]:
    p, st = s.pipeline, s.state
    query = select(p.c.id, p.c.created_time, st.c.name, st.c.started_time, st.c.archived_time, p.c.tree).join(
        st, st.c.node_id == p.c.id, isouter=True)
    if after is not None:
        query = query.where(p.c.created_time >= after)
    if before is not None:
        query = query.where(p.c.created_time < before)
    with runtime.store.engine.connect() as conn:
        rows = conn.execute(query.order_by(p.c.created_time.desc(), p.c.id)).fetchall()
    items = []
    for row in rows:
        tree_name = str(codec.loads(row.tree).get("name") or "")
        if name and name.lower() not in tree_name.lower():
            continue
        items.append({"id": row.id, "name": tree_name, "state": row.name or "READY",
                      "created_time": _iso(row.created_time), "started_time": _iso(row.started_time),
                      "archived_time": _iso(row.archived_time)})
    counts: dict[str, int] = {}
    for item in items:
        counts[item["state"]] = counts.get(item["state"], 0) + 1
    if state:
        items = [i for i in items if i["state"] == state]
    return {"total": len(items), "counts": counts, "items": items[offset: offset + limit]}


def pipeline_tree(runtime: Any, root_id: str) -> dict | None:
    """The tree a root pipeline was started with (None when unknown)."""
    with runtime.store.reading() as unit:
        found = unit.get_pipeline(root_id)
    return found[0] if found else None


def pipeline_count(runtime: Any) -> int:
    """How many pipelines the database holds (for the metrics page)."""
    with runtime.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.pipeline)).scalar_one())


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


class Subscription:
    """One client's queue of changes (of one pipeline, or of every pipeline's root state).

    The hub's thread hands changes over to the client's event loop; the stream awaits them there,
    so a thousand idle watchers hold no thread.
    """

    def __init__(self, hub: ChangeHub, root_id: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.root_id = root_id
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self.overflowed = False

    def offer(self, change: dict[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._put, change)
        except RuntimeError:  # the loop is closed: the client is gone
            self.hub.unsubscribe(self)

    def _put(self, change: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True  # the client reloads the whole state tree when told

    async def get(self, timeout: float) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.hub.unsubscribe(self)


class ChangeHub:
    """Reads state changes once (one thread) and hands each to the subscribers that want it.

    With ``Runtime.changes`` (the change feed) the thread follows the feed; without it, the thread
    polls the state trees of watched pipelines and the root states of recent ones, and reports
    differences in the same shape.

    Args:
        runtime: the service's runtime.
        poll_seconds: how often the stand-in polls.
    """

    def __init__(self, runtime: Any, poll_seconds: float = 0.5) -> None:
        self.runtime = runtime
        self.poll_seconds = poll_seconds
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0

    @property
    def uses_feed(self) -> bool:
        return hasattr(self.runtime, "changes")

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
        with self._lock:
            subs = list(self._subs)
        is_root = change["node_id"] == change["root_id"]
        for sub in subs:
            if sub.root_id == change["root_id"] or (sub.root_id is None and is_root):
                sub.offer(change)
                self.delivered += 1

    def _run(self) -> None:
        source: Callable[[], Iterator[dict[str, Any]]] = self._follow_feed if self.uses_feed else self._poll
        while not self._stop.is_set():
            try:
                for change in source():
                    self.publish(change)
            except Exception:  # noqa: BLE001 - a database hiccup must not end live updates
                logger.exception("reading state changes failed; retrying")
                self._stop.wait(1.0)

    def _follow_feed(self) -> Iterator[dict[str, Any]]:
        after = getattr(self, "_seq", None)
        if after is None:
            after = self.runtime.last_change_seq()
        while not self._stop.is_set():
            for change in self.runtime.changes(after=after, timeout=1.0):
                after = self._seq = change.seq
                yield _change_dict(change)

    def _poll(self) -> Iterator[dict[str, Any]]:
        known: dict[str, tuple[str, str]] = {}
        roots_seen: dict[str, str] = {}
        seq = 0
        while not self._stop.is_set():
            with self._lock:
                watched = {sub.root_id for sub in self._subs}
            changes: list[tuple[str, str, str, str | None, str, int]] = []
            if None in watched:
                for item in _list_fallback(self.runtime, None, None, None, None, 200, 0)["items"]:
                    if roots_seen.get(item["id"]) != item["state"]:
                        changes.append((item["id"], item["id"], item["state"], roots_seen.get(item["id"]), "", 1))
                        roots_seen[item["id"]] = item["state"]
            for root_id in sorted(r for r in watched if r is not None):
                states = api.get_pipeline_states(self.runtime, root_id).data or {}
                entries = [states[root_id], *states[root_id]["children"].values()] if states else []
                for e in entries:
                    key = e["id"]
                    now = (e["state"], e["version"])
                    if known.get(key) != now:
                        before = known.get(key, (None, ""))[0]
                        known[key] = now
                        changes.append((root_id, key, e["state"], before, e["version"], e["loop"]))
            for root_id, node_id, to_state, from_state, version, loop in changes:
                seq += 1
                yield {"seq": seq, "root_id": root_id, "node_id": node_id, "from_state": from_state,
                       "to_state": to_state, "version": version, "loop": loop, "time": time.time()}
            self._stop.wait(self.poll_seconds)
