"""The embedded dispatcher's batches: one failing task must not undo or stall the others.

A batch first runs without savepoints; when a task raises, the transaction is rolled back and the
batch runs again with a savepoint per task. The engine's row copies are dropped on the way, so the
replayed tasks act on what the database holds.
"""

from __future__ import annotations

import threading
import time

import components
import pytest
from engine_fixtures import node_state, outputs, wait_state
from support import wait_until

import culm
from culm import api
from culm.builder import (
    ConvergeGateway,
    EmptyEndEvent,
    EmptyStartEvent,
    ParallelGateway,
    ServiceActivity,
    Var,
    build_tree,
)
from culm.core.records import EXECUTE, TaskRecord, new_id, now

pytestmark = pytest.mark.timeout(60)


def one_act_line(code: str, **inputs: str) -> tuple[dict, EmptyStartEvent, ServiceActivity]:
    """start -> one ``code`` activity with these plain inputs -> end: (tree, start, activity)."""
    act = ServiceActivity(component_code=code)
    for key, value in inputs.items():
        setattr(act.component.inputs, key, Var(type=Var.PLAIN, value=value))
    start = EmptyStartEvent()
    start.extend(act).extend(EmptyEndEvent())
    return build_tree(start), start, act


def echo_line(value: str) -> tuple[dict, ServiceActivity]:
    tree, _, act = one_act_line("t_echo", x=value)
    return tree, act


def test_a_task_that_breaks_the_engine_does_not_stop_its_batch(tmp_path):
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db")
    try:
        gate = ServiceActivity(component_code="t_gate")
        gate.component.inputs.gate = Var(type=Var.PLAIN, value="batch-broken")
        start = EmptyStartEvent()
        start.extend(gate).extend(EmptyEndEvent())
        held = build_tree(start)
        assert api.run_pipeline(rt, held).result
        wait_state(rt, gate.id, "RUNNING")
        # A task of that live process pointing at a node its graph does not have: advancing it
        # raises inside the engine (not in user code), after it has already changed the process.
        with rt.store.reading() as unit:
            proc = unit.processes_of_root(held["id"])[0]
        broken = TaskRecord(new_id(), EXECUTE, proc.id, "no-such-node", held["id"], due=now())
        with rt.store.transaction() as unit:
            unit.insert_tasks([broken])
        others = [echo_line(f"v{i}") for i in range(5)]
        # The broken task and five fresh runs reach the dispatcher together and share batches.
        rt.dispatcher.submit([broken])
        for tree, _ in others:
            assert api.run_pipeline(rt, tree).result
        for i, (tree, act) in enumerate(others):
            wait_state(rt, tree["id"], "FINISHED")
            assert outputs(rt, act.id)["out"] == f"v{i}!"

        def broken_row() -> object:
            with rt.store.reading() as unit:
                return unit.get_task(broken.id)

        # Its changes were undone, and as it is not its process's live work (the process waits at
        # the gate), its row is dropped rather than offered again; nothing of the process changed.
        assert wait_until(lambda: broken_row() is None, what="the broken task row to go")
        assert node_state(rt, gate.id)["state"] == "RUNNING"
        # The process it touched goes on from where the database says it is.
        components.gate("batch-broken").set()
        wait_state(rt, held["id"], "FINISHED")
    finally:
        rt.close()


def test_a_run_pipeline_call_that_does_not_end_holds_the_engine_only_briefly(tmp_path):
    """The engine batches around run_pipeline calls under way, but never waits for them for good:
    a submitter stuck inside one (a huge tree, a slow signal receiver) does not stall other runs."""
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db")
    try:
        start = EmptyStartEvent()
        acts = [ServiceActivity(component_code="t_echo") for _ in range(10)]
        tail = start
        for i, act in enumerate(acts):
            act.component.inputs.x = Var(type=Var.PLAIN, value=f"n{i}")
            tail = tail.extend(act)
        tail.extend(EmptyEndEvent())
        tree = build_tree(start)
        with rt.engine.submitting():  # as if another thread were inside run_pipeline throughout
            assert api.run_pipeline(rt, tree).result
            wait_state(rt, tree["id"], "FINISHED", timeout=10)
        assert [outputs(rt, act.id)["out"] for act in acts] == [f"n{i}!" for i in range(10)]
    finally:
        rt.close()


