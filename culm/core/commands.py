"""Operator commands: pause, resume, revoke, retry, skip, forced fail, callback, context updates.

Each command checks its preconditions and writes its change in ONE transaction, comparing the
state's name and version in the write itself, so a node that moved on a moment earlier is refused
rather than overwritten. Refusals raise NotFoundError / InvalidOperationError with a message that
names the id and what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from culm.core import data as cdata
from culm.core import revoking, states
from culm.core.engine import Engine
from culm.core.handlers.activity import schedule_task
from culm.core.handlers.gateways import fork
from culm.core.ports import StateFields, Unit
from culm.core.records import (
    CODE_RAN,
    COPY_REFUSED,
    ENGINE_MARKERS,
    ContextValue,
    ProcessRecord,
    StateRecord,
    new_id,
    new_version,
    now,
)
from culm.core.retry_data import retry_inputs
from culm.core.run import Run, record_history, store_failure
from culm.core.service_call import dispatch_readonly_hook
from culm.core.step import Step
from culm.core.walker import execute_task_for
from culm.data import context as dctx
from culm.errors import InvalidOperationError, NotFoundError
from culm.model import compiled as g
from culm.model import limits


# -- lookups --------------------------------------------------------------------------------
def _node(engine: Engine, unit: Unit, node_id: str) -> tuple[g.Graph, g.Node]:
    root_id = unit.node_root(node_id)
    if root_id is None:
        raise NotFoundError(f"node {node_id} does not exist")
    graph = engine.graph(root_id, unit)
    if node_id not in graph.nodes:
        raise InvalidOperationError(f"{node_id} is a pipeline, not a node")
    return graph, graph.nodes[node_id]


def _state(unit: Unit, node_id: str, what: str = "node") -> StateRecord:
    return _existing(unit.get_state(node_id, for_update=True), node_id, what)


def _existing(st: StateRecord | None, node_id: str, what: str) -> StateRecord:
    if st is None:
        raise NotFoundError(f"{what} {node_id} has no state: it does not exist or has not been reached yet")
    return st


def _require(st: StateRecord, allowed: tuple[str, ...], action: str, what: str = "node") -> None:
    if st.name in allowed:
        return
    if action == "pause" and st.name == states.SUSPENDED:
        wrong = f"it is already paused (its state is {st.name})"
    elif action == "resume" and allowed == (states.SUSPENDED,):
        wrong = f"it is not paused (its state is {st.name})"
    else:
        wrong = f"its state is {st.name}, expected {' or '.join(allowed)}"
    raise InvalidOperationError(f"cannot {action} {what} {st.node_id}: {wrong}")


def _refuse_if_revoked(unit: Unit, graph: g.Graph, node_id: str, action: str, held: bool = False) -> None:
    """Refuse ``action`` on a node of a revoked pipeline, saying so.

    A revoke kills the run's processes (but the polling ones, which end by themselves), so the
    later checks would mostly refuse too, but with an internal reason ("no live process") that does
    not tell the operator what happened. The pipelines around the node count, not only the root.
    """
    around = [graph.root_id]
    pid = graph.nodes[node_id].pipeline_id if node_id in graph.nodes else graph.root_id
    while pid != graph.root_id and pid in graph.nodes:
        around.append(pid)
        pid = graph.nodes[pid].pipeline_id
    # ``held``: a revoke of a pipeline around it commits before this read or after this step (a
    # resume racing the root's revoke put a subprocess back to RUNNING in the revoked run).
    found = unit.hold_states(around) if held else unit.get_states(around)
    for pipeline_id in around:
        st = found.get(pipeline_id)
        if st is not None and st.name == states.REVOKED:
            raise InvalidOperationError(f"cannot {action} node {node_id}: its pipeline {pipeline_id} is revoked")


def _sleeping_process(unit: Unit, node_id: str) -> ProcessRecord:
    procs = [p for p in unit.processes_at(node_id) if p.asleep and not p.suspended]
    if len(procs) != 1:
        raise InvalidOperationError(
            f"node {node_id} has {len(procs)} waiting processes, expected exactly one"
        )
    return procs[0]


def _cas(step: Step, st: StateRecord, to: str, fields: StateFields | None = None, loop: int = -1) -> None:
    if not step.set_state(st, to, fields, expect=(st.name,), loop=loop):
        raise InvalidOperationError(f"node {st.node_id} changed while the command ran; try again")


def _wake(step: Step, proc: ProcessRecord, node_id: str) -> None:
    step.unit.update_process(proc.id, asleep=False, current_node_id=node_id)
    step.add_task(execute_task_for(proc, node_id))


def _is_pipeline(unit: Unit, engine: Engine, pipeline_id: str) -> str:
    """The root pipeline of ``pipeline_id``, once known to be a pipeline or a subprocess."""
    root_id = unit.node_root(pipeline_id)
    if root_id is None:
        raise NotFoundError(f"pipeline {pipeline_id} does not exist")
    if root_id != pipeline_id and engine.graph(root_id, unit).nodes[pipeline_id].type != g.SUBPROCESS:
        raise InvalidOperationError(f"{pipeline_id} is not a pipeline or subprocess")
    return root_id


def _pipeline_state(unit: Unit, engine: Engine, pipeline_id: str, action: str) -> StateRecord:
    """The state of pipeline (or subprocess) ``pipeline_id``, locked for ``action``.

    A subprocess inside a revoked pipeline is refused: its own state still says RUNNING (a revoke
    writes only the pipeline revoked), but nothing of it runs again, so pausing, resuming or
    revoking it would only write a state that means nothing. The pipelines around it are read
    held (a revoke of one commits before that read or after our commit), and only once its own
    row is locked: every writer locks a subprocess's row before the rows around it (a walk that
    ends it writes it, then its parents; a revoke of a parent writes no row inside it). Held
    first, they closed a cycle with such a walk: the walk held both shared, wrote the subprocess
    behind our wait for it, and then waited for our share of the root.
    """
    root_id = _is_pipeline(unit, engine, pipeline_id)
    st = unit.get_state(pipeline_id, for_update=True)
    if root_id != pipeline_id:
        _refuse_if_revoked(unit, engine.graph(root_id, unit), pipeline_id, action, held=True)
    return _existing(st, pipeline_id, "pipeline")


def _service_hook(engine: Engine, unit: Unit, node: g.Node, st: StateRecord | None, name: str,
                  callback_data: object = None) -> Callable[[], None]:
    """A read-only service hook call to run after commit (ServiceActivity nodes only)."""
    if node.type != g.ACTIVITY:
        return lambda: None
    inputs, outputs = unit.get_execution_data(node.id) or ({}, {})
    root_id = unit.node_root(node.id)
    root_data = unit.get_root_data(root_id) if root_id is not None else {}
    attrs = {"id": node.id, "version": st.version if st else None, "root_pipeline_id": root_id,
             "top_pipeline_id": node.pipeline_id, "loop": st.loop if st else 1,
             "inner_loop": st.inner_loop if st else 1}
    return lambda: dispatch_readonly_hook(node.code, node.version, name, inputs, outputs, root_data,
                                          callback_data, **attrs)


# -- pipelines ------------------------------------------------------------------------------
def pause_pipeline(engine: Engine, pipeline_id: str) -> None:
    with engine.step() as step:
        st = _pipeline_state(step.unit, engine, pipeline_id, "pause")
        _require(st, (states.READY, states.RUNNING, states.LOOP_READY), "pause", "pipeline")
        step.event("pre_pause_pipeline", pipeline_id=pipeline_id)
        _cas(step, st, states.SUSPENDED)
        step.event("post_pause_pipeline", pipeline_id=pipeline_id)


def resume_pipeline(engine: Engine, pipeline_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        st = _pipeline_state(unit, engine, pipeline_id, "resume")
        _require(st, (states.SUSPENDED,), "resume", "pipeline")
        step.event("pre_resume_pipeline", pipeline_id=pipeline_id)
        _cas(step, st, states.RUNNING)
        _unsuspend(step, pipeline_id)
        step.event("post_resume_pipeline", pipeline_id=pipeline_id)


def _unsuspend(step: Step, by: str) -> None:
    unit = step.unit
    for proc in unit.processes_suspended_by(by):
        unit.update_process(proc.id, suspended=False, suspended_by=None, asleep=False)
        task = execute_task_for(proc, proc.current_node_id)
        st = unit.get_state(proc.current_node_id)
        if st is not None and st.name == states.RUNNING:
            # Parked in the middle of the node's run: its task was replayed (after a crash or a lost
            # lease) while the pipeline was paused. It must replay the run, not find the node busy.
            task.running_version = st.version
        step.add_task(task)


def revoke_pipeline(engine: Engine, pipeline_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        st = _pipeline_state(unit, engine, pipeline_id, "revoke")
        _require(st, (states.RUNNING, states.SUSPENDED), "revoke", "pipeline")
        step.event("pre_revoke_pipeline", pipeline_id=pipeline_id)
        _cas(step, st, states.REVOKED, {"archived_time": now()})
        # Nothing of a revoked run (or subprocess) enters a node again: its processes stop now,
        # but the ones whose node polls (or runs its execute) end by themselves once that is done
        # (bamboo's rule: culm.core.revoking). A revoked subprocess never hands back to its parent:
        # the root stays RUNNING, its wait reason says so, and the operator revokes the root.
        revoking.stop_processes(unit, st.root_id or pipeline_id, pipeline_id)
        step.event("post_revoke_pipeline", pipeline_id=pipeline_id)


# -- appointment pause ----------------------------------------------------------------------
def pause_node_appoint(engine: Engine, node_id: str) -> None:
    try:
        _pause_node_appoint(engine, node_id)
    except Exception as exc:
        if not engine.store.is_duplicate(exc):
            raise
        # The node had no row when we read, and another call (or the engine entering the node)
        # inserted one before our commit: appoint again, over that row.
        _pause_node_appoint(engine, node_id)


def _pause_node_appoint(engine: Engine, node_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "pause")
        if node.type == g.SUBPROCESS:
            raise InvalidOperationError(f"node {node_id} is a SubProcess: use pause_pipeline for subprocesses")
        st = unit.get_state(node_id, for_update=True)
        step.event("pre_pause_node", node_id=node_id)
        if st is None:
            # The row is the node's for good (entering it later only changes its name): it must carry
            # its root and parent, or queries by root never show the node, even once it has run.
            st = StateRecord(node_id, graph.root_id, node.pipeline_id, states.SUSPENDED, new_version(), 1, 1, 0,
                             False, False, now())
            step.create_state(st)  # a created state is a state write too: receivers must hear of it
        else:
            if st.name == states.RUNNING:
                raise InvalidOperationError(f"node {node_id} is RUNNING: only a node not running yet can be paused")
            if st.name == states.SUSPENDED:
                _require(st, (), "pause")  # says it is already paused
            if not states.can_transit(st.name, states.SUSPENDED):
                raise InvalidOperationError(f"node {node_id} is {st.name}: it cannot be paused")
            _cas(step, st, states.SUSPENDED)
            if any(not p.dead for p in unit.processes_at(node_id)):
                step.after.append(_service_hook(engine, unit, node, st, "pre_pause_node"))
                step.after.append(_service_hook(engine, unit, node, st, "post_pause_node"))
        step.event("post_pause_node", node_id=node_id)


def resume_node_appoint(engine: Engine, node_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "resume")
        if node.type == g.SUBPROCESS:
            raise InvalidOperationError(f"node {node_id} is a SubProcess: use resume_pipeline for subprocesses")
        st = _state(unit, node_id)
        _require(st, (states.SUSPENDED,), "resume")
        step.event("pre_resume_node", node_id=node_id)
        _cas(step, st, states.READY)
        _unsuspend(step, node_id)
        step.event("post_resume_node", node_id=node_id)


# -- retry and skip -------------------------------------------------------------------------
def _loop_times(unit: Unit, node: g.Node, flag: str, what: str) -> int:
    """How many iterations the node loop of ``node`` runs in all, when its ``loop_config`` allows
    ``flag`` (``retryable`` / ``skippable``); refused otherwise."""
    cfg = node.loop_config
    if not cfg or not cfg.get(flag):
        raise InvalidOperationError(f"node {node.id} cannot {what}: it has no enabled loop_config with {flag} true")
    stored = unit.get_context(node.pipeline_id, [cdata.loop_times_key(node.id)]).get(cdata.loop_times_key(node.id))
    times = stored.value if stored is not None else cfg.get("loop_times")
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise InvalidOperationError(f"node {node.id} cannot {what}: its loop_config has no loop_times")
    return times


def _drop_last_loop_output(unit: Unit, node: g.Node) -> None:
    """A loop retry runs the failed iteration again: its entry leaves the collected outputs list
    (bamboo's intent; its code empties the list instead)."""
    key = (node.loop_config or {}).get("outputs_key") or "outputs"
    current = unit.get_context(node.pipeline_id, [key]).get(key)
    if current is not None and isinstance(current.value, list) and current.value:
        unit.upsert_context(node.pipeline_id, [ContextValue(key, "plain", current.value[:-1])])


def retry_node(engine: Engine, node_id: str, data: dict[str, Any] | None = None, loop_retry: bool = False) -> None:
    """Run a FAILED node again; ``loop_retry``: run the failed iteration of its node loop again
    (counters kept, state LOOP_READY) instead of the whole loop from its first iteration."""
    if data is not None and not isinstance(data, dict):
        raise InvalidOperationError(f"retry data for node {node_id} must be a dict, got {type(data).__name__}")
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "retry")
        new_inputs = None if data is None else retry_inputs(
            node, data, lambda keys: unit.get_context(node_id, keys).keys())
        if loop_retry:
            _loop_times(unit, node, "retryable", "loop-retry")
        elif not node.can_retry:
            raise InvalidOperationError(f"node {node_id} is not retryable")
        st = _state(unit, node_id)
        _require(st, (states.FAILED,), "retry")
        proc = _sleeping_process(unit, node_id)
        step.event("pre_retry_node", node_id=node_id, data=data)
        step.after.append(_service_hook(engine, unit, node, st, "pre_retry_node"))
        if node.type == g.SUBPROCESS:
            _step_out_of(unit, proc, node_id)  # as bamboo, a failed SubProcess retries here too
        record_history(unit, st, within_budget=True)
        if new_inputs is not None:
            unit.set_inputs_override(node_id, new_inputs)
        version = new_version()
        if node.type == g.EXECUTABLE_END:
            _carry_code_ran(unit, node_id, st.version, version)
        if loop_retry:
            _drop_last_loop_output(unit, node)
            _cas(step, st, states.LOOP_READY, {"version": version, "started_time": None, "archived_time": None})
        else:
            _cas(step, st, states.READY, {"retry": st.retry + 1, "version": version, "started_time": None,
                                          "archived_time": None})
        _wake(step, proc, node_id)
        step.after.append(_service_hook(engine, unit, node, st, "post_retry_node"))
        step.event("post_retry_node", node_id=node_id, data=data)


