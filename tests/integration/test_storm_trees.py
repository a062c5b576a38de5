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
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import components  # noqa: F401 - registers the t_* components
import pytest
import storm_components
import storm_trees
from backends import own_backend
from engine_fixtures import run, wait_state
from storm_trees import check_then_drive, make_forest, repeated, start_all, storm, violations
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("CULM_STORM_TREES_SEED", "21"))  # another seed: CULM_STORM_TREES_SEED=n
SLOW = (0, 20, 100, 300)  # call lengths (ms) for the kill storms: a kill finds calls in flight
HERE = Path(__file__).resolve().parent
PATHS = os.pathsep.join((str(HERE), str(HERE.parent)))


def _log() -> Path:
    return Path(storm_components.log_path())


def _mid_storm_check(runtime: Any, forest: storm_trees.Forest, after: float) -> threading.Thread:
    """Check every pipeline once, ``after`` seconds into the storm (a snapshot is one committed
    moment: the promises hold mid-storm too); a finding is noted among the calls."""
    def look() -> None:
        time.sleep(after)
        for v in violations(runtime, forest):
            forest.note(f"MID-STORM {v} failed: broken promise")

    t = threading.Thread(target=look)
    t.start()
    return t


def _other_process(role: str, url: str, forest: storm_trees.Forest, tmp_path: Path, seconds: float,
                   *broker: str) -> subprocess.Popen[str]:
    ids = tmp_path / f"ids-{role}.json"
    ids.write_text(forest.ids())
    proc = subprocess.Popen([sys.executable, str(HERE / "storm_trees.py"), role, url, str(ids), str(SEED + 1), "4",
                             str(seconds), *broker], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PATHS})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_random_tree_storm_from_many_threads(runtime: Any) -> None:
    """Ten random trees, eight threads firing every kind of control call for 6 s: no unclear
    answer, no broken promise during or after the storm, every pipeline ends once an operator
    acts, and no node's execute ran twice for one version (nothing was killed)."""
    forest = make_forest(random.Random(SEED), 10, 12)
    start_all(runtime, forest)
    looker = _mid_storm_check(runtime, forest, 3)
    fired = storm(runtime, forest, SEED, 8, 6)
    looker.join(60)
    assert not forest.unclear(), forest.unclear()[:10]
    check_then_drive(runtime, forest, SEED)
    again = repeated(_log())
    print(f"\n{fired} calls, {sum(again.values())} executions repeated")
    assert not again if runtime.engine.store.dialect in ("sqlite", "memory") else sum(again.values()) <= 4


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


def test_two_processes_storm_one_sqlite_file(tmp_path: Path) -> None:
    """The runner's process and a second process on the same SQLite file fire calls at once. Before
    the writer's cursor was closed with its transaction, the second process's writes made every
    later write of the first fail at once with "database is locked" (thousands in 20 s)."""
    db = f"sqlite:///{tmp_path}/two.db"
    forest = make_forest(random.Random(SEED), 10, 12)
    with culm.Runtime(db) as rt:
        start_all(rt, forest)
        client = _other_process("client", db, forest, tmp_path, 8)
        fired = storm(rt, forest, SEED, 4, 8)
        out, _ = client.communicate(timeout=60)
        theirs = json.loads(out.strip().splitlines()[-1])
        assert not forest.unclear() and not theirs["unclear"], (forest.unclear() + theirs["unclear"])[:10]
        check_then_drive(rt, forest, SEED)
        print(f"\n{fired} + {theirs['calls']} calls from two processes")
        assert not repeated(_log())


