"""CeleryDispatcher and the ``culm worker`` process: the distributed runtime.

Durable work is a row in ``culm_task``, committed with the change that causes it (an outbox). The
broker only carries task ids (and hints, see below), so a message may be lost or delivered twice
without harm:

* :class:`CeleryDispatcher` publishes each committed task id right after the commit, to
  ``culm_execute`` / ``culm_schedule`` when due, to ``culm_timer`` with a countdown when not;
* the Celery task ``culm.run_task`` hands the id to its process's runner, whose step claims the row with a lease,
  so a redelivered or duplicated message finds it leased or gone;
* an execute task's message also says, in its ``culm_hint`` header, the task's run and node and,
  where the publisher has the run's graph, the reads its walk will make: a runner that has not
  compiled the run claims the task, reads the walk and the run's tree in one round trip. The
  header is only a guess (the row decides), and a message without it (from an older culm) is
  run as before; an older worker ignores the header (Celery keeps unknown headers to itself);
* a relay thread in every worker re-publishes rows whose message never came through (the
  submitter died after its commit, the broker lost the message, a lease ran out);
* every worker process registers in the worker registry (``culm_worker``) and beats its row
  every second while it extends the leases of the tasks it has on hand. The relay buries a
  worker whose beat stopped (or whose process, on the same host, is gone): it frees that
  worker's leases and publishes at once every due task without a lease, so a killed worker's
  work moves on within seconds while only a dead worker's tasks are taken over
  (:mod:`culm.dispatch.liveness`, :mod:`culm.storage.workers`);
* the Celery task only hands the id to its process's :class:`~culm.dispatch.runner.WorkerRunner`,
  which advances all the tasks on hand in one transaction, runs user code on its own threads and
  keeps the follow-ups of its commits while it has room (see that module).

Knobs read from the environment by ``culm worker``: ``CULM_LEASE_SECONDS`` (30),
``CULM_RELAY_INTERVAL`` (2), ``CULM_RELAY_GRACE`` (15), ``CULM_WORKER_BEAT`` (seconds between two
beats of a worker's registry row, 1), ``CULM_WORKER_DEAD_AFTER`` (a worker silent this long is
buried, 3), ``CULM_WORKER_THREADS`` (user-code threads per pool process, 8),
``CULM_WORKER_BACKLOG`` (tasks on hand per pool process, 64), ``CULM_DRAIN_SECONDS`` (how long a
stopping worker lets its tasks reach their next commit, 30), ``CULM_IMPORTS`` (component modules).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from celery import Celery, signals

from culm._printable import engine_logger
from culm.core.loop import expected_walk
from culm.core.ports import Store, WorkerRegistry
from culm.core.records import EXECUTE, SCHEDULE, TaskRecord, now
from culm.dispatch.liveness import EngineWatchdog, LeaseHeartbeat, TaskRelay, pool_watch
from culm.dispatch.runner import DB_RETRY_SECONDS, TaskHint, WorkerRunner, is_interruption
from culm.errors import CulmError

logger = engine_logger("culm.dispatch.celery")

TASK_NAME = "culm.run_task"
# The header of an execute task's message naming its run, node and walk (see task_hint); at most
# MAX_HINT_IDS ids a list (a walk's reads are bounded by the graph's look-ahead, far below).
HINT_HEADER = "culm_hint"
MAX_HINT_IDS = 2000
# A walk no bigger than this (its ids' characters, about its JSON) rides in the header: a message's
# headers must fit one AMQP frame (RabbitMQ's frame_max: 128 KiB by default), else the send fails,
# and the relay's would fail the same way for ever.
MAX_HINT_WALK_CHARS = 32_000
EXECUTE_QUEUE, SCHEDULE_QUEUE, TIMER_QUEUE = "execute", "schedule", "timer"
# Longest countdown handed to the broker. Further timers wait in the table for the relay: brokers
# hold countdown messages unacknowledged in a worker, and RabbitMQ's consumer_timeout (30 min) or
# Redis's visibility_timeout would otherwise cut in.
MAX_COUNTDOWN = 600.0
# How long a Celery task waits for room in its process's runner (only while calls are short: then
# room comes back soon) before its message goes back to the broker for another worker, with a
# countdown of FIRST_BOUNCE that doubles with each bounce up to MAX_BOUNCE.
ACCEPT_WAIT = 0.1
FIRST_BOUNCE = 0.05
MAX_BOUNCE = 5.0


# Celery loggers that write a line or two per message at INFO.
CHATTY_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def queue_names(suffix: str = "", prefix: str = "culm") -> list[str]:
    """The execute, schedule and timer queue names, e.g. ``queue_names("api")``."""
    tail = f"_{suffix}" if suffix else ""
    return [f"{prefix}_{kind}{tail}" for kind in (EXECUTE_QUEUE, SCHEDULE_QUEUE, TIMER_QUEUE)]


def delete_queues(broker: str, prefix: str = "culm") -> None:
    """Drop the broker queues of ``prefix`` (cleanup after a test or benchmark; never raises)."""
    try:
        app = make_celery_app(broker, prefix=prefix)
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in queue_names(prefix=prefix):
                try:
                    channel.queue_delete(name)
                except Exception:  # noqa: BLE001 - never declared
                    pass
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def make_celery_app(broker: str, *, prefix: str = "culm", **options: Any) -> Celery:
    """A Celery app set up for at-least-once delivery of culm task ids.

    Args:
        broker: broker URL (``redis://``, ``amqp://``).
        prefix: queue name prefix; deployments sharing a broker use different prefixes.
        **options: further Celery settings, applied last.
    """
    app = Celery("culm", broker=broker, set_as_current=False)
    execute = queue_names(prefix=prefix)[0]
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=execute,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Redis: a message not acknowledged in an hour goes back to the queue (a duplicate at
        # worst). Countdowns stay below it (MAX_COUNTDOWN). RabbitMQ ignores these options.
        broker_transport_options={"visibility_timeout": 3600},
        # A killed pool process: Celery waits this long for a result it may have sent before it
        # requeues the message it was given (10 s by default). culm's Celery task returns within
        # milliseconds (it only hands an id to the runner), so a second is ample.
        worker_lost_wait=1.0,
        culm_prefix=prefix,
    )
    app.conf.update(options)
    # max_retries=None: a message bounces (no room, the database away) for as long as it takes.
    # Celery reads retry(max_retries=None) as "the task's own limit", 3 by default: the fourth
    # bounce failed the message (an ERROR with a traceback) and left the task to the relay.
    app.task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True, max_retries=None)(_run_task)
    return app


class CeleryDispatcher:
    """Publishes committed tasks to Celery queues (the Dispatcher port of the core).

    Args:
        broker: broker URL.
        app: an existing app from :func:`make_celery_app` (a worker passes its own).
        prefix: queue name prefix.
        max_countdown: timers further ahead are left to the relay.
        **options: Celery settings for a new app.
    """

    def __init__(
        self,
        broker: str,
        *,
        app: Celery | None = None,
        prefix: str = "culm",
        max_countdown: float = MAX_COUNTDOWN,
        **options: Any,
    ) -> None:
        self.app = app or make_celery_app(broker, prefix=prefix, **options)
        self.prefix = self.app.conf.get("culm_prefix", prefix)
        self.max_countdown = max_countdown
        self.engine: Any = None  # culm.core.engine.Engine, bound by culm.runtime
        self.local_queues: frozenset[str] = frozenset()  # worker only: the queues it consumes

    def bind(self, engine: Any) -> None:
        self.engine = engine

    def queue_for(self, task: TaskRecord, at: float) -> tuple[str, float]:
        """The queue of a task and its countdown (0 when due)."""
        countdown = max(0.0, task.due - at)
        if countdown > 0.05:
            kind = TIMER_QUEUE
        else:
            kind, countdown = (SCHEDULE_QUEUE if task.kind == SCHEDULE else EXECUTE_QUEUE), 0.0
        name = f"{self.prefix}_{kind}" + (f"_{task.queue}" if task.queue else "")
        return name, countdown

    def submit(self, tasks: Sequence[TaskRecord]) -> None:
        """Publish tasks whose rows are committed; a failed publish is left to the relay."""
        at = now()
        sent, held = [], []
        for task in tasks:
            if task is None:
                continue
            if task.due - at > self.max_countdown:
                held.append(task.id)
            elif self.publish(task, at) and task.due > at:
                sent.append(task.id)
        self._record(sent, held)

    def may_keep(self, task: TaskRecord, at: float) -> bool:
        """Whether a worker may run ``task`` itself instead of publishing it: due, and of a queue
        this process consumes."""
        queue, countdown = self.queue_for(task, at)
        return countdown == 0.0 and queue in self.local_queues

    def publish(self, task: TaskRecord, at: float | None = None, countdown: float | None = None) -> bool:
        """Send one task id (after ``countdown`` seconds if given); True when the broker took it."""
        queue, due_in = self.queue_for(task, now() if at is None else at)
        if countdown is None:
            countdown = due_in
        elif countdown > 0.05:
            queue = self.queue_for(replace(task, due=now() + countdown), now())[0]
        hint = self._hint(task)
        try:
            self.app.send_task(
                TASK_NAME,
                args=[task.id, task.kind],
                headers={HINT_HEADER: hint} if hint is not None else None,
                queue=queue,
                routing_key=queue,
                countdown=countdown or None,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
            )
            return True
        except Exception:  # noqa: BLE001 - the row is committed; the relay publishes it later
            logger.warning("could not publish task %s to %s; the relay will", task.id, queue, exc_info=True)
            return False

    def _hint(self, task: TaskRecord) -> dict[str, Any] | None:
        """What an execute task's message says besides its id (see :func:`task_hint`)."""
        if task.kind != EXECUTE or not task.root_id or not task.node_id:
            return None
        hint: dict[str, Any] = {"root": task.root_id, "node": task.node_id}
        graph = self.engine.known_graph(task.root_id) if self.engine is not None else None
        walk = expected_walk(graph, task.node_id) if graph is not None else None
        if (walk is not None and all(len(ids) <= MAX_HINT_IDS for ids in walk)
                and sum(len(i) + 4 for ids in walk for i in ids) <= MAX_HINT_WALK_CHARS):
            hint["walk"] = [list(ids) for ids in walk]
        return hint

    def _record(self, sent: list[str], held: list[str]) -> None:
        # Only timers are marked: the relay looks for unpublished timers ahead of time, while due
        # tasks are found by being overdue.
        if self.engine is None or not (sent or held):
            return
        try:
            with self.engine.store.transaction() as unit:
                unit.mark_published(sent, True)
                unit.mark_published(held, False)
        except Exception:  # noqa: BLE001 - only an optimisation hint for the relay
            logger.warning("could not mark published timers", exc_info=True)

    def submitting(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to hold: the workers take tasks from the broker as they come."""
        return contextlib.nullcontext()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True at once: the tasks run in worker processes, not in this one (see ``Runtime.wait``)."""
        return True

    def close(self) -> None:
        """Let go of the app. Its broker connections sit in kombu's process-wide pool, shared
        with every other app on the same broker URL, so they are left there for them to reuse
        (closing them would break the next runtime's publishes)."""
        try:
            self.app.close()
        except Exception:  # noqa: BLE001
            logger.debug("closing the broker pool failed", exc_info=True)


# -- worker process state -----------------------------------------------------------------------


class WorkerWiring(Protocol):
    """How a worker process gets its store and engine.

    ``culm.runtime.WorkerWiring`` is the implementation: runtime.py is the one place that wires a
    store, a dispatcher and the engine together; this module only says when (once per process,
    after the fork) and hands over the process's runner as the engine's dispatcher.
    """

    def import_plugins(self, modules: Iterable[str]) -> list[str]:
        """Import the plugin modules ``modules`` and those of ``$CULM_IMPORTS`` (comma-separated);
        a ``.py`` name is a file. Returns the names imported (each once)."""
        ...

    def check(self, db: str) -> None:
        """Refuse a database this culm cannot run on (an outdated schema) before anything starts."""
        ...

    def build(self, db: str, runner: WorkerRunner, lease_seconds: float) -> tuple[Store, Any, WorkerRegistry]:
        """This process's store on ``db``, its engine (dispatching to ``runner``) and its worker registry."""
        ...

    def after_fork(self, store: Store) -> None:
        """Drop the connections a forked process inherited, without closing them (the parent's)."""
        ...


@dataclass
class WorkerConfig:
    """What every worker process needs to build its engine (inherited across fork)."""

    db: str
    app: Celery
    wiring: WorkerWiring
    lease_seconds: float = 30.0
    relay_interval: float = 2.0
    relay_grace: float = 15.0
    queues: frozenset[str] = frozenset()  # what this worker consumes (it keeps only such tasks)
    threads: int = 8
    backlog: int = 64
    drain_seconds: float = 30.0
    beat_seconds: float = 1.0  # between two beats of this process's registry row
    dead_after: float = 3.0  # a worker whose row has not been beaten this long is buried
    stuck_after: float = 60.0  # a process whose engine thread is in one batch this long exits (0: never)
    prefix: str = "culm"


@dataclass
class _ProcessState:
    pid: int
    store: Store
    engine: Any  # culm.core.engine.Engine, wired by culm.runtime
    dispatcher: CeleryDispatcher
    runner: WorkerRunner
    registry: WorkerRegistry
    heartbeat: LeaseHeartbeat | None = None
    watchdog: EngineWatchdog | None = None


_config: WorkerConfig | None = None
_state: _ProcessState | None = None
_state_lock = threading.Lock()


def configure_worker(config: WorkerConfig) -> None:
    """Set what :func:`worker_state` builds from (``run_worker`` does it)."""
    global _config, _state
    _config, _state = config, None


def worker_state() -> _ProcessState:
    """This process's store, engine and dispatcher, built on first use after every fork."""
    global _state
    pid = os.getpid()
    with _state_lock:
        if _state is not None and _state.pid == pid:
            return _state
        if _config is None:
            raise RuntimeError("culm worker is not configured: start it with `culm worker`")
        dispatcher = CeleryDispatcher("", app=_config.app)
        dispatcher.local_queues = _config.queues
        runner = WorkerRunner(dispatcher, _config.threads, _config.backlog)
        store, engine, registry = _config.wiring.build(_config.db, runner, _config.lease_seconds)
        dispatcher.bind(engine)
        state = _ProcessState(pid, store, engine, dispatcher, runner, registry)
        # Registered before this process claims any task, so its death is seen within seconds.
        state.heartbeat = LeaseHeartbeat(state, _config.lease_seconds, _config.beat_seconds, _config.threads,
                                         _config.prefix, _config.dead_after)
        state.heartbeat.start()
        runner.alive = state.heartbeat.alive  # a claim waits for a beat when the last one is stale
        state.watchdog = EngineWatchdog(state, _config.stuck_after, check=_config.beat_seconds)
        state.watchdog.start()
        _state = state
        return state


@signals.worker_process_init.connect
def _after_fork(**_kw: Any) -> None:
    """A forked pool child must not use its parent's database connections. It then sets itself up
    (and registers: `culm workers` lists it) at once, not at its first task, on a thread of its
    own: Celery kills a child whose init takes over a few seconds, and a first task waits for the
    set-up (``worker_state``'s lock) rather than starting another."""
    global _state
    inherited = _state
    if inherited is not None and inherited.pid != os.getpid() and _config is not None:
        _config.wiring.after_fork(inherited.store)
        _state = None
    if _config is not None:
        threading.Thread(target=_set_up_early, name="culm-pool-setup", daemon=True).start()


def _set_up_early() -> None:
    try:
        worker_state()
    except Exception:  # noqa: BLE001 - the first task sets the process up again
        logger.warning("could not set this pool process up yet; its first task will", exc_info=True)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _drain(**_kw: Any) -> None:
    """A stopping pool process (or solo worker) lets the tasks on hand reach their next commit."""
    state = _state
    if state is None or state.pid != os.getpid() or _config is None:
        return
    state.runner.drain(_config.drain_seconds)  # the heartbeat keeps the leases meanwhile
    if state.heartbeat is not None:
        state.heartbeat.stop()  # and leaves the registry: nothing is left on hand
    if state.watchdog is not None:
        state.watchdog.stop()


def task_hint(raw: object) -> TaskHint | None:
    """The ``culm_hint`` header of a message as the runner takes it: (root id, node id, the walk's
    reads or None); None for a message without one (an older publisher) or with one this culm
    does not read as such (it is only a guess: the task row decides)."""
    if not isinstance(raw, dict):
        return None
    root_id, node_id, walk = raw.get("root"), raw.get("node"), raw.get("walk")
    if not (isinstance(root_id, str) and isinstance(node_id, str) and root_id and node_id):
        return None
    if not (isinstance(walk, list) and len(walk) == 3
            and all(isinstance(ids, list) and len(ids) <= MAX_HINT_IDS and all(isinstance(i, str) for i in ids)
                    for ids in walk)):
        return root_id, node_id, None
    return root_id, node_id, (walk[0], walk[1], walk[2])


def _run_task(self: Any, task_id: str, kind: str | None = None) -> None:
    """The Celery task: hand the task to this process's runner (which may wait for room).

    The message is acknowledged once the runner has the task: the row is the durable work, and a
    lease, the heartbeat and the relay cover a worker that dies with it on hand. The arguments stay
    those of every earlier culm (id, kind); what newer publishers add rides in a header.
    """
    state = worker_state()
    try:
        state.runner.ensure_started(state.engine)
        if kind is None:
            with state.store.reading() as unit:
                rec = unit.get_task(task_id)
            if rec is None:
                return  # done already
            kind = rec.kind
    except Exception as exc:
        if is_interruption(exc, state.store):
            logger.warning("database unavailable for task %s; retrying", task_id, exc_info=True)
            raise self.retry(exc=exc, countdown=DB_RETRY_SECONDS, max_retries=None) from None
        raise
    hint = task_hint(getattr(self.request, HINT_HEADER, None))
    if not state.runner.accept(task_id, kind, timeout=ACCEPT_WAIT, hint=hint):
        # Shutting down, or no room: the message goes back for another worker.
        countdown = min(MAX_BOUNCE, FIRST_BOUNCE * 2 ** min(self.request.retries or 0, 16))
        raise self.retry(countdown=countdown, max_retries=None)


# -- the worker ---------------------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


# The default number of pool processes of a `culm worker` is the number of CPUs, at most this.
# Each pool process is a whole engine: a runner with CULM_WORKER_THREADS user-code threads (8)
# and a database pool of up to 10 (+20 overflow) connections. Its Celery task only hands a task
# id to that runner, so a second process adds parallelism for CPU-bound components (one GIL each)
# and overlaps one engine loop's commit waits with another's, and every process adds connections.
# Celery's own default (every CPU) on a 64-CPU machine is 64 engines and up to 1,920 connections,
# against PostgreSQL's default max_connections of 100: more is a sizing decision for the
# operator (docs/distributed.md, "Scaling"), not a default. On this project's 2-CPU machine, and
# any with 4 CPUs or fewer, the default is Celery's as before.
DEFAULT_CONCURRENCY_CAP = 4


def default_concurrency(cpus: int | None = None) -> int:
    """The pool size of a worker started without ``--concurrency``: the CPUs, 1 to
    :data:`DEFAULT_CONCURRENCY_CAP`."""
    found = os.cpu_count() if cpus is None else cpus
    return max(1, min(found or 1, DEFAULT_CONCURRENCY_CAP))


def run_worker(
    db: str,
    broker: str,
    imports: list[str],
    concurrency: int | None = None,
    queues: list[str] | None = None,
    loglevel: str = "INFO",
    pool: str | None = None,
    *,
    prefix: str = "culm",
    wiring: WorkerWiring,
) -> None:
    """Run a Celery worker for culm until it is stopped (``culm worker``, which passes
    ``culm.runtime.WorkerWiring()``).

    Args:
        db: database URL (must be migrated: ``culm db upgrade``).
        broker: broker URL.
        imports: modules defining components (``$CULM_IMPORTS`` is added).
        concurrency: pool size (default :func:`default_concurrency`: the number of CPUs, at most 4).
        queues: queue names to consume; default the execute, schedule and timer queues.
        loglevel: Celery log level.
        pool: Celery pool (``prefork``, ``threads``, ``solo``); default prefork.
        prefix: queue name prefix, as given to the runtimes that submit.
        wiring: builds each process's store and engine (``culm.runtime.WorkerWiring``).

    Raises:
        SchemaOutdatedError: the database schema is not at this culm's revision.
    """
    beat, dead_after = _env_float("CULM_WORKER_BEAT", 1.0), _env_float("CULM_WORKER_DEAD_AFTER", 3.0)
    if beat <= 0 or dead_after < 2 * beat:
        raise CulmError(f"CULM_WORKER_DEAD_AFTER ({dead_after:g}) must be at least twice CULM_WORKER_BEAT ({beat:g}), "
                        "which must be above 0: otherwise live workers are taken for dead")
    wiring.import_plugins(imports)
    wiring.check(db)  # refuses an outdated schema before anything starts
    app = make_celery_app(broker, prefix=prefix)
    queues = queues or queue_names(prefix=prefix)
    config = WorkerConfig(
        db=db,
        app=app,
        wiring=wiring,
        queues=frozenset(queues),
        lease_seconds=_env_float("CULM_LEASE_SECONDS", 30.0),
        relay_interval=_env_float("CULM_RELAY_INTERVAL", 2.0),
        relay_grace=_env_float("CULM_RELAY_GRACE", 15.0),
        threads=int(_env_float("CULM_WORKER_THREADS", 8)),
        backlog=int(_env_float("CULM_WORKER_BACKLOG", 64)),
        drain_seconds=_env_float("CULM_DRAIN_SECONDS", 30.0),
        beat_seconds=beat,
        dead_after=dead_after,
        stuck_after=_env_float("CULM_ENGINE_STUCK_AFTER", 60.0),
        prefix=prefix,
    )
    configure_worker(config)
    relays: list[TaskRelay] = []

    def start_relay(sender: Any = None, **_kw: Any) -> None:
        state = worker_state()
        relay = TaskRelay(state.store, state.dispatcher, config.relay_interval, config.relay_grace,
                          registry=state.registry, dead_after=config.dead_after, check=config.beat_seconds,
                          own=state.engine.owner, watch=pool_watch(sender), free_for=config.lease_seconds)
        relay.start()
        relays.append(relay)

    if logging.getLevelName(loglevel.upper()) == logging.INFO:
        # Celery's two INFO lines per message ("received", "succeeded") only say that an id was
        # handed to the runner; at DEBUG they stay.
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    stopped_by: list[str] = []

    def note_shutdown(sender: Any = None, sig: str = "", **_kw: Any) -> None:
        stopped_by.append(sig)

    signals.worker_ready.connect(start_relay, weak=False)
    signals.worker_shutting_down.connect(note_shutdown, weak=False)
    worker = app.Worker(
        hostname=f"culm-{os.getpid()}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        queues=queues,
        concurrency=concurrency or default_concurrency(),
        pool_cls=pool or "prefork",
        loglevel=loglevel,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    try:
        worker.start()
    finally:
        for relay in relays:
            relay.stop()
        signals.worker_ready.disconnect(start_relay)
        signals.worker_shutting_down.disconnect(note_shutdown)
    if "SIGINT" in stopped_by:
        # Celery stops warmly on Ctrl-C and returns: say it was interrupted (`culm worker` exits 130
        # as every culm command does; SIGTERM stays a normal stop, exit 0, as process managers expect).
        raise KeyboardInterrupt
