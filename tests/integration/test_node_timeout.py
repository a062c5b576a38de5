"""Node timeouts (an activity's ``timeout_config``) on every backend: SQLite, the memory store,
PostgreSQL + Redis and MariaDB + RabbitMQ with real workers.

A hung component is ``t_gate`` (execute) or ``t_poll_gate`` (its first poll), held at a gate the
test opens only at the end, so that the late result of the cut-off call comes back and is seen to
be discarded.
"""

from __future__ import annotations

import uuid
from typing import Any

import components
import pytest
from backends import BACKENDS, own_backend
from engine_fixtures import chain, node_state, outputs, refused, run, wait_idle, wait_pipeline, wait_state
from support import wait_until

import culm
from culm import api
from culm.builder import ServiceActivity, Var, build_tree
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(120)


def timed(code: str, seconds: int, action: str = "forced_fail", **inputs: Any) -> ServiceActivity:
    act = ServiceActivity(component_code=code,
                          timeout_config={"enable": True, "action": action, "seconds": seconds})
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return act


@pytest.fixture
def gate_name():
    """A gate of this test's own; opened at teardown so that no hung call outlives the test."""
    name = f"hang-{uuid.uuid4().hex[:8]}"
    yield name
    components.gate(name).set()


def timed_out(runtime: Any, node_id: str, seconds: int) -> dict[str, Any]:
    out = outputs(runtime, node_id)
    assert out["ex_data"].startswith(f"timed out after {seconds} s: node {node_id}"), out
    assert out["_timed_out"] is True
    return out


def nothing_changes(runtime: Any, root_id: str, after: int, seconds: float = 1.5) -> None:
    """No state of the pipeline changes for ``seconds`` (a bounded wait on the change feed)."""
    moved = [(c.node_id, c.from_state, c.to_state)
             for c in runtime.changes(root_id=root_id, after=after, timeout=seconds) if c.from_state != c.to_state]
    assert moved == []


def test_hung_execute_is_failed_at_its_deadline_and_its_late_result_discarded(runtime, gate_name):
    act = timed("t_gate", 1, gate=gate_name)
    tree = build_tree(chain(act))
    run(runtime, tree)

    entry = wait_state(runtime, act.id, "FAILED", timeout=20)
    timed_out(runtime, act.id, 1)
    assert entry["started_time"] is not None and (entry["archived_time"] - entry["started_time"]).total_seconds() >= 1

    late_result_changes_nothing(runtime, tree["id"], act.id, gate_name)


def late_result_changes_nothing(runtime, root_id, act_id, gate_name):
    """The hung call comes back after its timeout: its result ("late") is stale and changes nothing."""
    seq = runtime.last_change_seq()
    components.gate(gate_name).set()
    wait_idle(runtime)
    nothing_changes(runtime, root_id, seq)
    assert node_state(runtime, act_id)["state"] == "FAILED"
    assert "late" not in outputs(runtime, act_id)


def test_hung_poll_is_failed_at_its_deadline(runtime, gate_name):
    act = timed("t_poll_gate", 1, gate=gate_name)
    tree = build_tree(chain(act))
    run(runtime, tree)

    wait_state(runtime, act.id, "FAILED", timeout=20)
    timed_out(runtime, act.id, 1)
    late_result_changes_nothing(runtime, tree["id"], act.id, gate_name)


def test_poll_going_on_after_a_revoke_still_times_out_and_its_branch_ends(runtime, gate_name):
    # A revoke lets a poll go on (culm.core.revoking); its deadline stays: at the timeout it is
    # force-failed, not skipped (nothing may run after it), and its process ends.
    act = timed("t_poll_gate", 2, action="forced_fail_and_skip", gate=gate_name)
    after = ServiceActivity(component_code="t_echo")
    tree = build_tree(chain(act, after))
    run(runtime, tree)
    wait_until(lambda: "count" in outputs(runtime, act.id), what="execute to finish")
    assert api.revoke_pipeline(runtime, tree["id"]).result

    wait_state(runtime, act.id, "FAILED", timeout=20)
    timed_out(runtime, act.id, 2)
    components.gate(gate_name).set()
    wait_idle(runtime)
    assert node_state(runtime, act.id)["state"] == "FAILED"
    assert node_state(runtime, after.id) is None

    def ended() -> bool:  # the cut-off poll's task goes once its late result is dropped
        snap = read_snapshot(runtime.engine, tree["id"])
        return all(p.dead for p in snap.processes) and not snap.tasks

    wait_until(ended, what="every process and task to end")


