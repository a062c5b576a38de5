"""How a ``culm worker`` process shows it is alive, and how the others find out when it is not.

* :class:`LeaseHeartbeat` (one thread per worker process) beats the process's row of the worker
  registry (``culm_worker``, :mod:`culm.storage.workers`) every ``CULM_WORKER_BEAT`` seconds and
  extends the leases of the tasks it has on hand every third of a lease;
* :class:`TaskRelay` (one thread per worker, in its main process) looks at the registry every
  beat, buries the workers found dead (silent longer than ``CULM_WORKER_DEAD_AFTER``, or their
  process on this host gone), freeing their leases and publishing their work at once, and every
  ``CULM_RELAY_INTERVAL`` re-publishes task rows whose message never led to a run;
* :class:`EngineWatchdog` (one thread per worker process) ends the process when its engine
  thread has been in one batch's database transaction for ``CULM_ENGINE_STUCK_AFTER`` seconds,
  not waiting for a lock another session holds (PostgreSQL):
  the beat alone would keep the leases of a process whose engine never comes back;
* :func:`pool_watch` makes Celery's prefork pool take note of a killed pool process at once.

See docs/distributed.md, "Dead workers".
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from culm import _retry as retry
from culm._printable import engine_logger
from culm.core.ports import Store, WorkerRegistry
from culm.core.records import EMBEDDED_RUNNER, now

if TYPE_CHECKING:
    from culm.dispatch.celery import CeleryDispatcher, _ProcessState

logger = engine_logger("culm.dispatch.liveness")


class _FailureLog:
    """Logs a failed pass of a beat or relay loop. A culm table missing (dropped under a running
    worker) is said as one line naming the table and the fix, at most once a minute per loop,
    instead of the driver's traceback at every beat; any other failure keeps its traceback."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._said: dict[str, float] = {}

    def failed(self, what: str, exc: BaseException) -> None:
        """Called from the ``except`` block that caught ``exc``."""
        problem = self.store.schema_problem(exc)
        if problem is None:
            logger.warning("%s failed", what, exc_info=True)
            return
        last = self._said.get(problem)
        if last is not None and time.monotonic() - last < 60.0:
            return
        self._said[problem] = time.monotonic()
        logger.error("%s failed: %s", what, problem)


