"""The interfaces the core needs from the outside world, as small typed protocols.

Storage implements :class:`Store`, whose units of work offer the verbs of :class:`Unit` (see
``culm.storage``); dispatch implements :class:`Dispatcher` (see ``culm.dispatch``). The core
imports neither of them: it sees storage and dispatch only through these protocols.
:class:`WorkerRegistry` is what the distributed runtime's workers need from storage to tell live
workers from dead ones.

A unit is one transaction. Its verbs are grouped by concern (:class:`Runs`, :class:`States`,
:class:`Changes`, :class:`Processes`, :class:`Tasks`, :class:`NodeData`, :class:`Schedules`,
:class:`Histories`); :class:`Unit` combines them. Storage records what the core decided: every
change of a node's state name goes through :meth:`culm.core.step.Step.set_state`, which checks
it against ``states.TRANSITIONS`` (:mod:`culm.core.transitions`) before the unit writes it.
Partial updates (``update_state``, ``update_process``, ``update_task``, ``update_schedule``) take
their columns as keywords typed by a change record (``StateWrite``, ``ProcessFields``,
``TaskFields``, ``ScheduleFields``): a misspelt or mistyped column is a type error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

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
    WorkerInfo,
)
from culm.errors import InvalidOperationError

# A lease on a task: (owner, claimed until, now), all times UTC epoch seconds.
Lease = tuple[str, float, float]
# A user's JSON-able mapping (pipeline data, node inputs and outputs, options): its values are
# whatever the user's pipeline holds, so they are not typed further here.
UserData = dict[str, Any]
# One root pipeline of a listing: (id, name, state, created_time, started_time, archived_time).
PipelineRow = tuple[str, str, str, float | None, float | None, float | None]


class StateFields(TypedDict, total=False):
    """The columns of a state, other than its name, that an update may write (any subset)."""

    version: str
    loop: int
    inner_loop: int
    retry: int
    skip: bool
    error_ignored: bool
    started_time: float | None
    archived_time: float | None
    root_id: str
    parent_id: str


class StateWrite(StateFields, total=False):
    """What :meth:`States.update_state` writes: ``StateFields`` and the name. The name is written
    only by :meth:`culm.core.step.Step.set_state`, after the transition is checked."""

    name: str


class ProcessFields(TypedDict, total=False):
    """The columns a process update may write (any subset)."""

    current_node_id: str
    stack: list[str]
    asleep: bool
    suspended: bool
    suspended_by: str | None
    dead: bool
    ack_num: int
    need_ack: int


class TaskFields(TypedDict, total=False):
    """The columns a task update may write (any subset); ``owner``/``claimed_until`` are its lease."""

    kind: str
    node_id: str
    running_version: str | None
    schedule_id: str | None
    callback_id: str | None
    due: float
    owner: str | None
    claimed_until: float | None


class ScheduleFields(TypedDict, total=False):
    """The columns a schedule update may write (any subset)."""

    finished: bool
    expired: bool
    times: int
    locked_until: float | None


class LogRow(TypedDict):
    """One log line of one run (``version``) of a node."""

    node_id: str
    version: str
    loop: int
    created_time: float
    line: str


class Runs(Protocol):
    """Root pipelines (their trees, data and options) and the index of their nodes."""

    def add_pipeline(self, root_id: str, tree: UserData | str, root_data: UserData, options: UserData,
                     at: float, name: str = "") -> None: ...

    def list_pipelines(self, query: PipelineQuery) -> tuple[dict[str, int], list[PipelineRow]]: ...

    def get_pipeline(self, root_id: str) -> tuple[UserData, UserData, UserData] | None: ...

    def get_pipelines(self, root_ids: Sequence[str]) -> dict[str, tuple[UserData, UserData, UserData]]:
        """:meth:`get_pipeline` of several runs in one read (those not stored are left out)."""
        ...

    def pipeline_trees(self, root_ids: Sequence[str]) -> dict[str, UserData]:
        """The trees of several runs (only that column), in one read (those not stored left out)."""
        ...

    def node_names(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        """The names the trees of runs give some of their nodes (``{root_id: [node_id]}``), as
        ``{root_id: {node_id: name}}`` (``""``: no name; runs not stored left out)."""
        ...

    def get_root_data(self, root_id: str) -> UserData: ...

    def add_nodes(self, rows: Sequence[tuple[str, str, str, str]]) -> None: ...

    def node_root(self, node_id: str) -> str | None: ...

    def node_types(self, ids: Sequence[str]) -> dict[str, str]: ...

    def existing_node_ids(self, ids: Iterable[str]) -> set[str]: ...

    # True when this unit's inserts of a new run fail on any id stored already (its root id or a
    # node id: unique keys), with an error the store's ``is_duplicate`` recognises. A new run's
    # ids are then checked by its commit, not read before it (a round trip fewer on a server).
    refuses_duplicate_ids: bool


class States(Protocol):
    """Node and pipeline states, written by compare-and-set on their version and name."""

    def get_state(self, node_id: str, *, for_update: bool = False) -> StateRecord | None: ...

    def get_states(self, node_ids: Iterable[str], *, mutable: Container[str] | None = None
                   ) -> dict[str, StateRecord]: ...

    def hold_states(self, node_ids: Iterable[str]) -> dict[str, StateRecord]:
        """The states of ``node_ids`` (to read only), which no other transaction changes before
        this one ends: what the engine decides from them (entering a node of a pipeline that is
        not paused) is never overtaken by a command committed in between."""
        ...

    def states_of_root(self, root_id: str) -> list[StateRecord]: ...

    def failed_node_counts(self, root_ids: Sequence[str]) -> dict[str, int]:
        """How many nodes of each of ``root_ids`` are FAILED now (roots with none left out)."""
        ...

    def failed_nodes(self, root_ids: Sequence[str], first: int) -> dict[str, tuple[int, list[str]]]:
        """``{root_id: (how many, the first ``first`` ids)}`` of the FAILED nodes of ``root_ids``,
        by node id (roots with none left out), in one grouped read: at most ``first`` rows per root."""
        ...

    def callback_waiters(self, root_ids: Sequence[str]) -> list[tuple[str, str, str, str]]:
        """``(root_id, node_id, version, schedule type)`` of each RUNNING node of ``root_ids`` whose
        live schedule of its current version waits for callbacks (``callback``, ``multiple_callback``)."""
        ...

    def callback_waiters_first(self, root_ids: Sequence[str], first: int
                               ) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
        """``{root_id: (how many, the first ``first`` as (node_id, version, schedule type))}`` of
        :meth:`callback_waiters`, by node id, in one grouped read: at most ``first`` rows per root."""
        ...

    def states_of_parent(self, parent_id: str) -> list[StateRecord]: ...

    def insert_state(self, rec: StateRecord) -> None: ...

    def update_state(self, node_id: str, *, expect_version: str | None = None,
                     expect_names: Collection[str] | None = None, **fields: Unpack[StateWrite]) -> bool:
        """Write ``fields`` only while the version and name still match; False when they do not."""
        ...

    def reset_inner_loops(self, parent_id: str) -> None:
        """Set ``inner_loop`` to 0 on the states under ``parent_id``; each row changed goes to the
        change feed as a note (``from_state == to_state``)."""
        ...


# The reads Changes.read_together sends together (a poll's: culm.core.state_tree).
READ_TOGETHER = frozenset({"read_changes", "states_of_root", "get_states", "node_types", "live_schedules",
                           "live_process_positions", "tasks_of_root"})


def refuse_unknown_reads(calls: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Refuse, naming them, the verbs of ``calls`` that read_together does not send."""
    unknown = [verb for verb, _ in calls if verb not in READ_TOGETHER]
    if unknown:
        raise InvalidOperationError(f"read_together cannot read {unknown}: it reads {sorted(READ_TOGETHER)}")


