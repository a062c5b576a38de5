"""Operator commands: pause/resume, breakpoints, retry, skip, gateway skips, forced fail, revoke."""

from __future__ import annotations

import components
import pytest
from engine_fixtures import (
    chain,
    children,
    finish,
    inputs,
    node_state,
    outputs,
    refused,
    run,
    wait_idle,
    wait_state,
)
from support import wait_until

from culm import api
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    NodeOutput,
    ParallelGateway,
    Params,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(60)


def act(code="example_component", **plain):
    a = ServiceActivity(component_code=code)
    for key, value in plain.items():
        setattr(a.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return a


def line(*nodes, data=None):
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return build_tree(start, data=data), start


# -- pause / resume pipeline ------------------------------------------------------------------
def test_pause_and_resume_pipeline(runtime):
    gate_act, after = act("t_gate", gate="pause-pipe"), act()
    tree, _ = line(gate_act, after)
    run(runtime, tree)
    wait_state(runtime, gate_act.id, "RUNNING")
    assert api.pause_pipeline(runtime, tree["id"]).result
    assert node_state(runtime, tree["id"])["state"] == "SUSPENDED"
    components.gate("pause-pipe").set()
    # the running activity finishes, but the process parks before the next node
    wait_state(runtime, gate_act.id, "FINISHED")
    wait_idle(runtime)
    assert after.id not in children(runtime, tree["id"])
    refused(api.pause_pipeline(runtime, tree["id"]), f"pipeline {tree['id']}: it is already paused (its state is SUSPENDED)")
    assert api.resume_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, after.id)["state"] == "FINISHED"


def test_resume_running_pipeline_refused(runtime):
    tree, _ = line(act("t_callback"))
    run(runtime, tree)
    refused(api.resume_pipeline(runtime, tree["id"]), f"pipeline {tree['id']}: it is not paused (its state is RUNNING)")
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_pause_and_resume_subprocess(runtime):
    inner_gate, inner_after = act("t_gate", gate="pause-sub"), act()
    sub_start = EmptyStartEvent()
    sub_start.extend(inner_gate).extend(inner_after).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    after = act()
    tree, _ = line(sub, after)
    run(runtime, tree)
    wait_state(runtime, inner_gate.id, "RUNNING")
    assert api.pause_pipeline(runtime, sub.id).result
    assert node_state(runtime, sub.id)["state"] == "SUSPENDED"
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    components.gate("pause-sub").set()
    wait_state(runtime, inner_gate.id, "FINISHED")
    wait_idle(runtime)
    assert inner_after.id not in children(runtime, tree["id"])
    assert api.resume_pipeline(runtime, sub.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, sub.id)["state"] == "FINISHED"


def test_pause_pipeline_with_parallel_branches(runtime):
    from culm.builder import ParallelGateway

    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    g1, g2 = act("t_gate", gate="pp-1"), act("t_gate", gate="pp-2")
    n1, n2 = act(), act()
    pg.connect(g1, g2)
    g1.extend(n1)
    g2.extend(n2)
    start.extend(pg).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, g1.id, "RUNNING")
    wait_state(runtime, g2.id, "RUNNING")
    assert api.pause_pipeline(runtime, tree["id"]).result
    components.gate("pp-1").set()
    components.gate("pp-2").set()
    wait_state(runtime, g1.id, "FINISHED")
    wait_state(runtime, g2.id, "FINISHED")
    wait_idle(runtime)
    reached = children(runtime, tree["id"])
    assert n1.id not in reached and n2.id not in reached
    assert api.resume_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "FINISHED")