def _carry_code_ran(unit: Unit, node_id: str, failed: str, version: str) -> None:
    """An executable end event retried after its code ran in the failed run (version ``failed``:
    the pipeline's outputs were then refused, such as their copy into the parent past the budget)
    keeps CODE_RAN under the retry's ``version``: the retry only ends the pipeline, its code never
    runs twice (the marker was lost before session 20, and a retry ran the code again)."""
    data = unit.get_execution_data(node_id)
    if data is not None and data[1].get(CODE_RAN) == failed:
        unit.set_execution_outputs(node_id, {**data[1], CODE_RAN: version})


def retry_subprocess(engine: Engine, node_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "retry")
        if node.type != g.SUBPROCESS:
            raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)}, not a SubProcess")
        st = _state(unit, node_id)
        _require(st, (states.FAILED,), "retry")
        proc = _sleeping_process(unit, node_id)
        step.event("pre_retry_subprocess", node_id=node_id)
        _step_out_of(unit, proc, node_id)
        record_history(unit, st, within_budget=True)
        _cas(step, st, states.READY, {"retry": st.retry + 1, "version": new_version(), "started_time": None,
                                      "archived_time": None})
        _wake(step, proc, node_id)
        step.event("post_retry_subprocess", node_id=node_id)


def _step_out_of(unit: Unit, proc: ProcessRecord, subprocess_id: str) -> None:
    """A SubProcess that failed once its process had stepped in is entered afresh on retry."""
    if proc.stack and proc.stack[-1] == subprocess_id:
        unit.update_process(proc.id, stack=proc.stack[:-1])


