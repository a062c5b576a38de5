"""bamboo-engine's user guide, continued (see ``test_bamboo_docs_examples.py``): the component
guide, the lazy variable guide, the engine API reference, the signals guide, the hook guide (a
service's hooks), the hook signals guide (every ``pipeline_event`` type it lists), the
start-position guide, the node timeout guide, the "update node outputs" guide, and the guides'
habit of creating a runtime wherever one is needed. The components they define are in
``bamboo_docs_support``.
"""

# ruff: noqa: F403, F405 - the guides import the builder with a star, as here

from __future__ import annotations

import datetime

import bamboo_docs_support as guide
import bamboo_suite_components  # noqa: F401 - registers debug_node, raise_variable ...
import pytest
from bamboo_docs_support import (  # noqa: F401
    docs_harness,
    docs_runtime,
    executed,
    one_node,
    states_of,
    wait_finished,
    wait_node,
)
from support import wait_until

from culm import Runtime, api  # bamboo: from bamboo_engine import api; BambooDjangoRuntime
from culm import builder as builder_module  # bamboo: from bamboo_engine import builder
from culm.builder import *  # bamboo: from bamboo_engine.builder import *

pytestmark = pytest.mark.timeout(120)
# The signal guides' receivers hear what the engine does in their own process: the embedded runtime's.
EMBEDDED_ONLY = pytest.mark.parametrize("runtime", ["sqlite"], indirect=True)


# -- custom_component.md -----------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "state"), [(4, "FINISHED"), ("4", "FAILED")])
def test_factorial_component(runtime, n, state):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="fac_cal_comp")
    act.component.inputs.n = Var(type=Var.PLAIN, value=n)
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = builder_module.build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_node(runtime, act.id, state)
    outputs = api.get_execution_data_outputs(runtime, act.id).data
    if state == "FINISHED":
        assert outputs["factorial_of_n"] == 24 and outputs["_result"] is True and outputs["_loop"] == 1
    else:
        assert outputs["ex_data"] == "n must be a integer!" and outputs["_result"] is False
        assert states_of(runtime, pipeline)[pipeline["id"]]["state"] == "RUNNING"
    # As bamboo's, the component's declaration adds the outputs every service has.
    declared = [item["key"] for item in guide.FactorialCalculateComponent.outputs_format()]
    assert declared == ["factorial_of_n", "_result", "_loop", "_inner_loop"]
    assert [item["key"] for item in guide.FactorialCalculateComponent.inputs_format()] == ["n"]


def test_polling_component_and_a_custom_interval_generator(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="docs_guide_poll")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    outputs = api.get_execution_data_outputs(runtime, act.id).data
    assert outputs["polled"] == 2 and outputs["poll_url"] == "http://example.invalid/task/1"
    generator = guide.LinearIntervalGenerator()
    assert [generator.next() for _ in range(3)] == [1, 2, 3]


@pytest.mark.parametrize(("status", "state"), [(1, "FINISHED"), (-2, "FAILED")])
def test_single_callback_component(runtime, status, state):
    pipeline, act = one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]
    wait_until(lambda: api.callback(runtime, act.id, version, {"status": status}).result, timeout=20)

    wait_node(runtime, act.id, state)
    if state == "FAILED":
        assert api.get_execution_data_outputs(runtime, act.id).data["ex_data"] == "task failed with code: -2"


def test_multiple_callback_component_finishes_on_the_final_callback(runtime):
    pipeline, act = one_node("docs_guide_multi_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]

    wait_until(lambda: api.callback(runtime, act.id, version, {"status": 0}).result, timeout=20)
    assert api.callback(runtime, act.id, version, {"status": 0}).result is True
    assert api.callback(runtime, act.id, version, {"status": 1}).result is True

    wait_finished(runtime, pipeline)


# -- lazy_var.md -----------------------------------------------------------------------------------
def test_lazy_variable_reads_its_rendered_value(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="debug_node")
    act.component.inputs.today = Var(type=Var.SPLICE, value="${today}")
    start.extend(act).extend(EmptyEndEvent())
    data = Data(inputs={
        "${fmt}": Var(type=Var.PLAIN, value="%Y"),
        "${today}": Var(type=Var.LAZY, custom_type="format_support_current_time", value={"time_format": "${fmt} "}),
    })
    pipeline = build_tree(start, data=data)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, act.id).data["today"] == str(datetime.datetime.now().year)


