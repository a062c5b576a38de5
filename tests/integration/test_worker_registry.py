"""The worker registry (``culm_worker``): beating, finding the dead, burying each one once.

Two lease owners on one database stand for two worker processes; the relays' decisions are driven
step by step (``SqlWorkerRegistry.dead`` / ``bury``), on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import REPO, embedded_runtime_on
from support import wait_until
from test_lease_on_apply import _children, _start, _step

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
from culm.core import walker
from culm.core.records import now
from culm.dispatch.liveness import EmbeddedPresence, LeaseHeartbeat, TaskRelay
from culm.storage import workers as workers_module
from culm.storage.workers import SqlWorkerRegistry, process_gone, process_key

pytestmark = pytest.mark.timeout(120)
DEAD_AFTER = 3.0


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[culm.Runtime]:
    with embedded_runtime_on(request.param, tmp_path / "registry.db") as rt:
        yield rt


def _silence(rt: culm.Runtime, owner: str, seconds: float) -> None:
    """``owner`` last beat ``seconds`` ago (its process froze or died on another host)."""
    with rt.store.transaction() as unit:
        unit._x("UPDATE culm_worker SET beat_time = beat_time - ? WHERE owner = ?", [seconds, owner])


def _lease(rt: culm.Runtime, task_id: str) -> tuple[str | None, float | None]:
    with rt.store.reading() as unit:
        owner, until = unit._one("SELECT owner, claimed_until FROM culm_task WHERE id = ?", [task_id])
    return owner, until


def test_a_beating_worker_lives_and_a_silent_one_is_buried_once(runtime: culm.Runtime) -> None:
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    registry.register("runner-a", 2, "culm")
    registry.register("runner-b", 8, "culm")
    tree, first, _, task_id = _start(rt)
    assert _step(rt, "runner-a", task_id, None, claim=True).node_id == first  # A holds the task (30 s lease)

    assert registry.beat("runner-a") and registry.beat("runner-b")
    assert registry.dead(DEAD_AFTER) == []
    listed = {w.owner: w for w in registry.workers()}
    assert listed["runner-a"].threads == 2 and listed["runner-a"].pid > 0
    assert 0 <= listed["runner-a"].silent_for < DEAD_AFTER

    _silence(rt, "runner-a", DEAD_AFTER + 1)
    [(dead, silent)] = registry.dead(DEAD_AFTER)
    assert (dead.owner, silent) == ("runner-a", True)
    assert dead.silent_for > DEAD_AFTER

    # Many relays see the same death at once: one buries it and frees the lease, the rest do nothing.
    outcomes: list[list[str] | None] = []
    relays = [threading.Thread(target=lambda: outcomes.append(registry.bury("runner-a", DEAD_AFTER)))
              for _ in range(4)]
    for t in relays:
        t.start()
    for t in relays:
        t.join(30)
    assert sorted(outcomes, key=lambda o: o is None) == [[task_id], None, None, None]
    assert _lease(rt, task_id) == (None, None)
    assert [w.owner for w in registry.workers()] == ["runner-b"]

    # B takes the task over at once, 30 s lease or not.
    assert _step(rt, "runner-b", task_id, None, claim=True).node_id == first
    assert _lease(rt, task_id)[0] == "runner-b"
    # A wakes up: its row is gone (it registers again); B's lease is untouched.
    assert not registry.beat("runner-a")
    assert registry.bury("runner-b", DEAD_AFTER) is None  # B beats: not silent, not buried
    assert _children(rt, tree["id"])[first]["state"] == "RUNNING"


def test_a_result_of_a_buried_worker_is_dropped_once_its_task_moved_on(runtime: culm.Runtime) -> None:
    """A worker taken for dead while its call ran (a long pause): its result, back late, is not
    applied over the work of the worker that took the task over."""
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    registry.register("runner-a", 2, "culm")
    tree, first, second, task_id = _start(rt)
    stale = _step(rt, "runner-a", task_id, None, claim=True)
    stale_result = walker.call_user_code(stale)
    _silence(rt, "runner-a", DEAD_AFTER + 1)
    assert registry.bury("runner-a", DEAD_AFTER) == [task_id]

    again = _step(rt, "runner-b", task_id, None, claim=True)  # B replays the call
    assert again is not None and again.node_id == first
    assert _step(rt, "runner-a", task_id, (stale, stale_result), claim=False) is None  # dropped
    assert _children(rt, tree["id"])[first]["state"] == "RUNNING"

    following = _step(rt, "runner-b", task_id, (again, walker.call_user_code(again)), claim=False)
    assert following is not None and following.node_id == second
    assert _step(rt, "runner-b", task_id, (following, walker.call_user_code(following)), claim=False) is None
    assert api.get_pipeline_states(rt, tree["id"]).data[tree["id"]]["state"] == "FINISHED"
    assert api.get_node_histories(rt, first).data == []


def test_a_worker_whose_process_is_gone_is_dead_at_once(runtime: culm.Runtime) -> None:
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    child = subprocess.Popen(["sleep", "60"])
    key = process_key(child.pid)
    if not key:
        pytest.skip("no /proc here: only the beat tells a dead worker")
    registry.register("runner-c", 8, "culm")
    with rt.store.transaction() as unit:
        unit._x("UPDATE culm_worker SET process_key = ?, pid = ? WHERE owner = ?", [key, child.pid, "runner-c"])
    assert not process_gone(key) and registry.dead(DEAD_AFTER) == []
    child.kill()
    child.wait(10)
    assert process_gone(key)
    [(dead, silent)] = registry.dead(DEAD_AFTER)  # its beat is fresh: found by its process alone
    assert (dead.owner, silent) == ("runner-c", False)
    assert registry.bury("runner-c", None) == []
    assert registry.workers() == []


def test_a_process_of_another_namespace_is_never_taken_for_gone() -> None:
    own = process_key()
    assert own == "" or not process_gone(own)
    assert not process_gone("another-boot/pid:[1]|1|1")
    assert not process_gone("")


def test_a_process_that_proc_hides_from_this_user_is_not_taken_for_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc mounted with hidepid (or systemd's ProtectProc=invisible) hides another user's
    processes: their stat cannot be read. Such a runner is alive while the kernel says its pid
    exists (review23: a `culm run` of another user was buried at every look, its calls run twice)."""
    child = subprocess.Popen(["sleep", "60"])
    key = process_key(child.pid)
    if not key:
        pytest.skip("no /proc here: only the beat tells a dead worker")
    hidden = f"/proc/{child.pid}/stat"
    real_read = workers_module._read
    monkeypatch.setattr(workers_module, "_read", lambda path: "" if path == hidden else real_read(path))
    try:
        assert not process_gone(key)
    finally:
        child.kill()
        child.wait(10)
    assert process_gone(key)  # ended: the kernel knows no such pid


