"""Runtime: the object users create. It binds a store, a dispatcher and the engine together.

It is the one place that wires them: :class:`Runtime` for a process that submits (and, embedded,
runs) work, :class:`WorkerWiring` for each process of a ``culm worker`` (``culm.dispatch.celery.run_worker``
takes it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from culm._printable import engine_logger
from culm.core import commands
from culm.core.engine import Engine
from culm.core.plugin_imports import env_modules, import_modules
from culm.core.ports import Dispatcher, Store, WorkerRegistry
from culm.core.records import StateChange
from culm.core.settings import Settings, process_settings
from culm.errors import CulmError, InvalidOperationError, PluginImportError
from culm.storage.memory import URL as MEMORY_URL
from culm.storage.memory import MemoryStore
from culm.storage.sql import SqlStore

if TYPE_CHECKING:
    from culm.dispatch.runner import WorkerRunner
    from culm.dispatch.threads import ThreadDispatcher
    from culm.storage.gauges import WorkGauges
    from culm.storage.tokens import SqlTokenTable

logger = engine_logger("culm.runtime")

DEFAULT_URL = "sqlite:///culm.db"
# How often a process without the runner lock of its SQLite file tries to take it.
STANDBY_SECONDS = 0.5


class Runtime:
    """A culm runtime.

    ``Runtime()`` is embedded: a SQLite file (``$CULM_DATABASE_URL`` or ``./culm.db``) and worker
    threads in this process. ``Runtime("postgresql://...", broker="redis://...")`` is distributed:
    work goes to Celery and ``culm worker`` processes run it. ``Runtime("memory://")`` keeps
    everything in this process's memory (:mod:`culm.storage.memory`): for tests and experiments,
    nothing survives the runtime.

    Embedded runtimes of one process on one SQLite file (with the default workers and settings)
    share one set of worker threads and connections: bamboo's guides create a runtime wherever
    they need one (``api.get_pipeline_states(BambooDjangoRuntime(), ...)``), and each must not
    start workers of its own. They stop when the last of them is closed (or with the process).

    Args:
        url: SQLAlchemy-style database URL, or ``memory://``.
        broker: Celery broker URL; when given, this runtime only submits and reads.
        workers: worker threads of an embedded runtime (0 = submit and read only).
        settings: engine settings; default: the process's (:func:`culm.configure`, ``$CULM_*``).
        options: the Celery publisher's (``prefix``, ``max_countdown``, ...), only with ``broker``;
            without one, any is a TypeError naming it.

    An embedded runtime with worker threads imports the modules named in ``$CULM_IMPORTS`` first, as ``culm worker``
    does (one it cannot import is a ``RuntimeWarning`` naming it: the process may define its
    plugins itself, say when the variable was set for its workers).
    """

    def __init__(
        self,
        url: str | None = None,
        broker: str | None = None,
        *,
        workers: int | None = None,
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        if options and not broker:
            # They are the Celery publisher's (prefix, max_countdown, ...): without a broker none is
            # used, and a misspelt argument (db=...) would open ./culm.db without a word.
            names = ", ".join(sorted(options))
            raise TypeError(f"Runtime() got unexpected keyword argument(s) {names}: keyword options other than "
                            "workers and settings go to the Celery publisher and are taken only with broker=; "
                            "the database URL is the first argument (culm.Runtime('sqlite:///path/to.db'))")
        self.url = url or os.environ.get("CULM_DATABASE_URL") or DEFAULT_URL
        self.broker = broker
        self.options = options
        if broker and self.url == MEMORY_URL:
            raise InvalidOperationError("Runtime(\"memory://\") keeps its data in this process: workers behind a "
                                        f"broker ({broker}) cannot reach it; use a database URL")
        if broker and settings is not None:
            _warn_local_settings(settings)
        self._closed = False
        self._key = _shared_key(self.url, broker, workers, settings)
        with _SHARED_LOCK:
            core = _SHARED.get(self._key) if self._key is not None else None
            if core is None:
                core = _Core(self.url, broker, workers, settings, options)
                if self._key is not None:
                    _SHARED[self._key] = core
            core.handles += 1
        self._core = core
        self.store: Any = core.store
        self.engine: Engine = core.engine

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (API calls on it are then refused)."""
        return self._closed

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The worker threads (embedded, once this process runs the file's work) or the Celery
        publisher; None while another process runs the work (this one stands by)."""
        return self._core.dispatcher

    @property
    def embedded(self) -> bool:
        return not self.broker

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Embedded only: wait until every queued and timed task has run (True) or time is up."""
        if self.dispatcher is None:
            return True
        return self.dispatcher.wait_idle(timeout)

    def update_node_loop_times(self, node_id: str, loop_times: int) -> None:
        """Change the iteration count of a node loop, as bamboo's runtime method of that name
        (also :func:`culm.api.update_node_loop_times`, which returns a refusal instead of raising).

        Raises:
            NotFoundError: no stored run has that node.
            InvalidOperationError: ``loop_times`` is not a non-negative integer, or the node has
                no enabled ``loop_config``.
        """
        if not isinstance(node_id, str):
            raise InvalidOperationError(f"node_id must be a string, got {node_id!r}")
        commands.update_node_loop_times(self.engine, node_id, loop_times)

    # -- the change feed (culm.storage.feed) --------------------------------------------------
    def changes(
        self, root_id: str | None = None, after: int = 0, timeout: float | None = None
    ) -> Iterator[StateChange]:
        """Every state change with ``seq`` > ``after`` (of one root pipeline when ``root_id``),
        oldest first, waiting for new ones until ``timeout`` seconds have passed since the call
        (None: forever); then the iterator ends.

        Works across processes: the changes are rows the writers commit with their state writes.
        Start from ``last_change_seq()`` to see only what happens from now on.
        """
        return self.store.feed.changes(root_id, after, timeout)

    def last_change_seq(self) -> int:
        """The ``seq`` of the newest state change recorded (0 when none).

        On PostgreSQL and MySQL a change committed a moment later may still carry a lower seq (two
        workers committing the other way round), so ``changes(after=last_change_seq())`` can miss
        such a change: ``wait`` re-reads the pipeline's state to cover it; a watcher that must not
        miss one reads the states once after it starts following.
        """
        return self.store.feed.last_seq()

    def wait(self, pipeline_id: str, timeout: float | None = None) -> str:
        """Block until the pipeline is FINISHED or REVOKED and return that state.

        The better alternative to polling ``get_pipeline_states``: it wakes on the pipeline's own
        state changes instead of reading its whole tree again and again.

        Raises:
            NotFoundError: no pipeline has that id.
            TimeoutError: the pipeline is still not FINISHED or REVOKED after ``timeout`` seconds.
        """
        return self.store.feed.wait(pipeline_id, timeout)

    def prune_changes(self, older_than: float) -> int:
        """Delete the recorded state changes older than ``older_than`` seconds of pipelines that
        are FINISHED or REVOKED; returns how many were deleted. Run it now and then (a cron job,
        ``culm`` maintenance) to keep the feed's table small."""
        return self.store.feed.prune(older_than)

    # -- what `culm serve` reads and keeps next to the engine's tables --------------------------
    def token_table(self) -> SqlTokenTable:
        """The rows of ``culm serve``'s API tokens in this runtime's database: the service and the
        ``culm token`` commands both keep them here (:mod:`culm.web.tokens` decides what a token is).

        Raises:
            InvalidOperationError: the runtime keeps its data in memory (``memory://``).
        """
        from culm.storage.tokens import SqlTokenTable

        return SqlTokenTable(self._database_engine("API tokens"))

    def work_gauges(self) -> WorkGauges:
        """How much work the database holds now (queued tasks, running processes, open schedules):
        what ``culm serve``'s ``/metrics`` reports.

        Raises:
            InvalidOperationError: the runtime keeps its data in memory (``memory://``).
        """
        from culm.storage.gauges import read_work_gauges

        return read_work_gauges(self._database_engine("the work gauges"), time.time())

    def database_problem(self, exc: BaseException) -> CulmError | None:
        """What ``exc``, raised by a call on this runtime, says is wrong with its database, as an
        error naming the cause and the fix (a culm table missing: :class:`SchemaMissingError`),
        or None when it says nothing such."""
        if isinstance(self.store, MemoryStore):
            return None
        from culm.storage.migrate import schema_missing_error

        return schema_missing_error(self.store, exc)

    def _database_engine(self, what: str) -> Any:
        if isinstance(self.store, MemoryStore):
            raise InvalidOperationError(f"{what} live in a database; {self!r} keeps its data in memory")
        return self.store.engine

    def close(self) -> None:
        """Stop this runtime's threads, then close its database connections (those it shares
        with other embedded runtimes of this process: when the last of them is closed)."""
        with _SHARED_LOCK:
            if self._closed:
                return
            self._closed = True
            self._core.handles -= 1
            last = self._core.handles == 0
            if last and self._key is not None and _SHARED.get(self._key) is self._core:
                del _SHARED[self._key]
        if last:
            self._core.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = f"broker={_hide_password(self.broker)!r}" if self.broker else "embedded"
        if isinstance(self.store, MemoryStore):
            return f"Runtime({self.store.url!r}, {mode})"
        url = self.store.engine.url
        shown = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite":  # a file path as given: `:memory:`, not `%3Amemory%3A`
            shown = urllib.parse.unquote(shown)
        return f"Runtime({shown!r}, {mode})"


def _hide_password(url: str) -> str:
    """``amqp://guest:***@host//``: a broker URL as it may be shown (printed, logged)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# Embedded runtimes of this process that share their workers, by database file (see Runtime).
_SHARED: dict[tuple[str, int | None, tuple[tuple[str, str], ...]], _Core] = {}
_SHARED_LOCK = threading.Lock()


# The settings the workers read when they run the work (not this process's, when it only submits).
WORKER_SETTINGS = ("rerun_limit", "gateway_strategy", "expr_func", "render_nested_objects")


def _warn_local_settings(settings: Settings) -> None:
    """Say so when ``settings`` given to a distributed runtime differ from the process's defaults
    where only the workers act on them: silently, the workers would run with their own."""
    defaults = process_settings()
    differ = [name for name in WORKER_SETTINGS if getattr(settings, name) != getattr(defaults, name)]
    if differ:
        message = (f"culm.Runtime(..., broker=..., settings=...): {', '.join(differ)} apply to this process only "
                   "(preview_node_inputs); the `culm worker` processes run the work with their own: set them with "
                   "culm.configure(...) in a module of $CULM_IMPORTS, or CULM_* variables, where the workers run")
        logger.warning("%s", message)
        warnings.warn(message, UserWarning, stacklevel=3)


def _shared_key(url: str, broker: str | None, workers: int | None, settings: Settings | None
                ) -> tuple[str, int | None, tuple[tuple[str, str], ...]] | None:
    """The key under which embedded runtimes share a core: file-backed SQLite only (a database in
    memory, ``memory://`` or a server database keeps one core per runtime), default settings, and
    workers (a submit-only runtime, ``workers=0``, has nothing to share)."""
    if broker or settings is not None or workers == 0 or not url.startswith("sqlite"):
        return None
    from culm.storage.sqlite_url import parse_sqlite_url

    try:
        parsed = parse_sqlite_url(url)
    except ValueError:
        return None  # the store refuses it, saying why
    if parsed.path is None:
        return None
    # The same file with other parameters (read-only, another busy timeout) is another core.
    return os.path.realpath(parsed.path), workers, tuple(sorted(parsed.query.items()))


class _Core:
    """A runtime's store, engine and dispatcher, and (embedded) its hold on the runner lock."""

    def __init__(self, url: str, broker: str | None, workers: int | None, settings: Settings | None,
                 options: dict[str, Any]) -> None:
        self.handles = 0
        if not broker and workers != 0:
            # Its threads run the work, as a `culm worker` does: they load the same plugins (and
            # the culm.configure calls in them), before anything is opened. A module that cannot
            # be imported is said, not raised: the process may have defined its plugins itself
            # (the variable set for its workers), and a node needing a missing one fails naming it.
            try:
                import_modules(env_modules())
            except PluginImportError as exc:
                message = f"culm.Runtime: {exc}; going on without it"
                logger.warning("%s", message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)
        process_settings()  # a bad $CULM_* value is refused before anything opens
        self.store: Any = MemoryStore() if url == MEMORY_URL else SqlStore(url)
        self._lock_file: Any = None
        self._closed = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._standby: threading.Thread | None = None
        if broker:
            from culm.dispatch.publisher import LazyCeleryDispatcher

            publisher = LazyCeleryDispatcher(broker, **options)
            self.dispatcher: Dispatcher | None = publisher
            self.engine = Engine(self.store, publisher, settings)
            publisher.bind(self.engine)
        else:
            self._workers = 8 if workers is None else workers
            threads = self._runner() if self._workers > 0 and self._take_runner_lock() else None
            self.dispatcher = threads
            self.engine = Engine(self.store, threads, settings)
            if threads is not None:
                threads.start(self.engine)
            elif self._workers > 0:
                self._standby = threading.Thread(target=self._stand_by, name="culm-standby", daemon=True)
                self._standby.start()

    def _take_runner_lock(self, *, quiet: bool = False) -> bool:
        """Only one process runs the workers of a SQLite file; the lock dies with the process (a
        process that wanted workers and did not get the lock stands by for it, see _stand_by)."""
        path = self.store.database_file
        if path is None:
            return True
        handle = open(path + ".runner-lock", "a+")  # noqa: SIM115 - held for the runtime's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            if not quiet:
                logger.info("another process runs the workers of %s; this runtime submits and reads "
                            "until that process exits", path)
            return False
        self._lock_file = handle
        return True

    def _runner(self) -> ThreadDispatcher:
        from culm.dispatch.threads import ThreadDispatcher

        # The engine may keep copies of its rows only where the runner lock makes it the sole
        # runner: a SQLite database. A server database can have several runners (embedded ones,
        # `culm worker`s): none voids the others' leases, and each keeps its own.
        from culm.storage.cache import RecordCache

        shared = isinstance(self.store, SqlStore) and not self.store.keeps_copies  # a server database
        return ThreadDispatcher(self._workers, cache=RecordCache() if self.store.keeps_copies else None,
                                beside_others=shared)

    def _stand_by(self) -> None:
        """Another process runs the work of this SQLite file: take the runner lock once it lets go
        (it exited or was killed) and run the work from then on."""
        while not self._stop.wait(STANDBY_SECONDS):
            with self._guard:
                if self._closed or not self._take_runner_lock(quiet=True):
                    continue
                dispatcher = self._runner()
                self.dispatcher = dispatcher
                self.engine.dispatcher = dispatcher
                dispatcher.start(self.engine)  # the sweep takes over what the old runner left
            logger.info("took over the workers of %s", self.store.database_file)
            return

    def close(self) -> None:
        self._stop.set()
        with self._guard:
            if self._closed:
                return
            self._closed = True
        if self._standby is not None:
            self._standby.join()
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.store.dispose()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


class WorkerWiring:
    """The store and engine of each ``culm worker`` process (``culm.dispatch.celery.WorkerWiring``).

    The Celery worker builds them once per pool process, after the fork: a fresh store on the
    database, and an engine whose dispatcher is the process's :class:`~culm.dispatch.runner.WorkerRunner`.
    """

    def import_plugins(self, modules: Iterable[str]) -> list[str]:
        return import_modules([*modules, *env_modules()], source="--import or $CULM_IMPORTS")

    def check(self, db: str) -> None:
        process_settings()  # a bad $CULM_* setting stops the worker here, not in each pool process
        store = SqlStore(db)  # opening it refuses an outdated schema
        try:
            if not store.traits.migrates_at_open:
                from culm.storage.migrate import check_tables

                check_tables(store)  # and one at head with a table dropped: one clear error, not a spin
        finally:
            store.dispose()

    def build(self, db: str, runner: WorkerRunner, lease_seconds: float) -> tuple[Store, Engine, WorkerRegistry]:
        store = SqlStore(db)
        # The process's defaults: what a module of $CULM_IMPORTS gave culm.configure (imported
        # before the pool forks) or the CULM_* variables; the leases are the worker's own.
        settings = dataclasses.replace(process_settings(), lease_seconds=lease_seconds,
                                       schedule_lock_seconds=lease_seconds)
        return store, Engine(store, runner, settings), store.worker_registry()

    def after_fork(self, store: Store) -> None:
        if isinstance(store, SqlStore):
            store.forget_inherited_connections()  # the parent still uses them: forget, do not close