def skip_node(engine: Engine, node_id: str, loop_skip: bool = False) -> None:
    """Skip a FAILED activity or start event; ``loop_skip``: skip only the failed iteration of its
    node loop, which goes on with the next iteration while there are any. Also the FAILED end event
    of a subprocess whose outputs could not be copied into the parent (COPY_REFUSED): a retry
    repeats the refusal while the copy is as big, and bamboo has no such failure."""
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "skip")
        if node.type in (g.END, g.EXECUTABLE_END) and not loop_skip:
            end = unit.get_state(node_id, for_update=True)
            if end is not None and _copy_refused(unit, node, end):
                skip_copy_refused_end(engine, step, graph, node, end)
                return
        if node.type not in (g.ACTIVITY, g.START):
            raise InvalidOperationError(
                f"node {node_id} is {g.a_type(node.type)}: only activities, start events and the end event of a "
                "subprocess whose outputs could not be copied into its parent skip")
        times = _loop_times(unit, node, "skippable", "loop-skip") if loop_skip else 0
        if not loop_skip and not node.can_skip:
            raise InvalidOperationError(f"node {node_id} is not skippable")
        st = _state(unit, node_id)
        _require(st, (states.FAILED,), "skip")
        skip_failed(engine, step, node, st, node.id if st.inner_loop < times else None)


