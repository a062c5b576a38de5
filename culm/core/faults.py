"""When advancing a task raises inside the engine: its node fails, visibly and once.

A task whose step raises (an engine bug, a result some store refuses in a way culm did not
foresee) would otherwise be rolled back and tried again at every sweep or lease period, running
its user code again each time, while its node shows RUNNING. The engine loop
(:mod:`culm.core.loop`) undoes the task's part of the batch and calls :func:`fail_task` in a
fresh savepoint: the node the task stands on ends FAILED with ``ex_data`` saying what the engine was doing, where, and the error; its process
waits there, and the task is gone. An operator sees a failed node and can retry or skip it as
any other (after fixing the cause). Should even that fail, :func:`fail_minimal` records less.
"""

from __future__ import annotations

import traceback
from typing import Any

from culm._printable import engine_logger
from culm.core import states
from culm.core.engine import Engine
from culm.core.ports import StateFields, Unit
from culm.core.records import EXECUTE, TIMEOUT, ProcessRecord, StateRecord, TaskRecord, new_version, now
from culm.core.run import record_history, store_failure
from culm.core.step import Step
from culm.model.limits import clip_ex_data

logger = engine_logger("culm.engine")

# States a node is failed from by way of RUNNING (the transition table has no direct edge).
_VIA_RUNNING = frozenset({states.READY, states.LOOP_READY})


def describe(task: TaskRecord, resumed: bool, exc: BaseException) -> str:
    """``ex_data`` for a task whose step raised: what the engine did, on which node, and why."""
    if task.kind == EXECUTE:
        doing = "applying the result of the user code of" if resumed else "walking the process from"
    elif task.kind == TIMEOUT:
        doing = "enforcing the timeout of"
    else:
        doing = "applying the schedule result of" if resumed else "preparing a schedule call of"
    trace = "".join(traceback.format_exception(exc))
    return clip_ex_data(f"engine error while {doing} node {task.node_id or '?'} (task {task.id}): "
                        f"{type(exc).__name__}: {exc}\n{trace}")


def fail_task(engine: Engine, step: Step, task_id: str, exc: BaseException, resumed: bool) -> str | None:
    """Fail the node of task ``task_id`` (whose step raised ``exc``; ``resumed``: while applying
    the result of its user code) and park its process there.

    Returns the id of the node failed (None when there was nothing to fail: the task or its
    process is gone, or the node is already stopped where an operator sees it).
    """
    unit = step.unit
    task = unit.get_task(task_id)
    if task is None:
        return None
    unit.delete_task(task_id)
    proc = unit.get_process(task.process_id) if task.process_id else None
    if proc is None:
        return _fail_without_process(engine, step, task, resumed, exc)
    if proc.dead:
        return None
    node_id = task.node_id or proc.current_node_id
    st = unit.get_state(node_id, for_update=True)
    stray = _stray(engine, unit, task, proc, node_id, st)
    if stray is not None:
        # Failing a node for it, or moving the process, would break the work really under way.
        logger.error("dropped task %s of node %s: %s", task_id, node_id, stray)
        return None
    ex_data = describe(task, resumed, exc)
    if task.schedule_id:
        unit.update_schedule(task.schedule_id, finished=True, locked_until=None)
        if st is not None:  # every end of a schedule is in the feed (state_tree.Tree)
            step.note(st)
    if st is not None and st.name == states.SUSPENDED:
        unit.update_process(proc.id, current_node_id=node_id, suspended=True, suspended_by=node_id, asleep=True)
        step.note(st)  # the process parks on the pause without a state write (waits.KeptFacts)
        return None
    if st is not None and st.name not in (states.RUNNING, states.FINISHED, *_VIA_RUNNING):
        unit.update_process(proc.id, current_node_id=node_id, asleep=True)
        step.note(st)  # the process moves without a state write (waits.KeptFacts)
        return None  # FAILED already, or REVOKED: nothing more to show
    _record_failure(engine, step, proc.root_id, node_id, st, ex_data)
    unit.update_process(proc.id, current_node_id=node_id, asleep=True)
    return node_id


