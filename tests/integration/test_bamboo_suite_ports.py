"""bamboo-pipeline's integration cases not covered by the other ``test_bamboo_suite*.py`` files,
written as a port against ``api-contract.md`` would write them: components in the style of bamboo's
own test components (``bamboo_atom_components``), execution data of pipeline ids, the old suite's
conditional parallel gateway skip, the v3 facade on every backend, and receivers written for bamboo.
"""

from __future__ import annotations

import bamboo_atom_components  # noqa: F401 - registers the atom_* components
import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from bamboo_suite_helpers import exec_data, histories, wait_all
from engine_fixtures import EMBEDDED, node_state, refused, run, wait_pipeline, wait_state
from support import wait_until

from culm import api, legacy, signals
from culm.builder import (
    ConditionalParallelGateway,
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ExclusiveGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.components import library
from culm.errors import NotFoundError

pytestmark = pytest.mark.timeout(120)


def line(*acts):
    start, end = EmptyStartEvent(), EmptyEndEvent()
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(end)
    return start, end


def not_reached(runtime, *node_ids):
    """bamboo's assert_not_executed: no state, and polling the node still answers."""
    for node_id in node_ids:
        res = api.get_children_states(runtime, node_id)
        assert res.result and res.data == {}, (node_id, res)


def waiting_alone(runtime, code):
    """Run start -> one ``code`` activity -> end until the activity waits; (activity, tree, version)."""
    act = ServiceActivity(component_code=code)
    start, end = line(act)
    tree = build_tree(start)
    run(runtime, tree)
    return act, tree, wait_state(runtime, act.id, "RUNNING")["version"]


# -- components written as bamboo's -----------------------------------------------------------------
def test_two_component_classes_of_one_name_keep_both_codes():
    assert library.get("atom_counting_node").bound_service is bamboo_atom_components.CountingService
    assert library.get("atom_counting_schedule_node").bound_service is bamboo_atom_components.CountingScheduleService


def test_services_with_their_own_init_count_per_instance(runtime):
    act = ServiceActivity(component_code="atom_counting_node")
    act.component.inputs.key = Var(type=Var.PLAIN, value="val")
    poll = ServiceActivity(component_code="atom_counting_schedule_node")
    start, end = line(act, poll)
    tree = build_tree(start)
    wait_pipeline(runtime, run(runtime, tree))
    wait_all(runtime, tree["id"], [start.id, act.id, poll.id, end.id], "FINISHED")
    assert exec_data(runtime, tree["id"]) == {"inputs": {}, "outputs": {}}
    assert exec_data(runtime, act.id) == {
        "inputs": {"key": "val", "_loop": 1, "_inner_loop": 1},
        "outputs": {"key": "val", "_loop": 1, "_inner_loop": 1, "execute_count": 1, "_result": True},
    }
    assert exec_data(runtime, poll.id) == {
        "inputs": {"_loop": 1, "_inner_loop": 1},
        "outputs": {"_loop": 1, "_inner_loop": 1, "execute_count": 1, "schedule_count": 1, "_result": True},
    }
    assert f"schedule id: {poll.id}" in api.get_node_logs(runtime, poll.id).data


def test_failing_at_first_loop_then_retried_with_can_go(runtime):
    act = ServiceActivity(component_code="atom_counting_node")
    act.component.inputs.can_go = Var(type=Var.PLAIN, value=False)
    start, end = line(act)
    tree = build_tree(start)
    run(runtime, tree)
    failed = wait_state(runtime, act.id, "FAILED")
    assert exec_data(runtime, act.id)["outputs"]["_result"] is False
    res = api.retry_node(runtime, act.id, {"can_go": True})
    assert res.result, res.message
    wait_pipeline(runtime, tree["id"])
    assert node_state(runtime, act.id)["retry"] == 1
    assert node_state(runtime, act.id)["version"] != failed["version"]
    assert exec_data(runtime, act.id)["inputs"] == {"can_go": True, "_loop": 1, "_inner_loop": 1}
    [first] = histories(runtime, act.id)
    assert first["inputs"] == {"can_go": False, "_loop": 1, "_inner_loop": 1}
    assert first["outputs"]["_result"] is False and first["retry"] == 0 and first["version"] == failed["version"]


def test_multi_callback_with_getattr_default_fails_on_bit_0_then_finishes(runtime):
    act, tree, version = waiting_alone(runtime, "atom_multi_callback_node")
    for _ in range(2):
        res = api.callback(runtime, act.id, version, {"bit": 1})
        assert res.result, res.message
    # Polled with get_execution_data_outputs: {} until execute has written (callbacks may come first).
    wait_until(lambda: api.get_execution_data_outputs(runtime, act.id).data.get("_scheduled_times") == 2, 20,
               what="two callbacks handled")
    assert node_state(runtime, act.id)["state"] == "RUNNING"
    res = api.callback(runtime, act.id, version, {"bit": 0})
    assert res.result, res.message
    wait_state(runtime, act.id, "FAILED", 20)
    res = api.retry_node(runtime, act.id)
    assert res.result, res.message
    version = wait_state(runtime, act.id, "RUNNING")["version"]
    for _ in range(3):
        assert api.callback(runtime, act.id, version, {"bit": 1}).result
    wait_pipeline(runtime, tree["id"], timeout=30)
    assert exec_data(runtime, act.id)["outputs"]["_scheduled_times"] == 3


def test_stale_callback_after_a_failed_callback_then_skip(runtime):
    act, tree, version = waiting_alone(runtime, "callback_node")
    assert api.callback(runtime, act.id, version, {"bit": 0}).result
    wait_state(runtime, act.id, "FAILED")
    stale = api.callback(runtime, act.id, version, {"bit": 1})
    assert not stale.result and act.id in stale.message
    assert api.skip_node(runtime, act.id).result
    wait_pipeline(runtime, tree["id"])
    entry = node_state(runtime, act.id)
    assert entry["skip"] is True and entry["state"] == "FINISHED"
    assert exec_data(runtime, act.id)["outputs"]["_result"] is False


# -- execution data of pipeline ids -----------------------------------------------------------------
def test_execution_data_of_the_root_and_of_a_subprocess(runtime):
    sub_act = ServiceActivity(component_code="debug_node")
    sub_act.component.inputs.input_a = Var(type=Var.SPLICE, value="${a}")
    sub_start, sub_end = line(sub_act)
    sub = SubProcess(start=sub_start, data={
        "inputs": {"${a}": {"type": "plain", "value": "", "is_param": True},
                   "${out}": {"type": "splice", "source_act": sub_act.id, "source_key": "input_a"}},
        "outputs": ["${out}"],
    }, params={"${a}": {"type": "plain", "value": "x"}})
    start, end = line(sub)
    tree = build_tree(start)
    wait_pipeline(runtime, run(runtime, tree))
    assert exec_data(runtime, tree["id"]) == {"inputs": {}, "outputs": {}}
    assert exec_data(runtime, sub.id) == {"inputs": {"${a}": "x"}, "outputs": {"${out}": "x", "_loop": 1, "_inner_loop": 1}}
    assert api.get_execution_data_inputs(runtime, tree["id"]).data == {}
    assert api.get_execution_data_outputs(runtime, sub.id).data == {"${out}": "x", "_loop": 1, "_inner_loop": 1}
    assert exec_data(runtime, sub_act.id)["outputs"]["input_a"] == "x"


# -- the old suite's conditional parallel gateway skip -----------------------------------------------
def test_skip_conditional_parallel_gateway_along_one_flow(runtime, recorder):
    start = EmptyStartEvent()
    before = ServiceActivity(component_code="debug_node")
    cpg = ConditionalParallelGateway(conditions={0: "True == False", 1: "True == False"})
    executed_1 = ServiceActivity(component_code="debug_node")
    executed_2 = ServiceActivity(component_code="debug_node")
    not_executed = ServiceActivity(component_code="debug_node")
    converge = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(before).extend(cpg).connect(executed_1, not_executed).to(executed_1).connect(
        executed_2).to(cpg).converge(converge).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, cpg.id, "FAILED")
    assert set(exec_data(runtime, cpg.id)["outputs"]) == {"ex_data"}
    flow = tree["activities"][executed_1.id]["incoming"][0]
    res = api.skip_conditional_parallel_gateway(runtime, cpg.id, [flow], converge.id)
    assert res.result, res.message
    wait_pipeline(runtime, tree["id"])
    wait_all(runtime, tree["id"], [start.id, before.id, cpg.id, executed_1.id, executed_2.id, converge.id, end.id],
             "FINISHED")
    assert node_state(runtime, cpg.id)["skip"] is True
    not_reached(runtime, not_executed.id)
    # bamboo's engine_hook_signals guide: the command's events, with its arguments, in the caller.
    want = {"node_id": cpg.id, "flow_ids": [flow], "converge_gateway_id": converge.id}
    assert recorder.events_of("pre_skip_conditional_parallel_gateway") == [want]
    assert recorder.events_of("post_skip_conditional_parallel_gateway") == [want]


