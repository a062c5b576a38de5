"""A worker process that wakes after the others buried it (frozen past ``CULM_WORKER_DEAD_AFTER``).

A frozen worker (SIGSTOP, a paused VM) is taken for dead by the relays, which free its leases and,
for a lease's length after, free again whatever leases it still holds while it has no registry
row. When it wakes, all its threads go on at once, its beat thread among them. The engine loop of
a ``culm worker`` process (WorkerRunner and its ThreadDispatcher, as in a pool process), the
registry and the relay run here as they do in workers; the worker's beat thread is never started:
it is held, as a woken process's beat thread may be while its engine thread claims.

Checked: a task claimed right after waking keeps its lease through the relay's next looks (the
engine beats, and so registers again, before it claims anything); a call handed out before the
burial and not started yet, whose task another worker took over meanwhile, is dropped, not run
a second time.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import embedded_runtime_on
from engine_fixtures import wait_state
from support import wait_until

import culm
from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree
from culm.components import Component, Service
from culm.core.records import TaskRecord, now
from culm.dispatch.liveness import LeaseHeartbeat, TaskRelay
from culm.dispatch.runner import WorkerRunner
from culm.storage.workers import SqlWorkerRegistry

pytestmark = pytest.mark.timeout(120)
DEAD_AFTER = 3.0

RAN: Counter[str] = Counter()  # executes of t_wake_held, by input ``name``
STARTED: dict[str, threading.Event] = {}
HELD: dict[str, threading.Event] = {}  # an execute whose name is here waits (bounded) for it


class WakeHeldService(Service):
    def execute(self, data: Any, parent_data: Any) -> bool:
        name = data.inputs.name
        RAN[name] += 1
        STARTED.setdefault(name, threading.Event()).set()
        if name in HELD:
            return HELD[name].wait(30)
        return True


class WakeHeldComponent(Component):
    code = "t_wake_held"
    name = "held while the test says"
    bound_service = WakeHeldService


class _Publisher:
    """The broker edge of the runner: every follow-up stays in this process."""

    def __init__(self) -> None:
        self.sent: list[TaskRecord] = []

    def may_keep(self, task: TaskRecord, at: float) -> bool:
        return True

    def submit(self, tasks: list[TaskRecord]) -> None:
        self.sent.extend(tasks)


class _Sent:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def publish(self, task: TaskRecord, at: float | None = None, countdown: float | None = None) -> bool:
        self.ids.append(task.id)
        return True


class _Process:
    """What a LeaseHeartbeat reads of its worker process."""

    def __init__(self, rt: culm.Runtime, runner: WorkerRunner) -> None:
        self.store = rt.store
        self.registry = SqlWorkerRegistry(rt.store)
        self.engine = rt.engine
        self.runner = runner


@pytest.fixture(params=["postgres", "mariadb"])
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[culm.Runtime, WorkerRunner, LeaseHeartbeat]]:
    RAN.clear()
    STARTED.clear()
    HELD.clear()
    with embedded_runtime_on(request.param, tmp_path / "unused.db") as rt:
        runner = WorkerRunner(_Publisher(), threads=1)  # type: ignore[arg-type]
        rt.engine.dispatcher = runner
        runner.ensure_started(rt.engine)
        heartbeat = LeaseHeartbeat(_Process(rt, runner), 30.0, 1.0, 1, "culm", dead_after=DEAD_AFTER)  # type: ignore[arg-type]
        heartbeat.beat_registry()  # registered; its beat thread is never started (held)
        runner.alive = heartbeat.alive
        try:
            yield rt, runner, heartbeat
        finally:
            for event in HELD.values():
                event.set()
            runner.close(timeout=5)


def _pipeline(rt: culm.Runtime, name: str) -> tuple[str, str]:
    start, act = EmptyStartEvent(), ServiceActivity(component_code="t_wake_held")
    act.component.inputs.name = Var(type=Var.PLAIN, value=name)
    start.extend(act).extend(EmptyEndEvent())
    tree = build_tree(start)
    assert api.run_pipeline(rt, tree).result
    return tree["id"], act.id


def _task_at(rt: culm.Runtime, node_id: str) -> str | None:
    """The task row that stands at ``node_id``, claimed (its call handed out), if there is one."""
    with rt.store.reading() as unit:
        row = unit._one("SELECT id FROM culm_task WHERE node_id = ? AND owner IS NOT NULL", [node_id])
    return None if row is None else str(row[0])


def _owner(rt: culm.Runtime, task_id: str) -> str | None:
    with rt.store.reading() as unit:
        row = unit._one("SELECT owner FROM culm_task WHERE id = ?", [task_id])
    return None if row is None else row[0]


def _freeze_and_bury(rt: culm.Runtime, heartbeat: LeaseHeartbeat, relay: TaskRelay) -> None:
    """The worker was frozen for 10 s: its row went silent (the database's clock) and its own
    monotonic clock moved on past its last beat; another worker's relay buries it."""
    with rt.store.transaction() as unit:
        unit._x("UPDATE culm_worker SET beat_time = beat_time - 10 WHERE owner = ?", [rt.engine.owner])
    heartbeat._beaten_at -= 10  # noqa: SLF001 - what 10 s of SIGSTOP does to the beat's clock
    assert relay.bury_dead() == 1
    assert SqlWorkerRegistry(rt.store).workers() == []


def _relay(rt: culm.Runtime) -> TaskRelay:
    return TaskRelay(rt.store, _Sent(), interval=1.0, grace=15.0, registry=SqlWorkerRegistry(rt.store),  # type: ignore[arg-type]
                     dead_after=DEAD_AFTER, check=1.0, own="relay-of-worker-b", free_for=30.0)


def test_a_task_claimed_by_a_woken_worker_before_its_beat_keeps_its_lease(
    worker: tuple[culm.Runtime, WorkerRunner, LeaseHeartbeat], caplog: pytest.LogCaptureFixture
) -> None:
    rt, runner, heartbeat = worker
    relay = _relay(rt)
    _freeze_and_bury(rt, heartbeat, relay)
    HELD["first"] = threading.Event()
    with caplog.at_level(logging.WARNING, "culm.dispatch.liveness"):
        root, node = _pipeline(rt, "first")  # a message, taken as the worker wakes: claimed at once
        assert STARTED.setdefault("first", threading.Event()).wait(30)
    task_id = _task_at(rt, node)
    assert task_id is not None
    relay.bury_dead()  # a look of the relay's watch after the burial: the lease stays
    assert _owner(rt, task_id) == rt.engine.owner
    # The engine beat before its claim, found its row gone and registered again.
    assert "was taken for dead" in caplog.text
    assert [w.owner for w in SqlWorkerRegistry(rt.store).workers()] == [rt.engine.owner]
    HELD["first"].set()
    wait_state(rt, root, "FINISHED", timeout=30)
    assert RAN["first"] == 1


def test_a_call_not_started_before_the_burial_is_left_to_the_worker_that_took_it_over(
    worker: tuple[culm.Runtime, WorkerRunner, LeaseHeartbeat],
) -> None:
    rt, runner, heartbeat = worker
    relay = _relay(rt)
    HELD["busy"] = threading.Event()
    busy_root, _ = _pipeline(rt, "busy")
    assert STARTED.setdefault("busy", threading.Event()).wait(30)  # holds the worker's one thread
    waiting_root, waiting = _pipeline(rt, "waiting")
    waiting_task = wait_until(lambda: _task_at(rt, waiting), 30, 0.02,
                              what="the second call claimed, waiting for a thread")
    assert _owner(rt, waiting_task) == rt.engine.owner
    assert runner.loop.queued() == 1

    _freeze_and_bury(rt, heartbeat, relay)
    assert _owner(rt, waiting_task) is None  # the burial freed it, and the relay published it
    with rt.store.transaction() as unit:  # worker B takes it over (and runs its call)
        assert unit.claim_task(waiting_task, "worker-b", now() + 30, now()) is not None

    HELD["busy"].set()  # the woken worker's call returns: its result goes into a batch
    wait_state(rt, busy_root, "FINISHED", timeout=30)  # applied: nobody else held that task
    assert runner.wait_idle(30)
    assert RAN == {"busy": 1}  # the waiting call did not run here: worker B runs it
    assert _owner(rt, waiting_task) == "worker-b"
    wait_state(rt, waiting, "RUNNING", timeout=5)
    assert waiting_root


class _WedgedRegistry(SqlWorkerRegistry):
    """The registry of a process whose beat statement does not return until ``wedge`` is set (a
    wedged connection, a server-side hang); then it beats as usual."""

    def __init__(self, store: Any, wedge: threading.Event) -> None:
        super().__init__(store)
        self.wedge = wedge

    def beat(self, owner: str) -> bool:
        if not self.wedge.wait(60):
            raise TimeoutError("the test never let the beat go")
        return super().beat(owner)


def test_a_woken_worker_whose_beat_is_wedged_claims_nothing_and_its_task_is_taken_over(
    worker: tuple[culm.Runtime, WorkerRunner, LeaseHeartbeat], caplog: pytest.LogCaptureFixture
) -> None:
    """The beat thread's beat is wedged on the database (it holds the beat, so the engine thread,
    whose last beat is stale, would wait for it before claiming, for as long as it lasts). The
    engine thread waits ``engine_wait`` at most, claims nothing and tries the batch again later;
    the others bury the silent process and take the task over; when the beat comes back the
    process registers again and does not run the task the other worker holds."""
    rt, runner, heartbeat = worker
    relay = _relay(rt)
    wedge = threading.Event()
    heartbeat.state.registry = _WedgedRegistry(rt.store, wedge)
    heartbeat._beaten_at -= 10  # noqa: SLF001 - the last beat is stale: the engine beats before claiming
    beat_thread = threading.Thread(target=heartbeat.beat_registry, name="culm-lease-heartbeat", daemon=True)
    try:
        beat_thread.start()  # the beat thread's beat, wedged
        with caplog.at_level(logging.WARNING, "culm.dispatch.runner"):
            root, _ = _pipeline(rt, "taken_over")
            wait_until(lambda: "claims nothing until it does" in caplog.text, 3 * heartbeat.engine_wait, 0.05,
                       what="the engine thread to give up waiting for the wedged beat")
        with rt.store.reading() as unit:
            [task_id] = [r[0] for r in unit._all("SELECT id FROM culm_task WHERE owner IS NULL", [])]
        assert _owner(rt, task_id) is None and RAN["taken_over"] == 0  # nothing claimed here
        with rt.store.transaction() as unit:  # silent: the other workers bury it and take the task over
            unit._x("UPDATE culm_worker SET beat_time = beat_time - 10 WHERE owner = ?", [rt.engine.owner])
        assert relay.bury_dead() == 1
        with rt.store.transaction() as unit:
            assert unit.claim_task(task_id, "worker-b", now() + 30, now()) is not None
    finally:
        wedge.set()  # the beat comes back: it finds the row gone and registers again
    beat_thread.join(10)
    wait_until(lambda: [w.owner for w in SqlWorkerRegistry(rt.store).workers()] == [rt.engine.owner], 10, 0.05,
               what="the woken process to register again")
    assert runner.wait_idle(30)
    assert RAN["taken_over"] == 0 and _owner(rt, task_id) == "worker-b"  # left to worker B
    assert api.get_pipeline_states(rt, root).data[root]["state"] == "RUNNING"
    assert "beating the worker registry before starting calls failed" not in caplog.text
