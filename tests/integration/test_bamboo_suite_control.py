"""bamboo-pipeline's integration scenarios through culm's public API: operator commands (retry,
skip, callback, pause), their refusals per state, and bamboo's component guide (see
``test_bamboo_suite.py``)."""

from __future__ import annotations

import bamboo_suite_components  # noqa: F401 - registers bamboo's test components
import pytest
from bamboo_suite_helpers import exec_data, histories, states_of, wait_all
from engine_fixtures import finish, node_state, refused, run, wait_pipeline, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(120)


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
    wait_until(lambda: api.callback(runtime, act.id, again["version"], data={}).result,
               what="callback accepted")
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


# -- refusals, per command and state ---------------------------------------------------------------
def test_node_command_refusals_name_the_node_and_its_state(runtime):
    start = EmptyStartEvent()
    pg = ParallelGateway()
    waiting = ServiceActivity(component_code="callback_node")
    failed = ServiceActivity(component_code="fail_ctrl_node", retryable=False, skippable=False)
    gate = ServiceActivity(component_code="callback_node")
    done = ServiceActivity(component_code="debug_no_schedule_node")
    held = ServiceActivity(component_code="debug_no_schedule_node")
    cg = ConvergeGateway()
    start.extend(pg).connect(waiting, failed, gate)
    gate.extend(done).extend(held).extend(cg)
    waiting.extend(cg)
    failed.extend(cg)
    cg.extend(EmptyEndEvent())
    pipeline = build_tree(start)
    run(runtime, pipeline)
    assert api.pause_node_appoint(runtime, held.id).result  # cannot be reached before the gate opens
    gate_state = wait_state(runtime, gate.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, gate.id, gate_state["version"], {"bit": 1}).result, what="gate")
    running = wait_state(runtime, waiting.id, "RUNNING")
    wait_state(runtime, failed.id, "FAILED")
    wait_state(runtime, done.id, "FINISHED")
    assert node_state(runtime, held.id)["state"] == "SUSPENDED"

    version = running["version"]
    commands = {
        "pause_node_appoint": lambda n: api.pause_node_appoint(runtime, n),
        "resume_node_appoint": lambda n: api.resume_node_appoint(runtime, n),
        "retry_node": lambda n: api.retry_node(runtime, n),
        "skip_node": lambda n: api.skip_node(runtime, n),
        "forced_fail_activity": lambda n: api.forced_fail_activity(runtime, n, "ex"),
        "callback": lambda n: api.callback(runtime, n, version, {}),
    }
    allowed = {("resume_node_appoint", held.id), ("forced_fail_activity", waiting.id), ("callback", waiting.id)}
    for name, command in commands.items():
        for node_id, state in ((waiting.id, "RUNNING"), (failed.id, "FAILED"), (done.id, "FINISHED"),
                               (held.id, "SUSPENDED")):
            if (name, node_id) in allowed:
                continue
            res = command(node_id)
            assert res.result is False and res.exc is not None, (name, state)
            assert node_id in res.message and (state in res.message or "retryable" in res.message
                                               or "skippable" in res.message), (name, state, res.message)
    # Nothing refused changed anything.
    assert [node_state(runtime, n)["state"] for n in (waiting.id, failed.id, done.id, held.id)] == [
        "RUNNING", "FAILED", "FINISHED", "SUSPENDED"]
    assert node_state(runtime, waiting.id)["version"] == version


def test_pipeline_command_refusals_per_state(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="callback_node")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    pid = pipeline["id"]
    run(runtime, pipeline)
    state = wait_state(runtime, act.id, "RUNNING")

    refused(api.resume_pipeline(runtime, pid), pid, "RUNNING")
    assert api.pause_pipeline(runtime, pid).result
    refused(api.pause_pipeline(runtime, pid), pid, "SUSPENDED")
    assert api.resume_pipeline(runtime, pid).result
    wait_until(lambda: api.callback(runtime, act.id, state["version"], {"bit": 1}).result, what="callback")
    wait_pipeline(runtime, pid)
    for command in (api.pause_pipeline, api.resume_pipeline, api.revoke_pipeline):
        refused(command(runtime, pid), pid, "FINISHED")
    refused(api.pause_pipeline(runtime, act.id), act.id)


