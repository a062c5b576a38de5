"""Starting a run at a node other than the start event (``start_node_id``)."""

from __future__ import annotations

import pytest
from engine_fixtures import children, finish, inputs, refused

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def echo(value):
    a = ServiceActivity(component_code="t_echo")
    a.component.inputs.x = Var(type=Var.SPLICE, value=value)
    return a


def test_start_at_activity_skips_earlier_nodes(runtime):
    start, first, second, end = EmptyStartEvent(), echo("one"), echo("${first_out}"), EmptyEndEvent()
    start.extend(first).extend(second).extend(end)
    data = Data(inputs={"${first_out}": NodeOutput(source_act=first.id, source_key="out")})
    tree = build_tree(start, data=data)
    entry = finish(runtime, tree, start_node_id=second.id, root_pipeline_context={"${first_out}": "supplied"})
    reached = set(entry["children"])
    assert start.id not in reached and first.id not in reached
    assert second.id in reached and end.id in reached
    assert inputs(runtime, second.id)["x"] == "supplied"


def test_start_at_start_event_is_a_normal_run(runtime):
    start, a = EmptyStartEvent(), echo("a")
    start.extend(a).extend(EmptyEndEvent())
    tree = build_tree(start)
    entry = finish(runtime, tree, start_node_id=start.id)
    assert start.id in entry["children"]


def test_start_at_parallel_gateway_and_after_it(runtime):
    start, before, pg, cg, after, end = (EmptyStartEvent(), echo("b"), ParallelGateway(), ConvergeGateway(),
                                         echo("after"), EmptyEndEvent())
    b1, b2 = echo("1"), echo("2")
    start.extend(before).extend(pg).connect(b1, b2).to(pg).converge(cg).extend(after).extend(end)
    tree = build_tree(start)
    entry = finish(runtime, tree, start_node_id=pg.id)
    assert before.id not in entry["children"] and b1.id in entry["children"]

    start2, pg2, cg2, after2 = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), echo("after")
    c1, c2 = echo("1"), echo("2")
    start2.extend(pg2).connect(c1, c2).to(pg2).converge(cg2).extend(after2).extend(EmptyEndEvent())
    tree2 = build_tree(start2)
    for bad in (c1.id, cg2.id, tree2["end_event"]["id"]):
        res = api.run_pipeline(runtime, tree2, start_node_id=bad)
        refused(res, bad)
        assert api.get_pipeline_states(runtime, tree2["id"]).data == {}
    finish(runtime, tree2, start_node_id=after2.id)
    assert set(children(runtime, tree2["id"])) == {after2.id, tree2["end_event"]["id"]}


def test_start_inside_exclusive_branch(runtime):
    start, eg, cg, end = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}), \
        ConvergeGateway(), EmptyEndEvent()
    a, b = echo("a"), echo("b")
    start.extend(eg).connect(a, b).to(eg).converge(cg).extend(end)
    tree = build_tree(start)
    entry = finish(runtime, tree, start_node_id=b.id)
    assert b.id in entry["children"] and a.id not in entry["children"] and eg.id not in entry["children"]


def test_start_node_refusals(runtime):
    start, a = EmptyStartEvent(), echo("a")
    inner = echo("in")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    start.extend(a).extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start)
    for bad in (sub.id, inner.id, "e-not-there"):
        refused(api.run_pipeline(runtime, tree, start_node_id=bad), bad)
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


def test_pre_render_keys_not_processed_when_starting_later(runtime):
    start, a, b = EmptyStartEvent(), echo("a"), echo("${frozen}")
    start.extend(a).extend(b).extend(EmptyEndEvent())
    data = Data(inputs={"${frozen}": Var(type=Var.LAZY, custom_type="t_upper", value="low")},
                pre_render_keys=["${frozen}"])
    tree = build_tree(start, data=data)
    finish(runtime, tree, start_node_id=b.id)
    assert inputs(runtime, b.id)["x"] == "LOW"
    assert start.id not in children(runtime, tree["id"])
