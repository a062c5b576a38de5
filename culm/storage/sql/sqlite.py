"""SQLite: one writer at a time, in WAL mode, statements sent as written."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from culm.core.records import ProcessRecord, TaskRecord
from culm.storage.sql.base import Dialect, SqlStore, SqlUnit
from culm.storage.sql.statements import (
    DB_NOW_SQLITE,
    LISTING_TABLES_SQLITE,
    TASK_WITH_PROCESS_HELD,
    insert_sql,
    same_sql,
)

# WAL pages after which a committing writer checkpoints (SQLite's default is 1000). Runners do it
# every second in the background, so writers (run_pipeline's caller among them) rarely have to.
AUTOCHECKPOINT_PAGES = 8000


# Revision 0010's triggers add each payload row's bytes to its root pipeline's culm_root_bytes row
# as the row is written: per row a trigger program, a culm_node lookup and an upsert of the
# counter row, more than the write itself (`python -m bench.trigger_cost`). The engine's most
# frequent writes (a run's context rows, a node's first execution data row) count themselves
# instead, on culm's own connections only: while such a statement is prepared, the connection's
# authorizer (sqlite3_set_authorizer) leaves the counter upsert out of the payload table's INSERT
# trigger (SQLITE_IGNORE: the trigger program is compiled without it), and the unit adds the
# rows' lengths (what the trigger would have added: codec text is ASCII, so Python's len is
# SQLite's LENGTH) per root in one statement before the commit or any read of the counters. The
# schema and its triggers are unchanged: every other statement, and every other writer (another
# process, an older culm, the sqlite3 shell), is counted by the triggers as before.
SELF_COUNTED = " /* counted by culm, not by its triggers */"  # marks the statements prepared so
_OWN_INSERT = insert_sql("culm_execution_data", ("node_id", "inputs", "outputs"))
# A node's execution data when it has no row yet (a conflict inserts nothing: rowcount 0).
EXECUTION_DATA_NEW = _OWN_INSERT + " ON CONFLICT (node_id) DO NOTHING" + SELF_COUNTED
CONTEXT_COLUMNS = ("pipeline_id", "key", "type", "value", "code", "refs")
CONTEXT_NEW = insert_sql("culm_context_value", CONTEXT_COLUMNS) + SELF_COUNTED
# The bytes counted by their writers, {key: bytes} as JSON, added to their roots' counter rows
# (shard 0, as the SQLite triggers do); a key is a node or pipeline id, its root found as the
# triggers find it.
OWN_BYTES_ADD = (
    "INSERT INTO culm_root_bytes (root_id, shard, bytes) SELECT COALESCE(n.root_id, j.key), 0, SUM(j.value) "
    "FROM json_each(?) j LEFT JOIN culm_node n ON n.id = j.key WHERE true GROUP BY 1 "
    "ON CONFLICT (root_id, shard) DO UPDATE SET bytes = bytes + excluded.bytes"
)
SELF_COUNT = "culm_self_count"  # the connection's SelfCount, in its pool record's info


class SelfCount:
    """A connection's switch: on while culm runs a statement that counts its own bytes, and what
    the authorizer left out of each such statement when it was last prepared (SQLite prepares a
    statement again when the schema changed: a database before revision 0010 has no trigger to
    leave out, and then nothing is counted by hand either)."""

    __slots__ = ("on", "prepared", "left_out", "known")

    def __init__(self) -> None:
        self.on = self.prepared = self.left_out = False
        self.known: dict[str, bool] = {}  # statement -> a trigger's counting left out of it

    def authorizer(self, action: int, arg1: str | None, _arg2: str | None, _db: str | None,
                   trigger: str | None) -> int:
        """Leave the counter upsert out of a payload table's INSERT trigger while ``on``."""
        if self.on:
            self.prepared = True
            if (action == sqlite3.SQLITE_INSERT and arg1 == "culm_root_bytes" and trigger is not None
                    and trigger.endswith("_bytes_insert")):
                self.left_out = True
                return sqlite3.SQLITE_IGNORE
        return sqlite3.SQLITE_OK


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

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self._self_count: SelfCount | None = conn.info.get(SELF_COUNT)
        self._own_bytes: list[tuple[str, int]] = []  # (node or pipeline id, bytes) counted here

    # -- writes that count their own bytes --------------------------------------------------
    def _counting_self(self, sql: str, rows: Sequence[Sequence[Any]]) -> tuple[int, bool]:
        """Run ``sql`` (one of the SELF_COUNTED statements) for ``rows``, prepared without the
        triggers' counter upsert: the rows it wrote, and whether their bytes are left to us (no
        trigger counted them). Sent at once, like every SQLite write: it touches no culm_state
        row, so the state INSERTs a CachedUnit holds back may wait."""
        flag = self._self_count
        assert flag is not None
        flag.on, flag.prepared, flag.left_out = True, False, False
        try:
            cur = self._cur.execute(sql, rows[0]) if len(rows) == 1 else self._cur.executemany(sql, rows)
        finally:
            flag.on = False
            if flag.prepared:  # prepared (again) just now: else as it was last prepared
                flag.known[sql] = flag.left_out
        return int(cur.rowcount), flag.known.get(sql, False)

    def _write_execution_data(self, node_id: str, inputs: str, outputs: str) -> None:
        if self._self_count is None:
            super()._write_execution_data(node_id, inputs, outputs)
            return
        written, ours = self._counting_self(EXECUTION_DATA_NEW, [(node_id, inputs, outputs)])
        if not written:
            super()._write_execution_data(node_id, inputs, outputs)  # a row there: the triggers count
        elif ours:
            self._own_bytes.append((node_id, len(inputs) + len(outputs)))

    def _write_outputs(self, node_id: str, outputs: str) -> None:
        if self._self_count is None:
            super()._write_outputs(node_id, outputs)
            return
        written, ours = self._counting_self(EXECUTION_DATA_NEW, [(node_id, "{}", outputs)])
        if not written:
            super()._write_outputs(node_id, outputs)  # a row there: the triggers count
        elif ours:
            self._own_bytes.append((node_id, 2 + len(outputs)))

    def _insert_context(self, pipeline_id: str, rows: list[dict]) -> None:
        if self._self_count is None or not rows or any(type(r["value"]) is not str for r in rows):
            super()._insert_context(pipeline_id, rows)
            return
        _, ours = self._counting_self(CONTEXT_NEW, [[r[c] for c in CONTEXT_COLUMNS] for r in rows])
        if ours:
            self._own_bytes.append((pipeline_id, sum(len(r["value"]) for r in rows)))

    def _count_own_bytes(self) -> None:
        if self._own_bytes:
            added: dict[str, int] = {}
            for key, size in self._own_bytes:
                added[key] = added.get(key, 0) + size
            self._own_bytes = []
            self._x(OWN_BYTES_ADD, [json.dumps(added)])

    def flush(self, *, commit: bool = False) -> None:
        if commit:
            self._count_own_bytes()
        super().flush(commit=commit)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        counted = len(self._own_bytes)
        try:
            with super().savepoint():
                yield
        except BaseException:
            del self._own_bytes[counted:]  # rolled back with the rows they counted
            raise

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
        path = url.split(":///", 1)[1] if ":///" in url else ""
        return None if path in ("", ":memory:") else path

    def engine_options(self, *, memory: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            options["poolclass"] = StaticPool
        return options

    def prepare(self, store: SqlStore) -> None:
        memory = store.memory
        _bind_bools_directly()

        @event.listens_for(store.engine, "connect")
        def _on_connect(dbapi_conn: Any, record: Any) -> None:
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
            if _json_each_works(dbapi_conn):
                count = record.info[SELF_COUNT] = SelfCount()
                dbapi_conn.set_authorizer(count.authorizer)

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


def _bind_bools_directly() -> None:
    """Give ``sqlite3`` an adapter for bool (to int: what it stores for a bool anyway).

    Without one, every bool parameter (states, processes and tasks carry several) makes
    ``sqlite3`` look for ``__adapt__`` and ``__conform__`` and build and drop two AttributeErrors
    before it binds the bool as an int: a few percent of an engine step. An adapter a host
    program registered for bool is left alone.
    """
    import sqlite3

    if (bool, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(bool, int)


def _json_each_works(dbapi_conn: Any) -> bool:
    """Whether this SQLite has json_each (built in since 3.38; an option before), which adding
    the self-counted bytes needs: without it, the triggers count every write."""
    try:
        dbapi_conn.execute("SELECT 1 FROM json_each('{}')").fetchall()
    except sqlite3.Error:
        return False
    return True