def test_kill_9_of_the_sqlite_runner_mid_storm(tmp_path: Path) -> None:
    """The process running a SQLite file's work is killed with ``kill -9`` while both it and a
    second process fire calls: the second takes the file over, nothing is stranded, every pipeline
    ends, and at most the dead runner's user-code threads (8) ran again."""
    db = f"sqlite:///{tmp_path}/kill.db"
    forest = make_forest(random.Random(SEED), 10, 12, ms=SLOW)
    with culm.Runtime(db, workers=0) as submitter:
        start_all(submitter, forest)
    runner = _other_process("runner", db, forest, tmp_path, 60)
    with culm.Runtime(db) as rt:
        assert rt.dispatcher is None, "the runner process holds the file"

        def kill() -> None:
            time.sleep(3)
            os.kill(runner.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill)
        killer.start()
        fired = storm(rt, forest, SEED, 4, 7)
        killer.join()
        runner.wait(10)
        wait_until(lambda: rt.dispatcher is not None, 20, 0.05, what="this process to take the file over")
        assert not forest.unclear(), forest.unclear()[:10]
        check_then_drive(rt, forest, SEED)
    again = repeated(_log())
    print(f"\nrunner kill -9 mid-storm: {fired} calls here, {sum(again.values())} executions ran again")
    assert sum(again.values()) <= 8


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_kill_9_of_a_worker_mid_storm(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three ``culm worker`` processes (2 pool processes x 2 threads) run ten random trees while
    the submitter and a second process fire calls; one worker is killed with ``kill -9`` 3 s in
    and another started. Nothing is stranded, every pipeline ends, and at most the killed worker's
    4 threads of calls ran again."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CULM_STORM_LOG", str(log))
    monkeypatch.setenv("CULM_WORKER_THREADS", "2")
    backend = own_backend(kind, tmp_path)
    try:
        backend.start_workers(3)
        rt = backend.runtime()
        forest = make_forest(random.Random(SEED), 10, 12, ms=SLOW)
        start_all(rt, forest)
        other = _other_process("client", backend.db_url, forest, tmp_path, 8, backend.broker_url, backend.prefix)

        def kill() -> None:
            time.sleep(3)
            backend.kill_worker(random.Random(SEED).choice(backend.alive()))
            backend.start_workers(1)

        killer = threading.Thread(target=kill)
        killer.start()
        fired = storm(rt, forest, SEED, 4, 8)
        killer.join(60)
        out, _ = other.communicate(timeout=60)
        theirs = json.loads(out.strip().splitlines()[-1])
        assert not forest.unclear() and not theirs["unclear"], (forest.unclear() + theirs["unclear"])[:10]
        check_then_drive(rt, forest, SEED, settle_for=45)
        again = repeated(log)
        print(f"\n{kind} worker kill -9 mid-storm: {fired} + {theirs['calls']} calls, "
              f"{sum(again.values())} executions ran again")
        assert sum(again.values()) <= 4
    finally:
        backend.teardown()


def test_a_long_multiple_callback_call_keeps_its_lock_while_it_runs(runtime: Any) -> None:
    """A multiple callback's calls run one at a time under a lock on the schedule, which lasts
    the lease's length (3 s for the test workers, 30 s on the defaults) and is not extended while
    the call runs (its task's lease is). A call running longer let the next callback in beside it:
    both read the outputs before either was applied, and one call's outputs were lost. The lock
    is held while its holder's task has a live lease."""
    start, node = EmptyStartEvent(), ServiceActivity(component_code="s_multi")
    start.extend(node).extend(EmptyEndEvent())
    run(runtime, build_tree(start))
    version = wait_until(lambda: api.get_children_states(runtime, node.id).data.get(node.id, {}).get("version")
                         if _log().exists() else None, 20, 0.05, what="the node to wait for callbacks")
    assert api.callback(runtime, node.id, version, {"ms": 5000}).result
    wait_until(lambda: "callback" in _log().read_text(), 20, 0.02, what="the long call to start")
    assert api.callback(runtime, node.id, version, {}).result

    def received() -> Any:
        return api.get_execution_data_outputs(runtime, node.id).data.get("received")

    # Side by side, both calls read received == 0 and both wrote 1; one after the other, 2.
    wait_until(lambda: _log().read_text().count("callback") == 2 and received() == 2, 30, 0.05,
               what="both calls applied, one after the other")
    assert api.callback(runtime, node.id, version, {"done": True}).result
    wait_state(runtime, node.id, "FINISHED", timeout=20)
    assert received() == 3


CLOSE_WHILE_CALLING = """
import sys, threading, time
import storm_trees, random, culm
from culm import api
forest = storm_trees.make_forest(random.Random(3), 10, 10)
rt = culm.Runtime(sys.argv[1])
storm_trees.start_all(rt, forest)
answers = []

def caller(i):
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        node = forest.activities[i % len(forest.activities)]
        answers.append(api.get_children_states(rt, node))
        answers.append(api.pause_pipeline(rt, forest.roots[i % len(forest.roots)]))

threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
time.sleep(1)
rt.close()
for t in threads:
    t.join()
closed = sum(1 for a in answers if not a.result and "is closed" in a.message)
print(len(answers), closed, flush=True)
"""


def test_closing_a_runtime_while_threads_call_it(tmp_path: Path) -> None:
    """``Runtime.close()`` while other threads still called the API closed each thread's SQLite
    read connection under the statement that thread was running: the process died of a
    segmentation fault. Now a reader's connection is closed only between its reads, and calls on
    a closed runtime are refused, saying so."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", CLOSE_WHILE_CALLING,
                           f"sqlite:///{tmp_path}/close.db"], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "PYTHONPATH": PATHS})
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls, refused_closed = map(int, proc.stdout.split())
    assert calls > 0 and refused_closed > 0
