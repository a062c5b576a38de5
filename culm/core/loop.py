"""The engine loop's step: a batch of tasks advanced in ONE transaction (group commit).

A runner (the threads dispatcher of an embedded runtime or of a ``culm worker``, and through it
``bench.statements``; the deterministic simulation) holds its tasks as :class:`Item` s and decides
*when* a batch runs; this module decides *what* a batch does. Inside one transaction every item
moves on: a fresh task is claimed and its process walked until it has to wait
(:func:`culm.core.walker.execute_step`, :func:`culm.core.scheduling.schedule_prepare`); an item
back from its user code has that code's outcome applied. User code is never run here: a step hands
it out as a :class:`UserCall`, the runner starts it only after the commit, and what it returned
(or raised) comes back on the same item for a later batch, execute and schedule alike.

The batch first runs without savepoints (two statements per task saved). Should any task raise,
the transaction is rolled back whole and the batch runs again with a savepoint per task, so a
task that raises again has only its own changes undone and its node failed
(:mod:`culm.core.faults`). An error the store calls an interruption of the database (a lost
connection, a deadlock victim) is not the task's fault: it ends the batch uncommitted, and the
runner tries it again or leaves the rows for a sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from culm._printable import engine_logger
from culm.core import faults, joins, observe, scheduling, states, timeouts, walker
from culm.core.engine import Engine
from culm.core.outcomes import Invoke
from culm.core.ports import Prefetch, RowCopies, Unit
from culm.core.records import EXECUTE, TIMEOUT, TaskRecord
from culm.core.step import Step
from culm.model.compiled import SUBPROCESS, Graph

logger = engine_logger("culm.engine")

# The reads a walk from a node makes as it enters it: the states it holds (the pipelines around
# the node), the states it may enter, the contexts it may read (see expected_walk).
Walk = tuple[list[str], list[str], list[str]]


@dataclass(slots=True, eq=False)
class Item:
    """A task a runner holds: fresh, or back with the outcome of the user code it handed out."""

    task: TaskRecord
    invoke: Invoke | None = None  # execute tasks: the Invoke whose outcome ``result`` is
    waiting: bool = False  # True once its user code ran and ``result`` holds its outcome
    result: object = None
    times: int | None = None  # schedule tasks: which call of its schedule was handed out (its times then)
    # A fresh execute task of a run whose graph this process has not compiled: the walk's reads
    # as its message said (see expected_walk), sent with the claim together with the run's tree.
    walk: Walk | None = None


@dataclass(slots=True, eq=False)
class UserCall:
    """User code a step handed out: a component's ``execute`` or ``schedule``, end-event code.

    The runner calls ``run`` outside any transaction and hands what it returned, or the exception
    it raised, to :meth:`returned`; the item that gives back goes into a later batch.
    """

    item: Item
    run: Callable[[], object]

    @property
    def task(self) -> TaskRecord:
        return self.item.task

    @property
    def node_id(self) -> str:
        """The node whose code this is (an execute task names the node its process set out from)."""
        invoke = self.item.invoke
        return invoke.node_id if invoke is not None and invoke.node_id else self.task.node_id

    def returned(self, outcome: object) -> Item:
        """The item, holding ``outcome`` for the batch that applies it."""
        item = self.item
        item.result, item.waiting = outcome, True
        return item


@dataclass(slots=True, eq=False)
class Committed:
    """What a batch committed; nothing of it may reach the outside world before the commit."""

    step: Step  # its follow-up tasks and after-commit effects
    calls: list[UserCall]  # user code to start, now that the nodes' RUNNING states are durable
    done: list[str]  # ids of the tasks that need nothing more from this runner
    applied: list[Item]  # items whose user code's outcome this commit made durable (their calls are over)

    @property
    def tasks(self) -> list[TaskRecord]:
        """The follow-up tasks the batch wrote (their rows are committed)."""
        return self.step.tasks

    @property
    def cut_off(self) -> list[tuple[str, str]]:
        """(node id, version) of the runs whose user code a node timeout cut off: any call of
        theirs still running is stale (its result will be discarded)."""
        return self.step.cut_off

    def is_cut_off(self, call: UserCall) -> bool:
        """Whether ``call`` (handed out earlier) belongs to a run this batch cut off."""
        invoke = call.item.invoke
        if invoke is not None:  # an execute: the walker recorded the run's version
            return (invoke.node_id, invoke.version or "") in self.step.cut_off
        return any(node_id == call.task.node_id for node_id, _ in self.step.cut_off)  # a schedule call

    def fire(self) -> None:
        """Send the signals and run the hooks of the committed transaction."""
        self.step.fire()


# An item's fields before a pass, to put back when the pass does not commit.
_Saved = tuple[Invoke | None, bool, object]


def commit_batch(
    engine: Engine,
    batch: list[Item],
    *,
    cache: RowCopies | None = None,
    joining: Callable[[list[Item]], None] | None = None,
) -> Committed:
    """Advance ``batch`` in one transaction and commit it; what committed.

    ``joining(batch)`` is called once the first pass's transaction is open (the runner adds what
    became ready while it waited for the write lock). ``cache``: the runner's kept copies of rows,
    handed to the store. A batch that cannot commit even task by task raises, every item as it came.
    """
    saved: list[_Saved] = []
    try:
        return _commit(engine, batch, saved, cache, joining, isolate=False)
    except Exception:  # noqa: BLE001 - not committed: replayed below, task by task
        _restore(batch, saved)
        saved = []
        try:
            return _commit(engine, batch, saved, cache, None, isolate=True)
        except Exception:
            _restore(batch, saved)  # nothing was committed: the items are as they came
            raise


def _commit(
    engine: Engine,
    batch: list[Item],
    saved: list[_Saved],
    cache: RowCopies | None,
    joining: Callable[[list[Item]], None] | None,
    *,
    isolate: bool,
) -> Committed:
    """One transaction over ``batch``, with a savepoint per item when ``isolate`` (the replay).
    ``saved`` collects each item's fields before it runs."""
    calls: list[UserCall] = []
    done: list[str] = []
    began = time.monotonic()
    with engine.store.transaction(cache=cache) as unit:
        if joining is not None:
            joining(batch)
        step = Step(unit)
        if not isolate and (len(batch) > 1 or _walks_with_claim(unit)):
            _read_ahead(engine, unit, batch)
        for item in batch:
            saved.append((item.invoke, item.waiting, item.result))
            call = _advance_isolated(engine, step, item) if isolate else advance(engine, step, item)
            if call is None:
                done.append(item.task.id)
            else:
                calls.append(call)
        joins.settle(step)  # the batch's children at their converge gateways, counted at once
        if calls and time.monotonic() - began > engine.settings.lease_seconds / 3:
            _renew_leases(engine, unit, calls)
    return Committed(step, calls, done, [item for item, (_, waiting, _) in zip(batch, saved, strict=False) if waiting])


