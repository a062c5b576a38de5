"""bamboo users' code runs unchanged (issue 16): each test is written as bamboo's docs and tests
write the code, with the imports swapped (``bamboo_engine`` -> ``culm``), and runs on every backend
unless it observes in-process state.
"""

from __future__ import annotations

import bamboo_style_components as bamboo_plugins
import pytest
from engine_fixtures import finish, node_state, outputs, run, wait_idle, wait_state
from support import wait_until

from culm import api  # bamboo: from bamboo_engine import api
from culm.builder import (  # bamboo: from bamboo_engine.builder import *
    ConditionalParallelGateway,
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ExecutableEndEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
    builder,
)
from culm.signals import pipeline_event, post_set_state  # bamboo: from pipeline.eri.signals import ...

pytestmark = pytest.mark.timeout(90)


# -- gap 2: hooks written as bamboo's docs write them ----------------------------------------------
def test_hooks_without_callback_data_run(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="bamboo_hook_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = builder.build_tree(start)

    finish(runtime, pipeline)

    assert outputs(runtime, act.id)["hooks"] == ["node_enter", "pre_execute", "post_execute", "node_finish"]


def test_ignored_execute_exception_is_followed_by_node_finish(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="bamboo_hook_node", error_ignorable=True)
    act.component.inputs.mode = Var(type=Var.PLAIN, value="raise")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    finish(runtime, pipeline)

    out = outputs(runtime, act.id)
    assert out["hooks"] == ["node_enter", "pre_execute", "node_execute_exception", "node_finish"]
    assert out["_result"] is False and "bamboo-style execute raised" in out["ex_data"]
    assert node_state(runtime, act.id)["error_ignored"] is True


def test_failed_execute_without_ignore_has_no_node_finish(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="bamboo_hook_node")
    act.component.inputs.mode = Var(type=Var.PLAIN, value="raise")
    start.extend(act).extend(EmptyEndEvent())
    run(runtime, build_tree(start))

    wait_state(runtime, act.id, "FAILED")

    assert outputs(runtime, act.id)["hooks"] == ["node_enter", "pre_execute", "node_execute_exception",
                                                 "node_execute_fail"]


def test_ignored_schedule_exception_is_followed_by_node_finish(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="bamboo_hook_callback_node", error_ignorable=True)
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    run(runtime, pipeline)
    state = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute")

    assert api.callback(runtime, act.id, state["version"], {"raise": True}).result
    wait_state(runtime, pipeline["id"], "FINISHED")

    assert outputs(runtime, act.id)["hooks"] == [
        "node_enter", "pre_execute", "post_execute",
        "pre_schedule", "node_schedule_exception", "node_finish",
    ]
    assert node_state(runtime, act.id)["error_ignored"] is True


# -- gap 3: receivers written for bamboo (Django style) --------------------------------------------
def test_bamboo_receivers_hear_commands(runtime):
    events, states = [], []

    def event_dispatcher(sender, event, **kwargs):
        events.append((event.event_type, event.data))

    def state_listener(sender, node_id, to_state, version, root_id, parent_id, loop, **kwargs):
        states.append((node_id, to_state))

    pipeline_event.connect(receiver=event_dispatcher)
    post_set_state.connect(state_listener)
    try:
        start = EmptyStartEvent()
        act = ServiceActivity(component_code="t_callback")
        start.extend(act).extend(EmptyEndEvent())
        pipeline = build_tree(start)
        run(runtime, pipeline)
        wait_state(runtime, act.id, "RUNNING")
        assert api.pause_pipeline(runtime, pipeline["id"]).result
        assert api.resume_pipeline(runtime, pipeline["id"]).result
        wait_idle(runtime)
    finally:
        pipeline_event.disconnect(event_dispatcher)
        post_set_state.disconnect(state_listener)
    # Commands send their signals in the process that ran them, whichever runtime is used.
    assert ("pre_pause_pipeline", {"pipeline_id": pipeline["id"]}) in events
    assert ("post_resume_pipeline", {"pipeline_id": pipeline["id"]}) in events
    assert (pipeline["id"], "SUSPENDED") in states and (pipeline["id"], "RUNNING") in states


# -- gap 4: a gateway with no matching branch records ex_data only ---------------------------------
@pytest.mark.parametrize("gateway_cls", [ExclusiveGateway, ConditionalParallelGateway])
def test_gateway_without_matching_branch_records_only_ex_data(runtime, gateway_cls):
    start = EmptyStartEvent()
    gw = gateway_cls(conditions={0: "1 == 0", 1: "2 == 0"})
    act_1 = ServiceActivity(component_code="example_component")
    act_2 = ServiceActivity(component_code="example_component")
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(gw).connect(act_1, act_2).to(gw).converge(cg).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline)

    wait_state(runtime, gw.id, "FAILED")

    out = outputs(runtime, gw.id)
    assert list(out) == ["ex_data"]
    assert "all conditions of branches are not meet" in out["ex_data"]


