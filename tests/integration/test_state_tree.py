"""``get_pipeline_states`` answered from kept entries brought up to date by the change feed
(``culm.core.state_tree``): what it returns must always equal a read of every state row."""

from __future__ import annotations

import gc

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


def full_read_keeping(runtime, root_id):
    """:func:`fresh_read`, the poller's kept trees left in place."""
    poller = runtime.engine.state_trees
    try:
        return fresh_read(runtime, root_id)
    finally:
        runtime.engine.state_trees = poller


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


ENTRY_KEYS = ["id", "state", "root_id:", "root_id", "parent_id", "version", "loop", "retry", "skip", "error_ignorable",
              "error_ignored", "created_time", "started_time", "archived_time", "children", "wait_reason"]


def test_entries_handed_out_may_be_extended_and_cut(runtime):
    """The kept entries share one key table (culm.core.queries.kept_entry): a caller that adds,
    removes or replaces keys of what it got changes neither the kept tree nor the next poll, and
    every entry lists the same keys in the same order as before that sharing."""
    tree = build_tree(chain(act(x=1), act(x=2)))
    root = tree["id"]
    run(runtime, tree)
    wait_state(runtime, root, "FINISHED")
    first = api.get_pipeline_states(runtime, root).data
    entries = [first[root], *first[root]["children"].values()]
    assert [list(e) for e in entries] == [ENTRY_KEYS] * len(entries)
    for entry in entries:
        entry["extra"] = 1
        del entry["version"]
        entry.pop("created_time")
        entry["wait_reason"] = {"kind": "mangled"}
    second = api.get_pipeline_states(runtime, root).data
    entries = [second[root], *second[root]["children"].values()]
    assert [list(e) for e in entries] == [ENTRY_KEYS] * len(entries)
    assert second == fresh_read(runtime, root)


def test_kept_entries_hold_no_container_for_the_garbage_collector(runtime):
    """A kept entry's ``children`` dict is made at each read, so the kept trees (up to 200,000
    nodes) add nothing to what each garbage collection scans; every entry handed out still has a
    ``children`` dict of its own."""
    first, second = act(x=1), act(x=2)
    tree = build_tree(chain(first, second))
    root = tree["id"]
    run(runtime, tree)
    wait_state(runtime, root, "FINISHED")
    handed = assert_current(runtime, root)
    kept = runtime.engine.state_trees.tree_of(root)
    assert kept is not None and set(kept.entries) == {root, *handed["children"]}
    assert [node for node, e in kept.entries.items() if gc.is_tracked(e)] == []
    children = [e["children"] for e in handed["children"].values()]
    assert children == [{}] * len(children) and len({id(c) for c in children}) == len(children)


def test_the_rows_that_may_wait_follow_the_changes(runtime):
    """A refresh carries the kept tree's may-wait rows over and looks at the changed rows only:
    after every move they are what a look at every row picks, and the wait reasons those of a
    full read."""
    from support import wait_until

    from culm.builder import ConvergeGateway, EmptyEndEvent, EmptyStartEvent, ParallelGateway
    from culm.core import waits

    waiting = [act("t_callback") for _ in range(3)]
    start, fork, join, end = EmptyStartEvent(), ParallelGateway(), ConvergeGateway(), EmptyEndEvent()
    for i, node in enumerate(waiting):
        after = act(x=i)
        node.extend(after)
        node.successor_id = after.id
    start.extend(fork).connect(*waiting).converge(join).extend(end)
    tree = build_tree(start)
    root = tree["id"]
    run(runtime, tree)

    def kept_read():
        """A poll through the kept tree; its may-wait rows are those a look at every row picks."""
        data = api.get_pipeline_states(runtime, root).data
        kept = runtime.engine.state_trees.tree_of(root)
        assert kept is not None and kept.may_wait is not None
        rescan = [r for r in kept.records.values() if r.name in waits.MAY_WAIT]
        assert sorted(r.node_id for r in kept.may_wait) == sorted(r.node_id for r in rescan)
        return data

    def settled(what, done):
        """Polled until ``done`` and a poll equals a full read (wait reasons too)."""
        def reached():
            data = kept_read()
            return done(data[root]) and data == full_read_keeping(runtime, root)

        wait_until(reached, timeout=20, what=what)
        return kept_read()[root]

    def kinds(entry):
        return [((entry["children"].get(n.id) or {}).get("wait_reason") or {}).get("kind") for n in waiting]

    entry = settled("every branch waits for its callback", lambda e: kinds(e) == ["callback"] * 3)
    for i, node in enumerate(waiting):
        version = entry["children"][node.id]["wait_reason"]["version"]
        assert api.callback(runtime, node.id, version, {}).result
        entry = settled(f"the branch of {node.id} ended",
                        lambda e, i=i, after=node.successor_id: kinds(e) == [None] * (i + 1) + ["callback"] * (2 - i)
                        and (e["children"].get(after) or {}).get("state") == "FINISHED"
                        and (i < 2 or e["state"] == "FINISHED"))
    assert entry["state"] == "FINISHED" and entry["wait_reason"] is None


