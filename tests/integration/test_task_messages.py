"""The ``culm.run_task`` message across versions: what a publisher of this culm adds (the
``culm_hint`` header: the task's run, node and walk reads) reaches a worker of an older culm as
the same call it always made (id, kind), and a message of an older publisher (no header) is read
as before. Real Celery (its in-memory broker and an in-process worker), real message encoding."""

from __future__ import annotations

import threading

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from support import wait_until

from culm.core.records import EXECUTE, SCHEDULE, TaskRecord
from culm.dispatch.celery import HINT_HEADER, TASK_NAME, CeleryDispatcher, make_celery_app, task_hint

pytestmark = pytest.mark.timeout(60)


class _Graphs:
    """An engine as far as a publisher asks it: the graph of a run it has compiled."""

    def __init__(self, graph):
        self.graph = graph

    def known_graph(self, root_id):
        return self.graph if self.graph is not None and root_id == self.graph.root_id else None


def _graph():
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
    from culm.model.compiled import compile_tree

    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
    return compile_tree(build_tree(start)), start.id


def test_a_worker_of_an_older_culm_takes_a_hinted_message_as_the_call_it_always_made():
    """The task as culm registered it before the header existed: ``(self, task_id, kind=None)``.
    Celery hands unknown headers to the request, never to the call: the old signature gets the
    id and kind it always got, and the header is there for a worker that reads it."""
    app = Celery("culm", broker="memory://", set_as_current=False)  # as an older culm's worker sets it up
    app.conf.update(task_serializer="json", accept_content=["json"], culm_prefix="msgs")
    calls: list[tuple[tuple, dict, object]] = []
    got = threading.Event()

    def old_run_task(self, task_id, kind=None):  # culm's Celery task before this branch
        calls.append(((task_id, kind), {}, getattr(self.request, HINT_HEADER, None)))
        got.set()

    # Celery adds every task made with app.task (shared by default) to each app it finalizes later:
    # culm's own, made by an earlier test's make_celery_app, took this name here in CI. Finalize,
    # drop it, make the old task now, and keep it from reaching other apps.
    app.finalize(auto=True)
    app.tasks.pop(TASK_NAME, None)
    app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True, shared=False, lazy=False)(
        old_run_task
    )
    assert getattr(app.tasks[TASK_NAME].run, "__func__", None) is old_run_task
    graph, start_id = _graph()
    dispatcher = CeleryDispatcher("", app=app)
    dispatcher.engine = _Graphs(graph)
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        loglevel="WARNING",
        queues=["msgs_execute", "msgs_schedule"],
    ):
        first = TaskRecord("t-1", EXECUTE, "p-1", start_id, graph.root_id)
        assert dispatcher.publish(first)
        wait_until(got.is_set, 20, 0.05, what="the old task to run")
        got.clear()
        assert dispatcher.publish(TaskRecord("t-2", SCHEDULE, "p-1", start_id, graph.root_id))
        wait_until(got.is_set, 20, 0.05, what="the old task to run again")
    (args, _, hint), (args2, _, hint2) = calls
    assert args == ("t-1", EXECUTE) and args2 == ("t-2", SCHEDULE)
    assert hint2 is None  # only execute tasks are walked
    assert task_hint(hint) == (
        graph.root_id,
        start_id,
        ([graph.root_id], graph.ahead_of_resume(start_id), [graph.root_id]),
    )


def test_a_message_of_an_older_publisher_or_a_hint_this_culm_cannot_read_is_taken_as_ids_only():
    assert task_hint(None) is None
    assert task_hint({"root": "r"}) is None
    assert task_hint({"root": "r", "node": 3}) is None
    assert task_hint({"root": "r", "node": "n"}) == ("r", "n", None)
    assert task_hint({"root": "r", "node": "n", "walk": [["a"], ["b"]]}) == ("r", "n", None)
    assert task_hint({"root": "r", "node": "n", "walk": [["a"], ["b"], [1]]}) == ("r", "n", None)
    assert task_hint({"root": "r", "node": "n", "walk": [["a"], ["b"] * 5000, []]}) == ("r", "n", None)
    assert task_hint({"root": "r", "node": "n", "walk": [["a"], ["b"], []]}) == ("r", "n", (["a"], ["b"], []))


def test_a_publisher_without_the_graph_names_the_run_and_node_only():
    graph, start_id = _graph()
    dispatcher = CeleryDispatcher("", app=make_celery_app("memory://", prefix="msgs2"))
    assert dispatcher._hint(TaskRecord("t", EXECUTE, "p", start_id, graph.root_id)) == {
        "root": graph.root_id,
        "node": start_id,
    }
    dispatcher.engine = _Graphs(graph)
    assert dispatcher._hint(TaskRecord("t", EXECUTE, "p", start_id, graph.root_id))["walk"] == [
        [graph.root_id],
        graph.ahead_of_resume(start_id),
        [graph.root_id],
    ]
    assert (
        dispatcher._hint(TaskRecord("t", EXECUTE, "", "", "")) is None
    )  # a bare id (the relay's drain, say)


def test_a_walk_too_big_for_one_frame_stays_out_of_the_header():
    """A wide parallel gateway with long ids: its walk's ids fit MAX_HINT_IDS but not one AMQP
    frame (RabbitMQ's 128 KiB), and a send that fails would fail again at every relay round."""
    import json

    from culm.builder import (
        ConvergeGateway,
        EmptyEndEvent,
        EmptyStartEvent,
        ParallelGateway,
        ServiceActivity,
        build_tree,
    )
    from culm.dispatch.celery import MAX_HINT_WALK_CHARS
    from culm.model.compiled import compile_tree

    start = EmptyStartEvent(id="s" + "x" * 60)
    fork, join = ParallelGateway(id="f" + "x" * 60), ConvergeGateway(id="j" + "x" * 60)
    branches = [
        ServiceActivity(id=f"a{i:03d}" + "x" * 59, component_code="example_component") for i in range(800)
    ]
    start.extend(fork).connect(*branches).converge(join).extend(EmptyEndEvent(id="e" + "x" * 60))
    graph = compile_tree(build_tree(start))
    dispatcher = CeleryDispatcher("", app=make_celery_app("memory://", prefix="msgs3"))
    dispatcher.engine = _Graphs(graph)
    hint = dispatcher._hint(TaskRecord("t", EXECUTE, "p", fork.id, graph.root_id))  # walks into 800 branches
    assert hint == {"root": graph.root_id, "node": fork.id}  # run and node only
    small = dispatcher._hint(TaskRecord("t", EXECUTE, "p", branches[0].id, graph.root_id))
    assert "walk" in small and len(json.dumps(small)) <= MAX_HINT_WALK_CHARS


def test_a_message_bounces_for_as_long_as_it_takes():
    """A worker without room (or without its database) sends the message back with a countdown,
    as often as it takes: Celery's default limit of 3 retries failed the fourth bounce (an ERROR
    and a traceback in the worker's log) and left the task to the relay's grace."""
    from celery.exceptions import Retry

    app = make_celery_app("memory://", prefix="culmbounce")
    task = app.tasks[TASK_NAME]
    task.push_request(id="bounced", args=["t1", EXECUTE], kwargs={}, retries=10, called_directly=False,
                      delivery_info={})
    try:
        with pytest.raises(Retry):
            task.retry(countdown=0.05, max_retries=None)  # what _run_task raises without room
    finally:
        task.pop_request()
