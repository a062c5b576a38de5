"""Control calls that used to strand a pipeline or hide what ran (issue 14, item 2).

* ``pause_node_appoint`` on a node not reached yet creates its state row early; that row must carry
  the node's root and parent, or queries by root never show the node, even after it ran.
* Commands on a node of a revoked pipeline are refused with a message saying it is revoked.
"""

from __future__ import annotations

import sqlite3

import components
import pytest
from engine_fixtures import children, node_state, refused, run, wait_state

from culm import api, builder
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, SubProcess, Var, build_tree

pytestmark = pytest.mark.timeout(60)


def act(code: str = "t_none", **plain: object) -> ServiceActivity:
    a = ServiceActivity(component_code=code)
    for key, value in plain.items():
        setattr(a.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return a


def line_start(*nodes: object) -> EmptyStartEvent:
    start = EmptyStartEvent()
    tail = start
    for n in nodes:
        tail = tail.extend(n)
    tail.extend(EmptyEndEvent())
    return start


def line(*nodes: object) -> tuple[dict, EmptyStartEvent]:
    start = line_start(*nodes)
    return build_tree(start), start


def test_appointed_then_resumed_node_shows_in_the_finished_tree(runtime):
    later = act()
    tree, _ = line(act("t_gate", gate="strand-resumed"), later)
    run(runtime, tree)
    assert api.pause_node_appoint(runtime, later.id).result
    entry = node_state(runtime, later.id)
    assert (entry["root_id"], entry["parent_id"]) == (tree["id"], tree["id"])
    assert api.resume_node_appoint(runtime, later.id).result
    components.gate("strand-resumed").set()
    wait_state(runtime, tree["id"], "FINISHED")
    assert children(runtime, tree["id"])[later.id] == "FINISHED"


def test_appointed_node_reached_while_paused_shows_once_resumed(runtime):
    later = act()
    tree, _ = line(act("t_gate", gate="strand-parked"), later)
    run(runtime, tree)
    assert api.pause_node_appoint(runtime, later.id).result
    components.gate("strand-parked").set()
    assert children(runtime, tree["id"]).get(later.id) == "SUSPENDED"
    assert api.resume_node_appoint(runtime, later.id).result
    wait_state(runtime, tree["id"], "FINISHED")
    assert children(runtime, tree["id"])[later.id] == "FINISHED"


def test_appointed_node_inside_subprocess_has_the_subprocess_as_parent(runtime):
    inner = act()
    sub_start = EmptyStartEvent()
    sub_start.extend(act("t_gate", gate="strand-sub")).extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    tree, _ = line(sub)
    run(runtime, tree)
    assert api.pause_node_appoint(runtime, inner.id).result
    # Read in the pipeline's tree: get_children_states gives its asked node the root as parent_id (bamboo).
    entry = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["children"][inner.id]
    assert (entry["root_id"], entry["parent_id"]) == (tree["id"], sub.id)
    assert api.resume_node_appoint(runtime, inner.id).result
    components.gate("strand-sub").set()
    wait_state(runtime, tree["id"], "FINISHED")
    nested = api.get_pipeline_states(runtime, tree["id"], flat_children=False).data[tree["id"]]
    assert nested["children"][sub.id]["children"][inner.id]["state"] == "FINISHED"


def test_row_without_root_is_repaired_when_the_node_runs(tmp_path):
    """A row an older version wrote without root and parent gets them when the node is entered."""
    import culm

    later = act()
    tree, _ = line(act("t_gate", gate="strand-legacy"), later)
    db = tmp_path / "t.db"
    with culm.Runtime(f"sqlite:///{db}") as rt:
        run(rt, tree)
        assert api.pause_node_appoint(rt, later.id).result
        assert api.resume_node_appoint(rt, later.id).result
        rt.wait_idle(5)
        with sqlite3.connect(db) as conn:  # what the older version left
            conn.execute("UPDATE culm_state SET root_id = '', parent_id = '' WHERE node_id = ?", (later.id,))
    with culm.Runtime(f"sqlite:///{db}") as rt:
        components.gate("strand-legacy").set()
        wait_state(rt, tree["id"], "FINISHED")
        entry = node_state(rt, later.id)
        assert (entry["state"], entry["root_id"], entry["parent_id"]) == ("FINISHED", tree["id"], tree["id"])


def test_callback_to_a_revoked_pipeline_says_it_is_revoked(runtime):
    wait = act("t_callback")
    tree, _ = line(wait)
    run(runtime, tree)
    st = wait_state(runtime, wait.id, "RUNNING")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    res = api.callback(runtime, wait.id, st["version"], {"ok": True})
    refused(res, wait.id, tree["id"], "revoked")
    assert "no live process" not in res.message


def test_retry_skip_and_appoint_on_a_revoked_pipeline_say_it_is_revoked(runtime):
    failing, later = act("t_fail"), act()
    tree, _ = line(failing, later)
    run(runtime, tree)
    wait_state(runtime, failing.id, "FAILED")
    assert api.revoke_pipeline(runtime, tree["id"]).result
    refused(api.retry_node(runtime, failing.id), failing.id, "revoked")
    refused(api.skip_node(runtime, failing.id), failing.id, "revoked")
    refused(api.pause_node_appoint(runtime, later.id), later.id, "revoked")
    assert node_state(runtime, later.id) is None


def test_pause_resume_and_revoke_of_a_subprocess_in_a_revoked_pipeline_say_it_is_revoked(runtime):
    # A subprocess keeps its own state when its root is revoked: a resume of one paused before the
    # revoke was accepted and put it back to RUNNING inside the revoked run (found by the storm of
    # pause/resume of a subprocess racing its parent's revoke), and a pause or revoke of a running
    # one was accepted too. Each is refused now, naming the revoked pipeline, nested ones included.
    paused_wait, running_wait, deep_wait = act("t_callback"), act("t_callback"), act("t_callback")
    deep = SubProcess(start=line_start(deep_wait))
    paused, running = SubProcess(start=line_start(paused_wait)), SubProcess(start=line_start(running_wait))
    start, pg, cg = EmptyStartEvent(), builder.ParallelGateway(), builder.ConvergeGateway()
    start.extend(pg).connect(paused, running, SubProcess(start=line_start(deep))).converge(cg).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    for wait in (paused_wait, running_wait, deep_wait):
        wait_state(runtime, wait.id, "RUNNING")
    assert api.pause_pipeline(runtime, paused.id).result
    assert api.revoke_pipeline(runtime, tree["id"]).result
    refused(api.resume_pipeline(runtime, paused.id), paused.id, tree["id"], "revoked")
    for sub in (running, deep):
        refused(api.pause_pipeline(runtime, sub.id), sub.id, tree["id"], "revoked")
        refused(api.revoke_pipeline(runtime, sub.id), sub.id, "revoked")
    assert [node_state(runtime, p.id)["state"] for p in (paused, running, deep)] == ["SUSPENDED", "RUNNING", "RUNNING"]
    assert node_state(runtime, tree["id"])["state"] == "REVOKED"


def test_revoking_a_subprocess_stops_its_work_and_says_what_holds_the_run(runtime):
    # The contract takes a subprocess id for revoke_pipeline. Its work stops for good (nothing in it
    # runs on unseen); the run cannot go on past it, and its wait reason tells the operator to
    # revoke the root, which ends the run.
    inner = act("t_callback")
    sub = SubProcess(start=line_start(inner))
    after = act()
    tree, _ = line(sub, after)
    run(runtime, tree)
    st = wait_state(runtime, inner.id, "RUNNING")
    assert api.revoke_pipeline(runtime, sub.id).result
    assert node_state(runtime, sub.id)["state"] == "REVOKED"
    refused(api.callback(runtime, inner.id, st["version"], {"ok": True}), inner.id)
    refused(api.revoke_pipeline(runtime, sub.id), sub.id, "REVOKED")
    entry = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]
    assert entry["state"] == "RUNNING"
    reason = entry["children"][sub.id]["wait_reason"]
    assert reason["kind"] == "revoked" and tree["id"] in reason["text"]
    assert node_state(runtime, after.id) is None
    assert api.revoke_pipeline(runtime, tree["id"]).result
    wait_state(runtime, tree["id"], "REVOKED")
    assert node_state(runtime, after.id) is None


def test_a_second_callback_to_a_single_callback_node_is_refused(runtime):
    wait = act("t_callback")
    tree, _ = line(wait, act())
    run(runtime, tree)
    st = wait_state(runtime, wait.id, "RUNNING")
    assert api.callback(runtime, wait.id, st["version"], {"ok": True}).result
    refused(api.callback(runtime, wait.id, st["version"], {"ok": False}), wait.id, "already received its callback")
    wait_state(runtime, tree["id"], "FINISHED")
    assert api.get_execution_data_outputs(runtime, wait.id).data["callback_data"] == {"ok": True}
