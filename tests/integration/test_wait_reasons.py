"""``wait_reason`` on state entries: every node that is not moving says why, on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from engine_fixtures import chain as line_of
from engine_fixtures import node_state, run, wait_pipeline, wait_state
from support import wait_until

from culm import api
from culm.builder import (
    ConvergeGateway,
    Data,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)

pytestmark = pytest.mark.timeout(60)


def chain(*codes: str) -> tuple[dict, list[str]]:
    start = EmptyStartEvent()
    acts = [ServiceActivity(component_code=code) for code in codes]
    tail = start
    for act in acts:
        tail = tail.extend(act)
    tail.extend(EmptyEndEvent())
    return build_tree(start), [a.id for a in acts]


def reason(runtime, node_id: str) -> dict | None:
    entry = node_state(runtime, node_id)
    return entry["wait_reason"] if entry is not None else None


def test_moving_and_ended_nodes_have_none(runtime):
    tree, (act,) = chain("example_component")
    wait_pipeline(runtime, run(runtime, tree))
    states = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]
    assert states["wait_reason"] is None
    assert all(child["wait_reason"] is None for child in states["children"].values())


def test_failed_node(runtime):
    tree, (act,) = chain("t_fail")
    run(runtime, tree)
    wait_state(runtime, act, "FAILED")
    got = reason(runtime, act)
    assert got["kind"] == "failed"
    assert "retry" in got["text"] and "skip" in got["text"]
    assert reason(runtime, tree["id"]) is None  # the pipeline itself still runs


def test_callback_then_pause_then_resume(runtime):
    tree, (act,) = chain("t_callback")
    run(runtime, tree)
    wait_until(lambda: (reason(runtime, act) or {}).get("kind") == "callback", what="a callback wait")
    got = reason(runtime, act)
    assert got["version"] == node_state(runtime, act)["version"]
    assert got["version"] in got["text"]

    assert api.pause_pipeline(runtime, tree["id"]).result
    got = reason(runtime, tree["id"])
    assert got["kind"] == "paused" and "paused by an operator" in got["text"]
    # Children listing carries the same reasons.
    children = api.get_children_states(runtime, tree["id"]).data[tree["id"]]
    assert children["wait_reason"]["kind"] == "paused"
    assert children["children"][act]["wait_reason"]["kind"] == "callback"

    assert api.resume_pipeline(runtime, tree["id"]).result
    assert api.callback(runtime, act, node_state(runtime, act)["version"], {"ok": True}).result
    wait_pipeline(runtime, tree["id"])
    assert reason(runtime, act) is None


def test_poll_names_the_next_poll(runtime):
    tree, (act,) = chain("t_slow_poll")
    run(runtime, tree)
    later = datetime.now(UTC) + timedelta(minutes=50)

    def next_poll_set():
        got = reason(runtime, act) or {}
        return got if got.get("kind") == "poll" and (got["next_poll"] or later) > later else None

    # Right after execute the first poll is due at once; then the next one is an hour away.
    got = wait_until(next_poll_set, what="a poll an hour away")
    assert got["next_poll"] < datetime.now(UTC) + timedelta(minutes=70)
    assert got["next_poll"].tzinfo is not None
    assert got["polls"] in (0, 1)  # the first poll may come at once
    assert "next poll at" in got["text"]
    assert api.revoke_pipeline(runtime, tree["id"]).result


def test_pause_appointed_before_and_at_the_node(runtime):
    tree, (first, second) = chain("t_callback", "example_component")
    run(runtime, tree)
    wait_until(lambda: (reason(runtime, first) or {}).get("kind") == "callback", what="a callback wait")
    assert api.pause_node_appoint(runtime, second).result
    assert api.callback(runtime, first, node_state(runtime, first)["version"], {"ok": True}).result
    wait_state(runtime, first, "FINISHED")
    got = wait_until(lambda: (reason(runtime, second) or {}).get("reached") and reason(runtime, second),
                     what="the pause to be reached")
    assert got["kind"] == "pause_appointed" and "resume the node" in got["text"]
    assert api.resume_node_appoint(runtime, second).result
    wait_pipeline(runtime, tree["id"])


def test_converge_names_the_missing_branches(runtime):
    start = EmptyStartEvent()
    fork = ParallelGateway()
    good = ServiceActivity(component_code="example_component")
    bad = ServiceActivity(component_code="t_fail")
    join = ConvergeGateway()
    start.extend(fork).connect(good, bad).to(fork).converge(join).extend(EmptyEndEvent())
    tree = build_tree(start)
    run(runtime, tree)
    wait_state(runtime, bad.id, "FAILED")
    wait_state(runtime, good.id, "FINISHED")
    got = wait_until(lambda: reason(runtime, fork.id), what="the fork's wait reason")
    assert got["kind"] == "converge"
    assert got["converge"] == join.id
    assert got["branches"] == [bad.id]
    assert join.id in got["text"] and bad.id in got["text"]
    assert reason(runtime, bad.id)["kind"] == "failed"


def test_a_pipeline_nothing_runs_says_it_is_stalled(tmp_path, monkeypatch):
    """A SQLite file opened only by processes without workers: nothing runs its steps. The
    pipeline's own entry says so once a step has been due for STALLED_AFTER seconds, naming the
    node it waits at; a process with workers that opens the file then finishes it."""
    import culm
    from culm.core import waits

    monkeypatch.setattr(waits, "STALLED_AFTER", 0.3)
    db = f"sqlite:///{tmp_path}/idle.db"
    tree, (act,) = chain("example_component")
    with culm.Runtime(db, workers=0) as submitter:
        assert submitter.dispatcher is None
        run(submitter, tree)

        def stalled():
            found = node_state(submitter, tree["id"])["wait_reason"]
            return found if found and found["kind"] == "stalled" else None

        found = wait_until(stalled, 10, 0.05, what="the pipeline to say it is stalled")
        assert found["nodes"] == [tree["start_event"]["id"]]
        assert "worker" in found["text"] and "SQLite" in found["text"]
        with culm.Runtime(db, workers=1):
            wait_pipeline(submitter, tree["id"], timeout=20)
        assert node_state(submitter, tree["id"])["wait_reason"] is None


def test_polls_before_a_fork_read_no_processes_and_after_it_name_the_branches(tmp_path):
    """Before its first fork a pipeline has no branches to wait for: its polls read no process
    rows (a poller of a pipeline that has not forked pays nothing for the converge reason). Once
    it forked, they read them again and the fork names the branch it waits for."""
    import culm

    first = ServiceActivity(component_code="t_callback")
    fork, join = ParallelGateway(), ConvergeGateway()
    good, waiting = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="t_callback")
    start = EmptyStartEvent()
    start.extend(first).extend(fork).connect(good, waiting).to(fork).converge(join).extend(EmptyEndEvent())
    tree = build_tree(start)
    with culm.Runtime(f"sqlite:///{tmp_path}/fork.db") as rt:
        run(rt, tree)
        wait_until(lambda: (reason(rt, first.id) or {}).get("kind") == "callback", what="the first callback wait")
        seen: list[str] = []
        raw, _ = rt.store._thread_reader()  # this thread's read connection (get_pipeline_states reads on it)
        raw.dbapi_connection.set_trace_callback(seen.append)

        def polled(node_id: str) -> dict | None:
            data = api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]
            return data["children"][node_id]["wait_reason"]

        assert polled(first.id)["kind"] == "callback"
        assert seen and not [s for s in seen if "culm_process" in s]
        assert api.callback(rt, first.id, node_state(rt, first.id)["version"], {"ok": True}).result
        wait_state(rt, good.id, "FINISHED")
        seen.clear()
        got = wait_until(lambda: polled(fork.id), what="the fork's converge reason")
        assert got["kind"] == "converge" and got["branches"] == [waiting.id]
        assert [s for s in seen if "culm_process" in s]
        assert api.callback(rt, waiting.id, node_state(rt, waiting.id)["version"], {"ok": True}).result
        wait_pipeline(rt, tree["id"])


def _counting_read_facts(monkeypatch) -> list[int]:
    """Count the calls of culm.core.waits.read_facts (get_pipeline_states makes its facts there)."""
    from culm.core import waits

    calls = [0]
    real = waits.read_facts

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(waits, "read_facts", counted)
    return calls


def test_idle_polls_reuse_the_reasons_and_hand_out_copies(tmp_path, monkeypatch):
    """A pipeline that stands still (a fork waiting for a callback branch): a poll that finds the
    change feed where the previous poll left it makes no wait facts (the previous ones hold), and
    what it hands out is equal to a first read's; a caller that changes its result (a reason's
    text, the fork's list of branches) changes nothing the next poll hands out. Once the feed
    moves (the callback), the reasons are made again."""
    import culm

    fork, join = ParallelGateway(), ConvergeGateway()
    good, waiting = ServiceActivity(component_code="example_component"), ServiceActivity(component_code="t_callback")
    start = EmptyStartEvent()
    start.extend(fork).connect(good, waiting).to(fork).converge(join).extend(EmptyEndEvent())
    tree = build_tree(start)
    with culm.Runtime(f"sqlite:///{tmp_path}/idle.db") as rt:
        run(rt, tree)
        wait_state(rt, good.id, "FINISHED")
        wait_until(lambda: (reason(rt, waiting.id) or {}).get("kind") == "callback", what="the callback wait")
        calls = _counting_read_facts(monkeypatch)

        def poll() -> dict:
            return api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]

        poll()  # (reasons are kept from a tree's second poll on)
        first = poll()
        kept = rt.engine.state_trees.tree_of(tree["id"])
        made = calls[0]
        converge = first["children"][fork.id]["wait_reason"]
        assert converge["kind"] == "converge" and converge["branches"] == [waiting.id]
        assert first["children"][waiting.id]["wait_reason"]["kind"] == "callback"
        fresh = culm.Runtime(f"sqlite:///{tmp_path}/idle.db", workers=0)
        try:  # a full read by another runtime of the same file: what every poll must hand out
            expected = api.get_pipeline_states(fresh, tree["id"]).data[tree["id"]]
        finally:
            fresh.close()
        assert first == expected
        made = calls[0]  # (the other runtime made its own)
        converge["branches"].append("not-a-node")
        converge["text"] = "changed by the caller"
        first["children"][waiting.id]["wait_reason"]["version"] = "changed"
        del first["children"][good.id]
        second = poll()
        assert rt.engine.state_trees.tree_of(tree["id"]) is kept  # nothing moved in between
        assert calls[0] == made  # the facts of the previous poll were reused
        assert second == expected
        assert second["children"][fork.id]["wait_reason"] is not converge
        third = poll()
        assert third == expected and calls[0] == made
        assert api.callback(rt, waiting.id, node_state(rt, waiting.id)["version"], {"ok": True}).result
        wait_pipeline(rt, tree["id"])
        done = poll()
        assert calls[0] > made  # the feed moved: the facts were made again
        assert done["state"] == "FINISHED"
        assert all(child["wait_reason"] is None for child in done["children"].values())


def test_idle_polls_still_count_time(tmp_path, monkeypatch):
    """The reasons that depend on the clock still change between polls that find nothing new in
    the feed: a pipeline nobody runs says nothing at first, then (STALLED_AFTER later, the feed
    unmoved) that it is stalled, then how long that has been, counted on; and its polls make the
    wait facts twice (a tree's second poll keeps them for the others: only the stalled check is
    made again)."""
    import culm
    from culm.core import waits

    monkeypatch.setattr(waits, "STALLED_AFTER", 1.0)
    db = f"sqlite:///{tmp_path}/stalled.db"
    tree, (act,) = chain("example_component")
    with culm.Runtime(db, workers=0) as submitter:
        run(submitter, tree)
        calls = _counting_read_facts(monkeypatch)

        polls = [0]

        def root_reason() -> dict | None:
            polls[0] += 1
            return api.get_pipeline_states(submitter, tree["id"]).data[tree["id"]]["wait_reason"]

        assert root_reason() is None  # (the pipeline started less than a second ago)
        kept = submitter.engine.state_trees.tree_of(tree["id"])
        assert kept is not None
        found = wait_until(lambda: (root_reason() or {}).get("kind") == "stalled" and root_reason(), 10, 0.05,
                           what="the pipeline to say it is stalled")
        assert submitter.engine.state_trees.tree_of(tree["id"]) is kept  # no feed row in between
        found["text"] = "changed by the caller"
        later = wait_until(lambda: (r := root_reason()) and r["text"] != found["text"] and r, 10, 0.05,
                           what="a stalled text")
        counted = wait_until(lambda: (r := root_reason()) and r["text"] != later["text"] and r, 10, 0.05,
                             what="the stalled time counted on")
        assert later["since"] == counted["since"] and later["nodes"] == counted["nodes"]
        assert submitter.engine.state_trees.tree_of(tree["id"]) is kept
        assert calls[0] == 2 and polls[0] >= 5


def test_a_failed_node_under_a_revoked_intermediate_subprocess_says_so_at_every_level(runtime):
    """Session 19's trial: root -> outer subprocess -> inner subprocess (revoked) -> a FAILED node.
    Read on its own (get_children_states of the node, as `culm status NODE` and the console's node
    panel do), the node's reason said "retry it, skip it": its parents beyond the entry were not
    read, so the revoked inner subprocess was missed and the operator was offered commands the
    engine refuses. Every read of it now names the revoked subprocess."""
    from culm.builder import SubProcess

    broken = ServiceActivity(component_code="t_fail")
    inner = SubProcess(start=line_of(broken))
    outer = SubProcess(start=line_of(inner))
    tree = build_tree(line_of(outer))
    run(runtime, tree)
    wait_state(runtime, broken.id, "FAILED")
    assert api.revoke_pipeline(runtime, inner.id).result
    wait_state(runtime, inner.id, "REVOKED")
    own = reason(runtime, broken.id)
    assert own is not None and own["kind"] == "failed" and own.get("revoked") is True, own
    assert f"pipeline {inner.id} is revoked" in own["text"]
    listed = api.get_children_states(runtime, inner.id).data[inner.id]["children"][broken.id]["wait_reason"]
    whole = api.get_pipeline_states(runtime, tree["id"]).data[tree["id"]]["children"][broken.id]["wait_reason"]
    assert listed == whole == own



def test_a_list_page_s_attention_names_failed_and_called_back_nodes(runtime):
    """culm.core.waits.attention, which `culm list` and the console's list show: each RUNNING
    pipeline's FAILED nodes and nodes waiting for a callback, by id and tree name, on every backend."""
    from culm.core import waits

    failing, (broken,) = chain("t_fail")
    waiting, (asked,) = chain("t_callback")
    fine, _ = chain("example_component")
    for tree in (failing, waiting):
        run(runtime, tree)
    wait_pipeline(runtime, run(runtime, fine))
    wait_state(runtime, broken, "FAILED")
    wait_until(lambda: (reason(runtime, asked) or {}).get("kind") == "callback", what="a callback wait")
    with runtime.store.reading() as unit:
        found = waits.attention(unit, [failing["id"], waiting["id"], fine["id"]])
    assert found[failing["id"]] == {"failed": [{"node_id": broken, "name": ""}], "failed_count": 1,
                                    "callbacks": [], "callback_count": 0}
    (called,) = found[waiting["id"]]["callbacks"]
    assert (called["node_id"], called["name"], called["kind"]) == (asked, "", "callback")
    assert found[waiting["id"]]["failed"] == [] and fine["id"] not in found