def test_revoked_pipeline_refuses_everything(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="callback_node")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    pid = pipeline["id"]
    run(runtime, pipeline)
    state = wait_state(runtime, act.id, "RUNNING")
    assert api.revoke_pipeline(runtime, pid).result

    for res in (api.revoke_pipeline(runtime, pid), api.pause_pipeline(runtime, pid),
                api.resume_pipeline(runtime, pid)):
        refused(res, pid, "REVOKED")
    for res in (api.callback(runtime, act.id, state["version"], {}), api.forced_fail_activity(runtime, act.id, "x"),
                api.retry_node(runtime, act.id), api.skip_node(runtime, act.id)):
        refused(res, act.id)
    assert node_state(runtime, pid)["state"] == "REVOKED"


# -- bamboo's component guide ----------------------------------------------------------------------
@pytest.mark.parametrize("status,final", [(0, "FINISHED"), (-1, "FAILED")])
def test_guide_callback_service_reads_self_callback_data(runtime, status, final):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="guide_wait_callback")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    run(runtime, pipeline)
    state = wait_state(runtime, act.id, "RUNNING")

    wait_until(lambda: api.callback(runtime, act.id, state["version"], {"status": status}).result,
               what="callback")

    wait_state(runtime, act.id, final)
    if final == "FAILED":
        assert api.get_execution_data_outputs(runtime, act.id).data["ex_data"] == "task failed with code: -1"
    else:
        wait_pipeline(runtime, pipeline["id"])


def test_execution_times(runtime):
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="callback_node")
    start.extend(act).extend(EmptyEndEvent())
    pipeline = build_tree(start)
    run(runtime, pipeline)
    state = wait_state(runtime, act.id, "RUNNING")

    running = api.get_node_execution_time(runtime, act.id).data
    assert running["state"] == "RUNNING" and running["archived_time"] is None
    assert running["start_time"] == state["started_time"] and running["execution_time"] >= 0
    wait_until(lambda: api.callback(runtime, act.id, state["version"], {"bit": 1}).result, what="callback")
    entry = wait_pipeline(runtime, pipeline["id"])

    done = api.get_pipeline_execution_time(runtime, pipeline["id"]).data
    assert done == {"state": "FINISHED", "start_time": entry["started_time"], "archived_time": entry["archived_time"],
                    "execution_time": (entry["archived_time"] - entry["started_time"]).total_seconds()}
    refused(api.get_node_execution_time(runtime, "e" + "0" * 32), "e" + "0" * 32)


