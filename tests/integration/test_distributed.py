"""The distributed runtime end to end: real databases, real brokers, real ``culm worker`` processes.

Runs once per backend of the ``distributed_backend`` fixture (PostgreSQL + Redis, MariaDB +
RabbitMQ), each with two workers started by the fixture. Components come from
``culm_dist_components``, which the workers import through ``CULM_IMPORTS``.
"""

from __future__ import annotations

import collections
from typing import Any

import culm_dist_components  # noqa: F401 - the test process builds trees with the same codes
import pytest
from support import wait_until

import culm
from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]


def _activity(code: str, seconds: float = 0.0) -> ServiceActivity:
    act = ServiceActivity(component_code=code)
    if code == "dist_sleep":
        act.component.inputs.seconds = Var(type=Var.PLAIN, value=seconds)
    return act


def parallel_tree(seconds: float = 0.0) -> tuple[dict[str, Any], list[str]]:
    """start → parallel gateway → 3 branches of 2 activities → converge → end."""
    start, fork, join, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    heads, acts = [], []
    for _ in range(3):
        first, second = _activity("dist_sleep", seconds), _activity("dist_sleep", seconds)
        first.extend(second).extend(join)
        heads.append(first)
        acts += [first.id, second.id]
    start.extend(fork).connect(*heads)
    join.extend(end)
    return build_tree(start), acts


def single_tree(code: str, seconds: float = 0.0) -> tuple[dict[str, Any], str]:
    start, act, end = EmptyStartEvent(), _activity(code, seconds), EmptyEndEvent()
    start.extend(act).extend(end)
    return build_tree(start), act.id


def states(rt: Any, root_id: str) -> dict[str, Any]:
    res = api.get_pipeline_states(rt, root_id)
    assert res.result, res.message
    return res.data.get(root_id, {})


