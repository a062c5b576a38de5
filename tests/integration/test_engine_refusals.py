"""Refusals: invalid trees, reruns, unknown ids, wrong states, bad arguments — and that a refusal
changes nothing that is stored."""

from __future__ import annotations

import copy

import pytest
from engine_fixtures import finish, node_state, refused, run, wait_state

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)

UNKNOWN = "e" + "0" * 32


def simple_tree():
    start, act = EmptyStartEvent(), ServiceActivity(component_code="example_component")
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


def test_invalid_tree_reports_every_problem_and_stores_nothing(runtime):
    tree, act = simple_tree()
    bad = copy.deepcopy(tree)
    flow_id = next(iter(bad["flows"]))
    bad["flows"][flow_id]["target"] = "e-missing-node"
    lonely = "e" + "1" * 32
    bad["activities"][lonely] = {**bad["activities"][act.id], "id": lonely, "incoming": [], "outgoing": ""}
    res = api.run_pipeline(runtime, bad)
    refused(res, "e-missing-node", lonely)
    assert res.exc is not None
    assert api.get_pipeline_states(runtime, bad["id"]).data == {}
    refused(api.get_data(runtime, act.id))
    # the valid tree with the same ids still runs: nothing was stored
    finish(runtime, tree)


def test_non_string_id_refused(runtime):
    tree, _ = simple_tree()
    tree["id"] = 123
    refused(api.run_pipeline(runtime, tree))


def test_not_a_dict_refused(runtime):
    refused(api.run_pipeline(runtime, "not a tree"))


def test_rerun_of_existing_pipeline_id_refused(runtime):
    tree, act = simple_tree()
    finish(runtime, tree)
    version = node_state(runtime, act.id)["version"]
    refused(api.run_pipeline(runtime, tree), tree["id"])
    assert node_state(runtime, act.id)["version"] == version
    assert node_state(runtime, tree["id"])["state"] == "FINISHED"


def test_new_run_reusing_node_ids_of_another_run_refused(runtime):
    tree, act = simple_tree()
    finish(runtime, tree)
    other = copy.deepcopy(tree)
    other["id"] = "p" + "2" * 32
    refused(api.run_pipeline(runtime, other), "reuses node ids", act.id)
    assert api.get_pipeline_states(runtime, other["id"]).data == {}
    assert node_state(runtime, tree["id"])["state"] == "FINISHED"


def test_new_run_whose_id_is_a_node_of_another_run_refused(runtime):
    start, eg, cg, end = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 2"}), \
        ConvergeGateway(), EmptyEndEvent()
    taken, never = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    start.extend(eg).connect(taken, never).to(eg).converge(cg).extend(end)
    tree = build_tree(start)
    finish(runtime, tree)
    assert node_state(runtime, never.id) is None  # indexed with its run, but never entered
    other, _ = simple_tree()
    other["id"] = never.id
    refused(api.run_pipeline(runtime, other), never.id, "already exists")
    assert node_state(runtime, never.id) is None
    assert node_state(runtime, tree["id"])["state"] == "FINISHED"


def test_non_runtime_first_argument_refused():
    res = api.get_pipeline_states(object(), "p1")
    refused(res)


