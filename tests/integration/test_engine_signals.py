"""Signals (post_set_state, pipeline_event) and service hooks (__need_run_hook__)."""

from __future__ import annotations

import threading

import pytest
from components import HookService
from engine_fixtures import finish, node_state, outputs, refused, run, wait_idle, wait_state
from support import wait_until

from culm import api, signals
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, Var, build_tree
from culm.components import Component

pytestmark = pytest.mark.timeout(60)


def chain(*nodes):
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return start


def hook_act(code="t_hook", **plain):
    a = ServiceActivity(component_code=code)
    for key, value in plain.items():
        setattr(a.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return a


def hooks_of(calls, node_id):
    return [name for nid, name, _ in calls if nid == node_id]


# -- post_set_state ---------------------------------------------------------------------------
def test_post_set_state_payloads(runtime, recorder):
    a = ServiceActivity(component_code="example_component")
    inner = ServiceActivity(component_code="example_component")
    sub = SubProcess(start=chain(inner))
    tree = build_tree(chain(a, sub))
    root = tree["id"]
    finish(runtime, tree)
    wait_idle(runtime)
    first = recorder.states[0]
    assert first["node_id"] == root and first["to_state"] == "RUNNING" and first["root_id"] == root
    assert first["parent_id"] == "" and first["loop"] == 1
    assert recorder.states_of(a.id) == ["RUNNING", "FINISHED"]
    assert recorder.states_of(root)[-1] == "FINISHED"
    inner_states = [s for s in recorder.states if s["node_id"] == inner.id]
    assert all(s["parent_id"] == sub.id and s["root_id"] == root for s in inner_states)
    a_states = [s for s in recorder.states if s["node_id"] == a.id]
    assert a_states[0]["parent_id"] == root and a_states[0]["loop"] == 1 and a_states[1]["loop"] == -1
    for s in recorder.states:
        assert set(s) == {"node_id", "to_state", "version", "root_id", "parent_id", "loop"}
        assert s["version"] == node_state(runtime, s["node_id"])["version"] or s["to_state"] != "FINISHED"


def test_post_set_state_for_commands(runtime, recorder):
    a = ServiceActivity(component_code="t_fail")
    tree = build_tree(chain(a))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    recorder.states.clear()
    assert api.retry_node(runtime, a.id).result
    wait_state(runtime, a.id, "FAILED")
    wait_idle(runtime)
    assert recorder.states_of(a.id)[:1] == ["READY"]
    assert "RUNNING" in recorder.states_of(a.id) and recorder.states_of(a.id)[-1] == "FAILED"


def test_refused_command_sends_nothing(runtime, recorder):
    a = ServiceActivity(component_code="example_component")
    tree = build_tree(chain(a))
    finish(runtime, tree)
    wait_idle(runtime)
    before_states, before_events = len(recorder.states), len(recorder.events)
    refused(api.retry_node(runtime, a.id))
    refused(api.skip_node(runtime, a.id))
    refused(api.pause_pipeline(runtime, tree["id"]))
    refused(api.revoke_pipeline(runtime, tree["id"]))
    refused(api.run_pipeline(runtime, tree))
    assert len(recorder.states) == before_states and len(recorder.events) == before_events


def skip_a_failure_with(runtime, bad) -> None:
    """With ``bad`` receiving both signals: a node fails, is skipped, its pipeline finishes, and a
    second pipeline runs to its end."""
    signals.post_set_state.connect(bad)
    signals.pipeline_event.connect(bad)
    try:
        a = ServiceActivity(component_code="t_fail")
        tree = build_tree(chain(a))
        run(runtime, tree)
        wait_state(runtime, a.id, "FAILED")
        assert api.skip_node(runtime, a.id).result
        wait_state(runtime, tree["id"], "FINISHED")
        assert api.get_execution_data(runtime, a.id).result
        finish(runtime, build_tree(chain(ServiceActivity(component_code="t_echo"))))
    finally:
        signals.post_set_state.disconnect(bad)
        signals.pipeline_event.disconnect(bad)


def test_raising_receiver_changes_nothing(runtime):
    calls = []

    def bad(**kw):
        calls.append(kw)
        raise RuntimeError("receiver exploded")

    skip_a_failure_with(runtime, bad)
    assert calls


class ReceiverQuit(BaseException):
    """Not an Exception: what a receiver raises that an ``except Exception`` does not catch."""


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit(), ReceiverQuit("quit")],
                         ids=["SystemExit", "GeneratorExit", "BaseException"])