def _walks_with_claim(unit: Unit) -> bool:
    """Whether the unit reads a batch's expected walks with its claim (PostgreSQL, MySQL): then a
    batch of one task reads ahead too. Its graph compiled here, its claim and its walk's reads go
    in one round trip; a task a message named (its row not read yet) is claimed, then its walk's
    reads go together in a second."""
    prefetch = unit.prefetch
    return prefetch is not None and prefetch.walks_with_claim


def _renew_leases(engine: Engine, unit: Unit, calls: list[UserCall]) -> None:
    """A slow batch (a result the store took seconds to refuse, say): the leases it took as it
    began may run out before the heartbeat, which skips the rows a batch holds, extends them. Renew
    the leases of the tasks whose user code starts after the commit, so that no relay hands them
    to another runner meanwhile (which would run that code a second time)."""
    owner, until, _ = engine.lease()
    unit.extend_leases(owner, [call.task.id for call in calls], until)


def _restore(batch: list[Item], saved: list[_Saved]) -> None:
    """Put items back as they were before a pass that did not commit (items past the failing
    one never started and need nothing)."""
    for item, (invoke, waiting, result) in zip(batch, saved, strict=False):
        item.invoke, item.waiting, item.result = invoke, waiting, result


def advance(engine: Engine, step: Step, item: Item) -> UserCall | None:
    """Move one task forward inside ``step``'s transaction; the user code to run next, if any."""
    task = item.task
    if task.kind == EXECUTE:
        pending = (item.invoke, item.result) if item.waiting and item.invoke is not None else None
        invoke = walker.execute_step(engine, step, task.id, pending, claim=not item.waiting)
        item.invoke, item.waiting, item.result = invoke, False, None
        return UserCall(item, invoke.call) if invoke is not None else None
    if item.waiting:
        scheduling.schedule_apply(engine, step, task.id, item.result, item.times)
        return None
    if task.kind == TIMEOUT:
        timeouts.fire(engine, step, task.id)
        return None
    prepared = scheduling.prepare_call(engine, step, task.id)
    if prepared is None:
        return None
    call, item.times = prepared
    return UserCall(item, call)


