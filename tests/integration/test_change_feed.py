"""The state-change feed: ``Runtime.changes``, ``last_change_seq``, ``wait`` and ``prune_changes``.

Every test runs on SQLite, PostgreSQL + Redis and MariaDB + RabbitMQ (workers in other processes);
one more runs a second process on a SQLite file. The feed of a run must tell the same story as its
states: per node, a chain of transitions ending in the node's current state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from engine_fixtures import chain, children, run, wait_state

import culm
from culm import StateChange, api
from culm.builder import ServiceActivity, SubProcess, Var, build_tree
from culm.errors import NotFoundError
from culm.storage import feed

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]


def failing():
    act = ServiceActivity(component_code="t_fail")
    act.component.inputs.ok = Var(type=Var.PLAIN, value=False)
    return act


def failed_run(runtime):
    """Start a pipeline whose only activity fails; returns (root id, the activity) once FAILED."""
    bad = failing()
    tree = build_tree(chain(bad))
    run(runtime, tree)
    wait_state(runtime, bad.id, "FAILED", timeout=30)
    return tree["id"], bad


def feed_of(runtime, root_id, after=0):
    return list(runtime.changes(root_id=root_id, after=after, timeout=0))


def assert_feed_matches_states(changes: list[StateChange], runtime, root_id: str) -> None:
    """Per node: seqs grow, each change starts where the previous one ended, the last one is the
    node's current state (name, version, loop), and every node with a state has changes."""
    entry = api.get_pipeline_states(runtime, root_id).data[root_id]
    current = {root_id: entry, **entry["children"]}
    by_node: dict[str, list[StateChange]] = {}
    for c in changes:
        assert c.root_id == root_id
        by_node.setdefault(c.node_id, []).append(c)
    assert set(by_node) == set(current)
    for node_id, seq in by_node.items():
        assert [c.seq for c in seq] == sorted(c.seq for c in seq)
        assert seq[0].from_state is None, f"{node_id} first change {seq[0]}"
        for before, after in zip(seq, seq[1:], strict=False):
            assert after.from_state == before.to_state, f"{node_id}: {before} then {after}"
        last, state = seq[-1], current[node_id]
        assert (last.to_state, last.version, last.loop) == (state["state"], state["version"], state["loop"])


def test_feed_of_a_run_matches_its_states(runtime):
    inner = ServiceActivity(component_code="example_component")
    tree = build_tree(chain(ServiceActivity(component_code="example_component"), SubProcess(start=chain(inner))))
    root = tree["id"]
    after = runtime.last_change_seq()
    run(runtime, tree)
    assert runtime.wait(root, timeout=30) == "FINISHED"
    changes = feed_of(runtime, root, after)
    assert all(c.seq > after for c in changes)
    assert runtime.last_change_seq() >= max(c.seq for c in changes)
    assert (changes[0].node_id, changes[0].from_state, changes[0].to_state) == (root, None, "RUNNING")
    root_changes = [(c.from_state, c.to_state) for c in changes if c.node_id == root]
    assert root_changes == [(None, "RUNNING"), ("RUNNING", "FINISHED")]
    assert_feed_matches_states(changes, runtime, root)
    # Unfiltered, from the same point: the same changes of this root (others may interleave).
    everything = [c for c in runtime.changes(after=after, timeout=0) if c.root_id == root]
    assert everything == changes


def test_feed_records_failure_skip_and_wait(runtime):
    root, bad = failed_run(runtime)
    with pytest.raises(TimeoutError, match=root):
        runtime.wait(root, timeout=0.3)
    assert api.skip_node(runtime, bad.id).result
    assert runtime.wait(root, timeout=30) == "FINISHED"
    changes = feed_of(runtime, root)
    assert [(c.from_state, c.to_state) for c in changes if c.node_id == bad.id] == [
        (None, "RUNNING"), ("RUNNING", "FAILED"), ("FAILED", "FINISHED"),
    ]
    assert_feed_matches_states(changes, runtime, root)


def test_wait_returns_revoked(runtime):
    root, bad = failed_run(runtime)
    assert api.revoke_pipeline(runtime, root).result
    assert runtime.wait(root, timeout=30) == "REVOKED"
    assert [c.to_state for c in feed_of(runtime, root) if c.node_id == root] == ["RUNNING", "REVOKED"]


def test_wait_on_an_unknown_pipeline_names_it(runtime):
    with pytest.raises(NotFoundError, match="no-such-pipeline"):
        runtime.wait("no-such-pipeline", timeout=1)


def test_changes_block_until_new_ones_arrive(runtime):
    tree = build_tree(chain(ServiceActivity(component_code="example_component")))
    root = tree["id"]
    after = runtime.last_change_seq()
    seen: list[StateChange] = []

    def watch():
        for c in runtime.changes(root_id=root, after=after, timeout=30):
            seen.append(c)
            if c.node_id == root and c.to_state == "FINISHED":
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    run(runtime, tree)
    watcher.join(40)
    assert not watcher.is_alive()
    assert seen == feed_of(runtime, root, after)
    assert_feed_matches_states(seen, runtime, root)


def test_changes_end_at_timeout_when_nothing_happens(runtime):
    after = runtime.last_change_seq()
    assert list(runtime.changes(root_id="quiet-root", after=after, timeout=0.2)) == []


