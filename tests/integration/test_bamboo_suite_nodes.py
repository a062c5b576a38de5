"""bamboo-pipeline's integration scenarios through culm's public API: gateways, end events and
failures of nodes that are not activities (see ``test_bamboo_suite.py``)."""

from __future__ import annotations

import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from bamboo_suite_helpers import exec_data, histories, polled_once, wait_all
from engine_fixtures import finish, node_state, refused, run, wait_pipeline, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(120)


# -- gateways --------------------------------------------------------------------------------------
def test_conditional_parallel_default_branch_and_converge(runtime):
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={0: "${x} == 1", 1: "${x} == 2", 2: "${x} == 3"},
                                     default_condition_outgoing=2)
    acts = [ServiceActivity(component_code="debug_no_schedule_node") for _ in range(3)]
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(cpg).connect(*acts).to(cpg).converge(cg).extend(end)
    pipeline = build_tree(start, data={"inputs": {"${x}": {"type": "plain", "value": 9}}, "outputs": []})

    entry = finish(runtime, pipeline)

    reached = set(entry["children"])
    assert acts[2].id in reached and acts[0].id not in reached and acts[1].id not in reached
    assert entry["children"][cg.id]["state"] == "FINISHED"


def test_exclusive_gateway_failure_then_skip_to_a_flow(runtime):
    start = EmptyStartEvent()
    eg = ExclusiveGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    act_1 = ServiceActivity(component_code="debug_no_schedule_node")
    act_2 = ServiceActivity(component_code="debug_no_schedule_node")
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(eg).connect(act_1, act_2).to(eg).converge(cg).extend(end)
    pipeline = build_tree(start, data={"inputs": {"${x}": {"type": "plain", "value": 3}}, "outputs": []})
    run(runtime, pipeline)
    wait_state(runtime, eg.id, "FAILED")
    assert set(api.get_execution_data_outputs(runtime, eg.id).data) == {"ex_data"}

    flow = pipeline["gateways"][eg.id]["outgoing"][1]
    refused(api.skip_exclusive_gateway(runtime, eg.id, "f-not-a-flow"), eg.id)
    assert api.skip_exclusive_gateway(runtime, eg.id, flow).result
    entry = wait_pipeline(runtime, pipeline["id"])

    assert entry["children"][eg.id]["skip"] is True
    assert act_2.id in entry["children"] and act_1.id not in entry["children"]
    assert [h["skip"] for h in histories(runtime, eg.id)] == [False]


def test_conditional_parallel_takes_every_true_branch(runtime):
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={0: "True == True", 1: "True == True", 2: "True == True",
                                                 3: "True == False", 4: "True == False"})
    acts = [ServiceActivity(component_code="debug_node") for _ in range(5)]
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(cpg).connect(*acts).converge(cg).extend(end)
    pipeline = build_tree(start)

    entry = finish(runtime, pipeline, root_pipeline_data={})

    assert set(entry["children"]) == {start.id, cpg.id, cg.id, end.id, *(a.id for a in acts[:3])}
    assert exec_data(runtime, pipeline["id"]) == {"inputs": {}, "outputs": {}}
    assert all(polled_once(runtime, a.id) for a in acts[:3])


def test_nested_conditional_parallel_gateways(runtime):
    start = EmptyStartEvent()
    cpg_1 = ConditionalParallelGateway(conditions={0: "True == True", 1: "True == True", 2: "True == True",
                                                   3: "True == False", 4: "True == False"})
    cpg_2 = ConditionalParallelGateway(conditions={0: "True == True", 1: "True == False", 2: "True == False",
                                                   3: "True == False", 4: "True == False"})
    group_1 = [ServiceActivity(component_code="debug_node") for _ in range(4)]
    group_2 = [ServiceActivity(component_code="debug_node") for _ in range(5)]
    cg_1, cg_2 = ConvergeGateway(), ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(cpg_1).connect(cpg_2, *group_1).to(cpg_2).connect(*group_2).converge(cg_1).to(cpg_1).converge(
        cg_2).extend(end)
    pipeline = build_tree(start)

    entry = finish(runtime, pipeline, root_pipeline_data={})

    ran = {group_1[0].id, group_1[1].id, group_2[0].id}
    assert set(entry["children"]) == {start.id, cpg_1.id, cpg_2.id, cg_1.id, cg_2.id, end.id, *ran}
    assert all(polled_once(runtime, node_id) for node_id in ran)


