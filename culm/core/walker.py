"""The execute path: move a process forward node by node until it has to wait.

One transaction covers everything from the end of one piece of user code to the start of the next
(finishing an activity, walking any number of events and gateways, entering the next activity), so
an activity costs one commit and pure nodes cost none of their own.
"""

from __future__ import annotations

from typing import cast

from culm._printable import engine_logger
from culm.core import handlers, revoking, signals, states
from culm.core.engine import Engine
from culm.core.outcomes import Die, Invoke, Next, Outcome, Sleep
from culm.core.ports import ProcessFields, StateFields, Unit
from culm.core.records import EXECUTE, ProcessRecord, StateRecord, TaskRecord, new_id, new_version, now
from culm.core.run import Run, VersionLostError
from culm.core.step import Join, Step
from culm.model.compiled import SUBPROCESS, Graph, Node

logger = engine_logger("culm.engine")

# User code handed out and what it returned (or raised), to apply in the next transaction.
Pending = tuple[Invoke, object]

_PROC_FIELDS = ("current_node_id", "stack", "asleep", "suspended", "suspended_by", "dead")


class _Stop(Exception):
    """The process parked (slept, suspended, died or handed over to children)."""


def execute_step(
    engine: Engine, step: Step, task_id: str, pending: Pending | None, *, claim: bool
) -> Invoke | None:
    """One transaction's worth of an execute task; returns the user code to run next, if any."""
    unit = step.unit
    # Applying a result (not ``claim``) needs the task still ours: if our lease ran out and another
    # runner took the task over, that runner replays the call and its result counts. Applying ours
    # would run the next node's user code twice, once per runner.
    task, proc = unit.task_with_process(task_id, engine.lease(), held=not claim)
    if task is None:
        if pending is not None:
            logger.info("dropping the result for task %s: the task is done or another runner holds it", task_id)
        return None
    if proc is None:
        # culm deletes no process row: a task whose process is not stored is damage. Raised, it
        # fails the task's node where an operator sees it (culm.core.faults); the task was
        # dropped before, and its run stayed RUNNING with nothing to say why.
        raise LookupError(f"process {task.process_id} of task {task.id} at node {task.node_id} is not stored")
    if proc.dead:
        unit.delete_task(task_id)
        return None
    if pending is not None and pending[0].node_id and (
        (task.node_id, task.running_version) != (pending[0].node_id, pending[0].version)
    ):
        # The task moved on without this result: our lease ran out (a database outage stopped the
        # heartbeat) and another runner ran the same call and went on. Its result counts.
        logger.warning("dropping a stale result for task %s (node %s)", task_id, pending[0].node_id)
        return None
    graph = engine.graph(proc.root_id, unit)
    if pending is None and task.running_version is not None and _moved_on(unit, graph, task):
        # A replay (after a crash or a lost lease) of a call whose node an operator has since
        # failed and retried or skipped: the process goes on from the task that command made.
        # Walking this one would enter the node again as if it were a loop.
        unit.delete_task(task_id)
        return None
    return _advance(engine, step, graph, proc, task, pending)


def _moved_on(unit: Unit, graph: Graph, task: TaskRecord) -> bool:
    st = unit.get_state(task.node_id)
    if st is not None and _paused_on_entry(graph, st, task):
        return False  # the walk parks the process on the paused subprocess (_reenter)
    return st is None or st.name != states.RUNNING or st.version != task.running_version


def _paused_on_entry(graph: Graph, st: StateRecord, task: TaskRecord) -> bool:
    """A SubProcess paused (``pause_pipeline``) while its process was entering it: its params
    rendered on the user-code pool. Its process never stepped in, so nothing else parks it: it
    must park on the subprocess, and the resume replays the entry (``_unsuspend``)."""
    node = graph.nodes.get(st.node_id)
    return (node is not None and node.type == SUBPROCESS and st.name == states.SUSPENDED
            and st.version == task.running_version)


def call_user_code(invoke: Invoke) -> object:
    """Run an Invoke's user code; an escaped exception becomes the result."""
    try:
        return invoke.call()
    except BaseException as exc:  # noqa: BLE001 - handlers turn this into a failed node
        logger.exception("user code raised outside its guard")
        return exc


