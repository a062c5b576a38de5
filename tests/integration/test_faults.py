"""Real faults under the distributed runtime: a broker restart and dropped database connections.

Nothing is mocked: Redis is really shut down and started again, PostgreSQL / MariaDB sessions are
really terminated from an admin connection, while real ``culm worker`` processes run a pipeline.

These tests use backends of their own (a fresh database, a private queue prefix and two workers
per backend, module scope), built from :class:`conftest.DistributedBackend` with the same short
leases and fast relay as the shared fixture, whose workers also import ``culm_fault_components``.
Faults are therefore never injected into the session-wide ``distributed_backend`` database; the
Redis restart does cut every client of the local Redis (the shared workers reconnect like ours), so
the tests that restart it are ``exclusive``: no other test runs meanwhile (``tests/parallel.py``).

Every service a test stops is started again in a ``finally`` block, even when the test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import celery
import culm_dist_components  # noqa: F401 - registers dist_sleep in the test process
import culm_fault_components  # noqa: F401 - registers fault_interval_poll in the test process
import pytest
from backends import BACKENDS, MY_ADMIN, PG_ADMIN, REDIS, DistributedBackend, unavailable
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import wait_until

from culm import api
from culm.builder import EmptyEndEvent, EmptyStartEvent, ServiceActivity, Var, build_tree

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]


# -- backends -----------------------------------------------------------------------------------


class FaultBackend(DistributedBackend):
    """A DistributedBackend whose workers also import ``culm_fault_components``."""

    def worker_env(self) -> dict[str, str]:
        env = super().worker_env()
        env["CULM_IMPORTS"] = ",".join(filter(None, [env.get("CULM_IMPORTS", ""), "culm_fault_components"]))
        return env


class FaultBackends:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.backends: dict[str, FaultBackend] = {}

    def get(self, name: str) -> FaultBackend:
        if name not in self.backends:
            db_kind, broker, db_addr, broker_addr = BACKENDS[name]
            for host, port in (db_addr, broker_addr):
                if not _reachable(host, port):
                    unavailable(f"{name}: nothing listens on {host}:{port}")
            backend = FaultBackend(name, db_kind, broker, self.tmp_path_factory.mktemp(f"faults-{name}"))
            self.backends[name] = backend
            backend.setup()
            backend.start_workers(2)
        backend = self.backends[name]
        backend.ensure_workers(2)
        return backend

    def close(self) -> None:
        for backend in self.backends.values():
            backend.teardown()


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def fault_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultBackends]:
    pool = FaultBackends(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


# -- pipelines ----------------------------------------------------------------------------------


def chain_tree(acts: list[ServiceActivity]) -> dict[str, Any]:
    node: Any = EmptyStartEvent()
    start = node
    for act in acts:
        node = node.extend(act)
    node.extend(EmptyEndEvent())
    return build_tree(start)


def sleep_activity(seconds: float) -> ServiceActivity:
    act = ServiceActivity(component_code="dist_sleep")
    act.component.inputs.seconds = Var(type=Var.PLAIN, value=seconds)
    return act


def poll_activity(polls: int) -> ServiceActivity:
    act = ServiceActivity(component_code="fault_interval_poll")
    act.component.inputs.polls = Var(type=Var.PLAIN, value=polls)
    return act


def states(rt: Any, root_id: str) -> dict[str, Any]:
    """The pipeline's states; {} when the read itself hit the fault (the caller polls again)."""
    res = api.get_pipeline_states(rt, root_id)
    return res.data.get(root_id, {}) if res.result else {}


