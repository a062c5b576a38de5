"""bamboo-pipeline's integration scenarios, through culm's public API.

Each test builds the tree one of bamboo-pipeline's own integration tests builds (with the test
components of ``bamboo_suite_components.py``), runs it with ``culm.api`` on every backend, polls
``get_pipeline_states`` as a user would, and asserts the states, counters, execution data and
histories bamboo's test asserts.
"""

from __future__ import annotations

import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from engine_fixtures import finish, node_state, refused, run, wait_pipeline, wait_state, wait_until

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    NodeOutput,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(120)


def exec_data(runtime, node_id):
    res = api.get_execution_data(runtime, node_id)
    assert res.result, res.message
    return res.data


def assert_exec_data(runtime, expected):
    for node_id, want in expected.items():
        assert exec_data(runtime, node_id) == want, node_id


def states_of(runtime, root_id, node_ids):
    children = api.get_pipeline_states(runtime, root_id).data[root_id]["children"]
    return {n: children[n]["state"] for n in node_ids if n in children}


def wait_all(runtime, root_id, node_ids, state, timeout=20):
    ids = list(node_ids)

    def check():
        root = api.get_pipeline_states(runtime, root_id).data.get(root_id)
        if not root:
            return None
        found = {root_id: root, **root["children"]}
        return all(n in found and found[n]["state"] == state for n in ids)

    wait_until(check, timeout, f"{ids} to be {state}")


def histories(runtime, node_id):
    res = api.get_node_histories(runtime, node_id)
    assert res.result, res.message
    return res.data


# -- execution -------------------------------------------------------------------------------------
def test_one_polling_node(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)

    entry = finish(runtime, pipeline)

    assert {k: v["state"] for k, v in entry["children"].items()} == {
        start.id: "FINISHED", act.id: "FINISHED", end.id: "FINISHED"}
    assert_exec_data(runtime, {
        pipeline["id"]: {"inputs": {}, "outputs": {}},
        act.id: {"inputs": {"_loop": 1, "_inner_loop": 1},
                 "outputs": {"_loop": 1, "_inner_loop": 1, "_result": True}},
    })
    for node_id in (start.id, act.id, end.id):
        state = entry["children"][node_id]
        assert (state["loop"], state["retry"], state["skip"], state["error_ignored"]) == (1, 0, False, False)


def test_hooks_recorded_in_outputs(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="hook_debug_node")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    finish(runtime, pipeline)

    order = ["node_enter", "pre_execute", "execute", "post_execute", "pre_schedule", "schedule",
             "post_schedule", "node_finish"]
    assert exec_data(runtime, act.id) == {
        "inputs": {"_loop": 1, "_inner_loop": 1},
        "outputs": {"_loop": 1, "_inner_loop": 1, "_result": True, "hook_call_order": order,
                    **{name: 1 for name in order}},
    }


@pytest.mark.parametrize("execute_raise,schedule_raise,error_ignorable,order", [
    (True, False, False, ["node_enter", "pre_execute", "execute", "node_execute_exception", "node_execute_fail"]),
    (True, False, True, ["node_enter", "pre_execute", "execute", "node_execute_exception", "node_finish"]),
    (False, True, False, ["node_enter", "pre_execute", "execute", "post_execute", "pre_schedule", "schedule",
                          "node_schedule_exception", "node_schedule_fail"]),
    (False, True, True, ["node_enter", "pre_execute", "execute", "post_execute", "pre_schedule", "schedule",
                         "node_schedule_exception", "node_finish"]),
], ids=["execute-raise", "execute-raise-ignored", "schedule-raise", "schedule-raise-ignored"])
def test_hooks_of_failures(runtime, execute_raise, schedule_raise, error_ignorable, order):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="hook_interrupt_raise_test", error_ignorable=error_ignorable)
    act.component.inputs.execute_raise = Var(type=Var.PLAIN, value=execute_raise)
    act.component.inputs.schedule_raise = Var(type=Var.PLAIN, value=schedule_raise)
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline)

    if error_ignorable:
        wait_all(runtime, pipeline["id"], [start.id, act.id, end.id], "FINISHED")
        state = node_state(runtime, act.id)
        assert state["error_ignored"] is True and state["error_ignorable"] is True
    else:
        wait_state(runtime, act.id, "FAILED")
        assert node_state(runtime, pipeline["id"])["state"] == "RUNNING"
    out = exec_data(runtime, act.id)["outputs"]
    assert out["hook_call_order"] == order
    assert out["_result"] is False and "Exception" in out["ex_data"]


