"""A runner applies a user-code result only while it still holds the task.

Runner A hands out an activity's call and its lease runs out (a database outage stopped its
heartbeat) while the call runs. Two interleavings follow, driven here step by step with two lease
owners on one database:

* nobody took the task over: A takes the lease again as it applies the result, so a runner that
  sweeps the task now cannot claim it and run the *next* activity a second time;
* runner B took it over (and replays the call, as the contract allows after a lost lease): A's
  result is dropped without touching the node; B's result is the one applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import components  # noqa: F401 - registers the t_echo component
import pytest
from backends import embedded_runtime_on

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.core import loop, walker
from culm.core.records import now

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[culm.Runtime]:
    with embedded_runtime_on(request.param, tmp_path / "lease.db") as rt:
        yield rt


def _step(rt: culm.Runtime, runner: str, task_id: str, pending: Any, *, claim: bool) -> Any:
    """One engine step of ``task_id`` as ``runner`` (its lease owner) takes it."""
    rt.engine.owner = runner
    with rt.engine.step() as step:
        return walker.execute_step(rt.engine, step, task_id, pending, claim=claim)


def _start(rt: culm.Runtime) -> tuple[dict, str, str, str]:
    start, first, second, end = (EmptyStartEvent(), ServiceActivity(component_code="t_echo"),
                                 ServiceActivity(component_code="t_echo"), EmptyEndEvent())
    start.extend(first).extend(second).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    with rt.store.reading() as unit:
        (task,) = unit.pending_tasks(now() + 3600, 10)
    return tree, first.id, second.id, task.id


def _lapse(rt: culm.Runtime, owner: str, task_id: str) -> None:
    """``owner``'s lease on the task runs out (its heartbeat stopped)."""
    with rt.store.transaction() as unit:
        unit.extend_leases(owner, [task_id], now() - 1)


def _children(rt: culm.Runtime, root: str) -> dict:
    return api.get_pipeline_states(rt, root).data[root]["children"]


def test_a_lapsed_lease_is_taken_again_when_the_result_is_applied(runtime: culm.Runtime) -> None:
    rt = runtime
    tree, first, second, task_id = _start(rt)
    call = _step(rt, "runner-a", task_id, None, claim=True)
    assert call.node_id == first
    result = walker.call_user_code(call)
    _lapse(rt, "runner-a", task_id)

    # A applies the result and hands out the second activity's call, holding the task again...
    following = _step(rt, "runner-a", task_id, (call, result), claim=False)
    assert following is not None and following.node_id == second
    with rt.store.reading() as unit:
        assert [t.id for t in unit.pending_tasks(now(), 10)] == []  # no lease left to sweep up
    # ...so runner B, sweeping now, cannot take the task and run the second activity again.
    assert _step(rt, "runner-b", task_id, None, claim=True) is None
    assert _children(rt, tree["id"])[second]["state"] == "RUNNING"

    assert _step(rt, "runner-a", task_id, (following, walker.call_user_code(following)), claim=False) is None
    assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
    assert api.get_node_histories(rt, second).data == []  # the second activity finished once


def test_a_result_is_dropped_when_another_runner_holds_the_task(runtime: culm.Runtime) -> None:
    rt = runtime
    tree, first, second, task_id = _start(rt)
    stale = _step(rt, "runner-a", task_id, None, claim=True)
    stale_result = walker.call_user_code(stale)
    _lapse(rt, "runner-a", task_id)

    # B takes the task over and replays the first activity's call (A's result was never applied).
    again = _step(rt, "runner-b", task_id, None, claim=True)
    assert again is not None and again.node_id == first

    # A's result comes back while B holds the task: dropped, the node untouched.
    assert _step(rt, "runner-a", task_id, (stale, stale_result), claim=False) is None
    children = _children(rt, tree["id"])
    assert children[first]["state"] == "RUNNING"
    assert second not in children  # not entered: its call was not handed out

    following = _step(rt, "runner-b", task_id, (again, walker.call_user_code(again)), claim=False)
    assert following is not None and following.node_id == second
    assert _step(rt, "runner-b", task_id, (following, walker.call_user_code(following)), claim=False) is None
    assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
    assert api.get_node_histories(rt, first).data == []
    assert api.get_node_histories(rt, second).data == []


def _first_task(rt: culm.Runtime, act: ServiceActivity) -> str:
    start, end = EmptyStartEvent(), EmptyEndEvent()
    start.extend(act).extend(end)
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    with rt.store.reading() as unit:
        (task_id,) = [r[0] for r in unit._all("SELECT id FROM culm_task WHERE root_id = ?", [tree["id"]])]
    return task_id


def test_a_slow_batch_renews_the_leases_of_the_calls_it_hands_out(runtime: culm.Runtime) -> None:
    # A batch that takes long (here: a 7 MB result the store encodes, then refuses) claimed
    # its fresh tasks as it began. The heartbeat skips the rows a batch holds, so without a
    # renewal their leases could run out just after the commit, while their calls start: a relay
    # would hand them to another runner, which would run the same user code again.
    rt = runtime
    rt.engine.settings.lease_seconds = 0.01  # shorter than the batch, however fast the machine
    slow = ServiceActivity(component_code="t_unstorable")
    slow.component.inputs.kind = Var(type=Var.PLAIN, value="large")
    slow.component.inputs.on = Var(type=Var.PLAIN, value="execute")
    (call,) = loop.commit_batch(rt.engine, [loop.Item(_task(rt, _first_task(rt, slow)))]).calls
    resumed = call.returned(call.run())  # its result: a text over the store's payload limit
    fresh = loop.Item(_task(rt, _first_task(rt, ServiceActivity(component_code="t_echo"))))
    began = now()
    committed = loop.commit_batch(rt.engine, [fresh, resumed])
    ended = now()
    assert ended - began > rt.engine.settings.lease_seconds / 3, "the batch was not slow"
    assert [c.item for c in committed.calls] == [fresh]
    assert "could not be stored" in api.get_execution_data_outputs(rt, slow.id).data["ex_data"]
    owner, until = _lease_of(rt, fresh.task.id)
    assert owner == rt.engine.owner
    # Taken as the batch began, it would have run out before the commit; renewed at its end.
    assert until > began + rt.engine.settings.lease_seconds + (ended - began) / 2, (until - began, ended - began)


def _task(rt: culm.Runtime, task_id: str) -> Any:
    with rt.store.reading() as unit:
        return unit.get_task(task_id)


def _lease_of(rt: culm.Runtime, task_id: str) -> tuple[str, float]:
    with rt.store.reading() as unit:
        return unit._one("SELECT owner, claimed_until FROM culm_task WHERE id = ?", [task_id])
