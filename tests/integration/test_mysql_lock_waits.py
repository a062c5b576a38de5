"""What the engine's liveness asks MariaDB while a batch waits (MysqlDialect.lock_waits): a wait for
a table's lock counts, but not one whose lock only this process's own sessions hold, when the
server tells who holds metadata locks (the metadata_lock_info plugin); without the plugin every
such wait counts (review19a)."""

from __future__ import annotations

import threading
import time

import pytest
from backends import fresh_store
from sqlalchemy import create_engine
from support import wait_until

from culm.storage.sql import SqlStore
from culm.storage.sql import mysql as mysql_dialect

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store():
    yield from fresh_store("mariadb")


def _plugin(store: SqlStore) -> bool:
    with store.engine.connect() as conn:
        return bool(conn.exec_driver_sql(mysql_dialect.HAS_MDL_INFO).scalar())


def _waiting(store: SqlStore, session: int) -> bool:
    with store.engine.connect() as conn:
        state = conn.exec_driver_sql(
            f"SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = {int(session)}").scalar()
    return bool(state and state.startswith("Waiting for") and state.endswith("lock"))


def _engine_writes(store: SqlStore, sessions: dict[str, int], done: threading.Event, *statements: str) -> threading.Thread:
    """A thread that runs ``statements`` in a write transaction of ``store`` begun as the engine's
    are (its session noted as the thread's, in ``sessions["waiter"]``), then rolls it back;
    ``done`` set once it ends."""

    def write() -> None:
        waiter = store.engine.raw_connection()
        try:
            store.traits.begin(waiter, write=True)
            sessions["waiter"] = waiter.info[mysql_dialect._SESSION][2]
            with waiter.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
            waiter.rollback()
        finally:
            waiter.close()
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_table_lock_wait_counts_when_another_process_holds_it(store):
    holder = store.engine.raw_connection()  # a session of this process
    other = create_engine(store.engine.url).raw_connection()  # "another process": not noted
    with holder.cursor() as cur:
        cur.execute("CREATE TABLE t_lw (x INT)")
        holder.commit()
        cur.execute("BEGIN")
        cur.execute("SELECT * FROM t_lw")  # holds the table's metadata lock to its commit
    with other.cursor() as cur:  # and so does the other process (before the ALTER asks: it would wait)
        cur.execute("BEGIN")
        cur.execute("SELECT * FROM t_lw")
    sessions: dict[str, int] = {}
    done = threading.Event()
    thread = _engine_writes(store, sessions, done, "SET SESSION lock_wait_timeout = 60",
                            "ALTER TABLE t_lw ADD COLUMN y INT")
    try:
        wait_until(lambda: "waiter" in sessions and _waiting(store, sessions["waiter"]), timeout=30)
        assert store.lock_waits(thread.ident) == 1  # another process holds it: counts
        other.commit()  # the other process lets go: only this process's holder holds it
        assert _waiting(store, sessions["waiter"])
        own_only = store.lock_waits(thread.ident)
        if _plugin(store):
            assert own_only == 0  # only this process's session held it: it commits, no wait for good
        else:
            assert own_only == 1  # the server cannot tell who holds it: counts, as documented
    finally:
        holder.commit()
        other.commit()
        done.wait(60)
        thread.join(60)
        holder.close()
        other.close()


def _running_ms(conn, session: int) -> int:
    """How long session ``session``'s statement has run (PROCESSLIST: read live, not a copy)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT COMMAND, TIME_MS FROM information_schema.PROCESSLIST WHERE ID = {int(session)}")
        row = cur.fetchone()
    return int(row[1]) if row and row[0] == "Query" else 0


def test_a_row_lock_wait_counts_though_another_client_keeps_the_innodb_copy_stale(store):
    """MariaDB refreshes its copy of InnoDB's lock tables only once nobody has read it for 100 ms:
    a client reading it every 50 ms (a monitoring tool, other workers' watchdogs) keeps it as it
    was before the wait began. Asked right after such a read, the question still finds the engine
    session's wait for a row another process holds (R22-4: it answered no wait, and the watchdog
    would have ended a process that only waited)."""
    other = create_engine(store.engine.url).raw_connection()  # "another process": not noted
    watcher = create_engine(store.engine.url, isolation_level="AUTOCOMMIT").raw_connection()
    with other.cursor() as cur:
        cur.execute("CREATE TABLE t_rw (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute("INSERT INTO t_rw VALUES (1, 0)")
        other.commit()
    sessions: dict[str, int] = {}

    def copy_waits() -> int:  # the copy, read as a monitoring tool does
        with watcher.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS")
            return int(cur.fetchone()[0])

    with other.cursor() as cur:
        cur.execute("SELECT v FROM t_rw WHERE id = 1 FOR UPDATE")  # held to its rollback
    copy_waits()
    thread = _engine_writes(store, sessions, threading.Event(), "SET SESSION innodb_lock_wait_timeout = 30",
                            "UPDATE t_rw SET v = 1 WHERE id = 1")
    try:
        # Read every 50 ms from before the wait began: the copy never shows it.
        deadline = time.monotonic() + 20
        while "waiter" not in sessions or _running_ms(watcher, sessions["waiter"]) < 500:
            assert time.monotonic() < deadline, "the UPDATE never waited"
            assert copy_waits() == 0
            time.sleep(0.05)
        assert copy_waits() == 0  # the copy as it was before the wait, read just now
        assert store.lock_waits(thread.ident) == 1
    finally:
        other.rollback()
        thread.join(60)
        with other.cursor() as cur:
            cur.execute("DROP TABLE t_rw")
        other.close()
        watcher.close()