def test_a_kept_tree_follows_the_schedules_of_its_running_nodes(runtime):
    """A schedule is created, and each poll counted, while its node stays RUNNING: the feed notes
    both, so the wait reason read through a kept tree (whose nodes' schedules are kept until the
    feed names the node) follows, as a full read does."""
    from support import wait_until

    node = act("t_gated_polls", gate="tree-polls")
    tree = build_tree(chain(node))
    root = tree["id"]
    run(runtime, tree)
    wait_state(runtime, node.id, "RUNNING")
    entry = api.get_pipeline_states(runtime, root).data[root]  # kept: the execute is held, no schedule
    assert entry["children"][node.id]["wait_reason"] is None
    kept = runtime.engine.state_trees.tree_of(root)
    assert kept is not None and kept.facts.schedules.get(node.id) == []

    def polls_shown(count):
        def shown():
            data = api.get_pipeline_states(runtime, root).data
            got = data[root]["children"][node.id]["wait_reason"] or {}
            return got.get("kind") == "poll" and got["polls"] == count and data == full_read_keeping(runtime, root)
        return shown

    components.gate("tree-polls-execute").set()  # the schedule is created, poll 1 is held
    wait_until(polls_shown(0), timeout=20, what=f"node {node.id} waits for its first poll")
    components.gate("tree-polls-poll1").set()  # poll 1 counted, poll 2 is held
    wait_until(polls_shown(1), timeout=20, what=f"node {node.id} polled once")
    components.gate("tree-polls-poll2").set()
    wait_state(runtime, root, "FINISHED")
    assert_current(runtime, root)


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


def test_an_appointed_pause_an_older_version_left_without_its_root_joins_the_kept_tree(tmp_path):
    """The walker gives such a row its root when a branch reaches it: the kept tree must show the
    node as a full read does, and the feed must not report that repair as a transition (it is
    written as a note, from_state == to_state, which runtime.changes skips)."""
    import sqlite3

    from support import wait_until

    import culm

    first, later = act("t_gate", gate="tree-legacy", x=1), act(x=2)
    tree = build_tree(chain(first, later))
    root = tree["id"]
    db = tmp_path / "t.db"
    with culm.Runtime(f"sqlite:///{db}") as rt:
        run(rt, tree)
        wait_state(rt, first.id, "RUNNING")
        assert api.pause_node_appoint(rt, later.id).result
        after = rt.last_change_seq()
        with sqlite3.connect(db) as conn:  # what an older version left
            conn.execute("UPDATE culm_state SET root_id = '', parent_id = '' WHERE node_id = ?", (later.id,))
    with culm.Runtime(f"sqlite:///{db}") as rt:
        assert later.id not in assert_current(rt, root)["children"]  # kept now, without the node
        components.gate("tree-legacy").set()

        def parked():
            entry = api.get_pipeline_states(rt, root).data[root]["children"].get(later.id)
            return entry is not None and (entry["wait_reason"] or {}).get("reached")

        wait_until(parked, timeout=30, what="the branch parked at the appointed pause, seen by the kept tree")
        entry = assert_current(rt, root)["children"][later.id]
        assert (entry["state"], entry["root_id"], entry["parent_id"]) == ("SUSPENDED", root, root)
        moves = [(c.node_id, c.from_state, c.to_state) for c in rt.changes(root, after, timeout=0)]
        assert all(f != t for _, f, t in moves), moves
        assert (first.id, "RUNNING", "FINISHED") in moves



