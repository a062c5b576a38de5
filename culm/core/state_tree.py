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
from collections.abc import Callable, Collection
from typing import Any

from culm.core import states
from culm.core.feed_cursor import FeedCursor
from culm.core.ports import Unit
from culm.core.records import EXECUTE, ProcessPosition, ScheduleRecord, StateRecord, TaskRecord
from culm.core.waits import MAY_WAIT, STALLED_AFTER, KeptFacts, moved_since

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
UNBOUNDED = 2**62  # server databases: read the feed to its end (the rows read say where that is)
ALL = "*"  # (a node id no pipeline has) the catch-up forgot every kept tree
# Server databases: rows below a hole are read again (for a write committing late) at most this
# often, not at every call: a poller of a hundred pipelines calls a hundred times per round.
WINDOW_EVERY = SETTLE / 4
# Server databases: the first catch-up starts this many seqs back, so that a write that took its
# seq before the first read and commits after it is still seen.
START_BACK = 1000


class Tree:
    """One pipeline's kept rows and entries (never changed once kept: replaced whole; callers copy
    the entries they hand out)."""

    __slots__ = ("entries", "records", "dirty", "read_at", "seq", "may_wait", "facts", "reasons")

    def __init__(self, records: dict[str, StateRecord], entries: dict[str, Entry], read_at: float) -> None:
        self.records = records  # {node_id: state row}, the root's own included
        self.entries = entries  # {node_id: entry built from it}
        self.dirty: set[str] = set()  # nodes with changes the rows do not show yet
        self.read_at = read_at  # when every row was last read (monotonic)
        # Rows visible in seq order (SQLite, the memory store): the feed's seq this tree is caught up
        # with: every change up to it is in the rows, or its node is in ``dirty``.
        self.seq = 0
        # The records in a state that may wait (waits.MAY_WAIT), once a reader asked (the rows never
        # change: an idle pipeline's polls pick them out of its 1,004 rows once, not at every poll;
        # a refresh carries them over and looks at the changed rows only).
        self.may_wait: list[StateRecord] | None = None
        # What the wait reasons read besides the rows (waits.KeptFacts): a node's live schedules
        # stay valid until the feed names the node, the live processes until it names any node
        # of the pipeline; so a poll of a pipeline that stood still reads none of them again.
        self.facts = KeptFacts()
        # The wait reasons made from this tree's rows and facts, for the polls that find it
        # unchanged (culm.core.queries.pipeline_states): the KeptFacts and processes they were
        # made from, {node_id: reason} (None: seen once, kept at the next poll), the live root's
        # id and from when its stalled check is made (waits.stalled_since); None when none may be
        # reused (waits.WaitFacts.reusable).
        self.reasons: tuple[KeptFacts, list[ProcessPosition] | None, dict[str, Entry] | None, str | None, float] | None = None


