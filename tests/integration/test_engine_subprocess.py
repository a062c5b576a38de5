"""Subprocesses: nesting, failures inside, parallel subprocesses, states of the subprocess node."""

from __future__ import annotations

import pytest
from engine_fixtures import children, finish, inputs, node_state, outputs, run, wait_state

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    DataInput,
    EmptyEndEvent,
    EmptyStartEvent,
    NodeOutput,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def chain(*nodes):
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return start


def echo(value):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.x = Var(type=Var.SPLICE, value=value)
    return a


def test_three_levels_of_subprocesses(runtime):
    deepest = echo("${lvl}")
    lvl3 = SubProcess(start=chain(deepest), data=Data(inputs={"${lvl}": DataInput(type=Var.PLAIN, value="3")},
                                                      outputs=["${lvl}"]),
                      params=Params({"${lvl}": Var(type=Var.SPLICE, value="${lvl}>3")}))
    lvl2 = SubProcess(start=chain(lvl3), data=Data(inputs={"${lvl}": DataInput(type=Var.PLAIN, value="2")}),
                      params=Params({"${lvl}": Var(type=Var.SPLICE, value="${lvl}>2")}))
    tree = build_tree(chain(lvl2), data=Data(inputs={"${lvl}": Var(type=Var.PLAIN, value="1")}))
    entry = finish(runtime, tree)
    assert inputs(runtime, deepest.id)["x"] == "1>2>3"
    assert entry["children"][deepest.id]["parent_id"] == lvl3.id
    assert entry["children"][lvl3.id]["parent_id"] == lvl2.id
    assert entry["children"][lvl2.id]["parent_id"] == tree["id"]
    nested = api.get_pipeline_states(runtime, tree["id"], flat_children=False).data[tree["id"]]
    assert deepest.id in nested["children"][lvl2.id]["children"][lvl3.id]["children"]
    assert outputs(runtime, lvl3.id)["${lvl}"] == "1>2>3"


def test_failure_inside_subprocess_keeps_parents_running(runtime):
    bad = ServiceActivity(component_code="t_fail")
    sub = SubProcess(start=chain(bad))
    after = echo("after")
    tree = build_tree(chain(sub, after))
    run(runtime, tree)
    wait_state(runtime, bad.id, "FAILED")
    assert node_state(runtime, sub.id)["state"] == "RUNNING"
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert api.retry_node(runtime, bad.id, data={"ok": True}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, sub.id)["state"] == "FINISHED"
    assert node_state(runtime, after.id)["state"] == "FINISHED"


def test_subprocesses_in_parallel_branches(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    in1, in2 = echo("${p}"), echo("${p}")
    s1 = SubProcess(start=chain(in1), data=Data(inputs={"${p}": DataInput(type=Var.PLAIN, value="")}),
                    params=Params({"${p}": Var(type=Var.PLAIN, value="one")}))
    s2 = SubProcess(start=chain(in2), data=Data(inputs={"${p}": DataInput(type=Var.PLAIN, value="")}),
                    params=Params({"${p}": Var(type=Var.PLAIN, value="two")}))
    start.extend(pg).connect(s1, s2).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    finish(runtime, tree)
    assert inputs(runtime, in1.id)["x"] == "one" and inputs(runtime, in2.id)["x"] == "two"


def test_parallel_inside_subprocess(runtime):
    sub_start, pg, cg, sub_end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    a, b = echo("a"), echo("b")
    sub_start.extend(pg).connect(a, b).to(pg).converge(cg).extend(sub_end)
    sub = SubProcess(start=sub_start,
                     data=Data(inputs={"${a}": NodeOutput(source_act=a.id, source_key="out")}, outputs=["${a}"]))
    after = echo("${from_sub}")
    tree = build_tree(chain(sub, after),
                      data=Data(inputs={"${from_sub}": NodeOutput(source_act=sub.id, source_key="${a}")}))
    finish(runtime, tree)
    assert inputs(runtime, after.id)["x"] == "a!"


def test_revoke_root_while_inside_subprocess(runtime):
    wait = ServiceActivity(component_code="t_callback")
    later = echo("later")
    sub = SubProcess(start=chain(wait, later))
    tree = build_tree(chain(sub))
    run(runtime, tree)
    st = wait_state(runtime, wait.id, "RUNNING")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    res = api.callback(runtime, wait.id, st["version"], {})
    if res.result:
        # an accepted callback must not move a revoked pipeline on
        from engine_fixtures import wait_idle

        wait_idle(runtime)
    assert later.id not in children(runtime, tree["id"])
    assert node_state(runtime, tree["id"])["state"] == "REVOKED"


def test_a_subprocess_paused_while_its_params_render_parks_and_resumes(runtime):
    """A storm found it (storm_driver.py, PostgreSQL seed 5): a subprocess whose params render on
    the user-code pool (a lazy variable) was paused meanwhile; the rendered params came back to a
    SUSPENDED node and were dropped as stale, which deleted the process's task and left it awake
    at the subprocess node with nothing to run it. Once resumed, the subprocess stayed RUNNING for
    ever. The process now parks on the paused subprocess and the resume steps it in."""
    from components import gate
    from support import wait_until

    from culm.core.invariants import check
    from culm.core.snapshots import read_snapshot

    inner = chain(ServiceActivity(component_code="t_none"))
    sub = SubProcess(start=inner, params=Params({"${g}": Var(type=Var.LAZY, custom_type="t_lazy_gate",
                                                             value="sub-params")}))
    root = run(runtime, build_tree(chain(sub)))
    wait_state(runtime, sub.id, "RUNNING")
    assert api.pause_pipeline(runtime, sub.id).result
    gate("sub-params").set()
    wait_until(lambda: not read_snapshot(runtime.engine, root).tasks, 20, 0.02,
               what="the rendered params to come back to the paused subprocess")
    assert check(read_snapshot(runtime.engine, root)) == []
    assert node_state(runtime, sub.id)["state"] == "SUSPENDED"
    res = api.resume_pipeline(runtime, sub.id)
    assert res.result, res.message
    wait_state(runtime, root, "FINISHED", timeout=20)
    assert inputs(runtime, sub.id) == {"${g}": "opened"}