def test_a_receiver_raising_a_base_exception_changes_nothing(runtime, exc):
    # It went through: out of run_pipeline to the caller after the commit, and out of the engine
    # thread ("Exception in thread culm-engine"), which died; every pipeline stayed RUNNING.
    def bad(**kw):
        raise exc

    skip_a_failure_with(runtime, bad)


# -- pipeline_event ---------------------------------------------------------------------------
def test_pipeline_events_of_a_run(runtime, recorder):
    a = ServiceActivity(component_code="example_component")
    tree = build_tree(chain(a))
    root = tree["id"]
    finish(runtime, tree, root_pipeline_data={"k": 1})
    wait_idle(runtime)
    types = recorder.event_types()
    assert types[0] == "pre_prepare_run_pipeline" and types[1] == "post_prepare_run_pipeline"
    pre = recorder.events_of("pre_prepare_run_pipeline")[0]
    assert set(pre) == {"pipeline", "root_pipeline_data", "root_pipeline_context", "subprocess_context"}
    assert pre["pipeline"]["id"] == root and pre["root_pipeline_data"] == {"k": 1}
    for et in ("node_enter", "pre_execute", "post_execute", "node_finish"):
        assert {"root_pipeline_id": root, "node_id": a.id} in recorder.events_of(et), et
    assert recorder.events_of("pipeline_finish") == [{"pipeline_id": root}]
    # node_finish for events and gateways too
    assert {"root_pipeline_id": root, "node_id": tree["start_event"]["id"]} in recorder.events_of("node_finish")
    for event in recorder.events:
        assert set(event) == {"event_type", "data"}


def test_node_finish_is_sent_where_bamboos_engine_sends_it(runtime, recorder):
    """bamboo's engine sends node_finish for a node its process moves on from: not for a parallel
    or conditional parallel gateway (the process waits for the branches), for a subprocess node as
    the process goes into it (not when it ends), and for a node loop once, as it leaves, unless the
    node polls (then after each schedule phase). node_enter: every node each time it runs."""
    from culm.builder import ConditionalParallelGateway, ConvergeGateway, ParallelGateway

    inner_start, inner = EmptyStartEvent(), ServiceActivity(component_code="example_component")
    inner_end = EmptyEndEvent()
    inner_start.extend(inner).extend(inner_end)
    sub = SubProcess(start=inner_start)
    fork, join = ParallelGateway(), ConvergeGateway()
    pick, pick_join = ConditionalParallelGateway(conditions={0: "1 == 1", 1: "1 == 1"}), ConvergeGateway()
    left, right, one, two = (ServiceActivity(component_code="example_component") for _ in range(4))
    looped = ServiceActivity(component_code="example_component", loop_config={"enable": True, "loop_times": 3})
    polled = ServiceActivity(component_code="t_poll", loop_config={"enable": True, "loop_times": 2})
    start, end = EmptyStartEvent(), EmptyEndEvent()
    start.extend(fork).connect(left, right)
    fork.converge(join).extend(pick).connect(one, two)
    pick.converge(pick_join).extend(sub).extend(looped).extend(polled).extend(end)
    tree = build_tree(start)
    root = tree["id"]
    finish(runtime, tree)
    wait_idle(runtime)
    finished = [e["node_id"] for e in recorder.events_of("node_finish") if e["root_pipeline_id"] == root]
    assert sorted(finished) == sorted([
        start.id, left.id, right.id, join.id, one.id, two.id, pick_join.id, sub.id, inner_start.id, inner.id,
        inner_end.id, looped.id, polled.id, polled.id, end.id])
    entered = [e["node_id"] for e in recorder.events_of("node_enter") if e["root_pipeline_id"] == root]
    assert sorted(entered) == sorted([
        start.id, fork.id, left.id, right.id, join.id, pick.id, one.id, two.id, pick_join.id, sub.id,
        inner_start.id, inner.id, inner_end.id, *[looped.id] * 3, *[polled.id] * 2, end.id])


