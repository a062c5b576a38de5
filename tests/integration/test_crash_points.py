"""kill -9 of an embedded runtime (SQLite file, user code on threads) at more points of its work.

test_crash.py kills it while activities execute; here the process dies while activities poll,
while callbacks arrive and are processed, while a thread pauses and resumes the pipelines, and
while it submits pipelines (in ``run_pipeline``'s own transaction, as often as not). A new process
opening the same file then finishes every pipeline (calling back the nodes whose callback was
never acknowledged and resuming the paused pipelines, as their operator would).

Every user-code call is recorded durably before it returns (crash_points_app.record), keyed by
what it did: ``exec <node> <version>``, ``sched <node> <poll number>`` or ``sched <node> <version>``.
A key recorded twice is a call run again. Asserted: it is a call whose result had not been
committed when the process died, each ran again at most once, and there are at most as many as
user-code threads (the calls in flight); histories stay empty, and the services' own counts match.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import crash_points_app as app
import pytest
from simulation import parse_seeds
from support import wait_until

import culm
from culm import api

APP = Path(__file__).with_name("crash_points_app.py")
APP_PATH = os.pathsep.join((str(APP.parent), str(APP.parent.parent)))
WORKERS = 4
# The seeded kills (CULM_CRASH_POINT_SEEDS=51-70): each seed picks the work it cuts and when.
SEEDS = parse_seeds(os.environ.get("CULM_CRASH_POINT_SEEDS", "51"))
pytestmark = pytest.mark.timeout(120)


def _spawn(tmp_path: Path, mode: str, *roots: str) -> subprocess.Popen:
    env = {**os.environ, "CRASH_LOG": str(tmp_path / "calls.log"), "PYTHONPATH": APP_PATH}
    return subprocess.Popen([sys.executable, str(APP), mode, f"sqlite:///{tmp_path}/crash.db", str(WORKERS), *roots],
                            stdout=subprocess.PIPE, env=env, text=True)


def _calls(tmp_path: Path) -> list[tuple[str, ...]]:
    log = tmp_path / "calls.log"
    return [tuple(line.split()) for line in log.read_text().splitlines()] if log.exists() else []


def _kill_when(first: subprocess.Popen, tmp_path: Path, enough: Any, what: str) -> list[tuple[str, ...]]:
    wait_until(lambda: enough(_calls(tmp_path)), 30, 0.005, what=what)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    return _calls(tmp_path)


def _committed(db: str, roots: list[str]) -> dict[str, dict[str, Any]]:
    """What the file holds for every node of ``roots``: state, version and outputs."""
    seen: dict[str, dict[str, Any]] = {}
    with culm.Runtime(db, workers=0) as runtime:
        for root in roots:
            res = api.get_pipeline_states(runtime, root)
            if root not in res.data:
                continue
            for node, entry in res.data[root]["children"].items():
                outputs = api.get_execution_data_outputs(runtime, node)
                seen[node] = {**entry, "outputs": outputs.data if outputs.result else {}}
    return seen


def _finish(tmp_path: Path, roots: list[str]) -> None:
    second = _spawn(tmp_path, "finish", *roots)
    out, _ = second.communicate(timeout=90)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["unfinished"] == [], summary
    # Nothing waits for a lease of the dead process to run out (60 s): a stall, not slowness.
    assert summary["seconds"] < 15, summary


def _reruns(calls: list[tuple[str, ...]]) -> collections.Counter[tuple[str, ...]]:
    keys = collections.Counter(c[:3] for c in calls if c[0] in ("exec", "sched"))
    return collections.Counter({k: n - 1 for k, n in keys.items() if n > 1})


def _check(tmp_path: Path, roots: list[str], at_kill: dict[str, dict[str, Any]], mode: str) -> int:
    """Every pipeline FINISHED with every node in its first loop; calls run again were in flight."""
    db = f"sqlite:///{tmp_path}/crash.db"
    after = _committed(db, roots)
    with culm.Runtime(db, workers=0) as runtime:
        for root in roots:
            assert api.get_pipeline_states(runtime, root).data[root]["state"] == "FINISHED", root
        for node, entry in after.items():
            assert entry["state"] == "FINISHED" and entry["loop"] == 1, (node, entry)
            assert api.get_node_histories(runtime, node).data == [], node
    reruns = _reruns(_calls(tmp_path))
    for (kind, node, extra), n in reruns.items():
        assert n == 1, f"{kind} of {node} ({extra}) ran {n + 1} times"
        then = at_kill.get(node)
        # A call whose result was committed before the kill never runs again.
        assert then is not None and then["state"] == "RUNNING", (kind, node, extra, then)
        if mode == "poll":
            assert int(then["outputs"].get("polls", 0)) < int(extra), (node, extra, then["outputs"])
    assert sum(reruns.values()) <= WORKERS, reruns
    print(f"\n{mode}: {sum(reruns.values())} call(s) ran again after the kill: {sorted(reruns)}")
    return sum(reruns.values())


def _crash_and_finish(tmp_path: Path, mode: str, kind: str, total: int, share: float = 0.3) -> list[str]:
    """Run ``mode``, kill it once ``share`` of ``total`` calls of ``kind`` are recorded, finish
    every pipeline in a new process and check what ran again; returns the pipelines' ids."""
    first = _spawn(tmp_path, mode)
    roots = json.loads(first.stdout.readline())
    calls = _kill_when(first, tmp_path, lambda c: sum(1 for w in c if w[0] == kind) >= share * total * len(roots),
                       f"{share:.0%} of the {kind} calls")
    assert sum(1 for w in calls if w[0] == kind) < total * len(roots), "the work was done before the kill"
    at_kill = _committed(f"sqlite:///{tmp_path}/crash.db", roots)
    _finish(tmp_path, roots)
    _check(tmp_path, roots, at_kill, mode)
    return roots