def _fail_without_process(engine: Engine, step: Step, task: TaskRecord, resumed: bool, exc: BaseException) -> str | None:
    """Fail the node of an execute task whose process is not stored (a damaged database: culm
    deletes no process row), unless the node stopped already. No process waits there, so a retry
    or skip is refused, naming the node; revoking the run ends it."""
    if task.kind != EXECUTE or not task.process_id or not task.node_id or not task.root_id:
        return None
    st = step.unit.get_state(task.node_id, for_update=True)
    if st is not None and st.name not in (states.RUNNING, states.FINISHED, *_VIA_RUNNING):
        return None
    _record_failure(engine, step, task.root_id, task.node_id, st, describe(task, resumed, exc))
    return task.node_id


def _record_failure(engine: Engine, step: Step, root_id: str, node_id: str, st: StateRecord | None,
                    ex_data: str) -> None:
    """Node ``node_id`` FAILED, ``ex_data`` in its outputs (those it had kept)."""
    _write_failed(engine, step, root_id, node_id, st)
    inputs, outputs = _execution_data(step.unit, node_id)
    loop = st.loop if st is not None else 1
    store_failure(step.unit, node_id, inputs, {**outputs, "ex_data": ex_data, "_result": False, "_loop": loop})


def _stray(engine: Engine, unit: Unit, task: TaskRecord, proc: ProcessRecord, node_id: str,
           st: StateRecord | None) -> str | None:
    """Why ``task`` is not its process's live work (a stray, duplicate or stale task), or None."""
    if node_id != proc.current_node_id:
        return f"its process {proc.id} is at node {proc.current_node_id}"
    if not _in_graph(engine, unit, proc.root_id, node_id):
        return f"pipeline {proc.root_id} has no such node"
    if st is not None and task.running_version and st.version != task.running_version:
        return f"the node moved on to another run (version {st.version}) meanwhile"
    return None


def _write_failed(engine: Engine, step: Step, root_id: str, node_id: str, st: StateRecord | None) -> None:
    unit = step.unit
    at = now()
    if st is None:
        parent_id = _parent_of(engine, unit, root_id, node_id)
        st = StateRecord(node_id, root_id, parent_id, states.FAILED, new_version(), 1, 1, 0, False, False, at, at, at)
        step.create_state(st, 1)
        return
    if st.name == states.FINISHED:
        record_history(unit, st)  # the finished run stays in the histories
    path = [states.RUNNING, states.FAILED] if st.name in _VIA_RUNNING else [states.FAILED]
    for name in path:
        fields: StateFields = {"archived_time": at} if name == states.FAILED else {"started_time": at}
        if not st.root_id:
            fields.update({"root_id": root_id, "parent_id": _parent_of(engine, unit, root_id, node_id)})
        if not step.set_state(st, name, fields, expect=(st.name,)):
            raise RuntimeError(f"node {node_id} changed while its failure was recorded")


def _in_graph(engine: Engine, unit: Unit, root_id: str, node_id: str) -> bool:
    try:
        return node_id in engine.graph(root_id, unit).nodes
    except Exception:  # noqa: BLE001 - the graph itself may be what fails: the node may exist
        return True


def _parent_of(engine: Engine, unit: Unit, root_id: str, node_id: str) -> str:
    try:
        node = engine.graph(root_id, unit).nodes.get(node_id)
    except Exception:  # noqa: BLE001 - the graph itself may be what fails; the root will do
        return root_id
    return node.pipeline_id if node is not None else root_id


def _execution_data(unit: Unit, node_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        found = unit.get_execution_data(node_id)
    except Exception:  # noqa: BLE001 - unreadable data must not stop the failure from showing
        return {}, {}
    return found if found is not None else ({}, {})


def fail_minimal(step: Step, task_id: str) -> None:
    """Last resort when :func:`fail_task` raised too: a RUNNING node becomes FAILED (no data
    written, the reason is in the engine log) and the task is deleted, so it runs no more."""
    unit = step.unit
    task = unit.get_task(task_id)
    if task is None:
        return
    unit.delete_task(task_id)
    st = unit.get_state(task.node_id, for_update=True) if task.node_id else None
    if st is not None and st.name == states.RUNNING:
        step.set_state(st, states.FAILED, {"archived_time": now()}, expect=(states.RUNNING,), signal=False)
    if task.process_id:
        unit.update_process(task.process_id, asleep=True)