# -- engine_api.md ---------------------------------------------------------------------------------
def test_engine_api_examples_on_a_waiting_and_a_failed_node(runtime):
    start = EmptyStartEvent()
    first = ServiceActivity(component_code="fac_cal_comp")
    first.component.inputs.n = Var(type=Var.PLAIN, value="not an int")
    waiting = ServiceActivity(component_code="docs_guide_callback")
    start.extend(first).extend(waiting).extend(EmptyEndEvent())
    pipeline = builder_module.build_tree(start)

    assert api.run_pipeline(runtime=runtime, pipeline=pipeline).result is True
    wait_node(runtime, first.id, "FAILED")
    assert api.retry_node(runtime=runtime, node_id=first.id, data={"n": 3}).result is True
    wait_node(runtime, first.id, "FINISHED")
    assert api.get_execution_data_outputs(runtime, first.id).data["factorial_of_n"] == 6
    histories = api.get_node_histories(runtime=runtime, node_id=first.id).data
    assert len(histories) == 1 and histories[0]["loop"] == 1 and histories[0]["skip"] is False
    assert {"id", "node_id", "started_time", "archived_time", "version", "inputs", "outputs"} <= set(histories[0])
    short = api.get_node_short_histories(runtime=runtime, node_id=first.id).data
    assert "inputs" not in short[0] and short[0]["version"] == histories[0]["version"]

    version = wait_node(runtime, waiting.id, "RUNNING")["version"]
    assert api.pause_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert api.resume_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert api.forced_fail_activity(runtime=runtime, node_id=waiting.id, ex_data="forced fail by me").result is True
    failed = wait_node(runtime, waiting.id, "FAILED")
    assert failed["version"] != version
    assert api.get_execution_data_outputs(runtime, waiting.id).data["ex_data"] == "forced fail by me"
    assert api.skip_node(runtime=runtime, node_id=waiting.id).result is True
    states = wait_finished(runtime, pipeline)
    assert states[pipeline["id"]]["children"][waiting.id]["skip"] is True

    both = api.get_execution_data(runtime=runtime, node_id=first.id).data
    assert set(both) == {"inputs", "outputs"} and both["inputs"]["n"] == 3 and both["inputs"]["_loop"] == 1
    raw = api.get_data(runtime=runtime, node_id=first.id).data
    assert raw["inputs"]["n"] == {"need_render": True, "value": 3} and raw["outputs"] == {}
    children = api.get_children_states(runtime=runtime, node_id=pipeline["id"]).data
    assert set(children[pipeline["id"]]["children"]) == set(states[pipeline["id"]]["children"])


def test_engine_api_pause_and_resume_node_appoint(runtime):
    start = EmptyStartEvent()
    waiting = ServiceActivity(component_code="docs_guide_callback")
    act = ServiceActivity(component_code="example_component")
    start.extend(waiting).extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, waiting.id, "RUNNING")["version"]

    assert api.pause_node_appoint(runtime=runtime, node_id=act.id).result is True
    wait_until(lambda: api.callback(runtime, waiting.id, version, {"status": 1}).result, timeout=20)
    wait_until(lambda: api.get_pipeline_debug_info(runtime, pipeline["id"]).data["processes"][0]["suspended"],
               timeout=20)
    assert states_of(runtime, pipeline)[pipeline["id"]]["children"][act.id]["state"] == "SUSPENDED"
    assert api.resume_node_appoint(runtime=runtime, node_id=act.id).result is True
    wait_finished(runtime, pipeline)