def test_kill_9_while_polling(tmp_path: Path) -> None:
    _crash_and_finish(tmp_path, "poll", "sched", app.POLLS)
    with culm.Runtime(f"sqlite:///{tmp_path}/crash.db", workers=0) as runtime:
        for node in {w[1] for w in _calls(tmp_path) if w[0] == "sched"}:
            assert api.get_execution_data_outputs(runtime, node).data["polls"] == app.POLLS


def test_kill_9_while_callbacks_arrive(tmp_path: Path) -> None:
    roots = _crash_and_finish(tmp_path, "callback", "acked", 1)
    called = {w[1] for w in _calls(tmp_path) if w[0] == "sched"}  # only the callback nodes have a schedule
    assert len(called) == len(roots)
    with culm.Runtime(f"sqlite:///{tmp_path}/crash.db", workers=0) as runtime:
        for node in called:
            assert api.get_execution_data_outputs(runtime, node).data["got"] == {"from": node}


def test_kill_9_while_pausing_and_resuming(tmp_path: Path) -> None:
    roots = _crash_and_finish(tmp_path, "pause", "exec", app.CHAIN)
    assert len({w[1] for w in _calls(tmp_path) if w[0] == "exec"}) == app.CHAIN * len(roots)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_at_a_seeded_moment(tmp_path: Path, seed: int) -> None:
    """The kill lands at a moment the seed draws (5-80 % of the calls) of executes (the paused and
    resumed chains), polls or callbacks: what ran again was in flight, and every pipeline finishes."""
    rng = random.Random(seed)
    mode, kind, total = rng.choice([("pause", "exec", app.CHAIN), ("poll", "sched", app.POLLS),
                                    ("callback", "acked", 1)])
    share = rng.uniform(0.05, 0.8)
    print(f"\nseed {seed}: kill at {share:.0%} of the {kind} calls of {mode}")
    _crash_and_finish(tmp_path, mode, kind, total, share)


def test_kill_9_while_submitting(tmp_path: Path) -> None:
    first = _spawn(tmp_path, "submit")
    def inside_run_pipeline(c: list[tuple[str, ...]]) -> bool:
        marks = [w[0] for w in c if w[0] in ("submit", "ok")]
        return marks.count("ok") >= 10 and marks[-1] == "submit"

    calls = _kill_when(first, tmp_path, inside_run_pipeline, "10 submissions, then one under way")
    submitted = [w[1] for w in calls if w[0] == "submit"]
    acknowledged = {w[1] for w in calls if w[0] == "ok"}
    db = f"sqlite:///{tmp_path}/crash.db"
    with culm.Runtime(db, workers=0) as runtime:
        stored = [r for r in submitted if r in api.get_pipeline_states(runtime, r).data]
    # What run_pipeline acknowledged is stored; one cut short is stored whole or not at all.
    assert acknowledged <= set(stored)
    assert set(submitted) - set(stored) <= {submitted[-1]}
    at_kill = _committed(db, stored)
    _finish(tmp_path, stored)
    _check(tmp_path, stored, at_kill, "submit")
    with culm.Runtime(db, workers=0) as runtime:
        assert api.list_pipelines(runtime).data["counts"] == {"FINISHED": len(stored)}, "a pipeline is stuck"
    print(f"submit: {len(acknowledged)} acknowledged, {len(stored)} stored, last cut short: "
          f"{submitted[-1] not in acknowledged}")
