"""SQLite: one writer at a time, in WAL mode, statements sent as written."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from culm.core.records import ProcessRecord, TaskRecord
from culm.errors import InvalidOperationError
from culm.storage.sql.base import Dialect, SqlStore, SqlUnit
from culm.storage.sql.statements import DB_NOW_SQLITE, LISTING_TABLES_SQLITE, TASK_WITH_PROCESS_HELD, same_sql
from culm.storage.sqlite_url import parse_sqlite_url

# WAL pages after which a committing writer checkpoints (SQLite's default is 1000). Runners do it
# every second in the background, so writers (run_pipeline's caller among them) rarely have to.
AUTOCHECKPOINT_PAGES = 8000


class SqliteUnit(SqlUnit):
    """A transaction on SQLite: a write transaction holds the whole file (no row locks)."""

    dialect = "sqlite"
    lock_rows = False
    adapt = staticmethod(same_sql)
    feed_ordered = True
    listing_tables = LISTING_TABLES_SQLITE
    root_count_shards = 1  # one writer at a time: nobody to spread the counter rows for
    # SQLite's LENGTH reads a text whole to count its characters; OCTET_LENGTH (3.43 and later)
    # reads the record header only (the size of the one row a budget-checked write replaces).
    octet_length = "OCTET_LENGTH" if sqlite3.sqlite_version_info >= (3, 43) else "LENGTH"

    def announce_change(self) -> None:
        from culm.storage.cache import bump_epoch

        bump_epoch(self)

    def _task_held(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        row = self._one(TASK_WITH_PROCESS_HELD, [task_id])  # our write transaction holds the file
        if row is None or not self._keep_lease(task_id, row[-2], row[-1], lease):
            return None, None
        return self._task_and_process(row[:-2])


class SqliteDialect(Dialect):
    name = "sqlite"
    unit = SqliteUnit
    one_writer = True
    keeps_copies = True  # one writer, and the runner lock makes one process its only runner
    migrates_at_open = True  # an embedded database: no one else runs `culm db upgrade` for it
    db_now = DB_NOW_SQLITE

    def database_file(self, url: str) -> str | None:
        try:
            return parse_sqlite_url(url).path
        except ValueError as exc:
            raise InvalidOperationError(f"cannot use the database URL {url!r}: {exc}") from None

    def engine_options(self, *, memory: bool, url: str = "") -> dict[str, Any]:
        # A busy timeout of 30 s, unless the URL sets its own (?timeout=5).
        given = parse_sqlite_url(url).query if url else {}
        connect = {"check_same_thread": False, **({} if "timeout" in given else {"timeout": 30})}
        options: dict[str, Any] = {"connect_args": connect}
        if memory:
            options["poolclass"] = StaticPool
        return options

    def prepare(self, store: SqlStore) -> None:
        memory = store.memory
        _bind_bools_and_none_directly()

        @event.listens_for(store.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL survives a killed process (not a power cut) and is much faster.
                cur.execute("PRAGMA synchronous=NORMAL")
                # A runner copies the WAL into the database in the background (checkpoint());
                # the automatic checkpoint inside a committing writer is only the safety net.
                cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            # Savepoints keep their undo pages in a statement journal: in memory, not a temp file.
            cur.execute("PRAGMA temp_store=MEMORY")
            # 32 MiB of page cache (the default is 2 MiB): big runs keep their hot B-tree pages.
            cur.execute("PRAGMA cache_size=-32768")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

        @event.listens_for(store.engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writers take the lock up front (no deadlocking lock upgrades); readers do not.
            read_only = conn.get_execution_options().get("culm_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    def begin(self, raw: Any, *, write: bool, snapshot: bool = False) -> None:
        raw.cursor().execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def cached_unit(self, raw: Any, cache: Any) -> SqlUnit:
        from culm.storage.cache import CachedUnit

        return CachedUnit(raw, cache)

    def checkpoint(self, store: SqlStore) -> None:
        if store.memory:
            return
        raw = store.engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            raw.close()


# What ``sqlite3`` binds for a bool and for None. A dict's ``__getitem__`` is a C method called
# without building arguments: cheaper per parameter than ``int`` (a type call) for a bool.
_BOUND_AS = {None: None, False: 0, True: 1}


def _bind_bools_and_none_directly() -> None:
    """Give ``sqlite3`` adapters for bool (to int: what it stores for a bool anyway) and for None
    (to itself: bound as NULL, as without one).

    Without them, every bool or None parameter (states, processes, tasks and the change feed carry
    several) makes ``sqlite3`` look for ``__adapt__`` and ``__conform__``, building and dropping an
    AttributeError with a formatted message, before it binds the value: a few percent of an engine
    step. An adapter a host program registered for either type is left alone.
    """
    import sqlite3

    for kind in (bool, type(None)):
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(kind, _BOUND_AS.__getitem__)