def test_skip_exclusive_gateway_on_a_loop_back_flow_keeps_going(runtime):
    """A failed exclusive gateway skipped along its loop-back flow runs the loop once more."""
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="loop_count_node")
    eg = ExclusiveGateway(conditions={0: "${l} < 2", 1: "${l} == 2"})
    end = EmptyEndEvent()
    start.extend(act).extend(eg).connect(act, end)
    tree = build_tree(start, data={"inputs": {
        "${l}": {"type": "splice", "source_act": act.id, "source_key": "_loop", "value": ""}}, "outputs": []})
    # Loop 1 takes the back flow, loop 2 goes to the end; force a failure with a context update.
    run(runtime, tree, cycle_tolerate=True)
    wait_pipeline(runtime, tree["id"])
    assert node_state(runtime, act.id)["loop"] == 2 and node_state(runtime, eg.id)["loop"] == 2
    assert [h["loop"] for h in histories(runtime, act.id)] == [1]


# -- the v3 facade on every backend -----------------------------------------------------------------
@pytest.fixture
def facade(runtime):
    legacy.set_default_runtime(runtime)
    yield legacy.task_service
    legacy.set_default_runtime(None)


def test_v3_facade_runs_retries_skips_and_calls_back(runtime, facade):
    fail = ServiceActivity(component_code="fail_ctrl_node")
    fail.component.inputs.bit = Var(type=Var.PLAIN, value=0)
    skipped = ServiceActivity(component_code="fail_ctrl_node")
    waiting = ServiceActivity(component_code="callback_node")
    start, end = line(fail, skipped, waiting)
    tree = build_tree(start)
    pipeline = legacy.PipelineParser(pipeline_tree=tree, cycle_tolerate=True).parse()
    assert pipeline.id == tree["id"]
    with pytest.raises(NotFoundError, match=waiting.id):
        facade.get_state(waiting.id)
    assert facade.run_pipeline(pipeline).result
    wait_state(runtime, fail.id, "FAILED")
    assert facade.get_state(fail.id)["state"] == "FAILED"
    assert facade.retry_activity(fail.id, {"bit": 1}).result
    wait_state(runtime, skipped.id, "FAILED")
    assert facade.skip_activity(skipped.id).result
    wait_state(runtime, waiting.id, "RUNNING")
    assert facade.callback(waiting.id, {"bit": 1}).result
    wait_pipeline(runtime, tree["id"])
    state = facade.get_state(tree["id"])
    assert state["state"] == "FINISHED"
    assert {k: v["state"] for k, v in state["children"].items()} == dict.fromkeys(
        [start.id, fail.id, skipped.id, waiting.id, end.id], "FINISHED")
    assert state["children"][fail.id]["retry"] == 1 and state["children"][skipped.id]["skip"] is True
    assert state["start_time"] and state["finish_time"]


