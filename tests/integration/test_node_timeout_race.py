"""A node's result and its due deadline in the same engine transaction, in either order, on
SQLite, PostgreSQL and MariaDB: whichever comes first wins, and the other changes nothing.

The engine's steps are driven by hand (a runtime with no worker threads), so the order is chosen,
not left to timing: the result just before the deadline, and the deadline just before the result.
"""

from __future__ import annotations

import time
from pathlib import Path

import components  # noqa: F401 - registers the t_echo component
import pytest
from backends import embedded_runtime_on
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.core.loop import Item, commit_batch
from culm.core.records import TIMEOUT

pytestmark = pytest.mark.timeout(60)


def _started(rt, seconds: int):
    """A pipeline whose activity (timeout ``seconds``) ran its user code; the result not applied
    yet. Returns (activity id, the item with the result, the deadline's task)."""
    start, act = EmptyStartEvent(), ServiceActivity(
        component_code="t_echo", timeout_config={"enable": True, "action": "forced_fail", "seconds": seconds})
    act.component.inputs.x = Var(type=Var.PLAIN, value="result")
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    with rt.store.reading() as unit:
        (task,) = unit.pending_tasks(time.time() + 1, 10)
    (call,) = commit_batch(rt.engine, [Item(task)]).calls
    item = call.returned(call.run())
    with rt.store.reading() as unit:
        (deadline,) = unit.tasks_of_root(tree["id"], TIMEOUT)
    assert deadline.node_id == act.id and deadline.running_version is not None
    wait_until(lambda: time.time() > deadline.due, seconds + 5, what="the deadline to fall due")
    return act.id, item, deadline


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_the_result_just_before_the_deadline_wins(kind: str, tmp_path: Path) -> None:
    with embedded_runtime_on(kind, tmp_path / "race.db") as rt:
        node_id, item, deadline = _started(rt, 1)
        commit_batch(rt.engine, [item, Item(deadline)])
        st = api.get_children_states(rt, node_id).data[node_id]
        assert st["state"] == "FINISHED"
        out = api.get_execution_data_outputs(rt, node_id).data
        assert out["out"] == "result!" and "ex_data" not in out
        with rt.store.reading() as unit:
            assert unit.get_task(deadline.id) is None


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mariadb"])
def test_the_deadline_just_before_the_result_wins(kind: str, tmp_path: Path) -> None:
    with embedded_runtime_on(kind, tmp_path / "race.db") as rt:
        node_id, item, deadline = _started(rt, 1)
        commit_batch(rt.engine, [Item(deadline), item])
        st = api.get_children_states(rt, node_id).data[node_id]
        assert st["state"] == "FAILED" and st["version"] != deadline.running_version
        out = api.get_execution_data_outputs(rt, node_id).data
        assert out["ex_data"].startswith("timed out after 1 s") and "out" not in out
        # A second copy of the same deadline (a duplicate message) finds nothing to do.
        again = commit_batch(rt.engine, [Item(deadline)])
        assert again.tasks == [] and api.get_children_states(rt, node_id).data[node_id]["version"] == st["version"]