def test_engine_api_revoke_pipeline(runtime):
    pipeline, act = one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_node(runtime, act.id, "RUNNING")

    assert api.revoke_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result is True
    assert states_of(runtime, pipeline)[pipeline["id"]]["state"] == "REVOKED"


def test_engine_api_skip_gateways_and_retry_subprocess(runtime):
    start = EmptyStartEvent()
    eg = ExclusiveGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    cpg = ConditionalParallelGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
    c, d = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    cg = ConvergeGateway()
    sub_start = EmptyStartEvent()
    sub_start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, params={"${y}": Var(type=Var.LAZY, custom_type="raise_variable", value="")})
    end = EmptyEndEvent()
    start.extend(eg).connect(a, b).to(eg).converge(cpg).connect(c, d).to(cpg).converge(cg).extend(sub).extend(end)
    pipeline = build_tree(start, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value=3)}))

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_node(runtime, eg.id, "FAILED")
    flow_to_b = next(f for f, v in pipeline["flows"].items() if v["source"] == eg.id and v["target"] == b.id)
    assert api.skip_exclusive_gateway(runtime=runtime, node_id=eg.id, flow_id=flow_to_b).result is True
    wait_node(runtime, cpg.id, "FAILED")
    flows = [f for f, v in pipeline["flows"].items() if v["source"] == cpg.id]
    assert api.skip_conditional_parallel_gateway(runtime=runtime, node_id=cpg.id, flow_ids=flows,
                                                 converge_gateway_id=cg.id).result is True
    wait_node(runtime, sub.id, "FAILED")
    assert api.retry_subprocess(runtime=runtime, node_id=sub.id).result is True
    wait_node(runtime, sub.id, "FAILED")
    ran = executed(states_of(runtime, pipeline), pipeline)
    assert {b.id, c.id, d.id} <= ran and a.id not in ran


def test_engine_api_doc_slips_are_refused_not_raised(runtime):
    """Two of the reference's examples pass keywords the functions do not take
    (``run_pipeline(pipeline_id=...)``, ``skip_conditional_parallel_gateway(flow_id=...)``)."""
    res = api.run_pipeline(runtime=runtime, pipeline_id="pipeline id")
    assert res.result is False and "pipeline" in res.message
    res = api.skip_conditional_parallel_gateway(runtime=runtime, node_id="node_id", flow_id="flow_id")
    assert res.result is False and "flow_id" in res.message


def test_get_pipeline_states_while_running_then_finished(runtime):
    pipeline, act = one_node("docs_guide_callback")
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    version = wait_node(runtime, act.id, "RUNNING")["version"]
    running = states_of(runtime, pipeline)[pipeline["id"]]
    assert running["state"] == "RUNNING" and running["archived_time"] is None

    wait_until(lambda: api.callback(runtime=runtime, node_id=act.id, version=version, data={"status": 1}).result,
               timeout=20)
    done = wait_finished(runtime, pipeline)[pipeline["id"]]
    assert done["archived_time"] >= done["started_time"]


