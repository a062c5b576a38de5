"""Parallel, exclusive, conditional-parallel and converge gateways."""

from __future__ import annotations

import pytest
from engine_fixtures import children, finish, node_state, outputs, run, wait_state

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def act(code="example_component"):
    return ServiceActivity(component_code=code)


def test_parallel_gateway_runs_every_branch_and_joins(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    branches = [act(), act("t_poll"), act("t_echo")]
    after = act()
    start.extend(pg).connect(*branches).to(pg).converge(cg).extend(after).extend(end)
    tree = build_tree(start)
    entry = finish(runtime, tree)
    for n in (pg, cg, after, *branches):
        assert entry["children"][n.id]["state"] == "FINISHED"


def test_nested_parallel_gateways(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    inner_pg, inner_cg = ParallelGateway(), ConvergeGateway()
    a1, a2, b = act(), act(), act()
    inner_pg.connect(a1, a2).to(inner_pg).converge(inner_cg)
    start.extend(pg).connect(inner_pg, b)
    inner_cg.extend(cg)
    b.extend(cg)
    cg.extend(end)
    entry = finish(runtime, build_tree(start))
    assert all(entry["children"][n.id]["state"] == "FINISHED" for n in (a1, a2, b, inner_cg, cg))


def test_parallel_branch_failure_blocks_converge_until_skipped(runtime):
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    ok, bad = act(), act("t_fail")
    start.extend(pg).connect(ok, bad).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, bad.id, "FAILED")
    wait_state(runtime, ok.id, "FINISHED")
    assert cg.id not in children(runtime, tree["id"])
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert api.skip_node(runtime, bad.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, cg.id)["state"] == "FINISHED"


def exclusive_tree(value, conditions, default=None):
    start, eg, cg, end = EmptyStartEvent(), ExclusiveGateway(conditions=conditions,
                                                             default_condition_outgoing=default), ConvergeGateway(), EmptyEndEvent()
    branches = [act(), act(), act()]
    start.extend(eg).connect(*branches).to(eg).converge(cg).extend(end)
    data = Data(inputs={"${v}": Var(type=Var.PLAIN, value=value)})
    return build_tree(start, data=data), eg, branches


@pytest.mark.parametrize(("value", "taken"), [(1, 0), (2, 1), (3, 2)])
def test_exclusive_gateway_takes_the_true_branch(runtime, value, taken):
    tree, _eg, branches = exclusive_tree(value, {0: "${v} == 1", 1: "${v} == 2", 2: "${v} >= 3"})
    finish(runtime, tree)
    reached = children(runtime, tree["id"])
    assert [b.id in reached for b in branches] == [i == taken for i in range(3)]


def test_exclusive_gateway_default_branch(runtime):
    tree, _eg, branches = exclusive_tree(9, {0: "${v} == 1", 1: "${v} == 2", 2: "${v} == 3"}, default=1)
    finish(runtime, tree)
    reached = children(runtime, tree["id"])
    assert branches[1].id in reached and branches[0].id not in reached and branches[2].id not in reached


def test_exclusive_gateway_no_condition_meets_fails(runtime):
    tree, eg, _ = exclusive_tree(9, {0: "${v} == 1", 1: "${v} == 2", 2: "${v} == 3"})
    run(runtime, tree)
    wait_state(runtime, eg.id, "FAILED")
    assert "all conditions of branches are not meet" in outputs(runtime, eg.id)["ex_data"]
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_exclusive_gateway_multiple_conditions_meet_fails(runtime):
    tree, eg, _ = exclusive_tree(1, {0: "${v} == 1", 1: "${v} < 5", 2: "${v} == 3"})
    run(runtime, tree)
    wait_state(runtime, eg.id, "FAILED")
    assert "multiple conditions meet" in outputs(runtime, eg.id)["ex_data"]


def test_exclusive_gateway_bad_expression_fails(runtime):
    tree, eg, _ = exclusive_tree(1, {0: "${v} ==== 1", 1: "${v} == 2", 2: "${v} == 3"})
    run(runtime, tree)
    wait_state(runtime, eg.id, "FAILED")
    assert outputs(runtime, eg.id)["ex_data"]


def test_exclusive_condition_operators(runtime):
    tree, _eg, branches = exclusive_tree(
        "b", {0: "${v} in ('a', 'b') and 1 == 2", 1: "${v} in ('a', 'b') or 1 == 2", 2: "${v} notin ('a', 'b')"}
    )
    finish(runtime, tree)
    assert branches[1].id in children(runtime, tree["id"])


def test_conditional_parallel_runs_true_branches(runtime):
    start, cpg, cg, end = EmptyStartEvent(), ConditionalParallelGateway(
        conditions={0: "${v} > 0", 1: "${v} > 1", 2: "${v} > 5"}), ConvergeGateway(), EmptyEndEvent()
    branches = [act(), act(), act()]
    start.extend(cpg).connect(*branches).to(cpg).converge(cg).extend(end)
    tree = build_tree(start, data=Data(inputs={"${v}": Var(type=Var.PLAIN, value=2)}))
    finish(runtime, tree)
    reached = children(runtime, tree["id"])
    assert [b.id in reached for b in branches] == [True, True, False]
    assert reached[cg.id] == "FINISHED"


def test_conditional_parallel_default_and_failure(runtime):
    start, cpg, cg, end = EmptyStartEvent(), ConditionalParallelGateway(
        conditions={0: "${v} > 100", 1: "${v} > 200"}, default_condition_outgoing=1), ConvergeGateway(), EmptyEndEvent()
    a, b = act(), act()
    start.extend(cpg).connect(a, b).to(cpg).converge(cg).extend(end)
    tree = build_tree(start, data=Data(inputs={"${v}": Var(type=Var.PLAIN, value=2)}))
    finish(runtime, tree)
    reached = children(runtime, tree["id"])
    assert b.id in reached and a.id not in reached


def test_conditional_parallel_no_condition_meets_fails(runtime):
    start, cpg, cg, end = EmptyStartEvent(), ConditionalParallelGateway(
        conditions={0: "${v} > 100", 1: "${v} > 200"}), ConvergeGateway(), EmptyEndEvent()
    start.extend(cpg).connect(act(), act()).to(cpg).converge(cg).extend(end)
    tree = build_tree(start, data=Data(inputs={"${v}": Var(type=Var.PLAIN, value=2)}))
    run(runtime, tree)
    wait_state(runtime, cpg.id, "FAILED")
    assert "not meet" in outputs(runtime, cpg.id)["ex_data"]


def test_gateway_condition_on_node_output(runtime):
    from culm.builder import NodeOutput

    start, producer = EmptyStartEvent(), ServiceActivity(component_code="t_echo")
    producer.component.inputs.x = Var(type=Var.PLAIN, value="go")
    eg, cg, end = ExclusiveGateway(conditions={0: "'${res}' == 'go!'", 1: "'${res}' != 'go!'"}), ConvergeGateway(), EmptyEndEvent()
    yes, no = act(), act()
    start.extend(producer).extend(eg).connect(yes, no).to(eg).converge(cg).extend(end)
    data = Data(inputs={"${res}": NodeOutput(source_act=producer.id, source_key="out")})
    tree = build_tree(start, data=data)
    finish(runtime, tree)
    reached = children(runtime, tree["id"])
    assert yes.id in reached and no.id not in reached
