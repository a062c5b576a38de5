"""WorkerRunner: how a ``culm worker`` process runs the tasks its Celery messages name.

A message carries a task id (and a hint of its run, node and walk reads); the row is the durable
work (see :mod:`culm.dispatch.celery`).
The Celery task hands the id to this process's runner and returns, so the process takes its next
message at once. The runner is the embedded engine loop (:class:`ThreadDispatcher`) set up to
share its database with other workers (it composes that loop and sets its policy):

* every task on hand advances in ONE transaction (group commit, a savepoint per task only when
  the optimistic pass fails), and user code runs on the runner's own threads;
* a task is claimed with a lease when it is first advanced, so a duplicate message, or the same
  task handed to two workers, runs once; a heartbeat extends the leases of the tasks on hand;
* a call a node timeout cut off holds no room: its thread is let go of (it ends when the call
  returns, its result discarded) and a new one takes its place, as on the embedded runtime;
* the process takes on one task per user-code thread, or SHORT_CALL_QUEUE per thread while its
  calls are short (under SHORT_CALL_SECONDS on average), counting those in user code, being
  advanced and queued; and at most ``backlog`` tasks in all;
* the follow-up tasks of its commits stay here while there is room (no broker round trip); the
  others, and every timer, are published for any worker to take;
* a message that finds no room goes back to the broker (the Celery task retries it with a
  countdown), so idle workers take it; while calls are short it first waits briefly for room;
* a batch the database interrupts (lost connection, restart) is tried again after a pause, results
  of user code included, so no user code runs twice for it; a deadlock victim is tried again
  after a short jittered pause (:mod:`culm._retry`);
* at shutdown the runner stops keeping work, lets what is on hand reach its next commit, and
  releases and publishes what is left. A killed worker leaves leased rows: the relays find it
  dead in the worker registry within seconds (:mod:`culm.storage.workers`), free its leases and
  publish its tasks; its leases running out is the fallback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from culm import _retry as retry
from culm._printable import engine_logger
from culm._retry import is_lock_victim
from culm.core.loop import Walk
from culm.core.ports import Store
from culm.core.records import EXECUTE, TIMEOUT, TaskRecord, now
from culm.dispatch.liveness import BeatPending
from culm.dispatch.threads import ThreadDispatcher

if TYPE_CHECKING:
    from culm.dispatch.celery import CeleryDispatcher

logger = engine_logger("culm.dispatch.runner")

DB_RETRY_SECONDS = 2.0
# While user-code calls take under SHORT_CALL_SECONDS on average, a process takes on up to
# SHORT_CALL_QUEUE calls per thread; otherwise one per thread (idle workers take the rest).
SHORT_CALL_SECONDS = 0.02
SHORT_CALL_QUEUE = 16

# What a message says of an execute task besides its id: its run, its node, its walk's reads (or None).
TaskHint = tuple[str, str, Walk | None]


def is_interruption(exc: BaseException, store: Store) -> bool:
    """A lost connection, a restarting server, a deadlock: worth trying the same work again.

    The store answers (:meth:`culm.core.ports.Store.is_interruption`): only it knows its driver.
    """
    return store.is_interruption(exc)


class WorkerRunner:
    """The engine loop of one worker process (see the module docstring).

    It composes a :class:`ThreadDispatcher` (the loop: batches, user-code threads, timers) and is
    that loop's :class:`~culm.dispatch.threads.LoopPolicy`: it counts and times the user code on
    hand, and tries a batch the database interrupted again. It decides which follow-ups stay.

    Args:
        publisher: sends the tasks this process does not keep to the broker.
        threads: user-code threads.
        backlog: most tasks on hand (queued, being advanced or in user code) before the process
            stops taking messages.
    """

    def __init__(self, publisher: CeleryDispatcher, threads: int = 8, backlog: int = 64) -> None:
        self.loop = ThreadDispatcher(max(1, threads), sole_runner=False, follow_ups=self.submit, policy=self)
        self.workers = self.loop.workers
        self.publisher = publisher
        self.backlog = max(1, backlog)
        self._draining = False
        self._start_lock = threading.Lock()
        self._call_seconds = 0.0  # moving average of user-code call durations
        self._in_user_code = 0  # calls handed to the pool whose outcome is not back yet (nor let go of)
        self._victims = 0  # deadlock victims in a row (engine thread only)
        self._beat_said = False  # a wedged beat (BeatPending) is logged once until a batch commits
        # The worker process's LeaseHeartbeat.alive: beats before claims when the last beat is
        # stale, and says when this process was taken for dead (None: no registry to beat).
        self.alive: Callable[[], bool] | None = None

    @property
    def engine(self) -> Any:
        return self.loop.engine

    # -- messages in ----------------------------------------------------------------------
    def accept(self, task_id: str, kind: str, timeout: float | None = None, hint: TaskHint | None = None) -> bool:
        """Take the task a message names, once this process has room (waits up to ``timeout``).

        ``hint``: what the message said of an execute task besides its id (its run, its node and
        perhaps its walk's reads): the claim then reads the walk (and the run's tree) with it.
        Returns False when the runner is shutting down or time ran out: the message should go back
        to the broker.
        """
        if kind == TIMEOUT:
            # A node's deadline runs no user code: it needs no room, and it must fire even when
            # every thread here is held by a call that never returns (the very call it cuts off).
            if self._draining or self.loop.stopping:
                return False
            self.loop.submit([TaskRecord(task_id, kind, "", "", "")])
            return True
        if not self._short_calls():
            timeout = 0.0  # room comes back only when a slow call ends: let another worker take it
        deadline = None if timeout is None else time.monotonic() + timeout
        room = self.loop.condition
        with room:
            while not self._has_room():
                if self._draining or self.loop.stopping:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                room.wait(0.05 if left is None else min(0.05, left))
            if self._draining or self.loop.stopping:
                return False
        # The walk reads the row (the hint is only a guess), and its lease makes a duplicate a no-op.
        if hint is None or kind != EXECUTE:
            self.loop.submit([TaskRecord(task_id, kind, "", "", "")])
        else:
            root_id, node_id, walk = hint
            self.loop.submit([TaskRecord(task_id, kind, "", node_id, root_id)], {task_id: walk} if walk else None)
        return True

    def _has_room(self) -> bool:
        return self._room() > 0 and self.loop.on_hand() < self.backlog

    def _room(self) -> int:
        """How many more tasks this process takes on now (caller holds the loop's condition).

        Each task on hand may need a thread: those in user code or waiting for a thread, those
        being advanced and those queued for the engine. Take on one per thread, or several per thread while calls are
        short (then a call waits for a thread only briefly).
        """
        capacity = self.workers * (SHORT_CALL_QUEUE if self._short_calls() else 1)
        return capacity - self._in_user_code - self.loop.queued()

    def _short_calls(self) -> bool:
        return self._call_seconds < SHORT_CALL_SECONDS

    def ensure_started(self, engine: Any) -> None:
        with self._start_lock:
            if self.loop.engine is None:
                self.loop.start(engine)

    # -- follow-up tasks out --------------------------------------------------------------
    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Keep due follow-ups this process consumes while it has idle threads; publish the rest."""
        at = now()
        keep: list[TaskRecord] = []
        send: list[TaskRecord] = []
        with self.loop.condition:
            room = 0 if self._draining or self.loop.engine is None else self._room()
        for task in tasks:
            if task is None:
                continue
            if room > 0 and self.publisher.may_keep(task, at):
                keep.append(task)
                room -= 1
            else:
                send.append(task)
        if keep:
            self.loop.submit(keep)
        if send:
            self.publisher.submit(send)

    def submitting(self) -> AbstractContextManager[None]:
        return self.loop.submitting()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return self.loop.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.loop.close(timeout)

    # -- the loop's policy ----------------------------------------------------------------
    def wrap_call(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """Count the call as on hand and time it (short calls let the process take on more)."""

        def timed() -> Any:
            began = time.monotonic()
            try:
                return call()
            finally:
                # A moving average; a lost update between two threads does not matter.
                self._call_seconds += (time.monotonic() - began - self._call_seconds) * 0.1

        with self.loop.condition:
            self._in_user_code += 1
        return timed

    def call_returned(self) -> None:
        """A call's outcome is back, or a node timeout cut it off and its thread was let go of (a
        hung call holds no room: another thread runs user code in its place)."""
        room = self.loop.condition
        with room:
            self._in_user_code -= 1
            room.notify_all()  # a thread is free: a waiting accept may go on

    def batch_committed(self) -> None:
        self._victims = 0
        self._beat_said = False

    def before_claims(self) -> bool:
        return self.alive() if self.alive is not None else False

    def lost_tasks(self, task_ids: list[str]) -> set[str]:
        engine = self.loop.engine
        with engine.store.reading() as unit:
            leases = {task_id: unit.task_lease(task_id) for task_id in task_ids}
        return {task_id for task_id, lease in leases.items() if lease is None or lease[0] != engine.owner}

    def retry_after(self, batch_size: int, exc: Exception) -> float | None:
        """A database interruption: the same items (with their user code's results) come back
        after a pause. Anything else: the rows stay, and the relay offers them again."""
        engine = self.loop.engine
        if isinstance(exc, BeatPending) and not self.loop.stopping:
            # The beat thread's beat is wedged on the database: claim nothing (it extends no
            # lease meanwhile, so they run out and the other workers take the tasks over) and
            # look again soon; the beat that comes back says whether this process was buried.
            if not self._beat_said:
                self._beat_said = True
                logger.warning("%s: this worker process claims nothing until it does (a batch of %d task(s) "
                               "waits; the leases it holds run out and the other workers take them over)",
                               exc, batch_size)
            return DB_RETRY_SECONDS
        if engine is None or not is_interruption(exc, engine.store) or self.loop.stopping:
            return None
        if is_lock_victim(exc) and self._victims < retry.ATTEMPTS:
            # A deadlock victim: rolled back so that another transaction could go on; try
            # again soon (jittered), not after an outage's pause.
            self._victims += 1
            delay = retry.pause(self._victims)
            logger.info("a batch of %d tasks was a deadlock victim; retrying in %.3fs", batch_size, delay)
            return delay
        self._victims = 0
        logger.warning("database interrupted a batch of %d tasks; retrying in %.0fs", batch_size,
                       DB_RETRY_SECONDS, exc_info=exc)
        return DB_RETRY_SECONDS

    # -- leases and shutdown --------------------------------------------------------------
    def task_ids(self) -> list[str]:
        """The tasks on hand (the heartbeat extends the leases this process holds among them)."""
        return self.loop.task_ids()

    def drain(self, timeout: float) -> None:
        """Stop keeping and taking work, let what is on hand reach its next commit (up to
        ``timeout``), stop, then release and publish whatever is still on hand."""
        with self.loop.condition:
            self._draining = True
            self.loop.condition.notify_all()
        if self.loop.engine is None:
            return
        self.wait_idle(timeout)
        self.close(timeout=1.0)
        left = self.task_ids()
        if not left:
            return
        engine = self.loop.engine
        try:
            with engine.store.transaction() as unit:
                rows = [t for t in (unit.get_task(i) for i in left) if t is not None]
                unit.release_leases([t.id for t in rows])
        except Exception:  # noqa: BLE001 - their leases then run out and the relay takes them
            logger.warning("could not release %d task(s) at shutdown", len(left), exc_info=True)
            return
        logger.info("shutting down with %d task(s) on hand: released and published", len(rows))
        self.publisher.submit(rows)
