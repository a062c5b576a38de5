"""kill -9 of an embedded runtime while an operator's control calls rain on its pipelines.

crash_control_app.py runs pipelines with a node loop, a six-branch converge, polls, single and
multiple callbacks, a node timeout that fires, a subprocess with an executable end event and a
failing exclusive gateway, while a thread fires every kind of control call at them (pause and
resume of the root and of the subprocess, appointed pauses, retries with new data, skips, forced
fails, callbacks, skip_exclusive_gateway, update_context_values, update_node_loop_times, now and
then a revoke). The process is killed with ``kill -9`` (at a moment a control call is under way,
when the log catches one), a second process on the same file carries on and is killed the same
way, and then this process takes the file over and acts as an operator until every pipeline has
ended, asking the invariant checker (``culm.core.invariants``) after each round.

Every user-code call is recorded durably with its process id before it returns
(``crash_control_app.record``), keyed by what it did: ``exec <node> <version>``,
``sched <node> <version>:<poll or callback>``, ``end <pipeline> <root>``. A key recorded twice is
a call run again; each must have been in flight in a killed process (its node RUNNING in that very
version when the process died), ran again at most once, and a kill re-runs at most as many calls
as the process had user-code threads.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import crash_control_app  # noqa: F401 - registers the cc_* components here too
import pytest
import storm_trees
from support import wait_until

import culm
from culm.core.snapshots import read_snapshots

APP = Path(__file__).with_name("crash_control_app.py")
APP_PATH = os.pathsep.join((str(APP.parent), str(APP.parent.parent)))
WORKERS = 8
SEED = int(os.environ.get("CULM_CRASH_CONTROL_SEED", "5"))
pytestmark = pytest.mark.timeout(180)


def _spawn(db: str, log: Path, seed: int, *roots: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CRASH_LOG": str(log), "PYTHONPATH": APP_PATH}
    return subprocess.Popen([sys.executable, str(APP), "run", db, str(WORKERS), str(seed), *roots],
                            stdout=subprocess.PIPE, env=env, text=True)


def _lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _states(db: str, roots: list[str]) -> dict[str, tuple[str, str]]:
    """{node: (state, version)} of every node of ``roots`` as the file holds them."""
    with culm.Runtime(db, workers=0) as runtime:
        return {n: (st.name, st.version) for snap in read_snapshots(runtime.engine, roots).values()
                for n, st in snap.states.items()}


def _kill_mid_call(proc: subprocess.Popen[str], log: Path, rng: random.Random) -> bool:
    """Let ``proc`` work a while (its user code and the operator's calls under way), then kill it
    with -9, preferably while a control call is under way; whether one was."""
    pid = str(proc.pid)

    def ours(kind: str) -> int:
        return sum(1 for w in _lines(log) if w[0] == kind and w[-1] == pid)

    wait_until(lambda: ours("exec") >= 30 or ours("ended"), 30, 0.01, what=f"30 execute calls in {pid}")
    time.sleep(rng.uniform(0, 0.5))
    mid_call = False
    end = time.monotonic() + 3
    while time.monotonic() < end and not ours("ended"):
        calls = [w for w in _lines(log) if w[-1] == pid and w[0] in ("op", "ok")]
        if calls and calls[-1][0] == "op":
            mid_call = True
            break
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    return mid_call


def _describe(rt: culm.Runtime, roots: list[str]) -> str:
    """The rows of the pipelines that have not ended, for a failure message."""
    lines = []
    for root, snap in read_snapshots(rt.engine, roots).items():
        if snap.states[root].name in ("FINISHED", "REVOKED"):
            continue
        lines.append(f"pipeline {root} {snap.states[root].name}")
        lines += [f"  {n} {snap.graph.nodes[n].type if n in snap.graph.nodes else 'pipeline'} {st.name} "
                  f"v={st.version} loop={st.loop}/{st.inner_loop}" for n, st in snap.states.items()]
        lines += [f"  process {p.id} at {p.current_node_id} dead={p.dead} asleep={p.asleep} suspended={p.suspended}"
                  f" by {p.suspended_by} acks={p.ack_num}/{p.need_ack} stack={p.stack}" for p in snap.processes]
        lines += [f"  task {t.kind} {t.node_id} v={t.running_version}" for t in snap.tasks]
        lines += [f"  schedule {s.node_id} {s.type} v={s.version} finished={s.finished} expired={s.expired}"
                  for s in snap.schedules]
    return "\n".join(lines)


def _reruns(log: Path) -> dict[tuple[str, ...], list[str]]:
    """Key of a user-code call recorded more than once -> the pids that recorded it, in order."""
    pids: dict[tuple[str, ...], list[str]] = collections.defaultdict(list)
    for w in _lines(log):
        if w[0] in ("exec", "sched", "end"):
            pids[tuple(w[:3])].append(w[3])
    return {k: p for k, p in pids.items() if len(p) > 1}


def test_kill_9_during_control_calls_then_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, log = f"sqlite:///{tmp_path}/crash.db", tmp_path / "calls.log"
    monkeypatch.setenv("CRASH_LOG", str(log))  # this process runs the cc_* components last
    rng = random.Random(SEED)
    killed: dict[str, dict[str, tuple[str, str]]] = {}  # pid -> the states its death left
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(_spawn(db, log, SEED))
        roots = json.loads(procs[0].stdout.readline())  # type: ignore[union-attr]
        mid = [_kill_mid_call(procs[0], log, rng)]
        killed[str(procs[0].pid)] = _states(db, roots)
        procs.append(_spawn(db, log, SEED + 1, *roots))
        assert json.loads(procs[1].stdout.readline()) == roots  # type: ignore[union-attr]
        mid.append(_kill_mid_call(procs[1], log, rng))
        killed[str(procs[1].pid)] = _states(db, roots)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    unclear = [" ".join(w) for w in _lines(log) if w[0] == "unclear"]
    assert not unclear, unclear[:10]
    forest = storm_trees.Forest(roots=roots)
    with culm.Runtime(db, workers=WORKERS) as rt:
        wait_until(lambda: rt.dispatcher is not None, 20, 0.05, what="this process to take the file over")
        found = storm_trees.violations(rt, forest)
        assert not found, "; ".join(map(str, found))
        try:
            storm_trees.check_then_drive(rt, forest, SEED, settle_for=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_describe(rt, roots)}") from None
        ended = storm_trees.ended(rt, forest)
    assert set(ended.values()) <= {"FINISHED", "REVOKED"}, ended

    reruns = _reruns(log)
    per_kill: collections.Counter[str] = collections.Counter()
    for key, pids in reruns.items():
        assert len(pids) == 2, f"{key} ran {len(pids)} times: {pids}"
        dead = pids[0]
        assert dead in killed and pids[1] != dead, f"{key} ran again in the same process: {pids}"
        per_kill[dead] += 1
        if key[0] == "exec":
            state, version = killed[dead].get(key[1], ("never run", ""))
            assert (state, version) == ("RUNNING", key[2]), \
                f"{key} ran again, but when {dead} died the node was {state} in version {version}"
    print(f"\nkills landed mid-call: {mid}; calls run again per kill: {dict(per_kill)}; ended: "
          f"{collections.Counter(ended.values())}")
    assert all(n <= WORKERS for n in per_kill.values()), per_kill
