"""Write-through copies of the rows the embedded engine re-reads at every step.

An embedded runtime is the only process that runs the tasks of its SQLite file (the runner lock
in :mod:`culm.runtime`), and its engine thread does every engine write. So the engine thread can
keep what it wrote: states, processes, tasks and contexts, and answer its own reads from memory.
The database stays the record: every write still goes to it in the same transaction, and the
copies only spare the reads (and their JSON decoding).

Three things can make the copies wrong, and each drops them (checked at the start of every batch):

* A transaction of this process changed existing rows: an operator command (pause, retry,
  callback...). Every such transaction bumps SQLite's ``user_version`` header field
  (:func:`bump_epoch`). ``run_pipeline`` only inserts rows of a new pipeline and does not bump.
  (All writers of a store share one connection, see ``SqlStore``.)
* Another process committed anything at all: SQLite's ``data_version`` of the writer connection
  moves. Commands from other processes bump ``user_version`` too, but this also covers tools that
  edit the file directly, and costs only a reload when another process submits runs.
* The engine's own transaction (or a savepoint in it) was rolled back: the store's transaction
  and :meth:`CachedUnit.savepoint` call :meth:`RecordCache.clear`.

A copy is never handed out: readers get fresh records (the walker mutates them) and context values
are decoded again from their stored text unless they are immutable scalars, so a component that
mutates its inputs cannot change what the next node reads.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

from culm.core.ports import Prefetch, ProcessFields, StateWrite, TaskFields
from culm.core.records import ContextValue, ProcessRecord, StateRecord, TaskRecord
from culm.storage import codec
from culm.storage.copies import copy_process as _copy_process
from culm.storage.copies import copy_state as _copy_state
from culm.storage.copies import copy_task as _copy_task
from culm.storage.sql.base import SqlUnit, _state_params, _state_row, cas_where
from culm.storage.sql.sqlite import SqliteUnit
from culm.storage.sql.statements import ACK_CHILDREN, STATE_COLUMNS, STATE_INDEX, STATE_INSERT, update_sql

# A pipeline context holding a value whose stored text is longer than this is not kept (it is
# read from the database each time), so large data cannot multiply across the kept pipelines.
MAX_KEPT_VALUE = 64 * 1024
_SCALARS = frozenset({str, int, float, bool, type(None)})
_MISSING = object()


def _shared(value: Any) -> Any:
    """The value itself when it is immutable (safe to hand out many times), else _MISSING."""
    return value if type(value) in _SCALARS else _MISSING


def read_epoch(unit: SqlUnit) -> int:
    return int(unit._one("PRAGMA user_version")[0])


def bump_epoch(unit: SqlUnit) -> None:
    """Tell an embedded engine (of any process) that rows it may hold copies of have changed."""
    epoch = read_epoch(unit)
    unit._x(f"PRAGMA user_version = {(epoch + 1) % 2_000_000_000}")


_VERSION, _NAME = STATE_INDEX["version"], STATE_INDEX["name"]
_TASK_FIELDS = frozenset(TaskRecord.__slots__)  # lease columns (owner, claimed_until) are not kept


def _apply(rec: Any, fields: Mapping[str, Any]) -> None:
    """Write ``fields`` into a kept record; every field the engine writes is one of its attributes."""
    for k, v in fields.items():
        setattr(rec, k, v)


class _Root:
    """What the cache holds for one root pipeline (so it can be evicted as a whole)."""

    __slots__ = ("nodes", "processes")

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes
        self.processes: set[str] = set()


class RecordCache:
    """The engine thread's copies. Used by one thread at a time (the embedded engine thread)."""

    def __init__(self, max_roots: int = 2048) -> None:
        self.max_roots = max_roots
        self.epoch: tuple[int, int] | None = None  # (user_version, data_version)
        self.roots: OrderedDict[str, _Root] = OrderedDict()
        self.node_root: dict[str, str] = {}  # every node of a loaded root -> that root
        self.states: dict[str, StateRecord] = {}  # only nodes of loaded roots; absent = no state row
        self.processes: dict[str, ProcessRecord] = {}
        self.tasks: dict[str, TaskRecord] = {}
        # pipeline id -> key -> (type, value or _MISSING, stored text, code, references)
        self.contexts: dict[str, dict[str, tuple[str, Any, str, str | None, frozenset[str]]]] = {}
        self.big_contexts: set[str] = set()  # pipelines holding a value too large to keep: always read

    def clear(self) -> None:
        self.roots.clear()
        self.node_root.clear()
        self.states.clear()
        self.processes.clear()
        self.tasks.clear()
        self.contexts.clear()
        self.big_contexts.clear()

    def sync(self, unit: SqlUnit) -> None:
        """Start of a transaction: drop everything if others changed rows since the last one."""
        epoch = (read_epoch(unit), int(unit._one("PRAGMA data_version")[0]))
        if epoch != self.epoch:
            self.clear()
            self.epoch = epoch

    def _evict(self) -> None:
        while len(self.roots) > self.max_roots:
            _, root = self.roots.popitem(last=False)
            for nid in root.nodes:
                self.node_root.pop(nid, None)
                self.states.pop(nid, None)
                self.contexts.pop(nid, None)
                self.big_contexts.discard(nid)
            for pid in root.processes:
                self.processes.pop(pid, None)


