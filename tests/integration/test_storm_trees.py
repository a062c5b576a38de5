"""Bigger storms than test_storms.py, as an outside team would run them, and what they found.

Random trees (``storm_trees.py``: parallel, exclusive and conditional parallel gateways,
subprocesses, graph loops, polling, single- and multiple-callback activities) take control calls
from many threads, from two processes on one SQLite file, and from the submitters of several
``culm worker`` processes on PostgreSQL + Redis and MariaDB + RabbitMQ, one of them killed with
``kill -9`` mid-storm. After each storm the invariant checker (:mod:`culm.core.invariants`) looks
at every pipeline, the components' own records count how often a node's ``execute`` ran for one
version, and an operator then drives every pipeline to its end.
"""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import components  # noqa: F401 - registers the t_* components
import pytest
from engine_fixtures import run, wait_state
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

pytestmark = pytest.mark.timeout(60)


def test_a_refused_command_leaves_no_read_open_on_the_sqlite_writer(tmp_path: Path) -> None:
    """A refused callback to a failed multiple-callback node read one of its several callback rows
    and raised; the transaction's cursor, kept alive by the exception until the garbage collector
    ran, held its statement mid-result, and so SQLite's read snapshot on the store's one writer
    connection. Once another process had written, every write of this process failed at once
    with "database is locked" (SQLITE_BUSY_SNAPSHOT: the busy timeout does not apply) until the
    collector ran: thousands of refused calls in a two-process storm."""
    db = f"sqlite:///{tmp_path}/two.db"
    start, node = EmptyStartEvent(), ServiceActivity(component_code="t_multi_callback")
    start.extend(node).extend(EmptyEndEvent())
    tree = build_tree(start)
    gc.disable()  # what the storm hit by chance: the refused call's cycle not collected yet
    try:
        with culm.Runtime(db) as rt, culm.Runtime(db, workers=0) as other:
            root = run(rt, tree)
            version = wait_until(lambda: api.get_children_states(rt, node.id).data.get(node.id, {}).get("version"))
            for payload in ({"n": 1}, {"n": 2}, {"n": 3, "fail": True}):
                assert api.callback(rt, node.id, version, payload).result
            wait_state(rt, node.id, "FAILED")
            refusal = api.callback(rt, node.id, version, {"n": 4})
            assert not refusal.result and "already received its callback" in refusal.message
            assert api.pause_pipeline(other, root).result  # another connection writes
            res = api.resume_pipeline(rt, root)
            assert res.result, res.message
            del refusal
    finally:
        gc.enable()


def test_concurrent_appointments_on_a_node_not_reached_are_all_answered(runtime: Any) -> None:
    """``pause_node_appoint`` on a node not reached yet creates its state row. Two at once on a
    server database both found no row and both inserted one: the second's commit hit the primary
    key and came back as "pause_node_appoint failed: IntegrityError: Duplicate entry" (a MariaDB
    storm met it). The loser now does its work again over the row the winner made."""
    answers: list[Any] = []
    for _ in range(4):
        later = ServiceActivity(component_code="t_none")
        start = EmptyStartEvent()
        start.extend(ServiceActivity(component_code="t_callback")).extend(later).extend(EmptyEndEvent())
        root = run(runtime, build_tree(start))
        answers += fire_together(CALLERS, lambda _i, node=later.id: api.pause_node_appoint(runtime, node))
        assert api.revoke_pipeline(runtime, root).result
    bad = [a.message for a in answers if not a.result and ("failed" in a.message or "Duplicate" in a.message)]
    assert not bad, bad
    assert any(a.result for a in answers)


CALLERS = 8


def fire_together(n: int, call: Any) -> list[Any]:
    """``call(i)`` from ``n`` threads released together; their answers."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait(30)
        results[i] = call(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