def skip_failed(engine: Engine, step: Step, node: g.Node, st: StateRecord, next_id: str | None = None) -> None:
    """Skip the FAILED activity or start event ``node`` (``st`` read with a row lock): FINISHED
    with ``skip`` set, its run kept in the history, its process woken at the next node (``next_id``,
    by default the node's target)."""
    unit = step.unit
    proc = _sleeping_process(unit, node.id)
    step.event("pre_skip_node", node_id=node.id)
    step.after.append(_service_hook(engine, unit, node, st, "pre_skip_node"))
    record_history(unit, st)
    _cas(step, st, states.FINISHED, {"skip": True, "version": new_version(), "archived_time": now()})
    _wake(step, proc, next_id or node.target)  # type: ignore[arg-type]
    step.after.append(_service_hook(engine, unit, node, st, "post_skip_node"))
    step.event("post_skip_node", node_id=node.id)


def _copy_refused(unit: Unit, node: g.Node, st: StateRecord) -> bool:
    """Whether end event ``node``'s current failure (its run of version ``st.version``) is the
    refused copy of its subprocess's outputs: the marker names the run that was refused, and a
    later run that failed otherwise keeps the old outputs, marker included."""
    data = unit.get_execution_data(node.id)
    return data is not None and st.name == states.FAILED and data[1].get(COPY_REFUSED) == st.version