def test_conditional_parallel_conditions_are_templates(runtime):
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={0: '"${a}" == "1"', 1: '"${b}" == "1"', 2: '"${c}" == "1"',
                                                 3: '"${d}" == "1"', 4: "True == False"})
    acts = [ServiceActivity(component_code="debug_node") for _ in range(5)]
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(cpg).connect(*acts).converge(cg).extend(end)
    data = Data()
    data.inputs["${a}"] = Var(type=Var.PLAIN, value="1")
    data.inputs["${b}"] = Var(type=Var.PLAIN, value="1")
    data.inputs["${c}"] = Var(type=Var.PLAIN, value="0")
    pipeline = build_tree(start, data=data)

    entry = finish(runtime, pipeline, root_pipeline_data={})

    assert set(entry["children"]) == {start.id, cpg.id, cg.id, end.id, acts[0].id, acts[1].id}


def test_conditional_parallel_without_a_match_fails(runtime):
    start = EmptyStartEvent()
    cpg = ConditionalParallelGateway(conditions={i: "True == False" for i in range(3)})
    acts = [ServiceActivity(component_code="debug_node") for _ in range(3)]
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(cpg).connect(*acts).converge(cg).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})

    wait_state(runtime, cpg.id, "FAILED")

    assert node_state(runtime, pipeline["id"])["state"] == "RUNNING"
    assert set(api.get_pipeline_states(runtime, pipeline["id"]).data[pipeline["id"]]["children"]) == {
        start.id, cpg.id}
    assert exec_data(runtime, cpg.id) == {"inputs": {}, "outputs": {
        "ex_data": "all conditions of branches are not meet"}}


# -- executable end events -------------------------------------------------------------------------
def test_executable_end_event_runs_at_root_and_in_subprocess(runtime):
    sub_start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    sub_end = ExecutableEndEvent(type="MyTestEndEvent")
    sub_start.extend(act).extend(sub_end)
    start = EmptyStartEvent()
    sub = SubProcess(start=sub_start)
    end = ExecutableEndEvent(type="MyTestEndEvent")
    start.extend(sub).extend(end)
    pipeline = build_tree(start)

    entry = finish(runtime, pipeline, root_pipeline_data={})

    assert {k: v["state"] for k, v in entry["children"].items()} == {
        n: "FINISHED" for n in (start.id, sub.id, end.id, sub_start.id, act.id, sub_end.id)}
    assert exec_data(runtime, pipeline["id"]) == {"inputs": {}, "outputs": {}}
    assert polled_once(runtime, act.id)


@pytest.mark.parametrize("in_subprocess", [False, True], ids=["root", "subprocess"])
def test_raising_executable_end_event_fails_only_itself(runtime, in_subprocess):
    inner_start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    raising_end = ExecutableEndEvent(type="MyRaiseEndEvent")
    inner_start.extend(act).extend(raising_end)
    if in_subprocess:
        start = EmptyStartEvent()
        sub = SubProcess(start=inner_start)
        start.extend(sub).extend(ExecutableEndEvent(type="MyTestEndEvent"))
        pipeline = build_tree(start)
    else:
        pipeline = build_tree(inner_start)
    run(runtime, pipeline, root_pipeline_data={})

    wait_state(runtime, raising_end.id, "FAILED")

    assert node_state(runtime, pipeline["id"])["state"] == "RUNNING"
    if in_subprocess:
        assert node_state(runtime, sub.id)["state"] == "RUNNING"
    assert polled_once(runtime, act.id)
    assert "end event raised on purpose" in api.get_execution_data_outputs(runtime, raising_end.id).data["ex_data"]
    refused(api.skip_node(runtime, raising_end.id), raising_end.id)
    assert api.retry_node(runtime, raising_end.id).result
    wait_state(runtime, raising_end.id, "FAILED")
    assert node_state(runtime, raising_end.id)["retry"] == 1