def _advance_isolated(engine: Engine, step: Step, item: Item) -> UserCall | None:
    """:func:`advance` in a savepoint: if it raises, only this task's changes are undone and its
    node fails (unless the database was interrupted: then the whole batch is tried again)."""
    resumed = item.waiting
    try:
        with step.unit.savepoint():
            call = advance(engine, step, item)
            joins.settle(step)  # its joins counted inside its savepoint
            return call
    except Exception as exc:  # noqa: BLE001 - this task's changes are undone, not the batch's
        step.joins.clear()
        if engine.store.is_interruption(exc):
            raise
        _fail_task(engine, step, item, resumed, exc)
        return None


def _fail_task(engine: Engine, step: Step, item: Item, resumed: bool, exc: Exception) -> None:
    """Fail the node of a task whose step raised (see :mod:`culm.core.faults`), in a fresh
    savepoint; if that raises too, record the least that stops the task, then nothing."""
    task = item.task
    logger.error("task %s (%s of node %s) raised; failing its node", task.id, task.kind, task.node_id,
                 exc_info=exc)
    item.invoke, item.waiting, item.result = None, False, None
    attempts: tuple[Callable[[], object], ...] = (
        lambda: faults.fail_task(engine, step, task.id, exc, resumed),
        lambda: faults.fail_minimal(step, task.id),
    )
    for attempt in attempts:
        try:
            with step.unit.savepoint():
                attempt()
            return
        except Exception as again:  # noqa: BLE001 - try the next, smaller record
            if engine.store.is_interruption(again):
                raise
            logger.exception("recording the failure of task %s failed", task.id)
    logger.critical("task %s of node %s could not be failed; it stays for the next sweep", task.id,
                    task.node_id)


def _read_ahead(engine: Engine, unit: Unit, batch: list[Item]) -> None:
    """A batch's reads up front, where the unit offers a :class:`~culm.core.ports.Prefetch`
    (PostgreSQL, MySQL): its tasks and processes, the states its walks may need and the contexts of the
    pipelines they run in, in a few statements instead of several per task. Writes then pile up
    and go out together at the commit."""
    prefetch = unit.prefetch
    if prefetch is None:
        return
    fresh = [i.task.id for i in batch if i.task.kind == EXECUTE and not i.waiting]
    back = [i for i in batch if i.task.kind == EXECUTE and i.waiting]
    # Where their calls ran (the walk set the task's node to it): MySQL locks those states with the read.
    at = [i.invoke.node_id for i in back if i.invoke is not None and i.invoke.node_id]
    if prefetch.walks_with_claim:
        _expect_walks(engine, prefetch, batch)
    prefetch.read_tasks_ahead(fresh, [i.task.id for i in back], engine.lease(), at)
    nodes: list[str] = []
    stacks: list[str] = []
    pipelines: list[str] = []
    live = [(task, proc) for task, proc in prefetch.tasks_read_ahead() if proc is not None and not proc.dead]
    engine.read_graphs((proc.root_id for _, proc in live), unit)  # the runs new to this process: one read
    for task, proc in live:
        graph = engine.graph(proc.root_id, unit)
        if task.node_id in graph.nodes:
            ahead = graph.ahead_of_resume(task.node_id)
            stacks += proc.stack
            nodes += ahead
            pipelines += (n for n in ahead if graph.nodes[n].type == SUBPROCESS)  # entered on the way
    # What every walk's first node entry holds (walker._enter), the states the walks may need and
    # the contexts they may read: one round trip for all three on a server database.
    prefetch.read_walks_ahead(stacks, nodes, pipelines + stacks)


