"""What the engine's liveness asks MariaDB while a batch waits (MysqlDialect.lock_waits): a wait for
a table's lock counts, but not one whose lock only this process's own sessions hold, when the
server tells who holds metadata locks (the metadata_lock_info plugin); without the plugin every
such wait counts (review19a)."""

from __future__ import annotations

import threading

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

    def alter() -> None:
        waiter = store.engine.raw_connection()
        try:
            store.traits.begin(waiter, write=True)
            sessions["waiter"] = waiter.info[mysql_dialect._SESSION][2]
            with waiter.cursor() as cur:
                cur.execute("SET SESSION lock_wait_timeout = 60")
                cur.execute("ALTER TABLE t_lw ADD COLUMN y INT")
        finally:
            waiter.close()
            done.set()

    thread = threading.Thread(target=alter)
    thread.start()
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