def test_debug_info_keeps_bamboo_key_names(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_no_schedule_node")
    act.component.inputs.param_1 = Var(type=Var.SPLICE, value="${constant_1}")
    start.extend(act).extend(EmptyEndEvent())
    data = Data()
    data.inputs["${constant_1}"] = Var(type=Var.PLAIN, value="value_1")
    pipeline = build_tree(start, data=data)
    finish(runtime, pipeline, root_pipeline_data={})

    info = api.get_pipeline_debug_info(runtime, pipeline["id"]).data
    assert info["contex_values"] == info["context_values"]
    assert [(v["key"], v["value"]) for v in info["context_values"]] == [("${constant_1}", "value_1")]
    node = api.get_node_debug_info(runtime, act.id).data
    assert node["state"]["state"] == "FINISHED" and node["err"] == []
    assert node["data"] == {"inputs": {"param_1": {"need_render": True, "value": "${constant_1}"}}, "outputs": {}}


# -- failures of nodes that are not activities -----------------------------------------------------
def test_retry_subprocess_whose_params_fail_records_only_ex_data(runtime):
    sub_start = EmptyStartEvent()
    sub_act = ServiceActivity(component_code="debug_node")
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    params = Params({"${raise_var}": Var(type=Var.LAZY, custom_type="raise_variable", value="")})
    start = EmptyStartEvent()
    sub = SubProcess(start=sub_start, params=params)
    start.extend(sub).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    old = wait_state(runtime, sub.id, "FAILED")
    first = exec_data(runtime, sub.id)
    assert first["inputs"] == {} and set(first["outputs"]) == {"ex_data"}
    assert "raise_variable raised on purpose" in first["outputs"]["ex_data"]

    assert api.retry_subprocess(runtime, sub.id).result
    wait_until(lambda: (s := node_state(runtime, sub.id))["state"] == "FAILED" and s["version"] != old["version"],
               what="the retried subprocess to fail again")

    (past,) = histories(runtime, sub.id)
    assert past["node_id"] == sub.id
    assert (past["loop"], past["retry"], past["skip"], past["version"]) == (1, 0, False, old["version"])
    assert past["started_time"] is not None and past["archived_time"] is not None
    assert past["inputs"] == {} and set(past["outputs"]) == {"ex_data"}
    assert node_state(runtime, sub.id)["retry"] == 1
    assert sub_act.id not in api.get_pipeline_states(runtime, pipeline["id"]).data[pipeline["id"]]["children"]


def test_raising_end_event_records_only_ex_data(runtime):
    start = EmptyStartEvent()
    end = ExecutableEndEvent(type="MyRaiseEndEvent")
    start.extend(ServiceActivity(component_code="debug_no_schedule_node")).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline)

    wait_state(runtime, end.id, "FAILED")

    found = exec_data(runtime, end.id)
    assert found["inputs"] == {} and set(found["outputs"]) == {"ex_data"}
    assert "end event raised on purpose" in found["outputs"]["ex_data"]


def test_failed_exclusive_gateway_retried_after_updating_the_context(runtime):
    start = EmptyStartEvent()
    eg = ExclusiveGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    act_1 = ServiceActivity(component_code="debug_no_schedule_node")
    act_2 = ServiceActivity(component_code="debug_no_schedule_node")
    act_2.component.inputs.x = Var(type=Var.SPLICE, value="${x}")
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(eg).connect(act_1, act_2).to(eg).converge(cg).extend(end)
    pipeline = build_tree(start, data={"inputs": {"${x}": {"type": "plain", "value": 3}}, "outputs": []})
    run(runtime, pipeline)
    old = wait_state(runtime, eg.id, "FAILED")

    updated = api.update_context_values(runtime, pipeline["id"], {"${x}": 2, "${not_there}": 1})
    assert updated.result, updated.message
    assert [v["value"] for v in api.get_pipeline_debug_info(runtime, pipeline["id"]).data["context_values"]
            if v["key"] == "${x}"] == [2]
    assert not [v for v in api.get_pipeline_debug_info(runtime, pipeline["id"]).data["context_values"]
                if v["key"] == "${not_there}"]
    assert api.retry_node(runtime, eg.id).result
    entry = wait_pipeline(runtime, pipeline["id"])

    assert act_2.id in entry["children"] and act_1.id not in entry["children"]
    assert (entry["children"][eg.id]["retry"], entry["children"][eg.id]["loop"]) == (1, 1)
    assert api.get_execution_data_inputs(runtime, act_2.id).data["x"] == 2
    (past,) = histories(runtime, eg.id)
    assert past["version"] == old["version"] and past["outputs"] == {
        "ex_data": "all conditions of branches are not meet"}


