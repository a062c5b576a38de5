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
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import crash_control_app  # registers the cc_* components here too
import pytest
import storm_trees
from backends import WORKER_ENV, own_backend
from support import wait_until

import culm
from culm import api
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
        return sum(1 for w in _lines(log) if w[0] == kind and w[-2] == pid)

    wait_until(lambda: ours("exec") >= 30 or ours("ended"), 30, 0.01, what=f"30 execute calls in {pid}")
    time.sleep(rng.uniform(0, 0.5))
    mid_call = False
    end = time.monotonic() + 3
    while time.monotonic() < end and not ours("ended"):
        calls = [w for w in _lines(log) if w[-2] == pid and w[0] in ("op", "ok")]
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


def _connection_at(frame: Any) -> str:
    """The database connection a thread waits in (its driver's frames), for a failure message:
    its server session id, socket and peer."""
    while frame is not None:
        conn = frame.f_locals.get("self")
        if type(conn).__name__ == "Connection" and hasattr(conn, "_sock"):
            sock = conn._sock
            try:
                fd = sock.fileno() if sock is not None else -1
                target = os.readlink(f"/proc/self/fd/{fd}") if fd >= 0 else "-"
                return (f"waiting in session {conn.thread_id()} fd {fd} ({target}), "
                        f"{sock.getsockname() if sock else '-'} -> {sock.getpeername() if sock else '-'}\n")
            except Exception as exc:  # noqa: BLE001 - a failure message's extra
                return f"(the connection's socket: {exc!r})\n"
        frame = frame.f_back
    return ""


def _sessions(rt: culm.Runtime) -> str:
    """What the database server's sessions do (MariaDB), for a failure message."""
    try:
        with rt.store.reading() as unit:
            rows = unit._all("SELECT id, command, time, state, host, LEFT(info, 160) FROM information_schema.PROCESSLIST")
            waits = unit._all("SELECT requesting_trx_id, blocking_trx_id FROM information_schema.INNODB_LOCK_WAITS")
            trx = unit._all("SELECT trx_id, trx_state, trx_started, trx_mysql_thread_id, LEFT(trx_query, 120)"
                            " FROM information_schema.INNODB_TRX")
    except Exception as exc:  # noqa: BLE001 - a failure message's extra
        return f"(could not ask: {exc!r})"
    return "\n".join([*map(str, rows), "lock waits:", *map(str, waits), "transactions:", *map(str, trx)])


def _reruns(log: Path) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    """Key of a user-code call recorded more than once -> (pid, group) of each call, in order."""
    runs: dict[tuple[str, ...], list[tuple[str, str]]] = collections.defaultdict(list)
    for w in _lines(log):
        if w[0] in ("exec", "sched", "end"):
            runs[tuple(w[:3])].append((w[-2], w[-1]))
    return {k: r for k, r in runs.items() if len(r) > 1}


class Kill:
    """One kill -9: of a process (``pid``) or of a worker's whole group (``group``), the states
    its death left, and how many calls it may have had in flight. ``before``: the states read
    right before the kill, where reading them after it may race a takeover (a cluster's survivors
    took a killed step over and finished it before the read after the kill: seen at CI's load)."""

    def __init__(self, bound: int, states: dict[str, tuple[str, str]], pid: str = "", group: str = "",
                 before: dict[str, tuple[str, str]] | None = None) -> None:
        self.bound, self.states, self.pid, self.group = bound, states, pid, group
        self.before = before or {}

    def left_running(self, node_id: str, version: str) -> bool:
        """Whether the node was RUNNING in ``version`` when the process died (or just before)."""
        return ("RUNNING", version) in (self.states.get(node_id), self.before.get(node_id))

    def owns(self, pid: str, group: str) -> bool:
        return pid == self.pid or group == self.group


