"""Control calls never lose to a deadlock: on PostgreSQL and MariaDB, with ``culm worker``s running
the pipelines, operators fire pause / resume / revoke / retry / skip / callback from several threads
at once. A deadlock or serialization victim is retried inside the call (culm._retry), so no
result carries one, and every pipeline ends finished, revoked, or waiting on something an
operator can see and act on.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from typing import Any

import pytest
from support import wait_until

from culm import api
from culm.api import EngineAPIResult
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    SubProcess,
    Var,
    build_tree,
)
from culm.core.invariants import check
from culm.core.snapshots import read_snapshot

pytestmark = pytest.mark.timeout(600)

PIPELINES = 40
BRANCHES = 3
CHAIN = 8
THREADS = 6
CALLS_PER_THREAD = 150
LOCK_WORDS = ("deadlock", "serializ", "lock wait")
VISIBLE_WAITS = {"FAILED", "SUSPENDED"}


def _sleep(seconds: float) -> ServiceActivity:
    act = ServiceActivity(component_code="dist_sleep")
    act.component.inputs.seconds = Var(type=Var.PLAIN, value=seconds)
    return act


def _chain(length: int) -> tuple[ServiceActivity, list[ServiceActivity]]:
    head = _sleep(0.0)
    acts, tail = [head], head
    for _ in range(length - 1):
        tail = tail.extend(_sleep(0.0))
        acts.append(tail)
    return head, acts


def _pipeline() -> tuple[dict[str, Any], dict[str, str]]:
    """Branches busy with many short steps (chains of instant activities, one ending in a poll), a
    callback node, then one more activity: the workers' transactions keep touching the rows the
    commands lock."""
    start, end = EmptyStartEvent(), EmptyEndEvent()
    pg, cg = ParallelGateway(), ConvergeGateway()
    wait, poll, last = ServiceActivity(component_code="dist_callback"), ServiceActivity(component_code="dist_poll"), _sleep(0)
    heads, chains = [], []
    for _ in range(BRANCHES):
        head, acts = _chain(CHAIN)
        heads.append(head)
        chains.append(acts)
    chains[0][-1].extend(poll)
    start.extend(pg).connect(wait, *heads).converge(cg).extend(last).extend(end)
    nodes = {"wait": wait.id, "poll": poll.id, "last": last.id}
    for i, acts in enumerate(chains):
        nodes[f"b{i}_first"], nodes[f"b{i}_mid"] = acts[0].id, acts[len(acts) // 2].id
    return build_tree(start), nodes


def _children(rt: Any, root: str) -> dict[str, Any]:
    data = api.get_pipeline_states(rt, root).data or {}
    return data.get(root, {}).get("children", {})


def _operate(rt: Any, runs: list[tuple[str, dict[str, str]]], seed: int, results: list[tuple[str, EngineAPIResult]]) -> None:
    rng = random.Random(seed)
    for _ in range(CALLS_PER_THREAD):
        root, nodes = rng.choice(runs)
        node = nodes[rng.choice(list(nodes))]
        op = rng.choices(
            ["pause", "resume", "revoke", "retry", "skip", "callback", "fail"],
            weights=[8, 10, 1, 2, 2, 3, 1],
        )[0]
        if op == "pause":
            res = api.pause_pipeline(rt, root)
        elif op == "resume":
            res = api.resume_pipeline(rt, root)
        elif op == "revoke":
            res = api.revoke_pipeline(rt, root)
        elif op == "retry":
            res = api.retry_node(rt, node)
        elif op == "skip":
            res = api.skip_node(rt, node)
        elif op == "callback":
            version = _children(rt, root).get(nodes["wait"], {}).get("version", "v-unknown")
            res = api.callback(rt, nodes["wait"], version, {"from": seed})
        else:
            res = api.forced_fail_activity(rt, node, "forced by the storm")
        results.append((op, res))


def _dump(rt: Any, root: str, nodes: dict[str, str], backend: Any) -> str:
    from sqlalchemy import text

    names = {v: k for k, v in nodes.items()}
    data = (api.get_pipeline_states(rt, root).data or {}).get(root, {})
    states = {names.get(n, n): e["state"] for n, e in data.get("children", {}).items()}
    with rt.store.engine.connect() as conn:
        tasks = conn.execute(text("SELECT kind, node_id, due, owner, claimed_until FROM culm_task WHERE root_id = :r"),
                             {"r": root}).fetchall()
        procs = conn.execute(text("SELECT id, current_node_id, asleep, suspended, suspended_by, dead, ack_num, need_ack"
                                  " FROM culm_process WHERE root_id = :r"), {"r": root}).fetchall()
    stuck = [n for n, e in data.get("children", {}).items() if e["state"] == "RUNNING"]
    ran = {n: [line for line in backend.exec_log.read_text().splitlines() if n in line] for n in stuck}
    logged = {n: [line[:300] for i in backend.alive() for line in backend.worker_log(i).splitlines() if n in line]
              for n in stuck}
    violations = [str(v) for v in check(read_snapshot(rt.engine, root))]
    changes = [(names.get(t.node_id, t.node_id), t.from_state, t.to_state)
               for t in rt.engine.store.feed.transitions(root)[0] if t.node_id in stuck]
    return (f"state {data.get('state')}, nodes {states}, tasks {tasks}, processes {procs}, nodes {nodes}; "
            f"invariant violations {violations}; transitions of the RUNNING nodes {changes}; "
            f"executions of the RUNNING nodes {ran}; worker log lines naming them {logged}")


def _settled(rt: Any, root: str, nodes: dict[str, str]) -> str | None:
    """Why the pipeline may rest as it is (None while it is still moving on its own)."""
    data = (api.get_pipeline_states(rt, root).data or {}).get(root, {})
    state, children = data.get("state"), data.get("children", {})
    if state in ("FINISHED", "REVOKED"):
        return state
    if state == "SUSPENDED":
        return "pipeline paused"
    waits = sorted(n for n, e in children.items() if e["state"] in VISIBLE_WAITS)
    if waits:
        return f"nodes waiting for an operator: {waits}"
    if children.get(nodes["wait"], {}).get("state") == "RUNNING":
        return "callback node waiting"
    return None


def test_control_calls_from_many_threads_never_lose_to_a_deadlock(
    distributed_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rt = distributed_backend.runtime()
    runs = []
    for _ in range(PIPELINES):
        tree, nodes = _pipeline()
        assert api.run_pipeline(rt, tree).result
        runs.append((tree["id"], nodes))

    results: list[tuple[str, EngineAPIResult]] = []
    caplog.set_level(logging.INFO, logger="culm.storage")
    threads = [threading.Thread(target=_operate, args=(rt, runs, seed, results)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == THREADS * CALLS_PER_THREAD

    lost = [(op, r.message) for op, r in results if any(w in r.message.lower() for w in LOCK_WORDS)]
    assert not lost, f"calls refused because of a lock conflict: {lost[:5]}"
    retried = sum(1 for rec in caplog.records if "deadlock victim" in rec.getMessage())
    refused = sum(1 for _, r in results if not r.result)
    ok = collections.Counter(op for op, r in results if r.result)
    print(f"\n{distributed_backend.name}: {len(results)} calls, {refused} refused (wrong state), "
          f"{retried} deadlock victims retried; applied: {dict(ok)}")

    # Every pipeline comes to rest in a state the invariant allows.
    for root, nodes in runs:
        try:
            why = wait_until(lambda r=root, n=nodes: _settled(rt, r, n), 120, 0.1,
                             what=f"pipeline {root} to come to rest")
        except AssertionError:
            raise AssertionError(f"pipeline {root} neither ended nor waits visibly: {_dump(rt, root, nodes, distributed_backend)}") from None
        children = _children(rt, root)
        if why == "FINISHED":
            assert all(e["state"] == "FINISHED" for e in children.values()), (root, children)
        for node_id, entry in children.items():
            if entry["state"] == "FAILED":  # failed by the storm (forced fail), never by a lock conflict
                ex_data = str((api.get_execution_data_outputs(rt, node_id).data or {}).get("ex_data", ""))
                assert not any(w in ex_data.lower() for w in LOCK_WORDS[:3]), (node_id, ex_data)


def _waiting(rt: Any, walker: Any, node_id: str) -> int:
    """How many sessions wait for a lock ``walker`` (a connection in a transaction) holds: on
    MariaDB, for its lock of ``node_id``'s state (a transaction that wrote nothing shows no id)."""
    from sqlalchemy import text

    with rt.store.engine.connect() as probe:  # its own session: PostgreSQL's activity view is per transaction
        if probe.dialect.name == "postgresql":
            me = walker.execute(text("SELECT pg_backend_pid()")).scalar()
            sql, args = "SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))", {"me": me}
        else:
            sql = ("SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w JOIN information_schema.INNODB_LOCKS l"
                   " ON l.lock_id = w.requested_lock_id WHERE l.lock_table LIKE :table AND l.lock_data = :row")
            args = {"table": "%`culm_state`", "row": f"'{node_id}'"}
        return int(probe.execute(text(sql), args).scalar() or 0)