def skip_copy_refused_end(engine: Engine, step: Step, graph: g.Graph, node: g.Node, st: StateRecord) -> None:
    """Skip the FAILED end event ``node`` whose subprocess's outputs could not be copied into the
    parent: the end event FINISHED with ``skip`` set, the subprocess FINISHED with its own outputs
    (stored before the copy) but none copied into the parent, as a skipped activity's are not; the
    process leaves the subprocess and goes on after the SubProcess node."""
    unit = step.unit
    proc = _sleeping_process(unit, node.id)
    sub_id = node.pipeline_id
    if not proc.stack or proc.stack[-1] != sub_id or sub_id == graph.root_id:
        raise InvalidOperationError(f"node {node.id} is not the end event its process waits on in subprocess {sub_id}")
    sub = _state(unit, sub_id, "subprocess")
    _require(sub, (states.RUNNING,), "skip the end event of", "subprocess")
    step.event("pre_skip_node", node_id=node.id)
    record_history(unit, st)
    _cas(step, st, states.FINISHED, {"skip": True, "version": new_version(), "archived_time": now()})
    _cas(step, sub, states.FINISHED, {"archived_time": now()})
    unit.update_process(proc.id, stack=proc.stack[:-1])
    _wake(step, proc, graph.node(sub_id).target)  # type: ignore[arg-type]
    step.event("post_skip_node", node_id=node.id)


def skip_exclusive_gateway(engine: Engine, node_id: str, flow_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "skip")
        if node.type != g.EXCLUSIVE:
            raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)}, not an ExclusiveGateway")
        target = node.target_of_flow(flow_id)
        if target is None:
            raise InvalidOperationError(f"flow {flow_id} is not an outgoing flow of gateway {node_id}")
        st = _state(unit, node_id)
        _require(st, (states.FAILED,), "skip")
        proc = _sleeping_process(unit, node_id)
        step.event("pre_skip_exclusive_gateway", node_id=node_id, flow_id=flow_id)
        record_history(unit, st)
        _cas(step, st, states.FINISHED, {"skip": True, "version": new_version(), "archived_time": now()})
        _wake(step, proc, target)
        step.event("post_skip_exclusive_gateway", node_id=node_id, flow_id=flow_id)