def _check_reruns(log: Path, kills: list[Kill]) -> list[int]:
    """Every call that ran again was in flight in a killed process (for an execute: its node
    RUNNING in that very version when the process died), ran again once, elsewhere, and no kill
    re-ran more calls than it had in flight; how many each kill re-ran."""
    per_kill = [0] * len(kills)
    for key, runs in _reruns(log).items():
        assert len(runs) == 2, f"{key} ran {len(runs)} times: {runs}"
        (pid, group), (again, _) = runs
        [k] = [i for i, kill in enumerate(kills) if kill.owns(pid, group)] or [None]
        assert k is not None and again != pid, f"{key} ran again, first in {pid} which was not killed: {runs}"
        per_kill[k] += 1
        if key[0] == "exec":
            state, version = kills[k].states.get(key[1], ("never run", ""))
            assert kills[k].left_running(key[1], key[2]), \
                f"{key} ran again, but when {pid} died the node was {state} in version {version}"
    assert all(n <= kill.bound for n, kill in zip(per_kill, kills, strict=True)), \
        [(n, kill.bound) for n, kill in zip(per_kill, kills, strict=True)]
    return per_kill


def _drive_to_the_end(rt: culm.Runtime, roots: list[str], settle_for: float) -> dict[str, str]:
    """Check every pipeline, then act as an operator until each has ended; their states."""
    forest = storm_trees.Forest(roots=roots)
    found = storm_trees.violations(rt, forest)
    assert not found, "; ".join(map(str, found)) + "\n" + _describe(rt, roots)
    try:
        storm_trees.check_then_drive(rt, forest, SEED, settle_for=settle_for)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_describe(rt, roots)}") from None
    ended = storm_trees.ended(rt, forest)
    assert set(ended.values()) <= {"FINISHED", "REVOKED"}, ended
    return ended


def _unclear(log: Path) -> list[str]:
    return [" ".join(w) for w in _lines(log) if w[0] == "unclear"]


def test_kill_9_during_control_calls_then_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, log = f"sqlite:///{tmp_path}/crash.db", tmp_path / "calls.log"
    monkeypatch.setenv("CRASH_LOG", str(log))  # this process runs the cc_* components last
    rng = random.Random(SEED)
    kills: list[Kill] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(_spawn(db, log, SEED))
        roots = json.loads(procs[0].stdout.readline())  # type: ignore[union-attr]
        mid = [_kill_mid_call(procs[0], log, rng)]
        kills.append(Kill(WORKERS, _states(db, roots), pid=str(procs[0].pid)))
        procs.append(_spawn(db, log, SEED + 1, *roots))
        assert json.loads(procs[1].stdout.readline()) == roots  # type: ignore[union-attr]
        mid.append(_kill_mid_call(procs[1], log, rng))
        kills.append(Kill(WORKERS, _states(db, roots), pid=str(procs[1].pid)))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert not _unclear(log), _unclear(log)[:10]
    with culm.Runtime(db, workers=WORKERS) as rt:
        wait_until(lambda: rt.dispatcher is not None, 20, 0.05, what="this process to take the file over")
        ended = _drive_to_the_end(rt, roots, 30)
    per_kill = _check_reruns(log, kills)
    print(f"\nkills landed mid-call: {mid}; calls run again per kill: {per_kill} (bound {WORKERS}); ended: "
          f"{collections.Counter(ended.values())}")