# -- gap 5: splice variables in a loop back through a parallel gateway -----------------------------
def test_splice_reading_loop_counters_renders_on_every_loop(runtime):
    # bamboo's test_parallel_gateway_rerun, on bamboo-engine's 1-based loop counters.
    start = EmptyStartEvent()
    act_1 = ServiceActivity(component_code="example_component")
    pg = ParallelGateway()
    act_2 = ServiceActivity(component_code="pipe_example_component")
    act_3 = ServiceActivity(component_code="pipe_example_component")
    act_4 = ServiceActivity(component_code="pipe_example_component")
    cg = ConvergeGateway()
    eg = ExclusiveGateway(
        conditions={
            0: "${a_i} < ${c} and ${b_i} < ${c} and ${c_i} < ${c} and ${d} < ${c}",
            1: "${a_i} >= ${c} and ${b_i} >= ${c} and ${c_i} >= ${c} and ${d} >= ${c}",
        }
    )
    end = EmptyEndEvent()
    act_2.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_a}")
    act_3.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_b}")
    act_4.component.inputs.input_a = Var(type=Var.SPLICE, value="${input_c}")
    start.extend(act_1).extend(pg).connect(act_2, act_3, act_4).to(pg).converge(cg).extend(eg).connect(act_1, end)
    data = {
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
    }
    pipeline = build_tree(start, data=data)

    finish(runtime, pipeline, timeout=30, cycle_tolerate=True)

    for act in (act_2, act_3, act_4):
        assert node_state(runtime, act.id)["loop"] == 3
        assert outputs(runtime, act.id)["input_a"] == "d"
        history = api.get_node_histories(runtime, act.id).data
        assert [h["outputs"]["input_a"] for h in history] == ["b", "c"]


# -- gap 7: a custom end event registered the bamboo way -------------------------------------------
def test_end_event_registered_with_flow_node_cls_factory_runs(runtime):
    start = EmptyStartEvent()
    buy_ticket = ServiceActivity(component_code="example_component", name="example_component")
    end = ExecutableEndEvent(type="CustomExecutableEndEvent")
    start.extend(buy_ticket).extend(end)
    pipeline = build_tree(start)

    finish(runtime, pipeline)

    assert bamboo_plugins.end_calls() == [[False, pipeline["id"], pipeline["id"]]]
    assert node_state(runtime, end.id)["state"] == "FINISHED"


# -- gap 8: timeouts are accepted and ignored, and said to be --------------------------------------
def test_timeout_is_accepted_ignored_and_said_to_be(runtime):
    from culm.model import ignored

    ignored._reset_for_tests()
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="example_component", timeout=1,
                          timeout_config={"enable": True, "action": "forced_fail", "seconds": 1})
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    with pytest.warns(ignored.IgnoredSettingWarning, match=act.id):
        finish(runtime, pipeline)

    # `timeout` is accepted as bamboo-engine accepts it: kept in the tree, and the node runs as
    # without it; the node ends well within its timeout_config's second, which changes nothing.
    assert node_state(runtime, act.id)["state"] == "FINISHED"
    assert outputs(runtime, act.id)["_result"] is True