def _advance(
    engine: Engine, step: Step, graph: Graph, proc: ProcessRecord, task: TaskRecord, pending: Pending | None
) -> Invoke | None:
    before = _snapshot(proc)
    try:
        if pending is not None:
            outcome = _resume(engine, step, graph, proc, task, pending)
        else:
            outcome = Next(task.node_id)
        run = None
        while isinstance(outcome, Next):
            run = _enter(engine, step, graph, proc, task, outcome.node_id)
            outcome = handlers.execute(run)
        if isinstance(outcome, Invoke):
            version = run.state.version if run is not None else task.running_version
            node_id = proc.current_node_id
            step.unit.update_task(task.id, node_id=node_id, running_version=version)
            _save_process(step, proc, before)
            return Invoke(outcome.call, outcome.resume, node_id, version, proc.root_id)
        if isinstance(outcome, Sleep):
            proc.asleep = True
            # A call's result applied without entering a node (whose walk checks the stack): if the
            # pipeline was revoked meanwhile, only a poll may go on (culm.core.revoking).
            if run is None and revoking.ends_after_call(step, proc):
                proc.dead = True
                _note_quiet_move(step, proc)
        elif isinstance(outcome, Die):
            proc.dead = True
    except _Stop:
        pass
    except VersionLostError:
        # Someone (forced fail, retry, revoke) moved the node on while user code ran: our
        # result is stale; leave the process as they left it. The row may have moved on too
        # (another runner's copy of this task applied its result after we read the row): then it
        # drives the process now and stays.
        step.unit.delete_task(task.id, as_read=task)
        return None
    except Exception as exc:
        exc.add_note(f"culm: raised while the process of task {task.id} was at node {proc.current_node_id}")
        raise
    _save_process(step, proc, before)
    step.unit.delete_task(task.id)
    return None


# What a walk may change of a process: the values of _PROC_FIELDS, in that order.
_ProcView = tuple[str, list[str], bool, bool, str | None, bool]


def _snapshot(proc: ProcessRecord) -> _ProcView:
    """The fields of _PROC_FIELDS, in that order (the stack copied: walks change it in place)."""
    return (proc.current_node_id, list(proc.stack), proc.asleep, proc.suspended, proc.suspended_by, proc.dead)


def _save_process(step: Step, proc: ProcessRecord, before: _ProcView) -> None:
    after: _ProcView = (proc.current_node_id, proc.stack, proc.asleep, proc.suspended, proc.suspended_by, proc.dead)
    if after == before:
        return
    changed = {f: now_ for f, now_, then in zip(_PROC_FIELDS, after, before, strict=True) if now_ != then}
    step.unit.update_process(proc.id, **cast(ProcessFields, changed))


def _resume(engine: Engine, step: Step, graph: Graph, proc: ProcessRecord, task: TaskRecord, pending: Pending) -> Outcome:
    invoke, result = pending
    node = graph.node(task.node_id)
    st = step.unit.get_state(node.id, for_update=True)
    if st is not None and _paused_on_entry(graph, st, task):
        # The result is dropped: the resume renders the params again, as a replay does.
        proc.suspended, proc.suspended_by = True, node.id
        step.note(st)  # the process parks without a state write (waits.KeptFacts: "reached")
        raise _Stop
    if st is None:
        # culm deletes no state row: one missing is damage. Raised, the node fails where an
        # operator sees it (culm.core.faults) with its process parked there; taken for a lost
        # version before, the result was dropped and the run stayed RUNNING with nothing to show.
        raise LookupError(f"the state of node {node.id} is not stored: the result of its user code cannot be applied")
    if st.version != task.running_version or st.name != states.RUNNING:
        raise VersionLostError(node.id)
    run = Run(engine, step, graph, proc, node, st)
    outcome: Outcome = invoke.resume(run, result)
    return outcome