def test_many_runs_submitted_in_a_loop_all_finish(tmp_path):
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db")
    try:
        runs = [echo_line(f"v{i}") for i in range(60)]
        for tree, _ in runs:
            assert api.run_pipeline(rt, tree).result
        for i, (tree, act) in enumerate(runs):
            wait_state(rt, tree["id"], "FINISHED")
            assert outputs(rt, act.id)["out"] == f"v{i}!"
    finally:
        rt.close()


def test_wait_idle_does_not_return_between_a_batch_finishing_tasks_and_queueing_the_next(tmp_path, monkeypatch):
    # After a commit the engine forgets the tasks it finished, then queues the tasks it made. With
    # one pipeline running, nothing is known between the two; slow that moment down so that a
    # waiter would see it every time, not once in a while.
    from culm.dispatch import threads

    queue_tasks = threads.ThreadDispatcher.submit

    def slow_hand_over(self, tasks):
        if threading.current_thread().name == "culm-engine" and tasks:
            time.sleep(0.05)
        queue_tasks(self, tasks)

    monkeypatch.setattr(threads.ThreadDispatcher, "submit", slow_hand_over)
    # The branches' tasks end at the join, where the parent process goes on with a new task.
    acts = [ServiceActivity(component_code="t_echo") for _ in range(2)]
    for i, act in enumerate(acts):
        act.component.inputs.x = Var(type=Var.PLAIN, value=f"b{i}")
    start, fork, join = EmptyStartEvent(), ParallelGateway(), ConvergeGateway()
    start.extend(fork).connect(*acts).converge(join).extend(EmptyEndEvent())
    tree = build_tree(start)
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db")
    try:
        assert api.run_pipeline(rt, tree).result
        assert rt.wait_idle(30)
        assert node_state(rt, tree["id"])["state"] == "FINISHED"
        assert [outputs(rt, act.id)["out"] for act in acts] == ["b0!", "b1!"]
    finally:
        rt.close()


class _RecordingPolicy:
    """A LoopPolicy that counts its hooks and asks for one retry of the first failed batch."""

    def __init__(self) -> None:
        self.wrapped = self.returned = self.committed = 0
        self.failures: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def wrap_call(self, call):
        self.wrapped += 1  # engine thread only
        return call

    def call_returned(self) -> None:
        with self.lock:
            self.returned += 1

    def batch_committed(self) -> None:
        self.committed += 1

    def retry_after(self, batch_size: int, exc: Exception) -> float | None:
        self.failures.append((batch_size, str(exc)))
        return 0.01 if len(self.failures) == 1 else None

    def before_claims(self) -> bool:
        return False  # never taken for dead (an embedded loop has no registry)

    def lost_tasks(self, task_ids: list[str]) -> set[str]:
        return set()


def test_the_loop_policy_hears_of_user_code_and_commits_and_retries_a_failed_batch(tmp_path, monkeypatch):
    from culm.dispatch import threads

    commit_batch = threads.commit_batch
    calls = {"n": 0}

    def fails_first_batch(engine, batch, **options):
        calls["n"] += 1
        if calls["n"] == 1:  # neither the optimistic pass nor its task-by-task replay committed
            raise RuntimeError("database went away")
        return commit_batch(engine, batch, **options)

    monkeypatch.setattr(threads, "commit_batch", fails_first_batch)
    policy = _RecordingPolicy()
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db", workers=0)
    loop = threads.ThreadDispatcher(2, sole_runner=False, policy=policy)
    try:
        rt.engine.dispatcher = loop
        loop.start(rt.engine)
        tree, act = echo_line("p")
        assert api.run_pipeline(rt, tree).result
        assert loop.wait_idle(30)
        assert node_state(rt, tree["id"])["state"] == "FINISHED"
        assert outputs(rt, act.id)["out"] == "p!"
        assert policy.failures == [(1, "database went away")]  # retried once, then it committed
        assert policy.wrapped == policy.returned >= 1  # every call handed out came back
        assert policy.committed >= 2  # the claim and the result are separate commits
    finally:
        loop.close()
        rt.close()


def gated_line(gate: str) -> tuple[dict, EmptyStartEvent]:
    tree, start, _ = one_act_line("t_gate", gate=gate)
    return tree, start