def test_callback_that_never_comes_is_failed_and_skipped_and_the_pipeline_goes_on(runtime):
    act = timed("t_callback", 3, action="forced_fail_and_skip")
    after = ServiceActivity(component_code="t_echo")
    tree = build_tree(chain(act, after))
    run(runtime, tree)

    # While it waits, its wait reason says when it times out.
    def waiting() -> Any:
        root = api.get_pipeline_states(runtime, tree["id"]).data.get(tree["id"])
        return root and (root["children"].get(act.id) or {}).get("wait_reason")

    reason = wait_until(waiting, 10, what="the callback wait reason")
    assert reason["kind"] == "callback" and reason["deadline"] is not None
    started = node_state(runtime, act.id)["started_time"]
    assert abs((reason["deadline"] - started).total_seconds() - 3) < 0.01
    assert "times out at" in reason["text"]
    old_version = reason["version"]

    root = wait_pipeline(runtime, tree["id"], "FINISHED", timeout=20)
    entry = root["children"][act.id]
    assert entry["state"] == "FINISHED" and entry["skip"] is True
    assert root["children"][after.id]["state"] == "FINISHED"
    assert timed_out(runtime, act.id, 3)["ex_data"].endswith("skipped, the pipeline goes on")
    # The failed run is kept in the history before the skip; a callback for it now is refused.
    (history,) = api.get_node_histories(runtime, act.id).data
    assert history["version"] != entry["version"] and history["outputs"]["_timed_out"] is True
    refused(api.callback(runtime, act.id, old_version, {"ok": True}), act.id)


def test_fail_and_skip_of_an_unskippable_node_only_fails_it_and_says_why(runtime):
    act = timed("t_callback", 1, action="forced_fail_and_skip")
    act.skippable = False
    tree = build_tree(chain(act))
    run(runtime, tree)
    wait_state(runtime, act.id, "FAILED", timeout=20)
    assert timed_out(runtime, act.id, 1)["ex_data"].endswith("not skipped: the node is not skippable")
    assert node_state(runtime, tree["id"])["state"] == "RUNNING"


def test_retry_after_a_timeout_gets_a_fresh_deadline(runtime, gate_name):
    act = timed("t_gate", 1, gate=gate_name)
    tree = build_tree(chain(act))
    run(runtime, tree)
    first = wait_state(runtime, act.id, "FAILED", timeout=20)

    assert api.retry_node(runtime, act.id).result
    # The retried run hangs too and is failed again, one deadline after its own start.
    second = wait_until(lambda: (e := node_state(runtime, act.id))["state"] == "FAILED" and e["retry"] == 1 and e,
                        20, what="the retried run to time out")
    assert second["version"] != first["version"]
    assert (second["archived_time"] - second["started_time"]).total_seconds() >= 1
    timed_out(runtime, act.id, 1)

    # Once the component answers in time, a retry finishes and the pipeline with it.
    components.gate(gate_name).set()
    assert api.retry_node(runtime, act.id).result
    wait_pipeline(runtime, tree["id"], "FINISHED", timeout=20)
    assert outputs(runtime, act.id)["late"] == "result after release"
    # Both timed-out runs are in the history, each saying so.
    histories = api.get_node_histories(runtime, act.id).data
    assert [h["version"] for h in histories] == [first["version"], second["version"]]
    assert all(h["outputs"]["ex_data"].startswith("timed out after 1 s") for h in histories)


def test_a_node_that_finishes_before_its_deadline_is_left_alone(runtime, gate_name):
    in_time = timed("t_echo", 1, x="in time")
    hung = timed("t_gate", 2, gate=gate_name)
    tree = build_tree(chain(in_time, hung))
    run(runtime, tree)
    entry = wait_state(runtime, in_time.id, "FINISHED", timeout=20)

    # The next node times out 2 s after it started: by then the first node's deadline (1 s after
    # its start) has long passed, and it changed nothing.
    wait_state(runtime, hung.id, "FAILED", timeout=20)
    timed_out(runtime, hung.id, 2)
    now = node_state(runtime, in_time.id)
    assert now["state"] == "FINISHED" and now["version"] == entry["version"]
    out = outputs(runtime, in_time.id)
    assert out["out"] == "in time!" and "ex_data" not in out and "_timed_out" not in out


