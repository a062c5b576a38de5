"""bamboo-pipeline's integration scenarios, through culm's public API: execution and loops.

Each test builds the tree one of bamboo-pipeline's own integration tests builds (with the test
components of ``bamboo_suite_components.py``), runs it with ``culm.api`` on every backend, polls
``get_pipeline_states`` as a user would, and asserts the states, counters, execution data and
histories bamboo's test asserts. ``test_bamboo_suite_nodes.py`` and ``test_bamboo_suite_control.py``
hold the gateway / event and the operator-command scenarios.
"""

from __future__ import annotations

import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from bamboo_suite_helpers import assert_exec_data, exec_data, histories, wait_all
from engine_fixtures import finish, node_state, run, wait_pipeline, wait_state
from support import wait_until

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

pytestmark = pytest.mark.timeout(120)


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


# -- node loops (loop_config) ----------------------------------------------------------------------
def _node_loop_tree(loop_config, fail_at=None):
    start = EmptyStartEvent()
    body = ServiceActivity(component_code="loop_outputs_node", loop_config=loop_config)
    body.component.inputs.x = Var(type=Var.PLAIN, value="X")
    body.component.inputs.fail_at = Var(type=Var.PLAIN, value=fail_at)
    after = ServiceActivity(component_code="debug_no_schedule_node")
    after.component.inputs.collected = Var(type=Var.SPLICE, value="${collected}")
    start.extend(body).extend(after).extend(EmptyEndEvent())
    return build_tree(start), body, after


def test_node_loop_collects_every_iteration_and_fail_skip_goes_on(runtime):
    pipeline, body, after = _node_loop_tree(
        {"enable": True, "loop_times": 3, "fail_skip": True, "outputs_key": "${collected}"}, fail_at=2)

    entry = finish(runtime, pipeline)

    state = entry["children"][body.id]
    assert (state["loop"], state["retry"], state["skip"]) == (3, 0, False)
    assert api.get_execution_data_inputs(runtime, after.id).data["collected"] == [
        {"i": 1, "x": "X", "result": True, "inner_loop": 1},
        {"i": 2, "x": "X", "result": False, "inner_loop": 2},
        {"i": 3, "x": "X", "result": True, "inner_loop": 3},
    ]
    assert [(h["loop"], h["outputs"]["_result"]) for h in histories(runtime, body.id)] == [(1, True), (2, False)]
    assert exec_data(runtime, body.id)["inputs"] == {"x": "X", "fail_at": 2, "_loop": 3, "_inner_loop": 3}


def test_retried_node_loop_starts_over(runtime):
    pipeline, body, after = _node_loop_tree({"enable": True, "loop_times": 3, "outputs_key": "${collected}"},
                                            fail_at=2)
    run(runtime, pipeline)
    failed = wait_state(runtime, body.id, "FAILED")
    assert failed["loop"] == 2

    assert api.retry_node(runtime, body.id, {"x": "Y", "fail_at": 0}).result
    entry = wait_pipeline(runtime, pipeline["id"])

    state = entry["children"][body.id]
    assert (state["loop"], state["retry"]) == (3, 1)
    assert api.get_execution_data_inputs(runtime, after.id).data["collected"] == [
        {"i": n, "x": "Y", "result": True, "inner_loop": n} for n in (1, 2, 3)]
    assert [(h["loop"], h["retry"], h["outputs"]["outputs"]["x"]) for h in histories(runtime, body.id)] == [
        (1, 0, "X"), (2, 0, "X"), (1, 1, "Y"), (2, 1, "Y")]
