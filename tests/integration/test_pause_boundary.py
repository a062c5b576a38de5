"""pause_pipeline stops a run at the next node boundary, the same on every backend.

bamboo: "every process re-checks before pushing each next node and parks itself when any pipeline
in its stack is SUSPENDED". So once ``pause_pipeline`` has returned, no node of the run is entered
any more: the nodes running then finish, and the tree holds no node it did not hold right after
the pause. On a server database the engine's walk read the pipeline's state without a lock, so a
pause committed between that read and the walk's commit let the walk enter the next node (and start
its user code) after the pause had returned.
"""

from __future__ import annotations

import components
import pytest
from engine_fixtures import children, run, wait_idle
from support import wait_until

from culm import api
from culm.builder import (
    EmptyEndEvent,
    EmptyStartEvent,
    ExecutableEndEvent,
    ServiceActivity,
    SubProcess,
    build_tree,
)
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(60)

PIPELINES, LENGTH = 12, 40
RUNNING = "RUNNING"


def _chain(length: int) -> dict:
    start = EmptyStartEvent()
    tail = start
    for _ in range(length):
        tail = tail.extend(ServiceActivity(component_code="example_component"))
    tail.extend(EmptyEndEvent())
    return build_tree(start)


def test_no_node_is_entered_after_pause_pipeline_returns(runtime):
    trees = [_chain(LENGTH) for _ in range(PIPELINES)]
    for tree in trees:
        run(runtime, tree)
    paused: dict[str, dict[str, str]] = {}
    for tree in trees:
        # Pause each run at some point of its chain (those that finished first are refused).
        if api.pause_pipeline(runtime, tree["id"]).result:
            paused[tree["id"]] = children(runtime, tree["id"])
    assert paused, "every pipeline finished before it could be paused"
    wait_idle(runtime)

    def settled(root_id: str) -> list[dict[str, str]] | None:
        now = children(runtime, root_id)
        return None if RUNNING in now.values() else [now]

    entered_late = {}
    for root_id, at_pause in paused.items():
        [after] = wait_until(lambda r=root_id: settled(r), 20, 0.05, what=f"the nodes running in {root_id} to end")
        late = sorted(set(after) - set(at_pause))
        if late:
            entered_late[root_id] = late
        assert api.get_pipeline_states(runtime, root_id).data[root_id]["state"] == "SUSPENDED"
    assert not entered_late, f"nodes entered after pause_pipeline returned: {entered_late}"

    for root_id in paused:
        assert api.resume_pipeline(runtime, root_id).result
    for root_id in paused:
        wait_until(lambda r=root_id: api.get_pipeline_states(runtime, r).data[r]["state"] == "FINISHED", 30, 0.05,
                   what=f"{root_id} to finish after resume")
        assert all(s == "FINISHED" for s in children(runtime, root_id).values())


@pytest.mark.parametrize("paused", ["root", "subprocess"])
def test_a_pause_while_end_event_code_runs_does_not_run_it_again(runtime, paused):
    """A pipeline paused while its executable end event's code runs cannot finish: the walk parks
    on the pause once the code returned. Resuming it finished the pipeline by entering the end
    event again, which ran its code a second time (no crash, no lost lease: a silent repeat). The
    parked walk now records that the code ran for that run, and the resumed one only finishes."""
    end = ExecutableEndEvent(type="t_gate_end")
    start, sub_start = EmptyStartEvent(), EmptyStartEvent()
    if paused == "root":
        start.extend(ServiceActivity(component_code="example_component")).extend(end)
    else:
        sub_start.extend(ServiceActivity(component_code="example_component")).extend(end)
        start.extend(SubProcess(start=sub_start)).extend(EmptyEndEvent())
    tree = build_tree(start)
    pipeline = tree["id"] if paused == "root" else tree["flows"][tree["start_event"]["outgoing"]]["target"]
    run(runtime, tree)
    wait_until(components.end_calls, 20, 0.02, what="the end event's code to start")
    assert api.pause_pipeline(runtime, pipeline).result
    components.gate("end").set()

    def parked() -> bool:
        return any(p.suspended and p.current_node_id == end.id
                   for p in read_snapshot(runtime.engine, tree["id"]).processes)

    wait_until(parked, 20, 0.05, what="the walk to park on the pause once the code returned")
    assert api.resume_pipeline(runtime, pipeline).result
    wait_until(lambda: api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["state"] == "FINISHED",
               20, 0.05, what="the pipeline to finish")
    assert components.end_calls() == [(paused != "root", tree["id"], pipeline)]
    assert api.get_children_states(runtime, end.id).data[end.id]["state"] == "FINISHED"