def test_appointed_pause_inside_nested_parallel_subprocesses(runtime):
    sub_1_start = EmptyStartEvent()
    sub_1_act_1 = ServiceActivity(component_code="callback_node")  # bamboo: a 3 s timer; here a gate
    sub_1_act_2 = ServiceActivity(component_code="debug_node")
    sub_1_end = EmptyEndEvent()
    sub_1_start.extend(sub_1_act_1).extend(sub_1_act_2).extend(sub_1_end)
    sub_2_start = EmptyStartEvent()
    sub_2_act_1 = ServiceActivity(component_code="debug_node")
    sub_2_end = EmptyEndEvent()
    sub_2_start.extend(sub_2_act_1).extend(sub_2_end)
    sub_3_start = EmptyStartEvent()
    sub_3_pg = ParallelGateway()
    sub_3_subproc_1 = SubProcess(start=sub_1_start)
    sub_3_subproc_2 = SubProcess(start=sub_2_start)
    sub_3_cg = ConvergeGateway()
    sub_3_end = EmptyEndEvent()
    sub_3_start.extend(sub_3_pg).connect(sub_3_subproc_1, sub_3_subproc_2).converge(sub_3_cg).extend(sub_3_end)
    start = EmptyStartEvent()
    subproc = SubProcess(start=sub_3_start)
    end = EmptyEndEvent()
    start.extend(subproc).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    assert api.pause_node_appoint(runtime, sub_1_act_2.id).result
    gate = wait_state(runtime, sub_1_act_1.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, sub_1_act_1.id, gate["version"], {"bit": 1}).result, what="gate")

    done = [start.id, sub_3_start.id, sub_3_pg.id, sub_3_subproc_2.id, sub_2_start.id, sub_2_act_1.id, sub_2_end.id,
            sub_1_start.id, sub_1_act_1.id]
    wait_all(runtime, pipeline["id"], done, "FINISHED")
    assert node_state(runtime, sub_1_act_2.id)["state"] == "SUSPENDED"
    assert states_of(runtime, pipeline["id"], [pipeline["id"], subproc.id, sub_3_subproc_1.id]) == {
        subproc.id: "RUNNING", sub_3_subproc_1.id: "RUNNING"}
    assert node_state(runtime, pipeline["id"])["state"] == "RUNNING"
    assert states_of(runtime, pipeline["id"], [sub_3_cg.id, sub_3_end.id, end.id]) == {}

    assert api.resume_node_appoint(runtime, sub_1_act_2.id).result

    wait_all(runtime, pipeline["id"], [*done, pipeline["id"], subproc.id, sub_3_subproc_1.id, sub_1_act_2.id,
                                      sub_1_end.id, sub_3_cg.id, sub_3_end.id, end.id], "FINISHED")
    nested = api.get_pipeline_states(runtime, pipeline["id"], flat_children=False).data[pipeline["id"]]
    assert set(nested["children"]) == {start.id, subproc.id, end.id}
    inner = nested["children"][subproc.id]["children"]
    assert set(inner) == {sub_3_start.id, sub_3_pg.id, sub_3_subproc_1.id, sub_3_subproc_2.id, sub_3_cg.id,
                          sub_3_end.id}
    assert set(inner[sub_3_subproc_1.id]["children"]) == {sub_1_start.id, sub_1_act_1.id, sub_1_act_2.id,
                                                         sub_1_end.id}


@pytest.mark.parametrize("payload", [{}, {"bit": 1}, {"bit": 0}], ids=["empty", "ok", "fail"])
def test_hooks_of_a_callback_node_written_as_bamboos_test_mixin(runtime, payload):
    # bamboo's mixin writes pre_schedule / post_schedule / node_finish without callback_data: as in
    # bamboo (and the contract), a callback node's hooks get the payload, so these raise and are
    # ignored; only the hooks that take it (node_schedule_fail) are recorded after schedule.
    start = EmptyStartEvent()
    act = ServiceActivity(component_code="hook_callback_node")
    end = EmptyEndEvent()
    start.extend(act).extend(end)
    pipeline = build_tree(start)
    run(runtime, pipeline, root_pipeline_data={})
    state = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: api.callback(runtime, act.id, state["version"], payload).result, what="callback")

    head = ["node_enter", "pre_execute", "execute", "post_execute", "schedule"]
    if payload.get("bit", 1):
        wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")
        order = head
        assert exec_data(runtime, act.id)["outputs"]["_result"] is True
    else:
        wait_state(runtime, act.id, "FAILED")
        assert api.skip_node(runtime, act.id).result
        wait_all(runtime, pipeline["id"], [start.id, act.id, end.id, pipeline["id"]], "FINISHED")
        order = [*head, "node_schedule_fail"]
        assert exec_data(runtime, act.id)["outputs"]["_result"] is False
    outputs = exec_data(runtime, act.id)["outputs"]
    assert outputs["hook_call_order"] == order
    assert {name: outputs[name] for name in order} == {name: 1 for name in order}
    # Hooks of control commands (callback, skip) are read-only: nothing they record is kept.
    assert not {"pre_callback", "post_callback", "pre_skip_node", "post_skip_node"} & set(outputs)
