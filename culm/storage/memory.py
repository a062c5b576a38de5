"""MemoryStore: the storage the core needs, held in this process's memory (tests, experiments).

Nothing is durable: the data lives as long as the store object (``Runtime("memory://")``). It is
a real store, not a stub: compare-and-set on state versions, leases, the task outbox, histories,
logs and the change feed behave as on SQLite, and the storage contract suite
(``tests/integration/test_storage_contract.py``) checks it against the SQL backends.

Transactions. One transaction at a time holds the store (a lock, as SQLite's one writer); a
read-only unit waits for it too, so it always sees the last committed state. A transaction writes
into layers of its own (copy on write: committed rows are never changed in place), and a savepoint
is one more layer; the commit folds the layers into the committed tables at once. An exception
drops the layers, so a rolled-back transaction leaves nothing behind.

Crashes. :meth:`MemoryStore.reopen` models a process that died and a new one that opened the same
database: the new store sees exactly what was committed, and a transaction still open in the old
one can never commit (a deterministic simulation uses it, see ``tests/integration/simulation.py``).

Payloads (trees, inputs, outputs, context values, callback data) are stored as the text
:mod:`culm.storage.codec` writes, as the SQL store stores them, so values come back with the same
JSON conversions and never share objects with the caller.
"""

from __future__ import annotations

import contextlib
import operator
import threading
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar, Unpack

from culm.core import states
from culm.core.ports import (
    LogRow,
    PipelineRow,
    ProcessFields,
    ScheduleFields,
    StateWrite,
    TaskFields,
    refuse_unknown_reads,
)
from culm.core.records import (
    ContextValue,
    HistoryRecord,
    PipelineQuery,
    ProcessPosition,
    ProcessRecord,
    ScheduleRecord,
    StateChange,
    StateRecord,
    TaskRecord,
)
from culm.storage import budget, codec
from culm.storage.codec import payloads_within
from culm.storage.copies import copy_process as _copy_process
from culm.storage.copies import copy_schedule as _copy_schedule
from culm.storage.copies import copy_state as _copy_state
from culm.storage.copies import copy_task as _copy_task
from culm.storage.memory_tables import Database, MemoryStoreError, TransactionView

URL = "memory://"
_R = TypeVar("_R")
_FINAL = (states.FINISHED, states.REVOKED)


@dataclass(slots=True)
class _Task:
    """A task row: the record the core sees plus the columns only storage keeps."""

    rec: TaskRecord
    owner: str | None = None
    claimed_until: float | None = None
    published: bool = False
    relayed_at: float | None = None


_TASK_COLUMNS = frozenset(TaskRecord.__slots__)
_LEASE_COLUMNS = frozenset({"owner", "claimed_until", "published", "relayed_at"})
_STATE_COLUMNS = frozenset(StateRecord.__slots__)
_PROCESS_COLUMNS = frozenset(ProcessRecord.__slots__)
_SCHEDULE_COLUMNS = frozenset(ScheduleRecord.__slots__)


def _changed(rec: _R, copy: Callable[[_R], _R], fields: dict[str, Any]) -> _R:
    """A copy of ``rec`` with ``fields`` set (rows are never changed in place: copy on write)."""
    new = copy(rec)
    for k, v in fields.items():
        setattr(new, k, v)
    return new


def _unknown(fields: Iterable[str], allowed: Container[str], table: str) -> None:
    bad = [f for f in fields if f not in allowed]
    if bad:
        raise MemoryStoreError(f"table {table} has no column(s) {', '.join(sorted(bad))}")


