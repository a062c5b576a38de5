"""ThreadDispatcher: in-process worker threads and durable timers for the embedded runtime.

Tasks are rows in the database; this dispatcher only decides *when* a thread runs them. Due tasks
go to a queue, future ones (poll intervals) to a timer heap, and a sweeper re-reads the task table
now and then, so tasks written by other processes, or left behind by a crash, are picked up too.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from culm.core.records import TaskRecord, now

logger = logging.getLogger("culm.dispatch")

_STOP = object()


class ThreadDispatcher:
    """Runs tasks on ``workers`` threads of this process."""

    def __init__(self, workers: int = 8, sweep_interval: float = 1.0) -> None:
        self.workers = workers
        self.sweep_interval = sweep_interval
        self.engine: Any = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._timers: list[tuple[float, int, TaskRecord]] = []
        self._seq = 0
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, engine: Any) -> None:
        """Bind to ``engine``, recover leftover tasks and start the threads."""
        self.engine = engine
        with engine.store.transaction() as unit:
            unit.release_leases()  # we are the only runner of this database: old leases are void
        for i in range(self.workers):
            self._spawn(self._work, f"culm-worker-{i}")
        self._spawn(self._clock, "culm-timer")
        self.sweep()

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, let running tasks end (up to ``timeout``), stop the threads."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        for _ in range(self.workers):
            self._queue.put(_STOP)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # -- submission -----------------------------------------------------------------------
    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Queue committed tasks: due ones now, future ones on the timer heap."""
        if self.engine is None or self._stopping.is_set():
            return
        at = now()
        with self._wake:
            for t in tasks:
                if t is None or t.id in self._known:
                    continue
                self._known.add(t.id)
                if t.due <= at:
                    self._queue.put(t)
                else:
                    self._seq += 1
                    heapq.heappush(self._timers, (t.due, self._seq, t))
                    self._wake.notify()

    def sweep(self) -> int:
        """Pick up due tasks this process does not know about yet; returns how many."""
        try:
            with self.engine.store.reading() as unit:
                pending = unit.pending_tasks(now(), 1000, horizon=self.sweep_interval)
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next tick
            logger.exception("sweeping the task table failed")
            return 0
        fresh = [t for t in pending if t.id not in self._known]
        self.submit(fresh)
        return len(fresh)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no task is queued, timed or running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._known or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    # -- threads --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is _STOP:
                return
            with self._idle:
                self._busy += 1
            try:
                self.engine.run_task(task)
            except Exception:  # noqa: BLE001 - the row stays; the sweeper retries it later
                logger.exception("task %s (%s of node %s) failed", task.id, task.kind, task.node_id)
                self._retry_later(task)
            finally:
                with self._wake:
                    self._known.discard(task.id)
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _retry_later(self, task: TaskRecord) -> None:
        try:
            with self.engine.store.transaction() as unit:
                unit.release_leases([task.id])
        except Exception:  # noqa: BLE001
            logger.exception("could not release task %s", task.id)

    def _clock(self) -> None:
        next_sweep = time.monotonic() + self.sweep_interval
        while not self._stopping.is_set():
            due: list[TaskRecord] = []
            with self._wake:
                at = now()
                while self._timers and self._timers[0][0] <= at:
                    due.append(heapq.heappop(self._timers)[2])
                wait = self._timers[0][0] - at if self._timers else self.sweep_interval
                wait = max(0.0, min(wait, next_sweep - time.monotonic()))
                if not due:
                    self._wake.wait(wait)
            for t in due:
                self._queue.put(t)
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + self.sweep_interval