def wait_finished(rt: Any, root_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = states(rt, root_id)
        return st if st.get("state") == "FINISHED" else None

    try:
        return wait_until(done, timeout, 0.2, what=f"pipeline {root_id} to finish")
    except AssertionError:
        st = states(rt, root_id)
        summary = {k: v["state"] for k, v in st.get("children", {}).items()}
        raise AssertionError(f"pipeline {root_id} is {st.get('state')}; nodes: {summary}") from None


def assert_finished_once(rt: Any, st: dict[str, Any], node_ids: list[str]) -> None:
    """Every node FINISHED in its first loop and was never re-entered (no history)."""
    for node_id in node_ids:
        assert st["children"][node_id]["state"] == "FINISHED", (node_id, st["children"][node_id])
        assert st["children"][node_id]["loop"] == 1, (node_id, st["children"][node_id])
        histories = api.get_node_histories(rt, node_id)
        assert histories.result, histories.message
        assert histories.data == [], (node_id, histories.data)


# -- Redis --------------------------------------------------------------------------------------


def redis_ping() -> bool:
    try:
        out = subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and out.stdout.strip() == "PONG"


@contextlib.contextmanager
def redis_stopped() -> Iterator[None]:
    """Shut the local Redis down (without saving); always start it again on the way out."""
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=10)
    try:
        wait_until(lambda: not redis_ping(), 15, 0.1, what="redis to stop")
        yield
    finally:
        if not redis_ping():
            subprocess.run(REDIS_START, check=True, capture_output=True, timeout=30)
        wait_until(redis_ping, 30, 0.1, what="redis to answer PING again")


