"""The invariant checker on hand-made snapshots: each promise, kept and broken."""

from __future__ import annotations

import dataclasses

from culm import states
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    build_tree,
)
from culm.core.invariants import Snapshot, check, check_transitions
from culm.core.records import ProcessRecord, ScheduleRecord, StateRecord, TaskRecord, Transition
from culm.model.compiled import compile_tree
from culm.model.validator import process_tree


def _graph():
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    a, b = ServiceActivity(component_code="x"), ServiceActivity(component_code="y")
    start.extend(pg).connect(a, b).converge(cg).extend(end)
    graph = compile_tree(process_tree(build_tree(start)))
    return graph, {"start": start.id, "pg": pg.id, "a": a.id, "b": b.id, "cg": cg.id, "end": end.id}


def _st(graph, node_id, name, loop=1, version="v1"):
    parent = "" if node_id == graph.root_id else graph.nodes[node_id].pipeline_id
    return StateRecord(node_id, graph.root_id, parent, name, version, loop)


def _proc(graph, pid, at, **kw):
    return ProcessRecord(pid, graph.root_id, kw.pop("parent", None), at, kw.pop("dest", None), [graph.root_id], **kw)


def _kinds(found):
    return sorted({v.kind for v in found})


def _running_fork(graph, n, a_state, **child_a):
    """Root RUNNING, forked: parent waits for two children; ``a`` in ``a_state``, ``b`` RUNNING."""
    sts = {graph.root_id: _st(graph, graph.root_id, states.RUNNING)}
    for key in ("start", "pg"):
        sts[n[key]] = _st(graph, n[key], states.FINISHED)
    sts[n["a"]] = _st(graph, n["a"], a_state)
    sts[n["b"]] = _st(graph, n["b"], states.RUNNING)
    procs = [
        _proc(graph, "parent", n["pg"], asleep=True, need_ack=2),
        _proc(graph, "ca", n["a"], parent="parent", dest=n["cg"], **child_a),
        _proc(graph, "cb", n["b"], parent="parent", dest=n["cg"]),
    ]
    tasks = [TaskRecord("t-b", "execute", "cb", n["b"], graph.root_id)]
    return sts, procs, tasks


def test_a_failed_branch_waits_for_an_operator():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.FAILED, asleep=True)
    assert check(Snapshot(graph, sts, procs, tasks)) == []


def test_a_process_asleep_on_a_finished_node_is_stranded():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.FINISHED, asleep=True)
    found = check(Snapshot(graph, sts, procs, tasks))
    assert _kinds(found) == ["stranded_process"] and found[0].subject == "ca"


def test_a_callback_wait_counts_only_while_its_schedule_is_open():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.RUNNING, asleep=True)
    sched = ScheduleRecord("s", n["a"], "v1", "ca", "callback")
    assert check(Snapshot(graph, sts, procs, tasks, [sched])) == []
    sched.expired = True
    assert _kinds(check(Snapshot(graph, sts, procs, tasks, [sched]))) == ["stranded_process"]


def test_a_running_pipeline_without_live_processes_is_stuck():
    graph, _n = _graph()
    sts = {graph.root_id: _st(graph, graph.root_id, states.RUNNING)}
    assert _kinds(check(Snapshot(graph, sts, [_proc(graph, "p", graph.root_id, dead=True)]))) == ["stuck"]


def test_a_paused_node_holds_its_process():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.SUSPENDED, suspended=True, suspended_by=n["a"])
    assert check(Snapshot(graph, sts, procs, tasks)) == []
    sts[n["a"]] = _st(graph, n["a"], states.READY)  # resumed, but the process was never woken
    assert _kinds(check(Snapshot(graph, sts, procs, tasks))) == ["stranded_process"]


def _finished(graph, n):
    return {k: _st(graph, k, states.FINISHED) for k in [graph.root_id, *n.values()]}


def test_a_finished_pipeline_has_run_its_whole_path():
    graph, n = _graph()
    sts = _finished(graph, n)
    assert check(Snapshot(graph, sts, [_proc(graph, "p", n["end"], dead=True)])) == []
    del sts[n["b"]]
    found = check(Snapshot(graph, sts, []))
    assert [(v.kind, v.subject) for v in found] == [("unfinished_path", n["b"])]
    sts[n["b"]] = _st(graph, n["b"], states.FAILED)
    assert _kinds(check(Snapshot(graph, sts, []))) == ["unfinished_path"]