@pytest.mark.parametrize(("config", "field"), [
    ({"enable": True, "action": "forced_fail", "seconds": 0}, "timeout_config.seconds"),
    ({"enable": True, "action": "forced_fail", "seconds": 2.5}, "timeout_config.seconds"),
    ({"enable": True, "action": "forced_fail", "seconds": "5"}, "timeout_config.seconds"),
    ({"enable": True, "action": "explode", "seconds": 5}, "timeout_config.action"),
    ({"enable": "yes", "action": "forced_fail", "seconds": 5}, "timeout_config.enable"),
])
def test_a_bad_timeout_config_is_refused_naming_node_and_field(runtime, config, field):
    act = ServiceActivity(component_code="t_echo")
    tree = build_tree(chain(act))
    tree["activities"][act.id]["timeout_config"] = config  # as a JSON tree gives it
    refused(api.run_pipeline(runtime, tree), act.id, field)
    assert api.get_pipeline_states(runtime, tree["id"]).data == {}


@pytest.mark.parametrize("name", list(BACKENDS))
def test_deadlines_fire_while_every_worker_thread_hangs(name, tmp_path, gate_name):
    """A deadline runs no user code: it must not wait for room that the hung calls hold."""
    # 2 pool processes, each with 1 thread and room for 1 task on hand: 2 hung calls fill them.
    backend = own_backend(name, tmp_path, env={"CULM_WORKER_THREADS": "1", "CULM_WORKER_BACKLOG": "1"})
    try:
        backend.start_workers(1)
        runtime = backend.runtime()
        acts = [timed("t_gate", 2, gate=gate_name) for _ in range(2)]
        for act in acts:
            run(runtime, build_tree(chain(act)))
        for act in acts:
            wait_state(runtime, act.id, "FAILED", timeout=40)
            timed_out(runtime, act.id, 2)
    finally:
        components.gate(gate_name).set()
        backend.teardown()


def hung_then_next(runtime: Any, gate_name: str, within: float, operator: bool = False) -> ServiceActivity:
    """Start a call that hangs (its node times out after 1 s, or with ``operator`` the test
    force-fails it, from this process), then another pipeline, which must finish ``within``
    seconds (the hung call gives up only after 15 s); returns the hung node."""
    hung = timed("t_gate", 60 if operator else 1, gate=gate_name)
    run(runtime, build_tree(chain(hung)))
    wait_state(runtime, hung.id, "RUNNING")
    if operator:
        assert api.forced_fail_activity(runtime, hung.id, ex_data="stuck").result
    second = build_tree(chain(ServiceActivity(component_code="t_echo")))
    run(runtime, second)
    wait_pipeline(runtime, second["id"], "FINISHED", timeout=within)
    assert node_state(runtime, hung.id)["state"] == "FAILED"
    return hung


@pytest.mark.parametrize("operator", [False, True], ids=["timeout", "forced_fail"])
def test_worker_takes_back_the_room_of_a_timed_out_call(tmp_path, gate_name, operator):
    """``culm worker --concurrency 1`` with one user-code thread, held by a call that does not
    return: once its node times out, the worker has room again and the next pipeline's component
    runs there (on a thread started in its place), long before the call ends. Likewise when
    another process cut the call off (an operator's forced fail here; a deadline that another
    worker process fired): the worker finds its run moved on in the database."""
    backend = own_backend("postgres-redis", tmp_path, env={"CULM_WORKER_THREADS": "1"})
    backend.concurrency = 1
    try:
        backend.start_workers(1)
        runtime = backend.runtime()
        hung = hung_then_next(runtime, gate_name, within=10, operator=operator)
        components.gate(gate_name).set()
        third = build_tree(chain(ServiceActivity(component_code="t_echo")))
        wait_pipeline(runtime, run(runtime, third), "FINISHED")  # the late call came back; room is right
        assert "late" not in outputs(runtime, hung.id)
    finally:
        components.gate(gate_name).set()
        backend.teardown()


def test_embedded_runtime_takes_back_the_thread_of_a_timed_out_call(tmp_path, gate_name):
    """One user-code thread, held by a call that does not return: once its node times out, the
    next pipeline's components run (on a thread started in its place), long before the call ends."""
    with culm.Runtime(f"sqlite:///{tmp_path}/one.db", workers=1) as runtime:
        hung = hung_then_next(runtime, gate_name, within=8)
        components.gate(gate_name).set()
        assert runtime.wait_idle(10)  # the late call came back, its result discarded
        assert "late" not in outputs(runtime, hung.id)
        third = build_tree(chain(ServiceActivity(component_code="t_echo")))
        wait_pipeline(runtime, run(runtime, third), "FINISHED")