def test_pipeline_events_of_failures(runtime, recorder):
    fail, boom = ServiceActivity(component_code="t_fail"), ServiceActivity(component_code="t_raise")
    t1, t2 = build_tree(chain(fail)), build_tree(chain(boom))
    run(runtime, t1)
    run(runtime, t2)
    wait_state(runtime, fail.id, "FAILED")
    wait_state(runtime, boom.id, "FAILED")
    wait_idle(runtime)
    assert {"root_pipeline_id": t1["id"], "node_id": fail.id} in recorder.events_of("node_execute_fail")
    exc = [e for e in recorder.events_of("node_execute_exception") if e["node_id"] == boom.id]
    assert exc and exc[0]["root_pipeline_id"] == t2["id"] and "boom from t_raise" in exc[0]["ex_data"]


def test_ignored_failure_sends_no_execute_fail(runtime, recorder):
    a = ServiceActivity(component_code="t_fail", error_ignorable=True)
    finish(runtime, build_tree(chain(a)))
    wait_idle(runtime)
    assert not [e for e in recorder.events_of("node_execute_fail") if e["node_id"] == a.id]


def test_pipeline_events_of_commands(runtime, recorder):
    cb = ServiceActivity(component_code="t_callback")
    tree = build_tree(chain(cb))
    root = tree["id"]
    run(runtime, tree)
    st = wait_state(runtime, cb.id, "RUNNING")
    assert api.pause_pipeline(runtime, root).result
    assert api.resume_pipeline(runtime, root).result
    wait_until(lambda: outputs(runtime, cb.id).get("waiting"), what="execute")
    assert api.callback(runtime, cb.id, st["version"], {"d": 1}).result
    wait_state(runtime, root, "FINISHED")
    wait_idle(runtime)
    assert recorder.events_of("pre_pause_pipeline") == [{"pipeline_id": root}]
    assert recorder.events_of("post_pause_pipeline") == [{"pipeline_id": root}]
    assert recorder.events_of("pre_resume_pipeline") == [{"pipeline_id": root}]
    assert recorder.events_of("post_resume_pipeline") == [{"pipeline_id": root}]
    payload = {"node_id": cb.id, "version": st["version"], "data": {"d": 1}}
    assert recorder.events_of("pre_callback") == [payload] and recorder.events_of("post_callback") == [payload]
    assert {"root_pipeline_id": root, "node_id": cb.id} in recorder.events_of("pre_schedule")
    assert {"root_pipeline_id": root, "node_id": cb.id} in recorder.events_of("post_schedule")