class BeatPending(Exception):  # noqa: N818 - not an error: a wait cut short
    """The engine thread's beat before a claim waited ``waited`` seconds for the beat thread's
    beat (a statement that does not return): the batch claims nothing and is tried again later
    (culm.dispatch.runner, WorkerRunner.retry_after)."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"the worker registry's beat has not come back for {waited:g} s")
        self.waited = waited


class LeaseHeartbeat:
    """Beats this process's row of the worker registry every ``beat_seconds``, and extends the
    leases of the tasks it is running every third of a lease (its own thread: user code on the
    other threads delays a beat by the interpreter's switch interval, not by a call's length)."""

    def __init__(self, state: _ProcessState, lease_seconds: float, beat_seconds: float = 1.0, threads: int = 0,
                 prefix: str = "", dead_after: float = 3.0) -> None:
        self.state = state
        self.lease_seconds = lease_seconds
        self.beat_seconds = beat_seconds
        self._row = (threads, prefix)  # what its registry row says besides owner, host and pid
        self._registered = False
        # A beat older than this (monotonic, which runs on while the process is stopped) and the
        # engine beats itself before it claims anything: the relays may be about to bury it, or
        # have (a SIGSTOP, a paused VM), and free what it claims while it has no row.
        self.stale_after = max(beat_seconds * 1.5, dead_after / 2)
        # The longest the engine thread waits for a beat the beat thread has under way (its
        # statement may never return: a wedged connection): past it the engine claims nothing,
        # its batch comes back later (BeatPending), and, the beat thread extending no lease
        # while it is wedged, the leases run out and the other workers take the tasks over.
        self.engine_wait = max(beat_seconds, dead_after)
        self._beaten_at = -float("inf")  # monotonic: when the last beat that found its row began
        self._beat_lock = threading.Lock()  # one beat at a time: the beat thread's or the engine's
        self._burials = 0  # how many times a beat found this process taken for dead
        self._burials_told = 0  # of them, how many alive() has told the engine thread of
        self._failures = _FailureLog(state.store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="culm-lease-heartbeat", daemon=True)

    def start(self) -> None:
        try:
            self._register()
        except Exception:  # noqa: BLE001 - the beat registers it later; its leases cover it meanwhile
            logger.warning("could not register this worker; retrying at the next beat", exc_info=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and leave the registry (a clean shutdown: nothing is left on hand)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(max(1.0, self.beat_seconds * 2))
        try:
            self.state.registry.unregister(self.state.engine.owner)
        except Exception:  # noqa: BLE001 - the relays bury the silent row instead (no tasks to free)
            logger.warning("could not leave the worker registry", exc_info=True)

    def halt(self) -> None:
        """Stop beating and extending leases, staying in the registry (EngineWatchdog: the relays
        then take this process for dead and free its leases)."""
        self._stop.set()

    def _register(self) -> None:
        began = time.monotonic()
        self.state.registry.register(self.state.engine.owner, *self._row)
        self._registered = True
        self._beaten_at = began

    def beat_registry(self, older_than: float = 0.0, wait: float | None = None) -> None:
        """Beat this process's row (registering again when it has none); with ``older_than``,
        only when the last beat is older than that (seconds). With ``wait``: raises
        :class:`BeatPending` when another thread's beat holds the row that long."""
        if not self._beat_lock.acquire(timeout=-1 if wait is None else wait):
            raise BeatPending(wait or 0.0)
        try:
            began = time.monotonic()
            if older_than and began - self._beaten_at <= older_than:
                return  # the beat thread beat while this waited for the lock
            if self.state.registry.beat(self.state.engine.owner):
                self._beaten_at = began
                return
            if self._registered:
                self._burials += 1
                logger.warning("this worker (%s) was taken for dead (no beat for a while) and its leases freed; "
                               "registering again", self.state.engine.owner)
            self._register()
        finally:
            self._beat_lock.release()

    def alive(self) -> bool:
        """Engine thread, before a batch claims tasks and before the calls it handed out start:
        make sure this process's registry row is there (beating it now when the last beat is
        older than :attr:`stale_after`: a process that was frozen wakes with a stale row, or none,
        and its beat thread may not have run yet). True when a beat found this process taken for
        dead since the last call: the leases it held then were freed, and the calls it had not
        started yet may be another worker's now (see culm.dispatch.threads, ``_drop_lost_calls``).
        Raises what the beat raised (the batch is then tried again like one the database
        interrupted), and :class:`BeatPending` when the beat thread's beat has not come back
        within :attr:`engine_wait` (the batch is tried again later, claiming nothing meanwhile)."""
        if time.monotonic() - self._beaten_at > self.stale_after:
            self.beat_registry(older_than=self.stale_after, wait=self.engine_wait)
        burials = self._burials
        if burials == self._burials_told:
            return False
        self._burials_told = burials
        return True

    def beat(self) -> None:
        ids = self.state.runner.task_ids()
        if ids:
            # It skips the rows a transaction holds (this process's own engine batch, above all:
            # waiting for it held back every other lease and the registry beat). Should it still
            # be a deadlock victim, run it again at once: a lost beat or two and the leases run
            # out, the relay hands the tasks to another worker while this one still runs them.
            retry.retrying(lambda: self._extend(ids), "extending leases")

    def _extend(self, ids: list[str]) -> None:
        with self.state.store.transaction() as unit:
            unit.extend_leases(self.state.engine.owner, ids, now() + self.lease_seconds)

    def _loop(self) -> None:
        extend_every = self.lease_seconds / 3
        next_extend = time.monotonic() + extend_every
        while not self._stop.wait(min(self.beat_seconds, extend_every)):
            try:
                self.beat_registry()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again, before the row looks dead
                self._failures.failed("beating the worker registry", exc)
            if time.monotonic() < next_extend:
                continue
            next_extend = time.monotonic() + extend_every
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - retried at the next beat, well before expiry
                self._failures.failed("extending leases", exc)


