"""Component behaviour classes: execute, poll, callback, multiple callbacks, failures, logs."""

from __future__ import annotations

import pytest
from engine_fixtures import finish, node_state, outputs, refused, run, wait_state
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = pytest.mark.timeout(60)


def single(code, **inputs):
    act = ServiceActivity(component_code=code)
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), act


def test_execute_failure_keeps_outputs_and_ex_data(runtime):
    tree, act = single("t_fail", x="partial")
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED")
    out = outputs(runtime, act.id)
    assert out["ex_data"] == "t_fail said no"
    assert out["partial"] == "partial" and out["_result"] is False
    assert out["_loop"] == 1 and out["_inner_loop"] == 1


def test_execute_exception_puts_traceback_in_ex_data(runtime):
    tree, act = single("t_raise")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "FAILED")
    assert st["archived_time"] is not None
    ex = outputs(runtime, act.id)["ex_data"]
    assert "Traceback" in ex and "ValueError: boom from t_raise" in ex


def test_poll_until_finish_schedule(runtime):
    tree, act = single("t_poll", polls=3)
    finish(runtime, tree)
    out = outputs(runtime, act.id)
    assert out["count"] == 3 and out["_result"] is True


def test_poll_failure_fails_node(runtime):
    tree, act = single("t_poll", polls=5, fail_at=2)
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED")
    out = outputs(runtime, act.id)
    assert out["count"] == 2 and out["ex_data"] == "poll failed" and out["_result"] is False
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_poll_exception_fails_node_with_traceback(runtime):
    tree, act = single("t_poll_raise")
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED")
    assert "schedule exploded" in outputs(runtime, act.id)["ex_data"]


def test_poll_failure_retry_polls_again(runtime):
    tree, act = single("t_poll", polls=3, fail_at=1)
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED")
    assert api.retry_node(runtime, act.id, data={"polls": 2}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, act.id)["count"] == 2


def test_poll_error_ignorable(runtime):
    act = ServiceActivity(component_code="t_poll", error_ignorable=True)
    act.component.inputs.fail_at = Var(type=Var.PLAIN, value=1)
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    entry = finish(runtime, build_tree(start))
    assert entry["children"][act.id]["error_ignored"] is True


def test_callback_finishes_node_with_payload(runtime):
    tree, act = single("t_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    res = api.callback(runtime, act.id, st["version"], {"bit": 1})
    assert res.result, res.message
    wait_state(runtime, tree["id"], "FINISHED")
    out = outputs(runtime, act.id)
    assert out["callback_data"] == {"bit": 1} and out["_result"] is True


def test_callback_failure_fails_node(runtime):
    tree, act = single("t_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    assert api.callback(runtime, act.id, st["version"], {"ok": False}).result
    wait_state(runtime, act.id, "FAILED")
    assert outputs(runtime, act.id)["callback_data"] == {"ok": False}


def test_callback_with_wrong_version_refused(runtime):
    tree, act = single("t_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    refused(api.callback(runtime, act.id, "v" + "0" * 32, {}), act.id)
    assert node_state(runtime, act.id)["state"] == "RUNNING"
    # the right version still works afterwards
    assert api.callback(runtime, act.id, st["version"], {}).result
    wait_state(runtime, tree["id"], "FINISHED")


def test_second_callback_refused_after_finish(runtime):
    tree, act = single("t_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    assert api.callback(runtime, act.id, st["version"], {"n": 1}).result
    wait_state(runtime, tree["id"], "FINISHED")
    refused(api.callback(runtime, act.id, st["version"], {"n": 2}), act.id)
    assert outputs(runtime, act.id)["callback_data"] == {"n": 1}


def test_stale_callback_after_retry_refused(runtime):
    tree, act = single("t_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    old = st["version"]
    assert api.callback(runtime, act.id, old, {"ok": False}).result
    wait_state(runtime, act.id, "FAILED")
    assert api.retry_node(runtime, act.id).result
    new = wait_until(lambda: (s := node_state(runtime, act.id)) and s["state"] == "RUNNING" and s["version"] != old
                     and s["version"], what="retry to start")
    wait_until(lambda: outputs(runtime, act.id).get("waiting"), what="execute to finish")
    refused(api.callback(runtime, act.id, old, {"ok": True}), act.id)
    assert api.callback(runtime, act.id, new, {"ok": True}).result
    wait_state(runtime, tree["id"], "FINISHED")


def test_callback_on_non_callback_node_refused(runtime):
    tree, act = single("t_gate", gate="cb-nonwait")
    run(runtime, tree)
    try:
        st = wait_state(runtime, act.id, "RUNNING")
        refused(api.callback(runtime, act.id, st["version"], {}), act.id)
    finally:
        import components

        components.gate("cb-nonwait").set()
    wait_state(runtime, tree["id"], "FINISHED")


def test_multiple_callbacks_until_finish(runtime):
    tree, act = single("t_multi_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: "received" in outputs(runtime, act.id), what="execute to finish")
    for n in (1, 2):
        assert api.callback(runtime, act.id, st["version"], {"n": n}).result
        wait_until(lambda n=n: n in outputs(runtime, act.id)["received"], what=f"callback {n}")
    assert node_state(runtime, act.id)["state"] == "RUNNING"
    assert api.callback(runtime, act.id, st["version"], {"n": 3, "done": True}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert outputs(runtime, act.id)["received"] == [1, 2, 3]


def test_multiple_callback_failure(runtime):
    tree, act = single("t_multi_callback")
    run(runtime, tree)
    st = wait_state(runtime, act.id, "RUNNING")
    wait_until(lambda: "received" in outputs(runtime, act.id), what="execute to finish")
    assert api.callback(runtime, act.id, st["version"], {"n": 1, "fail": True}).result
    wait_state(runtime, act.id, "FAILED")
    refused(api.callback(runtime, act.id, st["version"], {"n": 2}), act.id)


def test_node_logs(runtime):
    tree, act = single("t_log", who="culm")
    finish(runtime, tree)
    logs = api.get_node_logs(runtime, act.id)
    assert logs.result
    lines = logs.data.split("\n")
    assert len(lines) == 2 and "hello culm" in lines[0] and "second line" in lines[1]
    version = node_state(runtime, act.id)["version"]
    assert api.get_node_logs(runtime, act.id, version).data == logs.data
    assert api.get_node_logs(runtime, act.id, "v-unknown").data == ""


def test_node_logs_per_version_after_retry(runtime):
    tree, act = single("t_log", fail=True)
    run(runtime, tree)
    first = wait_state(runtime, act.id, "FAILED")["version"]
    assert api.retry_node(runtime, act.id, data={"who": "again", "fail": False}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert "hello world" in api.get_node_logs(runtime, act.id, first).data
    assert "hello again" in api.get_node_logs(runtime, act.id).data
    assert "hello world" not in api.get_node_logs(runtime, act.id).data