def test_graph_loop_renders_each_letter_and_keeps_histories(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_2 = ServiceActivity(component_code="loop_count_node")
    eg = ExclusiveGateway(conditions={0: "${a_i} < ${c}", 1: "${a_i} >= ${c}"})
    end = EmptyEndEvent()
    act_2.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    start.extend(act_1).extend(act_2).extend(eg).connect(act_1, end)
    data = Data()
    data.inputs["${a_i}"] = NodeOutput(type=Var.SPLICE, source_act=act_2.id, source_key="_loop", value="")
    data.inputs["${input_a}"] = Var(type=Var.SPLICE, value='${l.split(",")[a_i]}')
    data.inputs["${l}"] = Var(type=Var.PLAIN, value="a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t")
    data.inputs["${c}"] = Var(type=Var.PLAIN, value="4")
    pipeline = build_tree(start, data=data)

    entry = finish(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True, timeout=30)

    for node_id in (act_1.id, eg.id, act_2.id):
        assert entry["children"][node_id]["state"] == "FINISHED"
        assert entry["children"][node_id]["loop"] == 4
    assert_exec_data(runtime, {
        act_1.id: {"inputs": {"_loop": 4, "_inner_loop": 4},
                   "outputs": {"_loop": 4, "_inner_loop": 4, "_result": True}},
        act_2.id: {"inputs": {"_loop": 4, "_inner_loop": 4, "input_a": "e"},
                   "outputs": {"_loop": 4, "_inner_loop": 4, "loop": 4, "input_a": "e", "_result": True}},
    })
    past = histories(runtime, act_2.id)
    assert [h["loop"] for h in past] == [1, 2, 3]
    assert [h["inputs"] for h in past] == [
        {"_loop": n, "_inner_loop": n, "input_a": letter} for n, letter in ((1, "b"), (2, "c"), (3, "d"))]
    assert [h["outputs"] for h in past] == [
        {"_loop": n, "_inner_loop": n, "loop": n, "input_a": letter, "_result": True}
        for n, letter in ((1, "b"), (2, "c"), (3, "d"))]
    short = api.get_node_short_histories(runtime, act_2.id).data
    assert [set(h) for h in short] == [{"id", "node_id", "started_time", "archived_time", "loop", "skip",
                                        "version"}] * 3
    assert [h["loop"] for h in api.get_node_histories(runtime, act_2.id, loop=2).data] == [2]


def test_subprocess_graph_loop_params_and_outputs(runtime):
    start_sub = EmptyStartEvent()
    act_1_sub = ServiceActivity(component_code="debug_node")
    end_sub = EmptyEndEvent()
    act_1_sub.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    start_sub.extend(act_1_sub).extend(end_sub)

    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    act_2 = SubProcess(
        start=start_sub,
        data={
            "inputs": {
                "${input_a}": {"type": "splice", "value": '${l.split(",")[a_i]}'},
                "${a_i}": {"type": "plain", "value": "", "is_param": True},
                "${l}": {"type": "plain", "value": "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t"},
                "${output_a}": {"type": "splice", "source_act": act_1_sub.id, "source_key": "input_a"},
            },
            "outputs": ["${output_a}"],
        },
        params={"${a_i}": {"type": "splice", "value": "${s_i}"}},
    )
    eg = ExclusiveGateway(conditions={0: "${s_i} < 4", 1: "${s_i} >= 4"})
    end = EmptyEndEvent()
    start.extend(act_1).extend(act_2).extend(eg).connect(act_2, end)
    data = Data()
    data.inputs["${s_i}"] = NodeOutput(type=Var.SPLICE, source_act=act_2.id, source_key="_loop", value="")
    pipeline = build_tree(start, data=data)

    entry = finish(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True, timeout=30)

    for node_id in (start_sub.id, act_1_sub.id, end_sub.id, act_2.id, eg.id):
        assert entry["children"][node_id]["state"] == "FINISHED", node_id
        assert entry["children"][node_id]["loop"] == 4, node_id
    assert_exec_data(runtime, {
        act_1_sub.id: {"inputs": {"_loop": 4, "_inner_loop": 1, "input_a": "e"},
                       "outputs": {"_loop": 4, "_inner_loop": 1, "input_a": "e", "_result": True}},
        act_1.id: {"inputs": {"_loop": 1, "_inner_loop": 1},
                   "outputs": {"_loop": 1, "_inner_loop": 1, "_result": True}},
        act_2.id: {"inputs": {"${a_i}": 4}, "outputs": {"${output_a}": "e", "_loop": 4, "_inner_loop": 4}},
    })
    assert [(h["loop"], h["inputs"], h["outputs"]) for h in histories(runtime, act_2.id)] == [
        (n, {"${a_i}": n}, {"${output_a}": letter, "_loop": n, "_inner_loop": n})
        for n, letter in ((1, "b"), (2, "c"), (3, "d"))]
    assert [h["inputs"] for h in histories(runtime, act_1_sub.id)] == [
        {"_loop": n, "_inner_loop": 1, "input_a": letter} for n, letter in ((1, "b"), (2, "c"), (3, "d"))]


def test_loop_back_through_parallel_gateway(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    pg = ParallelGateway()
    act_2 = ServiceActivity(component_code="loop_count_node")
    act_3 = ServiceActivity(component_code="loop_count_node")
    act_4 = ServiceActivity(component_code="loop_count_s_node")
    cg = ConvergeGateway()
    eg = ExclusiveGateway(conditions={
        0: "${a_i} < ${c} and ${b_i} < ${c} and ${c_i} < ${c} and ${d} < ${c}",
        1: "${a_i} >= ${c} and ${b_i} >= ${c} and ${c_i} >= ${c} and ${d} >= ${c}",
    })
    end = EmptyEndEvent()
    act_2.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    act_3.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_b}")
    act_4.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_c}")
    start.extend(act_1).extend(pg).connect(act_2, act_3, act_4).to(pg).converge(cg).extend(eg).connect(act_1, end)
    pipeline = build_tree(start, data={
        "inputs": {
            "${a_i}": {"source_act": act_2.id, "source_key": "_loop", "type": "splice", "value": ""},
            "${b_i}": {"source_act": act_3.id, "source_key": "_loop", "type": "splice", "value": ""},
            "${c_i}": {"source_act": act_4.id, "source_key": "_loop", "type": "splice", "value": ""},
            "${input_a}": {"type": "splice", "value": '${l.split(",")[a_i]}'},
            "${input_b}": {"type": "splice", "value": '${l.split(",")[b_i]}'},
            "${input_c}": {"type": "splice", "value": '${l.split(",")[c_i]}'},
            "${d}": {"type": "splice", "value": "${c_i}"},
            "${l}": {"type": "plain", "value": "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q,r,s,t"},
            "${c}": {"type": "plain", "value": "3"},
        },
        "outputs": [],
    })

    entry = finish(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True, timeout=40)

    for node_id in (act_1.id, pg.id, act_2.id, act_3.id, act_4.id, eg.id):
        assert entry["children"][node_id]["loop"] == 3, node_id
    assert exec_data(runtime, act_4.id) == {
        "inputs": {"_loop": 3, "_inner_loop": 3, "input_a": "d"},
        "outputs": {"count": 2, "_loop": 3, "_inner_loop": 3, "loop": 3, "input_a": "d", "_result": True},
    }
    assert [h["inputs"]["input_a"] for h in histories(runtime, act_3.id)] == ["b", "c"]