def test_a_list_page_s_attention_reads_a_bounded_amount_however_many_nodes_wait(runtime, monkeypatch):
    """A pipeline with 8 failed and 8 callback-waiting nodes: attention names the
    first 3 of each with how many there are, reading at most 3 rows of each kind per pipeline, only
    the names out of the tree once, and nothing of it when the names are kept (the console
    reloads its list on every change)."""
    from culm.core import waits
    from culm.storage.sql.base import SqlUnit

    start, fork, join = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    failing = [ServiceActivity(component_code="t_fail", name=f"fail {i}") for i in range(8)]
    asking = [ServiceActivity(component_code="t_callback", name=f"ask {i}") for i in range(8)]
    start.extend(fork).connect(*failing, *asking).to(fork).converge(join).extend(EmptyEndEvent())
    tree = build_tree(start)
    root = tree["id"]
    run(runtime, tree)
    for act in failing:
        wait_state(runtime, act.id, "FAILED")
    for act in asking:
        wait_until(lambda act=act: (reason(runtime, act.id) or {}).get("kind") == "callback", what="a callback wait")
    read: list[tuple[str, int, int]] = []  # (statement, rows, bytes)
    plain_all = SqlUnit._all

    def counted_all(self, sql, params=()):
        rows = plain_all(self, sql, params)
        read.append((sql, len(rows), sum(len(v) if isinstance(v, str | bytes) else 8 for r in rows for v in r)))
        return rows

    monkeypatch.setattr(SqlUnit, "_all", counted_all)
    names = waits.NodeNames()
    with runtime.store.reading() as unit:
        first = waits.attention(unit, [root], names)
        on_sql = isinstance(unit, SqlUnit)
        kept = read[:]
        read.clear()
        again = waits.attention(unit, [root], names)
    assert first == again
    got = first[root]
    ids = sorted(a.id for a in failing)[:3]
    assert got["failed"] == [{"node_id": i, "name": next(a.name for a in failing if a.id == i)} for i in ids]
    assert (got["failed_count"], got["callback_count"]) == (8, 8)
    assert [c["node_id"] for c in got["callbacks"]] == sorted(a.id for a in asking)[:3]
    assert all(c["kind"] == "callback" and c["name"].startswith("ask ") for c in got["callbacks"])
    if on_sql:
        # Two grouped reads of at most 3 rows each, then the names alone out of the tree (neither
        # the tree whole, nor the root data and the options); with the names kept, none of it.
        assert [rows <= 3 for sql, rows, _ in kept if "culm_state" in sql] == [True, True]
        (trees,) = [sql for sql, _, _ in kept if "culm_pipeline" in sql]
        assert "root_data" not in trees and "options" not in trees
        assert len(read) == 2 and all(rows <= 3 for _, rows, _ in read) and sum(b for _, _, b in read) < 2_000