def test_kill_9_while_the_outputs_render_after_the_end_event_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executable end event whose pipeline outputs render on the user-code pool (a lazy
    variable): its code's result is committed, then the rendering is handed out. A kill -9 during
    the rendering replayed the end event from the start, running its code again although its
    result had been committed. Only the rendering (the call in flight) runs again now."""
    db, log, gate = f"sqlite:///{tmp_path}/end.db", tmp_path / "calls.log", tmp_path / "gate"
    monkeypatch.setenv("CRASH_LOG", str(log))
    env = {**os.environ, "PYTHONPATH": APP_PATH}
    first = subprocess.Popen([sys.executable, str(APP), "end_render", db, str(gate)], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        [root] = json.loads(first.stdout.readline())  # type: ignore[union-attr]
        wait_until(lambda: [w for w in _lines(log) if w[0] == "render"], 30, 0.01, what="the outputs to render")
    finally:
        first.kill()
        first.wait(10)
    gate.touch()
    with culm.Runtime(db, workers=2) as rt:
        wait_until(lambda: api.get_pipeline_states(rt, root).data[root]["state"] == "FINISHED", 30, 0.05,
                   what="the pipeline to finish")
        assert api.get_execution_data_outputs(rt, root).data == {"${slow}": "rendered"}
        end_id = read_snapshots(rt.engine, [root])[root].graph.pipelines[root].end_event_id
        assert api.get_execution_data_outputs(rt, end_id).data == {}, "the end event keeps no mark of its run"
    assert [w[0] for w in _lines(log) if w[0] in ("end", "render")] == ["end", "render", "render"]


def test_kill_9_after_revokes_while_executes_and_polls_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pipelines revoked while their executes (in the root and in a subprocess) and polls run,
    then kill -9 before those end. A revoke lets them end by themselves (culm.core.revoking); after
    the restart the cut executes' processes end where they stand (a revoked run enters no node
    again, and the execute is not run again), the polls go on to their end, every pipeline stays
    REVOKED with no process left alive, and the checker finds nothing."""
    db, log = f"sqlite:///{tmp_path}/revoke.db", tmp_path / "calls.log"
    monkeypatch.setenv("CRASH_LOG", str(log))
    log.touch()
    env = {**os.environ, "PYTHONPATH": APP_PATH}
    first = subprocess.Popen([sys.executable, str(APP), "revoke", db, "6"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        roots = json.loads(first.stdout.readline())  # type: ignore[union-attr]
        wait_until(lambda: sum(1 for w in _lines(log) if w[0] == "ok") == len(roots), 60, 0.01,
                   what="every pipeline to be revoked")
    finally:
        first.kill()
        first.wait(10)
    assert all(w[3] == "True" for w in _lines(log) if w[0] == "ok")
    kills = [Kill(8, _states(db, roots), pid=str(first.pid))]
    with culm.Runtime(db, workers=0) as runtime:
        working = [p.current_node_id for s in read_snapshots(runtime.engine, roots).values() for p in s.processes
                   if not p.dead]
    assert working, "the kill came after every revoked run's calls had ended"
    at_kill = len(_lines(log))
    with culm.Runtime(db, workers=8) as rt:
        forest = storm_trees.Forest(roots=roots)
        storm_trees.settle(rt, forest, 30)
        found = storm_trees.violations(rt, forest)
        assert not found, "; ".join(map(str, found)) + "\n" + _describe(rt, roots)
        snaps = read_snapshots(rt.engine, roots)
    assert {r: s.states[r].name for r, s in snaps.items()} == dict.fromkeys(roots, "REVOKED")
    assert not [p for s in snaps.values() for p in s.processes if not p.dead]
    after = [w for w in _lines(log)[at_kill:] if w[0] in ("exec", "end")]
    assert not after, f"a revoked run ran an execute after the restart: {after}"
    per_kill = _check_reruns(log, kills)
    print(f"\nrevoked under way, then kill -9 with {len(working)} call(s) still working: {per_kill[0]} ran again")


STALL = 60  # seconds with no execute and no operator call: the cluster test's stall
MOVE_BOUND = 240  # seconds the cluster test waits for 30 executes after the kill while things move


class _Progress:
    """The executes and this process's operator calls in the log, read at each poll
    (``stalled``), and when either count last grew."""

    def __init__(self, log: Path, pid: int) -> None:
        self.log, self.pid = log, str(pid)
        self.executes = self.ops = -1
        self.moved = time.monotonic()

    def _read(self) -> None:
        lines = _lines(self.log)
        counts = (sum(1 for w in lines if w[0] == "exec"), sum(1 for w in lines if w[0] == "op" and w[-2] == self.pid))
        if counts != (self.executes, self.ops):
            self.executes, self.ops = counts
            self.moved = time.monotonic()

    def idle(self) -> float:
        return time.monotonic() - self.moved

    def stalled(self) -> bool:
        self._read()
        return self.idle() > STALL


THREADS = 2  # per pool process of a worker
POOL = 2 * THREADS  # a worker: --concurrency 2 processes


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_kill_9_of_workers_during_control_calls(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same pipelines and calls on a cluster of three ``culm worker`` processes (2 pool
    processes x 2 threads): one worker is killed with ``kill -9`` (its whole group) and another
    started, then one pool process of another worker is killed (its worker starts a new one).
    The killed work is taken over (nothing stays RUNNING with nothing scheduled: the operator's
    rounds find every step taken within the settle bound), the checker finds nothing, and a kill
    re-ran at most the calls it had in flight (a worker its pool, a pool process its threads)."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("CRASH_LOG", str(log))
    monkeypatch.setenv("CULM_WORKER_THREADS", str(THREADS))
    backend = own_backend(kind, tmp_path, {"CULM_IMPORTS": WORKER_ENV["CULM_IMPORTS"] + ",crash_control_app"})
    stop = threading.Event()
    try:
        backend.start_workers(3)
        rt = backend.runtime()
        trees = [crash_control_app.tree(i) for i in range(8)]
        for tree in trees:
            assert api.run_pipeline(rt, tree).result
        roots = [t["id"] for t in trees]
        operator = threading.Thread(target=crash_control_app.fire_forever, args=(rt, roots, SEED, stop))
        operator.start()

        def executes() -> int:
            return sum(1 for w in _lines(log) if w[0] == "exec")

        def states() -> dict[str, tuple[str, str]]:
            return {n: (st.name, st.version) for snap in read_snapshots(rt.engine, roots).values()
                    for n, st in snap.states.items()}

        wait_until(lambda: executes() >= 40, 60, 0.02, what="40 execute calls")
        victim = backend.alive()[0]
        group = str(backend.workers[victim].pid)
        before = states()
        backend.kill_worker(victim)
        kills = [Kill(POOL, states(), group=group, before=before)]
        backend.start_workers(1)
        seen = executes()
        # 30 more executes, or every pipeline ended (fewer were left: the operator then stops).
        # A stall is STALL seconds with neither an execute nor an operator call: say where. (The
        # pipelines left wait for the operator's calls: at a load of 20-33 on two cores 30 executes
        # took up to 128 s while the operator kept calling, on PostgreSQL too; a fixed 60 s measured
        # the load, session 21.)
        progress, waited = _Progress(log, os.getpid()), time.monotonic()
        try:
            wait_until(lambda: progress.executes >= seen + 30 or not operator.is_alive() or progress.stalled(),
                       MOVE_BOUND, 0.05, what="30 more executes")
            assert not progress.stalled(), f"nothing moved for {STALL}s"
        except AssertionError as exc:
            frame = sys._current_frames().get(operator.ident or 0)
            where = "".join(traceback.format_stack(frame)) if frame is not None else "(ended)"
            where += _connection_at(frame)
            raise AssertionError(f"{exc}: {progress.executes - seen} executes after the kill, {progress.ops} operator "
                                 f"calls in all, the last move {progress.idle():.1f}s ago; the operator is at:\n{where}\n"
                                 f"the server's sessions:\n{_sessions(rt)}\n"
                                 f"the pipelines not ended:\n{_describe(rt, roots)}") from None
        print(f"\n{kind}: {progress.executes - seen} executes after the kill in {time.monotonic() - waited:.1f}s")
        pool = [int(p) for w in backend.alive() for p in
                Path(f"/proc/{backend.workers[w].pid}/task/{backend.workers[w].pid}/children").read_text().split()]
        ran = [w[-2] for w in _lines(log) if w[0] in ("exec", "sched") and int(w[-2]) in pool]
        pid = ran[-1] if ran else str(pool[0])
        before = states()
        os.kill(int(pid), signal.SIGKILL)
        kills.append(Kill(THREADS, states(), pid=pid, before=before))
        time.sleep(random.Random(SEED).uniform(0.5, 1.5))  # the operator goes on a while after the kill
        stop.set()
        operator.join(30)
        assert not _unclear(log), _unclear(log)[:10]
        ended = _drive_to_the_end(rt, roots, 45)
        per_kill = _check_reruns(log, kills)
        print(f"\n{kind}: calls run again per kill: {per_kill} (bounds {POOL}, {THREADS}); ended: "
              f"{collections.Counter(ended.values())}")
    finally:
        stop.set()
        backend.teardown()