def test_loop_inside_parallel_branches(runtime):
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="debug_node")
    pg = ParallelGateway()
    act_2 = ServiceActivity(component_code="loop_count_node")
    eg_1 = ExclusiveGateway(conditions={0: "${l_2} < 2", 1: "${l_2} >= 2"})
    act_3 = ServiceActivity(component_code="loop_count_node")
    act_4 = ServiceActivity(component_code="loop_count_node")
    eg_2 = ExclusiveGateway(conditions={0: "${l_3} < 2", 1: "${l_3} >= 2"})
    act_5 = ServiceActivity(component_code="loop_count_node")
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(act_1).extend(pg).connect(act_2, act_3, act_5)
    act_2.extend(eg_1).connect(act_2, cg)
    act_3.extend(act_4).extend(eg_2).connect(act_3, cg)
    act_5.extend(cg).extend(end)
    pipeline = build_tree(start, data={"inputs": {
        "${l_2}": {"source_act": act_2.id, "source_key": "_loop", "type": "splice", "value": ""},
        "${l_3}": {"source_act": act_3.id, "source_key": "_loop", "type": "splice", "value": ""},
    }, "outputs": []})

    entry = finish(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True, timeout=30)

    for node_id in (act_2.id, act_3.id, act_4.id, eg_1.id, eg_2.id):
        assert entry["children"][node_id]["loop"] == 2, node_id
    assert entry["children"][act_5.id]["loop"] == 1