def test_node_names_reads_only_the_names_asked_for_wherever_the_nodes_lie(runtime, monkeypatch):
    """`culm list` and the console name a few nodes of each pipeline of a page: of a start and end
    event, a gateway, an activity two subprocesses deep, a SubProcess node, a node whose id holds
    quotes, a backslash and an accent; a node without a name or of another run has ``""``. Each
    run's tree is read once, in one statement for the page (review22: session 21's SQL that cut
    each name out of the stored text took 6-13x longer than these whole reads)."""
    from culm.builder import SubProcess
    from culm.storage.sql.base import SqlUnit

    deep = ServiceActivity(component_code="example_component", name="deep step")
    inner = SubProcess(start=line_of(deep), name="inner sub")
    outer = SubProcess(start=line_of(inner), name="outer sub")
    odd = ServiceActivity(id='odd "id" \\ é', component_code="example_component", name="odd one")
    nameless = ServiceActivity(component_code="example_component")
    start, fork, join, end = EmptyStartEvent(name="the start"), ParallelGateway(name="fork here"), \
        ConvergeGateway(name="join"), EmptyEndEvent(name="the end")
    start.extend(fork).connect(outer, nameless).to(fork).converge(join).extend(end)
    tree = build_tree(start)
    other = build_tree(line_of(odd))
    for each in (tree, other):
        wait_pipeline(runtime, run(runtime, each))
    read: list[str] = []
    plain_all = SqlUnit._all

    def counted_all(self, sql, params=()):
        read.append(sql)
        return plain_all(self, sql, params)

    monkeypatch.setattr(SqlUnit, "_all", counted_all)
    asked = [start.id, end.id, fork.id, deep.id, inner.id, nameless.id, "nowhere"]
    with runtime.store.reading() as unit:
        names = unit.node_names({tree["id"]: asked, other["id"]: [odd.id], "no-such-run": ["x"]})
        on_sql = isinstance(unit, SqlUnit)
    assert names[tree["id"]] == {start.id: "the start", end.id: "the end", fork.id: "fork here",
                                 deep.id: "deep step", inner.id: "inner sub", nameless.id: "", "nowhere": ""}
    assert names[other["id"]] == {odd.id: "odd one"}
    assert "no-such-run" not in names
    if on_sql:
        assert len(read) == 1 and "tree FROM culm_pipeline" in read[0], read


