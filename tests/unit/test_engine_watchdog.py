"""EngineWatchdog: a worker process whose engine thread is in one batch past CULM_ENGINE_STUCK_AFTER
says so, with where that thread is, stops its beat and exits (tests/integration/test_stuck_engine.py
runs it in real workers)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

from culm.dispatch.liveness import ENGINE_STUCK_EXIT, EngineWatchdog


class _Beat:
    halted = False

    def halt(self) -> None:
        self.halted = True


def _state(batch_age: float, thread: threading.Thread, store: Any = None) -> Any:
    loop = SimpleNamespace(batch_age=lambda: (batch_age, thread))
    runner = SimpleNamespace(loop=loop, task_ids=lambda: ["t1", "t2"])
    return SimpleNamespace(runner=runner, engine=SimpleNamespace(owner="host:1:abc"), heartbeat=_Beat(),
                           store=SimpleNamespace() if store is None else store)


class _Sessions:
    """A store whose database sessions the process can end (MariaDB: KILL)."""

    def __init__(self) -> None:
        self.open = 3

    def end_own_sessions(self) -> int:
        ended, self.open = self.open, 0
        return ended


def _waiting_in_the_database(release: threading.Event) -> None:
    release.wait(30)  # stands for the driver's wait


def test_a_batch_past_the_bound_is_logged_with_its_stack_and_ends_the_process(caplog) -> None:
    release = threading.Event()
    engine = threading.Thread(target=_waiting_in_the_database, args=(release,), name="culm-engine", daemon=True)
    engine.start()
    exits: list[int] = []
    try:
        state = _state(61.0, engine)
        watchdog = EngineWatchdog(state, stuck_after=60.0, exit=exits.append)
        with caplog.at_level(logging.ERROR, logger="culm.dispatch.liveness"):
            assert watchdog.look()
    finally:
        release.set()
    assert exits == [ENGINE_STUCK_EXIT] and state.heartbeat.halted
    (record,) = [r for r in caplog.records if r.name == "culm.dispatch.liveness"]
    message = record.getMessage()
    assert message.startswith("the engine thread has been in one batch's database transaction (its reads and writes and the "
                              "engine's steps between them; not waiting for a lock) for 61 s, over "
                              "CULM_ENGINE_STUCK_AFTER (60 s): this worker process (host:1:abc, pid ")
    assert "take over its 2 task(s) on hand" in message
    assert "in _waiting_in_the_database" in message  # where the engine thread waits


def test_a_batch_under_the_bound_or_no_batch_leaves_the_process_alone() -> None:
    exits: list[int] = []
    for age in (0.0, 59.9):
        state = _state(age, threading.current_thread())
        assert not EngineWatchdog(state, stuck_after=60.0, exit=exits.append).look()
        assert not state.heartbeat.halted
    assert exits == []


def test_zero_turns_the_watchdog_off() -> None:
    exits: list[int] = []
    watchdog = EngineWatchdog(_state(1e9, threading.current_thread()), stuck_after=0.0, check=0.01, exit=exits.append)
    watchdog.start()
    assert all(t.name != "culm-engine-watchdog" for t in threading.enumerate())  # no thread to look
    watchdog.stop()
    assert exits == []


def _watching(runtime: Any, stuck_after: float, exits: list[int]) -> EngineWatchdog:
    """A watchdog on ``runtime``'s engine thread, as a worker process runs one."""
    runner = SimpleNamespace(loop=runtime.dispatcher, task_ids=lambda: [])
    state = SimpleNamespace(runner=runner, engine=SimpleNamespace(owner="host:1:abc"), heartbeat=None)
    watchdog = EngineWatchdog(state, stuck_after=stuck_after, check=0.05, exit=exits.append)
    watchdog.start()
    return watchdog


def test_a_slow_signal_receiver_is_user_code_not_a_stuck_engine(tmp_path) -> None:
    """post_set_state receivers run on the engine thread after the commit: the watchdog does not
    time them (nor after-commit hooks and broker publishes), only the batch's transaction."""
    from support import wait_until

    from culm import Runtime, api
    from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, build_tree
    from culm.signals import post_set_state

    slow = threading.Event()

    def receiver(sender: Any, node_id: str, to_state: str, **kw: Any) -> None:
        if to_state == "FINISHED" and not slow.is_set():
            slow.set()
            threading.Event().wait(1.5)  # a slow HTTP callback, say: three times stuck_after

    post_set_state.connect(receiver, weak=False)
    runtime = Runtime(f"sqlite:///{tmp_path}/x.db")
    exits: list[int] = []
    watchdog = _watching(runtime, 0.5, exits)
    try:
        start = EmptyStartEvent()
        start.extend(ServiceActivity(component_code="example_component")).extend(EmptyEndEvent())
        tree = build_tree(start)
        api.run_pipeline(runtime=runtime, pipeline=tree)

        def finished() -> bool:
            return api.get_pipeline_states(runtime=runtime, root_id=tree["id"]).data[tree["id"]]["state"] == "FINISHED"

        wait_until(finished, 30, 0.05, what="the pipeline to finish")
        assert slow.is_set()
        assert exits == []
    finally:
        watchdog.stop()
        post_set_state.disconnect(receiver)
        runtime.close()


def test_the_process_ends_its_database_sessions_before_it_exits(caplog) -> None:
    store = _Sessions()
    open_at_exit: list[int] = []
    state = _state(61.0, threading.current_thread(), store)
    watchdog = EngineWatchdog(state, stuck_after=60.0, exit=lambda _status: open_at_exit.append(store.open))
    with caplog.at_level(logging.WARNING, logger="culm.dispatch.liveness"):
        assert watchdog.look()
    assert open_at_exit == [0]  # the row locks of the stuck statement go with the process
    assert "ended 3 database session(s) of this process" in caplog.text


def test_the_sessions_noted_for_threads_that_ended_are_dropped() -> None:
    # Found reviewing (session 19): the backend pid noted per thread that began a write transaction
    # (for the watchdog's lock question) was never dropped: a server whose request threads come and
    # go grew it by one per thread, for ever. Threads that ended are dropped as it grows; a live
    # thread's entry (the engine thread's) stays.
    from culm.storage.sql.base import WriterSessions

    writers = WriterSessions()
    writers.note(7)  # this thread: alive throughout
    for i in range(3 * WriterSessions.PRUNE_AT):
        t = threading.Thread(target=writers.note, args=(1000 + i,))
        t.start()
        t.join()
    assert len(writers) <= WriterSessions.PRUNE_AT + threading.active_count(), len(writers)
    assert writers.get(threading.get_ident()) == 7