def _fail_at_first_loop_tree():
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="fail_at_second_node")
    eg = ExclusiveGateway(conditions={0: "${a_i} < ${c}", 1: "${a_i} >= ${c}"})
    end = EmptyEndEvent()
    act_1.component.inputs.key_1 = Var(type=Var.PLAIN, value="val_1")
    act_1.component.inputs.key_2 = Var(type=Var.PLAIN, value="val_2")
    start.extend(act_1).extend(eg).connect(act_1, end)
    pipeline = build_tree(start, data={"inputs": {
        "${a_i}": {"source_act": act_1.id, "source_key": "_loop", "type": "splice", "value": ""},
        "${c}": {"type": "plain", "value": "4"},
    }, "outputs": []})
    return pipeline, act_1, eg


def test_retry_inside_graph_loop(runtime):
    pipeline, act_1, eg = _fail_at_first_loop_tree()
    run(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True)
    failed = wait_state(runtime, act_1.id, "FAILED")

    assert api.retry_node(runtime, act_1.id, {}).result
    wait_until(lambda: (s := node_state(runtime, act_1.id)) and s["state"] == "FAILED" and s["retry"] == 1,
               what="the first retry to fail")
    assert api.retry_node(runtime, act_1.id, {"can_go": True}).result
    entry = wait_pipeline(runtime, pipeline["id"], timeout=30)

    assert (entry["children"][act_1.id]["loop"], entry["children"][eg.id]["loop"]) == (4, 4)
    assert exec_data(runtime, act_1.id) == {
        "inputs": {"_loop": 4, "_inner_loop": 4, "can_go": True},
        "outputs": {"loop": 4, "_loop": 4, "_inner_loop": 4, "can_go": True, "_result": True},
    }
    past = histories(runtime, act_1.id)
    assert past[0]["version"] == failed["version"]
    assert [(h["loop"], h["retry"], h["inputs"], h["outputs"]) for h in past] == [
        (1, 0, {"_loop": 1, "_inner_loop": 1, "key_1": "val_1", "key_2": "val_2"},
         {"_loop": 1, "_inner_loop": 1, "_result": False}),
        (1, 1, {"_loop": 1, "_inner_loop": 1}, {"_loop": 1, "_inner_loop": 1, "_result": False}),
        (1, 2, {"_loop": 1, "_inner_loop": 1, "can_go": True},
         {"loop": 1, "_loop": 1, "_inner_loop": 1, "can_go": True, "_result": True}),
        (2, 0, {"_loop": 2, "_inner_loop": 2, "can_go": True},
         {"loop": 2, "_loop": 2, "_inner_loop": 2, "can_go": True, "_result": True}),
        (3, 0, {"_loop": 3, "_inner_loop": 3, "can_go": True},
         {"loop": 3, "_loop": 3, "_inner_loop": 3, "can_go": True, "_result": True}),
    ]