# -- appointment pause ------------------------------------------------------------------------
def test_pause_node_appoint_before_reached_and_resume(runtime):
    first, second = act("t_gate", gate="appoint"), act("t_echo", x=1)
    tree, _ = line(first, second)
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    assert api.pause_node_appoint(runtime, second.id).result
    assert node_state(runtime, second.id)["state"] == "SUSPENDED"
    refused(api.pause_node_appoint(runtime, second.id), f"node {second.id}: it is already paused (its state is SUSPENDED)")
    components.gate("appoint").set()
    wait_state(runtime, first.id, "FINISHED")
    wait_idle(runtime)
    # the process parked before executing the node
    assert api.get_execution_data_outputs(runtime, second.id).data == {}
    st = node_state(runtime, second.id)
    assert st["state"] == "SUSPENDED"
    assert api.resume_node_appoint(runtime, second.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, second.id)["out"] == "1!"


def test_pause_node_appoint_on_unreached_node_then_run(runtime):
    a = act()
    tree, _ = line(act("t_gate", gate="appoint-unreached"), a)
    run(runtime, tree)
    assert api.pause_node_appoint(runtime, a.id).result
    assert api.resume_node_appoint(runtime, a.id).result
    components.gate("appoint-unreached").set()
    wait_state(runtime, tree["id"], "FINISHED")


def test_pause_node_appoint_refusals(runtime):
    sub_start = EmptyStartEvent()
    sub_start.extend(act()).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    running = act("t_callback")
    tree, _ = line(sub, running)
    run(runtime, tree)
    refused(api.pause_node_appoint(runtime, sub.id), sub.id)
    wait_state(runtime, running.id, "RUNNING")
    refused(api.pause_node_appoint(runtime, running.id), running.id, "RUNNING")
    refused(api.resume_node_appoint(runtime, running.id), f"node {running.id}: it is not paused (its state is RUNNING)")
    assert node_state(runtime, running.id)["state"] == "RUNNING"


# -- retry ------------------------------------------------------------------------------------
def test_retry_node_with_same_inputs(runtime):
    a = act("t_fail")
    tree, _ = line(a)
    run(runtime, tree)
    failed = wait_state(runtime, a.id, "FAILED")
    assert api.retry_node(runtime, a.id).result
    again = wait_state(runtime, a.id, "FAILED")
    assert again["retry"] == 1 and again["version"] != failed["version"]
    hist = api.get_node_histories(runtime, a.id).data
    assert len(hist) == 1 and hist[0]["version"] == failed["version"] and hist[0]["retry"] == 0


def test_retry_node_with_new_inputs(runtime, recorder):
    a = act("t_fail", x="first")
    tree, _ = line(a, data=Data(inputs={"${name}": Var(type=Var.PLAIN, value="ctx")}))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    new = {"ok": True, "x": "hi ${name}"}
    assert api.retry_node(runtime, a.id, data=new).result
    wait_state(runtime, tree["id"], "FINISHED")
    got = inputs(runtime, a.id)
    assert got["ok"] is True and got["x"] == "hi ctx"
    assert outputs(runtime, a.id)["done"] is True
    assert node_state(runtime, a.id)["retry"] == 1
    raw = api.get_data(runtime, a.id).data["inputs"]
    assert raw == {"ok": {"need_render": True, "value": True}, "x": {"need_render": True, "value": "hi ${name}"}}
    assert recorder.events_of("pre_retry_node") == [{"node_id": a.id, "data": new}]
    assert recorder.events_of("post_retry_node") == [{"node_id": a.id, "data": new}]


def test_retry_node_escape_render_keys(runtime):
    a = act("t_fail")
    tree, _ = line(a, data=Data(inputs={"${name}": Var(type=Var.PLAIN, value="ctx")}))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    data = {"ok": True, "x": "${name}", "y": "${name}", "_escape_render_keys": ["y"]}
    assert api.retry_node(runtime, a.id, data=data).result
    wait_state(runtime, tree["id"], "FINISHED")
    got = inputs(runtime, a.id)
    assert got["x"] == "ctx" and got["y"] == "${name}"
    assert "_escape_render_keys" not in got
    raw = api.get_data(runtime, a.id).data["inputs"]
    assert raw["x"]["need_render"] is True and raw["y"]["need_render"] is False
    assert "_escape_render_keys" not in raw