END_SESSIONS_WAIT = 12.0  # seconds EngineWatchdog waits for the KILLs (a connect and a read, 5 s each)
ENGINE_STUCK_EXIT = 70  # the exit status of a worker process its EngineWatchdog ended (EX_SOFTWARE)
# The longest the watchdog waits for the database's answer about lock waits (MariaDB's takes a
# connect and three reads, 2 s each at most, and a pause: culm.storage.sql.mysql.INNODB_COPY_IDLE).
LOCK_QUESTION_SECONDS = 9.0


class EngineWatchdog:
    """Ends this worker process when its engine thread has been in one batch's database
    transaction for ``stuck_after`` seconds (see docs/distributed.md, "A stuck engine").

    Timed is the transaction and the engine's own steps in it; not what follows its commit
    (signal receivers and after-commit hooks: user code; broker publishes), nor a wait for a lock
    another session holds (asked of the store on a connection of its own, PostgreSQL and MariaDB: the
    next worker would wait for the same lock). A transaction that does not end (a statement
    waiting for ever on a wedged connection, a server-side hang) holds its tasks' rows, while the heartbeat, on other connections, keeps beating and
    extending their leases: no other worker would ever take them, the pipeline RUNNING with no
    reason shown. The watchdog (its own thread; its one database call, the lock question, is
    bounded and a failure of it counts as stuck) logs why, with where the
    engine thread is, stops the beat and exits with :data:`ENGINE_STUCK_EXIT`. The relays of the
    other workers find the process gone (or silent) and hand its tasks on, as for a killed worker;
    the database ends the process's transactions when it finds the client gone (PostgreSQL checks
    every few seconds, see culm.storage.sql.postgres.CLIENT_CHECK_MS). ``stuck_after`` 0: off.
    """

    def __init__(self, state: _ProcessState, stuck_after: float, check: float = 1.0,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.state = state
        self.stuck_after = stuck_after
        self.check = check
        self._exit = exit
        self._next_probe = 0.0  # monotonic: when to ask the database again about lock waits
        self._waits_said = False  # the lock wait of the batch under way is logged
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="culm-engine-watchdog", daemon=True)

    def start(self) -> None:
        if self.stuck_after > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def look(self) -> bool:
        """Whether the engine thread is stuck; if so, log it, stop the beat and exit."""
        age, thread = self.state.runner.loop.batch_age()
        if age < self.stuck_after:
            self._waits_said = False
            return False
        if time.monotonic() < self._next_probe:
            return False
        waits = self._lock_waits(thread)
        if waits:
            # Waiting for a lock another session holds (a migration, an index build, a VACUUM
            # FULL): not stuck, and the next worker would wait for the same lock.
            self._next_probe = time.monotonic() + max(self.check, 5.0)
            if not self._waits_said:
                self._waits_said = True
                logger.warning("the engine thread has been in one batch's database transaction for %.0f s, over "
                               "CULM_ENGINE_STUCK_AFTER (%g s), waiting for a lock another database session "
                               "holds: this worker process waits with it", age, self.stuck_after)
            return False
        frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
        where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "(not found)\n"
        on_hand = len(self.state.runner.task_ids())
        logger.error(
            "the engine thread has been in one batch's database transaction (its reads and writes and "
            "the engine's steps between them; not waiting for a lock) for %.0f s, over "
            "CULM_ENGINE_STUCK_AFTER (%g s): this worker process (%s, pid %d) stops beating and exits "
            "with status %d, so that the other workers take over its %d task(s) on hand. "
            "The engine thread is at:\n%s",
            age, self.stuck_after, self.state.engine.owner, os.getpid(), ENGINE_STUCK_EXIT, on_hand, where.rstrip())
        if self.state.heartbeat is not None:
            self.state.heartbeat.halt()
        self.end_sessions()
        for handler in {*logging.getLogger().handlers, *logger.handlers}:
            handler.flush()  # the line above is out before the process ends
        self._exit(ENGINE_STUCK_EXIT)
        return True

    def _lock_waits(self, thread: threading.Thread | None) -> int:
        """Whether the engine thread's batch transaction waits for a lock only other processes'
        sessions hold (PostgreSQL, MariaDB; asked on a short connection of its own). Another thread of this
        process waiting (for the engine's rows, say) does not count, nor a wait for this process's
        own sessions. A failed question counts as none: a wedged server is the watchdog's case."""
        loop = self.state.runner.loop
        store = getattr(getattr(loop, "engine", None), "store", None)
        ask = getattr(store, "lock_waits", None)
        if ask is None or thread is None or thread.ident is None:
            return 0
        thread_id = thread.ident
        answer: list[int] = []

        def asking() -> None:
            try:
                answer.append(int(ask(thread_id)))
            except Exception:  # noqa: BLE001 - the database does not answer: stuck indeed
                logger.warning("could not ask the database whether the engine thread waits for a lock", exc_info=True)

        # On a thread of its own, waited for LOCK_QUESTION_SECONDS: a server that accepts the
        # connection and then never answers does not keep the watchdog from its exit.
        asker = threading.Thread(target=asking, name="culm-engine-watchdog-ask", daemon=True)
        asker.start()
        asker.join(LOCK_QUESTION_SECONDS)
        return answer[0] if answer else 0

    def end_sessions(self) -> None:
        """Have the database end this process's sessions, where it would not soon find them gone
        on its own (MariaDB/MySQL: KILL, see culm.storage.sql.mysql), so the stuck statement's row
        locks go with the process and the relays free its leases at its burial. Given at most
        :data:`END_SESSIONS_WAIT` seconds: a database that does not answer is one reason to be stuck."""
        end = getattr(self.state.store, "end_own_sessions", None)
        if end is None:
            return
        said: list[str] = []

        def run() -> None:
            try:
                said.append(f"ended {end()} database session(s) of this process")
            except Exception as exc:  # noqa: BLE001 - the process exits all the same
                said.append(f"could not end this process's database sessions: {exc!r}")

        thread = threading.Thread(target=run, name="culm-end-sessions", daemon=True)
        thread.start()
        thread.join(END_SESSIONS_WAIT)
        logger.warning("%s", said[0] if said else f"ending this process's database sessions took over "
                     f"{END_SESSIONS_WAIT:g} s: exiting without")

    def _loop(self) -> None:
        while not self._stop.wait(self.check):
            try:
                if self.look():
                    return
            except Exception:  # noqa: BLE001 - the next look tries again
                logger.warning("looking at the engine thread failed", exc_info=True)