def test_an_embedded_runner_buries_no_worker_for_silence(runtime: culm.Runtime) -> None:
    """Whether a worker is silent for too long is for the workers' relays to judge, with their own
    CULM_WORKER_DEAD_AFTER (an operator raises it for the workers, not in the shell of a `culm run`):
    an embedded runner buries only runners whose process it finds gone (review23)."""
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    registry.register("worker-s", 8, "culm")
    task_id = _due_task(rt, 1.0)
    _lease_to(rt, task_id, "worker-s")
    _silence(rt, "worker-s", 10)
    presence = EmbeddedPresence(rt.store, registry, "embedded-e", 2, grace=15.0, dead_after=DEAD_AFTER)
    presence.start()
    grace, buried = presence.look()
    assert not buried and _lease(rt, task_id)[0] == "worker-s"
    assert grace == 0.0  # no live runner but itself: what is due and free is its to take at once
    assert sorted(w.owner for w in registry.workers()) == ["embedded-e", "worker-s"]
    presence.stop()


def test_leases_are_extended_only_for_their_owner_after_a_burial(runtime: culm.Runtime) -> None:
    """A buried worker's lease heartbeat no longer extends the task it lost (it runs ``WHERE owner``)."""
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    registry.register("runner-a", 2, "culm")
    _, _, _, task_id = _start(rt)
    _step(rt, "runner-a", task_id, None, claim=True)
    _silence(rt, "runner-a", DEAD_AFTER + 1)
    assert registry.bury("runner-a", DEAD_AFTER) == [task_id]
    with rt.store.transaction() as unit:
        unit.extend_leases("runner-a", [task_id], now() + 30)
    assert _lease(rt, task_id) == (None, None)


class _Runner:
    def __init__(self, on_hand: list[str] | None = None) -> None:
        self.on_hand = on_hand or []

    def task_ids(self) -> list[str]:
        return list(self.on_hand)