# -- signals.md --------------------------------------------------------------------------------------
@EMBEDDED_ONLY
def test_the_runtime_signals_the_guide_lists(runtime):
    from culm.signals import (  # bamboo: from pipeline.eri.signals import ...
        execute_interrupt,
        post_set_state,
        pre_service_execute,
        pre_service_schedule,
        schedule_interrupt,
    )

    heard = []

    def on_execute(sender, service, data, parent_data, **kwargs):
        heard.append(("execute", type(service).__name__, data.get_one_of_inputs("who"), parent_data.inputs))

    def on_schedule(sender, service, data, parent_data, callback_data, **kwargs):
        heard.append(("schedule", type(service).__name__, data.get_one_of_inputs("who"), callback_data))

    def on_state(sender, node_id, to_state, version, root_id, parent_id, loop, **kwargs):
        heard.append(("state", node_id, to_state))

    pre_service_execute.connect(on_execute)
    pre_service_schedule.connect(on_schedule)
    post_set_state.connect(on_state)
    try:
        start = EmptyStartEvent()
        act = ServiceActivity(component_code="docs_guide_callback")
        act.component.inputs.who = Var(type=Var.PLAIN, value="bamboo")
        start.extend(act).extend(EmptyEndEvent())
        pipeline = build_tree(start)
        api.run_pipeline(runtime=runtime, pipeline=pipeline, root_pipeline_data={"operator": "admin"})
        version = wait_node(runtime, act.id, "RUNNING")["version"]
        wait_until(lambda: api.callback(runtime, act.id, version, {"status": 1}).result, timeout=20)
        wait_finished(runtime, pipeline)
        runtime.wait_idle(10)
    finally:
        pre_service_execute.disconnect(on_execute)
        pre_service_schedule.disconnect(on_schedule)
        post_set_state.disconnect(on_state)

    assert ("execute", "DocsCallbackService", "bamboo", {"operator": "admin"}) in heard
    assert ("schedule", "DocsCallbackService", "bamboo", {"status": 1}) in heard
    assert ("state", act.id, "FINISHED") in heard
    calls = [h[0] for h in heard if h[0] != "state"]
    assert calls == ["execute", "schedule"]
    assert execute_interrupt.name == "execute_interrupt" and schedule_interrupt.name == "schedule_interrupt"


# -- engine_hook.md ----------------------------------------------------------------------------------
# The guide's service hooks: what node_enter, node_finish and the two exception hooks set in the
# outputs is kept; what a read-only hook (pre_skip_node) sets as an operator skips the failed node is not.
@pytest.mark.parametrize(("fail_in", "marks"), [
    (None, ["node_enter", "node_finish"]),
    ("execute", ["node_enter", "node_execute_exception"]),
    ("schedule", ["node_enter", "node_schedule_exception"]),
])
def test_the_hook_guides_custom_service(runtime, fail_in, marks):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="docs_guide_hook")
    act.component.inputs.fail_in = Var(type=Var.PLAIN, value=fail_in)
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)

    api.run_pipeline(runtime=runtime, pipeline=pipeline)

    wait_node(runtime, act.id, "FAILED" if fail_in else "FINISHED")
    outputs = api.get_execution_data_outputs(runtime, act.id).data
    assert outputs["marks"] == marks
    if fail_in is None:
        return
    assert f"{fail_in} failed as the test asked" in outputs["ex_data"] and outputs["_result"] is False
    if fail_in == "schedule":
        assert outputs["schedule_exception_payload"] is None  # a polling node has no payload
    assert api.skip_node(runtime=runtime, node_id=act.id).result
    wait_finished(runtime, pipeline)
    assert "pre_skip_node" not in api.get_execution_data_outputs(runtime, act.id).data["marks"]