# MariaDB's information_schema InnoDB tables (INNODB_TRX, INNODB_LOCKS, INNODB_LOCK_WAITS) are read
# from one server-wide copy, taken again only once nobody has read it for 100 ms (trx0i_s.cc,
# CACHE_MIN_IDLE_TIME_NS): a probe asking every 20 ms kept reading the copy of its first question,
# taken before the command began to wait, and timed out while the command waited all along (SHOW
# ENGINE INNODB STATUS: its share lock of the root's row waiting 29.8 s, for the test's UPDATE).
MARIADB_PROBE_INTERVAL = 0.25


def _until_waited_for(rt: Any, holder: Any, node_id: str, what: str) -> None:
    """Wait until a session waits for a lock ``holder`` holds (on MariaDB: of ``node_id``'s state)."""
    interval = 0.02 if holder.dialect.name == "postgresql" else MARIADB_PROBE_INTERVAL
    wait_until(lambda: _waiting(rt, holder, node_id) > 0, 30, interval, what=what)


def _resting_subprocess(rt: Any, paused: bool) -> tuple[str, str]:
    """A run resting in a subprocess (its node waits for a callback; paused if ``paused``), with no
    task left: no worker touches its rows. Its root's id and the subprocess's."""
    inner = ServiceActivity(component_code="dist_callback")
    sub_start = EmptyStartEvent()
    sub_start.extend(inner).extend(EmptyEndEvent())
    sub = SubProcess(start=sub_start)
    start = EmptyStartEvent()
    start.extend(sub).extend(EmptyEndEvent())
    tree = build_tree(start)
    root = tree["id"]
    assert api.run_pipeline(rt, tree).result
    wait_until(lambda: _children(rt, root).get(inner.id, {}).get("state") == "RUNNING", 60, 0.05,
               what=f"{inner.id} to wait for its callback")
    if paused:
        assert api.pause_pipeline(rt, sub.id).result
    wait_until(lambda: not read_snapshot(rt.engine, root).tasks, 30, 0.05, what=f"{root} to have no task left")
    return root, sub.id