def _redis_restartable() -> None:
    url = make_url(REDIS)
    if (url.host, url.port or 6379) not in (("127.0.0.1", 6379), ("localhost", 6379)):
        pytest.skip(f"the Redis restart test restarts the local Redis on 6379, not {REDIS}")
    for tool in ("redis-cli", "redis-server"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed: cannot restart Redis")


def broker_lost(backend: DistributedBackend, index: int, before: int) -> bool:
    return backend.worker_log(index).count("Connection to broker lost") > before


def lost_counts(backend: DistributedBackend) -> dict[int, int]:
    return {i: backend.worker_log(i).count("Connection to broker lost") for i in backend.alive()}


def reconnected_or_dead(backend: DistributedBackend, index: int, before: int) -> bool:
    proc = backend.workers[index]
    if proc is None or proc.poll() is not None:
        return True
    return backend.worker_log(index).count("Connected to redis://") > before


def wait_reconnected(backend: DistributedBackend, workers: list[int], connected_before: dict[int, int]) -> None:
    for i in workers:
        wait_until(lambda i=i: reconnected_or_dead(backend, i, connected_before[i]), 30, 0.1,
                   what=f"worker {i} to reconnect to the broker (or exit)")


def dead_workers(backend: DistributedBackend, workers: list[int]) -> dict[int, str]:
    """Workers that exited, with the last error line of their log."""
    dead = {}
    for i in workers:
        proc = backend.workers[i]
        if proc is None or proc.poll() is not None:
            errors = [ln for ln in backend.worker_log(i).splitlines() if "CRITICAL" in ln or "Unrecoverable" in ln]
            dead[i] = errors[-1] if errors else "(no error logged)"
    return dead


@pytest.mark.exclusive  # Redis is down for every test on this machine
def test_redis_restart_between_polls(fault_backends: FaultBackends) -> None:
    """Redis goes away while an activity waits between polls (1 s apart) and comes back empty.

    The poll timer that the broker lost (Redis keeps nothing on disk here) is re-published by the
    relay from its task row. Asserted: the pipeline finishes, every poll ran once (the component's
    own count in ``outputs`` equals the recorded schedule calls) and the activity executed once.
    Whether the workers themselves survive is checked by the two tests below: on Celery 5.7.0 a
    worker that holds an unacknowledged message when Redis goes away exits, and here the worker
    holding the poll's countdown message may be that one; the other worker and the relay carry on.
    """
    _redis_restartable()
    backend = fault_backends.get("postgres-redis")
    rt = backend.runtime()
    polls = 5
    act = poll_activity(polls)
    tree = chain_tree([act])
    workers = backend.alive()
    lost_before = lost_counts(backend)

    t0 = time.monotonic()
    assert api.run_pipeline(rt, tree).result
    wait_until(lambda: backend.executions("poll")[act.id] >= 1, 30, 0.02, what="the first poll")
    db = create_engine(backend.db_url)

    def next_poll_waiting(overdue: bool) -> bool:
        # The task row of the next poll: published to the timer queue / already overdue.
        with db.connect() as conn:
            row = conn.execute(text("SELECT due, published FROM culm_task WHERE node_id = :n"),
                               {"n": act.id}).first()
        if row is None:
            return False
        return row.due < time.time() if overdue else bool(row.published) and row.due > time.time()

    try:
        # The activity now waits ~1 s for its next poll, whose countdown message the broker holds.
        wait_until(lambda: next_poll_waiting(False), 15, 0.02, what="the next poll's timer")
        polls_before_outage = backend.executions("poll")[act.id]
        with redis_stopped():
            outage_start = time.monotonic()
            for i in workers:
                wait_until(lambda i=i: broker_lost(backend, i, lost_before[i]), 30, 0.1,
                           what=f"worker {i} to notice the broker is gone")
            wait_until(lambda: next_poll_waiting(True), 15, 0.1,
                       what="the next poll to fall due during the outage")
            outage = time.monotonic() - outage_start
    finally:
        db.dispose()

    st = wait_finished(rt, tree["id"], timeout=60)
    elapsed = time.monotonic() - t0
    assert polls_before_outage < polls
    assert_finished_once(rt, st, [act.id])
    outputs = api.get_execution_data_outputs(rt, act.id)
    assert outputs.result, outputs.message
    assert outputs.data["polls"] == polls
    assert backend.executions("poll")[act.id] == polls
    assert backend.executions("execute")[act.id] == 1
    print(f"redis outage {outage:.1f}s; {polls} polls finished in {elapsed:.1f}s; "
          f"workers that exited: {dead_workers(backend, workers)}")


@pytest.mark.exclusive  # Redis is down for every test on this machine
def test_idle_workers_reconnect_after_redis_restart(fault_backends: FaultBackends) -> None:
    """Workers holding no message survive a Redis restart, reconnect and take new work."""
    _redis_restartable()
    backend = fault_backends.get("postgres-redis")
    rt = backend.runtime()
    workers = backend.alive()
    lost_before = lost_counts(backend)
    connected_before = {i: backend.worker_log(i).count("Connected to redis://") for i in workers}
    with redis_stopped():
        for i in workers:
            wait_until(lambda i=i: broker_lost(backend, i, lost_before[i]), 30, 0.1,
                       what=f"worker {i} to notice the broker is gone")
    wait_reconnected(backend, workers, connected_before)
    assert dead_workers(backend, workers) == {}
    acts = [sleep_activity(0) for _ in range(2)]
    tree = chain_tree(acts)
    assert api.run_pipeline(rt, tree).result
    wait_finished(rt, tree["id"], timeout=30)
    assert [backend.executions()[a.id] for a in acts] == [1, 1]
    assert backend.alive() == workers


CELERY_57 = celery.__version__ == "5.7.0"


@pytest.mark.exclusive
@pytest.mark.xfail(
    CELERY_57, strict=True,
    reason="Celery 5.7.0 regression: Consumer.on_connection_error_after_connected calls connection.close() "
           "after connection.collect() has cleared the transport's client; kombu's Redis Channel.close then "
           "restores the unacked messages, _connparams reads None.hostname, and the AttributeError (not a "
           "connection error, so not ignored) ends the worker with 'Unrecoverable error'. Celery 5.6.3 has "
           "no such close().",
)
def test_busy_worker_survives_redis_restart(fault_backends: FaultBackends) -> None:
    """A worker running an (acks_late) task while Redis restarts must keep running.

    Whatever happens to the worker, the pipeline must finish and the activity end FINISHED once;
    its ``execute`` may run twice if the worker that ran it died (at-least-once execution).
    """
    _redis_restartable()
    backend = fault_backends.get("postgres-redis")
    rt = backend.runtime()
    workers = backend.alive()
    lost_before = lost_counts(backend)
    connected_before = {i: backend.worker_log(i).count("Connected to redis://") for i in workers}
    act = sleep_activity(4)
    tree = chain_tree([act])
    try:
        assert api.run_pipeline(rt, tree).result
        wait_until(lambda: backend.executions()[act.id] >= 1, 30, 0.02, what="the activity to start")
        with redis_stopped():
            for i in workers:
                wait_until(lambda i=i: broker_lost(backend, i, lost_before[i]) or backend.workers[i].poll() is not None,
                           30, 0.1, what=f"worker {i} to notice the broker is gone")
        wait_reconnected(backend, workers, connected_before)
        st = wait_finished(rt, tree["id"], timeout=60)
        assert_finished_once(rt, st, [act.id])
        assert 1 <= backend.executions()[act.id] <= 2
        assert dead_workers(backend, workers) == {}
    finally:
        backend.ensure_workers(2)


# -- database connections -----------------------------------------------------------------------


PG_IN_FLIGHT = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend' AND state <> 'idle'"
)
PG_TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
)
MY_IN_FLIGHT = (
    "SELECT count(*) FROM information_schema.processlist p WHERE p.db = :db AND p.id <> CONNECTION_ID()"
    " AND (p.command <> 'Sleep' OR p.id IN (SELECT trx_mysql_thread_id FROM information_schema.innodb_trx))"
)


