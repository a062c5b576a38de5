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

from culm.core.records import StateRecord

Entry = dict[str, Any]
Build = Callable[[StateRecord, bool], Entry]

# Changes since the kept seq above which a full read is cheaper than scanning them.
MAX_CATCH_UP = 5000


class _Kept:
    __slots__ = ("seq", "entries")

    def __init__(self, seq: int, entries: dict[str, Entry]) -> None:
        self.seq = seq
        self.entries = entries  # never changed once kept: replaced whole, so readers need no lock


class StateTrees:
    """Entries of up to ``max_nodes`` nodes of recently read pipelines (least recently read go)."""

    def __init__(self, max_nodes: int = 200_000) -> None:
        self.max_nodes = max_nodes
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._nodes = 0
        self._lock = threading.Lock()

    def entries(self, unit: Any, root_id: str, build: Build) -> dict[str, Entry]:
        """{node_id: entry} of every state of ``root_id`` (the root's own included), shared with
        the cache: copy an entry before handing it out."""
        if not unit.feed_ordered:
            return {r.node_id: build(r, r.node_id == root_id) for r in unit.states_of_root(root_id)}
        last = unit.last_change_seq()
        with self._lock:
            kept = self._kept.get(root_id)
            if kept is not None:
                self._kept.move_to_end(root_id)
        if kept is not None and kept.seq == last:
            return kept.entries
        if kept is None or not 0 < last - kept.seq <= MAX_CATCH_UP:
            entries = {r.node_id: build(r, r.node_id == root_id) for r in unit.states_of_root(root_id)}
        else:
            entries = self._caught_up(unit, root_id, kept, last, build)
        if entries:
            self._keep(root_id, _Kept(last, entries))
        return entries

    @staticmethod
    def _caught_up(unit: Any, root_id: str, kept: _Kept, last: int, build: Build) -> dict[str, Entry]:
        changed = unit.nodes_changed(root_id, kept.seq, last)
        if not changed:
            return kept.entries
        entries = dict(kept.entries)
        for node_id, st in unit.get_states(changed).items():
            if st.root_id == root_id:  # a state created ahead of its node gets its root later
                entries[node_id] = build(st, node_id == root_id)
        return entries

    def _keep(self, root_id: str, kept: _Kept) -> None:
        with self._lock:
            old = self._kept.pop(root_id, None)
            self._nodes += len(kept.entries) - (len(old.entries) if old is not None else 0)
            self._kept[root_id] = kept
            while self._nodes > self.max_nodes and len(self._kept) > 1:
                _, gone = self._kept.popitem(last=False)
                self._nodes -= len(gone.entries)