class Changes(Protocol):
    """The change feed: one row per state write, written with the commit."""

    @property
    def feed_ordered(self) -> bool: ...

    def record_change(self, root_id: str, node_id: str, from_state: str | None, to_state: str,
                      version: str, loop: int) -> None: ...

    def last_change_seq(self) -> int: ...

    def changes_since(self, after: int, most: int) -> tuple[int, list[tuple[str, str]]]:
        """The highest seq this unit sees (as ``last_change_seq``), and the (root_id, node_id) of
        the changes with ``after`` < seq <= ``after + most``, each pair once: a poller's catch-up
        (its pairs are incomplete when the highest seq is above ``after + most``)."""
        ...

    def changed_states(self, root_id: str, after: int, upto: int) -> list[tuple[str, StateRecord | None]]:
        """Each node of ``root_id`` a change with ``after`` < seq <= ``upto`` names, once, with
        its state row as this unit sees it (None: it has none, e.g. a note about a converge
        gateway no branch has passed yet): a kept state tree's catch-up in one read."""
        ...

    def read_changes(self, after: int, upto: int, root_id: str | None, limit: int) -> list[StateChange]:
        """Up to ``limit`` changes with ``after`` < seq <= ``upto`` (of one root when given), in seq order."""
        ...

    def read_together(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """The answers of several plain reads, each ``(verb, args)`` answered as ``verb(*args)``
        would be, in order; on a server database in one round trip. The verbs: ``read_changes``,
        ``states_of_root``, ``get_states``, ``node_types``, ``live_schedules``, ``live_process_positions``,
        ``tasks_of_root`` (a poll's reads: culm.core.state_tree)."""
        ...


class Processes(Protocol):
    """The persisted threads of execution walking a pipeline's graph."""

    def insert_processes(self, recs: Sequence[ProcessRecord]) -> None: ...

    def get_process(self, process_id: str, *, for_update: bool = False) -> ProcessRecord | None: ...

    def update_process(self, process_id: str, **fields: Unpack[ProcessFields]) -> None: ...

    def ack_children(self, counts: Mapping[str, int]) -> dict[str, ProcessRecord]:
        """Count ``counts[parent_id]`` more finished children of each process ``parent_id`` (their
        rows locked until the commit, in id order); returns those processes as they are stored now,
        these children counted in ``ack_num`` (a process not stored is left out). The rows come
        with the counts: the last child wakes its parent without a read."""
        ...

    def ack_children_at_commit(
        self, counts: Mapping[str, int], gateways: Mapping[str, str], woken: Callable[[list[TaskRecord]], None]
    ) -> bool:
        """Count as ack_children does, and decide each parent's wake with the commit instead of
        now: a parent whose last child this is gets an execute task at its gateway
        (``gateways[parent_id]``) and is woken there, in the database; ``woken`` gets those tasks
        once the commit is through. A parent not stored makes the commit fail (nothing of the
        transaction is kept), where ack_children leaves it out for the caller to raise. False
        (nothing done) where the store cannot: the caller counts with ack_children and wakes the
        parents itself."""
        ...

    def processes_of_root(self, root_id: str) -> list[ProcessRecord]: ...

    def live_process_positions(self, root_id: str) -> list[ProcessPosition]:
        """Where each process of ``root_id`` that is not dead stands (no stack: cheap to read)."""
        ...

    def processes_suspended_by(self, by: str) -> list[ProcessRecord]: ...

    def processes_at(self, node_id: str) -> list[ProcessRecord]: ...

    def kill_processes_of_root(self, root_id: str) -> None: ...


class Tasks(Protocol):
    """The task outbox: durable work, written and deleted in the transactions that cause and
    complete it, leased by whoever runs it."""

    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None: ...

    def claim_task(self, task_id: str, owner: str, until: float, at: float) -> TaskRecord | None: ...

    def task_with_process(self, task_id: str, lease: Lease | None = None, *, held: bool = False
                          ) -> tuple[TaskRecord | None, ProcessRecord | None]: ...

    def tasks_of_root(self, root_id: str, kind: str) -> list[TaskRecord]: ...

    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def task_lease(self, task_id: str) -> tuple[str | None, float | None, bool, float | None] | None:
        """(owner, claimed_until, published, relayed_at) of a task row; None when it is gone."""
        ...

    def update_task(self, task_id: str, **fields: Unpack[TaskFields]) -> None: ...

    def delete_task(self, task_id: str, *, as_read: TaskRecord | None = None) -> None: ...

    def delete_tasks_of_root(self, root_id: str) -> None: ...

    def delete_tasks_of_processes(self, process_ids: Sequence[str]) -> None: ...

    def pending_tasks(self, at: float, limit: int, *, horizon: float = 0.0) -> list[TaskRecord]: ...

    def relay_candidates(self, at: float, grace: float, horizon: float, limit: int,
                         *, resend_after: float | None = None) -> list[TaskRecord]: ...

    def mark_relayed(self, task_ids: Sequence[str], at: float) -> None: ...

    def mark_published(self, task_ids: Sequence[str], published: bool) -> None: ...

    def extend_leases(self, owner: str, task_ids: Sequence[str], until: float) -> None: ...

    def release_leases(self, task_ids: Sequence[str] | None = None) -> None:
        """Free the leases of ``task_ids``; None: of every task and every schedule call (the sole
        runner of an embedded database, starting after another died)."""
        ...


class NodeData(Protocol):
    """Node inputs and outputs, input overrides, and the pipelines' contexts."""

    def get_inputs_override(self, node_id: str) -> UserData | None: ...

    def set_inputs_override(self, node_id: str, inputs: UserData) -> None: ...

    def get_execution_data(self, node_id: str) -> tuple[UserData, UserData] | None: ...

    def set_execution_data(self, node_id: str, inputs: UserData, outputs: UserData, *, always: bool = False) -> None:
        """Store a node's inputs and outputs; past :data:`~culm.model.limits.STORED_BYTES_CHECK_AT`
        bytes, or whatever their size when ``always`` (an operator's write), checked against the
        stored-bytes budget first (StoredBytesBudgetError, nothing written)."""

    def check_logs(self, node_id: str, size: int, *, always: bool = False) -> None:
        """Refuse (StoredBytesBudgetError) ``size`` bytes of log lines of ``node_id`` past the
        stored-bytes budget: checked past STORED_BYTES_CHECK_AT bytes, or whatever the size when
        ``always``."""

    def check_new_pipeline(self, root_id: str) -> None:
        """Refuse (StoredBytesBudgetError) the run ``root_id`` this unit just wrote when what it
        holds would take every pipeline past :data:`~culm.model.limits.MAX_STORED_BYTES`."""

    def set_execution_outputs(self, node_id: str, outputs: UserData, *, checked: bool = False) -> None:
        """Replace a node's outputs, keeping its inputs; ``checked`` (a pipeline's outputs): past
        :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes, checked against the stored-bytes
        budget first (StoredBytesBudgetError, nothing written)."""

    def get_context(self, pipeline_id: str, keys: Iterable[str] | None = None) -> dict[str, ContextValue]: ...

    def insert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None: ...

    def upsert_context(self, pipeline_id: str, values: Iterable[ContextValue], *, checked: bool = False) -> None:
        """``checked``: the engine's copy of a node's outputs, refused past the budget
        (StoredBytesBudgetError, nothing written) when over STORED_BYTES_CHECK_AT bytes."""

    def check_context_growth(self, pipeline_id: str, replaced: Sequence[object], values: Sequence[object]) -> None:
        """Raise StoredBytesBudgetError when storing ``values`` in place of ``replaced`` (context
        values of pipeline ``pipeline_id``, measured as this store writes them) would take its root
        pipeline past its budget, or every pipeline past theirs; checked whatever the size."""
        ...


class Schedules(Protocol):
    """The schedule phase of activity runs, and the callbacks they wait for."""

    def insert_schedule(self, rec: ScheduleRecord) -> None: ...

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None: ...

    def schedule_of(self, node_id: str, version: str) -> ScheduleRecord | None: ...

    def live_schedules(self, node_ids: Sequence[str]) -> list[ScheduleRecord]: ...

    def schedules_of_nodes(self, node_ids: Sequence[str]) -> list[ScheduleRecord]:
        """Every schedule of these nodes, finished ones included (the invariant checker's read)."""
        ...

    def update_schedule(self, schedule_id: str, **fields: Unpack[ScheduleFields]) -> None: ...

    def lock_schedule(self, schedule_id: str, until: float, at: float) -> bool: ...

    def lock_schedule_call(self, schedule_id: str, root_id: str, task_id: str, until: float, at: float) -> bool:
        """Lock a schedule for the call of task ``task_id`` (root ``root_id``) until ``until``.

        The lock row names no holder: the holder is the task of the schedule with a live lease at
        ``at`` (a heartbeat keeps it while the call runs). Refused while another task holds one,
        whatever the lock's time says; else the lock is set, provided it is still the one just
        read (of two takers, one wins). So a dead worker's lock is taken over once its leases are
        freed, and a call running past the lock's time keeps it."""
        ...

    def insert_callback(self, callback_id: str, node_id: str, version: str, data: object, *,
                        always: bool = True) -> None:
        """Keep a callback accepted for run ``version`` of the node, numbered after the run's
        earlier ones (the caller holds the node's state row, so numbers never clash).

        Raises StoredBytesBudgetError when its data would take the root pipeline past its budget:
        checked whatever its size when ``always``, else only past
        :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes (like the engine's own writes)."""
        ...

    def first_callback_task(self, root_id: str, node_id: str, version: str) -> str | None:
        """Of the tasks still carrying a callback of run ``version`` of the node, the one whose
        callback was accepted first (None when none waits)."""
        ...

    def has_callback(self, node_id: str, version: str) -> bool: ...

    def get_callback(self, callback_id: str) -> object:
        """The data a callback was accepted with (None when there is no such callback)."""
        ...


class Histories(Protocol):
    """Past runs of nodes and the log lines of their user code."""

    def add_history(self, rec: HistoryRecord, *, always: bool = False) -> None: ...

    def histories(self, node_id: str, loop: int = -1, payload_chars: int | None = None) -> list[HistoryRecord]:
        """A node's histories, oldest first. With ``payload_chars``, the inputs and outputs of the
        newest ones are read while their stored text fits in that many characters in all (the
        newest's always, unless it is 0); the others come with ``{}`` and ``left_out`` set to the
        characters not read."""
        ...

    def add_logs(self, rows: Sequence[LogRow]) -> None: ...

    def logs(self, node_id: str, version: str, first: int = 0, count: int | None = None) -> list[str]:
        """The run's lines in the order logged, from the ``first`` (0-based), at most ``count``."""
        ...

    def logs_at(self, node_id: str, version: str, first: int, count: int) -> list[str] | None:
        """Like :meth:`logs`, found by the lines' stored numbers instead of passing over the lines
        before ``first``; None when the line numbered ``first`` has none (stored before numbers
        were kept). Fewer than ``count`` when the numbers stop being consecutive (lines a writer of
        an older release stored unnumbered follow): the caller reads on from there."""
        ...

    def last_logs(self, node_id: str, version: str, skip: int, count: int) -> list[str]:
        """The ``count`` lines logged before the run's last ``skip``, in the order logged: a tail
        read from the end, without passing over the lines before it."""
        ...

    def log_count(self, node_id: str, version: str) -> int: ...

    def retag_logs(self, node_id: str, old_version: str, new_version: str) -> None: ...


class Prefetch(Protocol):
    """Reads a unit makes ahead of a batch's steps, in a few statements instead of one (or more)
    per row: worth it where each statement is a round trip to a server. Reads answered from what
    was read ahead see the rows as of that read plus the transaction's own writes.

    A unit that has nothing to gain (its reads are lookups in memory, or in copies it keeps)
    offers none: its :attr:`Unit.prefetch` is None.
    """

    # Whether expect_walks is worth calling: the unit can send the walks' reads with the claim.
    walks_with_claim: bool

    def expect_walks(
        self, held: Sequence[str], nodes: Sequence[str], pipelines: Sequence[str], trees: Sequence[str] = ()
    ) -> None:
        """The :meth:`read_walks_ahead` the runner expects to make once the batch's tasks are read
        (from the graphs it has compiled already, or from what a task's message said): a unit may
        send those reads with the claim's query, so that the later call finds them done, and read
        the stored pipelines of ``trees`` (runs the runner has not compiled) with them, for its
        coming ``get_pipeline(s)`` calls. A guess that turns out wrong costs only what it read
        (the later call reads what is still missing)."""
        ...

    def read_tasks_ahead(
        self, fresh: Sequence[str], resumed: Sequence[str], lease: Lease, resumed_at: Sequence[str] = ()
    ) -> None:
        """Answer the transaction's coming ``task_with_process`` calls for a batch: ``fresh``
        tasks claimed with ``lease``, ``resumed`` ones read while still held. ``resumed_at``: the
        nodes the resumed tasks' user code ran at, as the runner knows them (a hint: a unit may
        lock their states with the read; a task whose row names another node is served as if
        there were no hint). A unit may do nothing here (each task is then read by its own call)."""
        ...

    def tasks_read_ahead(self) -> list[tuple[TaskRecord, ProcessRecord | None]]:
        """The tasks and processes :meth:`read_tasks_ahead` found (not handed out yet)."""
        ...

    def prefetch_states(self, node_ids: Iterable[str]) -> None:
        """Read the states of ``node_ids`` (the nodes a walk may enter) in one statement."""
        ...

    def prefetch_contexts(self, pipeline_ids: Iterable[str], limit: int = 2000) -> None:
        """Read the contexts of ``pipeline_ids`` (up to ``limit`` values in all)."""
        ...

    def read_walks_ahead(self, held: Sequence[str], nodes: Sequence[str], pipelines: Sequence[str]) -> None:
        """``Unit.hold_states(held)``, :meth:`prefetch_states` of ``nodes`` and
        :meth:`prefetch_contexts` of ``pipelines``, their statements sent together."""
        ...


class Unit(Runs, States, Changes, Processes, Tasks, NodeData, Schedules, Histories, Protocol):
    """One transaction offering every verb the core needs."""

    @property
    def prefetch(self) -> Prefetch | None:
        """What this unit reads ahead of a batch's steps; None: nothing is worth reading ahead."""
        ...

    def announce_change(self) -> None:
        """Mark this transaction as one that changes existing rows (a store keeping copies of
        them drops those copies)."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested unit: its changes are undone on an exception, the outer transaction's are not."""
        ...


class RowCopies(Protocol):
    """Copies of rows an engine thread keeps from one transaction to the next, to answer its own
    reads (the embedded engine of a SQLite file is its sole writer). What they hold is the store's
    business: the runtime makes them, the engine loop hands them back to :meth:`Store.transaction`."""


class Store(Protocol):
    """Hands out units of work."""

    def transaction(self, cache: RowCopies | None = None, *, adds_only: bool = False) -> AbstractContextManager[Unit]:
        """A read-write unit committed at the end of the block; ``cache``: the engine thread's
        kept copies of rows, kept right by the store (and dropped when the unit rolls back).
        ``adds_only``: the unit only adds a new run's rows (run_pipeline), which ``cache`` takes
        without first checking that it is current: the engine's next transaction checks that,
        and drops them with the rest when it is not."""
        ...

    def reading(self, *, snapshot: bool = False) -> AbstractContextManager[Unit]:
        """A read-only unit; ``snapshot``: all its reads see one moment (REPEATABLE READ on a server)."""
        ...

    def is_interruption(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by one of this store's units) means the database was interrupted
        (a lost connection, a restarting server, a deadlock victim) rather than the work being
        wrong: the same work is worth trying again. Only the store knows its driver's errors."""
        ...

    def is_duplicate(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by one of this store's units) is a unique key refusing a row
        (see ``Runs.refuses_duplicate_ids``)."""
        ...

    def schema_problem(self, exc: BaseException) -> str | None:
        """What to tell an operator when ``exc`` says one of culm's tables is missing (dropped
        under a running process): the table and the fix, in one line; None for any other error."""
        ...


@runtime_checkable
class Dispatcher(Protocol):
    """Moves committed tasks to whoever runs them (threads here, Celery workers there)."""

    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Hand over tasks whose rows are committed; called after the commit."""
        ...

    def submitting(self) -> AbstractContextManager[None]:
        """Hold while a caller submits runs (the embedded runner batches around it)."""
        ...

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every task handed over in this process has run (True) or time is up."""
        ...

    def close(self) -> None:
        """Stop taking tasks and let go of threads and connections."""
        ...


class WorkerRegistry(Protocol):
    """Which worker processes are alive: each beats its row; a dead one is buried once."""

    def register(self, owner: str, threads: int, prefix: str) -> None:
        """Add this process's row, under its lease owner id."""
        ...

    def beat(self, owner: str) -> bool:
        """Stamp the owner's row with the database's time; False when it has no row (buried)."""
        ...

    def unregister(self, owner: str) -> None:
        """Remove the owner's row (a clean shutdown)."""
        ...

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker."""
        ...

    def dead(self, dead_after: float) -> list[tuple[WorkerInfo, bool]]:
        """(worker, silent) of the workers to bury: silent longer than ``dead_after``, or gone."""
        ...

    def bury(self, owner: str, silent_after: float | None) -> list[str] | None:
        """Delete a dead worker's row and free its leases; the freed task ids, None when another
        relay buried it first or it beat again."""
        ...

    def free_leases(self, owner: str) -> list[str]:
        """Free the leases a buried owner still holds (rows its last transaction had locked at
        the burial); the freed task ids."""
        ...
