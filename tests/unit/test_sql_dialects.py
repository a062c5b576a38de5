"""The SQL store's dialect is chosen in one place (``culm.storage.sql.base.dialect_for``), from the URL."""

from __future__ import annotations

from pathlib import Path

import pytest

import culm
from culm.errors import InvalidOperationError
from culm.storage.sql import SqlStore
from culm.storage.sql.base import dialect_for
from culm.storage.sql.mysql import MysqlDialect, MysqlUnit
from culm.storage.sql.postgres import PostgresDialect, PostgresUnit
from culm.storage.sql.sqlite import SqliteDialect, SqliteUnit


@pytest.mark.parametrize(("url", "dialect"), [
    ("sqlite://", SqliteDialect),
    ("sqlite:///some/file.db", SqliteDialect),
    ("postgresql+psycopg://u:p@db/culm", PostgresDialect),
    ("mysql+pymysql://u:p@db/culm", MysqlDialect),
    ("mariadb+pymysql://u:p@db/culm", MysqlDialect),
    ("mysql+mysqldb://u:p@db/culm", MysqlDialect),
])
def test_the_url_names_the_dialect(url: str, dialect: type) -> None:
    assert type(dialect_for(url)) is dialect


def test_a_bare_mysql_url_gets_mysqlclient_where_installed_and_pymysql_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from culm.storage.sql import base

    try:
        import MySQLdb  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        installed = False
    else:
        installed = tuple(MySQLdb.version_info[:2]) >= (2, 2)
    expected = "mysqldb" if installed else "pymysql"
    assert base.normalise_url("mysql://u:p@db/culm") == f"mysql+{expected}://u:p@db/culm"
    assert base.normalise_url("mariadb://u:p@db/culm") == f"mysql+{expected}://u:p@db/culm"
    assert base.normalise_url("mysql+pymysql://u:p@db/culm") == "mysql+pymysql://u:p@db/culm"  # as named
    monkeypatch.setattr(base, "_mysqlclient_usable", lambda: False)  # not installed (or older than 2.2)
    assert base.normalise_url("mysql://u:p@db/culm") == "mysql+pymysql://u:p@db/culm"


def test_each_dialect_brings_its_own_unit() -> None:
    units = {d.name: d.unit for d in (SqliteDialect(), PostgresDialect(), MysqlDialect())}
    assert units == {"sqlite": SqliteUnit, "postgresql": PostgresUnit, "mysql": MysqlUnit}
    assert [u.dialect for u in units.values()] == list(units)


def test_another_backend_is_refused_by_name_without_its_password() -> None:
    with pytest.raises(InvalidOperationError, match="not 'oracle'") as caught:
        SqlStore("oracle+oracledb://scott:tiger@db/orcl")
    assert "tiger" not in str(caught.value) and "scott:***@db" in str(caught.value)