def skip_conditional_parallel_gateway(engine: Engine, node_id: str, flow_ids: list[str], converge_gateway_id: str) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "skip")
        if node.type != g.CONDITIONAL_PARALLEL:
            raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)}, not a ConditionalParallelGateway")
        if not isinstance(flow_ids, (list, tuple)) or not flow_ids:
            raise InvalidOperationError(f"flow_ids for gateway {node_id} must be a non-empty list")
        targets = [node.target_of_flow(f) for f in flow_ids]
        bad = [f for f, t in zip(flow_ids, targets, strict=True) if t is None]
        if bad:
            raise InvalidOperationError(f"flows {bad} are not outgoing flows of gateway {node_id}")
        conv = graph.nodes.get(converge_gateway_id)
        if conv is None or conv.type != g.CONVERGE:
            raise InvalidOperationError(f"{converge_gateway_id} is not a ConvergeGateway of this pipeline")
        if node.converge_gateway_id and converge_gateway_id != node.converge_gateway_id:
            # Branches told to meet elsewhere pass their own converge and strand the run.
            raise InvalidOperationError(f"{converge_gateway_id} is not the converge gateway of {node_id}: its "
                                        f"branches meet at {node.converge_gateway_id}")
        st = _state(unit, node_id)
        _require(st, (states.FAILED,), "skip")
        proc = _sleeping_process(unit, node_id)
        payload = {"node_id": node_id, "flow_ids": list(flow_ids), "converge_gateway_id": converge_gateway_id}
        step.event("pre_skip_conditional_parallel_gateway", **payload)
        record_history(unit, st)
        _cas(step, st, states.FINISHED, {"skip": True, "version": new_version(), "archived_time": now()})
        run = Run(engine, step, graph, proc, node, st)
        fork(run, [t for t in targets if t], converge_gateway_id)
        step.event("post_skip_conditional_parallel_gateway", **payload)


# -- forced fail and callback ---------------------------------------------------------------
def forced_fail_activity(engine: Engine, node_id: str, ex_data: str, *, signal: bool = True) -> None:
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "force-fail")
        if node.type != g.ACTIVITY:
            raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)}: only activities can be force-failed")
        st = _state(unit, node_id)
        _require(st, (states.RUNNING,), "force-fail")
        procs = [p for p in unit.processes_at(node_id) if not p.dead]
        if not procs:
            raise InvalidOperationError(f"node {node_id} has no live process on it")
        force_fail(engine, step, node, st, procs, ex_data, signal=signal)


def force_fail(engine: Engine, step: Step, node: g.Node, st: StateRecord, procs: list[ProcessRecord],
               ex_data: str, *, signal: bool = True, extra: dict[str, Any] | None = None) -> None:
    """Fail the RUNNING activity ``node`` (``st`` read with a row lock) whose live processes are
    ``procs``: ``ex_data`` (and ``extra``) join its outputs, a new version makes any late result of
    its user code stale, its processes sleep until an operator retries or skips it."""
    unit = step.unit
    node_id = node.id
    # Cut like every failure text (a 20 MB message was refused as over the payload limit, naming
    # neither the node nor the command): the node fails, its ex_data says what was cut.
    ex_data = limits.clip_ex_data(ex_data)
    step.event("pre_forced_fail_activity", node_id=node_id, ex_data=ex_data)
    step.after.append(_service_hook(engine, unit, node, st, "pre_forced_fail_activity"))
    inputs, outputs = unit.get_execution_data(node_id) or ({}, {})
    outputs = {**outputs, "ex_data": ex_data, "_forced_failed": True, **(extra or {})}
    store_failure(unit, node_id, inputs, outputs)
    old = st.version
    sent = len(step.events)
    _cas(step, st, states.FAILED, {"version": new_version(), "archived_time": now()})
    if not signal:
        del step.events[sent:]
    for proc in procs:
        unit.update_process(proc.id, asleep=True)
    unit.retag_logs(node_id, old, st.version)
    step.after.append(_service_hook(engine, unit, node, st, "post_forced_fail_activity"))
    step.event("post_forced_fail_activity", node_id=node_id, ex_data=ex_data, old_version=old,
               new_version=st.version)