def test_skip_inside_graph_loop(runtime):
    pipeline, act_1, eg = _fail_at_first_loop_tree()
    run(runtime, pipeline, root_pipeline_data={}, cycle_tolerate=True)
    wait_state(runtime, act_1.id, "FAILED")

    assert api.skip_node(runtime, act_1.id).result
    entry = wait_pipeline(runtime, pipeline["id"], timeout=30)

    assert (entry["children"][act_1.id]["loop"], entry["children"][eg.id]["loop"]) == (4, 4)
    assert entry["children"][act_1.id]["skip"] is False
    given = {"key_1": "val_1", "key_2": "val_2"}
    assert exec_data(runtime, act_1.id) == {
        "inputs": {"_loop": 4, "_inner_loop": 4, **given},
        "outputs": {"loop": 4, "_loop": 4, "_inner_loop": 4, **given, "_result": True},
    }
    past = histories(runtime, act_1.id)
    failed_out = {"_result": False, "_inner_loop": 1, "_loop": 1}
    assert [(h["loop"], h["skip"], h["inputs"], h["outputs"]) for h in past] == [
        (1, False, {"_loop": 1, "_inner_loop": 1, **given}, failed_out),
        (1, True, {"_loop": 1, "_inner_loop": 1, **given}, failed_out),
        (2, False, {"_loop": 2, "_inner_loop": 2, **given},
         {"loop": 2, "_loop": 2, "_inner_loop": 2, **given, "_result": True}),
        (3, False, {"_loop": 3, "_inner_loop": 3, **given},
         {"loop": 3, "_loop": 3, "_inner_loop": 3, **given, "_result": True}),
    ]