def test_prune_deletes_old_changes_of_finished_pipelines_only(runtime):
    done = build_tree(chain(ServiceActivity(component_code="example_component")))
    run(runtime, done)
    open_root, bad = failed_run(runtime)
    assert runtime.wait(done["id"], timeout=30) == "FINISHED"
    kept, finished = feed_of(runtime, open_root), feed_of(runtime, done["id"])
    runtime.prune_changes(older_than=3600)
    assert feed_of(runtime, done["id"]) == finished  # nothing that young goes
    last = runtime.last_change_seq()
    runtime.prune_changes(older_than=0)
    remaining = feed_of(runtime, done["id"])
    assert all(c.seq == last for c in remaining)  # only the newest row may stay
    assert feed_of(runtime, open_root) == kept  # a RUNNING pipeline keeps its changes
    assert runtime.last_change_seq() == last
    assert children(runtime, open_root)[bad.id] == "FAILED"


def test_history_of_one_root_starts_near_its_creation(tmp_path, monkeypatch):
    """A store without an index by root (the memory store) finds where a root's history starts by
    time, with many rows before it; the search gives the right seq (checked here on SQLite, where
    the rows can be back-dated), and the history read is still all of it."""
    with culm.Runtime(f"sqlite:///{tmp_path}/t.db") as rt:
        early = build_tree(chain(ServiceActivity(component_code="example_component")))
        run(rt, early)
        assert rt.wait(early["id"], timeout=30) == "FINISHED"
        first_seq = rt.last_change_seq()
        with rt.store.transaction() as unit:  # the early run's changes, back-dated past the skew
            unit._x('UPDATE culm_change SET "time" = "time" - ?', [10 * feed.CLOCK_SKEW])
        late = build_tree(chain(ServiceActivity(component_code="example_component")))
        run(rt, late)
        assert rt.wait(late["id"], timeout=30) == "FINISHED"
        monkeypatch.setattr(feed, "FAR_BEHIND", 0)
        assert rt.store.feed._history_start(late["id"], 0) == first_seq
        history = feed_of(rt, late["id"])
        assert history and history[0].seq == first_seq + 1
        assert_feed_matches_states(history, rt, late["id"])


WATCHER = """
import json, sys
import culm
rt = culm.Runtime(sys.argv[1], workers=0)
root, after = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for c in rt.changes(root_id=root, after=after, timeout=60):
    print(json.dumps([c.seq, c.node_id, c.from_state, c.to_state, c.version, c.loop]), flush=True)
    if c.node_id == root and c.to_state == "FINISHED":
        break
print(rt.wait(root, timeout=5), flush=True)
rt.close()
"""


def test_a_second_process_follows_a_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path}/shared.db"
    with culm.Runtime(url) as rt:
        tree = build_tree(chain(ServiceActivity(component_code="example_component"),
                                SubProcess(start=chain(ServiceActivity(component_code="example_component")))))
        root = tree["id"]
        after = rt.last_change_seq()
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, url, root, str(after)], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert watcher.stdout is not None
            assert watcher.stdout.readline().strip() == "ready"
            run(rt, tree)
            out, _ = watcher.communicate(timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
        lines = out.strip().splitlines()
        assert lines[-1] == "FINISHED"
        seen = [json.loads(line) for line in lines[:-1]]
        mine = [[c.seq, c.node_id, c.from_state, c.to_state, c.version, c.loop] for c in feed_of(rt, root, after)]
        assert seen == mine
        assert_feed_matches_states(feed_of(rt, root, after), rt, root)


# The statements whose cost must not grow with the finished pipelines a database keeps: each reads
# by a key or an index, never by a pass over a table (SQLite's plan says SEARCH, not SCAN).
INDEXED = {
    "a root's changes": "CHANGES_OF_ROOT_BETWEEN",
    "the changes after a cursor": "CHANGES_BETWEEN",
    "pruning a chunk of the feed": "PRUNE_CHANGES",
    "the state tree of a pipeline": "STATES_OF_ROOT",
    "the children of a node": "STATES_OF_PARENT",
    "one state": "STATE_BY_ID",
    "the processes of a pipeline": "PROCESSES_OF_ROOT",
    "the processes at a node": "PROCESSES_AT",
    "the processes a node suspended": "PROCESSES_SUSPENDED_BY",
    "the tasks due": "PENDING_TASKS",
    "a pipeline's tasks": "TASKS_OF_ROOT",
    "the schedules of nodes": "SCHEDULES_IN",
    "a root count's move at a commit": "ROOT_COUNT_ADD",
    "counting the roots again": "ROOTS_COUNTED",
}


@pytest.mark.parametrize("what", sorted(INDEXED))
def test_hot_statements_search_an_index(tmp_path, what):
    from culm.storage.sql import SqlStore, statements

    sql = getattr(statements, INDEXED[what]).replace("{marks}", "?, ?")
    store = SqlStore(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        with store.engine.connect() as conn:
            plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, (0,) * sql.count("?"))]
    finally:
        store.dispose()
    assert plan and not [p for p in plan if p.startswith("SCAN")], (what, plan)
    if what == "a root's changes":  # not the seq range of every pipeline's changes, filtered
        assert "ix_culm_change_root_seq" in plan[0], plan
    if what == "counting the roots again":  # the root states only, not every node's
        assert "ix_culm_state_roots" in plan[0], plan


def test_the_kept_counts_are_read_from_their_own_few_rows(tmp_path):
    """An unfiltered listing's counts read culm_root_count (16 shards x 12 states, whatever is
    stored) and nothing else: no root state, no index over them."""
    from culm.storage.sql import SqlStore, statements

    store = SqlStore(f"sqlite:///{tmp_path / 'plan.db'}")
    try:
        with store.engine.connect() as conn:
            plan = [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statements.ROOT_COUNTS)]
            rows = conn.exec_driver_sql("SELECT COUNT(*) FROM culm_root_count").scalar()
    finally:
        store.dispose()
    assert plan and all("culm_root_count" in p or "B-TREE" in p for p in plan), plan
    assert rows == 16 * 12
