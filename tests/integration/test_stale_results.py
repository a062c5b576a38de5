"""A result of user code that arrives after another runner took its task over is dropped.

A runner hands out a component call, then loses its lease (a database outage stopped its
heartbeat); another runner claims the same task, runs the call again and moves on to the next
activity. When the first result finally comes back, it must not be applied to the activity the task
now stands on.
"""

from __future__ import annotations

from pathlib import Path

import components  # noqa: F401 - registers the t_echo component

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core import walker


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