@pytest.mark.parametrize("op", ["pause", "resume", "revoke"])
def test_a_command_on_a_subprocess_waits_for_a_walk_ending_it_without_holding_the_root(
    distributed_backend: Any, op: str
) -> None:
    """A walk holds its stack's states shared (walker._enter), and the one that ends a subprocess
    writes it, then (going on to the root's end) the root. A pause, resume or revoke of the
    subprocess that came in between waits for the walk's share of the subprocess; it must hold
    nothing the walk writes after it, or the two wait for each other (MariaDB: 1213, the walk's
    batch retried; PostgreSQL: both wait until the command's lock wait gives up). Here a second
    session plays the walk: it holds both rows shared, lets the command queue behind it, writes
    the subprocess, and then must get the root's row without waiting (NOWAIT)."""
    from sqlalchemy import text

    rt = distributed_backend.runtime()
    root, sub_id = _resting_subprocess(rt, paused=op == "resume")

    answer: list[Any] = []
    call = {"pause": api.pause_pipeline, "resume": api.resume_pipeline, "revoke": api.revoke_pipeline}[op]
    with rt.store.engine.connect() as walker:
        share = " FOR SHARE" if walker.dialect.name == "postgresql" else " LOCK IN SHARE MODE"
        with walker.begin():
            held = walker.execute(text("SELECT node_id FROM culm_state WHERE node_id IN (:r, :s) ORDER BY node_id" + share),
                                  {"r": root, "s": sub_id}).fetchall()
            assert len(held) == 2, held
            command = threading.Thread(target=lambda: answer.append(call(rt, sub_id)))
            command.start()  # the commit (or the rollback of a failure) below lets it go on
            _until_waited_for(rt, walker, sub_id, f"{op} of {sub_id} to wait for the walk's share of its row")
            walker.execute(text("UPDATE culm_state SET version = version WHERE node_id = :s"), {"s": sub_id})
            try:
                walker.execute(text("SELECT node_id FROM culm_state WHERE node_id = :r FOR UPDATE NOWAIT"), {"r": root})
            except Exception as exc:  # noqa: BLE001 - the lock cycle, reported as the failure
                raise AssertionError(f"the walk ending {sub_id} cannot write the root {root}: {op} of the "
                                     f"subprocess holds it while it waits for the walk ({exc})") from None
            walker.execute(text("UPDATE culm_state SET version = version WHERE node_id = :r"), {"r": root})
        command.join(60)
    assert not command.is_alive(), f"{op} of {sub_id} did not return in 60 s"
    assert answer and answer[0].result, answer
    want = {"pause": "SUSPENDED", "resume": "RUNNING", "revoke": "REVOKED"}[op]
    assert _children(rt, root)[sub_id]["state"] == want
    assert api.revoke_pipeline(rt, root).result