class CachedUnit(SqliteUnit):
    """A SQLite unit that answers the engine's hot reads from a :class:`RecordCache`."""

    def __init__(self, conn: Any, cache: RecordCache) -> None:
        super().__init__(conn)
        self.cache = cache
        # INSERTs of kept states not sent yet, by node id (the parameter lists). An event or a
        # gateway is entered and left in one step: its finishing compare-and-set is decided on
        # the copy and folded into the INSERT, one statement instead of two. They go out, in
        # one executemany, before any other statement that could read or touch culm_state (every
        # statement whose answer is read, reset_inner_loops) and before the commit. A write to
        # another row, a kept state's compare-and-set among them (_cas_kept), does not send them.
        self._unsent_inserts: dict[str, list[Any]] = {}
        # Children counted on kept parents (ack_children) and not sent yet, by parent process id.
        # An increment commutes with every other write but one that sets ``ack_num``: the wake
        # of the parent (joins.settle), whose UPDATE then replaces it. Sent with the INSERTs above.
        self._unsent_acks: dict[str, int] = {}

    # -- unsent state INSERTs and child counts ----------------------------------------------
    def _send_inserts(self) -> None:
        if self._unsent_acks:
            self._cur.executemany(ACK_CHILDREN, [[n, pid] for pid, n in sorted(self._unsent_acks.items())])
            self._unsent_acks.clear()
        if not self._unsent_inserts:
            return
        rows = list(self._unsent_inserts.values())
        self._unsent_inserts.clear()
        self._cur.executemany(STATE_INSERT, rows)

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._unsent_inserts or self._unsent_acks:
            self._send_inserts()
        return super()._x(sql, params)

    def flush(self, *, commit: bool = False) -> None:
        if self._unsent_inserts or self._unsent_acks:
            self._send_inserts()
        super().flush(commit=commit)

    def _drop_unsent(self) -> None:
        self._unsent_inserts.clear()
        self._unsent_acks.clear()
        super()._drop_unsent()

    # -- a new run (run_pipeline's transaction, on the submitting thread) -----------------------
    def add_nodes(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """A new run's node index (its root's own row among the rows): the root is kept from here
        on as it stands, no state row and no context value yet, so the rows run_pipeline writes
        next (root state, contexts, process, task) go into the copies as they are written, and
        the engine's first step of the run reads none of them back. The write lock orders this
        transaction with the engine thread's, so the copies still have one user at a time."""
        super().add_nodes(rows)
        c = self.cache
        for root_id in [r[0] for r in rows if r[0] == r[1] and r[0] not in c.roots]:
            nodes = [r[0] for r in rows if r[1] == root_id]
            for nid in nodes:
                c.node_root[nid] = root_id
            for pipeline_id in {r[2] for r in rows if r[1] == root_id and r[2] in c.node_root}:
                c.contexts[pipeline_id] = {}  # (filled by insert_context: get_context keeps only nodes')
            c.roots[root_id] = _Root(nodes)
        c._evict()

    # -- states ---------------------------------------------------------------------------
    def _load_root(self, root_id: str) -> None:
        c = self.cache
        if root_id in c.roots or not root_id:
            return
        rows = self._all(
            "SELECT n.id, " + ", ".join(f"s.{col}" for col in STATE_COLUMNS)
            + " FROM culm_node n LEFT JOIN culm_state s ON s.node_id = n.id WHERE n.root_id = ?",
            [root_id],
        )
        nodes = []
        for r in rows:
            nodes.append(r[0])
            c.node_root[r[0]] = root_id
            if r[1] is not None:
                c.states[r[0]] = _state_row(r[1:])
        c.roots[root_id] = _Root(nodes)
        c._evict()

    def _known(self, node_id: str) -> bool:
        root = self.cache.node_root.get(node_id)
        if root is None:
            return False
        self.cache.roots.move_to_end(root)
        return True

    def get_state(self, node_id: str, *, for_update: bool = False) -> StateRecord | None:
        if self._known(node_id):
            st = self.cache.states.get(node_id)
            return _copy_state(st) if st is not None else None
        st = super().get_state(node_id, for_update=for_update)
        if st is not None and st.root_id:
            self._load_root(st.root_id)
        return st

    @property
    def prefetch(self) -> Prefetch | None:
        """Nothing to read ahead: the copies already answer for every state of a loaded root."""
        return None

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint that, when it rolls back, drops the copies too: they may hold its writes."""
        try:
            with super().savepoint():
                yield
        except BaseException:
            self.cache.clear()
            raise

    def hold_states(self, node_ids: Iterable[str]) -> dict[str, StateRecord]:
        # SQLite's single writer holds every row until the commit: nothing to lock or read first.
        return self.get_states(node_ids, mutable=())

    def get_states(self, node_ids: Iterable[str], *, mutable: Container[str] | None = None) -> dict[str, StateRecord]:
        c = self.cache
        found: dict[str, StateRecord] = {}
        missing: list[str] = []
        for nid in node_ids:
            if nid in c.node_root:
                st = c.states.get(nid)
                if st is not None:  # a kept record is handed out only to be read
                    found[nid] = _copy_state(st) if mutable is None or nid in mutable else st
            else:
                missing.append(nid)
        if missing:
            fetched = super().get_states(missing)
            found.update(fetched)
            for st in fetched.values():
                if st.root_id:
                    self._load_root(st.root_id)
        return found

    def insert_state(self, rec: StateRecord) -> None:
        if rec.node_id not in self.cache.node_root or self._deferred is not None:
            super().insert_state(rec)
            if rec.node_id in self.cache.node_root:
                self.cache.states[rec.node_id] = _copy_state(rec)
            return
        self._unsent_inserts[rec.node_id] = _state_params(rec)
        self.cache.states[rec.node_id] = _copy_state(rec)

    def _cas_state(
        self, node_id: str, expect_version: str | None, expect_names: Iterable[str] | None, fields: Mapping[str, Any]
    ) -> bool:
        unsent = self._unsent_inserts.get(node_id)
        if unsent is None or not fields.keys() <= STATE_INDEX.keys():
            return self._cas_kept(node_id, expect_version, expect_names, fields)
        # The row exists only in this transaction, as ``unsent``: compare and set right there.
        if expect_version is not None and unsent[_VERSION] != expect_version:
            return False
        if expect_names is not None and unsent[_NAME] not in set(expect_names):
            return False
        for k, v in fields.items():
            unsent[STATE_INDEX[k]] = v
        return True

    def _cas_kept(
        self, node_id: str, expect_version: str | None, expect_names: Iterable[str] | None, fields: Mapping[str, Any]
    ) -> bool:
        """A compare-and-set of a stored row: decided on its kept copy when there is one, which is
        the row as this transaction sees it (the write transaction holds the file, and the copies
        are dropped when anyone else wrote). The UPDATE is then sent as a write whose count
        nobody reads: it does not send the unsent INSERTs ahead of it (they touch other rows), so
        they go together at the next read or the commit."""
        kept = self.cache.states.get(node_id)
        if kept is None:
            return super()._cas_state(node_id, expect_version, expect_names, fields)
        names = list(expect_names) if expect_names is not None else None
        if (expect_version is not None and kept.version != expect_version) or (
            names is not None and kept.name not in names
        ):
            return False
        where, params = cas_where(node_id, expect_version, names)
        self._later(update_sql("culm_state", tuple(fields), where), [*fields.values(), *params])
        return True

    def update_state(
        self,
        node_id: str,
        *,
        expect_version: str | None = None,
        expect_names: Collection[str] | None = None,
        **fields: Unpack[StateWrite],
    ) -> bool:
        st = self.cache.states.get(node_id)
        if st is None or self._locked_ahead or self._state_view is not None or "parent_id" in fields:
            ok = super().update_state(node_id, expect_version=expect_version, expect_names=expect_names, **fields)
            if ok and st is not None:
                _apply(st, fields)
            return ok
        # A kept row, and none of the bookkeeping SqlUnit.update_state does around the
        # compare-and-set applies (no lock taken ahead, no held view, no new parent): the engine's
        # every state write, without that call and its second packing of ``fields``.
        if self._cas_state(node_id, expect_version, expect_names, fields):
            for k, v in fields.items():
                setattr(st, k, v)
            return True
        return False

    def reset_inner_loops(self, parent_id: str) -> None:
        c = self.cache
        root = c.roots.get(c.node_root.get(parent_id, ""))
        if root is None:
            self._send_inserts()  # the UPDATE must see them
            super().reset_inner_loops(parent_id)
            self._reset_inner_loops_anywhere(parent_id)
            return
        # The copies hold every state row of a loaded root (the unsent ones too): when none of the
        # parent's children has an inner loop to reset, both statements would change no row and
        # note none (a subprocess entered the first time), so none is sent.
        children = [st for nid in root.nodes if (st := c.states.get(nid)) is not None and st.parent_id == parent_id]
        if not any(st.inner_loop for st in children):
            return
        self._send_inserts()  # the UPDATE must see them
        super().reset_inner_loops(parent_id)
        for st in children:
            st.inner_loop = 0

    def _reset_inner_loops_anywhere(self, parent_id: str) -> None:
        # Not expected (a parent's nodes belong to the parent's root), but no copy may stay stale.
        c = self.cache
        for nid in [n for n, st in c.states.items() if st.parent_id == parent_id]:
            c.states[nid].inner_loop = 0

    # -- processes ------------------------------------------------------------------------
    def _keep_process(self, p: ProcessRecord) -> None:
        c = self.cache
        root = c.roots.get(p.root_id)
        if root is None:
            return  # only processes of loaded roots, so eviction finds them
        c.processes[p.id] = _copy_process(p)
        root.processes.add(p.id)

    def insert_processes(self, recs: Sequence[ProcessRecord]) -> None:
        super().insert_processes(recs)
        for p in recs:
            self._keep_process(p)

    def get_process(self, process_id: str, *, for_update: bool = False) -> ProcessRecord | None:
        p = self.cache.processes.get(process_id)
        if p is not None:
            return _copy_process(p)
        p = super().get_process(process_id, for_update=for_update)
        if p is not None:
            self._load_root(p.root_id)
            self._keep_process(p)
        return p

    def update_process(self, process_id: str, **fields: Unpack[ProcessFields]) -> None:
        if "ack_num" in fields:
            self._unsent_acks.pop(process_id, None)  # replaced by this write
        p = self.cache.processes.get(process_id)
        if p is not None:
            _apply(p, fields)
            if "stack" in fields:
                p.stack = list(p.stack)
        super().update_process(process_id, **fields)

    def ack_children(self, counts: Mapping[str, int]) -> dict[str, ProcessRecord]:
        kept = {pid: p for pid in counts if (p := self.cache.processes.get(pid)) is not None}
        others = {pid: n for pid, n in counts.items() if pid not in kept}
        acked = super().ack_children(others) if others else {}
        for pid, p in sorted(kept.items()):
            self._unsent_acks[pid] = self._unsent_acks.get(pid, 0) + counts[pid]
            p.ack_num += counts[pid]
            acked[pid] = _copy_process(p)
        return acked

    def kill_processes_of_root(self, root_id: str) -> None:
        super().kill_processes_of_root(root_id)
        root = self.cache.roots.get(root_id)
        for pid in root.processes if root is not None else ():
            p = self.cache.processes.get(pid)
            if p is not None:
                p.dead = True

    # -- tasks ----------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        super().insert_tasks(tasks)
        for t in tasks:
            if t is not None:
                self.cache.tasks[t.id] = _copy_task(t)

    def claim_task(self, task_id: str, owner: str, until: float, at: float) -> TaskRecord | None:
        # The runner lock makes this process the only runner and the dispatcher never runs a task
        # twice at once, so a lease would guard nothing: a task this engine wrote is simply taken.
        t = self.cache.tasks.get(task_id)
        if t is not None:
            return _copy_task(t)
        t = super().claim_task(task_id, owner, until, at)
        if t is not None:
            self.cache.tasks[t.id] = _copy_task(t)
        return t

    def lock_schedule_call(self, schedule_id: str, root_id: str, task_id: str, until: float, at: float) -> bool:
        # Tasks taken from the copies carry no lease in the file (see claim_task), so the holder of
        # a call cannot be found by its lease here, and no time is needed: the core asks only for
        # the task whose turn it is (first_callback_task), whose row lives until its result is
        # applied, and this process, the file's sole runner, never runs one task twice at once. So
        # no other call of the schedule can be under way; the lock's time is only recorded.
        self.update_schedule(schedule_id, locked_until=until)
        return True

    def task_with_process(
        self, task_id: str, lease: tuple[str, float, float] | None = None, *, held: bool = False
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        # ``held`` needs no check here: the sole runner (see claim_task) never loses a task.
        task = self.claim_task(task_id, *lease) if lease is not None and not held else self.get_task(task_id)
        return task, (self.get_process(task.process_id) if task is not None else None)

    def get_task(self, task_id: str) -> TaskRecord | None:
        t = self.cache.tasks.get(task_id)
        if t is not None:
            return _copy_task(t)
        t = super().get_task(task_id)
        if t is not None:
            self.cache.tasks[t.id] = _copy_task(t)
        return t

    def update_task(self, task_id: str, **fields: Unpack[TaskFields]) -> None:
        super().update_task(task_id, **fields)
        t = self.cache.tasks.get(task_id)
        if t is not None:
            for k, v in fields.items():
                if k in _TASK_FIELDS:
                    setattr(t, k, v)

    def delete_task(self, task_id: str, *, as_read: TaskRecord | None = None) -> None:
        super().delete_task(task_id, as_read=as_read)
        self.cache.tasks.pop(task_id, None)  # read again when asked, deleted or not

    def delete_tasks_of_root(self, root_id: str) -> None:
        super().delete_tasks_of_root(root_id)
        tasks = self.cache.tasks
        for tid in [tid for tid, t in tasks.items() if t.root_id == root_id]:
            del tasks[tid]

    def delete_tasks_of_processes(self, process_ids: Sequence[str]) -> None:
        super().delete_tasks_of_processes(process_ids)
        wanted = set(process_ids)
        tasks = self.cache.tasks
        for tid in [tid for tid, t in tasks.items() if t.process_id in wanted]:
            del tasks[tid]

    # -- contexts -------------------------------------------------------------------------
    def get_context(self, pipeline_id: str, keys: Iterable[str] | None = None) -> dict[str, ContextValue]:
        c = self.cache
        ctx = c.contexts.get(pipeline_id)
        if ctx is None:
            if pipeline_id not in c.node_root or pipeline_id in c.big_contexts:
                return super().get_context(pipeline_id, keys)
            rows = self._all('SELECT "key", type, value, code, refs FROM culm_context_value WHERE pipeline_id = ?',
                             [pipeline_id])
            if any(len(r[2]) > MAX_KEPT_VALUE for r in rows):
                c.big_contexts.add(pipeline_id)
                return super().get_context(pipeline_id, keys)
            ctx = {r[0]: self._entry(r[1], r[2], r[3], frozenset(codec.loads(r[4]))) for r in rows}
            c.contexts[pipeline_id] = ctx
        wanted = ctx.keys() if keys is None else keys
        out: dict[str, ContextValue] = {}
        for key in wanted:
            e = ctx.get(key)
            if e is not None:
                value = e[1] if e[1] is not _MISSING else codec.loads(e[2])
                out[key] = ContextValue(key, e[0], value, e[3], e[4])
        return out

    @staticmethod
    def _entry(vtype: str, text: str, code: str | None, refs: frozenset[str]) -> tuple:
        return (vtype, _shared(codec.loads(text)), text, code, refs)

    def _keep_context(self, pipeline_id: str, values: Iterable[ContextValue], checked: bool = False) -> list[dict]:
        values = list(values)
        rows = [self._context_row(pipeline_id, v) for v in values]
        if checked:  # before the cache takes them: a refused copy leaves it as the store is
            self._check_context_copy(pipeline_id, rows)
        ctx = self.cache.contexts.get(pipeline_id)
        if ctx is not None and any(len(row["value"]) > MAX_KEPT_VALUE for row in rows):
            del self.cache.contexts[pipeline_id]
            self.cache.big_contexts.add(pipeline_id)
        elif ctx is not None:
            for v, row in zip(values, rows, strict=True):
                ctx[v.key] = (v.type, _shared(v.value), row["value"], v.code, frozenset(v.references))
        return rows

    def insert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None:
        self._insert("culm_context_value", self._keep_context(pipeline_id, values))

    def upsert_context(self, pipeline_id: str, values: Iterable[ContextValue], *, checked: bool = False) -> None:
        for row in self._keep_context(pipeline_id, values, checked):
            self._upsert("culm_context_value", row, ["pipeline_id", "key"])
