"""Enforcing a node's timeout: what a due deadline (:mod:`culm.core.deadlines`) does.

In ONE transaction, as the operator commands do: the deadline's task is claimed (a lease, so two
runners holding copies of it do not both act), the node's state is read with a row lock and
compared with the run the deadline watches. Only if the node is still RUNNING that very run does
the configured action happen (bamboo-pipeline's ``pipeline.contrib.node_timeout`` actions):

* ``forced_fail``: the node is force-failed (:func:`culm.core.commands.force_fail`) with
  ``ex_data`` saying it timed out after N s; ``_timed_out`` is set in its outputs;
* ``forced_fail_and_skip``: the same, then the node is skipped (history kept, FINISHED with
  ``skip``, its process goes on), when the node is skippable.

A node that finished, failed or was skipped, retried or revoked first has another state or
version: its deadline is dropped and nothing else happens. The late result of the user code that
was cut off finds a new version and is discarded by the walk that applies it.
"""

from __future__ import annotations

from culm._printable import engine_logger
from culm.core import commands, revoking, states
from culm.core.engine import Engine
from culm.core.records import TIMEOUT, ProcessRecord
from culm.core.step import Step
from culm.model.compiled import Node
from culm.model.timeouts import FORCED_FAIL_AND_SKIP, NodeTimeout

logger = engine_logger("culm.engine")


def fire(engine: Engine, step: Step, task_id: str) -> None:
    """Apply the deadline ``task_id`` if it is due and its run still RUNNING (see the module)."""
    owner, until, at = engine.lease()
    unit = step.unit
    task = unit.claim_task(task_id, owner, until, at)
    if task is None or task.kind != TIMEOUT:
        return  # done by another runner, or held by one
    if task.due > at:
        # Early (a broker's countdown runs on another clock, a sweep looks ahead): wait for it.
        unit.update_task(task_id, owner=None, claimed_until=None)
        step.requeue(task_id)
        return
    unit.delete_task(task_id)
    st = unit.get_state(task.node_id, for_update=True)
    if st is None or st.name != states.RUNNING or st.version != task.running_version:
        return  # the run ended (or was moved on by an operator) in time
    graph = engine.graph(task.root_id, unit)
    node = graph.nodes.get(task.node_id)
    timeout = node.timeout if node is not None else None
    procs = [p for p in unit.processes_at(task.node_id) if not p.dead]
    if node is None or timeout is None or not procs:
        return
    unskippable = _unskippable(node, procs) if timeout.action == FORCED_FAIL_AND_SKIP else None
    ex_data = timed_out_text(task.node_id, timeout, unskippable)
    logger.warning("%s (pipeline %s)", ex_data, task.root_id)
    commands.force_fail(engine, step, node, st, procs, ex_data, extra={"_timed_out": True})
    step.cut_off.append((task.node_id, task.running_version or ""))
    if revoking.revoked_around(unit, procs[0].stack):
        # A poll its pipeline's revoke let go on (culm.core.revoking): failed, its process ends.
        for proc in procs:
            unit.update_process(proc.id, dead=True)
        return
    if timeout.action == FORCED_FAIL_AND_SKIP and unskippable is None:
        commands.skip_failed(engine, step, node, st)


def _unskippable(node: Node, procs: list[ProcessRecord]) -> str | None:
    """Why a timed-out node cannot be skipped (what ``skip_node`` would refuse), or None."""
    if not node.can_skip:
        return "the node is not skippable"
    if len(procs) != 1:
        return f"{len(procs)} processes stand on the node, a skip moves exactly one"
    if procs[0].suspended:
        # A replay of its task met a paused pipeline and parked the process on the node.
        return "its pipeline is paused; skip it once the pipeline is resumed"
    return None


def timed_out_text(node_id: str, timeout: NodeTimeout, unskippable: str | None = None) -> str:
    """The ``ex_data`` of a node its timeout failed (``unskippable``: why a skip was left out)."""
    text = (f"timed out after {timeout.seconds} s: node {node_id} ran longer than its timeout_config "
            f"allows (action {timeout.action})")
    if timeout.action != FORCED_FAIL_AND_SKIP:
        return text
    if unskippable is not None:
        return f"{text}; not skipped: {unskippable}"
    return text + "; skipped, the pipeline goes on"