def callback(engine: Engine, node_id: str, version: str, data: dict[str, Any] | None) -> str:
    """Queue one callback for a waiting node; returns the callback id once it is committed."""
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        _refuse_if_revoked(unit, graph, node_id, "call back")
        st = _state(unit, node_id)
        if st.version != version:
            sched = unit.schedule_of(node_id, version)
            if sched is not None:
                unit.update_schedule(sched.id, expired=True)
            raise InvalidOperationError(
                f"callback version {version} of node {node_id} is not its current version {st.version} "
                f"(the node is {st.name})"
            )
        if st.name != states.RUNNING and unit.has_callback(node_id, version):
            raise InvalidOperationError(f"node {node_id} already received its callback (version {version}): "
                                        f"it is {st.name} now")
        _require(st, (states.RUNNING,), "call back")
        sched = unit.schedule_of(node_id, version)
        proc: ProcessRecord | None
        if sched is None:
            # The component may still be inside execute(): an external system can answer before
            # the engine has saved the schedule. Keep the callback; it runs once the schedule exists.
            if node.type != g.ACTIVITY or not _may_wait_for_callback(node):
                raise InvalidOperationError(f"node {node_id} is not waiting for a callback")
            procs = [p for p in unit.processes_at(node_id) if not p.dead]
            if not procs:
                raise InvalidOperationError(f"node {node_id} has no live process waiting")
            proc, schedule_id = procs[0], None
            many = _takes_many_callbacks(node)
            multi = many is not False
            # A component this process does not import (only workers do) may take one callback or
            # many: its run's first callback is checked as a single one (a pipeline at its budget
            # still takes the approval), each one after it whatever its size (a storm of them
            # passes the budget by that first one's at most STORED_BYTES_CHECK_AT bytes).
            checked = many is True or (many is None and unit.has_callback(node_id, version))
        else:
            if sched.type == "poll":
                raise InvalidOperationError(f"node {node_id} polls; it is not waiting for a callback")
            if sched.finished or sched.expired:
                raise InvalidOperationError(f"the schedule of node {node_id} is already finished")
            proc, schedule_id = unit.get_process(sched.process_id), sched.id
            if proc is None or proc.dead:
                raise InvalidOperationError(f"node {node_id} has no live process waiting")
            multi = checked = sched.type == "multiple_callback"
        # The state row is locked (``_state``), so concurrent callbacks to the node are checked one by one.
        if not multi and unit.has_callback(node_id, version):
            raise InvalidOperationError(
                f"node {node_id} already received its callback for version {version} (it takes only one)"
            )
        step.event("pre_callback", node_id=node_id, version=version, data=data)
        step.after.append(_service_hook(engine, unit, node, st, "pre_callback", data))
        callback_id = new_id()
        # Only a run taking many callbacks can be stormed with small ones: each of its callbacks is
        # checked against the budget whatever its size. A run taking one (refused above once it holds
        # it) is checked like the engine's own writes, only past STORED_BYTES_CHECK_AT bytes: a
        # pipeline at its budget (tree data and logs are counted, not checked) still takes its
        # approval and finishes.
        unit.insert_callback(callback_id, node_id, version, data, always=checked)
        task = schedule_task(proc, node_id, schedule_id, due=now(), callback_id=callback_id)
        task.running_version = version
        step.add_task(task)
        step.after.append(_service_hook(engine, unit, node, st, "post_callback", data))
        step.event("post_callback", node_id=node_id, version=version, data=data)
        return callback_id


def _takes_many_callbacks(node: g.Node) -> bool | None:
    """Whether the node's component takes many callbacks; None when this process does not know it
    (e.g. only workers import it)."""
    from culm.components import library

    try:
        service_cls = library.get(node.code, node.version).bound_service
    except Exception:  # noqa: BLE001 - unknown here: the caller lets it through
        return None
    return bool(getattr(service_cls, "__multi_callback_enabled__", False))


def _may_wait_for_callback(node: g.Node) -> bool:
    """False only when this process knows the component and it never waits for callbacks."""
    from culm.components import library

    try:
        service_cls = library.get(node.code, node.version).bound_service
    except Exception:  # noqa: BLE001 - unknown here (e.g. only workers import it): let it through
        return True
    return bool(getattr(service_cls, "__need_schedule__", False)) and getattr(service_cls, "interval", None) is None


def update_context_values(engine: Engine, pipeline_id: str, context_values: dict[str, Any]) -> list[str]:
    """Overwrite existing variables with plain values; returns the keys that were updated."""
    if not isinstance(context_values, dict):
        raise InvalidOperationError("context_values must be a dict of {'${key}': value}")
    for key in context_values:
        # A key the tree cannot have (bamboo's keys are ${name}) would be ignored without a word.
        if not (isinstance(key, str) and key.startswith("${") and key.endswith("}") and len(key) > 3):
            hint = f": write it as the tree does, '${{{key}}}'" if isinstance(key, str) and key.isidentifier() else ""
            raise InvalidOperationError(f"update_context_values of pipeline {pipeline_id}: key {key!r} is not a "
                                        f"context key{hint}")
    with engine.step() as step:
        unit = step.unit
        root_id = _is_pipeline(unit, engine, pipeline_id)
        # Held to the commit, as update_node_outputs holds it: racing updates of one pipeline are
        # checked against its budget one by one, each seeing what the one before stored (without
        # it, 8 racing updates of 100 KB with room for 2 took 7 on PostgreSQL).
        # An ended pipeline's context is still overwritten, as bamboo's is (the contract is silent;
        # its users read the values back); `culm set-context` refuses it itself.
        unit.get_state(root_id, for_update=True)
        return _overwrite_context(unit, pipeline_id, context_values)