def test_v3_facade_pauses_resumes_and_forces_a_failure(runtime, facade):
    poll = ServiceActivity(component_code="callback_node")
    start, end = line(poll)
    tree = build_tree(start)
    assert facade.run_pipeline(legacy.PipelineParser(tree).parse()).result
    wait_state(runtime, poll.id, "RUNNING")
    assert facade.pause_pipeline(tree["id"]).result
    wait_state(runtime, tree["id"], "SUSPENDED")
    assert facade.resume_pipeline(tree["id"]).result
    wait_state(runtime, tree["id"], "RUNNING")
    assert facade.forced_fail(poll.id).result
    wait_state(runtime, poll.id, "FAILED")
    assert not facade.forced_fail(poll.id).result
    assert facade.revoke_pipeline(tree["id"]).result
    wait_state(runtime, tree["id"], "REVOKED")
    assert facade.get_state(tree["id"])["state"] == "REVOKED"


# -- receivers written for bamboo -----------------------------------------------------------------
class BambooReceivers:
    """Receivers with bamboo's documented signatures, connected with ``receiver=`` as its guide does."""

    def __init__(self):
        self.states = []
        self.events = []
        self.senders = set()

    def on_state(self, sender, node_id, to_state, version, root_id, parent_id, loop, **kwargs):
        self.senders.add(sender)
        self.states.append((node_id, to_state, root_id, parent_id, loop))

    def on_event(self, sender, event, **kwargs):
        self.events.append((event.event_type, event.data))


