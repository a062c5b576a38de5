"""``get_pipeline_states`` answered from kept entries brought up to date by the change feed
(``culm.core.state_tree``): what it returns must always equal a read of every state row."""

from __future__ import annotations

import components
import pytest
from engine_fixtures import chain, run, wait_state

from culm import api
from culm.builder import ServiceActivity, SubProcess, Var, build_tree
from culm.core import state_tree

pytestmark = pytest.mark.timeout(90)


def act(code="t_echo", **plain):
    a = ServiceActivity(component_code=code)
    for key, value in plain.items():
        setattr(a.component.inputs, key, Var(type=Var.PLAIN, value=value))
    return a


def fresh_read(runtime, root_id, flat=True):
    """The same query with nothing kept: every state row read and converted."""
    runtime.engine.state_trees = state_tree.StateTrees()
    return api.get_pipeline_states(runtime, root_id, flat_children=flat).data


def assert_current(runtime, root_id):
    kept_flat = api.get_pipeline_states(runtime, root_id).data
    kept_nested = api.get_pipeline_states(runtime, root_id, flat_children=False).data
    assert kept_flat == fresh_read(runtime, root_id)
    assert kept_nested == fresh_read(runtime, root_id, flat=False)
    return kept_flat[root_id]


def test_polled_states_follow_every_change(runtime):
    first, later = act("t_gate", gate="tree-appoint", x=1), act(x=2)
    inner = act(x=3)
    tree = build_tree(chain(first, later, SubProcess(start=chain(inner))))
    root = tree["id"]
    assert api.get_pipeline_states(runtime, root).data == {}  # unknown yet: nothing kept
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    assert set(assert_current(runtime, root)["children"]) >= {first.id}
    # A state created ahead of its node, then reached.
    assert api.pause_node_appoint(runtime, later.id).result
    assert assert_current(runtime, root)["children"][later.id]["state"] == "SUSPENDED"
    components.gate("tree-appoint").set()
    wait_state(runtime, first.id, "FINISHED")
    entry = assert_current(runtime, root)
    assert entry["children"][first.id]["state"] == "FINISHED"
    assert api.resume_node_appoint(runtime, later.id).result
    wait_state(runtime, root, "FINISHED")
    entry = assert_current(runtime, root)
    assert entry["state"] == "FINISHED"
    assert entry["children"][inner.id]["state"] == "FINISHED"


def test_entries_handed_out_are_copies(runtime):
    tree = build_tree(chain(act(x=1)))
    root = tree["id"]
    run(runtime, tree)
    wait_state(runtime, root, "FINISHED")
    first = api.get_pipeline_states(runtime, root).data
    first[root]["state"] = "MANGLED"
    for child in first[root]["children"].values():
        child["children"]["x"] = "mangled"
    assert api.get_pipeline_states(runtime, root).data == fresh_read(runtime, root)


def test_a_pipeline_read_long_ago_is_read_in_full(runtime, monkeypatch):
    old = build_tree(chain(act(x=1)))
    run(runtime, old)
    wait_state(runtime, old["id"], "FINISHED")
    api.get_pipeline_states(runtime, old["id"])
    monkeypatch.setattr(state_tree, "MAX_CATCH_UP", 1)  # any other run's changes are too many
    newer = build_tree(chain(act(x=2)))
    run(runtime, newer)
    wait_state(runtime, newer["id"], "FINISHED")
    assert_current(runtime, old["id"])
    assert_current(runtime, newer["id"])


def test_polling_many_running_pipelines_ends_current(runtime):
    """One poller, many pipelines changing between its reads: every tree ends as a full read."""
    from support import wait_until

    trees = [build_tree(chain(act(x=i), SubProcess(start=chain(act(x=i))))) for i in range(10)]
    for tree in trees:
        run(runtime, tree)

    def all_finished():
        states = [api.get_pipeline_states(runtime, t["id"]).data[t["id"]]["state"] for t in trees]
        return all(s == "FINISHED" for s in states)

    wait_until(all_finished, timeout=60, what="every pipeline FINISHED")
    for tree in trees:
        entry = assert_current(runtime, tree["id"])
        assert {c["state"] for c in entry["children"].values()} == {"FINISHED"}