def _expect_walks(engine: Engine, prefetch: Prefetch, batch: list[Item]) -> None:
    """What _read_ahead's walk reads will be, as the runner knows the items' nodes before the
    tasks are read (the unit sends these reads with the claim): from the graphs compiled here
    already; for a fresh task of a run not compiled here, from what its message said
    (``Item.walk``), the run's tree then read with the claim too."""
    held: list[str] = []
    nodes: list[str] = []
    pipelines: list[str] = []
    trees: list[str] = []
    for item in batch:
        task = item.task
        if task.kind != EXECUTE:
            continue
        invoke = item.invoke
        back = item.waiting and invoke is not None and invoke.node_id
        # A task a message named is only an id (and, from a message of this version, its run and
        # node) until its walk reads the row: its call's Invoke knows the run and the node, once
        # back from the user code.
        root_id = invoke.root_id or task.root_id if back and invoke is not None else task.root_id
        node_id = invoke.node_id if back and invoke is not None else task.node_id
        graph = engine.known_graph(root_id) if root_id else None
        walk = expected_walk(graph, node_id) if graph is not None else None
        if graph is None and root_id:
            trees.append(root_id)  # compiled after the claim, its tree read with it
            walk = item.walk if not back else None
        if walk is None:
            continue
        held += walk[0]
        nodes += walk[1]
        pipelines += walk[2]
    if nodes or trees:
        prefetch.expect_walks(held, nodes, pipelines, trees)


def expected_walk(graph: Graph, node_id: str) -> Walk | None:
    """The reads of a walk that sets out from (or resumes at) ``node_id`` of ``graph``: the
    pipelines around the node (the stack the walk holds), the nodes it may enter, the contexts it
    may read. None: no such node. A publisher that has the graph puts this in a task's message
    (:mod:`culm.dispatch.celery`), so a worker that has not compiled the run reads it with the claim."""
    node = graph.nodes.get(node_id)
    if node is None:
        return None
    stack = []
    pid: str | None = node.pipeline_id
    while pid is not None and pid in graph.pipelines:
        stack.append(pid)
        pid = graph.pipelines[pid].parent_pipeline_id
    ahead = graph.ahead_of_resume(node_id)
    return stack, ahead, [*(n for n in ahead if graph.nodes[n].type == SUBPROCESS), *stack]


def moved_on(unit: Unit, runs: set[tuple[str, str]], schedules: dict[str, str]) -> set[tuple[str, str]]:
    """Which of the runs of calls still running have moved on in the database (a deadline cut them
    off, an operator force-failed them): of ``runs``, the (node id, version) of executes whose node
    has another version now; of ``schedules`` (schedule id -> node id, for schedule calls), the
    (node id, "") of those whose schedule is no longer its RUNNING node's current one."""
    found = unit.get_states([node_id for node_id, _ in runs] + list(schedules.values()))
    gone = {(node_id, version) for node_id, version in runs
            if node_id not in found or found[node_id].version != version}
    for schedule_id, node_id in schedules.items():
        sched, st = unit.get_schedule(schedule_id), found.get(node_id)
        if sched is None or sched.finished or sched.expired or st is None or st.version != sched.version \
                or st.name != states.RUNNING:
            gone.add((node_id, ""))
    return gone


def abandoned_threads(count: int) -> None:
    """A dispatcher now has ``count`` threads let go of that still run cut-off calls: tell a
    metrics exporter, if one listens (:mod:`culm.core.observe`)."""
    report = observe.abandoned_observer
    if report is not None:
        report(count)