COMMANDS = {
    "pause_pipeline": (),
    "resume_pipeline": (),
    "revoke_pipeline": (),
    "pause_node_appoint": (),
    "resume_node_appoint": (),
    "retry_node": (),
    "retry_subprocess": (),
    "skip_node": (),
    "skip_exclusive_gateway": ("f" + "0" * 32,),
    "skip_conditional_parallel_gateway": (["f" + "0" * 32], "e" + "2" * 32),
    "forced_fail_activity": ("ex",),
    "callback": ("v" + "0" * 32, {}),
    "update_context_values": ({"${a}": 1},),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_refuse_unknown_ids(runtime, name):
    res = getattr(api, name)(runtime, UNKNOWN, *COMMANDS[name])
    refused(res, UNKNOWN)
    assert res.exc is not None


def finished_tree():
    start, end = EmptyStartEvent(), EmptyEndEvent()
    act = ServiceActivity(component_code="example_component")
    sub_start = EmptyStartEvent()
    sub_start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    eg, cg1 = ExclusiveGateway(conditions={0: "1 == 1", 1: "1 == 0"}), ConvergeGateway()
    cpg, cg2 = ConditionalParallelGateway(conditions={0: "1 == 1", 1: "1 == 0"}), ConvergeGateway()
    a1, a2, b1, b2 = (ServiceActivity(component_code="example_component") for _ in range(4))
    start.extend(act).extend(sub).extend(eg).connect(a1, a2).to(eg).converge(cg1).extend(cpg) \
        .connect(b1, b2).to(cpg).converge(cg2).extend(end)
    tree = build_tree(start)
    return tree, act, sub, eg, cpg, cg2


def test_commands_on_finished_nodes_refused_naming_state(runtime):
    tree, act, sub, eg, cpg, cg2 = finished_tree()
    finish(runtime, tree)
    before = api.get_pipeline_states(runtime, tree["id"]).data
    version = node_state(runtime, act.id)["version"]
    flow_eg = tree["gateways"][eg.id]["outgoing"][1]
    flow_cpg = tree["gateways"][cpg.id]["outgoing"][1]
    attempts = [
        (api.retry_node, (act.id,), act.id),
        (api.skip_node, (act.id,), act.id),
        (api.forced_fail_activity, (act.id, "x"), act.id),
        (api.callback, (act.id, version, {}), act.id),
        (api.resume_node_appoint, (act.id,), act.id),
        (api.pause_node_appoint, (act.id,), act.id),
        (api.retry_subprocess, (sub.id,), sub.id),
        (api.pause_pipeline, (sub.id,), sub.id),
        (api.skip_exclusive_gateway, (eg.id, flow_eg), eg.id),
        (api.skip_conditional_parallel_gateway, (cpg.id, [flow_cpg], cg2.id), cpg.id),
        (api.pause_pipeline, (tree["id"],), tree["id"]),
        (api.resume_pipeline, (tree["id"],), tree["id"]),
        (api.revoke_pipeline, (tree["id"],), tree["id"]),
    ]
    for fn, args, node_id in attempts:
        res = fn(runtime, *args)
        refused(res, node_id, "FINISHED")
    assert api.get_pipeline_states(runtime, tree["id"]).data == before


def test_wrong_node_type_refused(runtime):
    tree, act, sub, eg, cpg, cg2 = finished_tree()
    finish(runtime, tree)
    refused(api.skip_exclusive_gateway(runtime, act.id, "f"), act.id)
    refused(api.skip_conditional_parallel_gateway(runtime, eg.id, ["f"], cg2.id), eg.id)
    refused(api.skip_node(runtime, eg.id), eg.id)
    refused(api.forced_fail_activity(runtime, sub.id, "x"), sub.id)
    refused(api.retry_subprocess(runtime, act.id), act.id)
    refused(api.pause_pipeline(runtime, act.id), act.id)


def test_bad_arguments_refused(runtime):
    tree, act = simple_tree()
    run(runtime, tree)
    wait_state(runtime, tree["id"], "FINISHED")
    refused(api.retry_node(runtime, act.id, data=[1, 2]))
    refused(api.update_context_values(runtime, tree["id"], ["${a}"]))
    refused(api.skip_conditional_parallel_gateway(runtime, act.id, "not-a-list", act.id))
    refused(api.get_pipeline_states(runtime, None))
    refused(api.run_pipeline(runtime, simple_tree()[0], root_pipeline_data="x"))
    refused(api.run_pipeline(runtime, simple_tree()[0], priority=999))


def test_skipping_a_conditional_parallel_gateway_to_another_converge_is_refused(runtime):
    """``skip_conditional_parallel_gateway`` took any converge gateway of the pipeline: given the
    converge of a later fork, its branches were told to meet where they never arrive, passed their
    own converge, and left the pipeline RUNNING with a process asleep that nothing would wake. The
    only converge it may name is the gateway's own."""
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={0: "${missing} == 1", 1: "${missing} == 2"})
    a, b, c, d, e = (ServiceActivity(component_code="t_none") for _ in range(5))
    own, pg, later = ConvergeGateway(), ParallelGateway(), ConvergeGateway()
    start.extend(cpg).connect(a, b).converge(own).extend(c).extend(pg).connect(d, e).converge(later)
    later.extend(EmptyEndEvent())
    tree = build_tree(start)
    root = run(runtime, tree)
    wait_state(runtime, cpg.id, "FAILED")
    flows = list(tree["gateways"][cpg.id]["outgoing"])
    refused(api.skip_conditional_parallel_gateway(runtime, cpg.id, flows, later.id), later.id, own.id)
    assert node_state(runtime, cpg.id)["state"] == "FAILED"
    assert api.skip_conditional_parallel_gateway(runtime, cpg.id, flows, own.id).result
    wait_state(runtime, root, "FINISHED")