def _overwrite_context(unit: Unit, pipeline_id: str, context_values: dict[str, Any]) -> list[str]:
    """Give the existing keys among ``context_values`` plain values; returns those keys."""
    current = unit.get_context(pipeline_id)
    updated = [k for k in context_values if k in current]
    # An operator's values were counted, never checked: 600 KB into each of 60 variables took a
    # pipeline past its budget. What they add (their stored text over the values they replace,
    # measured by the store as it writes them: escaped JSON, 6 bytes a CJK character) is.
    unit.check_context_growth(pipeline_id, [current[k].value for k in updated], [context_values[k] for k in updated])
    if updated:
        merged = {k: dctx.ContextVar(k, v.type, v.value, v.code) for k, v in current.items()}
        for k in updated:
            merged[k] = dctx.ContextVar(k, cdata.PLAIN, context_values[k])
        # References of the whole context are recomputed: a plain value refers to nothing.
        unit.upsert_context(pipeline_id, cdata.with_references(merged))
    return updated


def update_node_outputs(engine: Engine, root_pipeline_id: str, node_id: str, context_values: dict[str, Any]) -> list[str]:
    """bamboo-pipeline's contrib "update node outputs" (``pipeline.contrib.mock``): before a failed
    node is skipped, give the root context values its outputs would have written, and record them
    as its outputs; returns the context keys that existed and were updated."""
    if not isinstance(context_values, dict):
        raise InvalidOperationError("context_values must be a dict of {'${key}': value}")
    if "${_system}" in context_values:
        raise InvalidOperationError("${_system} is the engine's own context value and cannot be changed")
    with engine.step() as step:
        unit = step.unit
        graph, node = _node(engine, unit, node_id)
        if graph.root_id != root_pipeline_id:
            raise InvalidOperationError(f"node {node_id} belongs to pipeline {graph.root_id}, not {root_pipeline_id}")
        _require(_state(unit, root_pipeline_id, "pipeline"), (states.RUNNING,), "update node outputs in", "pipeline")
        _require(_state(unit, node_id), (states.FAILED,), "update the outputs of")
        if node.type in (g.END, g.EXECUTABLE_END) and (marks := [k for k in context_values
                                                               if dctx.deformat(k) in ENGINE_MARKERS]):
            # merged into the outputs they would forge the engine's mark: a failed end event made
            # skippable (COPY_REFUSED), its code not run on a retry (CODE_RAN): session 20's review
            raise InvalidOperationError(
                f"{', '.join(marks)}: the engine's own mark in the outputs of end event {node_id}, not set by "
                "update_node_outputs (nothing was updated); give the context values without it")
        updated = _overwrite_context(unit, root_pipeline_id, context_values)
        inputs, outputs = unit.get_execution_data(node_id) or ({}, {})
        outputs = {**outputs, **{dctx.deformat(k): v for k, v in context_values.items()}}
        # An operator's write, like update_context_values: checked whatever its size (outputs under
        # STORED_BYTES_CHECK_AT were never checked, and each call may add keys the context lacks).
        unit.set_execution_data(node_id, inputs, outputs, always=True)
        return updated


def update_node_loop_times(engine: Engine, node_id: str, loop_times: int) -> None:
    """Change how many iterations a node loop runs in all; the node reads it when an iteration ends
    (bamboo's runtime method of the same name, which rewrites the node's ``loop_config``)."""
    if problem := limits.loop_times_problem(loop_times, least=0):
        raise InvalidOperationError(f"loop_times for node {node_id} {problem}")
    with engine.step() as step:
        _graph, node = _node(engine, step.unit, node_id)
        if not node.loop_config:
            raise InvalidOperationError(f"node {node_id} is {g.a_type(node.type)} without an enabled loop_config: "
                                        "it has no loop count to change")
        step.unit.upsert_context(node.pipeline_id,
                                 [ContextValue(cdata.loop_times_key(node_id), cdata.PLAIN, loop_times)])