def _enter(engine: Engine, step: Step, graph: Graph, proc: ProcessRecord, task: TaskRecord, node_id: str) -> Run:
    unit = step.unit
    # The pipelines around the node stay as read until our commit: a pause (resume, revoke) that
    # commits after this read waits for us, so no node is entered after pause_pipeline returned.
    stack_states = unit.hold_states(proc.stack)
    _check_revoked(step, proc, stack_states)  # before a join too: a revoked run's converge never runs
    if node_id == proc.destination_id:
        _join(step, proc, node_id)
        # The converge wait of the fork lists the branches still out: this one is counted without a
        # state write, so a note on a pipeline around it (held above: no read of its own).
        _note_quiet_move(step, proc, stack_states)
        raise _Stop
    proc.current_node_id = node_id
    prefetch = unit.prefetch
    if prefetch is not None:  # one read for the states this walk may need, not one per node entered
        prefetch.prefetch_states(graph.ahead(node_id))
    _check_stack(step, proc, stack_states)
    found = unit.get_states([node_id], mutable=(node_id,))
    node = graph.nodes[node_id]
    st = found.get(node_id)
    root_id, parent_id = graph.root_id, node.pipeline_id
    if st is None:
        at = now()
        st = StateRecord(node_id, root_id, parent_id, states.RUNNING, new_version(), 1, 1, 0, False, False, at, at, None)
        step.create_state(st, 1)
    elif st.name == states.RUNNING and st.version == task.running_version:
        pass  # replay after a crash: the node never finished, run it again with the same version
    else:
        st = _reenter(engine, step, graph, proc, node, st)
    if signals.pipeline_event.has_receivers:  # asked here: every node entered would build the event's arguments
        step.event("node_enter", root_pipeline_id=root_id, node_id=node_id)
    return Run(engine, step, graph, proc, node, st)


def _reenter(engine: Engine, step: Step, graph: Graph, proc: ProcessRecord, node: Node, st: StateRecord) -> StateRecord:
    unit = step.unit
    if st.name == states.SUSPENDED:
        st = _confirm_suspended(unit, node.id) or st
    if st.name == states.SUSPENDED:
        if not st.root_id:  # created ahead by pause_node_appoint: now it is the root's
            unit.update_state(node.id, root_id=graph.root_id, parent_id=node.pipeline_id)
            st.root_id, st.parent_id = graph.root_id, node.pipeline_id
            step.note(st)  # no transition: the kept trees must learn the row is the root's now
        proc.suspended, proc.suspended_by = True, node.id
        step.note(st)  # the process parks without a state write (waits.KeptFacts: "reached")
        raise _Stop
    if st.name == states.FINISHED and node.type != SUBPROCESS and st.loop > engine.settings.rerun_limit:
        run = Run(engine, step, graph, proc, node, st)
        # The feed shows every write; the signal only the FAILED.
        step.set_state(st, states.RUNNING, versioned=False, signal=False)
        run.fail(f"node execution exceed rerun limit {engine.settings.rerun_limit}")
        raise _Stop
    if _resumed_before_entry(node, st, proc):
        return st
    if st.name not in states.ENTERABLE_STATES:
        proc.asleep = True  # a duplicate or stale message: the node is busy or waits for an operator
        raise _Stop
    at = now()
    fields: StateFields = {"started_time": at, "archived_time": None}
    loop = -1
    if st.name == states.FINISHED:
        # Entered again (a node loop's next iteration, a flow looping back): checked against the
        # budget whatever its size, or 10,000 iterations of 60 KB histories (each under
        # STORED_BYTES_CHECK_AT) passed any budget; one past it is kept without its data.
        Run(engine, step, graph, proc, node, st).record_history(always=True)
        loop = st.loop + 1
        fields.update(
            {"loop": loop, "inner_loop": st.inner_loop + 1, "version": new_version(), "skip": False,
             "error_ignored": False}
        )
        if not node.loop_config:
            fields["retry"] = 0
    elif st.name == states.READY and node.loop_config and st.loop > 1:
        # A retried node loop starts over (bamboo: READY on a loop node runs iteration 1 again);
        # its first iteration also restarts the collected outputs list.
        loop = 1
        fields.update({"loop": 1, "inner_loop": 1})
    if not st.root_id:
        # A row an older version created early (an appointed pause) without its root and parent.
        fields.update({"root_id": graph.root_id, "parent_id": node.pipeline_id})
    # The name is compared too: an appointed pause keeps the version, and on a server database it
    # can commit between our read and this write. Running the node then would override it.
    if not step.set_state(st, states.RUNNING, fields, expect=(st.name,), loop=loop):
        now_st = unit.get_state(node.id, for_update=True)
        if now_st is not None and now_st.name == states.SUSPENDED:
            proc.suspended, proc.suspended_by = True, node.id  # park on the pause, as if we had seen it
            step.note(now_st)  # the process parks without a state write (waits.KeptFacts: "reached")
        elif now_st is not None and _resumed_before_entry(node, now_st, proc):
            return now_st  # the pause and the resume both committed between our read and this write
        else:
            proc.asleep = True
        raise _Stop
    return st


