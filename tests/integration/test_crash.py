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
from backends import own_backend
from crash_app import batch_tree_of
from support import wait_until

import culm
from culm import api

APP = Path(__file__).with_name("crash_app.py")
# crash_app.py and what it imports from tests/ (the support module)
APP_PATH = os.pathsep.join((str(APP.parent), str(APP.parent.parent)))
pytestmark = pytest.mark.timeout(90)


def _spawn(mode: str, db: str, log: Path, *extra: str, gate: Path | None = None, hold_after: int = 0) -> subprocess.Popen:
    env = {**os.environ, "CRASH_LOG": str(log), "PYTHONPATH": APP_PATH}
    if gate is not None:
        env.update(CRASH_GATE=str(gate), CRASH_HOLD_AFTER=str(hold_after))
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
    db, log, gate = f"sqlite:///{tmp_path}/batch.db", tmp_path / "exec.log", tmp_path / "gate"
    count, acts = 60, 8
    # Calls past 60 % of the batch wait at a gate opened after the kill: the kill lands mid-batch
    # however little CPU this process gets while it waits for 30 %.
    first = _spawn("batch", db, log, str(count), str(workers), gate=gate, hold_after=count * acts * 3 // 5)
    roots = json.loads(first.stdout.readline())
    try:
        wait_until(lambda: sum(1 for w in _lines(log) if w[0] == "done") >= 0.3 * count * acts, 30, 0.005,
                   what="30 % of the batch to run")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        gate.touch()
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
# The worker defaults (CULM_LEASE_SECONDS 30, CULM_RELAY_INTERVAL 2, CULM_RELAY_GRACE 15,
# CULM_WORKER_BEAT 1, CULM_WORKER_DEAD_AFTER 3), not the session workers' short leases.
DEFAULTS: dict[str, str | None] = dict.fromkeys(
    ("CULM_LEASE_SECONDS", "CULM_RELAY_INTERVAL", "CULM_RELAY_GRACE", "CULM_WORKER_BEAT", "CULM_WORKER_DEAD_AFTER"))


def _kill_one_pool_process(backend: Any, victim: int) -> None:
    """``kill -9`` one pool process of a worker that has run activities; its main process lives on."""
    proc = backend.workers[victim]
    children = {int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
    ran = [int(line.split()[2]) for line in backend.exec_log.read_text().splitlines()]
    busy = [pid for pid in reversed(ran) if pid in children]
    assert busy, "no pool process of the victim ran anything"
    os.kill(busy[0], signal.SIGKILL)


def _why_unfinished(backend: Any, roots: list[str]) -> str:
    """What a CI failure needs to be diagnosed: the task rows of the unfinished pipelines (lease
    holder, due, last relayed, all on the database's clock), the worker registry, and the tail of
    every worker's log (burials, relays, Celery's notice of the lost process)."""
    from sqlalchemy import bindparam, create_engine, text

    engine = create_engine(backend.db_url)
    try:
        with engine.connect() as conn:
            clock = conn.execute(text("SELECT " + ("UNIX_TIMESTAMP(NOW(6))" if backend.db_kind == "mariadb"
                                                   else "EXTRACT(EPOCH FROM clock_timestamp())"))).scalar()
            tasks = conn.execute(text(
                "SELECT root_id, id, kind, node_id, owner, claimed_until, due, relayed_at FROM culm_task "
                "WHERE root_id IN :roots ORDER BY root_id").bindparams(bindparam("roots", expanding=True)),
                {"roots": roots or [""]}).all()
            workers = conn.execute(text("SELECT owner, pid, beat_time FROM culm_worker")).all()
    finally:
        engine.dispose()
    now_, alive = float(clock), {str(w[0]) for w in workers}
    lines = [f"{len(roots)} pipeline(s) unfinished; {len(tasks)} task row(s), the first 40 (times relative to "
             "the database's now; an owner not registered was buried or never registered):"]
    lines += [f"  root {r[0]} task {r[1]} {r[2]} owner {r[4]}{'' if r[4] is None or r[4] in alive else ' (NOT registered)'}"
              f" lease {'-' if r[5] is None else f'{float(r[5]) - now_:+.1f} s'} due {float(r[6]) - now_:+.1f} s "
              f"relayed {'never' if r[7] is None else f'{float(r[7]) - now_:+.1f} s'}" for r in tasks[:40]]
    lines += ["registered workers:"] + [f"  {w[0]} pid {w[1]} beat {float(w[2]) - now_:+.1f} s" for w in workers]
    for i in range(len(backend.workers)):
        records = [line for line in backend.worker_log(i).splitlines() if line.startswith("[")]  # no banner
        lines += [f"--- worker-{i}.log (last 25 records) ---", *records[-25:]]
    return "\n".join(lines)


def _kill_a_worker_mid_batch(backend: Any, monkeypatch: pytest.MonkeyPatch, within: float,
                             wrapper: tuple[str, ...] = (), kill: Any = None,
                             code: str = "dist_sleep") -> tuple[int, int, float]:
    """Start a victim worker of WORKER_THREADS threads (under ``wrapper``) next to the running ones,
    run a batch, kill -9 the victim (and its pool processes; or ``kill(backend, victim)``) at 30 %,
    and wait up to ``within`` seconds for every pipeline to finish. Returns (calls before the kill,
    calls run again, seconds after the kill)."""
    monkeypatch.setenv("CULM_WORKER_THREADS", str(WORKER_THREADS))
    [victim] = backend.start_workers(1, wrapper=wrapper)  # alongside two of 8 threads each
    monkeypatch.delenv("CULM_WORKER_THREADS")
    rt = backend.runtime()
    count, acts = 40, 8
    # Calls past 60 % of the batch wait at a gate opened after the kill: the kill lands mid-batch
    # however little CPU this process gets while it waits for 30 % (at a load of 8 the batch once
    # ended first).
    gate = backend.workdir / f"gate-{time.monotonic_ns()}"
    trees = [batch_tree_of(code, gate=str(gate), hold_after=count * acts * 3 // 5) for _ in range(count)]
    for tree in trees:
        assert api.run_pipeline(rt, tree).result
    ours = {n for tree in trees for n in tree["activities"]}

    def executed() -> collections.Counter[str]:
        return collections.Counter({n: c for n, c in backend.executions().items() if n in ours})

    try:
        wait_until(lambda: sum(executed().values()) >= 0.3 * count * acts, 60, 0.01,
                   what="30 % of the batch to run")
        (kill or type(backend).kill_worker)(backend, victim)
        killed_at = time.monotonic()
        before = executed()
    finally:
        gate.touch()
    assert sum(before.values()) < count * acts, "the batch ended before the kill"

    def unfinished() -> list[str]:
        return [t["id"] for t in trees if api.get_pipeline_states(rt, t["id"]).data[t["id"]]["state"] != "FINISHED"]

    try:
        wait_until(lambda: not unfinished(), within, 0.05,
                   what=f"every pipeline to finish within {within} s of the kill")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_why_unfinished(backend, unfinished())}") from None
    took = time.monotonic() - killed_at
    after = executed()
    assert set(after) == ours
    return sum(before.values()), sum(c - 1 for c in after.values()), took


def _wait_for_burial(backend: Any, how: str) -> None:
    """Wait for a relay's log line burying the killed process. When the killed process held no
    lease (Celery requeued its messages, the others ran them) every pipeline may finish before the
    relays' next look (each looks once a second), so the line can come after the pipelines."""
    def logged() -> bool:
        return any(f"is dead ({how}" in backend.worker_log(i) for i in range(len(backend.workers)))

    wait_until(logged, 5, 0.05, what=f"a relay to log the killed process dead ({how})")


@pytest.mark.timeout(240)  # its own bounded waits: 60 s to 30 %, 120 s to the end (the module's 90 s cut them)
@pytest.mark.parametrize("distributed_backend", ["postgres-redis"], indirect=True)
def test_kill_9_of_a_worker_reruns_at_most_its_user_code_pool(
    distributed_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a ``culm worker`` mid-batch (the session's short leases): the other workers take
    its tasks over, every pipeline finishes, and at most the killed worker's pool of calls runs again."""
    before, reruns, took = _kill_a_worker_mid_batch(distributed_backend, monkeypatch, 120)
    distributed_backend.ensure_workers(2)
    print(f"\nworker kill -9: {before} calls before the kill, {reruns} ran again "
          f"(pool {WORKER_POOL}); every pipeline finished {took:.1f} s after the kill (lease 3 s)")
    assert reruns <= WORKER_POOL


# Run under this, a worker lives in a PID namespace of its own: the others cannot look its processes
# up, as if it ran on another host, and find it dead only by its silence.
ANOTHER_HOST = ("unshare", "--pid", "--fork", "--mount-proc")


def _can_unshare() -> bool:
    try:
        return subprocess.run([*ANOTHER_HOST, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kill_noting_survivors(noted: dict[str, Any]) -> Any:
    """A ``kill`` for :func:`_kill_a_worker_mid_batch` that notes the process ids of the workers
    left alive (main and pool processes) and the wall-clock time of the kill. The killed worker's
    calls are then those of any other process id: it may run in a PID namespace of its own (its
    processes log the ids they see there), so its own ids cannot be read from here."""
    def kill(backend: Any, victim: int) -> None:
        alive: set[str] = set()
        for i in backend.alive():
            if i == victim:
                continue
            main = backend.workers[i].pid
            alive |= {str(main), *Path(f"/proc/{main}/task/{main}/children").read_text().split()}
        noted.update(alive=alive, at=time.time())
        backend.kill_worker(victim)

    return kill


@pytest.mark.timeout(240)
@pytest.mark.parametrize("where", ["same-host", "another-host"])
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_kill_9_of_a_worker_with_default_settings_moves_its_work_within_seconds(
    kind: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same kill with every worker on its DEFAULT settings (a 30 s lease, a 15 s relay grace):
    the relays find the dead worker in the registry, free its leases and publish its tasks, and at
    most the killed worker's pool of calls runs again. On the same host its processes are seen to
    be gone at the relays' next look, and each node the killed worker was calling is called again
    within 5 s of the kill; from another host it is found by its silence (CULM_WORKER_DEAD_AFTER,
    3 s), so within 3 s more.

    The bound is on the moving of the killed worker's work, not on the whole batch: the calls left
    after the kill (~110) only have to finish, in a time of the machine's load. The whole batch
    within 5 s failed once at a load of ~25 (session 16) while its 3.1-4.2 s is what it takes at
    load 20-25 (session 17): that bound measured the machine, not the relays."""
    wrapper = ANOTHER_HOST if where == "another-host" else ()
    if wrapper and not _can_unshare():
        pytest.skip("cannot run a worker in a PID namespace of its own here (unshare needs privileges)")
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children to find the pool processes")
    backend = own_backend(kind, tmp_path, DEFAULTS)
    noted: dict[str, Any] = {}
    try:
        backend.start_workers(2)
        within, how = (5.0, "its process is gone") if not wrapper else (5.0 + 3.0, "silent for")
        before, reruns, took = _kill_a_worker_mid_batch(backend, monkeypatch, 90.0, wrapper,
                                                        kill=_kill_noting_survivors(noted))
        calls = [line.split() for line in backend.exec_log.read_text().splitlines()]
        victims = {pid for _, _, pid, at in calls if float(at) <= noted["at"]} - noted["alive"]
        resumed = _resumed_after(backend.exec_log, victims, noted["at"])
        print(f"\n{kind} worker kill -9 ({where}), default settings: {before} calls before the kill, {reruns} ran "
              f"again (pool {WORKER_POOL}); its {len(resumed)} nodes called again "
              f"{min(resumed.values(), default=0):.1f}-{max(resumed.values(), default=0):.1f} s after the kill; "
              f"every pipeline finished {took:.1f} s after it")
        assert reruns <= WORKER_POOL
        late = {n: round(s, 1) for n, s in resumed.items() if s > within}
        assert not late, f"the killed worker's nodes were called again only after {late} s (bound {within} s)"
        _wait_for_burial(backend, how)
    finally:
        backend.teardown()


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq", "mysqlclient-redis"])
def test_kill_9_of_one_pool_process_moves_its_work_within_5_s(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of one Celery pool process (an OOM kill, say) while the worker's main process lives
    on and starts a new one: the relays see the process gone, free its leases and publish its
    tasks; every pipeline finishes within 5 s and at most that process's calls run again.

    The 5 s is not a race against load: the relays (one a second per worker) find the process gone
    at their next look and the rest is a broker round trip, 0.1-1.2 s measured over 60 runs at a
    load of 9-10 on 2 cores. A miss is a stall, not slowness: a task left to its lease (30 s) and
    the relay grace (15 s), as when the burial skipped rows the dead process's last transaction
    still locked. The failure message names the unfinished tasks' lease holders and relay times."""
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children to find the pool processes")
    backend = own_backend(kind, tmp_path, DEFAULTS)
    try:
        backend.start_workers(2)
        before, reruns, took = _kill_a_worker_mid_batch(backend, monkeypatch, 5.0, kill=_kill_one_pool_process)
        print(f"\n{kind} pool process kill -9, default settings: {before} calls before the kill, {reruns} ran "
              f"again (its threads {WORKER_THREADS}); every pipeline finished {took:.1f} s after the kill")
        assert reruns <= WORKER_THREADS
        _wait_for_burial(backend, "its process is gone")
    finally:
        backend.teardown()


# The killed worker's nodes must be called again well within the schedule lock a dead poll call
# leaves (the lease, 30 s on the defaults): 0.2-2.7 s measured at a load of 12-16 on 2 cores.
RESUMED_WITHIN = 12.0


def _kill_noting(noted: dict[str, Any]) -> Any:
    """A ``kill`` for :func:`_kill_a_worker_mid_batch` that notes the killed worker's process ids
    (its main process and pool processes) and the wall-clock time of the kill."""
    def kill(backend: Any, victim: int) -> None:
        main = backend.workers[victim].pid
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        noted.update(pids={str(main), *children}, at=time.time())
        backend.kill_worker(victim)

    return kill


def _resumed_after(exec_log: Path, pids: set[str], killed_at: float) -> dict[str, float]:
    """For each node whose last call before ``killed_at`` ran in one of ``pids`` (the killed worker)
    and that was called again: seconds from the kill to that next call (the log's
    ``<kind> <node> <pid> <time>`` lines)."""
    last: dict[str, str] = {}
    again: dict[str, float] = {}
    for kind_, node, pid, at in (line.split() for line in exec_log.read_text().splitlines()):
        if float(at) <= killed_at:
            last[node] = pid
        elif last.get(node) in pids and node not in again and kind_ in ("execute", "poll"):
            again[node] = float(at) - killed_at
    return again


# In the suite's 3 processes, 2 runs of 4 (ci22c, ci22d) saw one of the killed worker's nodes called
# again only after 15.5-16 s on MariaDB, the default CULM_RELAY_GRACE: a relay's pass had sent the
# node's poll task (a follow-up the killed worker kept, looking like a timer due soon) just before
# the killed worker claimed it, and the burial skipped what was relayed in the second before it
# (session 23; test_worker_registry.py::test_a_burial_sends_again_what_a_relay_sent_while_the_dead_worker_held_it).
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_kill_9_of_a_worker_mid_poll_does_not_wait_for_its_locks(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same kill while the activities poll (three polls each, no interval), on the default
    settings. A poll call locks its schedule for the lease's length (30 s); the killed worker's
    locks used to hold the replayed polls back until they ran out, so its nodes were called again
    only 30 s after the kill. A poll has one task, and the runner holding it now owns its lock.

    The bound is on what the locks would delay: each node the killed worker was calling is called
    again within RESUMED_WITHIN (12 s, 0.2-2.7 s measured). The whole batch only has to finish: the
    calls left after the kill (~1,000 polls and executes) took 10-24 s at a load of 12-16, a figure
    of the machine's load (the earlier 20 s bound on it failed at a load of 17-25 with no wait:
    the killed worker's nodes had been called again within 2.7 s)."""
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children to find the pool processes")
    backend = own_backend(kind, tmp_path, DEFAULTS)
    noted: dict[str, Any] = {}
    try:
        backend.start_workers(2)
        before, reruns, took = _kill_a_worker_mid_batch(backend, monkeypatch, 90.0, code="dist_poll",
                                                        kill=_kill_noting(noted))
        resumed = _resumed_after(backend.exec_log, noted["pids"], noted["at"])
        print(f"\n{kind} worker kill -9 mid-poll, default settings: {before} executes before the kill, "
              f"{reruns} ran again; every pipeline finished {took:.1f} s after the kill; the killed worker's "
              f"{len(resumed)} nodes called again {min(resumed.values(), default=0):.1f}-"
              f"{max(resumed.values(), default=0):.1f} s after it")
        assert reruns <= WORKER_POOL
        assert resumed, "no node the killed worker was calling was called again: the kill missed the polls"
        late = {n: round(s, 1) for n, s in resumed.items() if s > RESUMED_WITHIN}
        assert not late, f"nodes of the killed worker waited for its locks: called again after {late} s"
    finally:
        backend.teardown()


@pytest.mark.parametrize("kind", ["postgres-redis", "mariadb-rabbitmq"])
def test_kill_9_of_a_worker_mid_multiple_callback_does_not_wait_for_its_lock(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multiple-callback node's calls share one lock on its schedule (30 s on the defaults). The
    lock row records no holder, so when the worker running a call was killed, the next callback
    waited for the dead call's lock to run out: 30 s. The lock's holder is the task of that
    schedule with a live lease; when no other task has one, the lock is the dead call's and the
    next call takes it over at once."""
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree

    log = tmp_path / "calls.log"
    monkeypatch.setenv("CULM_STORM_LOG", str(log))  # storm_components records its calls there
    backend = own_backend(kind, tmp_path, DEFAULTS)
    try:
        backend.start_workers(2)
        rt = backend.runtime()
        start, node = EmptyStartEvent(), ServiceActivity(component_code="s_multi")
        start.extend(node).extend(EmptyEndEvent())
        tree = build_tree(start)
        assert api.run_pipeline(rt, tree).result
        version = wait_until(lambda: log.exists() and api.get_children_states(rt, node.id).data[node.id]["version"],
                             20, 0.05, what="the node to wait for callbacks")
        gate = tmp_path / "held-callback"
        assert api.callback(rt, node.id, version, {"gate": str(gate)}).result
        pid = wait_until(lambda: [int(w[3]) for w in _lines(log) if w[0] == "callback"], 20, 0.02,
                         what="the first callback to run")[0]
        [victim] = [i for i in backend.alive() if backend.workers[i].pid == os.getpgid(pid)]
        backend.kill_worker(victim)
        killed_at = time.monotonic()
        gate.touch()
        assert api.callback(rt, node.id, version, {"done": True}).result
        wait_until(lambda: api.get_children_states(rt, node.id).data[node.id]["state"] == "FINISHED", 45, 0.05,
                   what="the node to finish")
        took = time.monotonic() - killed_at
        print(f"\n{kind}: the multiple-callback node finished {took:.1f} s after the kill (lock 30 s)")
        assert took < 12, f"the next callback waited {took:.1f} s for the dead call's lock"
    finally:
        backend.teardown()