@pytest.fixture
def bamboo_receivers():
    rec = BambooReceivers()
    signals.post_set_state.connect(receiver=rec.on_state)
    signals.pipeline_event.connect(receiver=rec.on_event)
    yield rec
    signals.post_set_state.disconnect(receiver=rec.on_state)
    signals.pipeline_event.disconnect(receiver=rec.on_event)


def test_bamboo_receivers_hear_execution_and_commands(runtime, bamboo_receivers, request):
    sub_act = ServiceActivity(component_code="debug_no_schedule_node")
    sub_start, sub_end = line(sub_act)
    sub = SubProcess(start=sub_start)
    waiting = ServiceActivity(component_code="callback_node")
    start, end = line(sub, waiting)
    tree = build_tree(start)
    root = run(runtime, tree)
    version = wait_state(runtime, waiting.id, "RUNNING")["version"]
    assert api.callback(runtime, waiting.id, version, {"bit": 1}).result
    wait_pipeline(runtime, root)
    # The command's events are sent in the caller's process on every backend.
    assert ("pre_callback", {"node_id": waiting.id, "version": version, "data": {"bit": 1}}) in bamboo_receivers.events
    assert all(isinstance(s, type) for s in bamboo_receivers.senders)
    prepared = [data for kind, data in bamboo_receivers.events if kind.endswith("_prepare_run_pipeline")]
    assert [d["pipeline"]["id"] for d in prepared] == [root, root]
    assert all(set(d) == {"pipeline", "root_pipeline_data", "root_pipeline_context", "subprocess_context"}
               for d in prepared)
    if request.node.callspec.params["runtime"] not in EMBEDDED:
        return
    states = bamboo_receivers.states
    assert (root, "RUNNING", root, "", -1) in states or any(
        s[0] == root and s[1] == "RUNNING" and s[3] == "" for s in states)
    assert any(s[0] == sub_act.id and s[1] == "FINISHED" and s[2] == root and s[3] == sub.id for s in states)
    assert any(s[0] == root and s[1] == "FINISHED" for s in states)
    types = [t for t, _ in bamboo_receivers.events]
    assert "node_enter" in types and "node_finish" in types and "pipeline_finish" in types


# -- commands on nodes inside subprocesses -----------------------------------------------------------
def _sub_with(act):
    sub_start, sub_end = line(act)
    return SubProcess(start=sub_start), sub_start, sub_end


def test_callback_inside_a_paused_subprocess_waits_for_resume(runtime):
    waiting = ServiceActivity(component_code="callback_node")
    after = ServiceActivity(component_code="debug_no_schedule_node")
    sub_start, sub_end = line(waiting, after)
    sub = SubProcess(start=sub_start)
    start, end = line(sub)
    tree = build_tree(start)
    run(runtime, tree)
    version = wait_state(runtime, waiting.id, "RUNNING")["version"]
    assert api.pause_pipeline(runtime, sub.id).result
    wait_state(runtime, sub.id, "SUSPENDED")
    res = api.callback(runtime, waiting.id, version, {"bit": 1})
    assert res.result, res.message
    wait_state(runtime, waiting.id, "FINISHED")
    assert node_state(runtime, after.id) is None
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert api.resume_pipeline(runtime, sub.id).result
    wait_pipeline(runtime, tree["id"])
    wait_all(runtime, tree["id"], [sub.id, after.id, sub_end.id], "FINISHED")


