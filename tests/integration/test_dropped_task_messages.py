"""A task message that reaches a ``culm worker`` after its ``culm_task`` row was dropped.

The broker only carries task ids; the row is the work. A row is dropped when its work is done
(the last step of a task deletes it), when its pipeline is revoked, or when a node it drove was
moved on by an operator; a message for it may still be on its way: the relay re-published it, the
broker redelivered it after a lost acknowledgement, a timer's countdown ran out late. Such a
message must be dropped quietly: no user code run again, no state or history changed, no error
logged, no retry loop, and the worker goes on taking work. Every form of message a worker may meet
is sent: with the hint header (run, node, walk reads) a publisher of this culm adds to an execute,
without it (an older publisher), with its kind left out (the oldest one), as a schedule and as a
node timeout, and one naming a run this database never had.

Real workers, databases and brokers (the ``distributed_backend`` fixture).
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

import culm_dist_components  # noqa: F401 - the workers import it through CULM_IMPORTS
import pytest
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core.records import EXECUTE, SCHEDULE, TIMEOUT, TaskRecord
from culm.dispatch.celery import HINT_HEADER, TASK_NAME

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

COPIES = 5  # each stale message is sent this many times


def _tree() -> tuple[dict[str, Any], str]:
    start, act, end = EmptyStartEvent(), ServiceActivity(component_code="dist_callback"), EmptyEndEvent()
    start.extend(act).extend(end)
    return build_tree(start), act.id


def _recording(rt: Any) -> list[TaskRecord]:
    """The tasks ``rt`` publishes from now on (its dispatcher still publishes them)."""
    sent: list[TaskRecord] = []
    dispatcher = rt.dispatcher
    publish = dispatcher.submit

    def submit(tasks: Any) -> None:
        sent.extend(t for t in tasks if t is not None)
        publish(tasks)

    dispatcher.submit = submit
    return sent


def _state(rt: Any, node_id: str) -> dict[str, Any]:
    res = api.get_children_states(rt, node_id)
    assert res.result, res.message
    return res.data.get(node_id, {})


def _wait_state(rt: Any, node_id: str, state: str) -> dict[str, Any]:
    return wait_until(lambda: (st := _state(rt, node_id)).get("state") == state and st, 60, 0.1,
                      what=f"{node_id} to be {state}")


def _waiting_for_callback(backend: Any, rt: Any, act: str) -> dict[str, Any]:
    """The activity's state once its execute ran and it waits for its callback."""
    wait_until(lambda: backend.executions()[act] == 1, 60, 0.1, what=f"{act}'s execute")
    return _wait_state(rt, act, "RUNNING")


def _send_stale(rt: Any, tasks: list[TaskRecord]) -> int:
    """Send every message form of each task (see the module), COPIES times; how many were sent."""
    app, queue = rt.dispatcher.app, f"{rt.dispatcher.prefix}_execute"
    sent = 0
    for task in tasks:
        forms: list[tuple[list[Any], dict[str, Any] | None]] = [
            ([task.id, task.kind], None),
            ([task.id], None),
            ([task.id, TIMEOUT], None),
            ([task.id, SCHEDULE], None),
            ([task.id, EXECUTE], {HINT_HEADER: {"root": task.root_id, "node": task.node_id}}),
            ([task.id, EXECUTE], {HINT_HEADER: {"root": f"p{uuid.uuid4().hex}", "node": task.node_id,
                                                "walk": [[task.root_id], [task.node_id], [task.root_id]]}}),
        ]
        for _ in range(COPIES):
            for args, headers in forms:
                app.send_task(TASK_NAME, args=args, headers=headers, queue=queue, routing_key=queue)
                sent += 1
    return sent


def _queue_empty(rt: Any) -> bool:
    app, prefix = rt.dispatcher.app, rt.dispatcher.prefix
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for kind in ("execute", "schedule", "timer"):
            name = f"{prefix}_{kind}"
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
            except Exception:  # noqa: BLE001 - not declared: nothing in it
                continue
            if count:
                return False
    return True


def _errors(backend: Any) -> list[str]:
    found = []
    for i in range(len(backend.workers)):
        for line in backend.worker_log(i).splitlines():
            if any(word in line for word in ("ERROR", "CRITICAL", "Traceback", "raised", "database unavailable")):
                found.append(f"worker {i}: {line[:300]}")
    return found


def _rows(unit: Any, roots: list[str]) -> list[TaskRecord]:
    return [t for r in roots for kind in (EXECUTE, SCHEDULE, TIMEOUT) for t in unit.tasks_of_root(r, kind)]


def _histories(rt: Any, node_id: str) -> list[Any]:
    res = api.get_node_histories(rt, node_id)
    assert res.result, res.message
    return res.data


def test_messages_of_dropped_rows_are_dropped_quietly(distributed_backend: Any) -> None:
    backend = distributed_backend
    backend.ensure_workers(2)
    rt = backend.runtime()
    sent = _recording(rt)
    errors_before = _errors(backend)

    # Done: an execute and the schedule a callback made, both applied (their rows deleted).
    done_tree, done_act = _tree()
    assert api.run_pipeline(rt, done_tree).result
    version = _waiting_for_callback(backend, rt, done_act)["version"]
    assert api.callback(rt, done_act, version, {"n": 1}).result
    _wait_state(rt, done_tree["id"], "FINISHED")
    # Revoked: the activity waits for its callback when its pipeline is revoked.
    revoked_tree, revoked_act = _tree()
    assert api.run_pipeline(rt, revoked_tree).result
    _waiting_for_callback(backend, rt, revoked_act)
    assert api.revoke_pipeline(rt, revoked_tree["id"]).result
    _wait_state(rt, revoked_tree["id"], "REVOKED")

    kinds = collections.Counter((t.root_id, t.kind) for t in sent)
    assert kinds == {(done_tree["id"], EXECUTE): 1, (done_tree["id"], SCHEDULE): 1,
                     (revoked_tree["id"], EXECUTE): 1}, kinds
    roots = [done_tree["id"], revoked_tree["id"]]
    with rt.store.reading() as unit:
        assert _rows(unit, roots) == [], "the rows were dropped"
    before = {r: api.get_pipeline_states(rt, r).data[r] for r in roots}
    histories = {a: _histories(rt, a) for a in (done_act, revoked_act)}

    assert _send_stale(rt, sent) == len(sent) * 6 * COPIES
    wait_until(lambda: _queue_empty(rt), 60, 0.2, what="the workers to take every stale message")
    # Afterwards the workers still take work: a fresh pipeline runs to its end.
    after_tree, after_act = _tree()
    assert api.run_pipeline(rt, after_tree).result
    version = _waiting_for_callback(backend, rt, after_act)["version"]
    assert api.callback(rt, after_act, version, {"n": 2}).result
    _wait_state(rt, after_tree["id"], "FINISHED")

    runs = backend.executions()
    calls = backend.executions("callback")
    assert (runs[done_act], runs[revoked_act], runs[after_act]) == (1, 1, 1), runs
    assert (calls[done_act], calls[revoked_act], calls[after_act]) == (1, 0, 1), calls
    assert {r: api.get_pipeline_states(rt, r).data[r] for r in roots} == before
    assert {a: _histories(rt, a) for a in (done_act, revoked_act)} == histories
    with rt.store.reading() as unit:
        assert _rows(unit, roots) == [], "no row was made again"
    assert _errors(backend) == errors_before
    assert len(backend.alive()) == 2