def full_read(runtime, root_id):
    """The query with nothing kept, leaving the runtime's kept trees as they were."""
    kept = runtime.engine.state_trees
    runtime.engine.state_trees = state_tree.StateTrees()
    try:
        return api.get_pipeline_states(runtime, root_id).data
    finally:
        runtime.engine.state_trees = kept


def test_polls_of_a_running_pipeline_read_only_what_changed(runtime):
    """On every backend (on PostgreSQL and MariaDB the writers are worker processes, and the feed
    may show rows out of seq order): after the first read of a pipeline, polls read only the
    states the feed names, and each equals a full read. (On a server database the poll that sees
    the root's state change reads the tree whole once: StateTrees._tree_settled.)"""
    from support import wait_until

    first = act("t_gate", gate="tree-changed", x=1)
    tree = build_tree(chain(first, act(x=2), SubProcess(start=chain(act(x=3), act(x=4)))))
    root = tree["id"]
    trees = runtime.engine.state_trees
    run(runtime, tree)
    wait_state(runtime, first.id, "RUNNING")
    held = api.get_pipeline_states(runtime, root).data  # the gate holds: nothing moves
    reads = trees.full_reads
    assert held == full_read(runtime, root)
    components.gate("tree-changed").set()
    polls = []

    def finished():
        polls.append(api.get_pipeline_states(runtime, root).data)
        return polls[-1][root]["state"] == "FINISHED"

    wait_until(finished, timeout=30, interval=0.002, what="the pipeline FINISHED, seen by the kept tree")
    assert polls[-1] == full_read(runtime, root)
    assert len(polls[-1][root]["children"]) > len(held[root]["children"])
    assert trees.full_reads - reads <= 1



def test_a_poll_sees_a_change_another_connection_wrote(runtime):
    """A client with a store of its own (its own connections; on SQLite it hears none of the
    engine's in-process wake-ups) polls a pipeline while the runtime that runs it writes: each
    change another connection commits (an operator's pause appointed, the nodes that then run) is
    in its next poll, which equals a full read of what it sees, and its kept tree is caught up
    from the feed, not read again whole (SQLite: not at all; a server database reads it once more
    when the root's state changes: StateTrees._tree_settled)."""
    if runtime.url.startswith("memory"):
        pytest.skip("a memory store has no second connection")
    from support import wait_until

    import culm

    first, later = act("t_gate", gate="tree-other", x=1), act(x=2)
    tree = build_tree(chain(first, later))
    root = tree["id"]
    with culm.Runtime(runtime.url, runtime.broker, workers=0, **runtime.options) as other:
        run(runtime, tree)
        wait_state(runtime, first.id, "RUNNING")
        assert api.get_pipeline_states(other, root).data[root]["children"][first.id]["state"] == "RUNNING"
        reads = other.engine.state_trees.full_reads
        assert api.pause_node_appoint(runtime, later.id).result  # written through the other store
        seen = api.get_pipeline_states(other, root).data
        assert seen[root]["children"][later.id]["state"] == "SUSPENDED"
        assert seen == full_read(other, root)
        assert api.resume_node_appoint(runtime, later.id).result
        components.gate("tree-other").set()

        def finished():
            return api.get_pipeline_states(other, root).data[root]["state"] == "FINISHED"

        wait_until(finished, timeout=30, interval=0.002, what="the pipeline FINISHED, seen by the other client")
        done = api.get_pipeline_states(other, root).data
        assert done[root]["children"][later.id]["state"] == "FINISHED"
        assert done == full_read(other, root) == api.get_pipeline_states(runtime, root).data
        assert other.engine.state_trees.full_reads - reads <= (0 if runtime.url.startswith("sqlite") else 1)