class TaskRelay:
    """Re-publishes task rows the broker did not deliver, and buries dead workers (see the module
    docstring): it looks at the registry every ``check`` seconds and relays every ``interval``."""

    def __init__(self, store: Store, dispatcher: CeleryDispatcher, interval: float = 2.0,
                 grace: float = 15.0, batch: int = 500, *, registry: WorkerRegistry | None = None,
                 dead_after: float = 3.0, check: float = 1.0, own: str = "",
                 watch: Callable[[], None] | None = None, free_for: float = 0.0) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.interval = interval
        self.grace = grace
        self.batch = batch
        self.registry = registry
        self.dead_after = dead_after
        self.check = min(check, interval)
        self.own = own  # this process's owner: never buried by its own relay
        self.watch = watch  # called at every look (the pool watch of run_worker)
        self._after_burial = 0.0  # until then (monotonic), each look also relays what waited a look
        self._buried_at = 0.0  # wall clock (relayed_at's): the start of the look of the last burial
        # A burial's (or a late freeing's) pass not done yet (its look failed midway): the wall
        # clock from which it counts a message as sent to the living; None: none due.
        self._pass_since: float | None = None
        # How long after a burial the leases the dead owner still held are looked for again (at
        # least dead_after; run_worker: the lease length, after which they run out anyway).
        self.free_for = max(free_for, dead_after)
        self._free_until = 0.0  # until then (monotonic), each look frees what the buried kept
        self._buried: list[str] = []  # the owners buried before then: leases they kept are freed
        self._failures = _FailureLog(store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="culm-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def relay_once(self, grace: float | None = None, resend_after: float | None = None, *,
                   sent_since: float | None = None) -> int:
        """Publish one batch of forgotten tasks (due more than ``grace`` ago, default the relay's;
        none relayed in the last ``resend_after`` seconds, or, given ``sent_since`` (wall clock),
        none relayed since then); returns how many."""
        at = now()
        grace = self.grace if grace is None else grace
        if sent_since is not None:
            resend_after = max(0.0, at - sent_since)
        elif resend_after is None:
            resend_after = min(self.grace, max(grace, self.check))
        with self.store.transaction() as unit:
            tasks = unit.relay_candidates(at, grace, self.interval * 2, self.batch, resend_after=resend_after)
            unit.mark_relayed([t.id for t in tasks], at)
        for task in tasks:
            self.dispatcher.publish(task, at)
        if tasks:
            # Overdue ones are work whose message never led to a run (lost, never sent, or held
            # by a dead worker); the others are timers not marked published yet (their submitter
            # marks them just after its publish): a duplicate message at worst.
            overdue = sum(1 for t in tasks if t.due <= at - grace)
            logger.info("relayed %d task(s): %d overdue, %d timer(s) due soon", len(tasks), overdue,
                        len(tasks) - overdue)
        return len(tasks)

    def bury_dead(self) -> int:
        """Bury the workers found dead and publish their work at once; returns how many it buried.

        Besides the tasks it held leases on, a dead worker may have had tasks on hand that it had
        not claimed yet: messages it took (acknowledged) or prefetched, follow-ups of its commits
        it kept. Their rows carry no lease and cannot be told from tasks whose message is on its
        way, so every due task without a lease is published once more: a duplicate message finds
        its task leased or gone and does nothing.

        Once more means a message sent after this look began, whenever the last one was: a message
        relayed before the burial (a relay's pass while the dead worker had the row on hand, not
        yet claimed) may have found the row leased by the worker, now dead, and done nothing.
        Skipping rows relayed a moment before left such a task to the grace (15 s).
        """
        if self.registry is None:
            return 0
        began = now()
        if time.monotonic() >= self._free_until:
            self._buried = []  # the watch after the last burial is over
        buried = self._bury_found_dead(began)
        if buried:
            self._buried_at = began
            self._after_burial = time.monotonic() + self.dead_after
            self._free_until = time.monotonic() + self.free_for
        elif self._free_late() and self._pass_since is None:
            self._pass_since = began
        if self._pass_since is not None:
            # Done by the next look if this one fails midway: the burial is committed, and no
            # later look would find the dead worker again to publish its work.
            self._relay_all(grace=0.0, sent_since=self._pass_since)
            self._pass_since = None
        elif time.monotonic() < self._after_burial:
            # Until the dead process's parent has noticed (a Celery master hands messages to a
            # killed pool process until its pool maintenance runs), messages can still go to it
            # after the pass above; they are acknowledged as lost with the process. Relay what has
            # waited a look since, but not what the pass above sent already.
            self._relay_all(grace=self.check, sent_since=self._buried_at)
        return buried

    def _bury_found_dead(self, began: float) -> int:
        """Bury each worker found dead (but this process); returns how many this relay buried.
        Each burial's pass is due from its commit on (``began``: this look's start), so one that
        a later burial's failure cuts short is still made at the next look."""
        assert self.registry is not None
        buried = 0
        for worker, silent in self.registry.dead(self.dead_after):
            if worker.owner == self.own:
                continue
            freed = self.registry.bury(worker.owner, self.dead_after if silent else None)
            if freed is None:
                continue  # another relay buried it, or it beat again
            buried += 1
            if self._pass_since is None:
                self._pass_since = began
            self._buried.append(worker.owner)
            how = f"silent for {worker.silent_for:.1f} s" if silent else "its process is gone"
            logger.warning("worker %s (host %s, pid %d) is dead (%s): %d task(s) freed", worker.owner, worker.host,
                           worker.pid, how, len(freed))
        return buried

    def _free_late(self) -> bool:
        """Free what the owners buried in the last ``free_for`` seconds still hold; whether any.

        A transaction of the dead process still on the server at the burial kept the rows it
        locked (and their leases, see SqlWorkerRegistry.free_leases): free them once it ends (a
        vanished client's statement ended by the server, PostgreSQL's client check; a lock wait
        at its timeout), rather than when the lease runs out. Only rows no transaction locks
        are freed: the dead process's own never ran on after it (it is gone, or buried silent
        as before), and a freed task is claimed again under a lease of its own.
        """
        assert self.registry is not None
        freed_late = 0
        for owner in self._buried:
            if freed := self.registry.free_leases(owner):
                freed_late += len(freed)
                logger.warning("worker %s (buried): %d more task(s) freed once its last transaction "
                               "ended", owner, len(freed))
        return freed_late > 0

    def _relay_all(self, grace: float, sent_since: float) -> None:
        while self.relay_once(grace=grace, sent_since=sent_since) == self.batch and not self._stop.is_set():
            pass

    def _loop(self) -> None:
        next_relay = time.monotonic() + self.interval
        while not self._stop.wait(self.check):
            if self.watch is not None:
                try:
                    self.watch()
                except Exception:  # noqa: BLE001 - Celery's own maintenance still comes
                    logger.warning("looking at the pool processes failed", exc_info=True)
            try:
                self.bury_dead()
            except Exception as exc:  # noqa: BLE001 - the next look tries again
                self._failures.failed("looking for dead workers", exc)
            if time.monotonic() < next_relay:
                continue
            next_relay = time.monotonic() + self.interval
            try:
                while self.relay_once() == self.batch and not self._stop.is_set():
                    pass
            except Exception as exc:  # noqa: BLE001 - the next tick tries again
                self._failures.failed("relay pass", exc)