class MemoryUnit(TransactionView, budget.UnitChecks):
    """One transaction of a :class:`MemoryStore`, offering the verbs the core needs (as ``SqlUnit``)."""

    dialect = "memory"
    refuses_duplicate_ids = False  # a new run's ids are read first (culm.core.ports.Runs)
    feed_ordered = True  # one transaction at a time: seqs become visible in order

    @property
    def prefetch(self) -> None:
        """Nothing to read ahead: every read is a dict lookup."""
        return None

    # -- plumbing the core calls --------------------------------------------------------------
    def flush(self, *, commit: bool = False) -> None:
        """Nothing waits to be sent: every write is in the transaction's layer already."""

    def announce_change(self) -> None:
        """Nothing keeps copies of this store's rows."""

    def record_change(
        self, root_id: str, node_id: str, from_state: str | None, to_state: str, version: str, loop: int
    ) -> None:
        """Append a state write to the change feed; it gets its seq with the commit."""
        self._changes.append((root_id, node_id, from_state, to_state, version, loop, time.time()))

    # -- the change feed ------------------------------------------------------------------------
    def last_change_seq(self) -> int:
        seqs = self._db.feed.seqs
        return seqs[-1] if seqs else 0

    def first_change_seq(self) -> int | None:
        seqs = self._db.feed.seqs
        return seqs[0] if seqs else None

    def changes_since(self, after: int, most: int) -> tuple[int, list[tuple[str, str]]]:
        last = self.last_change_seq()
        if last <= after:
            return last, []
        return last, list(dict.fromkeys((c.root_id, c.node_id) for c in self._db.feed.between(after, after + most)))

    def changed_states(self, root_id: str, after: int, upto: int) -> list[tuple[str, StateRecord | None]]:
        named = dict.fromkeys(c.node_id for c in self._db.feed.between(after, upto) if c.root_id == root_id)
        found = self.get_states(named)
        return [(node_id, found.get(node_id)) for node_id in named]

    def read_changes(self, after: int, upto: int, root_id: str | None, limit: int) -> list[StateChange]:
        rows = self._db.feed.between(after, upto)
        if root_id is not None:
            rows = [c for c in rows if c.root_id == root_id]
        return rows[:limit]

    def read_together(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """Each ``(verb, args)`` answered as ``verb(*args)`` (no round trips to save here)."""
        refuse_unknown_reads(calls)
        return [getattr(self, verb)(*args) for verb, args in calls]

    def change_time_from(self, seq: int) -> float | None:
        rows = self._db.feed.between(seq - 1, self.last_change_seq())
        return rows[0].time if rows else None

    def prune_changes(self, lo: int, hi: int, cutoff: float) -> int:
        feed = self._db.feed

        def ended(root_id: str) -> bool:
            root = self._get("state", root_id)
            return root is not None and root.name in _FINAL

        gone = [c.seq for c in feed.between(lo - 1, hi - 1) if c.time < cutoff and ended(c.root_id)]
        self._pruned += gone  # deleted at the commit
        return len(gone)

    # -- pipelines and nodes --------------------------------------------------------------------
    def add_pipeline(self, root_id: str, tree: dict | str, root_data: dict, options: dict, at: float,
                     name: str = "") -> None:
        row = (codec.dumps_tree(tree, root_id),
               codec.dumps_fields(root_data, f"root_pipeline_data of pipeline {root_id}"),
               codec.dumps(options), at, name[:255])
        self._insert("pipeline", root_id, row)

    def pipeline_created(self, root_id: str) -> float | None:
        row = self._get("pipeline", root_id)
        return row[3] if row else None

    def get_pipeline(self, root_id: str) -> tuple[dict, dict, dict] | None:
        row = self._get("pipeline", root_id)
        return (codec.loads(row[0]), codec.loads(row[1]), codec.loads(row[2])) if row else None

    def get_pipelines(self, root_ids: Sequence[str]) -> dict[str, tuple[dict, dict, dict]]:
        return {root_id: got for root_id in root_ids if (got := self.get_pipeline(root_id)) is not None}

    def pipeline_trees(self, root_ids: Sequence[str]) -> dict[str, dict]:
        return {root_id: codec.loads(row[0]) for root_id in root_ids if (row := self._get("pipeline", root_id))}

    def node_names(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        from culm.storage.node_names import from_trees

        return from_trees(self.pipeline_trees(list(wanted)), wanted)

    def get_root_data(self, root_id: str) -> dict:
        row = self._get("pipeline", root_id)
        return codec.loads(row[1]) if row else {}

    def list_pipelines(self, query: PipelineQuery) -> tuple[dict[str, int], list[PipelineRow]]:
        """Counts per root state and one page of root pipelines, as ``culm.storage.listing``."""
        # A root's state: no parent, and its root set (an appointed pause ahead of a node has none).
        roots = [st for _, st in self._where("state", "parent", "") if st.root_id]
        matching = []
        for st in roots:
            created = st.created_time
            if query.created_after is not None and (created is None or created < query.created_after):
                continue
            if query.created_before is not None and (created is None or created >= query.created_before):
                continue
            pipeline = self._get("pipeline", st.root_id)
            if query.name and (pipeline is None or query.name.lower() not in pipeline[4].lower()):
                continue
            matching.append((st, pipeline[4] if pipeline else ""))
        counts: dict[str, int] = {}
        for st, _ in matching:
            counts[st.name] = counts.get(st.name, 0) + 1
        if query.states is not None:
            matching = [(st, name) for st, name in matching if st.name in query.states]
        # SQL's ORDER BY created_time DESC, root_id DESC (a NULL time sorts last, as SQLite's)
        matching.sort(key=lambda m: (m[0].created_time is not None, m[0].created_time or 0.0, m[0].root_id),
                      reverse=True)
        page = matching[query.offset : query.offset + query.limit]
        return counts, [(st.root_id, name, st.name, st.created_time, st.started_time, st.archived_time)
                        for st, name in page]

    def add_nodes(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Index a run's nodes: rows of (id, root_id, pipeline_id, type)."""
        for row in rows:
            self._insert("node", row[0], tuple(row))

    def node_root(self, node_id: str) -> str | None:
        row = self._get("node", node_id)
        return row[1] if row else None

    def node_types(self, ids: Sequence[str]) -> dict[str, str]:
        return {i: row[3] for i in ids if (row := self._get("node", i)) is not None}

    def existing_node_ids(self, ids: Iterable[str]) -> set[str]:
        return {i for i in ids if self._get("node", i) is not None}

    # -- states ---------------------------------------------------------------------------------
    def get_state(self, node_id: str, *, for_update: bool = False) -> StateRecord | None:
        st = self._get("state", node_id)
        return _copy_state(st) if st is not None else None

    def get_states(self, node_ids: Iterable[str], *, mutable: Container[str] | None = None) -> dict[str, StateRecord]:
        return {i: _copy_state(st) for i in node_ids if (st := self._get("state", i)) is not None}

    def hold_states(self, node_ids: Iterable[str]) -> dict[str, StateRecord]:
        return self.get_states(node_ids)  # one transaction at a time: nobody else can change them

    def states_of_root(self, root_id: str) -> list[StateRecord]:
        return [_copy_state(st) for _, st in self._where("state", "root", root_id)]

    def failed_node_counts(self, root_ids: Sequence[str]) -> dict[str, int]:
        counts = {root_id: sum(st.name == states.FAILED for _, st in self._where("state", "root", root_id))
                  for root_id in dict.fromkeys(root_ids)}
        return {root_id: n for root_id, n in counts.items() if n}

    def failed_nodes(self, root_ids: Sequence[str], first: int) -> dict[str, tuple[int, list[str]]]:
        found: dict[str, tuple[int, list[str]]] = {}
        for root_id in dict.fromkeys(root_ids):
            failed = sorted(st.node_id for _, st in self._where("state", "root", root_id) if st.name == states.FAILED)
            if failed:
                found[root_id] = (len(failed), failed[:first])
        return found

    def callback_waiters_first(self, root_ids: Sequence[str], first: int
                               ) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
        found: dict[str, tuple[int, list[tuple[str, str, str]]]] = {}
        for root_id, node_id, version, schedule_type in sorted(self.callback_waiters(root_ids)):
            found.setdefault(root_id, (0, []))
            n, some = found[root_id]
            found[root_id] = (n + 1, [*some, (node_id, version, schedule_type)][:first])
        return found

    def callback_waiters(self, root_ids: Sequence[str]) -> list[tuple[str, str, str, str]]:
        found: list[tuple[str, str, str, str]] = []
        for root_id in dict.fromkeys(root_ids):
            running = {st.node_id: st.version for _, st in self._where("state", "root", root_id)
                       if st.name == states.RUNNING}
            found.extend((root_id, s.node_id, s.version, s.type) for s in self.live_schedules(sorted(running))
                         if s.version == running[s.node_id] and s.type in ("callback", "multiple_callback"))
        return found

    def states_of_parent(self, parent_id: str) -> list[StateRecord]:
        return [_copy_state(st) for _, st in self._where("state", "parent", parent_id)]

    def insert_state(self, rec: StateRecord) -> None:
        self._insert("state", rec.node_id, _copy_state(rec))

    def update_state(
        self,
        node_id: str,
        *,
        expect_version: str | None = None,
        expect_names: Collection[str] | None = None,
        **fields: Unpack[StateWrite],
    ) -> bool:
        """Compare-and-set: write ``fields`` only if version and state name still match."""
        _unknown(fields, _STATE_COLUMNS, "state")
        st = self._get("state", node_id)
        if st is None or (expect_version is not None and st.version != expect_version):
            return False
        if expect_names is not None and st.name not in set(expect_names):
            return False
        self._put("state", node_id, _changed(st, _copy_state, dict(fields)))
        return True

    def reset_inner_loops(self, parent_id: str) -> None:
        # Each row it changes goes to the change feed as a note, as on SQL stores.
        for node_id, st in self._where("state", "parent", parent_id):
            if st.inner_loop != 0:
                self._put("state", node_id, _changed(st, _copy_state, {"inner_loop": 0}))
                self.record_change(st.root_id, node_id, st.name, st.name, st.version, st.loop)

    # -- processes ------------------------------------------------------------------------------
    def insert_processes(self, recs: Sequence[ProcessRecord]) -> None:
        for p in recs:
            self._insert("process", p.id, _copy_process(p))

    def get_process(self, process_id: str, *, for_update: bool = False) -> ProcessRecord | None:
        p = self._get("process", process_id)
        return _copy_process(p) if p is not None else None

    def update_process(self, process_id: str, **fields: Unpack[ProcessFields]) -> None:
        _unknown(fields, _PROCESS_COLUMNS, "process")
        p = self._get("process", process_id)
        if p is not None:  # as an UPDATE of no row: nothing happens
            changed: dict[str, Any] = dict(fields)
            if "stack" in fields:
                changed["stack"] = list(fields["stack"])
            self._put("process", process_id, _changed(p, _copy_process, changed))

    def ack_children(self, counts: Mapping[str, int]) -> dict[str, ProcessRecord]:
        """Count finished children of each parent; returns those stored, counted (as a SQL store)."""
        acked = {}
        for parent_id in sorted(counts):
            stored = self._get("process", parent_id)
            if stored is None:
                continue
            p = _copy_process(stored)
            p.ack_num += counts[parent_id]
            self._put("process", parent_id, p)
            acked[parent_id] = _copy_process(p)
        return acked

    def ack_children_at_commit(
        self, counts: Mapping[str, int], gateways: Mapping[str, str], woken: Callable[[list[TaskRecord]], None]
    ) -> bool:
        return False  # no round trip to save: the caller counts with ack_children

    def processes_of_root(self, root_id: str) -> list[ProcessRecord]:
        return [_copy_process(p) for _, p in self._where("process", "root", root_id)]

    def live_process_positions(self, root_id: str) -> list[ProcessPosition]:
        return [ProcessPosition(p.id, p.parent_id, p.current_node_id, p.destination_id, p.suspended_by, p.ack_num,
                                p.need_ack) for _, p in self._where("process", "root", root_id) if not p.dead]

    def processes_suspended_by(self, by: str) -> list[ProcessRecord]:
        return [_copy_process(p) for _, p in self._where("process", "suspended_by", by) if p.suspended and not p.dead]

    def processes_at(self, node_id: str) -> list[ProcessRecord]:
        return [_copy_process(p) for _, p in self._where("process", "at", node_id) if not p.dead]

    def kill_processes_of_root(self, root_id: str) -> None:
        for pid, p in self._where("process", "root", root_id):
            self._put("process", pid, _changed(p, _copy_process, {"dead": True}))

    # -- tasks and leases -----------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        for t in tasks:
            if t is not None:
                self._insert("task", t.id, _Task(_copy_task(t)))

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._get("task", task_id)
        return _copy_task(row.rec) if row is not None else None

    def task_lease(self, task_id: str) -> tuple[str | None, float | None, bool, float | None] | None:
        """(owner, claimed_until, published, relayed_at) of a task row; None when it is gone."""
        row = self._get("task", task_id)
        return (row.owner, row.claimed_until, row.published, row.relayed_at) if row is not None else None

    def _set_task(self, task_id: str, row: _Task, **columns: Any) -> None:
        new = _Task(row.rec, row.owner, row.claimed_until, row.published, row.relayed_at)
        for k, v in columns.items():
            setattr(new, k, v)
        self._put("task", task_id, new)

    def claim_task(self, task_id: str, owner: str, until: float, at: float) -> TaskRecord | None:
        """Take a lease on a task; None when it is gone (done) or leased by a live worker."""
        row = self._get("task", task_id)
        if row is None or (row.claimed_until is not None and row.claimed_until >= at):
            return None
        self._set_task(task_id, row, owner=owner, claimed_until=until)
        return _copy_task(row.rec)

    def task_with_process(
        self, task_id: str, lease: tuple[str, float, float] | None = None, *, held: bool = False
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        """A task and its process, as ``SqlUnit.task_with_process`` (``lease`` claims it first;
        ``held``: it is ours already, kept unless another runner took it over)."""
        row = self._get("task", task_id)
        if row is None:
            return None, None
        if lease is not None:
            owner, until, at = lease
            live = row.claimed_until is not None and row.claimed_until >= at
            if held and live and row.owner not in (None, owner):
                return None, None  # another runner took the task over: its result counts
            if not held and live:
                return None, None
            if not (held and live and row.owner == owner):
                self._set_task(task_id, row, owner=owner, claimed_until=until)
        return _copy_task(row.rec), self.get_process(row.rec.process_id)

    def tasks_of_root(self, root_id: str, kind: str) -> list[TaskRecord]:
        return [_copy_task(t.rec) for _, t in self._where("task", "root", root_id) if t.rec.kind == kind]

    def update_task(self, task_id: str, **fields: Unpack[TaskFields]) -> None:
        _unknown(fields, _TASK_COLUMNS | _LEASE_COLUMNS, "task")
        row = self._get("task", task_id)
        if row is None:
            return
        rec_fields = {k: v for k, v in fields.items() if k in _TASK_COLUMNS}
        lease = {k: v for k, v in fields.items() if k in _LEASE_COLUMNS}
        self._set_task(task_id, row, rec=_changed(row.rec, _copy_task, rec_fields), **lease)

    def delete_task(self, task_id: str, *, as_read: TaskRecord | None = None) -> None:
        """Delete a task row; with ``as_read``, only while it is still that task (same kind, node
        and running version), as ``SqlUnit.delete_task``."""
        row = self._get("task", task_id)
        if row is None:
            return
        if as_read is not None and (row.rec.kind, row.rec.node_id, row.rec.running_version) != (
                as_read.kind, as_read.node_id, as_read.running_version):
            return
        self._delete("task", task_id)

    def delete_tasks_of_root(self, root_id: str) -> None:
        for task_id, _ in self._where("task", "root", root_id):
            self._delete("task", task_id)

    def delete_tasks_of_processes(self, process_ids: Sequence[str]) -> None:
        for pid in dict.fromkeys(process_ids):
            for task_id, _ in self._where("task", "process", pid):
                self._delete("task", task_id)

    @staticmethod
    def _free(row: _Task, at: float) -> bool:
        return row.claimed_until is None or row.claimed_until < at

    def pending_tasks(self, at: float, limit: int, *, horizon: float = 0.0) -> list[TaskRecord]:
        """Tasks due before ``at + horizon`` whose lease (if any) has run out, oldest first."""
        found = [t for _, t in self._scan("task") if t.rec.due <= at + horizon and self._free(t, at)]
        found.sort(key=lambda t: t.rec.due)
        return [_copy_task(t.rec) for t in found[: int(limit)]]

    def relay_candidates(self, at: float, grace: float, horizon: float, limit: int,
                         *, resend_after: float | None = None) -> list[TaskRecord]:
        """Overdue tasks and unpublished timers due within ``horizon``, as ``SqlUnit``'s."""
        resend = grace if resend_after is None else resend_after
        found = [
            t for _, t in self._scan("task")
            if self._free(t, at) and (t.relayed_at is None or t.relayed_at <= at - resend)
            and (t.rec.due <= at - grace or (not t.published and at < t.rec.due <= at + horizon))
        ]
        found.sort(key=lambda t: t.rec.due)
        return [_copy_task(t.rec) for t in found[: int(limit)]]

    def _each_task(self, task_ids: Iterable[str]) -> Iterator[tuple[str, _Task]]:
        for task_id in dict.fromkeys(task_ids):
            row = self._get("task", task_id)
            if row is not None:
                yield task_id, row

    def mark_relayed(self, task_ids: Sequence[str], at: float) -> None:
        for task_id, row in self._each_task(task_ids):
            self._set_task(task_id, row, relayed_at=at, published=True)

    def mark_published(self, task_ids: Sequence[str], published: bool) -> None:
        for task_id, row in self._each_task(task_ids):
            self._set_task(task_id, row, published=published)

    def extend_leases(self, owner: str, task_ids: Sequence[str], until: float) -> None:
        for task_id, row in self._each_task(task_ids):
            if row.owner == owner:
                self._set_task(task_id, row, claimed_until=until)

    def release_leases(self, task_ids: Sequence[str] | None = None) -> None:
        rows = self._scan("task") if task_ids is None else list(self._each_task(task_ids))
        for task_id, row in rows:
            self._set_task(task_id, row, owner=None, claimed_until=None)
        if task_ids is None:  # the schedule calls' leases too
            for schedule_id, s in self._scan("schedule"):
                if s.locked_until is not None:
                    self._put("schedule", schedule_id, _changed(s, _copy_schedule, {"locked_until": None}))

    # -- node data, execution data, context -----------------------------------------------------
    def get_inputs_override(self, node_id: str) -> dict | None:
        return codec.loads(self._get("node_data", node_id))

    def set_inputs_override(self, node_id: str, inputs: dict) -> None:
        text = codec.dumps_fields(inputs, f"inputs of node {node_id}")
        budget.check(node_id, "inputs", len(text), lambda: self.stored_bytes(node_id, replacing="culm_node_data"), self.stored_total_after)
        self._put("node_data", node_id, text)

    def get_execution_data(self, node_id: str) -> tuple[dict, dict] | None:
        row = self._get("execution_data", node_id)
        return (codec.loads(row[0]), codec.loads(row[1])) if row else None

    def set_execution_data(self, node_id: str, inputs: dict, outputs: dict, *, always: bool = False) -> None:
        """Raises UnstorableValueError (naming the keys at fault), or StoredBytesBudgetError, before
        anything is written (``always``: checked whatever the size)."""
        row = (codec.dumps_fields(inputs, "inputs"), codec.dumps_fields(outputs, "outputs"))
        budget.check(node_id, "inputs" if len(row[0]) >= len(row[1]) else "outputs", len(row[0]) + len(row[1]),
                     lambda: self.stored_bytes(node_id, replacing="culm_execution_data"), self.stored_total_after,
                     always=always)
        self._put("execution_data", node_id, row)

    def stored_bytes(self, node_id: str, replacing: str | None = None, *,
                     serialise: bool = False) -> tuple[str, int, int]:
        """The root pipeline of ``node_id``, the bytes of payloads it holds (as SqlUnit's: execution
        data, inputs overrides, histories, callback data, log lines and context values) and those
        of the row of ``node_id`` in ``replacing`` apart. Summed at each call: a test store
        (``serialise``: its transactions already go one at a time)."""
        root_id = self.node_root(node_id)
        if root_id is None:
            return node_id, 0, 0
        held = sum(self._node_bytes(other) for other, _row in self._where("node", "root", root_id))
        replaced = 0
        if replacing == "culm_execution_data" and (own := self._get("execution_data", node_id)):
            replaced = len(own[0]) + len(own[1])
        elif replacing == "culm_node_data":
            replaced = len(self._get("node_data", node_id) or "")
        elif replacing == "outputs" and (own := self._get("execution_data", node_id)):
            replaced = len(own[1])
        return root_id, held - replaced, replaced

    def _node_bytes(self, node_id: str) -> int:
        data = self._get("execution_data", node_id)
        held = len(data[0]) + len(data[1]) if data else 0
        held += len(self._get("node_data", node_id) or "")
        held += sum(len(h[2]) + len(h[3]) for _, h in self._where("history", "node", node_id))
        held += sum(len(c[2]) for _, c in self._where("callback", "node", node_id))
        held += sum(len(r[4]) for _, r in self._where("log", "node", node_id))
        return held + sum(len(v[2]) for _, v in self._where("context", "pipeline", node_id))

    def check_context_growth(self, pipeline_id: str, replaced: Sequence[object], values: Sequence[object]) -> None:
        """Raises StoredBytesBudgetError when ``values`` in place of ``replaced`` would not fit
        (checked whatever the size)."""
        budget.check_context_growth(self, pipeline_id, replaced, values)

    def all_stored_bytes(self) -> int:
        """The bytes of payloads every root pipeline holds together (as :meth:`stored_bytes`)."""
        return sum(self._node_bytes(node_id) for node_id, _row in self._scan("node"))

    def stored_total_after(self, grows: int, *, counted: int = 0) -> int:
        """:meth:`all_stored_bytes` once a write adds ``grows``, ``counted`` of them written already
        (summed at each call: a test store)."""
        return self.all_stored_bytes() - counted + grows

    def set_execution_outputs(self, node_id: str, outputs: dict, *, checked: bool = False) -> None:
        """Replace a node's outputs, keeping its inputs (a node without a row gets empty inputs);
        ``checked``: past STORED_BYTES_CHECK_AT bytes, checked against the budget first."""
        old = self._get("execution_data", node_id)
        text = codec.dumps(outputs)
        if checked:
            budget.check(node_id, "outputs", len(text), lambda: self.stored_bytes(node_id, replacing="outputs"),
                         self.stored_total_after)
        self._put("execution_data", node_id, (old[0] if old else codec.dumps({}), text))

    def get_context(self, pipeline_id: str, keys: Iterable[str] | None = None) -> dict[str, ContextValue]:
        if keys is None:
            found = [(k[1], row) for k, row in self._where("context", "pipeline", pipeline_id)]
        else:
            found = [(k, row) for k in keys if (row := self._get("context", (pipeline_id, k))) is not None]
        return {k: ContextValue(k, row[1], codec.loads(row[2]), row[3], row[4]) for k, row in found}

    @staticmethod
    def _context_row(pipeline_id: str, v: ContextValue) -> tuple[str, str, str, str | None, frozenset[str]]:
        return pipeline_id, v.type, codec.dumps_variable(pipeline_id, v.key, v.value), v.code, frozenset(v.references)

    def insert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None:
        rows = [(v.key, self._context_row(pipeline_id, v)) for v in values]  # refused before any write
        for key, row in rows:
            self._insert("context", (pipeline_id, key), row)

    def upsert_context(self, pipeline_id: str, values: Iterable[ContextValue], *, checked: bool = False) -> None:
        rows = [(v.key, self._context_row(pipeline_id, v)) for v in values]  # refused before any write
        if checked:
            budget.check_context_copy(self, pipeline_id, sum(len(row[2]) for _key, row in rows), lambda: sum(
                len(old[2]) for key, _row in rows if (old := self._get("context", (pipeline_id, key))) is not None))
        for key, row in rows:
            self._put("context", (pipeline_id, key), row)

    # -- schedules and callbacks ----------------------------------------------------------------
    def insert_schedule(self, rec: ScheduleRecord) -> None:
        if self.schedule_of(rec.node_id, rec.version) is not None:
            raise MemoryStoreError(f"node {rec.node_id} already has a schedule for version {rec.version}")
        self._insert("schedule", rec.id, _copy_schedule(rec))

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        s = self._get("schedule", schedule_id)
        return _copy_schedule(s) if s is not None else None

    def schedule_of(self, node_id: str, version: str) -> ScheduleRecord | None:
        found = [s for _, s in self._where("schedule", "node", node_id) if s.version == version]
        return _copy_schedule(found[0]) if found else None

    def schedules_of_nodes(self, node_ids: Sequence[str]) -> list[ScheduleRecord]:
        """Every schedule (finished or not) of ``node_ids``."""
        wanted = dict.fromkeys(node_ids)
        if len(wanted) > 8:  # many nodes (a whole tree): one pass over the table beats a lookup each
            return [_copy_schedule(s) for _, s in self._scan("schedule") if s.node_id in wanted]
        return [_copy_schedule(s) for n in wanted for _, s in self._where("schedule", "node", n)]

    def live_schedules(self, node_ids: Sequence[str]) -> list[ScheduleRecord]:
        """The unfinished schedules of ``node_ids`` (any version: the caller compares)."""
        return [s for s in self.schedules_of_nodes(node_ids) if not s.finished]

    def update_schedule(self, schedule_id: str, **fields: Unpack[ScheduleFields]) -> None:
        _unknown(fields, _SCHEDULE_COLUMNS, "schedule")
        s = self._get("schedule", schedule_id)
        if s is not None:
            self._put("schedule", schedule_id, _changed(s, _copy_schedule, dict(fields)))

    def lock_schedule(self, schedule_id: str, until: float, at: float) -> bool:
        s = self._get("schedule", schedule_id)
        if s is None or (s.locked_until is not None and s.locked_until >= at):
            return False
        self._put("schedule", schedule_id, _changed(s, _copy_schedule, {"locked_until": until}))
        return True

    def lock_schedule_call(self, schedule_id: str, root_id: str, task_id: str, until: float, at: float) -> bool:
        s = self._get("schedule", schedule_id)
        if s is None:
            return False
        held = any(t.rec.schedule_id == schedule_id and t.rec.id != task_id and t.owner is not None
                   and t.claimed_until is not None and t.claimed_until >= at
                   for _, t in self._where("task", "root", root_id))
        if held:
            return False
        self._put("schedule", schedule_id, _changed(s, _copy_schedule, {"locked_until": until}))
        return True

    def insert_callback(self, callback_id: str, node_id: str, version: str, data: object, *,
                        always: bool = True) -> None:
        """Raises StoredBytesBudgetError before anything is written."""
        text = codec.dumps_named(data, f"callback data for node {node_id}")
        budget.check(node_id, "callback data", len(text), lambda: self.stored_bytes(node_id), self.stored_total_after,
                     always=always)
        seq = 1 + max((row[3] for _, row in self._where("callback", "node", node_id) if row[1] == version), default=0)
        self._insert("callback", callback_id, (node_id, version, text, seq))

    def first_callback_task(self, root_id: str, node_id: str, version: str) -> str | None:
        waiting = []
        for _, t in self._where("task", "root", root_id):
            rec = t.rec
            if rec.node_id == node_id and rec.running_version == version and rec.callback_id is not None:
                row = self._get("callback", rec.callback_id)
                if row is not None:
                    waiting.append((row[3], rec.callback_id, rec.id))
        return min(waiting)[2] if waiting else None

    def has_callback(self, node_id: str, version: str) -> bool:
        """Whether a callback was accepted for this run (``version``) of the node."""
        return any(row[1] == version for _, row in self._where("callback", "node", node_id))

    def get_callback(self, callback_id: str) -> object:
        row = self._get("callback", callback_id)
        return codec.loads(row[2]) if row else None

    # -- histories and logs ---------------------------------------------------------------------
    def add_history(self, rec: HistoryRecord, *, always: bool = False) -> None:
        texts = codec.dumps(rec.inputs), codec.dumps(rec.outputs)
        budget.check(rec.node_id, "history", len(texts[0]) + len(texts[1]), lambda: self.stored_bytes(rec.node_id), self.stored_total_after,
                     always=always)
        self._put("history", self._next_id("history"), (rec.node_id, replace(rec, inputs={}, outputs={}), *texts))

    def histories(self, node_id: str, loop: int = -1, payload_chars: int | None = None) -> list[HistoryRecord]:
        found = [(hid, row) for hid, row in sorted(self._where("history", "node", node_id), key=operator.itemgetter(0))
                 if loop == -1 or row[1].loop == loop]
        sizes = [(hid, len(row[2]) + len(row[3])) for hid, row in found]
        wanted = {hid for hid, _ in sizes} if payload_chars is None else set(payloads_within(sizes, payload_chars))
        return [replace(h, id=hid, inputs=codec.loads(inputs), outputs=codec.loads(outputs)) if hid in wanted
                else replace(h, id=hid, left_out=len(inputs) + len(outputs))
                for hid, (_, h, inputs, outputs) in found]

    def add_logs(self, rows: Sequence[LogRow]) -> None:
        """Raises UnstorableValueError (naming the lines at fault) before anything is written."""
        codec.check_log_lines(rows)
        for r in rows:
            self._put("log", self._next_id("log"), (r["node_id"], r["version"], r["loop"], r["created_time"],
                                                    r["line"]))

    def _logs_of(self, node_id: str, version: str) -> list[tuple[int, tuple]]:
        return sorted(((k, row) for k, row in self._where("log", "node", node_id) if row[1] == version),
                      key=operator.itemgetter(0))

    def logs(self, node_id: str, version: str, first: int = 0, count: int | None = None) -> list[str]:
        rows = self._logs_of(node_id, version)[first:None if count is None else first + count]
        return [row[4] for _, row in rows]

    def logs_at(self, node_id: str, version: str, first: int, count: int) -> list[str] | None:
        return self.logs(node_id, version, first, count)

    def last_logs(self, node_id: str, version: str, skip: int, count: int) -> list[str]:
        rows = self._logs_of(node_id, version)
        end = max(len(rows) - skip, 0)
        return [row[4] for _, row in rows[max(end - count, 0):end]]

    def log_count(self, node_id: str, version: str) -> int:
        return len(self._logs_of(node_id, version))

    def retag_logs(self, node_id: str, old_version: str, new_version: str) -> None:
        for key, row in self._logs_of(node_id, old_version):
            self._put("log", key, (row[0], new_version, *row[2:]))


class MemoryStore:
    """Hands out :class:`MemoryUnit` transactions over data held in this process (not durable).

    Args:
        database: the committed data to open (:meth:`reopen` passes the one a crash kept).
    """

    dialect = "memory"
    url = URL
    keeps_copies = False  # the engine keeps no copies of rows in process memory: they are there already
    database_file = None

    def __init__(self, *, database: Database | None = None) -> None:
        self._db = database or Database()
        self._lock = threading.RLock()  # re-entrant: a thread holding a transaction may still read
        self._writing = False  # a transaction is open (in the thread holding the lock)
        from culm.storage.feed import ChangeFeed

        self.feed = ChangeFeed(self, ordered=True)

    @contextlib.contextmanager
    def transaction(self, cache: Any = None, *, adds_only: bool = False) -> Iterator[MemoryUnit]:
        """A unit of work: committed when the block ends, nothing of it kept on an exception.
        (``cache`` and ``adds_only`` are accepted for the SQL store's signature and ignored.)"""
        with self._lock:
            if self._writing:
                # Its commit would land under the open one's layers, which would then overwrite it.
                raise MemoryStoreError("a transaction is already open in this thread; nest a savepoint instead")
            self._writing = True
            try:
                unit = MemoryUnit(self._db)
                yield unit
                unit.commit()
            finally:
                self._writing = False
        if unit.changes_sent:
            self.feed.committed()

    @contextlib.contextmanager
    def reading(self, *, snapshot: bool = False) -> Iterator[MemoryUnit]:
        """A read-only unit: it sees the last committed state (and its own writes, never kept).
        It is always a ``snapshot``: no transaction commits while it is open."""
        with self._lock:
            yield MemoryUnit(self._db)

    def is_interruption(self, exc: BaseException) -> bool:
        """Never: there is no server to lose (a crash is modelled by :meth:`reopen`, not raised)."""
        return False

    def is_duplicate(self, exc: BaseException) -> bool:
        """Never: a new run's ids are read before they are stored (``refuses_duplicate_ids``)."""
        return False

    def schema_problem(self, exc: BaseException) -> str | None:
        """Never: the memory store has no tables to lose."""
        return None

    def reopen(self) -> MemoryStore:
        """A new store over what this one committed, as after a crash and a restart: a
        transaction still open here can no longer commit."""
        self._db.epoch += 1
        return MemoryStore(database=self._db)

    def ensure_schema(self) -> None:
        """Nothing to create: the tables exist with the store."""

    def checkpoint(self) -> None:
        """Nothing to copy: there is no log."""

    def keep_statistics(self) -> None:
        """No planner: nothing to analyse."""

    def dispose(self) -> None:
        """Nothing to close (the data goes with the object)."""

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"


__all__ = ["URL", "MemoryStore", "MemoryStoreError", "MemoryUnit"]