@pytest.mark.parametrize("op", ["pause", "resume", "revoke"])
def test_a_command_on_a_subprocess_waits_for_a_revoke_of_its_root_and_is_refused(
    distributed_backend: Any, op: str
) -> None:
    """The other side of the lock order above: the subprocess's own row locked first, the root's
    state is still read held, so a revoke of the root that holds the root's row when the command
    comes is waited for, and once it commits the command is refused as revoked (it neither slips
    between the revoke's check and its commit nor writes the subprocess back to RUNNING). A second
    session plays the revoke's write of the root (its first lock), then restores the row for the
    real revoke that ends the run."""
    from sqlalchemy import text

    rt = distributed_backend.runtime()
    root, sub_id = _resting_subprocess(rt, paused=op == "resume")
    before = _children(rt, root)[sub_id]["state"]

    answer: list[Any] = []
    call = {"pause": api.pause_pipeline, "resume": api.resume_pipeline, "revoke": api.revoke_pipeline}[op]
    with rt.store.engine.connect() as revoke:
        with revoke.begin():
            revoke.execute(text("UPDATE culm_state SET name = 'REVOKED' WHERE node_id = :r"), {"r": root})
            command = threading.Thread(target=lambda: answer.append(call(rt, sub_id)))
            command.start()  # the commit below lets it go on
            _until_waited_for(rt, revoke, root, f"{op} of {sub_id} to wait for the revoke's lock of the root")
        command.join(60)
        assert not command.is_alive(), f"{op} of {sub_id} did not return in 60 s"
        with revoke.begin():
            revoke.execute(text("UPDATE culm_state SET name = 'RUNNING' WHERE node_id = :r"), {"r": root})
    assert answer and not answer[0].result, answer
    assert "revoked" in answer[0].message and root in answer[0].message, answer[0].message
    assert _children(rt, root)[sub_id]["state"] == before
    assert api.revoke_pipeline(rt, root).result