def test_pipeline_events_node_pause_resume_skip(runtime, recorder):
    fail, later = ServiceActivity(component_code="t_fail"), ServiceActivity(component_code="example_component")
    tree = build_tree(chain(fail, later))
    run(runtime, tree)
    wait_state(runtime, fail.id, "FAILED")
    assert api.pause_node_appoint(runtime, later.id).result
    assert api.resume_node_appoint(runtime, later.id).result
    assert api.skip_node(runtime, fail.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    wait_idle(runtime)
    for et in ("pre_pause_node", "post_pause_node", "pre_resume_node", "post_resume_node"):
        assert recorder.events_of(et) == [{"node_id": later.id}], et
    assert recorder.events_of("pre_skip_node") == [{"node_id": fail.id}]
    assert recorder.events_of("post_skip_node") == [{"node_id": fail.id}]


# -- service hooks ----------------------------------------------------------------------------
def test_hooks_of_successful_execute(runtime, hook_calls):
    a = hook_act()
    finish(runtime, build_tree(chain(a)))
    assert hooks_of(hook_calls, a.id) == ["node_enter", "pre_execute", "post_execute", "node_finish"]
    assert all(cb is None for _, _, cb in hook_calls)


@pytest.mark.parametrize(("mode", "loop", "ignorable", "iterations"), [
    ("ok", {"loop_times": 3}, False, 3),
    ("fail", {"loop_times": 3}, True, 1),  # an ignored failure ends the loop
    ("fail", {"loop_times": 2, "fail_skip": True}, False, 2),  # fail_skip goes on with the next iteration
])
def test_a_node_loops_service_hook_node_finish_goes_with_the_engines_event(
        runtime, hook_calls, recorder, mode, loop, ignorable, iterations):
    """Spec 7.4 step 8: node_finish, event and hook alike, when the node moves on, not on each
    execute of a node loop that goes round again."""
    a = ServiceActivity(component_code="t_hook", loop_config={"enable": True, **loop}, error_ignorable=ignorable)
    a.component.inputs.mode = Var(type=Var.PLAIN, value=mode)
    tree = build_tree(chain(a))
    finish(runtime, tree)
    wait_idle(runtime)
    each = ["node_enter", "pre_execute"] + (["post_execute"] if mode == "ok" else [])
    # No node_execute_fail, hook nor event, for a failure the node ignores (error_ignorable or
    # fail_skip; spec 4.4 step 9, 8.2).
    assert hooks_of(hook_calls, a.id) == each * iterations + ["node_finish"]
    assert [e["node_id"] for e in recorder.events_of("node_finish")].count(a.id) == 1
    assert [e["node_id"] for e in recorder.events_of("node_execute_fail")].count(a.id) == 0


def test_a_fail_skip_loops_failed_callbacks_send_no_node_schedule_fail(runtime, hook_calls, recorder):
    """Spec 4.5 step 6, 8.2: a schedule failure the node ignores (fail_skip) sends neither the
    node_schedule_fail hook nor its event; node_finish after each schedule phase (spec 7.5)."""
    a = ServiceActivity(component_code="t_hook_callback", loop_config={"enable": True, "loop_times": 2,
                                                                        "fail_skip": True})
    tree = build_tree(chain(a))
    run(runtime, tree)
    for loop in (1, 2):
        def waiting(loop=loop):
            st = node_state(runtime, a.id)
            return st if st and st["state"] == "RUNNING" and st["loop"] == loop else None

        version = wait_until(waiting, what=f"iteration {loop}")["version"]
        # RUNNING is written before the iteration's execute hooks run (in a worker thread), and a
        # callback is taken during execute: call back once execute is over, so that the order of
        # the recorded hooks is the engine's, not the two threads' race.
        wait_until(lambda n=loop: hooks_of(hook_calls, a.id).count("post_execute") == n,
                   what=f"execute of iteration {loop}")
        wait_until(lambda v=version: api.callback(runtime, a.id, v, {"ok": False}).result, what=f"callback {loop}")
    wait_state(runtime, tree["id"], "FINISHED")
    wait_idle(runtime)
    each = ["node_enter", "pre_execute", "post_execute", "pre_callback", "post_callback", "pre_schedule",
            "node_finish"]
    assert hooks_of(hook_calls, a.id) == each * 2
    assert [e["node_id"] for e in recorder.events_of("node_schedule_fail")].count(a.id) == 0
    assert [e["node_id"] for e in recorder.events_of("node_finish")].count(a.id) == 2


_entered, _release = threading.Event(), threading.Event()


class _HeldHookService(HookService):
    """HookService whose first execute waits (bounded) for the test to let it finish."""

    def execute(self, data, parent_data):
        if data.get_one_of_inputs("_inner_loop") == 1:
            _entered.set()
            _release.wait(20)
        return True


class _HeldHookComponent(Component):
    code = "t_signals_held_hook"
    name = "held hook"
    bound_service = _HeldHookService


@pytest.mark.parametrize(("configured", "updated", "iterations"), [(1, 2, 1), (2, 3, 3)])
def test_loop_times_updated_during_an_execute_count_from_the_next_iteration(
        runtime, hook_calls, recorder, configured, updated, iterations):
    """update_node_loop_times while an iteration's execute runs: that iteration decides by the count
    its call saw (its node_finish hook and the engine's event agree); later iterations see the new one."""
    _entered.clear()
    _release.clear()
    a = ServiceActivity(component_code="t_signals_held_hook", loop_config={"enable": True, "loop_times": configured})
    tree = build_tree(chain(a))
    try:
        run(runtime, tree)
        wait_until(_entered.is_set, what="the first execute")
        assert api.update_node_loop_times(runtime, a.id, updated).result
    finally:
        _release.set()
    wait_state(runtime, tree["id"], "FINISHED")
    wait_idle(runtime)
    assert node_state(runtime, a.id)["loop"] == iterations
    hooks = hooks_of(hook_calls, a.id)
    assert hooks == ["node_enter", "pre_execute", "post_execute"] * iterations + ["node_finish"]
    assert [e["node_id"] for e in recorder.events_of("node_finish")].count(a.id) == 1


def test_hooks_of_failed_and_raising_execute(runtime, hook_calls):
    failing, raising = hook_act(mode="fail"), hook_act(mode="raise")
    run(runtime, build_tree(chain(failing)))
    run(runtime, build_tree(chain(raising)))
    wait_state(runtime, failing.id, "FAILED")
    wait_state(runtime, raising.id, "FAILED")
    assert hooks_of(hook_calls, failing.id) == ["node_enter", "pre_execute", "node_execute_fail"]
    assert hooks_of(hook_calls, raising.id) == ["node_enter", "pre_execute", "node_execute_exception",
                                                "node_execute_fail"]


def test_hooks_of_retry_and_skip(runtime, hook_calls):
    a = hook_act(mode="fail")
    tree = build_tree(chain(a))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    hook_calls.clear()
    assert api.retry_node(runtime, a.id).result
    wait_state(runtime, a.id, "FAILED", timeout=10)
    wait_until(lambda: "node_execute_fail" in hooks_of(hook_calls, a.id), what="second failure")
    assert hooks_of(hook_calls, a.id)[:2] == ["pre_retry_node", "post_retry_node"]
    hook_calls.clear()
    assert api.skip_node(runtime, a.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert hooks_of(hook_calls, a.id) == ["pre_skip_node", "post_skip_node"]


def test_hooks_of_callback_carry_callback_data(runtime, hook_calls):
    a = hook_act("t_hook_callback")
    tree = build_tree(chain(a))
    run(runtime, tree)
    st = wait_state(runtime, a.id, "RUNNING")
    wait_until(lambda: outputs(runtime, a.id).get("waiting"), what="execute")
    assert api.callback(runtime, a.id, st["version"], {"cb": 7}).result
    wait_state(runtime, tree["id"], "FINISHED")
    after = [(name, cb) for nid, name, cb in hook_calls if nid == a.id][3:]
    names = [n for n, _ in after]
    assert names[:2] == ["pre_callback", "post_callback"] or set(names[:2]) == {"pre_callback", "post_callback"}
    assert set(names) == {"pre_callback", "post_callback", "pre_schedule", "post_schedule", "node_finish"}
    assert all(cb == {"cb": 7} for _, cb in after)


def test_hooks_of_forced_fail(runtime, hook_calls):
    a = hook_act("t_hook_callback")
    run(runtime, build_tree(chain(a)))
    wait_state(runtime, a.id, "RUNNING")
    wait_until(lambda: outputs(runtime, a.id).get("waiting"), what="execute")
    assert api.forced_fail_activity(runtime, a.id, "stop").result
    assert hooks_of(hook_calls, a.id)[-2:] == ["pre_forced_fail_activity", "post_forced_fail_activity"]


def test_pause_hooks_not_sent_for_unreached_node(runtime, hook_calls):
    first, later = ServiceActivity(component_code="t_callback"), hook_act()
    tree = build_tree(chain(first, later))
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    assert api.pause_node_appoint(runtime, later.id).result
    assert api.resume_node_appoint(runtime, later.id).result
    assert hooks_of(hook_calls, later.id) == []


def test_no_hooks_without_need_run_hook(runtime, hook_calls):
    finish(runtime, build_tree(chain(ServiceActivity(component_code="t_echo"))))
    assert hook_calls == []


def test_raising_hooks_change_nothing(runtime, hook_calls):
    ok, failing = hook_act(hook_raises=True), hook_act(mode="fail", hook_raises=True)
    tree = build_tree(chain(ok, failing))
    run(runtime, tree)
    wait_state(runtime, failing.id, "FAILED")
    assert node_state(runtime, ok.id)["state"] == "FINISHED"
    assert outputs(runtime, ok.id)["_result"] is True
    assert api.retry_node(runtime, failing.id, data={"mode": "ok", "hook_raises": True}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert "node_finish" in hooks_of(hook_calls, failing.id)


def test_hooks_raising_system_exit_change_nothing(runtime, hook_calls):
    # A hook that raised SystemExit failed its node (pre_execute: the component never ran), and
    # one of a command (pre_retry_node) went out of retry_node to the caller.
    ok, failing = hook_act(hook_raises="exit"), hook_act(mode="fail", hook_raises="exit")
    tree = build_tree(chain(ok, failing))
    run(runtime, tree)
    wait_state(runtime, failing.id, "FAILED")
    assert node_state(runtime, ok.id)["state"] == "FINISHED"
    assert outputs(runtime, ok.id)["_result"] is True
    assert api.retry_node(runtime, failing.id, data={"mode": "ok", "hook_raises": "exit"}).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert "pre_retry_node" in hooks_of(hook_calls, failing.id)


def test_post_set_state_for_appointment_pause_of_unreached_node(runtime, recorder):
    first, later = ServiceActivity(component_code="t_callback"), ServiceActivity(component_code="example_component")
    tree = build_tree(chain(first, later))
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    assert api.pause_node_appoint(runtime, later.id).result
    assert api.resume_node_appoint(runtime, later.id).result
    assert recorder.states_of(later.id) == ["SUSPENDED", "READY"]
    paused = [s for s in recorder.states if s["node_id"] == later.id][0]
    assert paused["version"] and paused["loop"] in (1, -1)


def test_pause_hooks_for_reached_node(runtime, hook_calls):
    a = hook_act(mode="fail")
    tree = build_tree(chain(a))
    run(runtime, tree)
    wait_state(runtime, a.id, "FAILED")
    assert api.pause_pipeline(runtime, tree["id"]).result
    assert api.retry_node(runtime, a.id, data={"mode": "ok"}).result
    wait_idle(runtime)
    assert node_state(runtime, a.id)["state"] == "READY"
    hook_calls.clear()
    assert api.pause_node_appoint(runtime, a.id).result
    assert hooks_of(hook_calls, a.id) == ["pre_pause_node", "post_pause_node"]
    assert api.resume_pipeline(runtime, tree["id"]).result
    wait_idle(runtime)
    assert node_state(runtime, a.id)["state"] == "SUSPENDED"
    assert api.resume_node_appoint(runtime, a.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert "pre_resume_node" not in hooks_of(hook_calls, a.id)


def test_forced_fail_can_keep_post_set_state_quiet(runtime, recorder):
    from engine_fixtures import run, wait_state

    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    start, end = EmptyStartEvent(), EmptyEndEvent()
    wait = ServiceActivity(component_code="t_callback")
    start.extend(wait).extend(end)
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, wait.id, "RUNNING")
    res = api.forced_fail_activity(runtime, wait.id, "stop", send_post_set_state_signal=False)
    assert res.result, res.message
    assert wait_state(runtime, wait.id, "FAILED")
    assert "FAILED" not in recorder.states_of(wait.id)
    assert any(e["node_id"] == wait.id for e in recorder.events_of("post_forced_fail_activity"))