def test_a_sqlite_store_hands_out_sqlite_units(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/d.db")
    try:
        assert store.dialect == "sqlite"
        with store.transaction() as unit:
            assert type(unit) is SqliteUnit
            assert (unit.feed_ordered, unit.lock_rows) == (True, False)
        with store.reading() as unit:
            assert type(unit) is SqliteUnit
    finally:
        store.dispose()


def test_sqlite_binds_none_as_null_and_bools_as_ints(tmp_path: Path) -> None:
    """A SQLite store gives ``sqlite3`` adapters for None and bool (each parameter of those types
    otherwise costs two attribute lookups and a formatted AttributeError): None is still bound as
    NULL and a bool as the int it is."""
    import sqlite3

    store = SqlStore(f"sqlite:///{tmp_path}/d.db")
    try:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (a, b, c)")
        conn.execute("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(None, None, True)])
        rows = conn.execute("SELECT a IS NULL, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY rowid").fetchall()
        assert rows == [(1, "null", 1, "integer", 0, "integer"), (1, "null", None, "null", 1, "integer")]
        conn.close()
    finally:
        store.dispose()


def test_what_other_storage_modules_ask_of_a_dialect_is_a_trait_of_it() -> None:
    sqlite, postgres, mysql = SqliteDialect(), PostgresDialect(), MysqlDialect()
    # Only SQLite is embedded: one writer, copies kept by the engine thread, migrated when opened.
    assert [(d.one_writer, d.keeps_copies, d.migrates_at_open) for d in (sqlite, postgres, mysql)] == [
        (True, True, True), (False, False, False), (False, False, False)]
    # A SQLite read transaction is a snapshot already; a server's is made one.
    assert sqlite.snapshot_read == "" and postgres.snapshot_read == mysql.snapshot_read != ""
    assert len({sqlite.db_now, postgres.db_now, mysql.db_now}) == 3
    assert sqlite.database_file("sqlite:////var/lib/culm.db") == "/var/lib/culm.db"
    assert sqlite.database_file("sqlite://") is None and sqlite.database_file("sqlite:///:memory:") is None
    assert postgres.database_file("postgresql+psycopg://u@db/culm") is None


def test_a_store_exposes_its_dialects_traits(tmp_path: Path) -> None:
    files, memory = SqlStore(f"sqlite:///{tmp_path}/t.db"), SqlStore("sqlite://")
    try:
        assert (files.database_file, files.keeps_copies) == (f"{tmp_path}/t.db", True)
        assert (memory.database_file, memory.keeps_copies) == (None, True)
        assert type(files.traits) is SqliteDialect
    finally:
        files.dispose()
        memory.dispose()


@pytest.mark.parametrize("url", [":memory:", "culm.db", "postgres//culm:secret@db/culm"])
def test_a_runtime_given_no_database_url_names_it_and_the_forms_it_takes(url: str) -> None:
    with pytest.raises(InvalidOperationError) as caught:
        culm.Runtime(url)
    message = str(caught.value)
    assert "is not a database URL" in message and "sqlite:///:memory:" in message and "memory://" in message
    assert "secret" not in message and repr(url.replace(":secret@", ":***@")) in message


def test_own_sessions_are_killed_on_their_own_server_only(monkeypatch):
    # Review 18: the noted session ids of every MariaDB/MySQL server of a process were sent, all
    # of them, to the one server of the engine whose thread was stuck: with stores on two servers
    # the KILLs could end unrelated sessions there (an id is one server's). No connection is made:
    # the connect listener is fired with stand-in connections and the ids each engine would send
    # are read.
    from sqlalchemy import create_engine

    from culm.storage.sql import mysql

    monkeypatch.setattr(mysql, "_SESSIONS", set())

    class Conn:
        def __init__(self, ident: int) -> None:
            self.ident = ident

        def thread_id(self) -> int:
            return self.ident

    class Record:
        def __init__(self) -> None:
            self.info: dict = {}

    one = create_engine("mysql+pymysql://u:p@db1:3306/culm")
    two = create_engine("mysql+pymysql://u:p@db2:3306/culm")
    same_server = create_engine("mysql+pymysql://u:p@db1:3306/other")
    listeners: dict = {}  # (engine, "connect" | "close"): the listener _note_sessions set

    def listens_for(engine, name):
        return lambda fn: listeners.setdefault((engine, name), fn)

    monkeypatch.setattr(mysql.event, "listens_for", listens_for)  # the driver's own stay out
    for engine in (one, two, same_server):
        mysql._note_sessions(engine)
    records = {}
    for engine, ids in ((one, (11, 12)), (two, (12, 21)), (same_server, (13,))):
        for i in ids:
            records[engine, i] = Record()
            listeners[engine, "connect"](Conn(i), records[engine, i])
    assert mysql._own_session_ids(one) == [11, 12, 13]  # db1's: both stores there
    assert mysql._own_session_ids(same_server) == [11, 12, 13]
    assert mysql._own_session_ids(two) == [12, 21]  # db2's 12 is another session than db1's
    listeners[two, "close"](Conn(12), records[two, 12])
    assert mysql._own_session_ids(two) == [21]
    assert mysql._own_session_ids(one) == [11, 12, 13]