def test_a_row_without_root_is_misfiled():
    graph, n = _graph()
    sts = _finished(graph, n)
    sts[n["a"]].root_id = sts[n["a"]].parent_id = ""
    found = check(Snapshot(graph, sts, []))
    assert [(v.kind, v.subject) for v in found] == [("misfiled_state", n["a"])]


def test_live_processes_after_the_end():
    graph, n = _graph()
    sts = _finished(graph, n)
    sts[graph.root_id].name = states.REVOKED
    assert _kinds(check(Snapshot(graph, sts, [_proc(graph, "p", n["a"], asleep=True)]))) == ["alive_after_end"]


def test_a_converge_passed_with_a_branch_out_is_early():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.RUNNING)
    tasks = [*tasks, TaskRecord("t-a", "execute", "ca", n["a"], graph.root_id)]
    assert check(Snapshot(graph, sts, procs, tasks)) == []
    sts[n["cg"]] = _st(graph, n["cg"], states.FINISHED)
    assert [(v.kind, v.subject) for v in check(Snapshot(graph, sts, procs, tasks))] == [("early_converge", n["cg"])]
    sts[n["pg"]].loop = 2  # the fork started another round: the converge's state is the last round's
    assert check(Snapshot(graph, sts, procs, tasks)) == []


def test_transitions_outside_the_table():
    ok = [Transition("n", None, states.RUNNING), Transition("n", states.RUNNING, states.FAILED),
          Transition("n", states.FAILED, states.READY), Transition("m", None, states.SUSPENDED)]
    assert check_transitions(ok) == []
    bad = check_transitions([Transition("n", states.FINISHED, states.SUSPENDED), Transition("m", None, "FAILED")])
    assert [str(v) for v in bad] == ["bad_transition n: FINISHED -> SUSPENDED", "bad_transition m: created as FAILED"]
    assert [v.kind for v in check_transitions([Transition("n", "NOPE", states.RUNNING)])] == ["bad_transition"]


def test_each_write_starts_where_the_last_one_ended():
    last: dict[str, str] = {}
    assert check_transitions([Transition("n", None, states.RUNNING), Transition("n", states.RUNNING, states.FAILED)],
                             last) == []
    assert last == {"n": states.FAILED}
    # read later, from where the first read stopped: the chain carries over
    found = check_transitions([Transition("n", states.RUNNING, states.FINISHED)], last)
    assert [str(v) for v in found] == [
        "bad_transition n: written RUNNING -> FINISHED, but its last recorded state was FAILED"]
    assert [v.message for v in check_transitions([Transition("n", None, states.RUNNING)], last)] == [
        "created again as RUNNING (was FINISHED)"]


def test_a_lifted_appointment_on_a_branch_not_taken_is_no_unfinished_path():
    """``pause_node_appoint`` makes a row for a node not reached yet; ``resume_node_appoint`` then
    leaves it READY (as bamboo does). On an exclusive branch the run did not take, that READY row
    stays in the FINISHED pipeline: nothing is owed to it (the storms of test_storm_trees.py met
    it). A retried node left READY (``retry`` > 0) still is a finding."""
    start, end, eg, cg = EmptyStartEvent(), EmptyEndEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}), \
        ConvergeGateway()
    taken, other = ServiceActivity(component_code="x"), ServiceActivity(component_code="y")
    start.extend(eg).connect(taken, other).converge(cg).extend(end)
    graph = compile_tree(process_tree(build_tree(start)))
    sts = {k: _st(graph, k, states.FINISHED) for k in (graph.root_id, start.id, eg.id, taken.id, cg.id, end.id)}
    sts[other.id] = _st(graph, other.id, states.READY)
    assert check(Snapshot(graph, sts, [])) == []
    sts[other.id] = dataclasses.replace(sts[other.id], retry=1)
    assert [(v.kind, v.subject) for v in check(Snapshot(graph, sts, []))] == [("unfinished_path", other.id)]


def test_a_running_activity_without_a_live_process_on_it_is_orphaned():
    graph, n = _graph()
    sts, procs, tasks = _running_fork(graph, n, states.RUNNING)
    tasks.append(TaskRecord("t-a", "execute", "ca", n["a"], graph.root_id))
    assert check(Snapshot(graph, sts, procs, tasks)) == []
    procs[1].current_node_id = n["cg"]  # the branch process moved on (its task too), its node still RUNNING
    found = [(v.kind, v.subject) for v in check(Snapshot(graph, sts, procs, tasks))]
    assert found == [("orphan_running", n["a"])]