def test_forced_fail_inside_a_subprocess_then_skip(runtime, recorder):
    poll = ServiceActivity(component_code="callback_node")
    sub, sub_start, sub_end = _sub_with(poll)
    start, end = line(sub)
    tree = build_tree(start)
    run(runtime, tree)
    old = wait_state(runtime, poll.id, "RUNNING")["version"]
    res = api.forced_fail_activity(runtime, poll.id, "stopped by the operator")
    assert res.result, res.message
    failed = wait_state(runtime, poll.id, "FAILED")
    assert failed["version"] != old
    assert exec_data(runtime, poll.id)["outputs"]["ex_data"] == "stopped by the operator"
    assert node_state(runtime, sub.id)["state"] == "RUNNING"
    [post] = recorder.events_of("post_forced_fail_activity")
    assert post == {"node_id": poll.id, "ex_data": "stopped by the operator", "old_version": old,
                    "new_version": failed["version"]}
    assert not api.callback(runtime, poll.id, old, {"bit": 1}).result
    assert api.skip_node(runtime, poll.id).result
    wait_pipeline(runtime, tree["id"])
    assert [h["version"] for h in histories(runtime, poll.id)] == [failed["version"]]


def test_revoke_with_a_waiting_branch_refuses_later_commands(runtime):
    from culm.builder import ParallelGateway

    start = EmptyStartEvent()
    pg = ParallelGateway()
    waiting = ServiceActivity(component_code="callback_node")
    sub_wait = ServiceActivity(component_code="callback_node")
    sub, sub_start, sub_end = _sub_with(sub_wait)
    cg = ConvergeGateway()
    end = EmptyEndEvent()
    start.extend(pg).connect(waiting, sub).to(pg).converge(cg).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    version = wait_state(runtime, waiting.id, "RUNNING")["version"]
    sub_version = wait_state(runtime, sub_wait.id, "RUNNING")["version"]
    res = api.revoke_pipeline(runtime, tree["id"])
    assert res.result, res.message
    wait_state(runtime, tree["id"], "REVOKED")
    for res in (api.callback(runtime, waiting.id, version, {}), api.callback(runtime, sub_wait.id, sub_version, {})):
        refused(res, "revoked")
    # The subprocess's own state still says RUNNING, but it is part of the revoked run: pausing,
    # resuming or revoking it is refused as every other command is (culm fix; bamboo writes it).
    for command in (api.pause_pipeline, api.revoke_pipeline, api.resume_pipeline):
        refused(command(runtime, sub.id), sub.id, f"pipeline {tree['id']} is revoked")
    for command in (api.pause_pipeline, api.revoke_pipeline, api.resume_pipeline):
        refused(command(runtime, tree["id"]), tree["id"], "REVOKED")
    assert node_state(runtime, sub.id)["state"] == "RUNNING"
    assert node_state(runtime, cg.id) is None and node_state(runtime, end.id) is None
    assert node_state(runtime, tree["id"])["archived_time"] is not None


def test_a_subprocess_inside_a_revoked_subprocess_refuses_pause_and_resume(runtime):
    waiting = ServiceActivity(component_code="callback_node")
    inner, inner_start, inner_end = _sub_with(waiting)
    outer, outer_start, outer_end = _sub_with(inner)
    start, end = line(outer)
    tree = build_tree(start)
    run(runtime, tree)
    version = wait_state(runtime, waiting.id, "RUNNING")["version"]
    assert api.pause_pipeline(runtime, inner.id).result
    wait_state(runtime, inner.id, "SUSPENDED")
    res = api.revoke_pipeline(runtime, outer.id)
    assert res.result, res.message
    wait_state(runtime, outer.id, "REVOKED")
    for command in (api.resume_pipeline, api.pause_pipeline, api.revoke_pipeline):
        refused(command(runtime, inner.id), inner.id, f"pipeline {outer.id} is revoked")
    refused(api.callback(runtime, waiting.id, version, {}), f"pipeline {outer.id} is revoked")
    assert node_state(runtime, inner.id)["state"] == "SUSPENDED"
    # The root itself is not revoked: the operator can still revoke it.
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"
    assert api.revoke_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "REVOKED")


def test_callbacks_sent_while_an_earlier_one_is_handled_are_all_taken(runtime):
    act, tree, version = waiting_alone(runtime, "atom_slow_multi_callback_node")
    for n in range(3):
        res = api.callback(runtime, act.id, version, {"bit": 1, "n": n})
        assert res.result, res.message
    wait_pipeline(runtime, tree["id"], timeout=30)
    outputs = exec_data(runtime, act.id)["outputs"]
    assert outputs["_scheduled_times"] == 3
    assert sorted(outputs["seen"]) == [0, 1, 2]
    late = api.callback(runtime, act.id, version, {"bit": 1, "n": 3})
    refused(late, act.id)