def test_a_poll_call_kept_at_the_bound_is_let_go_of_once_there_is_room_and_counted(tmp_path):
    """A poll's call cut off at the bound kept its thread for as long as it ran: only executes were
    looked up again. Now a schedule call whose schedule is no longer its node's RUNNING run is let
    go of at the next sweep once there is room, and shows in abandoned_calls() and in the
    ``culm_abandoned_threads`` gauge of the Prometheus metrics."""
    from prometheus_client import CollectorRegistry

    from culm.web.metrics import HOST, EngineMetrics

    first, second = (f"hang-{uuid.uuid4().hex[:8]}" for _ in range(2))
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    metrics.install()

    def gauge() -> float | None:
        return registry.get_sample_value("culm_abandoned_threads", {"hostname": HOST})

    try:
        with culm.Runtime(f"sqlite:///{tmp_path}/cap.db", workers=2) as runtime:
            run(runtime, build_tree(chain(ServiceActivity(component_code="t_echo"))))  # starts the threads
            dispatcher = runtime.dispatcher
            dispatcher.max_abandoned = 1
            assert gauge() == 0
            hung, poll = timed("t_gate", 1, gate=first), timed("t_poll_gate", 1, gate=second)
            for act in (hung, poll):
                run(runtime, build_tree(chain(act)))
                wait_state(runtime, act.id, "FAILED", timeout=20)
                timed_out(runtime, act.id, 1)
            wait_until(lambda: [c[0] for c in dispatcher.abandoned_calls()] == [hung.id] and gauge() == 1, 10,
                       what="the execute's thread to be let go of")
            components.gate(first).set()  # the execute returns: room for the poll's call
            wait_until(lambda: [c[0] for c in dispatcher.abandoned_calls()] == [poll.id] and gauge() == 1, 10,
                       what="the poll call's thread to be let go of")
            # the operator retries the failed poll: it runs on a thread of the pool again
            components.gate(second).set()
            assert api.retry_node(runtime, poll.id).result
            wait_state(runtime, poll.id, "FINISHED", timeout=20)
            wait_until(lambda: dispatcher.abandoned_calls() == [] and gauge() == 0, 10,
                       what="the cut-off poll call to return")
    finally:
        metrics.uninstall()
        components.gate(first).set()
        components.gate(second).set()


def test_threads_left_to_cut_off_calls_are_bounded_and_named(tmp_path, caplog):
    """Each timed-out call that never returns used to leave one more thread running, for ever. Past
    ``max_abandoned`` such threads, a cut-off call keeps its own thread (the log names it) until
    one of them returns; then the next sweep lets go of it."""
    first, second = (f"hang-{uuid.uuid4().hex[:8]}" for _ in range(2))
    try:
        with culm.Runtime(f"sqlite:///{tmp_path}/cap.db", workers=2) as runtime:
            run(runtime, build_tree(chain(ServiceActivity(component_code="t_echo"))))  # starts the threads
            dispatcher = runtime.dispatcher
            dispatcher.max_abandoned = 1
            hung = [timed("t_gate", 1, gate=name) for name in (first, second)]
            for act in hung:
                run(runtime, build_tree(chain(act)))
                wait_state(runtime, act.id, "FAILED", timeout=20)
                timed_out(runtime, act.id, 1)
            wait_until(lambda: "keeps its user-code thread" in caplog.text, what="the warning at the bound")
            assert f"node {hung[1].id} timed out" in caplog.text and hung[0].id in caplog.text
            # one thread let go of; the second call, still running, kept its own (it is not listed)
            assert [c[0] for c in dispatcher.abandoned_calls()] == [hung[0].id]
            third = build_tree(chain(ServiceActivity(component_code="t_echo")))
            wait_pipeline(runtime, run(runtime, third), "FINISHED")  # one thread is still free
            components.gate(first).set()  # the first cut-off call returns: room to let go of the second
            wait_until(lambda: [c[0] for c in dispatcher.abandoned_calls()] == [hung[1].id], 10,
                       what="the second cut-off call's thread to be let go of")
            components.gate(second).set()
            assert runtime.wait_idle(10)
            assert [c[0] for c in dispatcher.abandoned_calls()] == []
    finally:
        components.gate(first).set()
        components.gate(second).set()
