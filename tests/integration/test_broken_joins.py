"""A run whose rows were damaged ends where an operator sees it, alike on every backend."""

from __future__ import annotations

import components
import pytest
from contract_support import act
from engine_fixtures import node_state, outputs, run, wait_state
from support import wait_until

from culm import api
from culm import builder as b
from culm.core.snapshots import read_snapshot
from culm.storage.memory import MemoryStore

pytestmark = pytest.mark.timeout(90)


# The tables rows are deleted from: memory store table, SQL table, key column.
_TABLES = {"process": ("process", "culm_process", "id"), "state": ("state", "culm_state", "node_id")}


def _lose_row(runtime, table, key):
    """Delete a row behind the engine's back, as a damaged database would."""
    store = runtime.store
    memory_table, sql_table, column = _TABLES[table]
    with store.transaction() as unit:
        unit.announce_change()  # an embedded engine drops its kept copies of rows
        if isinstance(store, MemoryStore):
            unit._delete(memory_table, key)
        else:
            unit._x(f"DELETE FROM {sql_table} WHERE {column} = ?", [key])


def _fork_parent(runtime, root_id):
    snap = read_snapshot(runtime.engine, root_id)
    return next(p for p in snap.processes if p.need_ack == 2)


def test_a_join_whose_parent_process_is_gone_fails_visibly_and_is_operable(runtime):
    """The two branches of a parallel gateway reach their converge gateway after the process
    that forked them was deleted: each branch's node ends FAILED, its ex_data naming the converge
    gateway and the process not stored; the run does not hang RUNNING. A retry meets the same
    damage and fails again, visibly; a skip moves the failure on to the converge gateway; revoke
    ends the run."""
    start, pg, cg = b.EmptyStartEvent(), b.ParallelGateway(), b.ConvergeGateway()
    left, right = act("t_gate", gate="join-a"), act("t_gate", gate="join-b")
    pg.connect(left, right)
    start.extend(pg).to(pg).converge(cg).extend(b.EmptyEndEvent())
    tree = b.build_tree(start)
    root = run(runtime, tree)
    wait_state(runtime, left.id, "RUNNING")
    wait_state(runtime, right.id, "RUNNING")
    parent = _fork_parent(runtime, root)
    _lose_row(runtime, "process", parent.id)
    components.gate("join-a").set()
    components.gate("join-b").set()
    for node in (left, right):
        wait_state(runtime, node.id, "FAILED", timeout=20)
        ex_data = outputs(runtime, node.id)["ex_data"]
        assert f"converge gateway {cg.id}: process {parent.id}" in ex_data and "is not stored" in ex_data, ex_data
    assert node_state(runtime, cg.id) is None
    assert node_state(runtime, root)["state"] == "RUNNING"
    assert api.retry_node(runtime, left.id).result
    wait_until(lambda: node_state(runtime, left.id)["retry"] == 1 and node_state(runtime, left.id)["state"] == "FAILED",
               20, what="the retried node to fail again")
    assert api.skip_node(runtime, right.id).result
    # Skipped, the branch walks on into the converge gateway, which fails for the same reason.
    wait_state(runtime, cg.id, "FAILED", timeout=20)
    assert node_state(runtime, right.id)["skip"]
    ex_data = outputs(runtime, cg.id)["ex_data"]
    assert f"converge gateway {cg.id}: process {parent.id}" in ex_data, ex_data
    assert api.revoke_pipeline(runtime, root).result
    wait_state(runtime, root, "REVOKED")


def test_a_task_whose_process_is_gone_fails_its_node_visibly(runtime):
    """The process of a branch is deleted while its activity runs: the result comes back to a
    task whose process is not stored, and the activity ends FAILED, its ex_data naming the
    process (the task was dropped before, and the run stayed RUNNING with nothing to show). No
    process waits there: a retry or skip is refused naming the node; revoke ends the run."""
    start, pg, cg = b.EmptyStartEvent(), b.ParallelGateway(), b.ConvergeGateway()
    left, right = act("t_gate", gate="orphan-a"), act("t_echo", x=1)
    pg.connect(left, right)
    start.extend(pg).to(pg).converge(cg).extend(b.EmptyEndEvent())
    root = run(runtime, b.build_tree(start))
    wait_state(runtime, left.id, "RUNNING")
    wait_state(runtime, right.id, "FINISHED")
    child = next(p for p in read_snapshot(runtime.engine, root).processes if p.current_node_id == left.id)
    _lose_row(runtime, "process", child.id)
    components.gate("orphan-a").set()
    wait_state(runtime, left.id, "FAILED", timeout=20)
    ex_data = outputs(runtime, left.id)["ex_data"]
    assert f"LookupError: process {child.id} of task" in ex_data and f"at node {left.id} is not stored" in ex_data, ex_data
    assert node_state(runtime, cg.id) is None
    assert node_state(runtime, root)["state"] == "RUNNING"
    for command in (api.retry_node, api.skip_node):
        res = command(runtime, left.id)
        assert not res.result and left.id in res.message, res.message
    assert api.revoke_pipeline(runtime, root).result
    wait_state(runtime, root, "REVOKED")


def test_a_result_whose_node_state_is_gone_fails_the_node_visibly(runtime):
    """The state row of a running activity is deleted: its result cannot be applied, and the node
    ends FAILED (a new row), its ex_data saying why, its process parked there (the result was
    dropped before as if the node had moved on, and the run stayed RUNNING with nothing to
    show). A retry runs it again and the run finishes."""
    gated, after = act("t_gate", gate="stateless"), act("t_echo", x=1)
    start = b.EmptyStartEvent()
    start.extend(gated).extend(after).extend(b.EmptyEndEvent())
    root = run(runtime, b.build_tree(start))
    wait_state(runtime, gated.id, "RUNNING")
    _lose_row(runtime, "state", gated.id)
    components.gate("stateless").set()
    wait_state(runtime, gated.id, "FAILED", timeout=20)
    ex_data = outputs(runtime, gated.id)["ex_data"]
    assert f"LookupError: the state of node {gated.id} is not stored" in ex_data, ex_data
    assert node_state(runtime, after.id) is None
    assert api.retry_node(runtime, gated.id).result
    wait_state(runtime, root, "FINISHED", timeout=20)
    assert node_state(runtime, after.id)["state"] == "FINISHED"
