"""A fork's children walked in the transaction that forks (``commit_batch(walk_forks=...)``, what a
``culm worker`` does while it has room): their tasks are written claimed by the runner, their
walks' reads go with the forking walk's and their first activities' code comes out of the same
commit; nothing else changes: the rows are those a claim of the children's tasks would have left,
a runner that dies after the commit leaves them to another (each child's activity runs again, with
its version, once), and a runner without room makes follow-up tasks as before."""

from __future__ import annotations

import pytest
from backends import fresh_store
from driver_log import round_trips
from kept_tasks import Held

from culm.core.engine import Engine
from culm.core.loop import Item, commit_batch
from culm.core.records import TaskRecord
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["postgres", "mariadb"])
def store(request):
    yield from fresh_store(request.param)


def _forking_run(store: SqlStore) -> tuple[TaskRecord, str, list[str]]:
    """start -> activity -> parallel gateway (3 activities) -> converge -> end, started: its first
    task (kept, not run), its id and the ids of the three branches' activities."""
    import culm
    from culm import api, builder

    held = Held()
    rt = culm.Runtime(store.url, workers=0)
    try:
        rt.engine.dispatcher = held
        branches = [builder.ServiceActivity(component_code="example_component") for _ in range(3)]
        start, pg, cg = builder.EmptyStartEvent(), builder.ParallelGateway(), builder.ConvergeGateway()
        start.extend(builder.ServiceActivity(component_code="example_component")).extend(pg).connect(
            *branches).converge(cg).extend(builder.EmptyEndEvent())
        tree = builder.build_tree(start)
        assert api.run_pipeline(rt, tree).result
    finally:
        rt.close()
    (task,) = held.tasks
    return task, tree["id"], [b.id for b in branches]


def _at_the_fork(store: SqlStore, engine: Engine, monkeypatch, takes) -> tuple[object, list[str]]:
    """Run the first activity and apply its result in a batch that reaches the fork, the runner
    answering ``takes`` when asked about the children; what committed, and that batch's round trips."""
    task, _, _ = _forking_run(store)
    (call,) = commit_batch(engine, [Item(task)]).calls
    back = call.returned(call.run())
    asked: list[int] = []

    def walk_forks(tasks):
        asked.append(len(tasks))
        return takes

    trips = round_trips(store.dialect, monkeypatch)
    committed = commit_batch(engine, [back], walk_forks=walk_forks)
    monkeypatch.undo()
    assert asked == [3]
    return committed, trips


def test_a_forks_children_are_walked_in_the_transaction_that_forks(store, monkeypatch):
    held = Held()
    engine = Engine(store, held)
    committed, trips = _at_the_fork(store, engine, monkeypatch, True)
    # The children's reads went with the forking walk's: claim with reads, writes with the commit.
    assert len(trips) == 2, "\n".join(trips)
    assert committed.tasks == [] and held.tasks == []  # no follow-up: nothing to claim or publish
    assert len(committed.calls) == 3 and sorted(committed.forked) == sorted(c.task.id for c in committed.calls)
    with store.reading() as unit:
        nodes = {c.task.id: unit.get_task(c.task.id).node_id for c in committed.calls}
        leases = {unit.task_lease(task_id)[0] for task_id in committed.forked}
        assert {unit.get_state(node).name for node in nodes.values()} == {"RUNNING"}
    assert leases == {engine.owner}  # claimed by this runner, as its claim would have left them
    assert {c.node_id for c in committed.calls} == set(nodes.values())

    # Their results applied: the last one wakes the parent, whose walk ends the run.
    back = [call.returned(call.run()) for call in committed.calls]
    joined = commit_batch(engine, back, walk_forks=lambda tasks: True)
    assert joined.calls == [] and len(joined.tasks) == 1
    assert commit_batch(engine, [Item(joined.tasks[0])]).calls == []
    with store.reading() as unit:
        assert unit.get_state(committed.calls[0].task.root_id).name == "FINISHED"
        assert unit.pending_tasks(10**10, 10) == []


def test_a_runner_without_room_makes_follow_up_tasks(store, monkeypatch):
    held = Held()
    engine = Engine(store, held)
    committed, _ = _at_the_fork(store, engine, monkeypatch, False)
    assert committed.calls == [] and committed.forked == [] and len(committed.tasks) == 3
    with store.reading() as unit:
        assert {unit.task_lease(t.id)[0] for t in committed.tasks} == {None}  # anyone's to claim
    claimed = commit_batch(engine, [Item(t) for t in committed.tasks])
    assert len(claimed.calls) == 3


def test_children_of_a_runner_that_died_after_the_commit_run_once_elsewhere(store, monkeypatch):
    """A kill -9 after the fork's commit: the relay frees the dead runner's leases and hands the
    children's tasks out; another runner runs each child's activity again, with the version the
    dead runner's commit gave it, and the run ends as it would have."""
    first = Engine(store, Held())
    committed, _ = _at_the_fork(store, first, monkeypatch, True)
    versions = {c.task.id: c.item.invoke.version for c in committed.calls}
    with store.transaction() as unit:  # what a relay does for a runner it found dead
        unit.release_leases(committed.forked)
        rows = [unit.get_task(task_id) for task_id in committed.forked]
    other = Engine(store, Held())
    again = commit_batch(other, [Item(t) for t in rows])
    assert {c.task.id: c.item.invoke.version for c in again.calls} == versions  # the same runs, replayed
    assert commit_batch(first, [c.returned(c.run()) for c in committed.calls]).calls == []  # the dead one's: dropped
    with store.reading() as unit:
        assert {unit.get_state(c.node_id).name for c in again.calls} == {"RUNNING"}
    joined = commit_batch(other, [c.returned(c.run()) for c in again.calls])
    assert commit_batch(other, [Item(t) for t in joined.tasks]).calls == []
    with store.reading() as unit:
        assert unit.get_state(rows[0].root_id).name == "FINISHED"


def test_a_batch_replayed_task_by_task_forks_as_before(store, monkeypatch):
    """A batch that fails is replayed with a savepoint per task: there, a fork's children are
    follow-up tasks (nothing of the failed pass was committed, the children's walks included)."""
    from culm.core import loop

    engine = Engine(store, Held())
    task, _, _ = _forking_run(store)
    (call,) = commit_batch(engine, [Item(task)]).calls
    back = call.returned(call.run())
    walked = loop.walker.walk_forked
    passes: list[int] = []

    def fails_once(*args, **kwargs):
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("a child's walk fails in the first pass")
        return walked(*args, **kwargs)

    monkeypatch.setattr(loop.walker, "walk_forked", fails_once)
    committed = commit_batch(engine, [back], walk_forks=lambda tasks: True)
    monkeypatch.undo()
    assert passes == [1]  # the replay walked no child
    assert committed.calls == [] and committed.forked == [] and len(committed.tasks) == 3
    assert len(commit_batch(engine, [Item(t) for t in committed.tasks]).calls) == 3
