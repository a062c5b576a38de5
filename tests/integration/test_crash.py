"""kill -9 in the middle of a run: a restarted runtime finishes it, runs no finished node again."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from crash_app import batch_tree_of
from support import wait_until

import culm
from culm import api

APP = Path(__file__).with_name("crash_app.py")
# crash_app.py and what it imports from tests/ (the support module)
APP_PATH = os.pathsep.join((str(APP.parent), str(APP.parent.parent)))
pytestmark = pytest.mark.timeout(90)


def _spawn(mode: str, db: str, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CRASH_LOG": str(log), "PYTHONPATH": APP_PATH}
    return subprocess.Popen([sys.executable, str(APP), mode, db, *extra], stdout=subprocess.PIPE, env=env, text=True)


def _lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_kill_9_mid_run_then_restart_finishes_without_rerunning_finished_nodes(tmp_path: Path) -> None:
    db, log = f"sqlite:///{tmp_path}/crash.db", tmp_path / "exec.log"
    first = _spawn("start", db, log)
    root = first.stdout.readline().strip()
    wait_until(lambda: sum(1 for w in _lines(log) if w[0] == "done") >= 8, 20, 0.01, what="8 nodes to run")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    # What counts is what was committed when the process died, not what the component printed.
    with culm.Runtime(db, workers=0) as runtime:
        children = api.get_pipeline_states(runtime, root).data[root]["children"]
    done_before = {n for n, e in children.items() if e["state"] == "FINISHED"}
    assert len(done_before) >= 8, "the pipeline did not get far enough before the kill"

    second = _spawn("resume", db, log, root)
    out, _ = second.communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1]) == {"finished": True}

    starts = collections.Counter(w[1] for w in _lines(log) if w[0] == "start")
    with culm.Runtime(db, workers=0) as runtime:
        children = api.get_pipeline_states(runtime, root).data[root]["children"]
        acts = [n for n, e in children.items() if starts[n]]
        assert all(children[n]["state"] == "FINISHED" for n in children)
    assert len(acts) == 18
    # A node that had finished before the kill never ran again; only one cut mid-execute may rerun.
    assert all(starts[n] == 1 for n in done_before if n in starts)
    assert sum(1 for n in acts if starts[n] > 1) <= 3
    assert all(starts[n] <= 2 for n in acts)


def test_acknowledged_callback_survives_kill_9(tmp_path: Path) -> None:
    db, log = f"sqlite:///{tmp_path}/cb.db", tmp_path / "exec.log"
    first = _spawn("callback", db, log)
    info = json.loads(first.stdout.readline())
    first.wait(10)
    assert info["ok"] is True
    second = _spawn("resume", db, log, info["id"])
    out, _ = second.communicate(timeout=60)
    assert json.loads(out.strip().splitlines()[-1]) == {"finished": True}
    with culm.Runtime(db, workers=0) as runtime:
        assert api.get_execution_data_outputs(runtime, info["wait"]).data["got"] == {"k": 1}


@pytest.mark.parametrize("workers", [2, 8])
def test_kill_9_mid_batch_reruns_at_most_the_user_code_pool(tmp_path: Path, workers: int) -> None:
    """Results of user code are committed as they come back, and no more calls start than there are
    threads: a crash re-runs at most ``workers`` calls (those running, and those whose results had
    not been committed), however many nodes were ready and however far the engine thread lagged."""
    db, log = f"sqlite:///{tmp_path}/batch.db", tmp_path / "exec.log"
    count, acts = 60, 8
    first = _spawn("batch", db, log, str(count), str(workers))
    roots = json.loads(first.stdout.readline())
    wait_until(lambda: sum(1 for w in _lines(log) if w[0] == "done") >= 0.3 * count * acts, 30, 0.005,
               what="30 % of the batch to run")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    before = collections.Counter(w[1] for w in _lines(log) if w[0] == "start")
    with culm.Runtime(db, workers=0) as runtime:
        committed = {n for r in roots for n, e in api.get_pipeline_states(runtime, r).data[r]["children"].items()
                     if e["state"] == "FINISHED"}
    assert 0.2 * count * acts <= len(before) < count * acts, "the kill did not land mid-batch"

    second = _spawn("resume_all", db, log, str(workers), *roots)
    out, _ = second.communicate(timeout=80)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["unfinished"] == 0, summary

    starts = collections.Counter(w[1] for w in _lines(log) if w[0] == "start")
    assert len(starts) == count * acts
    reruns = {n: c - 1 for n, c in starts.items() if c > 1}
    print(f"\nworkers={workers}: {len(before)} calls started before the kill, {sum(reruns.values())} ran again; "
          f"reopening finished every pipeline in {summary['seconds']} s")
    assert not committed & set(reruns), "a node whose result was committed ran again"
    assert all(c == 1 for c in reruns.values())
    assert sum(reruns.values()) <= workers


WORKER_THREADS = 2
WORKER_POOL = 2 * WORKER_THREADS  # the killed worker: --concurrency 2 processes x CULM_WORKER_THREADS


@pytest.mark.parametrize("distributed_backend", ["postgres-redis"], indirect=True)
def test_kill_9_of_a_worker_reruns_at_most_its_user_code_pool(
    distributed_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a ``culm worker`` mid-batch: the other workers take its tasks over once their
    leases run out (3 s here), every pipeline finishes, and at most the killed worker's pool of
    calls runs again."""
    backend = distributed_backend
    monkeypatch.setenv("CULM_WORKER_THREADS", str(WORKER_THREADS))
    [victim] = backend.start_workers(1)  # alongside the session's two (which keep 8 threads each)
    monkeypatch.delenv("CULM_WORKER_THREADS")
    rt = backend.runtime()
    count, acts = 40, 8
    trees = [batch_tree_of("dist_sleep") for _ in range(count)]
    for tree in trees:
        assert api.run_pipeline(rt, tree).result
    ours = {n for tree in trees for n in tree["activities"]}

    def executed() -> collections.Counter[str]:
        return collections.Counter({n: c for n, c in backend.executions().items() if n in ours})

    wait_until(lambda: sum(executed().values()) >= 0.3 * count * acts, 60, 0.01,
               what="30 % of the batch to run")
    backend.kill_worker(victim)
    before = executed()
    killed_at = time.monotonic()
    assert sum(before.values()) < count * acts, "the batch ended before the kill"

    def unfinished() -> list[str]:
        return [t["id"] for t in trees if api.get_pipeline_states(rt, t["id"]).data[t["id"]]["state"] != "FINISHED"]

    wait_until(lambda: not unfinished(), 120, 0.2, what="every pipeline to finish after the kill")
    took = time.monotonic() - killed_at
    backend.ensure_workers(2)
    after = executed()
    assert set(after) == ours
    reruns = sum(c - 1 for c in after.values())
    print(f"\nworker kill -9: {sum(before.values())} calls before the kill, {reruns} ran again "
          f"(pool {WORKER_POOL}); every pipeline finished {took:.1f} s after the kill (lease 3 s)")
    assert reruns <= WORKER_POOL