# -- control ---------------------------------------------------------------------------------------
def test_retry_with_new_inputs_records_history(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="fail_ctrl_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    old = wait_state(runtime, act.id, "FAILED")
    assert exec_data(runtime, act.id) == {"inputs": {"_loop": 1, "_inner_loop": 1},
                                          "outputs": {"_result": False, "_loop": 1, "_inner_loop": 1}}

    res = api.retry_node(runtime, act.id, {"bit": 1})
    assert (res.result, res.message, res.exc, res.data) == (True, "success", None, None)
    wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")

    assert exec_data(runtime, act.id) == {"inputs": {"bit": 1, "_loop": 1, "_inner_loop": 1},
                                          "outputs": {"_result": True, "_loop": 1, "_inner_loop": 1}}
    state = node_state(runtime, act.id)
    assert state["version"] != old["version"] and state["retry"] == 1 and state["loop"] == 1
    (past,) = histories(runtime, act.id)
    assert past["node_id"] == act.id
    assert (past["loop"], past["retry"], past["skip"], past["version"]) == (1, 0, False, old["version"])
    assert past["started_time"] is not None and past["archived_time"] is not None
    assert past["inputs"] == {"_loop": 1, "_inner_loop": 1}
    assert past["outputs"] == {"_result": False, "_loop": 1, "_inner_loop": 1}
    assert api.get_data(runtime, act.id).data["inputs"] == {"bit": {"need_render": True, "value": 1}}


def test_skip_keeps_failed_outputs(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="fail_ctrl_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    old = wait_state(runtime, act.id, "FAILED")

    res = api.skip_node(runtime, act.id)
    assert (res.result, res.message) == (True, "success")
    wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")

    assert exec_data(runtime, act.id) == {"inputs": {"_loop": 1, "_inner_loop": 1},
                                          "outputs": {"_result": False, "_loop": 1, "_inner_loop": 1}}
    state = node_state(runtime, act.id)
    assert state["version"] != old["version"] and state["skip"] is True and state["retry"] == 0
    (past,) = histories(runtime, act.id)
    assert (past["loop"], past["retry"], past["skip"], past["version"]) == (1, 0, False, old["version"])


@pytest.mark.parametrize("command", ["retry", "skip"])
def test_retry_or_skip_every_failed_node_of_nested_parallel_blocks_in_subprocess(runtime, command):
    count = 3
    start = EmptyStartEvent()
    pg_1, pg_2 = ParallelGateway(), ParallelGateway()
    group_1 = [ServiceActivity(component_code="fail_ctrl_node") for _ in range(count)]
    group_2 = [ServiceActivity(component_code="fail_ctrl_node") for _ in range(count)]
    cg_1, cg_2 = ConvergeGateway(), ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(pg_1).connect(pg_2, *group_1).to(pg_2).connect(*group_2).converge(cg_1).to(pg_1).converge(
        cg_2).extend(end)
    parent_start = EmptyStartEvent()
    sub = SubProcess(start=start)
    parent_end = EmptyEndEvent()
    parent_start.extend(sub).extend(parent_end)
    pipeline = build_tree(parent_start)
    run(runtime, pipeline, root_pipeline_data={})
    failing = [a.id for a in group_1 + group_2]
    wait_all(runtime, pipeline["id"], failing, "FAILED")
    assert states_of(runtime, pipeline["id"], [sub.id]) == {sub.id: "RUNNING"}
    assert node_state(runtime, pipeline["id"])["state"] == "RUNNING"
    assert states_of(runtime, pipeline["id"], [cg_1.id, cg_2.id, end.id, parent_end.id]) == {}

    for node_id in failing:
        res = api.retry_node(runtime, node_id, {"bit": 1}) if command == "retry" else api.skip_node(runtime, node_id)
        assert res.result, res.message

    everything = [pipeline["id"], start.id, pg_1.id, pg_2.id, cg_1.id, cg_2.id, end.id, parent_start.id, sub.id,
                  parent_end.id, *failing]
    wait_all(runtime, pipeline["id"], everything, "FINISHED", timeout=40)


def test_callback_fail_retry_and_callback_again(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="callback_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    state = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: api.get_execution_data_outputs(runtime, act.id).data, what="execute to finish")

    stale = api.callback(runtime, act.id, "v" + "0" * 32, {})
    refused(stale, act.id)
    assert api.callback(runtime, act.id, state["version"], {"bit": 0}).result
    wait_state(runtime, act.id, "FAILED")
    refused(api.callback(runtime, act.id, state["version"], {}), act.id)

    assert api.retry_node(runtime, act.id).result
    again = wait_state(runtime, act.id, "RUNNING")
    assert again["version"] != state["version"]
    refused(api.callback(runtime, act.id, state["version"], {}), act.id)
    wait_until(lambda: api.callback(runtime, act.id, again["version"], data={}).result, what="callback accepted")
    wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")
    assert node_state(runtime, act.id)["retry"] == 1


def test_callback_fail_then_skip(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="callback_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    state = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, act.id, state["version"], {"bit": 0}).result, what="callback")
    wait_state(runtime, act.id, "FAILED")

    assert api.skip_node(runtime, act.id).result
    wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")
    assert node_state(runtime, act.id)["skip"] is True


def test_multi_callback_fail_retry_then_five_callbacks(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="multi_callback_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    state = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, act.id, state["version"], {"bit": 0}).result, what="callback")
    api.callback(runtime, act.id, state["version"], {"bit": 0})  # may be taken or refused; changes nothing
    wait_state(runtime, act.id, "FAILED")

    assert api.retry_node(runtime, act.id).result
    again = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, act.id, again["version"], {"bit": 1, "schedule_time": 0}).result,
               what="first callback")
    for n in range(1, 4):
        assert api.callback(runtime, act.id, again["version"], {"bit": 1, "schedule_time": n}).result
    wait_until(lambda: api.get_execution_data_outputs(runtime, act.id).data.get("_scheduled_times") == 4,
               what="four callbacks")
    assert node_state(runtime, act.id)["state"] == "RUNNING"
    assert api.callback(runtime, act.id, again["version"], {"bit": 1, "schedule_time": 4}).result
    wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")
    assert api.get_execution_data_outputs(runtime, act.id).data["_scheduled_times"] == 5


def test_poll_node_counts_to_five(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="schedule_node")
    act.component.inputs.key = Var(type=Var.PLAIN, value="v")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    finish(runtime, pipeline, timeout=30)

    assert exec_data(runtime, act.id)["outputs"] == {"key": "v", "count": 5, "_result": True, "_loop": 1,
                                                    "_inner_loop": 1}


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


def _polled_once(runtime, node_id):
    return exec_data(runtime, node_id) == {"inputs": {"_loop": 1, "_inner_loop": 1},
                                           "outputs": {"_loop": 1, "_inner_loop": 1, "_result": True}}


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
    assert all(_polled_once(runtime, a.id) for a in acts[:3])


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
    assert all(_polled_once(runtime, node_id) for node_id in ran)


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
    assert _polled_once(runtime, act.id)


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
    assert _polled_once(runtime, act.id)
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