def _resumed_before_entry(node: Node, st: StateRecord, proc: ProcessRecord) -> bool:
    """A subprocess paused before its process stepped in (READY after retry_subprocess) and resumed
    before the process's walk wrote RUNNING: resume_pipeline made it RUNNING, and nothing was parked
    for it to wake. Nobody is inside (its pipeline is entered only through this process): the
    process steps in now, with the run's version, as a replay of the entry does."""
    return st.name == states.RUNNING and node.type == SUBPROCESS and node.id not in proc.stack


def _note_quiet_move(step: Step, proc: ProcessRecord, held: dict[str, StateRecord] | None = None) -> None:
    """``proc`` parks, ends or is counted at a converge without a state write of its pipeline: a
    note on the row of a pipeline around it (one of ``held``, else the root's, read) tells the change
    feed's readers (the wait reasons kept with a state tree say where branches stand and which wait
    on a pause: culm.core.waits.KeptFacts)."""
    around = next((held[pid] for pid in reversed(proc.stack) if pid in held), None) if held else None
    if around is None:
        around = step.unit.get_state(proc.root_id)
    if around is not None:
        step.note(around)


def _check_revoked(step: Step, proc: ProcessRecord, stack_states: dict[str, StateRecord]) -> None:
    """End the process if a pipeline around it is revoked: the root (bamboo checks only that), or a
    subprocess (culm stops what runs inside a revoked subprocess too). Only a process whose node
    polled (or ran its execute) when the revoke came still walks (culm.core.revoking): it dies here."""
    for st in stack_states.values():  # a loop, not any() over a generator: every node entered pays
        if st.name == states.REVOKED:
            proc.dead = True
            _note_quiet_move(step, proc, stack_states)
            raise _Stop


def _check_stack(step: Step, proc: ProcessRecord, stack_states: dict[str, StateRecord]) -> None:
    """Park the process if a pipeline around it is paused.

    ``stack_states`` are held (``Unit.hold_states``): a resume committing after our read waits for
    our commit, and then finds our process parked.
    """
    for pid in proc.stack:
        st = stack_states.get(pid)
        if st is not None and st.name == states.SUSPENDED:
            proc.suspended, proc.suspended_by = True, pid
            step.note(st)  # the process parks without a state write (waits.KeptFacts)
            raise _Stop


def _confirm_suspended(unit: Unit, node_id: str) -> StateRecord | None:
    """Re-read a SUSPENDED state with a row lock before parking on it; returns it only if it moved on.

    The first read saw the last commit. A resume committing after it looks for processes parked on
    the node before ours is committed, and would leave ours parked for good. The locking read waits
    for such a resume and sees its result; once held, the lock makes a later resume wait for our
    commit, so it finds our process.
    """
    st = unit.get_state(node_id, for_update=True)
    return st if st is not None and st.name != states.SUSPENDED else None


def _join(step: Step, proc: ProcessRecord, node_id: str) -> None:
    """A child reached its converge gateway: counted before the commit, with the other children
    that joined in the same transaction (:func:`culm.core.joins.settle`)."""
    proc.dead = True
    if proc.parent_id is not None:
        step.joins.append(Join(proc.parent_id, proc.id, node_id))


def execute_task_for(proc: ProcessRecord, node_id: str) -> TaskRecord:
    """A task that runs ``proc`` from ``node_id``."""
    return TaskRecord(new_id(), EXECUTE, proc.id, node_id, proc.root_id, due=now(),
                      priority=proc.priority, queue=proc.queue)