# -- engine_hook_signals.md ---------------------------------------------------------------------------
# The guide's event types, each with the keys of its payload. Where the guide and bamboo's code
# disagree, culm sends what the code sends (shared spec, bamboo-features 8.2): pause/revoke/resume
# carry ``pipeline_id``, node_enter and the two node failures carry no ``ex_data`` (the node's
# outputs hold it), and pipeline_finish carries ``pipeline_id``.
HOOK_GUIDE_EVENTS = {
    "pre_prepare_run_pipeline": {"pipeline", "root_pipeline_data", "root_pipeline_context", "subprocess_context"},
    "post_prepare_run_pipeline": {"pipeline", "root_pipeline_data", "root_pipeline_context", "subprocess_context"},
    "pre_pause_pipeline": {"pipeline_id"}, "post_pause_pipeline": {"pipeline_id"},
    "pre_revoke_pipeline": {"pipeline_id"}, "post_revoke_pipeline": {"pipeline_id"},
    "pre_resume_pipeline": {"pipeline_id"}, "post_resume_pipeline": {"pipeline_id"},
    "pre_resume_node": {"node_id"}, "post_resume_node": {"node_id"},
    "pre_pause_node": {"node_id"}, "post_pause_node": {"node_id"},
    "pre_retry_node": {"node_id", "data"}, "post_retry_node": {"node_id", "data"},
    "pre_skip_node": {"node_id"}, "post_skip_node": {"node_id"},
    "pre_skip_exclusive_gateway": {"node_id", "flow_id"}, "post_skip_exclusive_gateway": {"node_id", "flow_id"},
    "pre_skip_conditional_parallel_gateway": {"node_id", "flow_ids", "converge_gateway_id"},
    "post_skip_conditional_parallel_gateway": {"node_id", "flow_ids", "converge_gateway_id"},
    "pre_forced_fail_activity": {"node_id", "ex_data"},
    "post_forced_fail_activity": {"node_id", "ex_data", "old_version", "new_version"},
    "pre_callback": {"node_id", "version", "data"}, "post_callback": {"node_id", "version", "data"},
    "pre_retry_subprocess": {"node_id"}, "post_retry_subprocess": {"node_id"},
    "node_execute_fail": {"root_pipeline_id", "node_id"}, "node_schedule_fail": {"root_pipeline_id", "node_id"},
    "node_enter": {"root_pipeline_id", "node_id"}, "node_finish": {"root_pipeline_id", "node_id"},
    "pipeline_finish": {"pipeline_id"},
}