class EmbeddedPresence:
    """An embedded runner's place among the other runners of its server database (a
    :class:`~culm.dispatch.threads.ThreadDispatcher` ``beside_others``: ``culm.Runtime(url)`` with no
    broker, as ``culm run`` and ``culm serve`` open one).

    Its sweep leaves a due task to the runner that recorded it for ``grace`` (``CULM_RELAY_GRACE``)
    before taking it, as a worker's relay does: that runner is about to claim it. But when no
    other live runner is registered, nobody is: the task was recorded by a process that runs no
    work (a ``culm callback`` beside a ``culm worker`` that has stopped since, a
    ``culm.Runtime(url, workers=0)``), or by one that has exited, and waiting only delayed it by the
    grace. So the runner registers in the worker registry (as embedded: no queue prefix, see
    :class:`culm.storage.workers.SqlWorkerRegistry`) and beats its row at each sweep, and
    :meth:`look` says which grace applies. The lease remains the fence: a task is run by the runner
    that claims it, whoever looked when.

    It also buries the embedded runners whose process is known gone (a ``culm run`` killed on this
    machine): their leases are freed and its sweep takes their tasks at once, not once the leases
    ran out (60 s) and the grace after them. Workers found dead are left to the workers' relays,
    which publish their tasks, unless no live worker is left to do it.
    """

    def __init__(self, store: Store, registry: WorkerRegistry, owner: str, threads: int, grace: float,
                 dead_after: float) -> None:
        self.registry = registry
        self.owner = owner
        self.threads = threads
        self.grace = grace
        self.dead_after = dead_after
        self._failures = _FailureLog(store)

    def start(self) -> None:
        """Register (before this runner claims or records anything); a failure is said, and the
        sweep keeps the grace until a look registers it."""
        try:
            self.registry.register(self.owner, self.threads, EMBEDDED_RUNNER)
        except Exception as exc:  # noqa: BLE001 - a look registers it later
            self._failures.failed("registering this embedded runner", exc)

    def stop(self) -> None:
        try:
            self.registry.unregister(self.owner)
        except Exception as exc:  # noqa: BLE001 - its row is buried once its process is gone
            self._failures.failed("leaving the worker registry", exc)

    def look(self) -> tuple[float, bool]:
        """Beat this runner's row and bury the runners found gone: (the grace the sweep applies
        now, whether it buried one: their tasks are due at once). On a failure: the grace."""
        try:
            if not self.registry.beat(self.owner):
                self.registry.register(self.owner, self.threads, EMBEDDED_RUNNER)
            others = [w for w in self.registry.workers() if w.owner != self.owner]
            dead = {w.owner: silent for w, silent in self.registry.dead(self.dead_after) if w.owner != self.owner}
            live_workers = any(not w.embedded and w.owner not in dead for w in others)
            buried = False
            for w in others:
                if w.owner not in dead or dead[w.owner] or (live_workers and not w.embedded):
                    # Alive; or only silent: a worker's silence is judged by the workers' relays,
                    # with their own CULM_WORKER_DEAD_AFTER (this process's may differ), and an
                    # embedded runner's never (see SqlWorkerRegistry.dead); or a worker whose
                    # death the live workers' relays see to.
                    continue
                freed = self.registry.bury(w.owner, None)
                if freed is not None:
                    buried = True
                    logger.warning("runner %s (host %s, pid %d) is dead: %d task(s) freed, taken up here",
                                   w.owner, w.host, w.pid, len(freed))
            live = any(w.owner not in dead and w.silent_for <= self.dead_after for w in others)
        except Exception as exc:  # noqa: BLE001 - looked at again at the next sweep
            self._failures.failed("looking at the other runners of the database", exc)
            return self.grace, False
        return (self.grace if live else 0.0), buried


def _exited(pid: int) -> bool:
    """Whether a child process has ended (a zombie not reaped yet, or gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def pool_watch(consumer: Any) -> Callable[[], None] | None:
    """A check, run at each look of the relay, that makes the prefork pool of this worker take
    note of a pool process that was killed.

    Celery's master notices a killed pool process only at its next pool maintenance (seconds
    later), and meanwhile hands messages to it, where they wait. When one of its processes has
    ended, the check asks the master's event loop (``call_soon``, thread-safe) to maintain the pool
    at once, so that the messages given to the dead process go to a live one.
    """
    hub = getattr(consumer, "hub", None)
    pool = getattr(consumer, "pool", None)
    maintain = getattr(pool, "maintain_pool", None)
    if hub is None or maintain is None or not os.path.isdir(f"/proc/{os.getpid()}"):
        return None  # not a worker's consumer, or no /proc to look in

    def watch() -> None:
        # Prefork only: billiard's pool lists its processes; solo and threads pools have none.
        children = list(getattr(getattr(pool, "_pool", None), "_pool", None) or [])
        if any(p.pid is not None and _exited(p.pid) for p in children):
            hub.call_soon(maintain)

    return watch