def test_failed_start_event_is_skipped(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_no_schedule_node")
    start.extend(act).extend(EmptyEndEvent())
    data = Data(inputs={"${bad}": Var(type=Var.LAZY, custom_type="raise_variable", value="")},
                pre_render_keys=["${bad}"])
    pipeline = build_tree(start, data=data)
    run(runtime, pipeline)
    wait_state(runtime, start.id, "FAILED")
    found = exec_data(runtime, start.id)
    assert found["inputs"] == {} and set(found["outputs"]) == {"ex_data"}

    assert api.skip_node(runtime, start.id).result
    entry = wait_pipeline(runtime, pipeline["id"])

    assert entry["children"][start.id]["skip"] is True
    assert entry["children"][act.id]["state"] == "FINISHED"


# -- subprocesses ----------------------------------------------------------------------------------
def _debug_subprocess():
    sub_start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    sub_end = EmptyEndEvent()
    sub_start.extend(act).extend(sub_end)
    return SubProcess(start=sub_start), [sub_start.id, act.id, sub_end.id], act


def test_parallel_subprocesses_one_followed_by_another(runtime):
    made = [_debug_subprocess() for _ in range(5)]
    subprocs = [m[0] for m in made]
    additional, additional_ids, additional_act = _debug_subprocess()
    start = EmptyStartEvent()
    pg = ParallelGateway()
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(pg).connect(*subprocs).to(subprocs[0]).extend(additional).to(pg).converge(cg).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})

    everything = [pipeline["id"], start.id, pg.id, cg.id, end.id, additional.id, *additional_ids,
                  *(s.id for s in subprocs), *(i for m in made for i in m[1])]
    assert len(everything) == 29
    wait_all(runtime, pipeline["id"], everything, "FINISHED", timeout=40)

    assert exec_data(runtime, pipeline["id"]) == {"inputs": {}, "outputs": {}}
    for sub in [*subprocs, additional]:
        assert exec_data(runtime, sub.id) == {"inputs": {}, "outputs": {"_loop": 1, "_inner_loop": 1}}
    assert all(polled_once(runtime, act.id) for act in [additional_act, *(m[2] for m in made)])


def test_subprocess_context_reaches_every_nested_pipeline(runtime):
    sub_start = EmptyStartEvent()
    sub_act = ServiceActivity(component_code="debug_node")
    sub_act.component.inputs.u = Var(type=Var.SPLICE, value="${user}")
    sub_act.component.inputs.p = Var(type=Var.SPLICE, value="${password}")
    sub_start.extend(sub_act).extend(EmptyEndEvent())
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    act.component.inputs.u = Var(type=Var.SPLICE, value="${user}")
    act.component.inputs.p = Var(type=Var.SPLICE, value="${password}")
    sub = SubProcess(start=sub_start)
    start.extend(act).extend(sub).extend(EmptyEndEvent())
    parent_start = EmptyStartEvent()
    parent_sub = SubProcess(start=start)
    parent_start.extend(parent_sub).extend(EmptyEndEvent())
    pipeline = build_tree(parent_start)

    finish(runtime, pipeline, root_pipeline_data={},
           subprocess_context={"${user}": "user00", "${password}": "password"})

    given = {"u": "user00", "p": "password"}
    for node_id in (sub_act.id, act.id):
        assert exec_data(runtime, node_id) == {"inputs": {**given, "_loop": 1, "_inner_loop": 1},
                                               "outputs": {**given, "_loop": 1, "_inner_loop": 1, "_result": True}}
    for node_id in (sub.id, parent_sub.id):
        assert exec_data(runtime, node_id) == {"inputs": {}, "outputs": {"_loop": 1, "_inner_loop": 1}}
