"""The state rows of recently read pipelines, brought up to date from the change feed.

``get_pipeline_states`` is what users poll, and in an embedded runtime each poll competes with the
engine for the GIL and the database. Reading and converting every state row of a 1,004-node
pipeline at each poll costs milliseconds; most rows have not changed since the last poll. So the
rows of a pipeline (and the entries built from them) are kept, and a later read fetches only the
states of the nodes the feed named since then (none at all when the pipeline is idle). The kept
rows also answer the wait reasons' question "which nodes may wait", so a poll of a running
pipeline does not read its running nodes' states a second time.

This relies on every write of a state row being recorded in the feed in the same transaction
(``Step.set_state`` / ``Step.state_changed``, and ``Step.note`` or the store's own notes for
writes that are no transition). The feed is read from the database, not from in-process
signals, so a second process polling a SQLite file, or a client of a PostgreSQL or MySQL cluster,
keeps its trees the same way. On those server databases rows can become visible out of ``seq``
order (:mod:`culm.core.feed_cursor`): the feed is read through a cursor that waits out holes,
and, should a write ever commit later than that allows, a kept tree is read in full again every
:data:`REREAD_AFTER` seconds.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from culm.core.feed_cursor import FeedCursor
from culm.core.ports import Unit
from culm.core.records import StateRecord
from culm.core.waits import MAY_WAIT, KeptFacts

Entry = dict[str, Any]
# (state row, whether it is the root's own, the row and entry kept for that node until now) -> entry
Build = Callable[[StateRecord, bool, "tuple[StateRecord, Entry] | None"], Entry]

# Changes to catch up with above which forgetting every kept tree is cheaper.
MAX_CATCH_UP = 20_000
# Server databases (rows visible out of seq order): how long a hole below a seen seq is waited for
# (as the change feed does), and how old a kept tree may get before it is read in full again.
SETTLE = 1.0
REREAD_AFTER = 10.0
BATCH = 1000  # change rows per read on server databases
# Server databases: rows below a hole are read again (for a write committing late) at most this
# often, not at every call: a poller of a hundred pipelines calls a hundred times per round.
WINDOW_EVERY = SETTLE / 4
# Server databases: the first catch-up starts this many seqs back, so that a write that took its
# seq before the first read and commits after it is still seen.
START_BACK = 1000


class Tree:
    """One pipeline's kept rows and entries (never changed once kept: replaced whole; callers copy
    the entries they hand out)."""

    __slots__ = ("entries", "records", "dirty", "read_at", "may_wait", "facts")

    def __init__(self, records: dict[str, StateRecord], entries: dict[str, Entry], read_at: float) -> None:
        self.records = records  # {node_id: state row}, the root's own included
        self.entries = entries  # {node_id: entry built from it}
        self.dirty: set[str] = set()  # nodes with changes the rows do not show yet
        self.read_at = read_at  # when every row was last read (monotonic)
        # The records in a state that may wait (waits.MAY_WAIT), once a reader asked (the rows never
        # change: an idle pipeline's polls pick them out of its 1,004 rows once, not at every poll;
        # a refresh carries them over and looks at the changed rows only).
        self.may_wait: list[StateRecord] | None = None
        # What the wait reasons read besides the rows (waits.KeptFacts): a node's live schedules
        # stay valid until the feed names the node, the live processes until it names any node
        # of the pipeline; so a poll of a pipeline that stood still reads none of them again.
        self.facts = KeptFacts()


class StateTrees:
    """The rows of up to ``max_nodes`` nodes of recently read pipelines (least recently read go).

    One cursor in the feed serves every kept pipeline: each call reads the changes since the
    previous call (whichever pipeline that was for) once, and marks their nodes dirty in the
    pipelines kept. So a poller of a hundred pipelines scans each change once, not once per
    pipeline.
    """

    def __init__(self, max_nodes: int = 200_000) -> None:
        self.max_nodes = max_nodes
        self._kept: OrderedDict[str, Tree] = OrderedDict()
        self._nodes = 0
        self._seq = 0  # the highest feed seq caught up with
        self._cursor: FeedCursor | None = None  # server databases: where the catch-up stands
        self._top = 0  # server databases: every seq up to here was read at least once
        self._window_at = 0.0  # ... and when the rows above the cursor were last read again
        self._lock = threading.Lock()  # one caller at a time: reads are short, and serialising them keeps it simple
        self.full_reads = 0  # trees read in full so far (every other call read only what changed)

    def tree(self, unit: Unit, root_id: str, build: Build) -> Tree:
        """The rows and entries of every state of ``root_id`` (the root's own included; none when
        it is unknown), current as of this unit's reads."""
        with self._lock:
            last = unit.last_change_seq()  # this read's snapshot on SQLite: every state read below is as of it
            if last < self._seq:  # an older snapshot than the kept trees (a concurrent reader)
                return self._read(unit, root_id, build)
            if unit.feed_ordered:
                self._catch_up(unit, last)
            else:
                self._catch_up_unordered(unit, last)
            kept = self._kept.get(root_id)
            if kept is None or (not unit.feed_ordered and time.monotonic() - kept.read_at > REREAD_AFTER):
                tree = self._read(unit, root_id, build)
                if tree.records:
                    self._keep(root_id, tree)
                return tree
            self._kept.move_to_end(root_id)
            if kept.dirty:
                kept = self._refreshed(unit, root_id, kept, build)
            return kept

    def tree_of(self, root_id: str) -> Tree | None:
        """The tree kept for ``root_id`` as last read (None when none is kept), for inspection."""
        with self._lock:
            return self._kept.get(root_id)

    def _read(self, unit: Unit, root_id: str, build: Build) -> Tree:
        self.full_reads += 1
        at = time.monotonic()
        records = {r.node_id: r for r in unit.states_of_root(root_id)}
        return Tree(records, {node_id: build(r, node_id == root_id, None) for node_id, r in records.items()}, at)

    def _forget(self) -> None:
        self._kept.clear()
        self._nodes = 0

    def _catch_up(self, unit: Unit, last: int) -> None:
        """Rows visible in seq order (SQLite, the memory store): everything up to ``last`` is there."""
        if last == self._seq:
            return
        if last - self._seq > MAX_CATCH_UP:
            self._forget()
        elif self._kept:
            kept = self._kept
            for root_id, node_id in unit.changes_between(self._seq, last):
                found = kept.get(root_id)
                if found is not None:
                    found.dirty.add(node_id)
        self._seq = last

    def _catch_up_unordered(self, unit: Unit, last: int) -> None:
        """Rows that may become visible out of seq order (PostgreSQL, MySQL): each row marks its
        node dirty the first time it is seen, and the cursor moves past holes once they settle."""
        cursor = self._cursor
        if cursor is None or last - cursor.position > MAX_CATCH_UP:
            if cursor is not None:
                self._forget()
            cursor = self._cursor = FeedCursor(max(0, last - START_BACK), ordered=False, contiguous=True,
                                               settle=SETTLE)
            self._top = self._window_at = 0
        self._seq = max(self._seq, last)
        kept = self._kept
        after = cursor.position
        now = time.monotonic()
        if after < self._top and now - self._window_at < WINDOW_EVERY:
            after = self._top  # only new rows: the holes below are looked at again soon
        else:
            self._window_at = now
        self._top = max(self._top, last)
        while last > after:
            rows = unit.read_changes(after, last, None, BATCH)
            at = time.monotonic()
            for change in rows:
                if cursor.first_sight(change.seq, at):
                    found = kept.get(change.root_id)
                    if found is not None:
                        found.dirty.add(change.node_id)
            if len(rows) < BATCH:
                cursor.read_upto(last, at)
                break
            after = rows[-1].seq
            cursor.read_upto(after, at)

    def _refreshed(self, unit: Unit, root_id: str, kept: Tree, build: Build) -> Tree:
        records, entries = dict(kept.records), dict(kept.entries)
        for node_id, st in unit.get_states(kept.dirty).items():
            if st.root_id == root_id:  # a state created ahead of its node may get its root later
                before = records.get(node_id)
                entries[node_id] = build(st, node_id == root_id, None if before is None else (before, entries[node_id]))
                records[node_id] = st
        fresh = Tree(records, entries, kept.read_at)
        changed = kept.dirty
        schedules = dict(kept.facts.schedules)  # one copy in C: a reader outside the lock may add to it
        for node_id in changed:
            schedules.pop(node_id, None)
        fresh.facts = KeptFacts(schedules)  # the processes are read again
        if kept.may_wait is not None:  # only the changed rows are looked at again, not all 1,004
            fresh.may_wait = [r for r in kept.may_wait if r.node_id not in changed]
            fresh.may_wait += [r for node_id in changed if (r := records.get(node_id)) is not None
                               and r.name in MAY_WAIT]
        self._keep(root_id, fresh)
        return fresh

    def _keep(self, root_id: str, tree: Tree) -> None:
        old = self._kept.pop(root_id, None)
        self._nodes += len(tree.records) - (len(old.records) if old is not None else 0)
        self._kept[root_id] = tree
        while self._nodes > self.max_nodes and len(self._kept) > 1:
            _, gone = self._kept.popitem(last=False)
            self._nodes -= len(gone.records)