@EMBEDDED_ONLY
def test_every_event_type_of_the_hook_signals_guide_reaches_its_receiver(runtime):
    from culm.signals import pipeline_event  # bamboo: from pipeline.eri.signals import pipeline_event

    heard = []

    def event_dispatcher(sender, event, **kwargs):  # the guide's receiver
        heard.append((event.event_type, event.data))

    pipeline_event.connect(receiver=event_dispatcher)
    try:
        # One pipeline for the node commands, run to its end: a failing execute retried, a callback
        # wait paused around, force-failed, skipped; a node paused before it is reached and called
        # back; a schedule that fails, skipped.
        start = EmptyStartEvent()
        bad = ServiceActivity(component_code="fac_cal_comp")
        bad.component.inputs.n = Var(type=Var.PLAIN, value="not an int")
        waiting = ServiceActivity(component_code="docs_guide_callback")
        answered = ServiceActivity(component_code="docs_guide_callback")
        polled = ServiceActivity(component_code="interrupt_raise_test")
        polled.component.inputs.schedule_raise = Var(type=Var.PLAIN, value=True)
        start.extend(bad).extend(waiting).extend(answered).extend(polled).extend(EmptyEndEvent())
        pipeline = build_tree(start)
        api.run_pipeline(runtime=runtime, pipeline=pipeline)
        wait_node(runtime, bad.id, "FAILED")
        assert api.pause_node_appoint(runtime=runtime, node_id=answered.id).result
        assert api.resume_node_appoint(runtime=runtime, node_id=answered.id).result
        assert api.retry_node(runtime=runtime, node_id=bad.id, data={"n": 3}).result
        wait_node(runtime, waiting.id, "RUNNING")
        assert api.pause_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result
        assert api.resume_pipeline(runtime=runtime, pipeline_id=pipeline["id"]).result
        assert api.forced_fail_activity(runtime=runtime, node_id=waiting.id, ex_data="by me").result
        wait_node(runtime, waiting.id, "FAILED")
        assert api.skip_node(runtime=runtime, node_id=waiting.id).result
        version = wait_node(runtime, answered.id, "RUNNING")["version"]
        wait_until(lambda: api.callback(runtime, answered.id, version, {"status": 1}).result, timeout=20)
        wait_node(runtime, polled.id, "FAILED")
        assert api.skip_node(runtime=runtime, node_id=polled.id).result
        wait_finished(runtime, pipeline)

        # One for the gateway skips and the subprocess retry, then revoked.
        start = EmptyStartEvent()
        eg = ExclusiveGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
        a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
        cpg = ConditionalParallelGateway(conditions={0: "${x} == 1", 1: "${x} == 2"})
        c, d = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
        cg = ConvergeGateway()
        sub_start = EmptyStartEvent()
        sub_start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
        sub = SubProcess(start=sub_start, params={"${y}": Var(type=Var.LAZY, custom_type="raise_variable", value="")})
        start.extend(eg).connect(a, b).to(eg).converge(cpg).connect(c, d).to(cpg).converge(cg).extend(sub).extend(
            EmptyEndEvent())
        gateways = build_tree(start, data=Data(inputs={"${x}": Var(type=Var.PLAIN, value=3)}))
        api.run_pipeline(runtime=runtime, pipeline=gateways)
        wait_node(runtime, eg.id, "FAILED")
        flow = next(f for f, v in gateways["flows"].items() if v["source"] == eg.id and v["target"] == b.id)
        assert api.skip_exclusive_gateway(runtime=runtime, node_id=eg.id, flow_id=flow).result
        wait_node(runtime, cpg.id, "FAILED")
        flows = [f for f, v in gateways["flows"].items() if v["source"] == cpg.id]
        assert api.skip_conditional_parallel_gateway(runtime=runtime, node_id=cpg.id, flow_ids=flows,
                                                     converge_gateway_id=cg.id).result
        wait_node(runtime, sub.id, "FAILED")
        assert api.retry_subprocess(runtime=runtime, node_id=sub.id).result
        wait_node(runtime, sub.id, "FAILED")
        assert api.revoke_pipeline(runtime=runtime, pipeline_id=gateways["id"]).result
        runtime.wait_idle(10)
    finally:
        pipeline_event.disconnect(event_dispatcher)

    payloads = {}
    for event_type, data in heard:
        payloads.setdefault(event_type, []).append(data)
    assert set(HOOK_GUIDE_EVENTS) <= set(payloads), sorted(set(HOOK_GUIDE_EVENTS) - set(payloads))
    for event_type, keys in HOOK_GUIDE_EVENTS.items():
        assert all(set(data) == keys for data in payloads[event_type]), (event_type, payloads[event_type])
    assert {"node_id": bad.id, "data": {"n": 3}} in payloads["post_retry_node"]
    assert {"node_id": answered.id, "version": version, "data": {"status": 1}} in payloads["post_callback"]
    assert {"root_pipeline_id": pipeline["id"], "node_id": bad.id} in payloads["node_execute_fail"]
    assert {"root_pipeline_id": pipeline["id"], "node_id": polled.id} in payloads["node_schedule_fail"]
    assert {"node_id": eg.id, "flow_id": flow} in payloads["post_skip_exclusive_gateway"]
    assert {"node_id": sub.id} in payloads["post_retry_subprocess"]
    assert payloads["pipeline_finish"] == [{"pipeline_id": pipeline["id"]}]
    assert payloads["post_revoke_pipeline"] == [{"pipeline_id": gateways["id"]}]


# -- start_the_pipeline_at_the_specified_location.md -------------------------------------------------
def _start_position_tree():
    """start -> fac -> exclusive gateway (-> a | -> b) -> converge -> parallel (c, d) -> converge ->
    subprocess -> end, under fresh ids; fac's output feeds ``${fac}``, which the gateway reads."""
    start = EmptyStartEvent()
    fac = ServiceActivity(component_code="fac_cal_comp")
    fac.component.inputs.n = Var(type=Var.PLAIN, value=3)
    eg = ExclusiveGateway(conditions={0: "${fac} == 6", 1: "${fac} != 6"})
    a, b = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    eg_join = ConvergeGateway()
    pg, pg_join = ParallelGateway(), ConvergeGateway()
    c, d = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="example_component")
    sub_start = EmptyStartEvent()
    sub_start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    end = EmptyEndEvent()
    start.extend(fac).extend(eg).connect(a, b).to(eg).converge(eg_join).extend(pg).connect(c, d).to(pg).converge(
        pg_join).extend(sub).extend(end)
    data = Data(inputs={"${fac}": NodeOutput(type=Var.SPLICE, source_act=fac.id, source_key="factorial_of_n")})
    nodes = dict(start=start, fac=fac, eg=eg, a=a, b=b, eg_join=eg_join, c=c, pg_join=pg_join, d=d, sub=sub, end=end)
    return build_tree(start, data=data), {name: node.id for name, node in nodes.items()}