def wait_finished(rt: Any, root_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = states(rt, root_id)
        return st if st.get("state") == "FINISHED" else None

    try:
        return wait_until(done, timeout, 0.1, what=f"pipeline {root_id} to finish")
    except AssertionError:
        st = states(rt, root_id)
        summary = {k: v["state"] for k, v in st.get("children", {}).items()}
        raise AssertionError(f"pipeline {root_id} is {st.get('state')}; nodes: {summary}") from None


def test_parallel_pipeline_runs_each_activity_once(distributed_backend):
    rt = distributed_backend.runtime()
    tree, acts = parallel_tree()
    assert api.run_pipeline(rt, tree).result
    st = wait_finished(rt, tree["id"])
    assert {st["children"][a]["state"] for a in acts} == {"FINISHED"}
    assert len(st["children"]) == 10  # start, gateway, 6 activities, converge, end
    executions = distributed_backend.executions()
    assert {a: executions[a] for a in acts} == {a: 1 for a in acts}


def test_work_is_shared_between_workers(distributed_backend):
    rt = distributed_backend.runtime()
    trees = [parallel_tree(0.2) for _ in range(3)]
    for tree, _ in trees:
        assert api.run_pipeline(rt, tree).result
    pids = set()
    for tree, acts in trees:
        wait_finished(rt, tree["id"])
        pids |= {api.get_execution_data_outputs(rt, a).data["pid"] for a in acts}
    # two workers x two pool processes: more than one process took part
    assert len(pids) > 1


def _head_starts(backend: Any, heads: list[Any]) -> dict[str, tuple[int, float]]:
    """Process id and start time of each head's execute, from the workers' execution log."""
    ids = {h.id for h in heads}
    started = {}
    for line in backend.exec_log.read_text().splitlines():
        kind, node_id, pid, at = line.split()
        if kind == "execute" and node_id in ids:
            started[node_id] = (int(pid), float(at))
    return started


def test_branches_of_one_pipeline_run_at_the_same_time(distributed_backend):
    """Branches kept by the worker that forked them run on its threads side by side."""
    backend = distributed_backend
    backend.ensure_workers(2)
    rt = backend.runtime()
    start, fork, join, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    heads = [_activity("dist_sleep", 1.5) for _ in range(3)]
    start.extend(fork).connect(*heads).to(fork).converge(join).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"])
    started = _head_starts(backend, heads)
    assert len(started) == 3
    times = [at for _, at in started.values()]
    assert max(times) - min(times) < 1.0, started  # all began before the first one ended


def test_slow_branches_beyond_a_process_threads_go_to_other_workers(distributed_backend):
    """Once its calls are slow, a process keeps only as many branches as it has threads (8) and
    publishes the rest, which idle processes take at once."""
    backend = distributed_backend
    backend.ensure_workers(2)
    rt = backend.runtime()
    start, fork, join, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    warm = _activity("dist_sleep", 0.3)  # the forking process learns that its calls are slow
    heads = [_activity("dist_sleep", 1.5) for _ in range(12)]
    start.extend(warm).extend(fork).connect(*heads).to(fork).converge(join).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"])
    started = _head_starts(backend, heads)
    assert len(started) == 12
    per_pid = collections.Counter(pid for pid, _ in started.values())
    assert len(per_pid) > 1 and max(per_pid.values()) <= 8, per_pid
    times = [at for _, at in started.values()]
    assert max(times) - min(times) < 1.4, started  # none waited for a call to end (1.5 s)


def test_component_longer_than_a_lease_runs_once(distributed_backend):
    """The heartbeat keeps the lease of a running task: the relay does not hand it to another."""
    rt = distributed_backend.runtime()
    tree, act = single_tree("dist_sleep", 5.0)  # the workers' lease is 3 s, relay grace 2 s
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"])
    assert distributed_backend.executions()[act] == 1


def test_poll_component_finishes_after_three_polls(distributed_backend):
    rt = distributed_backend.runtime()
    tree, act = single_tree("dist_poll")
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"])
    assert api.get_execution_data_outputs(rt, act).data["polls"] == 3
    assert distributed_backend.executions("poll")[act] == 3
    assert distributed_backend.executions()[act] == 1


def test_poll_interval_goes_through_the_timer_queue(distributed_backend):
    rt = distributed_backend.runtime()
    tree, act = single_tree("dist_slow_poll")
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"])
    assert distributed_backend.executions("poll")[act] == 3


def test_work_whose_publish_failed_is_relayed(distributed_backend):
    """The outbox: a submitter that committed but could not reach the broker loses nothing."""
    backend = distributed_backend
    scheme = backend.broker_url.split("://", 1)[0]
    dead_broker = f"{scheme}://guest:guest@127.0.0.1:9//"
    rt = culm.Runtime(backend.db_url, broker=dead_broker, prefix=backend.prefix,
                      broker_connection_timeout=0.5)
    try:
        # `culm run` and `culm serve` print the runtime: never the broker's password.
        assert f"broker='{scheme}://guest:***@127.0.0.1:9//'" in repr(rt) and "guest:guest" not in repr(rt)
        tree, acts = parallel_tree()
        assert api.run_pipeline(rt, tree).result
    finally:
        rt.close()
    st = wait_finished(backend.runtime(), tree["id"])
    assert {st["children"][a]["state"] for a in acts} == {"FINISHED"}
    assert all(backend.executions()[a] == 1 for a in acts)


def test_messages_of_an_older_publisher_are_run(distributed_backend):
    """A message as culm sent it before the ``culm_hint`` header (its task's id and kind, or, older
    still, its id alone: a submitter or a relay of an earlier version) is run as every other; the
    pipelines' follow-ups go out as this version sends them."""
    from culm.core.records import now
    from culm.dispatch.celery import TASK_NAME

    rt = distributed_backend.runtime()
    dispatcher = rt.engine.dispatcher
    kept: list[Any] = []

    class Keep:  # the runtime stores the runs; their first messages are sent below, the old way
        submit = staticmethod(kept.extend)

        def submitting(self) -> Any:
            return dispatcher.submitting()

    rt.engine.dispatcher = Keep()
    try:
        trees = [parallel_tree(), parallel_tree()]
        for tree, _ in trees:
            assert api.run_pipeline(rt, tree).result
    finally:
        rt.engine.dispatcher = dispatcher
    assert len(kept) == 2
    for task, args in zip(kept, ([kept[0].id, kept[0].kind], [kept[1].id]), strict=True):
        queue = dispatcher.queue_for(task, now())[0]
        dispatcher.app.send_task(TASK_NAME, args=args, queue=queue, routing_key=queue)
    for tree, acts in trees:
        st = wait_finished(rt, tree["id"])
        assert {st["children"][a]["state"] for a in acts} == {"FINISHED"}
    executions = distributed_backend.executions()
    assert all(executions[a] == 1 for _, acts in trees for a in acts)


def test_callback_component_is_finished_by_a_callback(distributed_backend):
    rt = distributed_backend.runtime()
    tree, act = single_tree("dist_callback")
    assert api.run_pipeline(rt, tree).result

    def delivered() -> bool:
        st = states(rt, tree["id"]).get("children", {}).get(act)
        if not st or st["state"] != "RUNNING":
            return False
        return api.callback(rt, act, st["version"], {"answer": 42}).result

    wait_until(delivered, 30, 0.1, what="the callback to be accepted")
    wait_finished(rt, tree["id"])
    assert api.get_execution_data_outputs(rt, act).data["received"] == {"answer": 42}
    assert distributed_backend.executions("callback")[act] == 1


def test_stopped_worker_lets_running_work_finish(distributed_backend):
    """A warm shutdown lets the component on hand finish and hands its follow-up to other workers:
    nothing runs twice, nothing waits for a lease to run out."""
    backend = distributed_backend
    backend.ensure_workers(2)
    rt = backend.runtime()
    start, slow, after, end = EmptyStartEvent(), _activity("dist_sleep", 2.0), _activity("dist_sleep"), EmptyEndEvent()
    start.extend(slow).extend(after).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    wait_until(lambda: backend.executions()[slow.id], 30, 0.02, what="the slow activity to start")
    try:
        for index in backend.alive():
            backend.stop_worker(index)
        assert states(rt, tree["id"])["children"][slow.id]["state"] == "FINISHED"
        backend.ensure_workers(2)
        st = wait_finished(rt, tree["id"], timeout=30)
        assert st["children"][after.id]["state"] == "FINISHED"
        assert backend.executions()[slow.id] == 1
        assert backend.executions()[after.id] == 1
    finally:
        backend.ensure_workers(2)


def test_killed_worker_loses_no_node(distributed_backend):
    backend = distributed_backend
    backend.ensure_workers(2)
    rt = backend.runtime()
    tree, acts = parallel_tree(0.5)
    assert api.run_pipeline(rt, tree).result

    def mid_run() -> bool:
        return any(backend.executions()[a] for a in acts)

    wait_until(mid_run, 30, 0.02, what="the first activity to start")
    victim = backend.alive()[0]
    backend.kill_worker(victim)
    try:
        st = wait_finished(rt, tree["id"], timeout=90)
        assert {st["children"][a]["state"] for a in acts} == {"FINISHED"}
        executions = backend.executions()
        # An execute cut short by the kill runs again; nothing runs more than twice, nothing is lost.
        counts = [executions[a] for a in acts]
        assert all(1 <= n <= 2 for n in counts), counts
        # Each activity finished exactly once: no node was re-entered (which would add a history).
        for a in acts:
            assert api.get_node_histories(rt, a).data == []
            assert st["children"][a]["loop"] == 1
    finally:
        backend.ensure_workers(2)
