"""The services integration tests run against: server databases, brokers and ``culm worker`` processes.

* :func:`create_database` / :func:`drop_database`: an empty PostgreSQL or MariaDB database of its own.
* :func:`embedded_runtime_on`: a runtime with no worker threads on a new SQLite file or a new,
  migrated server database, dropped afterwards (tests that drive the engine's steps themselves).
* :class:`DistributedBackend`: a freshly created and migrated database, a private queue prefix on
  the broker, and running worker processes (short leases, fast relay); :class:`BackendPool` keeps
  one per kind (:data:`BACKENDS`) for a test session. The fixtures over them are in ``conftest.py``.
* :class:`HarnessBackend`: workers started as the acceptance harness starts them (``culm worker --db
  URL --broker URL``, plugins from ``$CULM_IMPORTS`` only), on a broker of their own; with
  ``CULM_TEST_HARNESS_WORKERS=1`` the pool's backends are of this kind, so that any distributed test
  runs against such workers.
* :func:`unavailable`: skip on a developer machine, FAIL in CI (``CI=true``), where every backend
  must be tested.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from support import wait_until
from worker_guard import SESSION, kill_marked_workers

import culm
from culm.storage import migrate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

PG_ADMIN = os.environ.get("CULM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("CULM_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS = os.environ.get("CULM_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("CULM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")

# Short leases and a fast relay, so that a killed worker's tasks are taken over within seconds.
# CULM_TEST_LEASE_SECONDS etc. shorten them further: a stress run where leases run out often and
# tasks are taken over while their first runner still holds them.
WORKER_ENV = {
    "CULM_LEASE_SECONDS": os.environ.get("CULM_TEST_LEASE_SECONDS", "3"),
    "CULM_RELAY_INTERVAL": os.environ.get("CULM_TEST_RELAY_INTERVAL", "0.5"),
    "CULM_RELAY_GRACE": os.environ.get("CULM_TEST_RELAY_GRACE", "2"),
    "CULM_IMPORTS": "culm_dist_components,components,bamboo_style_components,bamboo_suite_components,"
                    "storm_components,bamboo_atom_components",
}


def unavailable(message: str) -> None:
    """Skip on a developer machine; fail in CI, where every backend must be tested."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} (CI must test every backend; start the service)")
    pytest.skip(message)


def reachable(url_host: str, port: int) -> bool:
    try:
        with socket.create_connection((url_host, port), timeout=1):
            return True
    except OSError:
        return False


# -- databases ----------------------------------------------------------------------------------


def create_database(kind: str) -> str:
    """Create an empty database ``culm_test_<random>``; returns its URL (skips if unreachable).

    ``kind``: "postgres", "mariadb" (the driver of ``CULM_TEST_MYSQL``, PyMySQL by default) or
    "mysqlclient" (MariaDB through the C driver, ``culm[mysqlclient]``)."""
    if kind == "mysqlclient":
        from culm.storage.sql.base import mysql_driver

        if mysql_driver() != "mysqldb":
            unavailable("mysqlclient >= 2.2 is not installed (pip install 'culm[mysqlclient]')")
    admin = PG_ADMIN if kind == "postgres" else MY_ADMIN
    name = f"culm_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001
        unavailable(f"{kind} is not available: {exc}")
    finally:
        engine.dispose()
    base = engine.url.set(database=name)
    if kind != "postgres":
        base = base.update_query_dict({"charset": "utf8mb4"})
    if kind == "mysqlclient":
        base = base.set(drivername="mysql+mysqldb")
    return base.render_as_string(hide_password=False)


def fresh_store(kind: str) -> Iterator[Any]:
    """A fixture's body: a SqlStore on a new migrated database of ``kind`` (as
    :func:`create_database`), disposed and dropped after."""
    from culm.storage.migrate import upgrade_database
    from culm.storage.sql import SqlStore

    url = create_database(kind)
    upgrade_database(url)
    store = SqlStore(url)
    yield store
    store.dispose()
    drop_database(url)


