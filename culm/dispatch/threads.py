"""ThreadDispatcher: the embedded runtime's in-process workers and durable timers.

Tasks are rows in the database; this dispatcher only decides *when* they run. One engine thread
takes every task that is ready and hands them, as a batch, to the engine loop's step
(:func:`culm.core.loop.commit_batch`: ONE transaction, one commit — group commit). The user code
those steps hand out (component ``execute``/``schedule``, end-event code) runs on a pool of
``workers`` threads, and each outcome goes back to the engine thread for the next batch.

At most ``workers`` calls are *in flight* at once: started, and their result not committed yet. A
call is handed to the pool only when one in flight has been committed, so after a kill -9 at most
``workers`` calls run again (those running and those whose results waited for the next commit),
however many nodes are ready to run and however far the engine thread lags behind. The calls
waiting for a slot have not started: their nodes are RUNNING and their task rows replay them.
Future tasks (poll intervals) wait on a timer heap, and a sweeper re-reads the task table now and
then, so tasks written by other processes, or left behind by a crash, are picked up too.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from culm._printable import engine_logger
from culm.core.loop import Item, UserCall, Walk, abandoned_threads, commit_batch, moved_on
from culm.core.ports import RowCopies
from culm.core.records import TIMEOUT, TaskRecord, now, worker_dead_after
from culm.dispatch.liveness import EmbeddedPresence

logger = engine_logger("culm.dispatch")

MAX_BATCH = 256
# While threads are inside run_pipeline, the engine holds a ready batch back (up to HOLD_MAX
# seconds after its first task became ready) so that it takes their runs' first tasks along and
# does not trade the write lock with them task by task; QUIET bridges the gap between one call
# and the next of a submitting loop. A pipeline started alone waits QUIET once.
HOLD_MAX = 0.020
# Every user-code thread held by a call running longer than this (seconds) is logged as a warning.
BUSY_AFTER = 60.0
# A call running longer than this (seconds) has its run looked up at every sweep interval: one
# that another process cut off (its node timed out there, an operator force-failed it) lets its
# thread go, as a cut-off this process committed does.
STALE_AFTER = 1.0
QUIET = 0.0005
# Threads let go of (a node timeout cut their call off) that may still run at once: Python cannot
# stop them, so a component that never returns would leave one thread behind per timeout, for
# ever. Past this many, a cut-off call keeps its thread and slot until one of them returns (the
# log says so); $CULM_MAX_ABANDONED_THREADS sets it.
MAX_ABANDONED = 64


# The garbage collector's first threshold while an engine thread runs in this process (see
# _Collector); $CULM_GC_THRESHOLD sets it, "off" leaves the interpreter's collector as it is.
GC_THRESHOLD = 5000
PYTHON_GC_DEFAULTS = (700, 10, 10)


class _Collector:
    """The interpreter's collector thresholds while engine threads run in this process.

    An engine step allocates thousands of short-lived containers (records, row tuples, rendered
    inputs). With Python's first threshold of 700, a young collection runs every few hundred of
    them, and whatever is alive at every tenth (a batch half done, a poll's copies) moves to the
    oldest generation, whose growth sets off full collections of the whole heap (every module,
    the kept graphs and rows: 30-70 ms each in a warm runtime). At 5,000 the short-lived objects
    are gone before most young collections, far fewer reach the old generation, and full
    collections become rare (docs/performance.md, "The collector's first threshold").

    Process-wide, so applied only where the host left Python's defaults (700, 10, 10) as they were,
    and put back when the last engine thread of the process stops, if nobody changed them since.
    $CULM_GC_THRESHOLD: a whole number sets the first threshold (whatever the host set), ``off``
    leaves the collector alone.
    """

    _lock = threading.Lock()
    _users = 0
    _restore: tuple[int, ...] | None = None  # what to put back, when this set the thresholds
    _set: tuple[int, ...] | None = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users > 1:
                return
            wanted = _gc_threshold()
            current = gc.get_threshold()
            if wanted is None or (wanted[1] and current != PYTHON_GC_DEFAULTS):
                return
            cls._restore, cls._set = current, (wanted[0], *current[1:])
            gc.set_threshold(*cls._set)

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users = max(0, cls._users - 1)
            if cls._users or cls._restore is None:
                return
            if gc.get_threshold() == cls._set:  # nobody changed them since
                gc.set_threshold(*cls._restore)
            cls._restore = cls._set = None


def _gc_threshold() -> tuple[int, bool] | None:
    """(first threshold, only over Python's defaults) from $CULM_GC_THRESHOLD; None: leave it."""
    text = os.environ.get("CULM_GC_THRESHOLD", "").strip()
    if not text:
        return GC_THRESHOLD, True
    if text.lower() == "off":
        return None
    if not text.isdigit() or int(text) < 1:
        logger.warning("$CULM_GC_THRESHOLD must be a whole number >= 1 or 'off', got %r: using %d",
                       text, GC_THRESHOLD)
        return GC_THRESHOLD, True
    return int(text), False


def _relay_grace() -> float:
    """``CULM_RELAY_GRACE`` (15 s): how long a task stays due, unclaimed, before a runner other
    than the one that committed it takes it (a worker's relay, a shared embedded runner's sweep)."""
    try:
        return max(0.0, float(os.environ.get("CULM_RELAY_GRACE") or 15.0))
    except ValueError:
        return 15.0


def _max_abandoned() -> int:
    text = os.environ.get("CULM_MAX_ABANDONED_THREADS", "").strip()
    if not text:
        return MAX_ABANDONED
    if not text.isdigit():
        logger.warning("$CULM_MAX_ABANDONED_THREADS must be a whole number >= 0, got %r: using %d",
                       text, MAX_ABANDONED)
        return MAX_ABANDONED
    return int(text)


class _UserCodePool:
    """Threads that run user code and hand each outcome to ``done(call, outcome, let_go)``
    (``let_go``: the call's thread was let go of while it ran, see :meth:`let_go`).

    Leaner than a ThreadPoolExecutor (no futures, no callbacks): one queue in, one call out. An
    exception the call raises is its outcome (the handlers turn it into a failed node).
    """

    def __init__(self, size: int, done: Callable[[UserCall, object, bool], None]) -> None:
        self._jobs: queue.SimpleQueue[tuple[UserCall, Callable[[], object]] | None] = queue.SimpleQueue()
        self._done = done
        self._closed = False
        self.size = size
        # What each thread runs now, and since when (monotonic): read by long_calls().
        self.running: dict[str, tuple[UserCall, float]] = {}
        # Threads let go of (retire): each ends once its call returns; another took its place.
        self._retiring: set[str] = set()
        self._retire_lock = threading.Lock()  # a call ends, or its thread is let go of: one of the two first
        self._spawned = 0
        self._threads = [threading.Thread(target=self._work, name=f"culm-user_{i}", daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, call: UserCall, run: Callable[[], object]) -> None:
        """Run ``run`` (``call.run``, or the policy's wrapper of it) on a pool thread."""
        if self._closed:
            raise RuntimeError("the user-code pool is shut down")
        self._jobs.put((call, run))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, run = job
            me = threading.current_thread().name
            self.running[me] = (call, time.monotonic())
            try:
                outcome = run()
            except BaseException as exc:  # noqa: BLE001 - the outcome of the call
                outcome = exc
            finally:
                with self._retire_lock:
                    del self.running[me]
                    retiring = me in self._retiring
                    self._retiring.discard(me)
            self._done(call, outcome, retiring)
            if retiring:
                return

    def long_calls(self, longer_than: float) -> list[tuple[UserCall, float]]:
        """The calls running for over ``longer_than`` seconds, with how long each has run (calls
        whose thread was let go of do not count: another thread took its place)."""
        at = time.monotonic()
        return [(call, at - since) for name, (call, since) in list(self.running.items())
                if at - since > longer_than and name not in self._retiring]

    def busy_calls(self) -> list[UserCall]:
        """The calls running now."""
        return [call for call, _ in list(self.running.values())]

    def abandoned(self) -> list[tuple[UserCall, float]]:
        """The calls whose thread was let go of and that still run, with how long each has run."""
        at = time.monotonic()
        with self._retire_lock:  # list(): a thread starting a call adds to ``running`` without the lock
            return [(call, at - since) for name, (call, since) in list(self.running.items()) if name in self._retiring]

    def let_go(self, call: UserCall) -> bool:
        """Start a new thread in place of the one running ``call`` (a call that may never return,
        whose result is stale anyway); that one ends once ``call`` returns. False when ``call``
        is not running (any more)."""
        with self._retire_lock:
            name = next((n for n, (c, _) in list(self.running.items()) if c is call), None)
            if name is None or name in self._retiring or self._closed:
                return False
            self._retiring.add(name)
        self._spawned += 1
        thread = threading.Thread(target=self._work, name=f"culm-user_{self.size + self._spawned - 1}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return True

    def shutdown(self) -> None:
        """Drop calls not started yet (their task rows stay for the next runner); stop the threads
        once their current call ends."""
        self._closed = True
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        for _ in self._threads:
            self._jobs.put(None)


@dataclass(slots=True, eq=False)
class _LetGo:
    """Queued for the engine thread: let go of the calls of these runs ((node id, version))."""

    runs: set[tuple[str, str]]

    def holds(self, call: UserCall) -> bool:
        return _run_of(call) in self.runs


class LoopPolicy(Protocol):
    """What the owner of a :class:`ThreadDispatcher` decides about its engine loop.

    The embedded runtime passes none (no hooks). A ``culm worker`` process shares its database and
    its room with other workers and passes its runner (:class:`culm.dispatch.runner.WorkerRunner`):
    it counts and times the user code on hand, and tries a batch the database interrupted again.
    """

    def wrap_call(self, call: Callable[[], Any]) -> Callable[[], Any]:
        """Engine thread: ``call`` (user code) is about to go to a pool thread; returns what runs there."""
        ...

    def call_returned(self) -> None:
        """A call no longer holds its room: on a pool thread, its outcome is back (before the
        engine thread hears of it); on the engine thread, a node timeout cut it off and its
        thread was let go of (its outcome, when it comes, calls nothing more). Once per call."""
        ...

    def batch_committed(self) -> None:
        """Engine thread: a batch committed."""
        ...

    def before_claims(self) -> bool:
        """Engine thread: a batch is about to claim tasks, or the calls a batch handed out are
        about to start. True when this process was taken for dead (and its leases freed) since
        the last time it was asked: the calls not started yet are then checked (``lost_tasks``)."""
        ...

    def lost_tasks(self, task_ids: list[str]) -> set[str]:
        """Engine thread: of ``task_ids``, the tasks this process no longer holds (the lease
        freed or another's, the row gone)."""
        ...

    def retry_after(self, batch_size: int, exc: Exception) -> float | None:
        """Engine thread: a batch could not commit, even task by task. Seconds after which the
        same items (results of user code included) are tried again, or None: they are dropped and
        their rows stay for whoever sweeps or relays the task table."""
        ...


def _run_of(call: UserCall) -> tuple[str, str]:
    """(node id, version) of the run a call belongs to (an execute's; a schedule call: no version)."""
    invoke = call.item.invoke
    return (invoke.node_id, invoke.version or "") if invoke is not None else (call.task.node_id, "")


class ThreadDispatcher:
    """Runs the engine on one thread of this process and user code on ``workers`` threads."""

    def __init__(
        self,
        workers: int = 8,
        sweep_interval: float = 1.0,
        *,
        cache: RowCopies | None = None,
        sole_runner: bool = True,
        beside_others: bool = False,
        follow_ups: Callable[[Sequence[TaskRecord]], None] | None = None,
        policy: LoopPolicy | None = None,
    ) -> None:
        """``cache``: the store's write-through copies of engine rows, handed to every batch's
        transaction (only for the sole runner of a database; :mod:`culm.runtime` makes them).

        ``sole_runner``: this runner finds its own work: the task table is swept for it now and
        then, and (unless ``beside_others``) at start every lease is void, this being the only
        runner of its database. A ``culm worker`` shares its database with other workers and is
        handed its work instead (:mod:`culm.dispatch.runner`).

        ``beside_others``: other runners may share the database (an embedded runtime on a server
        database: another ``culm run``, a ``culm worker`` started later), so no lease is voided at
        start, the leases of the tasks on hand are extended every third of a lease, as a worker's
        heartbeat does (a call that runs longer than a lease is never taken over by the others),
        and the sweep takes only tasks left over for ``CULM_RELAY_GRACE`` (15 s) as a worker's
        relay does: a task another runner has just committed is that runner's to claim. This
        runner registers in the worker registry: while no other live runner is registered, and
        once one was found gone, due tasks are nobody else's and it takes them at once
        (:class:`~culm.dispatch.liveness.EmbeddedPresence`).

        ``follow_ups``: where the tasks a batch commits go; by default back into this dispatcher
        (:meth:`submit`). A worker's runner keeps some and publishes the rest; ``bench.statements``
        keeps them itself to run one task at a time.

        ``policy``: the owner's hooks into the engine loop (:class:`LoopPolicy`); None: no hooks.
        """
        self.workers = workers
        self._follow_ups = follow_ups or self.submit
        self._policy = policy
        self.sole_runner = sole_runner
        self.beside_others = beside_others
        self.sweep_grace = _relay_grace() if beside_others else 0.0
        self._presence: EmbeddedPresence | None = None  # beside others: this runner in the registry
        self.cache = cache
        self.sweep_interval = sweep_interval
        self.engine: Any = None
        self._ready: queue.SimpleQueue[Item | _LetGo | None] = queue.SimpleQueue()
        self._timers: list[tuple[float, int, TaskRecord]] = []
        self._seq = 0
        self._known: set[str] = set()
        self._deadlines: set[str] = set()  # node deadlines on the timer heap, not due yet
        # Other tasks on the timer heap: id -> (seq, due) of the entry that counts. A task handed
        # in again with an earlier due (a multiple callback woken when the one before it is
        # applied) gets a new entry; the old one is skipped when it comes up.
        self._timed: dict[str, tuple[int, float]] = {}
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._pool: _UserCodePool | None = None
        self._stopping = threading.Event()
        self._in_batch = 0  # items the engine thread is advancing now
        self._batch_began: float | None = None  # monotonic start of the batch's transaction (engine thread)
        self._engine_thread: threading.Thread | None = None
        self._submits = threading.Condition()
        self._submitting = 0  # threads inside run_pipeline
        self._submitted_at = 0.0  # when the last of them left it
        # Engine thread only: user code waiting for a slot, and calls started whose result is not
        # committed yet (at most ``workers``: what a kill -9 makes run again).
        self._calls: collections.deque[UserCall] = collections.deque()
        self._in_flight = 0
        self.busy_after = BUSY_AFTER
        self._busy_said = False  # the warning of _watch_long_calls was logged for this spell
        # Engine thread only: items whose call a node timeout cut off and whose slot was freed
        # then (see _let_go); their result, when it comes, frees nothing more.
        self._let_go_items: set[Item] = set()
        self.max_abandoned = _max_abandoned()  # threads let go of that may run at once
        self._cap_said = False  # the warning of _keep_at_cap was logged for this spell
        self._report_lock = threading.Lock()
        self._collector = False  # this dispatcher holds the collector's thresholds (see _Collector)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, engine: Any) -> None:
        """Bind to ``engine``, recover leftover tasks and start the threads."""
        self.engine = engine
        if self.cache is not None:
            engine.copies = self.cache  # run_pipeline writes a new run's rows into them too
        if self.sole_runner and not self.beside_others:
            with engine.store.transaction() as unit:
                unit.release_leases()  # we are the only runner of this database: old leases are void
        if self.beside_others:
            self._presence = EmbeddedPresence(engine.store, engine.store.worker_registry(), engine.owner,
                                              self.workers, self.sweep_grace, worker_dead_after())
            self._presence.start()  # before this runner claims or records anything
        self._pool = _UserCodePool(max(1, self.workers), self._requeue)
        _Collector.acquire()
        self._collector = True
        self._spawn(self._engine_loop, "culm-engine")
        self._engine_thread = self._threads[-1]
        self._spawn(self._clock, "culm-timer")
        if self.sole_runner:
            self.sweep()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking work, let running user code end (up to ``timeout``), stop the threads."""
        self._stopping.set()
        if self.engine is not None and self.cache is not None and self.engine.copies is self.cache:
            self.engine.copies = None
        with self._lock:
            self._lock.notify_all()
        self._ready.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown()
        if self.beside_others and self.engine is not None:
            # What is still on hand and not running is the other runners' to take, CULM_RELAY_GRACE
            # from now, not once a lease of this closed runner ran out (a `culm run --attach` after
            # Ctrl-C). A call still running (close() does not wait for user code) keeps its lease
            # until it runs out: ended now, another runtime would run the same step beside it (review22b F1).
            running = {call.task.id for call in self._pool.busy_calls()} if self._pool is not None else set()
            self._extend_leases(until=now(), skip=running)
        if self._presence is not None:
            self._presence.stop()
        if self._collector:
            self._collector = False
            _Collector.release()

    # -- submission -----------------------------------------------------------------------
    def submit(self, tasks: Sequence[TaskRecord], walks: Mapping[str, Walk] | None = None) -> None:
        """Queue committed tasks: due ones now, future ones on the timer heap. ``walks``: by task
        id, the walk reads a task's message named (see ``culm.core.loop.Item.walk``)."""
        if self.engine is None or self._stopping.is_set():
            return
        at = now()
        with self._lock:
            for t in tasks:
                if t is None or t.id in self._deadlines:
                    continue
                if t.id in self._known:
                    timed = self._timed.get(t.id)
                    if timed is None or t.due >= timed[1]:
                        continue  # queued, under way, or timed no later: handed out once
                    del self._timed[t.id]  # brought forward: its old heap entry no longer counts
                if t.due <= at:
                    self._known.add(t.id)
                    self._ready.put(Item(t, walk=walks.get(t.id)) if walks else Item(t))
                else:
                    # A node's deadline is not work on hand until it falls due (wait_idle does
                    # not wait for it, and the node usually ends first and drops its row).
                    self._seq += 1
                    if t.kind == TIMEOUT:
                        self._deadlines.add(t.id)
                    else:
                        self._known.add(t.id)
                        self._timed[t.id] = (self._seq, t.due)
                    heapq.heappush(self._timers, (t.due, self._seq, t))
                    self._lock.notify_all()

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Wraps a run_pipeline call (validation included): the engine waits for it (see HOLD_MAX)."""
        with self._submits:
            self._submitting += 1
        try:
            yield
        finally:
            with self._submits:
                self._submitting -= 1
                self._submitted_at = time.monotonic()
                self._submits.notify_all()

    def _hold(self) -> None:
        """Engine thread: wait until no run_pipeline is under way (and QUIET passed), at most
        HOLD_MAX from now."""
        deadline = time.monotonic() + HOLD_MAX
        with self._submits:
            while True:
                at = time.monotonic()
                if at >= deadline:
                    return
                if self._submitting:
                    self._submits.wait(deadline - at)
                    continue
                quiet_left = self._submitted_at + QUIET - at
                if quiet_left <= 0:
                    return
                self._submits.wait(min(quiet_left, deadline - at))

    def sweep(self) -> int:
        """Pick up due tasks this process does not know about yet; returns how many."""
        try:
            pending = self._pending() if self._presence is not None else self._read_pending(0.0, self.sweep_interval)
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next tick
            logger.exception("sweeping the task table failed")
            return 0
        with self._lock:
            fresh = [t for t in pending if t.id not in self._known and t.id not in self._deadlines]
        self.submit(fresh)
        return len(fresh)

    def _read_pending(self, grace: float, horizon: float = 0.0) -> list[TaskRecord]:
        with self.engine.store.reading() as unit:
            return unit.pending_tasks(now() - grace, 1000, horizon=horizon)

    def _pending(self) -> list[TaskRecord]:
        """Beside other runners: the due tasks no live runner is about to claim (see
        :class:`~culm.dispatch.liveness.EmbeddedPresence`). Read before the look at the registry:
        a runner registers before it records anything, so one that recorded a task read here is
        seen there."""
        assert self._presence is not None
        pending = self._read_pending(0.0)
        grace, buried = self._presence.look()
        if buried:
            return self._read_pending(0.0)  # the dead runners' tasks, freed by the look
        return self._read_pending(grace) if grace else pending

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no task is queued, timed or running (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            # A batch forgets the tasks it finished before it queues the ones it made: while it
            # is under way, nothing known does not mean idle.
            while self._known or self._in_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    # -- what an owner reads (a worker's runner decides its room from these) ---------------
    @property
    def condition(self) -> threading.Condition:
        """Notified, for an owner with a policy, whenever tasks leave this dispatcher or a batch
        ends (see :meth:`_notify`); hold it to read :meth:`queued` and :meth:`on_hand` together."""
        return self._lock

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def queued(self) -> int:
        """Tasks queued for the engine thread, being advanced, or waiting for a user-code thread."""
        return len(self._calls) + self._in_batch + self._ready.qsize()

    def on_hand(self) -> int:
        """Tasks this dispatcher knows and has not finished (queued, timed, advanced, in user code)."""
        return len(self._known)

    def task_ids(self) -> list[str]:
        """The tasks on hand."""
        with self._lock:
            return list(self._known)

    # -- the engine thread ----------------------------------------------------------------
    def _engine_loop(self) -> None:
        while not self._stopping.is_set():
            first = self._ready.get()
            if first is None:
                return
            if isinstance(first, _LetGo):
                self._let_go(first.holds)
                continue
            batch = [first]
            self._take_ready(batch)
            # Counted as under way while it fills (queued(): a worker's room for new tasks).
            self._in_batch = len(batch)
            if len(batch) < MAX_BATCH:
                self._fill(batch)
            self._in_batch = len(batch)
            try:
                self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - nothing of it was committed
                self._batch_failed(batch, exc)
            with self._lock:
                self._in_batch = 0
                self._notify()

    def _fill(self, batch: list[Item]) -> None:
        """Engine thread: let ``batch`` grow before it commits, when committing it now would only
        trade the write lock for nothing.

        Calls waiting for a slot go first: a batch that applies results of user code commits at
        once, since committing it is what frees their slots. A batch without results frees none:
        while every slot is taken, it waits (at most HOLD_MAX) for the next result to take along,
        and while threads are inside run_pipeline, it waits for them (see :meth:`_hold`).
        """
        saturated = bool(self._calls) and self._in_flight > 0  # read without the lock: engine thread only
        frees_slots = any(item.waiting for item in batch)
        if saturated and not frees_slots:
            frees_slots = self._await_result(batch)
        # Read without the lock: a quick "nothing under way" needs no lock per batch.
        submitting = self._submitting or time.monotonic() - self._submitted_at < QUIET
        if submitting and len(batch) < MAX_BATCH and not (saturated and frees_slots):
            self._hold()
            self._take_ready(batch)

    def _await_result(self, batch: list[Item]) -> bool:
        """Engine thread: move ready items into ``batch`` until one holds a result of user code
        (then whatever else is ready), waiting at most HOLD_MAX; True once one does."""
        deadline = time.monotonic() + HOLD_MAX
        while len(batch) < MAX_BATCH:
            left = deadline - time.monotonic()
            try:
                item = self._ready.get(timeout=left) if left > 0 else self._ready.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                self._stopping.set()
                return False
            if isinstance(item, _LetGo):
                self._let_go(item.holds)
                continue
            batch.append(item)
            self._in_batch = len(batch)
            if item.waiting:
                self._take_ready(batch)
                return True
        return False

    def batch_age(self) -> tuple[float, threading.Thread | None]:
        """How long the engine thread has been in the transaction of the batch under way (0.0:
        none), and the thread.

        Timed: :func:`commit_batch` only, the transaction's reads and writes and the engine's steps
        between them; not what follows the commit (signal receivers and after-commit hooks, which
        are user code, and the broker publishes). Read without a lock, from another thread
        (culm.dispatch.liveness.EngineWatchdog)."""
        began = self._batch_began
        return (0.0 if began is None else time.monotonic() - began), self._engine_thread

    def _batch_failed(self, batch: list[Item], exc: Exception) -> None:
        """A batch could not commit, even task by task: tried again if the policy says so, else
        its rows stay; the sweeper (or a worker's relay) brings them back."""
        delay = self._policy.retry_after(len(batch), exc) if self._policy is not None else None
        if delay is not None:
            timer = threading.Timer(delay, self._put_back, args=(batch,))
            timer.daemon = True
            timer.start()
            return
        logger.error("a batch of %d tasks failed", len(batch), exc_info=exc)
        self._forget([i.task.id for i in batch])
        self._release(self._slots_of([i for i in batch if i.waiting]))  # their results are dropped

    def _take_ready(self, batch: list[Item]) -> None:
        """Move ready items into ``batch`` (up to MAX_BATCH) without waiting."""
        while len(batch) < MAX_BATCH:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopping.set()
                return
            if isinstance(item, _LetGo):
                self._let_go(item.holds)
                continue
            batch.append(item)

    def _run_batch(self, batch: list[Item]) -> None:
        """Advance ``batch`` in one transaction (:func:`culm.core.loop.commit_batch`), then start
        the user code it handed out.

        User code starts only after the commit: a node's RUNNING state (and the task's record of
        it) is durable before anything with side effects runs, so after a crash only a node that
        was inside its user code runs again.
        """
        if self._policy is not None and self._policy.before_claims():
            self._drop_lost_calls()
        self._batch_began = time.monotonic()  # the watchdog times the transaction only (batch_age)
        try:
            committed = commit_batch(self.engine, batch, cache=self.cache, joining=self._join)
        finally:
            self._batch_began = None
        # Committed: only now may anything outside the database happen.
        self._forget(committed.done)
        self._follow_ups(committed.tasks)
        committed.fire()
        self._calls.extend(committed.calls)
        self._check_buried()  # this process may have been buried while the batch ran (frozen in it)
        self._release(self._slots_of(committed.applied))  # their results are durable now
        if committed.cut_off:
            self._let_go(committed.is_cut_off)
        if self._policy is not None:
            self._policy.batch_committed()

    def _join(self, batch: list[Item]) -> None:
        """The batch's transaction is open: whatever became ready while this thread waited for
        the write lock (results of user code, another thread's submissions) joins it."""
        self._take_ready(batch)
        self._in_batch = len(batch)

    def _check_buried(self) -> None:
        """After a commit: never raises (the batch is committed; failing it would run it again).
        A beat that fails here is the beat thread's to retry, before the row looks dead."""
        if self._policy is None:
            return
        try:
            if self._policy.before_claims():
                self._drop_lost_calls()
        except Exception:  # noqa: BLE001 - see above
            logger.warning("beating the worker registry before starting calls failed", exc_info=True)

    def _drop_lost_calls(self) -> None:
        """This process was taken for dead: the relay that buried it freed its leases, and
        another worker may run the calls it had handed out and not started. Drop those whose
        task it no longer holds (their rows stay for that worker, or for the relay's message);
        the rest keep their lease: this process has registered again, and beats."""
        if not self._calls:
            return
        lost = self._policy.lost_tasks([c.task.id for c in self._calls]) if self._policy is not None else set()
        if not lost:
            return
        kept = [c for c in self._calls if c.task.id not in lost]
        logger.warning("this worker was taken for dead: %d call(s) it had not started yet were taken over "
                       "or freed, and are left to the other workers", len(self._calls) - len(kept))
        self._calls.clear()
        self._calls.extend(kept)
        self._forget(sorted(lost))

    def _slots_of(self, items: list[Item]) -> int:
        """How many in-flight slots the calls of ``items`` (now over) still held."""
        if not self._let_go_items:
            return len(items)
        held = sum(1 for i in items if i not in self._let_go_items)
        self._let_go_items.difference_update(items)
        return held

    def _let_go(self, is_cut_off: Callable[[UserCall], bool]) -> None:
        """A node timeout cut off runs whose user code may still be running (a call that never
        returns). Its result is stale, and it ran once: a crash does not run it again (its node
        moved on). So its slot is freed and a new thread takes its place, and the pool keeps
        ``workers`` threads for live work (the old one ends when the call returns); a worker's
        runner counts the call's room free too (:meth:`LoopPolicy.call_returned`)."""
        assert self._pool is not None
        abandoned = len(self._pool.abandoned())
        self._cap_said = self._cap_said and abandoned >= self.max_abandoned
        for call in self._pool.busy_calls():
            if call.item in self._let_go_items or not is_cut_off(call):
                continue
            if abandoned >= self.max_abandoned:
                self._keep_at_cap(call)
                continue
            if self._pool.let_go(call):
                abandoned += 1
                self._let_go_items.add(call.item)
                self._in_flight -= 1
                if self._policy is not None:
                    self._policy.call_returned()
                logger.warning("node %s timed out while its user code ran; that call's thread is let go of "
                               "and another runs user code in its place", call.node_id)
                self._report_abandoned()
        self._release(0)

    def _report_abandoned(self) -> None:
        """Tell a metrics exporter how many threads let go of still run (see culm.core.observe)."""
        # Counted and told under one lock: of a pool thread's report (its call returned) and the
        # engine thread's (it let go of one), the one counted last is the one told last.
        with self._report_lock:
            if self._pool is not None:
                abandoned_threads(len(self._pool.abandoned()))

    def _keep_at_cap(self, call: UserCall) -> None:
        """A cut-off call keeps its thread: ``max_abandoned`` threads already run calls cut off.
        Its slot is freed when it returns, or once one of those returns (the timer thread finds
        its run moved on: :meth:`_find_stale_calls`)."""
        if self._cap_said:
            return
        self._cap_said = True
        held = ", ".join(f"node {c.node_id} of pipeline {c.task.root_id} ({took:.0f} s)"
                         for c, took in sorted(self._pool.abandoned(), key=lambda x: -x[1])[:10]) if self._pool else ""
        logger.warning("node %s timed out while its user code ran, but %d threads already run calls cut off "
                       "that have not returned (%s%s): this call keeps its user-code thread, and other pipelines' "
                       "components have one fewer, until one of those returns (make them return; "
                       "$CULM_MAX_ABANDONED_THREADS sets the bound)", call.node_id, self.max_abandoned, held,
                       ", ..." if self.max_abandoned > 10 else "")

    def abandoned_calls(self) -> list[tuple[str, str, float]]:
        """(node id, pipeline id, seconds running) of each call a node timeout (or an operator's
        forced fail) cut off whose thread still runs it: at most ``max_abandoned``."""
        pool = self._pool
        return [(c.node_id, c.task.root_id, took) for c, took in pool.abandoned()] if pool is not None else []

    def _release(self, committed: int) -> None:
        """Engine thread: ``committed`` calls in flight are over; start waiting calls in their slots."""
        self._in_flight -= committed
        while self._calls and self._in_flight < max(1, self.workers):
            self._in_flight += 1
            self._start_user_code(self._calls.popleft())

    def _start_user_code(self, call: UserCall) -> None:
        assert self._pool is not None
        run = call.run if self._policy is None else self._policy.wrap_call(call.run)
        try:
            self._pool.submit(call, run)
        except RuntimeError:  # the pool is shutting down: the row stays for the next runner
            self._in_flight -= 1
            self._forget([call.task.id])

    def _requeue(self, call: UserCall, outcome: object, let_go: bool) -> None:
        if self._policy is not None and not let_go:  # else its room was freed when it was let go of
            self._policy.call_returned()
        if let_go:  # one thread let go of fewer
            self._report_abandoned()
        self._ready.put(call.returned(outcome))

    def _put_back(self, batch: list[Item]) -> None:
        for item in batch:
            self._ready.put(item)

    def _forget(self, task_ids: list[str]) -> None:
        if not task_ids:
            return
        with self._lock:
            self._known.difference_update(task_ids)
            self._notify()

    def _notify(self) -> None:
        """Tasks left or a batch ended (the caller holds the lock): wake whoever it may concern.

        That is :meth:`wait_idle` once nothing is on hand, and an owner with a policy (a worker's
        runner, whose room counts the tasks on hand) every time. Not the waiters at every batch
        of an embedded runtime: each woken thread (the one in wait_idle, the timer thread) takes
        the GIL from the engine thread just to wait again, which costs one pipeline's run a few
        per cent of its latency.
        """
        if self._policy is not None or not (self._known or self._in_batch):
            self._lock.notify_all()

    # -- timers and sweeping --------------------------------------------------------------
    def _clock(self) -> None:
        next_sweep = time.monotonic() + self.sweep_interval
        next_extend = time.monotonic()
        while not self._stopping.is_set():
            due: list[TaskRecord] = []
            with self._lock:
                at = now()
                while self._timers and self._timers[0][0] <= at:
                    _, seq, task = heapq.heappop(self._timers)
                    if task.id in self._deadlines:
                        self._deadlines.discard(task.id)
                        self._known.add(task.id)
                    elif self._timed.get(task.id, (None,))[0] == seq:
                        del self._timed[task.id]
                    else:
                        continue  # brought forward since (see submit): that entry counts
                    due.append(task)
                if not due:
                    wait = self._timers[0][0] - at if self._timers else self.sweep_interval
                    self._lock.wait(max(0.0, min(wait, next_sweep - time.monotonic())))
            for t in due:
                self._ready.put(Item(t))
            if time.monotonic() >= next_sweep:
                self._watch_long_calls()
                self._find_stale_calls()
                if self.sole_runner:
                    self.sweep()
                    self._checkpoint()
                if self.beside_others and time.monotonic() >= next_extend:
                    # a failed extension is tried again at the next sweep, not a third of a lease later
                    extended = self._extend_leases()
                    next_extend = time.monotonic() + (self.engine.settings.lease_seconds / 3 if extended else 0.0)
                self._keep_statistics()
                next_sweep = time.monotonic() + self.sweep_interval

    def _extend_leases(self, until: float | None = None, skip: set[str] | frozenset[str] = frozenset()) -> bool:
        """Extend the leases of the tasks on hand (``beside_others``; but those in ``skip``) for a
        lease, or to ``until``: another runner of the database takes a task only once its lease ran
        out. False when the write failed."""
        ids = [task_id for task_id in self.task_ids() if task_id not in skip]
        if not ids:
            return True
        if until is None:
            until = now() + self.engine.settings.lease_seconds
        try:
            with self.engine.store.transaction() as unit:
                unit.extend_leases(self.engine.owner, ids, until)
        except Exception:  # noqa: BLE001 - tried again at the next sweep interval, well before expiry
            logger.warning("extending the leases of %d task(s) failed", len(ids), exc_info=True)
            return False
        return True

    def _watch_long_calls(self) -> None:
        """Say so in the log when every user-code thread is held by a call running for over
        BUSY_AFTER seconds: nothing else's user code can start until one returns (a component that
        never returns holds its thread for good; forced_fail_activity cannot take it back)."""
        pool = self._pool
        if pool is None:
            return
        long = pool.long_calls(self.busy_after)
        if len(long) < pool.size:
            self._busy_said = False
            return
        if not self._busy_said:
            self._busy_said = True
            held = ", ".join(f"node {call.node_id} of pipeline {call.task.root_id} ({took:.0f} s)"
                             for call, took in sorted(long, key=lambda x: -x[1]))
            logger.warning("all %d user-code threads are held by calls running for over %g s: %s; "
                           "other pipelines' components wait until one returns (make those calls "
                           "return, or give the runtime more workers)", pool.size, self.busy_after, held)

    def _find_stale_calls(self) -> None:
        """Timer thread: calls running for over STALE_AFTER seconds whose run has moved on in the
        database (cut off by a deadline another process fired, force-failed by an operator, or cut
        off here while every thread let go of was taken: kept at the cap): the engine thread lets
        go of them (:meth:`_let_go`). An execute's run is its node's version; a schedule call's
        (a poll, a callback) is its schedule's, which must still be the RUNNING node's."""
        pool = self._pool
        long = [call for call, _ in pool.long_calls(STALE_AFTER)] if pool is not None else []
        runs = {_run_of(call) for call in long if call.item.invoke is not None}
        schedules = {call.task.schedule_id: call.task.node_id for call in long
                     if call.item.invoke is None and call.task.schedule_id is not None}
        if not runs and not schedules:
            return
        try:
            with self.engine.store.reading() as unit:
                stale = moved_on(unit, runs, schedules)
        except Exception:  # noqa: BLE001 - looked up again at the next sweep interval
            logger.debug("looking up the runs of long calls failed", exc_info=True)
            return
        if stale:
            self._ready.put(_LetGo(stale))

    def _keep_statistics(self) -> None:
        try:
            self.engine.store.keep_statistics()
        except Exception:  # noqa: BLE001 - tried again at the next sweep; plans only, never results
            logger.debug("analysing grown tables failed", exc_info=True)

    def _checkpoint(self) -> None:
        try:
            self.engine.store.checkpoint()
        except Exception:  # noqa: BLE001 - the writers' automatic checkpoint still bounds the WAL
            logger.debug("background checkpoint failed", exc_info=True)
