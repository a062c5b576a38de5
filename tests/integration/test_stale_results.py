"""A result of user code that arrives after another runner took its task over is dropped.

A runner hands out a component call, then loses its lease (a database outage stopped its
heartbeat); another runner claims the same task, runs the call again and moves on to the next
activity. When the first result finally comes back, it must not be applied to the activity the task
now stands on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import components  # noqa: F401 - registers the t_echo component
import pytest
from backends import create_database, drop_database

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core import walker
from culm.core.invariants import check
from culm.core.snapshots import read_snapshot
from culm.storage import migrate
from culm.storage.sql import SqlUnit


def _step(engine, task_id, pending, *, claim):
    with engine.step() as step:
        return walker.execute_step(engine, step, task_id, pending, claim=claim)


def test_result_of_a_taken_over_call_is_not_applied_to_the_next_activity(tmp_path: Path) -> None:
    start, first, second, end = (EmptyStartEvent(), ServiceActivity(component_code="t_echo"),
                                 ServiceActivity(component_code="t_echo"), EmptyEndEvent())
    start.extend(first).extend(second).extend(end)
    tree = build_tree(start)
    with culm.Runtime(f"sqlite:///{tmp_path}/stale.db", workers=0) as rt:
        assert api.run_pipeline(rt, tree).result
        with rt.store.reading() as unit:
            (task,) = unit.pending_tasks(float("inf"), 10)
        engine = rt.engine

        # Runner A walks to the first activity and hands out its call.
        stale = _step(engine, task.id, None, claim=True)
        assert stale is not None and stale.node_id == first.id
        stale_result = walker.call_user_code(stale)

        # A's lease runs out; runner B claims the task, runs the same call and moves on.
        with rt.store.transaction() as unit:
            unit.release_leases([task.id])
        again = _step(engine, task.id, None, claim=True)
        assert again is not None and again.node_id == first.id
        following = _step(engine, task.id, (again, walker.call_user_code(again)), claim=False)
        assert following is not None and following.node_id == second.id

        # A's result comes back: dropped, the second activity still waits for B's call.
        assert _step(engine, task.id, (stale, stale_result), claim=False) is None
        st = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["children"]
        assert st[first.id]["state"] == "FINISHED"
        assert st[second.id]["state"] == "RUNNING"

        # B finishes the run; the first activity finished once (no history of a second finish).
        assert _step(engine, task.id, (following, walker.call_user_code(following)), claim=False) is None
        st = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]
        assert st["state"] == "FINISHED"
        assert api.get_node_histories(rt, first.id).data == []


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/stale.db"
        return
    url = create_database(request.param)
    migrate.upgrade_database(url)
    yield url
    drop_database(url)


def test_a_stale_copy_of_a_task_does_not_delete_the_row_that_moved_on(db_url: str, monkeypatch: Any) -> None:
    """Two runners hold results for the same task and node version (A's lease ran out, B took the
    task over and ran the call again). B applies its result and moves the row on to the next
    activity. A's step read the row before B's commit (on MariaDB the row is read before the
    node's state is locked; on PostgreSQL in the statement that waits for that lock), then finds
    the node FINISHED: its result is stale. It used to delete the row as it read it, which was by
    then B's live task: the process stayed awake at the next activity, RUNNING, with no task
    (the storm test's stranded pipeline on MariaDB)."""
    start, first, second, end = (EmptyStartEvent(), ServiceActivity(component_code="t_echo"),
                                 ServiceActivity(component_code="t_echo"), EmptyEndEvent())
    start.extend(first).extend(second).extend(end)
    tree = build_tree(start)
    with culm.Runtime(db_url, workers=0) as rt:
        assert api.run_pipeline(rt, tree).result
        with rt.store.reading() as unit:
            (task,) = unit.pending_tasks(time.time() + 3600, 10)
        engine = rt.engine
        a_call = _step(engine, task.id, None, claim=True)
        with rt.store.transaction() as unit:
            unit.release_leases([task.id])  # A's lease runs out
        b_call = _step(engine, task.id, None, claim=True)  # B takes the task over: the same call
        assert (a_call.node_id, a_call.version) == (b_call.node_id, b_call.version) == (first.id, a_call.version)
        a_result, b_result = walker.call_user_code(a_call), walker.call_user_code(b_call)

        # A's step reads the row (still at the first activity) ...
        with rt.store.transaction() as unit:
            as_read = unit.task_with_process(task.id)
        # ... then B's step commits: the first activity finished, the row drives the second.
        following = _step(engine, task.id, (b_call, b_result), claim=False)
        assert following is not None and following.node_id == second.id
        # A's step goes on with what it read: the first activity is FINISHED, its result stale.
        reads = iter([as_read])
        monkeypatch.setattr(SqlUnit, "task_with_process", lambda self, task_id, lease=None, held=False: next(reads))
        assert _step(engine, task.id, (a_call, a_result), claim=False) is None
        monkeypatch.undo()

        snap = read_snapshot(engine, tree["id"])
        assert [(t.id, t.node_id) for t in snap.tasks] == [(task.id, second.id)], "B's row must stay"
        assert check(snap) == []
        assert _step(engine, task.id, (following, walker.call_user_code(following)), claim=False) is None
        assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
        assert api.get_node_histories(rt, first.id).data == []