def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database` (closing other sessions on PostgreSQL)."""
    from sqlalchemy.engine import make_url

    target = make_url(url)
    postgres = target.get_backend_name() == "postgresql"
    engine = create_engine(PG_ADMIN if postgres else MY_ADMIN, isolation_level="AUTOCOMMIT")
    force = " WITH (FORCE)" if postgres else ""
    try:
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {target.database}{force}"))
    finally:
        engine.dispose()


# -- workers ------------------------------------------------------------------------------------


class DistributedBackend:
    """A database, a broker and ``culm worker`` processes for one test session."""

    def __init__(self, name: str, db_kind: str, broker_url: str, workdir: Path,
                 env: dict[str, str | None] | None = None) -> None:
        """``env``: worker environment variables to set over ``WORKER_ENV`` (None: unset, so the
        worker uses its default)."""
        self.name = name
        self.env = env or {}
        self.db_kind = db_kind
        self.broker_url = broker_url
        self.workdir = workdir
        self.prefix = f"culmt{uuid.uuid4().hex[:8]}"
        self.exec_log = workdir / "executions.log"
        self.exec_log.touch()
        self.db_url = ""
        self.workers: list[subprocess.Popen[bytes] | None] = []
        self.concurrency = 2  # pool processes per worker
        self._runtimes: list[culm.Runtime] = []

    # lifecycle
    def setup(self) -> None:
        self.db_url = create_database(self.db_kind)
        migrate.upgrade_database(self.db_url)

    def teardown(self) -> None:
        """Stop the workers whatever else fails (a runtime that will not close, a pytest timeout
        or Ctrl-C in the middle): a worker left running outlives the session (``worker_guard``).
        ``CULM_TEST_KEEP_DB=1`` keeps the database for inspection (its URL is printed; drop it yourself)."""
        try:
            for rt in self._runtimes:
                rt.close()
        finally:
            try:
                self.stop_workers()
            finally:
                self._delete_queues()
                if self.db_url and os.environ.get("CULM_TEST_KEEP_DB"):
                    print(f"\nCULM_TEST_KEEP_DB: kept {self.db_url} (drop it yourself)", flush=True)
                elif self.db_url:
                    drop_database(self.db_url)

    def runtime(self, **options: Any) -> culm.Runtime:
        """A submitting runtime on this backend (closed at teardown)."""
        rt = culm.Runtime(self.db_url, broker=self.broker_url, prefix=self.prefix, **options)
        self._runtimes.append(rt)
        return rt

    # workers
    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "culm", "worker", "--db", self.db_url, "--broker", self.broker_url,
            "--prefix", self.prefix, "--concurrency", str(self.concurrency), "--loglevel", "INFO",
        ]

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ, **WORKER_ENV)
        for key, value in self.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["CULM_TEST_EXEC_LOG"] = str(self.exec_log)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
        return env

    def start_workers(self, n: int, timeout: float = 30.0, wrapper: tuple[str, ...] = ()) -> list[int]:
        """Start ``n`` more workers and wait until each is ready; returns their indexes.

        ``wrapper``: a command the worker runs under (e.g. ``unshare`` into a PID namespace of its
        own, so that the other workers cannot see its processes, as if it ran on another host)."""
        started = []
        for _ in range(n):
            index = len(self.workers)
            log = open(self.workdir / f"worker-{index}.log", "wb")  # noqa: SIM115 - owned by the child
            proc = subprocess.Popen(
                [*_dies_with_this_process(), *wrapper, *self.worker_command()], cwd=REPO, env=self.worker_env(),
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill_worker takes the pool children too
            )
            log.close()
            self.workers.append(proc)
            started.append(index)
        for index in started:
            wait_until(lambda i=index: self._ready(i), timeout, 0.1, what=f"worker {index} to be ready")
        return started

    def _ready(self, index: int) -> bool:
        proc = self.workers[index]
        text_ = (self.workdir / f"worker-{index}.log").read_text(errors="replace")
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker {index} exited with {proc.returncode}:\n{text_[-3000:]}")
        return " ready." in text_

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.workers) if p is not None and p.poll() is None]

    def ensure_workers(self, n: int) -> None:
        missing = n - len(self.alive())
        if missing > 0:
            self.start_workers(missing)

    def kill_worker(self, index: int) -> None:
        """``kill -9`` a worker and its pool children, as a crash or OOM kill would."""
        proc = self.workers[index]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.workers[index] = None

    def stop_worker(self, index: int, timeout: float = 60.0) -> None:
        """Warm shutdown of one worker: ``SIGTERM`` to its main process only, as a service manager
        stopping its main PID would send; waits until it has exited."""
        proc = self.workers[index]
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
        self.workers[index] = None

    def stop_workers(self, timeout: float = 15.0) -> None:
        """A warm shutdown (SIGTERM to each worker's process group), then SIGKILL for whatever is
        left after ``timeout``, or as soon as the wait is cut short (a pytest timeout, Ctrl-C): every
        process of this backend's workers is gone when it returns or raises."""
        procs = [proc for proc in self.workers if proc is not None]
        try:
            for proc in procs:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
        finally:
            for proc in procs:
                _signal_group(proc, signal.SIGKILL)
            # Pool processes whose main process exited (and was reaped: its group id may be
            # another process's by now) are found by the session's mark and this prefix.
            kill_marked_workers(SESSION, self.prefix)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            self.workers = [None for _ in self.workers]

    def worker_log(self, index: int) -> str:
        return (self.workdir / f"worker-{index}.log").read_text(errors="replace")

    # observations
    def executions(self, kind: str = "execute") -> collections.Counter[str]:
        """How many times each node ran ``kind`` (execute, poll, callback) in any worker."""
        counts: collections.Counter[str] = collections.Counter()
        # Whole lines only: a worker may be writing the last one as it is read.
        for line in self.exec_log.read_text().split("\n")[:-1]:
            k, node_id, *_ = line.split()
            if k == kind:
                counts[node_id] += 1
        return counts

    def _delete_queues(self) -> None:
        from culm.dispatch.celery import delete_queues

        delete_queues(self.broker_url, self.prefix)


class HarnessBackend(DistributedBackend):
    """``culm worker --db URL --broker URL``: default queue names and concurrency, plugins from
    ``$CULM_IMPORTS`` only. Default queue names are shared by every deployment on a broker, so this
    backend gets a broker of its own: a fresh RabbitMQ virtual host, or a Redis database number."""

    def __init__(self, name: str, db_kind: str, broker_url: str, workdir: Path,
                 imports: str = WORKER_ENV["CULM_IMPORTS"]) -> None:
        super().__init__(name, db_kind, broker_url, workdir)
        self.imports = imports
        self.vhost = ""
        self.signal_log = workdir / "signals.jsonl"

    def setup(self) -> None:
        if self.broker_url.startswith("amqp"):
            self.vhost = f"culm_contract_{uuid.uuid4().hex[:8]}"
            for args in (["add_vhost", self.vhost], ["set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"]):
                subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)
            self.broker_url = f"{AMQP.rstrip('/')}/{self.vhost}"
        else:
            self.broker_url = _claim_redis_database()
        self.prefix = self.broker_url  # stop_workers finds pool processes by this word of their argv
        super().setup()
        # The URLs as the contract writes them: postgresql://, mysql://, no driver named.
        scheme, rest = self.db_url.split("://", 1)
        self.db_url = f"{scheme.split('+')[0].replace('mariadb', 'mysql')}://{rest}"

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "culm", "worker", "--db", self.db_url, "--broker", self.broker_url]

    def worker_env(self) -> dict[str, str]:
        # The harness's environment: no culm setting of ours (leases, relay), only the test plugins'.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_") or k.startswith("CULM_TEST_")}
        env["CULM_IMPORTS"] = self.imports
        env["CULM_TEST_EXEC_LOG"] = str(self.exec_log)
        env["CULM_CONTRACT_SIGNAL_LOG"] = str(self.signal_log)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO)])
        return env

    def runtime(self, **options: Any) -> culm.Runtime:
        rt = culm.Runtime(self.db_url, broker=self.broker_url, **options)
        self._runtimes.append(rt)
        return rt

    def _delete_queues(self) -> None:
        if self.vhost:
            subprocess.run(["rabbitmqctl", "delete_vhost", self.vhost], capture_output=True, timeout=60)
        else:
            import redis

            redis.Redis.from_url(self.broker_url).flushdb()


def _claim_redis_database() -> str:
    """A Redis database (of 4..15) that no other harness backend holds: a claim key set if absent
    (expiring, should a session die without its teardown); the teardown empties the database."""
    import redis

    base = REDIS.rsplit("/", 1)[0]
    for number in range(15, 3, -1):
        url = f"{base}/{number}"
        if redis.Redis.from_url(url).set("culm-harness-claim", SESSION, nx=True, ex=3600):
            return url
    raise AssertionError("every Redis database 4..15 is claimed by another harness backend")


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to a worker's process group, while its main process is not reaped yet (the
    group id is its pid, which cannot be taken by another process until then)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def _dies_with_this_process() -> tuple[str, ...]:
    """A command prefix that kills the worker when this process dies, however it dies (SIGKILL,
    ``os._exit``): no teardown runs then. Only from the main thread: the kernel's signal follows
    the thread that started the child, and a helper thread's end would kill the worker."""
    if threading.current_thread() is not threading.main_thread() or not shutil.which("setpriv"):
        return ()
    return ("setpriv", "--pdeathsig", "KILL")


BACKENDS = {
    "postgres-redis": ("postgres", REDIS, ("127.0.0.1", 5432), ("127.0.0.1", 6379)),
    "mariadb-rabbitmq": ("mariadb", AMQP, ("127.0.0.1", 3306), ("127.0.0.1", 5672)),
}
# Backends only some tests ask for (own_backend): MariaDB through the C driver (culm[mysqlclient]).
OWN_BACKENDS = {**BACKENDS, "mysqlclient-redis": ("mysqlclient", REDIS, ("127.0.0.1", 3306), ("127.0.0.1", 6379))}


@contextmanager
def embedded_runtime_on(kind: str, sqlite_file: Path) -> Iterator[culm.Runtime]:
    """A ``Runtime(..., workers=0)`` on ``sqlite_file`` (kind ``"sqlite"``) or on a new, migrated
    PostgreSQL/MariaDB database (``"postgres"`` / ``"mariadb"``) that is dropped afterwards."""
    url = f"sqlite:///{sqlite_file}" if kind == "sqlite" else create_database(kind)
    try:
        if kind != "sqlite":
            migrate.upgrade_database(url)
        with culm.Runtime(url, workers=0) as rt:
            yield rt
    finally:
        if kind != "sqlite":
            drop_database(url)


def own_backend(name: str, workdir: Path, env: dict[str, str | None] | None = None) -> DistributedBackend:
    """A backend of its own (database, queue prefix, no workers yet) for a test that needs workers
    set up unlike the session's; the caller tears it down. Skips (fails in CI) when unreachable."""
    db_kind, broker, db_addr, broker_addr = OWN_BACKENDS[name]
    for host, port in (db_addr, broker_addr):
        if not reachable(host, port):
            unavailable(f"{name}: nothing listens on {host}:{port}")
    backend = DistributedBackend(name, db_kind, broker, workdir, env)
    backend.setup()
    return backend


class BackendPool:
    """One DistributedBackend per kind for the whole session, started on first use."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.backends: dict[str, DistributedBackend] = {}
        self.shared: dict[str, culm.Runtime] = {}

    def get(self, name: str) -> DistributedBackend:
        if name not in self.backends:
            db_kind, broker, db_addr, broker_addr = BACKENDS[name]
            for host, port in (db_addr, broker_addr):
                if not reachable(host, port):
                    unavailable(f"{name}: nothing listens on {host}:{port}")
            kind = HarnessBackend if os.environ.get("CULM_TEST_HARNESS_WORKERS") else DistributedBackend
            backend = kind(name, db_kind, broker, self.tmp_path_factory.mktemp(name))
            self.backends[name] = backend
            backend.setup()
            backend.start_workers(2)
        return self.backends[name]

    def shared_runtime(self, name: str) -> culm.Runtime:
        """One submitting runtime per backend, shared by the engine tests."""
        if name not in self.shared:
            self.shared[name] = self.get(name).runtime()
        return self.shared[name]

    def close(self) -> None:
        """Tear every backend down, even when one's teardown fails (the first failure is raised
        after all have been torn down)."""
        failures: list[BaseException] = []
        for backend in self.backends.values():
            try:
                backend.teardown()
            except BaseException as exc:  # noqa: BLE001 - a KeyboardInterrupt must not skip the others
                failures.append(exc)
        if failures:
            raise failures[0]