@pytest.mark.parametrize("value", ["x" * 1_200_000, datetime(2020, 1, 1), float("nan"), "NaN and Infinity"],
                         ids=["compressed", "pickled", "nan", "nan-in-text"])
def test_node_names_of_a_tree_the_database_cannot_read_come_from_the_tree_read_whole(runtime, value):
    """review21b: a tree the codec stores compressed or pickled (an envelope), or one holding a
    NaN (not JSON), gave "" for its names (MariaDB, the envelopes everywhere) or made SQLite and
    PostgreSQL raise (`culm list` crashed, the REST list answered 500): such a tree is read whole."""
    step = ServiceActivity(component_code="example_component", name="the step")
    tree = build_tree(line_of(step), data=Data(inputs={"${k}": Var(type=Var.PLAIN, value=value)}))
    plain = build_tree(line_of(named := ServiceActivity(component_code="example_component", name="plain one")))
    for each in (tree, plain):
        wait_pipeline(runtime, run(runtime, each))
    with runtime.store.reading() as unit:
        names = unit.node_names({tree["id"]: [step.id], plain["id"]: [named.id]})
    assert names == {tree["id"]: {step.id: "the step"}, plain["id"]: {named.id: "plain one"}}


@pytest.mark.parametrize("value", ["\x00", "\ud800", "名字", 'a "quote"'], ids=["nul", "lone-surrogate", "cjk", "quote"])
def test_node_names_of_a_tree_holding_an_escape_come_from_the_tree_read_whole(runtime, value):
    """review21c: the codec escapes every character outside printable ASCII; ``\\u0000`` made
    PostgreSQL raise (the list's read failed), a lone surrogate made it raise and MariaDB answer
    NULL (a name ""): a tree holding any escape is read whole."""
    step = ServiceActivity(component_code="example_component", name="the step")
    tree = build_tree(line_of(step), data=Data(inputs={"${k}": Var(type=Var.PLAIN, value=value)}))
    wait_pipeline(runtime, run(runtime, tree))
    with runtime.store.reading() as unit:
        names = unit.node_names({tree["id"]: [step.id]})
    assert names == {tree["id"]: {step.id: "the step"}}


@pytest.mark.parametrize("name", ["a\ud800b", "a\x00b", "步骤 «一»", "finance tenant"],
                         ids=["lone-surrogate", "nul", "cjk", "words-holding-nan"])
def test_a_node_name_comes_back_as_the_tree_gives_it(runtime, name):
    """review21c: SQLite cut a name at a NUL and failed to decode a lone surrogate; MariaDB's
    case-blind INSTR took 'finance' for a NaN (a whole read: right, slower)."""
    step = ServiceActivity(component_code="example_component", name=name)
    tree = build_tree(line_of(step))
    wait_pipeline(runtime, run(runtime, tree))
    with runtime.store.reading() as unit:
        names = unit.node_names({tree["id"]: [step.id]})
    assert names == {tree["id"]: {step.id: name}}