class StateTrees:
    """The rows of up to ``max_nodes`` nodes of recently read pipelines (least recently read go).

    One cursor in the feed serves every kept pipeline: each call reads the changes since the
    previous call (whichever pipeline that was for) once, and marks their nodes dirty in the
    pipelines kept. So a poller of a hundred pipelines scans each change once, not once per
    pipeline. Rows visible in seq order (SQLite, the memory store), a call for the same pipeline
    as the previous one (a poller of one pipeline) reads only that pipeline's changes instead,
    with the rows of the nodes they name, in one statement (:meth:`_tree_own`): each kept tree
    knows the seq it is caught up with (``Tree.seq``; nodes changed since are marked dirty).
    """

    def __init__(self, max_nodes: int = 200_000) -> None:
        self.max_nodes = max_nodes
        self._kept: OrderedDict[str, Tree] = OrderedDict()
        self._nodes = 0
        self._seq = 0  # rows visible in seq order: the common cursor, caught up with by every kept tree
        self._last_root: str | None = None  # ... and the pipeline the previous call was for
        self._cursor: FeedCursor | None = None  # server databases: where the catch-up stands
        self._top = 0  # server databases: every seq up to here was read at least once
        self._window_at = 0.0  # ... and when the rows above the cursor were last read again
        self._lock = threading.Lock()  # one caller at a time: reads are short, and serialising them keeps it simple
        self.full_reads = 0  # trees read in full so far (every other call read only what changed)

    def tree(self, unit: Unit, root_id: str, build: Build) -> tuple[Tree, list[TaskRecord] | None]:
        """The rows and entries of every state of ``root_id`` (the root's own included; none when
        it is unknown), current as of this unit's reads; and the pipeline's EXECUTE tasks when
        they were read with them (for the wait reasons' stalled check), else None."""
        with self._lock:
            if not unit.feed_ordered:
                return self._tree_settled(unit, root_id, build)
            # Two ways to catch up (both in this read's snapshot: every state read below is as of it).
            kept = self._kept.get(root_id)
            if kept is not None and self._last_root == root_id:
                return self._tree_own(unit, root_id, kept, build), None
            self._last_root = root_id
            last, changed = unit.changes_since(self._seq, MAX_CATCH_UP)
            if last < self._seq:  # an older snapshot than the kept trees (a concurrent reader)
                return self._read(unit, root_id, build), None
            self._catch_up(last, changed)
            kept = self._kept.get(root_id)
            if kept is None:
                tree = self._read(unit, root_id, build)
                tree.seq = last
                if tree.records:
                    self._keep(root_id, tree)
                return tree, None
            self._kept.move_to_end(root_id)
            if kept.dirty:
                # (In turn, not together: SQLite has no round trips to save, and read_facts then
                # reads the schedules of the nodes that run, not of every changed one.)
                kept = self._refreshed(unit, root_id, kept, build, unit.get_states(kept.dirty), None)
            kept.seq = last
            return kept, None

    def _tree_own(self, unit: Unit, root_id: str, kept: Tree, build: Build) -> Tree:
        """Rows visible in seq order, asked for the same pipeline as the previous call (one
        pipeline polled): only its own changes since its tree was last caught up, the rows of the
        nodes they name read in one statement through the feed's index by root. Other kept trees
        are not marked (the feed's rows of every pipeline are not read): the next call for another
        pipeline catches up from the common cursor, which this leaves where it was."""
        last = unit.last_change_seq()
        if last < self._seq or last < kept.seq:  # an older snapshot than the kept trees (a concurrent reader)
            return self._read(unit, root_id, build)
        self._kept.move_to_end(root_id)
        if last == kept.seq and not kept.dirty:  # the feed has not moved since this tree was caught up
            return kept
        if last - kept.seq > MAX_CATCH_UP:  # cheaper read whole
            tree = self._read(unit, root_id, build)
            tree.seq = last
            if tree.records:
                self._keep(root_id, tree)
            return tree
        named = unit.changed_states(root_id, kept.seq, last) if last > kept.seq else []
        rows = {node_id: st for node_id, st in named if st is not None}
        changed = {node_id for node_id, _ in named}
        # Marked by an earlier catch-up from the common cursor (already in ``named`` unless older).
        if kept.dirty - changed:
            rows.update(unit.get_states(kept.dirty - changed))
            changed |= kept.dirty
        if not changed:
            kept.seq = last
            return kept
        fresh = self._refreshed(unit, root_id, kept, build, rows, None, changed=changed)
        fresh.seq = last
        return fresh

    def tree_of(self, root_id: str) -> Tree | None:
        """The tree kept for ``root_id`` as last read (None when none is kept), for inspection."""
        with self._lock:
            return self._kept.get(root_id)

    def _read(self, unit: Unit, root_id: str, build: Build, rows: list[StateRecord] | None = None) -> Tree:
        self.full_reads += 1
        at = time.monotonic()
        records = {r.node_id: r for r in (unit.states_of_root(root_id) if rows is None else rows)}
        return Tree(records, {node_id: build(r, node_id == root_id, None) for node_id, r in records.items()}, at)

    def _forget(self) -> None:
        self._kept.clear()
        self._nodes = 0

    def _catch_up(self, last: int, changed: list[tuple[str, str]]) -> None:
        """Rows visible in seq order (SQLite, the memory store): everything up to ``last`` is
        there, and ``changed`` names the nodes that moved since ``self._seq`` (Unit.changes_since)."""
        if last == self._seq:
            return
        if last - self._seq > MAX_CATCH_UP:
            self._forget()
        elif self._kept:
            kept = self._kept
            for root_id, node_id in changed:
                found = kept.get(root_id)
                if found is not None:
                    found.dirty.add(node_id)
        self._seq = last

    # -- server databases: rows visible out of seq order -----------------------------------------
    # A poll costs one round trip whatever it finds: the feed is read from the cursor on (no
    # MAX(seq) first: the rows read say how far it goes), and the reads the asked pipeline needs
    # anyway go in the same round trip: its rows when it is not kept (or kept too long), or the
    # rows, live schedules and processes of its nodes already marked dirty by an earlier call's
    # catch-up (a poller of many pipelines), and its EXECUTE tasks when the stalled check will
    # want them. Only changes this read itself finds for the pipeline take a second round trip.

    def _tree_settled(self, unit: Unit, root_id: str, build: Build) -> tuple[Tree, list[TaskRecord] | None]:
        """``_tree_unordered``, read in full again when the root's state changed. A writer slower
        than SETTLE between taking its seq and committing leaves a hole the cursor gives up on, so
        a kept tree may miss a change until REREAD_AFTER: a root read FINISHED with a child still
        RUNNING. Every change before the root's own committed before it, so a full read after
        seeing the root move holds them all (one read per root transition)."""
        before = self._kept.get(root_id)
        was = None if before is None else before.records.get(root_id)
        full_reads = self.full_reads
        tree, execute = self._tree_unordered(unit, root_id, build)
        now = tree.records.get(root_id)
        if was is not None and now is not None and now.name != was.name and self.full_reads == full_reads:
            tree = self._read(unit, root_id, build)
            if tree.records:
                self._keep(root_id, tree)
        return tree, execute

    def _tree_unordered(self, unit: Unit, root_id: str, build: Build) -> tuple[Tree, list[TaskRecord] | None]:
        kept = self._kept.get(root_id)
        old = None  # a tree kept too long: read in full again (see REREAD_AFTER)
        if kept is not None and time.monotonic() - kept.read_at > REREAD_AFTER:
            old, kept = kept, None
        calls: list[tuple[str, tuple[Any, ...]]] = []
        ahead: set[str] = set()  # dirty nodes whose rows go with the feed's read
        if kept is None:
            calls.append(("states_of_root", (root_id,)))
            if old is not None and old.may_wait is not None:
                # What its wait reasons read last time, read again with the rows (what they need
                # besides is read after them, as for a first read).
                ahead = {r.node_id for r in old.may_wait if r.name == states.RUNNING}
                calls += _refresh_calls(root_id, ahead, _alive(old, root_id))[1:]
        elif kept.dirty:
            ahead = set(kept.dirty)
            calls += _refresh_calls(root_id, ahead, _alive(kept, root_id))
        basis = kept if kept is not None else old  # what the pipeline looked like last time
        stalled = basis is not None and _alive(basis, root_id) and _stalled_check(basis, root_id)
        if stalled:
            calls.append(("tasks_of_root", (root_id, EXECUTE)))
        caught = self._catch_up_unordered(unit, calls, root_id, window=bool(kept is not None and kept.dirty))
        if caught is None:  # far behind: every kept tree was forgotten
            tree = self._read(unit, root_id, build)
            if tree.records:
                self._keep(root_id, tree)
            return tree, None
        answers, late = caught
        execute = answers.pop() if stalled else None
        if kept is None:
            tree = self._read(unit, root_id, build, answers[0])
            if not tree.records:
                return tree, execute
            if old is not None:
                tree.facts = _facts_read(ahead, answers[1:], old.facts.node_types)
            tree.dirty |= late  # named by the feed after the rows were read: read again below
            self._keep(root_id, tree)
            kept, ahead, answers = tree, set(), []
        else:
            self._kept.move_to_end(root_id)
        if not kept.dirty:
            return kept, execute
        # The nodes read ahead are current, unless a later batch of this catch-up named them again.
        rest = (kept.dirty - ahead) | (late & ahead)
        if ahead:
            kept = self._refreshed(unit, root_id, kept, build, *answers, keep_processes=not rest)
            if not rest:
                return kept, execute
            kept.dirty = rest
        reads = unit.read_together(_refresh_calls(root_id, rest, _alive(kept, root_id)))
        return self._refreshed(unit, root_id, kept, build, *reads), execute

    def _catch_up_unordered(self, unit: Unit, calls: list[tuple[str, tuple[Any, ...]]],
                            root_id: str, window: bool) -> tuple[list[Any], set[str]] | None:
        """Read the feed from the cursor on, each row marking its node dirty the first time it is
        seen; the cursor moves past holes once they settle. ``calls`` go with the first read
        (read_together): returns their answers and the nodes of ``root_id`` named by rows read
        after them (none unless the catch-up takes more than one batch), or None when it was so
        far behind that it forgot every kept tree instead.

        Between window reads only rows above the top are read, but a change of ``root_id`` may
        sit in a hole below it (its seq taken before rows read already, committed after that read)
        while a later change it caused is above: its root FINISHED read with a child still
        RUNNING. So the window is read whenever the asked pipeline moved: at once when an earlier
        call marked it (``window``), else right after a read found it."""
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = FeedCursor(max(0, unit.last_change_seq() - START_BACK), ordered=False,
                                               contiguous=True, settle=SETTLE)
            self._top = self._window_at = 0
        kept = self._kept
        after = cursor.position
        now = time.monotonic()
        above_top = not window and after < self._top and now - self._window_at < WINDOW_EVERY
        if above_top:
            after = self._top  # only new rows: the holes below are looked at again soon
        else:
            self._window_at = now
        rows, *answers = unit.read_together([("read_changes", (after, UNBOUNDED, None, BATCH)), *calls])
        late: set[str] = set()
        first = True
        while True:
            at = time.monotonic()
            moved = False
            for change in rows:
                moved = moved or change.root_id == root_id
                if cursor.first_sight(change.seq, at):
                    found = kept.get(change.root_id)
                    if found is not None:
                        found.dirty.add(change.node_id)
                    if not first and change.root_id == root_id:
                        late.add(change.node_id)
            if rows:
                after = rows[-1].seq
                self._top = max(self._top, after)
                cursor.read_upto(after, at)
            if above_top and moved:  # read the holes below the top too (see above)
                above_top, first, self._window_at = False, False, at
                rows = unit.read_changes(cursor.position, UNBOUNDED, None, BATCH)
                continue
            if len(rows) < BATCH:
                return answers, late
            if first and unit.last_change_seq() - cursor.position > MAX_CATCH_UP:
                self._forget()  # cheaper than marking: start again near the end
                self._cursor = None
                return None
            first = False
            rows = unit.read_changes(after, UNBOUNDED, None, BATCH)

    def _refreshed(self, unit: Unit, root_id: str, kept: Tree, build: Build, states_read: dict[str, StateRecord],
                   schedules_read: list[ScheduleRecord] | None, processes: list[ProcessPosition] | None = None,
                   *, keep_processes: bool = True, changed: Collection[str] | None = None) -> Tree:
        """``kept`` with the rows of its dirty nodes (``changed`` when given) as read
        (``states_read``), and the live schedules of those nodes (``schedules_read``) and the
        pipeline's live processes (``processes``) in its kept facts (None: not read; read_facts
        reads what it needs)."""
        records, entries = dict(kept.records), dict(kept.entries)
        for node_id, st in states_read.items():
            if st.root_id == root_id:  # a state created ahead of its node may get its root later
                before = records.get(node_id)
                entries[node_id] = build(st, node_id == root_id, None if before is None else (before, entries[node_id]))
                records[node_id] = st
        fresh = Tree(records, entries, kept.read_at)
        if changed is None:
            changed = kept.dirty
        schedules = dict(kept.facts.schedules)  # one copy in C: a reader outside the lock may add to it
        for node_id in changed:
            schedules.pop(node_id, None)
        if schedules_read is not None:
            schedules.update(_facts_read(states_read, [schedules_read], {}).schedules)
        # The processes as read with the rows (None: read again when asked).
        fresh.facts = KeptFacts(schedules, processes if keep_processes else None, kept.facts.node_types)
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