class _Process:
    """What a LeaseHeartbeat reads of its worker process: store, registry, owner, runner."""

    def __init__(self, rt: culm.Runtime, owner: str, on_hand: list[str] | None = None) -> None:
        self.store = rt.store
        self.registry = SqlWorkerRegistry(rt.store)
        self.engine = type("EngineOwner", (), {"owner": owner})()
        self.runner = _Runner(on_hand)


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_heartbeat_never_waits_for_its_own_engine_batch(kind: str, tmp_path: Path) -> None:
    """A long batch of the worker's engine (a result the store takes seconds to refuse) holds
    the row of one task on hand: the beat still extends the leases of the others at once, and
    stamps the registry, instead of waiting for that batch while the other leases run out (the
    relay then handed those tasks to another worker, which ran their user code again)."""
    with embedded_runtime_on(kind, tmp_path / "beat.db") as rt:
        ids = sorted(_due_task(rt, 0.0) for _ in range(2))
        for task_id in ids:
            assert _step(rt, "runner-a", task_id, None, claim=True) is not None  # its call is on hand
        with rt.store.transaction() as unit:
            unit.extend_leases("runner-a", ids, now() + 1)  # about to run out
        heartbeat = LeaseHeartbeat(_Process(rt, "runner-a", ids), 30.0, 1.0, 2, "culm")  # type: ignore[arg-type]
        heartbeat.beat_registry()
        held, release = threading.Event(), threading.Event()

        def engine_batch() -> None:  # the worker's own engine, inside a long batch
            with rt.store.transaction() as unit:
                unit._one("SELECT id FROM culm_task WHERE id = ? FOR UPDATE", [ids[0]])
                held.set()
                release.wait(30)

        batch = threading.Thread(target=engine_batch, daemon=True)
        batch.start()
        try:
            assert held.wait(10)
            beat = threading.Thread(target=heartbeat.beat, daemon=True)
            beat.start()
            beat.join(5)
            assert not beat.is_alive(), "the heartbeat waited for the engine's batch"
            assert _lease(rt, ids[1])[1] > now() + 20  # extended while the batch went on
            assert _lease(rt, ids[0])[1] < now() + 2  # the batch's row: left for the next beat
        finally:
            release.set()
            batch.join(10)
        heartbeat.beat()
        assert _lease(rt, ids[0])[1] > now() + 20