def test_retry_node_refuses_data_it_would_lose_or_change(runtime):
    # bamboo stores whatever it is given; culm refuses what would be stored as something else or
    # read by nothing, naming the node and the key, and leaves the node FAILED with its inputs.
    a = act("t_fail", x="first")
    tree, _ = line(a)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    for data, said in (
        ({1: "x", "ok": True}, "key 1 must be a string"),
        ({"ok": True, "y": "${v}", "_escape_render_keys": "y"}, "_escape_render_keys must be a list"),
        ({"ok": True, "_escape_render_keys": ["nope"]}, "_escape_render_keys names 'nope'"),
        ({"ok": True, "_loop": 7}, "key '_loop' is set by the engine"),
        ({"ok": True, "_inner_loop": 7}, "key '_inner_loop' is set by the engine"),
    ):
        refused(api.retry_node(runtime, a.id, data=data), f"retry data for node {a.id}", said)
    failed = node_state(runtime, a.id)
    assert failed["state"] == "FAILED" and failed["retry"] == 0
    assert api.get_data(runtime, a.id).data["inputs"] == {"x": {"need_render": False, "value": "first"}}
    # Keys the tree did not give the node are the component's to read, as in bamboo.
    assert api.retry_node(runtime, a.id, data={"ok": True, "extra": 1, "_escape_render_keys": ["extra"]}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert inputs(runtime, a.id)["extra"] == 1


def test_retry_node_refuses_data_for_a_node_without_inputs(runtime):
    gw = ExclusiveGateway(conditions={0: "1 == 2", 1: "1 == 3"})  # no flow to take: it fails
    left, right = act(), act()
    start = EmptyStartEvent()
    start.extend(gw).connect(left, right).to(gw).converge(ConvergeGateway()).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, gw.id, "FAILED")
    refused(api.retry_node(runtime, gw.id, data={"x": 1}), f"retry data for node {gw.id}",
            "ExclusiveGateway, which has no inputs")
    assert node_state(runtime, gw.id)["retry"] == 0
    assert api.retry_node(runtime, gw.id, data={}).result  # nothing to lose
    wait_until(lambda: node_state(runtime, gw.id)["retry"] == 1 and node_state(runtime, gw.id)["state"] == "FAILED")


def test_retry_refusals(runtime):
    not_retryable = ServiceActivity(component_code="t_fail", retryable=False)
    tree, _ = line(not_retryable)
    run(runtime, tree)
    wait_state(runtime, not_retryable.id, "FAILED")
    refused(api.retry_node(runtime, not_retryable.id), not_retryable.id)
    assert node_state(runtime, not_retryable.id)["retry"] == 0

    running = act("t_callback")
    tree2, _ = line(running)
    run(runtime, tree2)
    wait_state(runtime, running.id, "RUNNING")
    refused(api.retry_node(runtime, running.id), running.id, "RUNNING")
    refused(api.retry_node(runtime, running.id, data="nope"), running.id)