@pytest.mark.parametrize("released", [True, False], ids=["a result comes", "no result comes"])
def test_while_every_slot_is_taken_a_batch_without_results_waits_for_the_next_result(tmp_path, monkeypatch, released):
    """With one user-code thread, held by a gate, and a call waiting for that slot, a fresh run's
    first task frees no slot: it waits for the next result and commits with it (one commit, not
    two), or commits alone once HOLD_MAX has passed without one."""
    from culm.dispatch import threads

    monkeypatch.setattr(threads, "HOLD_MAX", 1.5 if released else 0.2)
    batches: list[list[tuple[str, bool]]] = []
    run_batch = threads.ThreadDispatcher._run_batch

    def recorded(self, batch):
        batches.append([(item.task.root_id, item.waiting) for item in batch])
        return run_batch(self, batch)

    monkeypatch.setattr(threads.ThreadDispatcher, "_run_batch", recorded)
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db", workers=1)
    try:
        held, held_start = gated_line("slot-held")
        waiting, waiting_start = gated_line("slot-waited-for")
        fresh, fresh_start = gated_line("slot-waited-for")
        assert api.run_pipeline(rt, held).result
        wait_state(rt, held_start.id, "FINISHED")  # its call holds the only slot
        assert api.run_pipeline(rt, waiting).result
        wait_state(rt, waiting_start.id, "FINISHED")  # its call waits for that slot
        submitted = time.monotonic()
        assert api.run_pipeline(rt, fresh).result
        if released:
            # its first task is taken into a batch that waits for a result (counted as on hand)
            wait_until(lambda: rt.dispatcher._in_batch == 1, timeout=1.0, what="the fresh run's batch waiting")
            assert (node_state(rt, fresh_start.id) or {}).get("state") != "FINISHED"
            components.gate("slot-held").set()
            wait_state(rt, fresh_start.id, "FINISHED")
            first = next(b for b in batches if (fresh["id"], False) in b)
            assert (held["id"], True) in first  # it committed with the held call's result
        else:
            wait_state(rt, fresh_start.id, "FINISHED")  # committed alone, the slot still held
            assert time.monotonic() - submitted >= 0.2
            assert [(fresh["id"], False)] in batches
            components.gate("slot-held").set()
        components.gate("slot-waited-for").set()
        for tree in (held, waiting, fresh):
            wait_state(rt, tree["id"], "FINISHED")
    finally:
        rt.close()


class _Broker:
    """Stands in for a worker's broker: every follow-up is published, and the test delivers it."""

    def __init__(self) -> None:
        self.sent: list[TaskRecord] = []
        self.lock = threading.Lock()

    def may_keep(self, task: TaskRecord, at: float) -> bool:
        return False

    def submit(self, tasks: list[TaskRecord]) -> None:
        with self.lock:
            self.sent.extend(tasks)

    def take(self) -> list[TaskRecord]:
        with self.lock:
            sent, self.sent[:] = list(self.sent), []
        return sent


def test_a_saturated_worker_accepts_no_more_tasks_than_its_room_while_a_batch_waits_for_a_result(
        tmp_path, monkeypatch):
    """review20d: while a batch waits for a result (every slot taken), the tasks it took off the
    queue still count as on hand: a worker offered ten more messages with room for one takes one
    (it took them all, HOLD_MAX widened: its room was read as free again after each take)."""
    from culm.dispatch import runner, threads

    monkeypatch.setattr(threads, "HOLD_MAX", 1.0)  # the wait spans every delivery below
    broker = _Broker()
    rt = culm.Runtime(f"sqlite:///{tmp_path}/t.db", workers=0)
    worker = runner.WorkerRunner(broker, threads=1, backlog=64)
    try:
        rt.engine.dispatcher = worker
        worker.ensure_started(rt.engine)

        def deliver(runs: int, gate: str) -> int:
            for _ in range(runs):
                assert api.run_pipeline(rt, gated_line(gate)[0]).result
            return sum(worker.accept(t.id, t.kind, timeout=0.1) for t in broker.take())

        # 15 runs: one call holds the only thread, 14 wait for it: room 16 - 1 - 14 = 1.
        assert deliver(15, "saturated-held") == 15
        wait_until(lambda: worker._in_user_code == 1 and worker.loop.queued() == 14, timeout=20)
        with worker.loop.condition:
            room = worker._room()
        assert room == 1
        assert deliver(10, "saturated-later") <= room
    finally:
        components.gate("saturated-held").set()
        components.gate("saturated-later").set()
        worker.close()
        rt.close()