def _alive(tree: Tree, root_id: str) -> bool:
    """Whether the pipeline's root was RUNNING or SUSPENDED as ``tree`` last read it."""
    root = tree.records.get(root_id)
    return root is not None and root.name in (states.RUNNING, states.SUSPENDED)


def _refresh_calls(root_id: str, nodes: Collection[str], alive: bool) -> list[tuple[str, tuple[Any, ...]]]:
    """The reads of a refresh of ``nodes`` (read_together): their rows, their live schedules,
    and, while the pipeline is alive, its live processes (any change may have moved one)."""
    ids = sorted(nodes)
    calls: list[tuple[str, tuple[Any, ...]]] = [("get_states", (ids,)), ("live_schedules", (ids,))]
    if alive:
        calls.append(("live_process_positions", (root_id,)))
    return calls


def _facts_read(nodes: Collection[str], answers: list[Any], node_types: dict[str, str]) -> KeptFacts:
    """Kept facts from the answers of ``_refresh_calls(...)[1:]`` for ``nodes`` (the live
    schedules, and the live processes when they were read), and the node types known."""
    schedules: dict[str, list[ScheduleRecord]] = {node_id: [] for node_id in nodes}
    if answers:
        for sched in answers[0]:
            if sched.node_id in schedules:  # (MySQL's collation matches ids of another case too)
                schedules[sched.node_id].append(sched)
    return KeptFacts(schedules, answers[1] if len(answers) > 1 else None, node_types)


def _stalled_check(tree: Tree, root_id: str) -> bool:
    """Whether the wait reasons of ``tree`` as kept will look for stalled steps (no node of it
    started or ended for STALLED_AFTER seconds: culm.core.waits.read_facts). Rows read since
    only move that later, so a tree that will not look is never mistaken for one that will."""
    if tree.may_wait is None:
        return False
    return not moved_since(time.time() - STALLED_AFTER, tree.may_wait, tree.records.get(root_id))