def kill_sessions(db_url: str, in_flight_timeout: float = 3.0) -> tuple[int, bool]:
    """Kill every session of the database, preferably while one of them is inside a transaction.

    Polls (bounded by ``in_flight_timeout``) until some session of the database has a transaction
    in flight, so that the kill interrupts work rather than idle pooled connections only; then
    terminates all of them (PostgreSQL: ``pg_terminate_backend``; MariaDB: ``KILL``). Returns how
    many sessions were killed and whether a transaction was in flight.
    """
    url = make_url(db_url)
    postgres = url.get_backend_name() == "postgresql"
    admin = create_engine(PG_ADMIN if postgres else MY_ADMIN, isolation_level="AUTOCOMMIT")
    params = {"db": url.database}
    try:
        with admin.connect() as conn:
            in_flight_sql = text(PG_IN_FLIGHT if postgres else MY_IN_FLIGHT)
            deadline = time.monotonic() + in_flight_timeout
            caught = False
            while time.monotonic() < deadline:
                if conn.execute(in_flight_sql, params).scalar():
                    caught = True
                    break
            if postgres:
                rows = conn.execute(text(PG_TERMINATE), params).fetchall()
                return sum(1 for (ok,) in rows if ok), caught
            ids = conn.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"),
                params,
            ).scalars().all()
            killed = 0
            for pid in ids:
                try:
                    conn.execute(text(f"KILL {int(pid)}"))
                    killed += 1
                except Exception:  # noqa: BLE001 - the session ended by itself meanwhile
                    pass
            return killed, caught
    finally:
        admin.dispose()


@pytest.mark.parametrize("name", ["postgres-redis", "mariadb-rabbitmq"])
def test_database_connections_dropped_mid_run(fault_backends: FaultBackends, name: str) -> None:
    """Every session of the database is killed twice while a chain of activities runs.

    What the engine guarantees, and what is asserted: the pipeline finishes; every activity ends
    FINISHED exactly once (first loop, no node history: nothing was re-entered or recorded twice);
    the workers survive. An activity's ``execute`` runs outside any transaction, so one that was
    running when its worker's connection died — its result not yet committed — is executed again
    when Celery retries the task: at most twice here, and at most one extra execution per kill,
    since the chain runs one activity at a time.
    """
    backend = fault_backends.get(name)
    rt = backend.runtime()
    acts = [sleep_activity(0.2) for _ in range(12)]
    tree = chain_tree(acts)
    workers = backend.alive()

    def executed() -> int:
        counts = backend.executions()
        return sum(1 for a in acts if counts[a.id])

    t0 = time.monotonic()
    assert api.run_pipeline(rt, tree).result
    rounds = []
    for target in (2, 7):
        wait_until(lambda target=target: executed() >= target, 60, 0.02,
                   what=f"{target} activities to have started")
        rounds.append(kill_sessions(backend.db_url))
    assert all(n > 0 for n, _ in rounds), f"no session was killed: {rounds}"

    st = wait_finished(rt, tree["id"], timeout=90)
    elapsed = time.monotonic() - t0
    ids = [a.id for a in acts]
    assert_finished_once(rt, st, ids)
    counts = backend.executions()
    per_act = [counts[a] for a in ids]
    assert all(1 <= n <= 2 for n in per_act), per_act
    assert sum(per_act) - len(ids) <= len(rounds), per_act
    assert backend.alive() == workers, "a worker died when its database connections were dropped"
    retried = sum(backend.worker_log(i).count("database interrupted task") for i in workers)
    print(f"{name}: (killed, in flight) {rounds}; task retries after interruption {retried}; "
          f"executions {per_act}; finished in {elapsed:.1f}s")