def test_run_pipeline_from_a_chosen_node_and_the_guides_rules(runtime):
    # The guide's rules: not a node inside a parallel gateway, not a converge gateway, not a
    # subprocess, not an end event. Each is refused (result False, naming the node); nothing runs.
    for name in ("c", "eg_join", "pg_join", "sub", "end"):
        pipeline, ids = _start_position_tree()
        res = api.run_pipeline(runtime=runtime, pipeline=pipeline, start_node_id=ids[name],
                               root_pipeline_context={"${fac}": 6})
        assert res.result is False and ids[name] in res.message, (name, res.message)
        assert not states_of(runtime, pipeline)

    # A node inside an exclusive gateway may start the run; root_pipeline_context supplies what
    # the skipped nodes would have written.
    pipeline, ids = _start_position_tree()
    assert api.run_pipeline(runtime=runtime, pipeline=pipeline, start_node_id=ids["b"],
                            root_pipeline_context={"${fac}": 6}).result is True
    ran = executed(wait_finished(runtime, pipeline), pipeline)
    assert {ids[n] for n in ("b", "c", "d", "sub", "end")} <= ran
    assert not {ids[n] for n in ("start", "fac", "eg", "a")} & ran

    # The exclusive gateway itself, on the main line: it reads the ${fac} the run was given.
    pipeline, ids = _start_position_tree()
    assert api.run_pipeline(runtime=runtime, pipeline=pipeline, start_node_id=ids["eg"],
                            root_pipeline_context={"${fac}": 6}).result is True
    ran = executed(wait_finished(runtime, pipeline), pipeline)
    assert ids["a"] in ran and ids["b"] not in ran and ids["fac"] not in ran


# -- node_timeout_introduction.md (contrib node timeout) -----------------------------------------------
def test_node_timeout_guide_steps_without_a_scanner(runtime):
    # bamboo: from pipeline.contrib.node_timeout.api import apply_node_timout_configs, batch_create_node_timeout_config
    from culm.contrib.node_timeout.api import apply_node_timout_configs, batch_create_node_timeout_config

    start = EmptyStartEvent()
    failed = ServiceActivity(component_code="docs_guide_callback")  # never called back
    skipped = ServiceActivity(component_code="docs_guide_callback")
    start.extend(failed).extend(skipped).extend(EmptyEndEvent())
    pipeline_tree = build_tree(start)

    # 1. apply the configs to the tree; 2. record them; 3. run; 4. look at what the timeouts did.
    configs = {failed.id: {"enable": True, "action": "forced_fail", "seconds": 1},
               skipped.id: {"enable": True, "action": "forced_fail_and_skip", "seconds": 1}}
    new_pipeline_tree = apply_node_timout_configs(pipeline_tree, configs)
    created = batch_create_node_timeout_config(new_pipeline_tree["id"], new_pipeline_tree)
    assert created["result"] is True and {c.node_id for c in created["data"]} == {failed.id, skipped.id}
    assert api.run_pipeline(runtime=runtime, pipeline=new_pipeline_tree).result is True

    wait_node(runtime, failed.id, "FAILED")
    outputs = api.get_execution_data_outputs(runtime, failed.id).data
    assert "1" in outputs["ex_data"] and outputs["_timed_out"] is True
    assert api.skip_node(runtime=runtime, node_id=failed.id).result is True
    states = wait_finished(runtime, new_pipeline_tree)  # the second node timed out and was skipped
    entry = states[new_pipeline_tree["id"]]["children"][skipped.id]
    assert entry["state"] == "FINISHED" and entry["skip"] is True
    assert api.get_execution_data_outputs(runtime, skipped.id).data["_timed_out"] is True


