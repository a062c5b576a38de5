"""The state entries of recently read pipelines, brought up to date from the change feed.

``get_pipeline_states`` is what users poll, and in an embedded runtime each poll competes with the
engine for the GIL and the database. Reading and converting every state row of a 1,004-node
pipeline at each poll costs milliseconds; most rows have not changed since the last poll. So the
entries of a pipeline are kept with the feed's ``seq`` they are current at, and a later read
fetches only the states of the nodes the feed names since then (none at all when the pipeline is
idle).

This relies on every write of a field an entry shows being recorded in the feed in the same
transaction (``Step.state_changed`` / ``Step.note_change``), and on the feed being read in commit
order: true of SQLite (one writer at a time); stores that are not (``unit.feed_ordered`` false:
PostgreSQL, MySQL) are read in full each time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from culm.core.ports import Unit
from culm.core.records import StateRecord

Entry = dict[str, Any]
Build = Callable[[StateRecord, bool], Entry]

# Changes to catch up with above which forgetting every kept entry is cheaper.
MAX_CATCH_UP = 20_000


class _Kept:
    __slots__ = ("entries", "dirty")

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries  # never changed once kept: replaced whole (callers copy what they hand out)
        self.dirty: set[str] = set()  # nodes with changes the entries do not show yet


class StateTrees:
    """Entries of up to ``max_nodes`` nodes of recently read pipelines (least recently read go).

    One cursor in the feed serves every kept pipeline: each call reads the changes since the
    previous call (whichever pipeline that was for) once, and marks their nodes dirty in the
    pipelines kept. So a poller of a hundred pipelines scans each change once, not once per
    pipeline.
    """

    def __init__(self, max_nodes: int = 200_000) -> None:
        self.max_nodes = max_nodes
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._nodes = 0
        self._seq = 0  # every change up to here is shown or marked dirty in the kept entries
        self._lock = threading.Lock()  # one caller at a time: reads are short, and serialising them keeps it simple

    def entries(self, unit: Unit, root_id: str, build: Build) -> dict[str, Entry]:
        """{node_id: entry} of every state of ``root_id`` (the root's own included), shared with
        the cache: copy an entry before handing it out."""
        if not unit.feed_ordered:
            return self._read(unit, root_id, build)
        with self._lock:
            last = unit.last_change_seq()  # this read's snapshot: every state read below is as of it
            if last < self._seq:  # an older snapshot than the kept entries (a concurrent reader)
                return self._read(unit, root_id, build)
            self._catch_up(unit, last)
            kept = self._kept.get(root_id)
            if kept is None:
                entries = self._read(unit, root_id, build)
                if entries:
                    self._keep(root_id, _Kept(entries))
                return entries
            self._kept.move_to_end(root_id)
            if kept.dirty:
                kept = self._refreshed(unit, root_id, kept, build)
            return kept.entries

    @staticmethod
    def _read(unit: Unit, root_id: str, build: Build) -> dict[str, Entry]:
        return {r.node_id: build(r, r.node_id == root_id) for r in unit.states_of_root(root_id)}

    def _catch_up(self, unit: Unit, last: int) -> None:
        if last == self._seq:
            return
        if last - self._seq > MAX_CATCH_UP:
            self._kept.clear()
            self._nodes = 0
        elif self._kept:
            kept = self._kept
            for root_id, node_id in unit.changes_between(self._seq, last):
                found = kept.get(root_id)
                if found is not None:
                    found.dirty.add(node_id)
        self._seq = last

    def _refreshed(self, unit: Unit, root_id: str, kept: _Kept, build: Build) -> _Kept:
        entries = dict(kept.entries)
        for node_id, st in unit.get_states(kept.dirty).items():
            if st.root_id == root_id:  # a state created ahead of its node may get its root later
                entries[node_id] = build(st, node_id == root_id)
        fresh = _Kept(entries)
        self._keep(root_id, fresh)
        return fresh

    def _keep(self, root_id: str, kept: _Kept) -> None:
        old = self._kept.pop(root_id, None)
        self._nodes += len(kept.entries) - (len(old.entries) if old is not None else 0)
        self._kept[root_id] = kept
        while self._nodes > self.max_nodes and len(self._kept) > 1:
            _, gone = self._kept.popitem(last=False)
            self._nodes -= len(gone.entries)