def _subprocess_failing_on_params():
    """A subprocess whose param renders from a lazy variable that raises: (tree, sub, inner)."""
    inner = act("t_echo")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="${p}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="default")}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${bad}")}))
    tree, _ = line(sub, data=Data(inputs={"${bad}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="x")}))
    return tree, sub, inner


def test_retry_subprocess_after_params_failure(runtime):
    tree, sub, inner = _subprocess_failing_on_params()
    run(runtime, tree)
    failed = wait_state(runtime, sub.id, "FAILED")
    assert "lazy exploded" in outputs(runtime, sub.id)["ex_data"]
    assert api.retry_subprocess(runtime, sub.id).result
    again = wait_state(runtime, sub.id, "FAILED")
    assert again["retry"] == 1 and again["version"] != failed["version"]
    assert len(api.get_node_histories(runtime, sub.id).data) == 1
    refused(api.retry_subprocess(runtime, inner.id), inner.id)


def test_retry_node_retries_a_failed_subprocess_with_new_params(runtime):
    # bamboo's retry_node takes any retryable node; for a SubProcess, data replaces its params.
    tree, sub, inner = _subprocess_failing_on_params()
    run(runtime, tree)
    failed = wait_state(runtime, sub.id, "FAILED")
    refused(api.retry_node(runtime, sub.id, data="nope"), sub.id)
    refused(api.retry_node(runtime, sub.id, data={"p": "given"}), f"retry data for node {sub.id}",
            "key 'p' is neither a param of this SubProcess (${p}) nor a variable its pipeline has or refers to")
    assert api.retry_node(runtime, sub.id, data={"${p}": "given"}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, inner.id)["out"] == "given!"
    done = node_state(runtime, sub.id)
    assert done["state"] == "FINISHED" and done["retry"] == 1 and done["version"] != failed["version"]
    assert len(api.get_node_histories(runtime, sub.id).data) == 1


def test_retry_subprocess_then_finishes(runtime):
    inner = act("t_echo")
    inner.component.inputs.x = Var(type=Var.SPLICE, value="${p}")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start, data=Data(inputs={"${p}": Var(type=Var.PLAIN, value="default")}),
                     params=Params({"${p}": Var(type=Var.SPLICE, value="${val}")}))
    tree, _ = line(sub, data=Data(inputs={"${val}": Var(type=Var.LAZY, custom_type="t_lazy_raise", value="x")}))
    run(runtime, tree)
    wait_state(runtime, sub.id, "FAILED")
    assert api.update_context_values(runtime, tree["id"], {"${val}": "fixed"}).result
    assert api.retry_subprocess(runtime, sub.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, inner.id)["out"] == "fixed!"


# -- skip -------------------------------------------------------------------------------------
def test_skip_node_continues_without_extracting_outputs(runtime):
    a = act("t_fail", x="value")
    after = act("t_echo")
    after.component.inputs.x = Var(type=Var.SPLICE, value="${partial}")
    data = Data(inputs={"${partial}": NodeOutput(source_act=a.id, source_key="partial")})
    tree, _ = line(a, after, data=data)
    run(runtime, tree)
    failed = wait_state(runtime, a.id, "FAILED")
    assert api.skip_node(runtime, a.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    st = node_state(runtime, a.id)
    assert st["state"] == "FINISHED" and st["skip"] is True and st["version"] != failed["version"]
    hist = api.get_node_histories(runtime, a.id).data
    assert len(hist) == 1 and hist[0]["skip"] is False
    # outputs of a failed node are still mapped (spec 4.4 step 9); skip itself extracts nothing more
    assert outputs(runtime, after.id)["out"] == "value!"


def test_skip_refusals(runtime):
    not_skippable = ServiceActivity(component_code="t_fail", skippable=False)
    tree, _ = line(not_skippable)
    run(runtime, tree)
    wait_state(runtime, not_skippable.id, "FAILED")
    refused(api.skip_node(runtime, not_skippable.id), not_skippable.id)
    assert node_state(runtime, not_skippable.id)["state"] == "FAILED"

    running = act("t_callback")
    tree2, _ = line(running)
    run(runtime, tree2)
    wait_state(runtime, running.id, "RUNNING")
    refused(api.skip_node(runtime, running.id), running.id, "RUNNING")
    assert node_state(runtime, running.id)["state"] == "RUNNING"


def test_skip_exclusive_gateway(runtime, recorder):
    start, eg, cg, end = EmptyStartEvent(), ExclusiveGateway(conditions={0: "1 == 2", 1: "1 == 3"}), \
        ConvergeGateway(), EmptyEndEvent()
    a, b = act(), act()
    start.extend(eg).connect(a, b).to(eg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, eg.id, "FAILED")
    flow_b = tree["gateways"][eg.id]["outgoing"][1]
    refused(api.skip_exclusive_gateway(runtime, eg.id, "f-not-a-flow"), eg.id)
    assert api.skip_exclusive_gateway(runtime, eg.id, flow_b).result
    wait_state(runtime, tree["id"], "FINISHED")
    reached = children(runtime, tree["id"])
    assert b.id in reached and a.id not in reached
    st = node_state(runtime, eg.id)
    assert st["skip"] is True and st["state"] == "FINISHED"
    assert recorder.events_of("pre_skip_exclusive_gateway") == [{"node_id": eg.id, "flow_id": flow_b}]
    refused(api.skip_exclusive_gateway(runtime, a.id, flow_b), a.id)


def test_skip_conditional_parallel_gateway(runtime, recorder):
    start, cpg, cg, end = EmptyStartEvent(), ConditionalParallelGateway(conditions={0: "1 == 2", 1: "1 == 3", 2: "1 == 4"}), \
        ConvergeGateway(), EmptyEndEvent()
    a, b, c = act(), act(), act()
    start.extend(cpg).connect(a, b, c).to(cpg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, cpg.id, "FAILED")
    flows = tree["gateways"][cpg.id]["outgoing"]
    assert api.skip_conditional_parallel_gateway(runtime, cpg.id, [flows[0], flows[2]], cg.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    reached = children(runtime, tree["id"])
    assert a.id in reached and c.id in reached and b.id not in reached
    assert node_state(runtime, cpg.id)["skip"] is True
    assert recorder.events_of("post_skip_conditional_parallel_gateway") == [
        {"node_id": cpg.id, "flow_ids": [flows[0], flows[2]], "converge_gateway_id": cg.id}
    ]


# -- forced fail ------------------------------------------------------------------------------
def test_forced_fail_running_activity_discards_late_result(runtime, recorder):
    g, after = act("t_gate", gate="forced"), act()
    data = Data(inputs={"${late}": NodeOutput(source_act=g.id, source_key="late")})
    tree, _ = line(g, after, data=data)
    run(runtime, tree)
    running = wait_state(runtime, g.id, "RUNNING")
    assert api.forced_fail_activity(runtime, g.id, "stopped by test").result
    failed = node_state(runtime, g.id)
    assert failed["state"] == "FAILED" and failed["version"] != running["version"]
    out = outputs(runtime, g.id)
    assert out["ex_data"] == "stopped by test" and out["_forced_failed"] is True
    post = recorder.events_of("post_forced_fail_activity")
    assert post == [{"node_id": g.id, "ex_data": "stopped by test", "old_version": running["version"],
                     "new_version": failed["version"]}]
    # the component now returns: its result must be discarded
    components.gate("forced").set()
    wait_idle(runtime)
    st = node_state(runtime, g.id)
    assert st["state"] == "FAILED" and st["version"] == failed["version"]
    assert "late" not in outputs(runtime, g.id)
    assert after.id not in children(runtime, tree["id"])
    # and the node can be retried or skipped as usual
    assert api.skip_node(runtime, g.id).result
    wait_state(runtime, tree["id"], "FINISHED")


def test_forced_fail_polling_activity_stops_polls(runtime):
    p = act("t_poll_gate", gate="forced-poll")
    tree, _ = line(p)
    run(runtime, tree)
    wait_state(runtime, p.id, "RUNNING")
    wait_until(lambda: "count" in outputs(runtime, p.id), what="execute to finish")
    assert api.forced_fail_activity(runtime, p.id, "enough").result
    components.gate("forced-poll").set()
    wait_idle(runtime)
    st = node_state(runtime, p.id)
    assert st["state"] == "FAILED"
    assert outputs(runtime, p.id)["ex_data"] == "enough"
    assert "late" not in outputs(runtime, p.id)


def test_forced_fail_refusals(runtime):
    a = act("t_fail")
    tree, start = line(a)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    refused(api.forced_fail_activity(runtime, a.id, "x"), a.id, "FAILED")
    refused(api.forced_fail_activity(runtime, start.id, "x"), start.id)
    assert node_state(runtime, a.id)["state"] == "FAILED"
    assert outputs(runtime, a.id)["ex_data"] == "t_fail said no"


# -- revoke -----------------------------------------------------------------------------------
def test_revoke_pipeline_stops_flow(runtime, recorder):
    g, after = act("t_gate", gate="revoke"), act()
    tree, _ = line(g, after)
    run(runtime, tree)
    wait_state(runtime, g.id, "RUNNING")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    st = node_state(runtime, tree["id"])
    assert st["state"] == "REVOKED" and st["archived_time"] is not None
    components.gate("revoke").set()
    # The execute under way when the revoke came ends and its result is recorded (as in bamboo);
    # its process then dies instead of entering the next node.
    wait_state(runtime, g.id, "FINISHED")
    assert outputs(runtime, g.id)["late"] == "result after release"
    wait_idle(runtime)
    assert after.id not in children(runtime, tree["id"])
    assert node_state(runtime, tree["id"])["state"] == "REVOKED"
    refused(api.revoke_pipeline(runtime, tree["id"]), tree["id"], "REVOKED")
    refused(api.pause_pipeline(runtime, tree["id"]), tree["id"], "REVOKED")
    refused(api.resume_pipeline(runtime, tree["id"]), tree["id"], "REVOKED")
    assert recorder.events_of("post_revoke_pipeline") == [{"pipeline_id": tree["id"]}]


def _all_ended(runtime, root_id):
    snap = read_snapshot(runtime.engine, root_id)
    return all(p.dead for p in snap.processes) and not snap.tasks


def test_revoke_while_a_poll_runs_then_the_poll_fails(runtime):
    p, after = act("t_poll_gate", gate="revoke-poll-fail", fail=True), act()
    tree, _ = line(p, after)
    run(runtime, tree)
    wait_until(lambda: "count" in outputs(runtime, p.id), what="execute to finish")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    # The poll goes on (its call is held at the gate), and its wait reason says the pipeline is revoked.
    reason = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["children"][p.id]["wait_reason"]
    assert reason["kind"] == "poll" and reason["revoked"] and "revoked" in reason["text"]
    components.gate("revoke-poll-fail").set()
    wait_state(runtime, p.id, "FAILED")
    assert outputs(runtime, p.id)["ex_data"] == "poll failed after the gate"
    wait_idle(runtime)
    assert node_state(runtime, tree["id"])["state"] == "REVOKED"
    assert after.id not in children(runtime, tree["id"])
    # nobody may retry or skip it: its process ended
    wait_until(lambda: _all_ended(runtime, tree["id"]), what="every process to end")
    refused(api.retry_node(runtime, p.id), p.id, "revoked")


def test_revoke_while_an_execute_runs_then_it_polls_or_waits(runtime):
    # An execute under way ends; if it asks for polls they go on to the end (bamboo would poll
    # too); if it asks for a callback the process ends, as callbacks to a revoked pipeline are refused.
    polls, cb = act("t_gate_poll", gate="revoke-exec"), act("t_gate_callback", gate="revoke-exec")
    after_poll, after_cb = act(), act()
    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    start.extend(pg).connect(polls, cb)
    polls.extend(after_poll)
    cb.extend(after_cb)
    pg.converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, polls.id, "RUNNING")
    st = wait_state(runtime, cb.id, "RUNNING")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    components.gate("revoke-exec").set()
    wait_state(runtime, polls.id, "FINISHED")
    assert outputs(runtime, polls.id)["count"] == 2
    wait_until(lambda: outputs(runtime, cb.id).get("executed"), what="the callback node's execute")
    wait_until(lambda: _all_ended(runtime, tree["id"]), what="every process to end")
    refused(api.callback(runtime, cb.id, st["version"], {}), cb.id, "revoked")
    assert node_state(runtime, cb.id)["state"] == "RUNNING"
    assert not {after_poll.id, after_cb.id, cg.id, end.id} & set(children(runtime, tree["id"]))


def test_revoke_a_subprocess_while_a_poll_inside_runs(runtime):
    # The same rule inside a revoked subprocess: the poll ends, nothing after it in the subprocess runs.
    p, inner_after, after = act("t_poll_gate", gate="revoke-sub-poll"), act(), act()
    sub = SubProcess(start=chain(p, inner_after))
    tree, _ = line(sub, after)
    run(runtime, tree)
    wait_until(lambda: "count" in outputs(runtime, p.id), what="execute to finish")
    assert api.revoke_pipeline(runtime, sub.id).result
    entry = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]
    reason = entry["children"][p.id]["wait_reason"]
    assert reason["kind"] == "poll" and reason["revoked"] and sub.id in reason["text"]
    components.gate("revoke-sub-poll").set()
    wait_state(runtime, p.id, "FINISHED")
    wait_idle(runtime)
    assert not {inner_after.id, after.id} & set(children(runtime, tree["id"]))
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"  # held by the revoked subprocess
    assert api.revoke_pipeline(runtime, tree["id"]).result
    wait_until(lambda: _all_ended(runtime, tree["id"]), what="every process to end")


def test_revoke_suspended_pipeline_and_failed_node(runtime):
    a = act("t_fail")
    tree, _ = line(a)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    assert api.pause_pipeline(runtime, tree["id"]).result
    assert api.revoke_pipeline(runtime, tree["id"]).result
    assert node_state(runtime, tree["id"])["state"] == "REVOKED"


def test_revoke_finished_pipeline_refused(runtime):
    tree, _ = line(act())
    finish(runtime, tree)
    refused(api.revoke_pipeline(runtime, tree["id"]), tree["id"], "FINISHED")
    assert node_state(runtime, tree["id"])["state"] == "FINISHED"


# -- combinations -----------------------------------------------------------------------------
def test_retry_while_pipeline_paused_parks_until_resume(runtime):
    a = act("t_fail")
    tree, _ = line(a)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    assert api.pause_pipeline(runtime, tree["id"]).result
    assert api.retry_node(runtime, a.id, data={"ok": True}).result
    wait_idle(runtime)
    assert node_state(runtime, a.id)["state"] == "READY"
    assert api.resume_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert node_state(runtime, a.id)["state"] == "FINISHED"


def test_resume_racing_parked_retries_wakes_every_branch(runtime):
    """Retries handled by workers while a resume commits must not stay parked (a lost wake-up)."""
    from culm.builder import ParallelGateway

    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    branches = [act("t_fail") for _ in range(6)]
    pg.connect(*branches)
    start.extend(pg).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    for a in branches:
        wait_state(runtime, a.id, "FAILED")
    for _round in range(3):
        assert api.pause_pipeline(runtime, tree["id"]).result
        for a in branches:
            assert api.retry_node(runtime, a.id, data={"ok": False}).result
        assert api.resume_pipeline(runtime, tree["id"]).result  # no wait: races the workers
        for a in branches:
            wait_state(runtime, a.id, "FAILED")
    assert api.pause_pipeline(runtime, tree["id"]).result
    for a in branches:
        assert api.retry_node(runtime, a.id, data={"ok": True}).result
    assert api.resume_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "FINISHED", timeout=20)
    assert all(node_state(runtime, a.id)["state"] == "FINISHED" for a in branches)


def test_forced_fail_waiting_callback_then_stale_callback_refused(runtime):
    cb = act("t_multi_callback")
    tree, _ = line(cb)
    run(runtime, tree)
    st = wait_state(runtime, cb.id, "RUNNING")
    wait_until(lambda: "received" in outputs(runtime, cb.id), what="execute")
    assert api.forced_fail_activity(runtime, cb.id, "cut").result
    refused(api.callback(runtime, cb.id, st["version"], {"n": 1}), cb.id)
    assert node_state(runtime, cb.id)["state"] == "FAILED"
    assert api.retry_node(runtime, cb.id).result
    st2 = wait_until(lambda: (s := node_state(runtime, cb.id)) and s["state"] == "RUNNING" and s,
                     what="retry")
    wait_until(lambda: "received" in outputs(runtime, cb.id) and "ex_data" not in outputs(runtime, cb.id),
               what="execute after retry")
    assert api.callback(runtime, cb.id, st2["version"], {"n": 9, "done": True}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, cb.id)["received"] == [9]


def test_many_quick_multiple_callbacks_all_processed(runtime):
    cb = act("t_multi_callback")
    tree, _ = line(cb)
    run(runtime, tree)
    st = wait_state(runtime, cb.id, "RUNNING")
    wait_until(lambda: "received" in outputs(runtime, cb.id), what="execute")
    for n in range(4):
        assert api.callback(runtime, cb.id, st["version"], {"n": n}).result
    wait_until(lambda: sorted(outputs(runtime, cb.id)["received"]) == [0, 1, 2, 3], timeout=20,
               what="four callbacks")
    assert api.callback(runtime, cb.id, st["version"], {"n": 4, "done": True}).result
    wait_state(runtime, tree["id"], "FINISHED", timeout=20)
    assert sorted(outputs(runtime, cb.id)["received"]) == [0, 1, 2, 3, 4]


def test_pause_node_appoint_inside_parallel_branch(runtime):
    from culm.builder import ParallelGateway

    start, pg, cg, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    first, a, b = act("t_gate", gate="appoint-parallel"), act(), act()
    start.extend(first).extend(pg).connect(a, b).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    assert not api.pause_node_appoint(runtime, b.id).result  # not run yet: unknown to the engine
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    assert api.pause_node_appoint(runtime, b.id).result
    components.gate("appoint-parallel").set()
    wait_state(runtime, a.id, "FINISHED")
    wait_idle(runtime)
    assert node_state(runtime, b.id)["state"] == "SUSPENDED"
    assert cg.id not in children(runtime, tree["id"])
    assert api.resume_node_appoint(runtime, b.id).result
    wait_state(runtime, tree["id"], "FINISHED")


def test_retry_data_replaces_inputs_for_later_reentries(runtime):
    from culm.builder import ExclusiveGateway

    start, end = EmptyStartEvent(), EmptyEndEvent()
    body = act("t_fail", x="orig")
    eg = ExclusiveGateway(conditions={0: "${n} < 2", 1: "${n} >= 2"})
    start.extend(body).extend(eg).connect(body, end)
    tree = build_tree(start, data=Data(inputs={"${n}": NodeOutput(source_act=body.id, source_key="_loop")}))
    run(runtime, tree, cycle_tolerate=True)
    wait_state(runtime, body.id, "FAILED")
    assert api.retry_node(runtime, body.id, data={"ok": True, "x": "new"}).result
    wait_state(runtime, tree["id"], "FINISHED")
    st = node_state(runtime, body.id)
    assert st["loop"] == 2 and st["retry"] == 0  # retry counter restarts on re-entry
    assert inputs(runtime, body.id)["x"] == "new"
    hist = api.get_node_histories(runtime, body.id).data
    assert [h["inputs"].get("x") for h in hist] == ["orig", "new"]


def test_commands_after_revoke_refused(runtime):
    a = act("t_fail")
    tree, _ = line(a)
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    refused(api.retry_node(runtime, a.id), a.id)
    refused(api.skip_node(runtime, a.id), a.id)
    wait_idle(runtime)
    assert node_state(runtime, a.id)["state"] == "FAILED"
    assert node_state(runtime, a.id)["retry"] == 0