# -- the guides' habit: a new runtime object wherever one is needed ---------------------------------
def test_runtimes_created_inline_share_one_runner(tmp_path, monkeypatch):
    """The guides write ``api.run_pipeline(runtime=BambooDjangoRuntime(), ...)`` and then poll with
    ``api.get_pipeline_states(BambooDjangoRuntime(), ...)``: each object is dropped at once. They
    must neither start workers of their own nor let a dropped one give up the runner lock while its
    threads go on (two runners on one file)."""
    import gc
    import threading

    from culm import runtime as runtime_module

    db = tmp_path / "inline.db"
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite:///{db}")
    start = EmptyStartEvent()
    acts = [ServiceActivity(component_code="pipe_example_component") for _ in range(5)]
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(EmptyEndEvent())
    pipeline = build_tree(start)
    try:
        assert api.run_pipeline(runtime=Runtime(), pipeline=pipeline).result is True
        gc.collect()
        threads = threading.active_count()
        for _ in range(30):
            api.get_pipeline_states(Runtime(), pipeline["id"])
        gc.collect()
        assert threading.active_count() <= threads
        assert Runtime().engine is Runtime().engine
        wait_until(lambda: states_of(Runtime(), pipeline)[pipeline["id"]]["state"] == "FINISHED", timeout=20)
    finally:
        core = runtime_module._SHARED.pop((str(db.resolve()), None), None)  # the process would end here
        if core is not None:
            core.close()


# -- update_node_output.md (contrib "mock") ------------------------------------------------------------
def test_update_node_outputs_before_skipping_a_failed_node(runtime):
    failing, reader = ServiceActivity(component_code="fac_cal_comp"), ServiceActivity(component_code="debug_node")
    failing.component.inputs.n = Var(type=Var.PLAIN, value="no")
    reader.component.inputs.code = Var(type=Var.SPLICE, value="${status_code}")
    start = EmptyStartEvent()
    start.extend(failing).extend(reader).extend(EmptyEndEvent())
    pipeline = build_tree(start, data=Data(inputs={"${status_code}": Var(type=Var.PLAIN, value=200)}))
    api.run_pipeline(runtime=runtime, pipeline=pipeline)
    wait_node(runtime, failing.id, "FAILED")

    # As bamboo's update_pipeline_context: every key goes into the outputs (a ${key} without its
    # braces, a bare key as it is); only the root context's existing ${keys} are overwritten, and
    # ``data`` names them, so a caller sees which keys the nodes after it will read.
    res = api.update_node_outputs(runtime, pipeline["id"], failing.id,
                                  {"${status_code}": 500, "${absent}": 1, "raw": 7})
    assert res.result is True and res.data == ["${status_code}"]
    outputs = api.get_execution_data_outputs(runtime, failing.id).data
    assert outputs["status_code"] == 500 and outputs["absent"] == 1 and outputs["raw"] == 7 and "ex_data" in outputs
    context = {v["key"] for v in api.get_pipeline_debug_info(runtime, pipeline["id"]).data["context_values"]}
    assert "${absent}" not in context and "raw" not in context and "${raw}" not in context
    for bad, fragment in ((("e" + "0" * 32, failing.id), "not"), ((pipeline["id"], reader.id), "has no state")):
        refused = api.update_node_outputs(runtime, *bad, {"${status_code}": 1})
        assert refused.result is False and fragment in refused.message
    refused = api.update_node_outputs(runtime, pipeline["id"], failing.id, {"${_system}": {}})
    assert refused.result is False and "${_system}" in refused.message

    assert api.skip_node(runtime, failing.id).result is True
    wait_finished(runtime, pipeline)
    assert api.get_execution_data_inputs(runtime, reader.id).data["code"] == 500
    late = api.update_node_outputs(runtime, pipeline["id"], failing.id, {"${status_code}": 1})
    assert late.result is False and "FINISHED" in late.message