POLLER = """
import json, sys, time
import culm
from culm import api
from culm.core import state_tree

rt = culm.Runtime(sys.argv[1], workers=0)
root = sys.argv[2]
print("ready", flush=True)
deadline = time.monotonic() + 60
first_seen = None
while time.monotonic() < deadline:
    data = api.get_pipeline_states(rt, root).data
    if data:
        if first_seen is None:
            first_seen = rt.engine.state_trees.full_reads
        same = None
        if data[root]["state"] == "FINISHED":  # nothing moves any more: compare with a full read
            kept = rt.engine.state_trees
            rt.engine.state_trees = state_tree.StateTrees()
            same = data == api.get_pipeline_states(rt, root).data
            rt.engine.state_trees = kept
        print(json.dumps({"state": data[root]["state"], "same": same,
                          "nodes": sorted((k, v["state"]) for k, v in data[root]["children"].items())}), flush=True)
        if same is not None:
            break
    time.sleep(0.005)
print(json.dumps({"full_reads_after_first": rt.engine.state_trees.full_reads - first_seen}), flush=True)
rt.close()
"""


def test_a_second_process_polling_a_sqlite_file_keeps_its_tree(tmp_path):
    """Another process polls a SQLite file the engine writes: its trees are brought up to date
    from the database's feed (it hears no in-process signal), and they always equal a full read."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import culm

    first = act("t_gate", gate="tree-second", x=1)
    tree = build_tree(chain(first, act(x=2), SubProcess(start=chain(act(x=3), act(x=4)))))
    root = tree["id"]
    url = f"sqlite:///{tmp_path}/shared.db"
    repo = Path(__file__).resolve().parents[2]
    with culm.Runtime(url) as rt:
        poller = subprocess.Popen([sys.executable, "-c", POLLER, url, root], cwd=repo, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert poller.stdout is not None
            assert poller.stdout.readline().strip() == "ready"
            run(rt, tree)
            seen = [json.loads(poller.stdout.readline()) for _ in range(3)]  # polls while the gate holds
            components.gate("tree-second").set()
            out, _ = poller.communicate(timeout=60)
        finally:
            if poller.poll() is None:
                poller.kill()
        lines = [json.loads(line) for line in out.strip().splitlines()]
        polls, summary = seen + lines[:-1], lines[-1]
        assert polls[0]["state"] == "RUNNING" and polls[-1]["state"] == "FINISHED" and polls[-1]["same"]
        assert len({json.dumps(p["nodes"]) for p in polls}) > 1  # the tree changed under the poller
        assert summary == {"full_reads_after_first": 0}  # every later poll read only what changed
        mine = api.get_pipeline_states(rt, root).data[root]["children"]
        assert polls[-1]["nodes"] == sorted([k, v["state"]] for k, v in mine.items())


def test_reads_sent_together_answer_as_each_read_alone(runtime):
    """``Unit.read_together`` (one round trip on a server database) answers each read as its verb
    does alone, on every store; a verb it does not send is refused, naming it."""
    from support import wait_until

    from culm.core.records import EXECUTE
    from culm.errors import InvalidOperationError

    waiting = act("t_callback")
    tree = build_tree(chain(act(x=1), waiting))
    root = run(runtime, tree)
    wait_until(lambda: (full_read(runtime, root)[root]["children"].get(waiting.id, {}).get("wait_reason") or {}).get(
        "kind") == "callback", timeout=30, what="the activity waits for its callback")
    ids = sorted(full_read(runtime, root)[root]["children"])
    calls = [("read_changes", (0, 2**62, None, 1000)), ("states_of_root", (root,)), ("get_states", (ids,)),
             ("node_types", (ids,)), ("live_schedules", (ids,)), ("live_process_positions", (root,)),
             ("tasks_of_root", (root, EXECUTE)), ("live_schedules", ([],))]
    with runtime.engine.store.reading() as unit:
        together = unit.read_together(calls)
        alone = [getattr(unit, verb)(*args) for verb, args in calls]
        with pytest.raises(InvalidOperationError, match="get_state"):
            unit.read_together([("get_state", (root,)), ("get_states", (ids,))])
    assert [r for r in together[0] if r.root_id == root] == [r for r in alone[0] if r.root_id == root]
    assert sorted(together[1], key=lambda st: st.node_id) == sorted(alone[1], key=lambda st: st.node_id)
    assert together[2:] == alone[2:]
    assert [s.node_id for s in together[4]] == [waiting.id]  # the read found what a poll needs
    assert together[5] and together[3]