def test_a_worker_taken_for_dead_registers_again_at_its_next_beat(
    runtime: culm.Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    rt = runtime
    registry = SqlWorkerRegistry(rt.store)
    heartbeat = LeaseHeartbeat(_Process(rt, "runner-a"), 30.0, 1.0, 2, "culm")  # type: ignore[arg-type]
    heartbeat.beat_registry()  # no row yet: registers (quietly)
    assert "taken for dead" not in caplog.text
    assert [w.owner for w in registry.workers()] == ["runner-a"]
    _silence(rt, "runner-a", 60)  # paused for a minute: a relay buries it
    assert registry.bury("runner-a", DEAD_AFTER) == []
    assert registry.workers() == []
    with caplog.at_level(logging.WARNING, "culm.dispatch.liveness"):
        heartbeat.beat_registry()
    assert "was taken for dead" in caplog.text
    [again] = registry.workers()
    assert again.owner == "runner-a" and again.silent_for < DEAD_AFTER and again.threads == 2
    heartbeat.stop()
    assert registry.workers() == []  # a clean stop leaves the registry


def test_a_worker_refuses_a_dead_after_shorter_than_two_beats() -> None:
    env = {**os.environ, "CULM_WORKER_BEAT": "1", "CULM_WORKER_DEAD_AFTER": "1.5"}
    out = subprocess.run([sys.executable, "-m", "culm", "worker", "--db", "sqlite://", "--broker", "memory://"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "CULM_WORKER_DEAD_AFTER (1.5) must be at least twice CULM_WORKER_BEAT (1)" in out.stderr


class _Sent:
    """The broker edge of a relay: the ids of the tasks it was asked to publish."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def publish(self, task, at=None, countdown=None) -> bool:  # noqa: ANN001 - CeleryDispatcher.publish's shape
        self.ids.append(task.id)
        return True


def _due_task(rt: culm.Runtime, seconds_ago: float) -> str:
    """Start a pipeline whose first task became due ``seconds_ago`` (its message went astray)."""
    start = EmptyStartEvent()
    start.extend(ServiceActivity(component_code="t_echo")).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    with rt.store.transaction() as unit:
        (task_id,) = [r[0] for r in unit._all("SELECT id FROM culm_task WHERE root_id = ?", [tree["id"]])]
        unit._x("UPDATE culm_task SET due = due - ? WHERE id = ?", [seconds_ago, task_id])
    return task_id


def _relay_beside(rt: culm.Runtime, owner: str, store: Any = None, interval: float = 0.2,
                  **options: Any) -> tuple[TaskRelay, _Sent]:
    """A relay (dead_after 1 s, a look every 0.2 s, grace 15 s) of the process "me", on ``store``
    (default the runtime's), and a worker ``owner`` registered beside it."""
    registry = SqlWorkerRegistry(rt.store)
    sent = _Sent()
    relay = TaskRelay(store or rt.store, sent, interval=interval, grace=15.0, registry=registry,  # type: ignore[arg-type]
                      dead_after=1.0, check=0.2, own="me", **options)
    registry.register(owner, 2, "culm")
    return relay, sent


def test_after_a_burial_the_relay_also_sends_what_went_astray_meanwhile(runtime: culm.Runtime) -> None:
    # A Celery master hands messages to a killed pool process until it notices; those are lost
    # after the burial's pass. For dead_after seconds the relay sends what has waited a look since.
    rt = runtime
    relay, sent = _relay_beside(rt, "runner-d")
    _silence(rt, "runner-d", 10)
    before = _due_task(rt, 0.0)
    assert relay.bury_dead() == 1 and sent.ids == [before]  # the burial's pass: every due task
    astray = _due_task(rt, 0.5)  # went to the dead process after that pass
    assert relay.bury_dead() == 0 and sent.ids == [before, astray]  # the pass is not sent twice
    wait_until(lambda: relay._after_burial < time.monotonic(), 5, 0.05, what="the watch after the burial to end")
    later = _due_task(rt, 0.5)
    assert relay.bury_dead() == 0 and later not in sent.ids  # the ordinary grace applies again


def test_a_burial_sends_again_what_a_relay_sent_while_the_dead_worker_held_it(runtime: culm.Runtime) -> None:
    """A relay's pass sent a task a worker had on hand and had not claimed yet: a follow-up it kept,
    committed just after the pass read its clock, so that it looked like a timer due soon that was
    never published. The worker then claimed it (the message found it leased and did nothing) and
    died. The burial must send it again: skipping what was relayed a moment before left it to the
    grace (15 s; test_crash.py's kill -9 mid-poll on MariaDB, 16.2 s)."""
    rt = runtime
    relay, sent = _relay_beside(rt, "runner-h", interval=5.0)  # timers due within 10 s are "soon"
    task_id = _due_task(rt, -1.0)
    assert relay.relay_once() == 1 and sent.ids == [task_id]  # as a timer due soon, never published
    wait_until(lambda: _due_task_is_due(rt, task_id), 5, 0.01, what="the task to fall due")
    with rt.store.transaction() as unit:  # runner-h claims it: that message does nothing
        unit._x("UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id = ?", ["runner-h", now() + 30, task_id])
    _silence(rt, "runner-h", 10)
    assert relay.bury_dead() == 1 and _lease(rt, task_id) == (None, None)
    assert sent.ids == [task_id, task_id]
    assert relay.bury_dead() == 0 and sent.ids == [task_id, task_id]  # the watch after it: not sent twice


def _lease_to(rt: culm.Runtime, task_id: str, owner: str) -> None:
    """Give ``owner`` the task's lease for 30 s, as its claim would."""
    with rt.store.transaction() as unit:
        unit._x("UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id = ?", [owner, now() + 30, task_id])


def _due_task_is_due(rt: culm.Runtime, task_id: str) -> bool:
    with rt.store.reading() as unit:
        return float(unit._one("SELECT due FROM culm_task WHERE id = ?", [task_id])[0]) <= now()


def test_a_silent_embedded_runner_is_never_buried(runtime: culm.Runtime) -> None:
    """An embedded runner (a `culm run`) does not look, before it starts the calls it handed out,
    whether it was taken for dead: one only paused would run a call another runner took over. So
    silence alone buries no embedded runner, and its leases stay until they run out."""
    rt = runtime
    relay, sent = _relay_beside(rt, "runner-j")
    registry = SqlWorkerRegistry(rt.store)
    registry.register("embedded-k", 2, "")
    task_id = _due_task(rt, 1.0)
    _lease_to(rt, task_id, "embedded-k")
    _silence(rt, "embedded-k", 10)
    _silence(rt, "runner-j", 10)
    assert [(w.owner, silent) for w, silent in registry.dead(DEAD_AFTER)] == [("runner-j", True)]
    assert relay.bury_dead() == 1 and _lease(rt, task_id)[0] == "embedded-k" and sent.ids == []
    assert [w.owner for w in registry.workers()] == ["embedded-k"]


class _FailingOnce:
    """A relay's store whose next transaction fails (a deadlock victim, a lost connection)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.fail = True

    def transaction(self) -> Any:
        if self.fail:
            self.fail = False
            raise ConnectionError("lost the connection in the burial's pass")
        return self.store.transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_burial_pass_cut_short_is_done_at_the_next_look(runtime: culm.Runtime) -> None:
    """The burial is committed before its pass publishes the dead worker's work: a pass that fails
    midway is done at the next look (no later look finds the dead worker to bury again), not left
    to the grace."""
    rt = runtime
    relay, sent = _relay_beside(rt, "runner-i", _FailingOnce(rt.store), batch=1)
    held = _due_task(rt, 0.0)
    _lease_to(rt, held, "runner-i")
    _silence(rt, "runner-i", 10)
    with pytest.raises(ConnectionError):
        relay.bury_dead()
    assert _lease(rt, held) == (None, None) and sent.ids == []  # buried, its task freed, not sent
    assert relay.bury_dead() == 0 and sent.ids == [held]


@pytest.mark.parametrize("late", [False, True], ids=["soon", "past-dead-after"])
@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_a_lease_the_dead_process_had_locked_is_freed_once_its_transaction_ends(kind: str, late: bool,
                                                                                 tmp_path: Path) -> None:
    """A process killed mid-transaction leaves that transaction to the server for a moment: on
    MariaDB a multi-statement query ending with COMMIT runs to its end, and a rollback waits until
    the server reads the closed socket. Rows it had locked are skipped by the burial (SKIP LOCKED)
    and keep the dead owner's lease; the relay frees them at its next looks after the burial, not
    after the lease (30 s) and the grace (15 s) have run out. ``late``: the transaction outlives
    dead_after (a stuck statement the server ends seconds after its client exited, PostgreSQL's
    client check): the relay still looks, for free_for (run_worker: the lease length)."""
    with embedded_runtime_on(kind, tmp_path / "unused.db") as rt:
        registry = SqlWorkerRegistry(rt.store)
        sent = _Sent()
        relay = TaskRelay(rt.store, sent, interval=0.2, grace=15.0, registry=registry,  # type: ignore[arg-type]
                          dead_after=1.0, check=0.2, own="me", free_for=30.0)
        registry.register("runner-e", 2, "culm")
        task_id = _due_task(rt, 1.0)
        with rt.store.transaction() as unit:  # runner-e claimed it in an earlier, committed batch
            unit._x("UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id = ?", ["runner-e", now() + 30, task_id])
        locked, release = threading.Event(), threading.Event()

        def last_transaction() -> None:  # its last batch, still running on the server when it died
            with rt.store.transaction() as unit:
                unit._x("UPDATE culm_task SET claimed_until = ? WHERE id = ?", [now() + 30, task_id])
                locked.set()
                release.wait(30)

        holder = threading.Thread(target=last_transaction)
        holder.start()
        try:
            assert locked.wait(30)
            _silence(rt, "runner-e", 10)
            assert relay.bury_dead() == 1
            assert _lease(rt, task_id)[0] == "runner-e" and sent.ids == []  # locked: skipped
            if late:
                wait_until(lambda: relay._after_burial < time.monotonic(), 5, 0.05, what="dead_after to pass")
                assert relay.bury_dead() == 0 and _lease(rt, task_id)[0] == "runner-e"  # still locked
        finally:
            release.set()
            holder.join(30)
        assert relay.bury_dead() == 0  # the next look, its transaction committed meanwhile
        assert _lease(rt, task_id) == (None, None)
        assert sent.ids == [task_id]


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_the_watch_after_a_burial_leaves_a_worker_that_registered_again_alone(kind: str, tmp_path: Path) -> None:
    """A worker taken for dead while alive (paused past dead_after) registers again and claims
    work under the same owner: the relay's watch after the burial must not free those new leases."""
    with embedded_runtime_on(kind, tmp_path / "unused.db") as rt:
        registry = SqlWorkerRegistry(rt.store)
        relay = TaskRelay(rt.store, _Sent(), interval=0.2, grace=15.0, registry=registry,  # type: ignore[arg-type]
                          dead_after=2.0, check=0.2, own="me")
        registry.register("runner-g", 2, "culm")
        _silence(rt, "runner-g", 10)
        assert relay.bury_dead() == 1
        registry.register("runner-g", 2, "culm")  # it was alive after all
        task_id = _due_task(rt, 1.0)
        with rt.store.transaction() as unit:
            unit._x("UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id = ?", ["runner-g", now() + 30, task_id])
        assert relay.bury_dead() == 0  # a look within the watch
        assert _lease(rt, task_id)[0] == "runner-g"
