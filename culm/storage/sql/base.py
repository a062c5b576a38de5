"""The SQL store and unit of work common to all dialects (SQLite, PostgreSQL, MySQL)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from sqlalchemy import event
from sqlalchemy.engine import Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, InterfaceError, OperationalError

from culm._printable import engine_logger
from culm.core import states
from culm.core.ports import (
    LogRow,
    PipelineRow,
    Prefetch,
    ProcessFields,
    ScheduleFields,
    StateWrite,
    TaskFields,
    refuse_unknown_reads,
)
from culm.core.records import (
    EXECUTE,
    ContextValue,
    HistoryRecord,
    PipelineQuery,
    ProcessPosition,
    ProcessRecord,
    ScheduleRecord,
    StateChange,
    StateRecord,
    TaskRecord,
    new_id,
)
from culm.errors import InvalidOperationError, SchemaOutdatedError, SettingsError
from culm.storage import budget, codec, listing, node_names
from culm.storage.codec import payloads_within
from culm.storage.copies import copy_state as _copy_state
from culm.storage.names import ROOT_COUNT_SHARDS
from culm.storage.sql.statements import (
    ACK_CHILDREN,
    ALL_ROOT_BYTES,
    CALLBACK_SEQ,
    CALLBACK_WAITERS,
    CALLBACK_WAITERS_FIRST,
    CHANGE_COLUMNS,
    CHANGED_PAIRS,
    CHANGED_STATES,
    CHANGES_BETWEEN,
    CHANGES_OF_ROOT_BETWEEN,
    FAILED_FIRST,
    FIRST_CALLBACK_TASK,
    LISTING_TABLES,
    LIVE_POSITIONS_OF_ROOT,
    LIVE_SCHEDULES_IN,
    LOCK_FREE_SCHEDULE,
    LOG_AT,
    LOG_COUNT,
    LOG_LINES,
    LOG_TAIL,
    NODE_COLUMNS,
    NODE_INSERT,
    NOTE_INNER_LOOPS,
    OUTPUTS_UPSERT,
    PARENTS_STORED,
    PENDING_TASKS,
    PROCESS_BY_ID,
    PROCESS_BY_ID_LOCKED,
    PROCESSES_AT,
    PROCESSES_IN,
    PROCESSES_OF_ROOT,
    PROCESSES_SUSPENDED_BY,
    PRUNE_CHANGES,
    RELAY_CANDIDATES,
    RELAY_CANDIDATES_LOCKED,
    RELOCK_SCHEDULE,
    RESET_INNER_LOOPS,
    RETAKE_LEASE,
    ROOT_BYTES_HELD,
    ROOT_BYTES_OWN,
    ROOT_COUNT_ADD,
    ROOT_COUNT_INSERT,
    ROOT_COUNT_ROWS,
    ROOT_COUNT_ROWS_LOCKED,
    ROOT_COUNT_SET,
    ROOT_COUNTS_CLEAR,
    ROOTS_COUNTED,
    SCHEDULE_BY_ID,
    SCHEDULE_CALL_HELD,
    SCHEDULE_LOCK,
    SCHEDULE_OF_RUN,
    SCHEDULES_IN,
    STATE_BY_ID,
    STATE_BY_ID_LOCKED,
    STATE_INDEX,
    STATE_INSERT,
    STATES_IN,
    STATES_OF_PARENT,
    STATES_OF_ROOT,
    TAKE_LEASE,
    TASK_BY_ID,
    TASK_COLUMNS,
    TASK_WITH_PROCESS,
    TASKS_OF_ROOT,
    WAKE_ON_ACK,
    WAKE_TASK_ON_ACK,
    insert_sql,
    marks,
    same_sql,
    update_sql,
    upsert_sql,
    with_sql,
)

if TYPE_CHECKING:
    from culm.storage.workers import SqlWorkerRegistry

logger = engine_logger("culm.storage.sql")


def normalise_url(url: str) -> str:
    """Pick the drivers culm installs for bare ``postgresql://`` and ``mysql://`` URLs: psycopg;
    mysqlclient (``culm[mysqlclient]``, a C driver) where it is installed, else PyMySQL."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://") or url.startswith("mariadb://"):
        return f"mysql+{mysql_driver()}://" + url.split("://", 1)[1]
    return url


def mysql_driver() -> str:
    """The driver a bare ``mysql://`` URL gets: ``mysqldb`` (mysqlclient 2.2 or later, which has
    the ``Cursor.mogrify`` the deferred writes use) where installed, else ``pymysql``."""
    return "mysqldb" if _mysqlclient_usable() else "pymysql"


@functools.cache
def _mysqlclient_usable() -> bool:
    try:
        import MySQLdb  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    return tuple(MySQLdb.version_info[:2]) >= (2, 2)


_SEQUENCES = (list, tuple)  # parameters every driver takes as they are


def _state_params(rec: StateRecord) -> list[Any]:
    """The parameters of STATE_INSERT for ``rec`` (a list: a deferred INSERT may take changes)."""
    return [rec.node_id, rec.root_id, rec.parent_id, rec.name, rec.version, rec.loop, rec.inner_loop, rec.retry,
            rec.skip, rec.error_ignored, rec.created_time, rec.started_time, rec.archived_time]


def _history(r: Sequence[Any], inputs: dict[str, Any], outputs: dict[str, Any],
             left_out: int | None = None) -> HistoryRecord:
    return HistoryRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], inputs, outputs, left_out)


def _state_row(r: Sequence[Any]) -> StateRecord:
    return StateRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), bool(r[9]), r[10], r[11], r[12])


def _process_row(r: Sequence[Any]) -> ProcessRecord:
    return ProcessRecord(r[0], r[1], r[2], r[3], r[4], codec.loads(r[5]), bool(r[6]), bool(r[7]), r[8], bool(r[9]),
                         r[10], r[11], r[12], r[13], r[14])


def _ignore_rows(rows: list[Any]) -> None:
    """What takes the answer of a read sent with the commit only for the error it may raise."""


def _task_row(r: Sequence[Any]) -> TaskRecord:
    return TaskRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


# A verb's reads and what makes its answer of their rows (SqlUnit.read_together).
_Plan = tuple[list[tuple[str, Sequence[Any]]], Callable[[list[list[Any]]], Any]]


def _schedule_row(r: Sequence[Any]) -> ScheduleRecord:
    return ScheduleRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]), r[7], r[8])


# Primary keys, for telling whether two deferred writes may touch the same row (_combined).
_PRIMARY = {
    "culm_pipeline": ("id",), "culm_node": ("id",), "culm_state": ("node_id",), "culm_process": ("id",),
    "culm_task": ("id",), "culm_node_data": ("node_id",), "culm_execution_data": ("node_id",),
    "culm_context_value": ("pipeline_id", "key"), "culm_schedule": ("id",), "culm_callback_data": ("id",),
}
# Append-only tables with autoincrement keys: an insert clashes with no other row, but two inserts
# into one of them must not share a combined statement, whose parts run in an unspecified order:
# their ids would not follow the order they were appended in (histories and logs are read back
# ORDER BY id, the change feed by seq). So each counts as touching one pseudo-row of its table.
_APPEND_ONLY = ("culm_history", "culm_log", "culm_change")


def _append_key(table: str) -> tuple[tuple[str, tuple[()]], ...]:
    return ((table, ()),)


def _row_key(table: str, rows: Sequence[Mapping[str, Any]]) -> tuple[Any, ...] | None:
    """The rows an INSERT writes, as (table, primary key) pairs; None when unknown."""
    if table in _APPEND_ONLY:
        return _append_key(table)
    cols = _PRIMARY.get(table)
    if cols is None:
        return None
    return tuple((table, tuple(r[c] for c in cols)) for r in rows)


MAX_COMBINED = 64  # writes per combined statement
CONTEXTS_AHEAD = 2000  # context values a batch reads ahead at most (more: each read takes its keys)


Parts = list[tuple[str, Sequence[Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class MergedRows:
    """Writes of one text, each adding rows, that merge into one (a dialect's deferred writes):
    INSERTs as ``head`` + each row's ``part`` + ``tail``, DELETEs by a key list likewise."""

    head: str
    part: str
    tail: str
    width: int  # parameters per row
    limit: int = 500  # rows one merged write holds at most, where the dialect bounds them (MySQL)

    def merge(self, blocks: list[Sequence[Any]]) -> tuple[str, list[Any]]:
        params = [v for block in blocks for v in block]
        return self.head + ", ".join([self.part] * (len(params) // self.width)) + self.tail, params


def _combined(pending: Sequence[tuple[str, Sequence[Any], Any]]) -> list[tuple[str, Sequence[Any]]]:
    """Deferred writes as few statements (see combined_runs)."""
    return combined_runs(pending, None)


def combined_runs(pending: Sequence[tuple[str, Sequence[Any], Any]],
                  merge: Callable[[Parts], Parts] | None) -> list[tuple[str, Sequence[Any]]]:
    """Deferred writes as few statements: runs of writes to distinct rows become one statement.

    PostgreSQL runs the data-modifying parts of a WITH query exactly once, in an unspecified order
    and against the same snapshot, so parts of one statement must not touch the same row (nor a
    row another part inserts). A write whose rows are unknown (key None) is sent on its own; a
    write to a row the current run already touches starts a new run. Runs keep their order.
    ``merge`` may make a run's writes fewer before they are combined (they may be reordered
    freely: see culm.storage.sql.postgres.merge_parts).
    """
    out: list[tuple[str, Sequence[Any]]] = []
    run: list[tuple[str, Sequence[Any]]] = []
    touched: set[Any] = set()

    def close() -> None:
        parts = merge(run) if merge is not None and len(run) > 1 else run
        if len(parts) == 1:
            out.append(parts[0])
        elif parts:
            out.append((with_sql(tuple(q for q, _ in parts)), [v for _, p in parts for v in p]))
        run.clear()
        touched.clear()

    for sql, params, keys in pending:
        if keys is None:
            close()
            out.append((sql, params))
            continue
        if len(run) >= MAX_COMBINED or not touched.isdisjoint(keys):
            close()
        run.append((sql, params))
        touched.update(keys)
    close()
    return out


def cas_where(node_id: str, expect_version: str | None, names: Sequence[str] | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a state's compare-and-set."""
    where, params = "node_id = ?", [node_id]
    if expect_version is not None:
        where += " AND version = ?"
        params.append(expect_version)
    if names is not None:
        where += f" AND name IN ({marks(len(names))})"
        params.extend(names)
    return where, params


class SqlUnit(budget.UnitChecks):
    """One database transaction, offering the domain verbs the core needs.

    Statements go straight to the DB-API cursor: they are few and fixed, and skipping the
    expression layer makes a node step several times cheaper. SQL is written once with ``?``
    placeholders and double-quoted identifiers and adapted to the driver's dialect.

    What differs per dialect is in the subclasses of culm.storage.sql.sqlite, postgres and mysql:
    the traits below and the few verbs one dialect does its own way.
    """

    dialect = ""  # the SQLAlchemy dialect name
    lock_rows = True  # locking reads (FOR UPDATE, SKIP LOCKED) on a server database
    share_lock = " FOR SHARE"  # what makes a read take shared row locks (lock_rows only)
    defers_writes = False  # writes wait for the next statement that needs an answer (PostgreSQL, MySQL)
    adapt = staticmethod(same_sql)  # a statement as written here -> as the driver takes it
    # The SQL function giving a stored text's bytes (payloads are ASCII, so characters will do;
    # PostgreSQL's OCTET_LENGTH reads a toasted value's header only, LENGTH the whole value).
    octet_length = "LENGTH"
    feed_ordered = False  # the change feed becomes visible in seq order (one writer at a time)
    upsert_statement = staticmethod(upsert_sql)  # upsert_sql(table, cols, keys)
    outputs_upsert = OUTPUTS_UPSERT
    combine = staticmethod(_combined)  # deferred writes -> the statements that carry them
    listing_tables = LISTING_TABLES  # the FROM names of root states and pipeline names (listing)
    # A new run's ids are checked by the unique keys of its inserts, at its commit, instead of a
    # read before them (culm.core.ports.Runs.refuses_duplicate_ids): the server databases, whose
    # read would be a round trip of its own while the inserts travel with the commit.
    refuses_duplicate_ids = False
    root_count_shards = ROOT_COUNT_SHARDS  # culm_root_count's shards used (SQLite: one writer, one)
    # Takes a root pipeline's budget lock (parameter: its id) to the commit, see stored_bytes; None:
    # the database has one writer at a time (SQLite), nothing to take.
    budget_lock: str | None = None
    totals: budget.StoreTotal | None = None  # its store's, set by SqlStore.transaction

    def __init__(self, conn: Any) -> None:
        self.conn = conn  # a DB-API connection (pool-proxied)
        self._cur = self.new_cursor(conn)
        self._sql = self.adapt
        self._plain_sql = self.adapt is same_sql  # statements go to the driver as written
        # PostgreSQL: writes whose result nobody reads wait here and go to the server together,
        # in one pipelined round trip, right before the next statement that needs an answer (a
        # read, a compare-and-set, a savepoint, the commit). Elsewhere they run at once.
        # Each entry is (sql, params, keys): ``keys`` lists the rows the write touches as (table,
        # primary key) pairs, or is None when they are not known (see _combined).
        self._deferred: list[tuple[str, Sequence[Any], Any]] | None = [] if self.defers_writes else None
        # Deferred UPDATEs of a row by its id (a process, a task, a schedule), by (table, (id,)): their
        # place in _deferred and their fields so far. A second UPDATE of the row is merged into the
        # first while no write queued since may touch the row (a write on it or on unknown rows
        # removes the entry): a process saved by a handler and again by its walk is one UPDATE.
        self._merging: dict[tuple[str, tuple[Any, ...]], tuple[int, dict[str, Any]]] = {}
        # PostgreSQL, MySQL: [version, name] of the state rows this transaction holds locked (read
        # FOR UPDATE or held with a shared lock, inserted or updated here). Nobody else can change
        # them before the commit, so a compare-and-set on one has a known outcome and can be
        # deferred like any other write.
        self._owned: dict[str, list[str]] | None = {} if self.defers_writes else None
        # PostgreSQL: the parameters of state rows whose INSERT is still deferred, by node id. A
        # compare-and-set on such a row before they are sent is folded into them: an event or a
        # gateway entered and left in one transaction costs one INSERT instead of two statements.
        self._unsent_states: dict[str, list[Any]] = {}
        # PostgreSQL: a state row read and locked ahead of its get_state(for_update=True) call.
        self._locked_ahead: dict[str, StateRecord] = {}
        # States read ahead by prefetch_states (None: no row), kept current with this
        # transaction's own writes; plain reads of them are answered from here.
        self._state_view: dict[str, StateRecord | None] | None = None
        # Server databases: the states read with a shared row lock (hold_states) in this transaction.
        self._held: set[str] = set()
        # Server databases: node ids whose state row this transaction inserted and that no state row
        # written here names as its parent since. Rows are never deleted, so such a node has no
        # children stored: reset_inner_loops has nothing to reset (a subprocess entered the first
        # time, in every run that reaches one) and sends nothing.
        self._childless: set[str] = set()
        # PostgreSQL: tasks read ahead by read_tasks_ahead, by task id: (task, process, locked
        # state of its node or None), or None when it is not there or leased by someone else; and
        # the processes written since (None: all of them).
        self._tasks_ahead: dict[str, tuple[TaskRecord, ProcessRecord | None, StateRecord | None] | None] = {}
        self._procs_written: set[str] | None = set()
        # Stored pipelines (tree, root data, options as stored) read with the claim for the runs
        # expect_walks named as not compiled yet: get_pipeline(s) answers from here.
        self._trees_ahead: dict[str, tuple[Any, Any, Any]] = {}
        # Context rows read ahead by prefetch_contexts, by pipeline id and key, as stored (each
        # read decodes its own copy), kept current with this transaction's own writes.
        self._context_view: dict[str, dict[str, Sequence[Any]]] = {}
        # The change feed's rows for this transaction's state writes (culm.storage.feed), sent with
        # the commit; ``changes_sent`` counts them for the store's in-process waiters.
        self._changes: list[list[Any]] = []
        self.changes_sent = 0
        # Reads sent with the commit, after every write and before the COMMIT, in the same round
        # trip (server databases), each with what takes its rows once the commit is through.
        self._commit_reads: list[tuple[str, Sequence[Any], Callable[[list[Any]], None]]] = []
        self._savepoint_depth = 0

    # -- plumbing ---------------------------------------------------------------------------
    @staticmethod
    def new_cursor(conn: Any) -> Any:
        """The cursor a unit sends its statements through (as ``adapt`` made them)."""
        return conn.cursor()

    def close(self) -> None:
        """Close the unit's cursor; its store calls this when the unit's transaction ends, however
        it ends.

        A statement read only in part (``fetchone`` of several rows) holds SQLite's read snapshot
        on the connection past the commit, for as long as its cursor lives, and a unit that raised
        lives on in the exception's reference cycle until the garbage collector runs. On the store's
        one writer connection every write then failed at once with "database is locked"
        (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not wait out) once another process had
        written; a reader kept an old snapshot.
        """
        self._cur.close()

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self._cur
        if self._deferred:
            # The deferred writes travel with this statement: one round trip for all of them.
            self._send_deferred(self._take_deferred(), (self._sql(sql), tuple(params)))
            return cur
        cur.execute(sql if self._plain_sql else self._sql(sql), params if type(params) in _SEQUENCES else tuple(params))
        return cur

    def _later(self, sql: str, params: Sequence[Any] = (), key: Any = None) -> None:
        """Run a write whose outcome is not read (an error still aborts the transaction).

        ``key``: the rows it writes, as (table, primary key) pairs, if known (see _combined).
        """
        if self._deferred is None:
            self._cur.execute(sql if self._plain_sql else self._sql(sql),
                              params if type(params) in _SEQUENCES else tuple(params))
        else:
            if self._merging:  # a row this write may touch: a later UPDATE of it must follow it
                if key is None:
                    self._merging.clear()
                else:
                    for row in key:
                        self._merging.pop(row, None)
            self._deferred.append((self._sql(sql), params, key))

    def flush(self, *, commit: bool = False) -> None:
        """Send the deferred writes (one pipelined round trip on PostgreSQL), with the commit
        when ``commit`` (the caller's own commit then finds nothing left to do)."""
        if commit and self._changes:
            self._send_changes()
        if commit and self._commit_reads:
            reads, self._commit_reads = self._commit_reads, []
            answers = self._send_with_commit(self._take_deferred(), [(sql, params) for sql, params, _ in reads])
            for (_, _, take), rows in zip(reads, answers, strict=True):
                take(rows)
            return
        if not self._deferred:
            return
        self._send_deferred(self._take_deferred(), None, commit=commit)

    def _send_deferred(
        self, pending: list[tuple[str, Sequence[Any]]], last: tuple[str, Sequence[Any]] | None, *, commit: bool = False
    ) -> None:
        """Send deferred writes (as ``combine`` made them), then ``last``, a statement whose answer
        the caller reads from the cursor, in one round trip; with the commit when ``commit`` and the
        dialect can. Only the dialects that defer writes (``defers_writes``) say how."""
        raise NotImplementedError

    def _send_with_commit(
        self, pending: list[tuple[str, Sequence[Any]]], reads: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[Any]]:
        """Send deferred writes, then ``reads``, then the COMMIT, in one round trip; the reads'
        rows. Only the dialects that defer writes (``defers_writes``) say how."""
        raise NotImplementedError

    def record_change(
        self, root_id: str, node_id: str, from_state: str | None, to_state: str, version: str, loop: int
    ) -> None:
        """Append a state write to the change feed; the row is written with the commit."""
        self._changes.append([root_id, node_id, from_state, to_state, version, loop, time.time()])

    def _send_changes(self) -> None:
        # Only at the commit: a row sent earlier could land inside a savepoint that is rolled back
        # while the state write it records (made before the savepoint) stays.
        rows, self._changes = self._changes, []
        self.changes_sent += len(rows)
        for i in range(0, len(rows), 500):
            chunk = rows[i : i + 500]
            if self._deferred is not None:  # PostgreSQL: one multi-row INSERT, pipelined with the commit
                self._later(insert_sql("culm_change", CHANGE_COLUMNS, len(chunk)), [v for r in chunk for v in r],
                            _append_key("culm_change"))
            else:
                self._many(insert_sql("culm_change", CHANGE_COLUMNS), chunk)
        self._count_roots(listing.root_deltas(rows))

    def _count_roots(self, deltas: Mapping[str, int]) -> None:
        """Add the net change of root pipelines per state to culm_root_count (the listing's counts).

        The transaction's last writes, to the rows of one shard picked at random, in state-name
        order: every writer takes its counter rows in one global order and wants no other lock
        after them, so writers that meet on a shard queue for a commit's length and never
        deadlock. (On PostgreSQL each is a statement of its own, not a part of a combined one,
        whose parts run in no set order.)
        """
        if not deltas:
            return
        shard = random.randrange(self.root_count_shards)
        for name in sorted(deltas):
            self._later(ROOT_COUNT_ADD, [deltas[name], shard, name])

    def _drop_unsent(self) -> None:
        """Forget the writes still waiting to be sent (the part of the transaction that made them
        is being undone)."""
        if self._deferred:
            self._take_deferred()

    def _take_deferred(self) -> list[tuple[str, Sequence[Any]]]:
        """Hand over the deferred writes, as few statements as they can be (_combined)."""
        pending = self._deferred or []
        self._deferred = []
        self._merging.clear()
        self._unsent_states.clear()
        return self.combine(pending)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            if self._deferred:
                self.flush()
            self._cur.executemany(sql if self._plain_sql else self._sql(sql), rows)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._x(sql, params).fetchone()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._x(sql, params).fetchall())

    def _update(self, table: str, key_sql: str, key_params: Sequence[Any], fields: Mapping[str, Any]) -> int:
        sql = update_sql(table, tuple(fields), key_sql)
        return int(self._x(sql, [*fields.values(), *key_params]).rowcount)

    def _update_later(self, table: str, key_sql: str, key_params: Sequence[Any], fields: Mapping[str, Any]) -> None:
        # Every caller's key_sql starts with "<primary key> = ?": the row is known.
        row = (table, (key_params[0],))
        if key_sql != "id = ?" or self._deferred is None:  # a compare-and-set, or sent at once
            self._later(update_sql(table, tuple(fields), key_sql), [*fields.values(), *key_params], (row,))
            return
        merging = self._merging.get(row)
        if merging is not None:
            # The row's UPDATE still waits and no write queued since may touch the row: one UPDATE
            # of the row, in the earlier one's place, with the later values (the same outcome).
            at, merged = merging
            merged.update(fields)
            self._deferred[at] = (self._sql(update_sql(table, tuple(merged), key_sql)), [*merged.values(), *key_params],
                                  (row,))
            return
        self._later(update_sql(table, tuple(fields), key_sql), [*fields.values(), *key_params], (row,))
        self._merging[row] = (len(self._deferred) - 1, dict(fields))

    def _insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        cols = tuple(rows[0])
        if self._deferred is not None:
            # PostgreSQL: one multi-row INSERT, deferred like any write (rows are new: no key
            # clashes with another write unless the same row is written again, see _row_key).
            for i in range(0, len(rows), 500):
                chunk = rows[i : i + 500]
                self._later(insert_sql(table, cols, len(chunk)), [r[c] for r in chunk for c in cols],
                            _row_key(table, chunk))
        elif len(rows) == 1:
            self._later(insert_sql(table, cols), list(rows[0].values()))
        else:
            self._many(insert_sql(table, cols), [[r[c] for c in cols] for r in rows])

    def _upsert(self, table: str, row: dict[str, Any], keys: list[str]) -> None:
        self._later(self.upsert_statement(table, tuple(row), tuple(keys)), list(row.values()),
                    ((table, tuple(row[k] for k in keys)),))

    def announce_change(self) -> None:
        """Mark this transaction as one that changes existing engine rows (see culm.storage.cache:
        SQLite only, where the engine keeps copies of its rows)."""

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested unit: its changes are undone on an exception, the outer transaction's are not."""
        self._savepoints = getattr(self, "_savepoints", 0) + 1
        name = f"culm_sp{self._savepoints}"
        self._x(f"SAVEPOINT {name}")
        changes = len(self._changes)
        self._savepoint_depth += 1
        try:
            yield
            self.flush()
        except BaseException:
            self._drop_unsent()  # writes of the undone part never reach the server
            del self._changes[changes:]
            if self._owned:
                self._owned.clear()  # what the undone part locked or wrote is no longer known
            self._locked_ahead.clear()
            self._held.clear()  # a rolled-back savepoint gives back the row locks taken in it
            self._childless.clear()
            self._state_view = None
            self._tasks_ahead.clear()
            self._context_view.clear()
            self._cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._cur.execute(f"RELEASE SAVEPOINT {name}")
            raise
        finally:
            self._savepoint_depth -= 1
        self._cur.execute(f"RELEASE SAVEPOINT {name}")

    # -- pipelines and nodes -------------------------------------------------------------
    def add_pipeline(self, root_id: str, tree: dict | str, root_data: dict, options: dict, at: float,
                     name: str = "") -> None:
        """``tree``: the tree, or its JSON text already encoded (a dict object, not an envelope);
        ``name``: the tree's name, kept apart for listing."""
        self._insert("culm_pipeline", [{
            "id": root_id, "tree": codec.dumps_tree(tree, root_id),
            "root_data": codec.dumps_fields(root_data, f"root_pipeline_data of pipeline {root_id}"),
            "options": codec.dumps(options), "created_time": at, "name": name[:255],
        }])

    def list_pipelines(self, query: PipelineQuery) -> tuple[dict[str, int], list[PipelineRow]]:
        """Counts per root state and one page of root pipelines (see :mod:`culm.storage.listing`)."""
        return listing.list_pipelines(self._all, self.listing_tables, query)

    def recount_roots(self) -> dict[str, int]:
        """Count the root pipelines per state from their rows and make that the kept counts
        (``culm db recount``: after rows were edited by hand, or written by a culm before 0007
        while the database was at 0007); returns the counts."""
        have = {(int(r[0]), str(r[1])) for r in self._all(ROOT_COUNT_ROWS_LOCKED if self.lock_rows
                                                          else ROOT_COUNT_ROWS)}
        counted = {str(r[0]): int(r[1]) for r in self._all(ROOTS_COUNTED)}
        wanted = {(shard, name) for shard in range(ROOT_COUNT_SHARDS) for name in {*states.ALL_STATES, *counted}}
        self._many(ROOT_COUNT_INSERT, sorted(wanted - have))
        self._x(ROOT_COUNTS_CLEAR)
        for name in sorted(counted):
            self._x(ROOT_COUNT_SET, [counted[name], name])
        return counted

    def get_pipeline(self, root_id: str) -> tuple[dict, dict, dict] | None:
        ahead = self._trees_ahead.pop(root_id, None)
        row = ahead or self._one("SELECT tree, root_data, options FROM culm_pipeline WHERE id = ?", [root_id])
        if row is None:
            return None
        return codec.loads(row[0]), codec.loads(row[1]), codec.loads(row[2])

    def get_pipelines(self, root_ids: Sequence[str]) -> dict[str, tuple[dict, dict, dict]]:
        out = {}
        ahead = self._trees_ahead
        for root_id in [r for r in root_ids if r in ahead]:
            tree, data, options = ahead.pop(root_id)
            out[root_id] = codec.loads(tree), codec.loads(data), codec.loads(options)
        rest = [r for r in root_ids if r not in out]
        for i in range(0, len(rest), 500):
            chunk = rest[i : i + 500]
            for row in self._all(*self._pipelines_read(chunk)):
                out[row[0]] = codec.loads(row[1]), codec.loads(row[2]), codec.loads(row[3])
        return out

    def pipeline_trees(self, root_ids: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for row in self._by_roots("SELECT id, tree FROM culm_pipeline WHERE id IN ({marks})", root_ids, []):
            if row[0] in root_ids:  # (MySQL's collation matches ids of another case too)
                out[row[0]] = codec.loads(row[1])
        return out

    def node_names(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
        """The names the trees of runs give some of their nodes (``{root_id: [node_id]}``), each
        run's tree read whole (:mod:`culm.storage.node_names` says why)."""
        return node_names.from_trees(self.pipeline_trees(sorted(wanted)), wanted)

    @staticmethod
    def _pipelines_read(root_ids: Sequence[str]) -> tuple[str, Sequence[Any]]:
        return f"SELECT id, tree, root_data, options FROM culm_pipeline WHERE id IN ({marks(len(root_ids))})", root_ids

    def pipeline_created(self, root_id: str) -> float | None:
        row = self._one("SELECT created_time FROM culm_pipeline WHERE id = ?", [root_id])
        return float(row[0]) if row else None

    def get_root_data(self, root_id: str) -> dict:
        row = self._one("SELECT root_data FROM culm_pipeline WHERE id = ?", [root_id])
        return codec.loads(row[0]) if row else {}

    def add_nodes(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Index a run's nodes: rows of (id, root_id, pipeline_id, type)."""
        if self._deferred is None:
            self._many(NODE_INSERT, rows)
        else:
            self._insert("culm_node", [dict(zip(NODE_COLUMNS, r, strict=True)) for r in rows])

    # MySQL and MariaDB compare ids by the table's collation, by default ignoring case, accents
    # and trailing spaces: a read by id may find the row of another id ('PCASE1' finds 'pcase1'),
    # which the reads below drop (a command naming it failed with a KeyError, not "not found").
    def node_root(self, node_id: str) -> str | None:
        row = self._one("SELECT root_id, id FROM culm_node WHERE id = ?", [node_id])
        return row[0] if row and row[1] == node_id else None

    def node_types(self, ids: Sequence[str]) -> dict[str, str]:
        """``{node_id: type}`` of the indexed ids among ``ids`` (the root's type is ``Pipeline``)."""
        return self._answer(self._plan_node_types(ids))

    def existing_node_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            found.update(r[0] for r in self._all(f"SELECT id FROM culm_node WHERE id IN ({marks(len(chunk))})", chunk))
        return found

    # -- states ---------------------------------------------------------------------------
    def get_state(self, node_id: str, *, for_update: bool = False) -> StateRecord | None:
        ahead = self._locked_ahead.pop(node_id, None) if self._locked_ahead else None
        if ahead is not None and for_update:
            return ahead
        view = self._state_view
        if not for_update and view is not None and node_id in view:
            known = view[node_id]
            return _copy_state(known) if known is not None else None
        row = self._one(STATE_BY_ID_LOCKED if for_update and self.lock_rows else STATE_BY_ID, [node_id])
        st = _state_row(row) if row is not None and row[0] == node_id else None
        if view is not None and node_id in view:
            view[node_id] = _copy_state(st) if st is not None else None
        if st is not None and for_update and self._owned is not None:
            self._owned[node_id] = [st.version, st.name]
        return st

    def get_states(self, node_ids: Iterable[str], *, mutable: Container[str] | None = None) -> dict[str, StateRecord]:
        """The states of ``node_ids`` that exist. With ``mutable``, only the records of those ids may
        be changed by the caller; the others may be shared with this unit's views (read them only).
        """
        ids = list(node_ids)
        if not ids:
            return {}
        view = self._state_view
        if view is not None and all(i in view for i in ids):
            return {i: (_copy_state(st) if mutable is None or i in mutable else st)
                    for i in ids if (st := view[i]) is not None}
        if len(ids) == 1:
            st = self.get_state(ids[0])
            return {st.node_id: st} if st else {}
        rows = self._all(STATES_IN.format(marks=marks(len(ids))), ids)
        wanted = set(ids)
        return {r[0]: _state_row(r) for r in rows if r[0] in wanted}

    def hold_states(self, node_ids: Iterable[str]) -> dict[str, StateRecord]:
        """The states of ``node_ids`` that exist, kept from changing by others until the commit.

        On a server database the first read of each takes a shared row lock: a transaction that
        would change one (a pause, a resume, a revoke) waits for this one's commit, so nothing this
        transaction decides from them is overtaken. SQLite's single writer needs no lock.
        """
        ids = list(dict.fromkeys(node_ids))
        fresh = self._to_hold(ids)
        if fresh:
            self._take_held(fresh, self._all(*self._hold_read(fresh)))
        return self.get_states(ids, mutable=())

    def _to_hold(self, ids: Iterable[str]) -> list[str]:
        """Which of ``ids`` a hold still has to read and lock: none on SQLite, nor the rows this
        transaction holds already (held, or locked by its own writes, as a subprocess's state it
        has just inserted, and known to its view)."""
        if not self.lock_rows:
            return []
        view, owned = self._state_view or {}, self._owned or {}
        return [i for i in ids if i not in self._held and not (i in owned and i in view)]

    def _hold_read(self, fresh: Sequence[str]) -> tuple[str, Sequence[Any]]:
        return STATES_IN.format(marks=marks(len(fresh))) + " ORDER BY node_id" + self.share_lock, fresh

    def _take_held(self, fresh: Sequence[str], rows: Sequence[Any]) -> None:
        self._held.update(fresh)
        found = {r[0]: _state_row(r) for r in rows}
        if self._state_view is None:
            self._state_view = {}
        for node_id in fresh:  # the latest commit (and our own writes): fresher than any view
            self._state_view[node_id] = found.get(node_id)
        if self._owned is not None:
            # Nobody else can change a row held until our commit: a compare-and-set on it has a
            # known outcome and waits like any other write (see _owned).
            for node_id, st in found.items():
                self._owned.setdefault(node_id, [st.version, st.name])

    @property
    def prefetch(self) -> Prefetch | None:
        """Every SQL unit reads a walk's states ahead (``prefetch_states``), PostgreSQL's and
        MySQL's a batch's tasks too (``read_tasks_ahead``): each statement is a round trip."""
        return self

    # MySQL, PostgreSQL: expect_walks' reads go with the claim (read_tasks_ahead); SQLite: never read ahead
    walks_with_claim = False
    _expected: tuple[Sequence[str], Sequence[str], Sequence[str], Sequence[str]] | None = None

    def expect_walks(
        self, held: Sequence[str], nodes: Sequence[str], pipelines: Sequence[str], trees: Sequence[str] = ()
    ) -> None:
        self._expected = (held, nodes, pipelines, trees)  # sent with the claim (read_tasks_ahead)

    def _expected_reads(self) -> tuple[list[tuple[str, Sequence[Any]]], Callable[[list[list[Any]]], None]]:
        """The reads of the walks expect_walks announced (read_walks_ahead's: the held states
        with their shared locks, the other states, the contexts; as the dialect sends them), then
        the trees it named (a plain read, after every lock), and what takes their answers in.
        Once: a second call finds nothing announced."""
        expected, self._expected = self._expected, None
        if expected is None:
            return [], lambda answers: None
        held, nodes, pipelines, trees = expected
        fresh, missing, contexts = self._walks_missing(held, nodes, pipelines)
        reads, split = self._walk_reads(fresh, missing, contexts)
        walks = len(reads)
        roots = [r for r in dict.fromkeys(trees) if r not in self._trees_ahead][:500]
        if roots:
            reads = [*reads, self._pipelines_read(roots)]

        def take(answers: list[list[Any]]) -> None:
            self._take_walks(fresh, missing, contexts, split(answers[:walks]))
            for row in answers[walks] if roots else ():
                self._trees_ahead[row[0]] = (row[1], row[2], row[3])

        return reads, take

    def prefetch_states(self, node_ids: Iterable[str]) -> None:
        """Read the states of ``node_ids`` in one statement, for the reads this transaction is about
        to make (the nodes a walk may enter before it stops). Reads answered from it see the rows
        as of this statement plus this transaction's own writes; locking reads still go to the
        database. A row another transaction commits meanwhile is seen as if it came a moment later.
        """
        missing = self._states_missing(node_ids)
        if missing:
            self._take_states(missing, [r for read in self._states_reads(missing) for r in self._all(*read)])

    def _states_missing(self, node_ids: Iterable[str]) -> list[str]:
        view = self._state_view if self._state_view is not None else {}
        return [i for i in dict.fromkeys(node_ids) if i not in view]

    @staticmethod
    def _states_reads(missing: Sequence[str]) -> list[tuple[str, Sequence[Any]]]:
        return [(STATES_IN.format(marks=marks(len(chunk))), chunk)
                for chunk in (missing[i : i + 500] for i in range(0, len(missing), 500))]

    def _take_states(self, missing: Sequence[str], rows: Sequence[Any]) -> None:
        view = self._state_view if self._state_view is not None else {}
        found = {r[0]: _state_row(r) for r in rows}
        for node_id in missing:
            view[node_id] = found.get(node_id)
        self._state_view = view

    def read_walks_ahead(self, held: Sequence[str], nodes: Sequence[str], pipelines: Sequence[str]) -> None:
        """:meth:`hold_states` of ``held`` (answered later from what it read), :meth:`prefetch_states`
        of ``nodes`` and :meth:`prefetch_contexts` of ``pipelines``: on a server database their
        statements go together, in one round trip (with the deferred writes before them)."""
        fresh, missing, contexts = self._walks_missing(held, nodes, pipelines)
        if fresh or missing or contexts:
            reads, split = self._walk_reads(fresh, missing, contexts)
            self._take_walks(fresh, missing, contexts, split(self._all_together(reads)))

    def _walks_missing(
        self, held: Sequence[str], nodes: Sequence[str], pipelines: Sequence[str]
    ) -> tuple[list[str], list[str], list[str]]:
        """Of read_walks_ahead's ids, those still to read: states to hold, other states, contexts."""
        fresh = self._to_hold(dict.fromkeys(held))
        holding = set(fresh)
        return fresh, [i for i in self._states_missing(nodes) if i not in holding], self._contexts_missing(pipelines)

    def _take_walks(self, fresh: Sequence[str], missing: Sequence[str], contexts: Sequence[str],
                    rows: tuple[list[Any], list[Any], list[Any]]) -> None:
        held_rows, state_rows, context_rows = rows
        if fresh:
            self._take_held(fresh, held_rows)
        if missing:
            self._take_states(missing, state_rows)
        if contexts:
            self._take_contexts(contexts, context_rows, CONTEXTS_AHEAD)

    def _walk_reads(
        self, fresh: Sequence[str], missing: Sequence[str], contexts: Sequence[str]
    ) -> tuple[list[tuple[str, Sequence[Any]]], Callable[[list[list[Any]]], tuple[list[Any], list[Any], list[Any]]]]:
        """The statements of read_walks_ahead's three reads (each may be empty: the held states,
        read with a shared lock in node id order; the other states; the contexts), and what splits
        their answers (in the order of the statements) into those three reads' rows."""
        reads = [self._hold_read(fresh)] if fresh else []
        state_reads = self._states_reads(missing) if missing else []
        reads += state_reads
        if contexts:
            reads.append(self._contexts_read(contexts, CONTEXTS_AHEAD))

        def split(answers: list[list[Any]]) -> tuple[list[Any], list[Any], list[Any]]:
            got = iter(answers)
            held_rows = next(got) if fresh else []
            state_rows = [r for _ in state_reads for r in next(got)]
            return held_rows, state_rows, next(got) if contexts else []

        return reads, split

    def _all_together(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """The rows of each of ``reads``; the dialects that can send them in one round trip do."""
        return [self._all(sql, params) for sql, params in reads]

    # -- several plain reads in one round trip (culm.core.ports.Changes.read_together) -----------
    # Each verb a poll reads, as (its statements, what makes its answer of their rows): the verb
    # itself runs them one by one, read_together sends those of several verbs together.
    def read_together(self, calls: Sequence[tuple[str, tuple[Any, ...]]]) -> list[Any]:
        """The answers of several plain reads, each ``(verb, args)`` answered as ``verb(*args)``
        would; on a server database their statements go in one round trip."""
        refuse_unknown_reads(calls)
        # One by one where nothing is gained together (SQLite runs them in turn anyway, and a unit
        # that keeps copies answers some of them itself) or a view answers get_states.
        if len(calls) < 2 or self._state_view is not None or type(self)._all_together is SqlUnit._all_together:
            return [getattr(self, verb)(*args) for verb, args in calls]
        plans = [getattr(self, "_plan_" + verb)(*args) for verb, args in calls]
        answers = iter(self._all_together([read for reads, _ in plans for read in reads]))
        return [make([next(answers) for _ in reads]) for reads, make in plans]

    def _answer(self, plan: _Plan) -> Any:
        reads, make = plan
        return make([self._all(sql, params) for sql, params in reads])

    def _plan_read_changes(self, after: int, upto: int, root_id: str | None, limit: int) -> _Plan:
        read: tuple[str, list[Any]] = ((CHANGES_BETWEEN, [after, upto, limit]) if root_id is None
                                       else (CHANGES_OF_ROOT_BETWEEN, [after, upto, root_id, limit]))
        return [read], lambda answers: [
            StateChange(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), float(r[7])) for r in answers[0]]

    def _plan_node_types(self, ids: Sequence[str]) -> _Plan:
        chunks = [list(ids[i : i + 500]) for i in range(0, len(ids), 500)]

        def make(answers: list[list[Any]]) -> dict[str, str]:
            wanted = set(ids)  # MySQL's collation matches ids of another case too
            return {r[0]: r[1] for rows in answers for r in rows if r[0] in wanted}

        return [(f"SELECT id, type FROM culm_node WHERE id IN ({marks(len(chunk))})", chunk) for chunk in chunks], make

    def _plan_states_of_root(self, root_id: str) -> _Plan:
        return [(STATES_OF_ROOT, [root_id])], lambda answers: [_state_row(r) for r in answers[0]]

    def _plan_get_states(self, node_ids: Iterable[str]) -> _Plan:
        ids = list(dict.fromkeys(node_ids))
        return (self._states_reads(ids) if ids else []), lambda answers: {
            r[0]: _state_row(r) for rows in answers for r in rows}

    def _plan_live_schedules(self, node_ids: Sequence[str]) -> _Plan:
        ids = list(node_ids)
        reads: list[tuple[str, Sequence[Any]]] = [
            (LIVE_SCHEDULES_IN.format(marks=marks(len(chunk))), [*chunk, False])
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500))]
        return reads, lambda answers: [_schedule_row(r) for rows in answers for r in rows]

    def _plan_live_process_positions(self, root_id: str) -> _Plan:
        return [(LIVE_POSITIONS_OF_ROOT, [root_id, False])], lambda answers: [
            ProcessPosition._make(r) for r in answers[0]]

    def _plan_tasks_of_root(self, root_id: str, kind: str) -> _Plan:
        return [(TASKS_OF_ROOT, [root_id, kind])], lambda answers: [_task_row(r) for r in answers[0]]

    def last_change_seq(self) -> int:
        row = self._one("SELECT MAX(seq) FROM culm_change")
        return int(row[0]) if row and row[0] is not None else 0

    def changes_since(self, after: int, most: int) -> tuple[int, list[tuple[str, str]]]:
        """The highest seq, and the (root_id, node_id) of the recorded changes whose seq is in
        (after, after + most], each pair once (a node that moved twice between two polls is read
        again once). A feed that has not moved costs one statement (a poll of a pipeline that
        stood still); one statement for both read more (its DISTINCT runs even when nothing moved:
        +7 % instructions over 300 polls of moving pipelines, docs/performance.md, feed8)."""
        last = self.last_change_seq()
        return last, (self._all(CHANGED_PAIRS, [after, after + most]) if last > after else [])

    def changed_states(self, root_id: str, after: int, upto: int) -> list[tuple[str, StateRecord | None]]:
        """Each node of ``root_id`` the feed names in (``after``, ``upto``], once, with its state
        row or None: one statement, so a poll of a moving pipeline fetches neither the feed's
        rows nor an IN list of their ids (docs/performance.md, observe9)."""
        return [(r[0], _state_row(r) if r[1] is not None else None)
                for r in self._all(CHANGED_STATES, [root_id, after, upto])]

    def first_change_seq(self) -> int | None:
        row = self._one("SELECT MIN(seq) FROM culm_change")
        return int(row[0]) if row and row[0] is not None else None

    def read_changes(self, after: int, upto: int, root_id: str | None, limit: int) -> list[StateChange]:
        """Up to ``limit`` recorded changes with ``after`` < seq <= ``upto`` (of one root when
        given), in seq order."""
        return self._answer(self._plan_read_changes(after, upto, root_id, limit))

    def change_time_from(self, seq: int) -> float | None:
        """The time of the first recorded change whose seq is ``seq`` or above."""
        row = self._one('SELECT "time" FROM culm_change WHERE seq >= ? ORDER BY seq LIMIT 1', [seq])
        return float(row[0]) if row else None

    def prune_changes(self, lo: int, hi: int, cutoff: float) -> int:
        """Delete the changes with ``lo`` <= seq < ``hi`` older than ``cutoff`` of pipelines that
        are FINISHED or REVOKED; returns how many went."""
        cur = self._x(PRUNE_CHANGES, [lo, hi, cutoff, states.FINISHED, states.REVOKED])
        return max(int(cur.rowcount), 0)

    def states_of_root(self, root_id: str) -> list[StateRecord]:
        return self._answer(self._plan_states_of_root(root_id))

    def _by_roots(self, sql: str, root_ids: Sequence[str], params: Sequence[Any]) -> list[Any]:
        """The rows of ``sql`` (its ``{marks}`` the root ids, then ``params``) for ``root_ids``,
        500 ids a query: one query through ix_culm_state_root_id for a page of pipelines."""
        ids = list(dict.fromkeys(root_ids))
        return [row for at in range(0, len(ids), 500)
                for row in self._all(sql.format(marks=marks(len(ids[at:at + 500]))), [*ids[at:at + 500], *params])]

    def failed_node_counts(self, root_ids: Sequence[str]) -> dict[str, int]:
        rows = self._by_roots("SELECT root_id, COUNT(*) FROM culm_state WHERE root_id IN ({marks}) AND name = ? "
                              "GROUP BY root_id", root_ids, [states.FAILED])
        return {str(r[0]): int(r[1]) for r in rows}

    def failed_nodes(self, root_ids: Sequence[str], first: int) -> dict[str, tuple[int, list[str]]]:
        # One grouped read per page; the database counts, only `first` rows per root come back.
        found: dict[str, tuple[int, list[str]]] = {}
        for root_id, node_id, n in self._by_roots(FAILED_FIRST, root_ids, [states.FAILED, first]):
            found.setdefault(str(root_id), (int(n), []))[1].append(str(node_id))
        return found

    def callback_waiters_first(self, root_ids: Sequence[str], first: int
                               ) -> dict[str, tuple[int, list[tuple[str, str, str]]]]:
        found: dict[str, tuple[int, list[tuple[str, str, str]]]] = {}
        params = [states.RUNNING, False, "callback", "multiple_callback", first]
        for root_id, node_id, version, schedule_type, n in self._by_roots(CALLBACK_WAITERS_FIRST, root_ids, params):
            found.setdefault(str(root_id), (int(n), []))[1].append((str(node_id), str(version), str(schedule_type)))
        return found

    def callback_waiters(self, root_ids: Sequence[str]) -> list[tuple[str, str, str, str]]:
        # Through ix_culm_state_root_id and the schedule's (node_id, version) key.
        rows = self._by_roots(CALLBACK_WAITERS, root_ids, [states.RUNNING, False, "callback", "multiple_callback"])
        return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]

    def states_of_parent(self, parent_id: str) -> list[StateRecord]:
        return [_state_row(r) for r in self._all(STATES_OF_PARENT, [parent_id])]

    def insert_state(self, rec: StateRecord) -> None:
        if self._state_view is not None:
            self._state_view[rec.node_id] = _copy_state(rec)
        params = _state_params(rec)
        self._later(STATE_INSERT, params, (("culm_state", (rec.node_id,)),))
        if self._deferred is not None:
            # The queued entry holds this very list, so a later compare-and-set can edit it.
            self._unsent_states[rec.node_id] = params
        if self._owned is not None:
            self._owned[rec.node_id] = [rec.version, rec.name]
            self._childless.discard(rec.parent_id)
            self._childless.add(rec.node_id)

    def update_state(
        self,
        node_id: str,
        *,
        expect_version: str | None = None,
        expect_names: Collection[str] | None = None,
        **fields: Unpack[StateWrite],
    ) -> bool:
        """Compare-and-set: write ``fields`` only if version and state name still match."""
        if self._locked_ahead:
            self._locked_ahead.pop(node_id, None)
        if self._childless and "parent_id" in fields:
            self._childless.discard(fields["parent_id"])
        done = self._cas_state(node_id, expect_version, expect_names, fields)
        view = self._state_view
        if view is not None and node_id in view:
            known = view[node_id]
            if done and known is not None:
                for k, v in fields.items():
                    setattr(known, k, v)
            elif not done:
                del view[node_id]  # someone else's change: read it again when asked
        return done

    def _cas_state(
        self, node_id: str, expect_version: str | None, expect_names: Iterable[str] | None, fields: Mapping[str, Any]
    ) -> bool:
        names = list(expect_names) if expect_names is not None else None
        where, params = cas_where(node_id, expect_version, names)
        owned = self._owned.get(node_id) if self._owned is not None else None
        if owned is not None:
            if (expect_version is not None and expect_version != owned[0]) or (names is not None
                                                                               and owned[1] not in names):
                return False
            unsent = self._unsent_states.get(node_id)
            if unsent is not None and fields.keys() <= STATE_INDEX.keys():
                for k, v in fields.items():
                    unsent[STATE_INDEX[k]] = v
            else:
                self._unsent_states.pop(node_id, None)  # later ones must follow this UPDATE, not pass it
                self._update_later("culm_state", where, params, fields)
        elif self._update("culm_state", where, params, fields) != 1:
            return False
        elif self._owned is not None:
            # Updated, so now locked by this transaction; kept when its version and name are known.
            version = fields.get("version", expect_version)
            name = fields.get("name", names[0] if names is not None and len(names) == 1 else None)
            if version is not None and name is not None:
                owned = self._owned[node_id] = [version, name]
        if owned is not None:
            owned[0] = fields.get("version", owned[0])
            owned[1] = fields.get("name", owned[1])
        return True

    def reset_inner_loops(self, parent_id: str) -> None:
        # Every row it changes goes to the change feed as a note (culm.storage.feed), or the kept
        # state trees (culm.core.state_tree) would go on showing the old inner loop. The database
        # writes the notes from the rows themselves: nothing comes back, so both statements are
        # deferred like any write whose result is not read (no round trip of their own on
        # PostgreSQL). Later compare-and-sets must not be folded into INSERTs queued before them,
        # or they would be applied ahead of them.
        if parent_id in self._childless:
            return  # its row is new: no child row stored (nor a kept copy of one)
        self._unsent_states.clear()
        if self._deferred is None:  # it runs now: no row noted (a first entry), nothing to reset
            if self._x(NOTE_INNER_LOOPS, [time.time(), parent_id]).rowcount:
                self._x(RESET_INNER_LOOPS, [parent_id])
        else:
            self._later(NOTE_INNER_LOOPS, [time.time(), parent_id])
            self._later(RESET_INNER_LOOPS, [parent_id])
        for st in (self._state_view or {}).values():
            if st is not None and st.parent_id == parent_id:
                st.inner_loop = 0

    # -- processes ------------------------------------------------------------------------
    def insert_processes(self, recs: Sequence[ProcessRecord]) -> None:
        self._insert("culm_process", [
            {"id": r.id, "root_id": r.root_id, "parent_id": r.parent_id, "current_node_id": r.current_node_id,
             "destination_id": r.destination_id, "stack": codec.dumps_ids(r.stack), "asleep": r.asleep,
             "suspended": r.suspended, "suspended_by": r.suspended_by, "dead": r.dead, "ack_num": r.ack_num,
             "need_ack": r.need_ack, "priority": r.priority, "queue": r.queue, "last_heartbeat": r.last_heartbeat}
            for r in recs
        ])

    def get_process(self, process_id: str, *, for_update: bool = False) -> ProcessRecord | None:
        row = self._one(PROCESS_BY_ID_LOCKED if for_update and self.lock_rows else PROCESS_BY_ID, [process_id])
        return _process_row(row) if row else None

    def update_process(self, process_id: str, **fields: Unpack[ProcessFields]) -> None:
        if self._tasks_ahead and self._procs_written is not None:  # only read-ahead tasks care
            self._procs_written.add(process_id)
        if "stack" in fields:
            self._update_later("culm_process", "id = ?", [process_id], {**fields, "stack": codec.dumps_ids(fields["stack"])})
            return
        self._update_later("culm_process", "id = ?", [process_id], fields)

    def ack_children(self, counts: Mapping[str, int]) -> dict[str, ProcessRecord]:
        """Count finished children, in parent id order (one lock order for every writer); the row
        locks taken by the updates serialise siblings."""
        acks = [(counts[pid], pid) for pid in sorted(counts)]
        if self._tasks_ahead and self._procs_written is not None:  # only read-ahead tasks care
            self._procs_written.update(counts)
        return {row[0]: _process_row(row) for row in self._acked_rows(acks)}

    def ack_children_at_commit(
        self, counts: Mapping[str, int], gateways: Mapping[str, str], woken: Callable[[list[TaskRecord]], None]
    ) -> bool:
        """Count finished children as ack_children does, but decide each parent's wake in the
        database with the commit, in its round trip (server databases, outside a savepoint; False
        elsewhere: nothing done, the caller counts with ack_children). A parent not stored makes
        the commit fail (PARENTS_STORED): nothing of the transaction is kept.

        Per parent, in parent id order, after every write the transaction queued so far: the
        ack's UPDATE, then, only where this ack was its last child's, the parent's task at its
        gateway (``gateways[parent_id]``) and the parent's row woken (see WAKE_TASK_ON_ACK); the
        parents' rows are read after them, before the COMMIT. ``woken`` gets the tasks written,
        after the commit. Locks and their order are those of ack_children followed by the
        wake's writes, one round trip fewer.
        """
        if self._deferred is None or self._savepoint_depth:
            return False
        if self._commit_reads:  # a second call's parents would be read after both calls' acks
            raise RuntimeError("ack_children_at_commit is called at most once per transaction")
        pids = sorted(counts)
        if self._tasks_ahead and self._procs_written is not None:  # only read-ahead tasks care
            self._procs_written.update(pids)
        due = time.time()
        tasks = {pid: new_id() for pid in pids}
        for pid in pids:
            for sql, params in self._ack_and_wake(pid, counts[pid], gateways[pid], tasks[pid], due):
                self._later(sql, params)  # rows unknown (no key): a statement of its own, in this order

        def take(rows: list[Any]) -> None:
            parents = {p.id: p for p in map(_process_row, rows)}
            out = []
            for pid in pids:  # every one stored: PARENTS_STORED refused the commit otherwise
                p = parents.get(pid)
                if p is not None and p.ack_num == 0 and p.need_ack == 0:  # woken here (a count left is at least 1)
                    out.append(TaskRecord(tasks[pid], EXECUTE, pid, gateways[pid], p.root_id, due=due,
                                          priority=p.priority, queue=p.queue))
            woken(out)

        self._read_parents_at_commit(pids, take)
        return True

    def _read_parents_at_commit(self, pids: list[str], take: Callable[[list[Any]], None]) -> None:
        """Queue the reads of ack_children_at_commit: PARENTS_STORED (refusing the commit when
        one of ``pids`` is not stored), then the parents' rows, for ``take``."""
        in_pids = marks(len(pids))
        self._commit_reads.append((PARENTS_STORED.format(marks=in_pids), [*pids, len(pids)], _ignore_rows))
        self._commit_reads.append((PROCESSES_IN.format(marks=in_pids), pids, take))

    @staticmethod
    def _ack_and_wake(pid: str, n: int, gateway: str, task_id: str, due: float) -> list[tuple[str, Sequence[Any]]]:
        """A parent's ack and, where it was its last child's, its wake (ack_children_at_commit)."""
        return [(ACK_CHILDREN, [n, pid]), (WAKE_TASK_ON_ACK, [task_id, EXECUTE, gateway, due, pid]),
                (WAKE_ON_ACK, [gateway, pid])]

    def _acked_rows(self, acks: Sequence[tuple[int, str]]) -> list[Any]:
        """The acks' UPDATEs, then the process rows with them (each dialect in as few round trips
        as it can)."""
        for n, pid in acks:
            self._x(ACK_CHILDREN, [n, pid])
        ids = [pid for _, pid in acks]
        return self._all(PROCESSES_IN.format(marks=marks(len(ids))), ids)

    def processes_of_root(self, root_id: str) -> list[ProcessRecord]:
        return [_process_row(r) for r in self._all(PROCESSES_OF_ROOT, [root_id])]

    def live_process_positions(self, root_id: str) -> list[ProcessPosition]:
        return self._answer(self._plan_live_process_positions(root_id))

    def processes_suspended_by(self, by: str) -> list[ProcessRecord]:
        rows = self._all(PROCESSES_SUSPENDED_BY, [by, True, False])
        return [_process_row(r) for r in rows]

    def processes_at(self, node_id: str) -> list[ProcessRecord]:
        rows = self._all(PROCESSES_AT, [node_id, False])
        return [_process_row(r) for r in rows]

    def kill_processes_of_root(self, root_id: str) -> None:
        self._procs_written = None
        self._x("UPDATE culm_process SET dead = ? WHERE root_id = ?", [True, root_id])

    # -- tasks ----------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        self._insert("culm_task", [
            {"id": t.id, "kind": t.kind, "process_id": t.process_id, "node_id": t.node_id, "root_id": t.root_id,
             "schedule_id": t.schedule_id, "callback_id": t.callback_id, "due": t.due,
             "running_version": t.running_version, "priority": t.priority, "queue": t.queue, "published": False}
            for t in tasks if t is not None
        ])

    def claim_task(self, task_id: str, owner: str, until: float, at: float) -> TaskRecord | None:
        """Take a lease on a task; None when it is gone (done) or leased by a live worker."""
        return self.get_task(task_id) if self._take_lease(task_id, owner, until, at) else None

    def _take_lease(self, task_id: str, owner: str, until: float, at: float) -> bool:
        return self._x(TAKE_LEASE, [owner, until, task_id, at]).rowcount == 1

    def task_with_process(
        self, task_id: str, lease: tuple[str, float, float] | None = None, *, held: bool = False
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        """A task and its process; with ``lease`` (owner, until, at) the task is claimed first
        (None, None when it is gone or leased by a live worker).

        ``held``: the task is ours already (its user code ran and the result is to be applied):
        ``lease`` is kept, taken again if it ran out, and (None, None) comes back when another
        runner holds the task now. The check costs no statement of its own.
        """
        if self._tasks_ahead and task_id in self._tasks_ahead:
            return self._task_read_ahead(task_id)
        if lease is not None and held:
            return self._task_held(task_id, lease)
        if lease is not None:
            return self._claim_with_process(task_id, lease)
        return self._task_and_process(self._one(TASK_WITH_PROCESS, [task_id]))

    def _claim_with_process(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        """Take the lease on a task, then read it with its process."""
        owner, until, at = lease
        if not self._take_lease(task_id, owner, until, at):
            return None, None
        return self._task_and_process(self._one(TASK_WITH_PROCESS, [task_id]))

    def _task_held(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        """A task whose user code ran, if it is still ours (see ``held`` of task_with_process)."""
        raise NotImplementedError  # each dialect locks what it must its own way

    def _keep_lease(self, task_id: str, holder: str | None, until: float | None,
                    lease: tuple[str, float, float]) -> bool:
        """Whether the task read (and row-locked) with lease columns ``holder``/``until`` is still
        ours under ``lease``; takes it again (one UPDATE, off the usual path) if it ran out."""
        owner, new_until, at = lease
        if holder == owner and until is not None and until >= at:
            return True  # the usual case: our lease, kept alive
        if holder not in (None, owner) and until is not None and until >= at:
            return False  # another runner took the task over: its result is the one that counts
        self._x(RETAKE_LEASE, [owner, new_until, task_id])
        return True

    def _lock_ahead(self, st: StateRecord) -> None:
        self._locked_ahead[st.node_id] = st
        if self._owned is not None:
            self._owned[st.node_id] = [st.version, st.name]

    def read_tasks_ahead(self, fresh: Sequence[str], resumed: Sequence[str], lease: tuple[str, float, float],
                         resumed_at: Sequence[str] = ()) -> None:
        """PostgreSQL, MySQL: answer this transaction's coming ``task_with_process`` calls for a
        batch of tasks with two or three statements instead of one or more each: ``fresh`` tasks are claimed with ``lease``
        and read with their processes, ``resumed`` ones (their user code ran) are read with their
        processes and their nodes' states, locked (and dropped if another runner holds them now,
        see ``held`` of task_with_process). A process this transaction writes before its
        task's call is read again then; a state it locks or writes first is not taken from here.
        """
        return  # PostgreSQL's and MySQL's units do; on SQLite each task is read by its own call

    def tasks_read_ahead(self) -> list[tuple[TaskRecord, ProcessRecord | None]]:
        """The tasks and processes read_tasks_ahead found (not handed out yet)."""
        return [(t, p) for t, p, _ in (v for v in self._tasks_ahead.values() if v is not None)]

    def _task_read_ahead(self, task_id: str) -> tuple[TaskRecord | None, ProcessRecord | None]:
        entry = self._tasks_ahead.pop(task_id)
        if entry is None:
            return None, None
        task, proc, st = entry
        if st is not None and self._owned is not None and st.node_id not in self._owned:
            self._locked_ahead[st.node_id] = st
            self._owned[st.node_id] = [st.version, st.name]
        if proc is not None and (self._procs_written is None or proc.id in self._procs_written):
            proc = self.get_process(proc.id)
        return task, proc

    @staticmethod
    def _task_and_process(row: Sequence[Any] | None) -> tuple[TaskRecord | None, ProcessRecord | None]:
        if row is None:
            return None, None
        n = len(TASK_COLUMNS)
        return _task_row(row[:n]), (_process_row(row[n:]) if row[n] is not None else None)

    def tasks_of_root(self, root_id: str, kind: str) -> list[TaskRecord]:
        """The pending tasks of one kind of a root pipeline."""
        return self._answer(self._plan_tasks_of_root(root_id, kind))

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._one(TASK_BY_ID, [task_id])
        return _task_row(row) if row else None

    def task_lease(self, task_id: str) -> tuple[str | None, float | None, bool, float | None] | None:
        """(owner, claimed_until, published, relayed_at) of a task row; None when it is gone."""
        row = self._one("SELECT owner, claimed_until, published, relayed_at FROM culm_task WHERE id = ?", [task_id])
        return (row[0], row[1], bool(row[2]), row[3]) if row else None

    def update_task(self, task_id: str, **fields: Unpack[TaskFields]) -> None:
        self._update_later("culm_task", "id = ?", [task_id], fields)

    def delete_task(self, task_id: str, *, as_read: TaskRecord | None = None) -> None:
        """Delete a task row; with ``as_read``, only while it is still that task (same kind, node
        and running version as when it was read).

        A step that finds its result stale read the row before it locked the node's state. Another
        runner holding a copy of the same task (after a lease ran out) may have committed its own
        result in between, moving the row on to drive the process from the next node: that row is
        no longer this step's to delete (deleting it strands the process).
        """
        if as_read is None:
            self._later("DELETE FROM culm_task WHERE id = ?", [task_id], (("culm_task", (task_id,)),))
            return
        where, params = "id = ? AND kind = ? AND node_id = ?", [task_id, as_read.kind, as_read.node_id]
        if as_read.running_version is None:
            where += " AND running_version IS NULL"
        else:
            where += " AND running_version = ?"
            params.append(as_read.running_version)
        self._later("DELETE FROM culm_task WHERE " + where, params, (("culm_task", (task_id,)),))

    def delete_tasks_of_root(self, root_id: str) -> None:
        for task_id, entry in self._tasks_ahead.items():
            if entry is not None and entry[0].root_id == root_id:
                self._tasks_ahead[task_id] = None  # gone now
        if not self.lock_rows:
            self._x("DELETE FROM culm_task WHERE root_id = ?", [root_id])
            return
        # Never wait for a task row: an engine step holding one (it claims its task first) may be
        # waiting for the rows this transaction holds. A task skipped here finds its process dead
        # at its next step and is dropped then.
        ids = [r[0] for r in self._all("SELECT id FROM culm_task WHERE root_id = ? ORDER BY id FOR UPDATE SKIP LOCKED",
                                       [root_id])]
        for at in range(0, len(ids), 500):
            chunk = ids[at:at + 500]
            self._x(f"DELETE FROM culm_task WHERE id IN ({marks(len(chunk))})", chunk)

    def delete_tasks_of_processes(self, process_ids: Sequence[str]) -> None:
        """Delete the pending tasks of these processes (a revoked subprocess's), as
        :meth:`delete_tasks_of_root` does: never waiting for a row an engine step holds."""
        wanted = set(process_ids)
        for task_id, entry in self._tasks_ahead.items():
            if entry is not None and entry[0].process_id in wanted:
                self._tasks_ahead[task_id] = None  # gone now
        for at in range(0, len(process_ids), 500):
            chunk = list(process_ids[at:at + 500])
            where = f"process_id IN ({marks(len(chunk))})"
            if not self.lock_rows:
                self._x(f"DELETE FROM culm_task WHERE {where}", chunk)
                continue
            ids = [r[0] for r in self._all(f"SELECT id FROM culm_task WHERE {where} ORDER BY id FOR UPDATE SKIP LOCKED",
                                           chunk)]
            if ids:
                self._x(f"DELETE FROM culm_task WHERE id IN ({marks(len(ids))})", ids)

    def pending_tasks(self, at: float, limit: int, *, horizon: float = 0.0) -> list[TaskRecord]:
        """Tasks due before ``at + horizon`` whose lease (if any) has run out, oldest first."""
        rows = self._all(PENDING_TASKS, [at + horizon, at, int(limit)])
        return [_task_row(r) for r in rows]

    def relay_candidates(self, at: float, grace: float, horizon: float, limit: int,
                         *, resend_after: float | None = None) -> list[TaskRecord]:
        """Tasks a relay should hand to the broker again, row-locked so concurrent relays split them.

        Two kinds, both with a free lease and not relayed in the last ``resend_after`` seconds
        (default ``grace``): overdue tasks (due more than ``grace`` ago: their message was never
        sent, was lost, or its worker died) and timers due within ``horizon`` that were never
        published (too far ahead then).
        """
        resend = grace if resend_after is None else resend_after
        rows = self._all(RELAY_CANDIDATES_LOCKED if self.lock_rows else RELAY_CANDIDATES,
                         [at, at - resend, at - grace, False, at, at + horizon, int(limit)])
        return [_task_row(r) for r in rows]

    def mark_relayed(self, task_ids: Sequence[str], at: float) -> None:
        ids = list(task_ids)
        if ids:
            self._x(f"UPDATE culm_task SET relayed_at = ?, published = ? WHERE id IN ({marks(len(ids))})",
                    [at, True, *ids])

    def mark_published(self, task_ids: Sequence[str], published: bool) -> None:
        ids = list(task_ids)
        if ids:
            self._x(f"UPDATE culm_task SET published = ? WHERE id IN ({marks(len(ids))})", [published, *ids])

    def extend_leases(self, owner: str, task_ids: Sequence[str], until: float) -> None:
        """Extend ``owner``'s leases of ``task_ids`` to ``until``. On a server database a row
        another transaction holds is skipped, never waited for: the heartbeat must not wait for
        its own engine's batch (a long one would hold back every other lease, and the registry
        beat, until they ran out); the batch's rows are locked and so cannot be taken over, and
        the next beat extends them."""
        ids = list(task_ids)
        if ids and self.lock_rows:
            ids = [r[0] for r in self._all(f"SELECT id FROM culm_task WHERE id IN ({marks(len(ids))}) AND owner = ? "
                                           "ORDER BY id FOR UPDATE SKIP LOCKED", [*ids, owner])]
        if ids:
            self._x(f"UPDATE culm_task SET claimed_until = ? WHERE owner = ? AND id IN ({marks(len(ids))})",
                    [until, owner, *ids])

    def release_leases(self, task_ids: Sequence[str] | None = None) -> None:
        if task_ids is None:
            self._x("UPDATE culm_task SET owner = NULL, claimed_until = NULL")
            # Schedule calls are leased too: a multiple callback's lock would hold its next call
            # back until it ran out.
            self._x("UPDATE culm_schedule SET locked_until = NULL WHERE locked_until IS NOT NULL")
            return
        ids = list(task_ids)
        if ids:
            self._x(f"UPDATE culm_task SET owner = NULL, claimed_until = NULL WHERE id IN ({marks(len(ids))})", ids)

    # -- node data, execution data, context ----------------------------------------------
    def get_inputs_override(self, node_id: str) -> dict | None:
        row = self._one("SELECT inputs FROM culm_node_data WHERE node_id = ?", [node_id])
        return codec.loads(row[0]) if row else None

    def set_inputs_override(self, node_id: str, inputs: dict) -> None:
        """Raises UnstorableValueError, or StoredBytesBudgetError (an operator's retry inputs),
        before anything is written."""
        text = codec.dumps_fields(inputs, f"inputs of node {node_id}")
        budget.check(node_id, "inputs", len(text), lambda: self.stored_bytes(node_id, replacing="culm_node_data", serialise=True),
                     self.stored_total_after)
        self._upsert("culm_node_data", {"node_id": node_id, "inputs": text}, ["node_id"])

    def get_execution_data(self, node_id: str) -> tuple[dict, dict] | None:
        row = self._one("SELECT inputs, outputs FROM culm_execution_data WHERE node_id = ?", [node_id])
        return (codec.loads(row[0]), codec.loads(row[1])) if row else None

    def set_execution_data(self, node_id: str, inputs: dict, outputs: dict, *, always: bool = False) -> None:
        """Raises UnstorableValueError (naming the keys at fault), or StoredBytesBudgetError, before
        anything is written (``always``: checked whatever the size, see :func:`budget.check`)."""
        texts = codec.dumps_fields(inputs, "inputs"), codec.dumps_fields(outputs, "outputs")
        size = len(texts[0]) + len(texts[1])
        budget.check(node_id, "inputs" if len(texts[0]) >= len(texts[1]) else "outputs", size,
                     lambda: self.stored_bytes(node_id, replacing="culm_execution_data",
                                               serialise=budget.serialised(size)),
                     self.stored_total_after, always=always)
        self._write_execution_data(node_id, texts[0], texts[1])

    def _write_execution_data(self, node_id: str, inputs: str, outputs: str) -> None:
        self._upsert("culm_execution_data", {"node_id": node_id, "inputs": inputs, "outputs": outputs}, ["node_id"])

    def stored_bytes(self, node_id: str, replacing: str | None = None, *,
                     serialise: bool = False) -> tuple[str, int, int]:
        """The id of the root pipeline of ``node_id``, the bytes it stores (culm_root_bytes, kept by
        the triggers of revision 0010) and, when ``replacing`` names ``culm_execution_data`` or
        ``culm_node_data``, the bytes of ``node_id``'s row there apart (``outputs``: of its
        execution data's outputs; a write is about to replace them; else 0). The counter rows are
        read, not locked: writes of the root committed before the read and this transaction's own
        are counted; another transaction's still in flight are not. (Locking all of them, in shard
        order, deadlocked with the rows the triggers lock at each writer's earlier, smaller
        writes: review16.)

        ``serialise`` (the check of a callback, of a context update, and of the engine's writes
        past STORED_BYTES_CHECK_AT bytes, :func:`budget.serialised`: not of its smaller writes
        checked whatever their size, such as a node loop's histories): the root's budget lock
        (:attr:`budget_lock`) is taken first and held to the commit, so racing callbacks of one
        pipeline, to any of its nodes, its context updates and the engine's writes (two branches
        of a parallel gateway in two batches or two workers) are checked one by one, each seeing
        what the one before stored (without it, 8 racing callbacks of 100 KB to 8 nodes took
        250-550 KB past a 200 KB room on PostgreSQL, and two engine transactions each storing
        100 KB both passed a 150 KB room: session 20). It travels in the round trip of the read.
        Lock order: the caller's state rows, then the budget lock, then the counter rows its
        writes' triggers take. A callback's or a context update's check comes before its first
        counted write; an engine batch may have written counted rows (on its connection's shard)
        before its check, so a cycle can go through the lock: the batch holds counter row (R, k)
        and waits for the budget lock held by a callback whose connection writes the same shard k
        (1 in ROOT_BYTES_SHARDS), or two batches each holding one root's budget lock wait for the
        other's; and, as three parties: a callback T1 holds the budget lock of root R and waits,
        at its first counted write, for counter row (R, k); an engine batch E holds (R, k) (its
        earlier writes' triggers took it) and waits for node N2's state row; T3, a callback to N2
        (holding N2's state row) or a context update (holding the root's state row that E also
        waits for), waits for the budget lock T1 holds. The servers detect each such deadlock
        (PostgreSQL after deadlock_timeout, 1 s by default) and roll one party back, which runs
        again: a callback or context update by :mod:`culm.api`'s retry of deadlock victims
        (culm._retry), the engine's batch by the runner's (review19a)."""
        own = ROOT_BYTES_OWN.get(replacing or "", "0").format(size=self.octet_length)
        row = self._one(f"SELECT n.root_id, {own} FROM culm_node n WHERE n.id = ?", [node_id])
        if row is None:
            return node_id, 0, 0
        root_id, replaced = str(row[0]), int(row[1] or 0)
        if serialise and self.budget_lock:
            self._later(self.budget_lock, [root_id])
        held = self._one(ROOT_BYTES_HELD, [root_id])
        return root_id, int(held[0] or 0) - replaced, replaced

    def check_context_growth(self, pipeline_id: str, replaced: Sequence[object], values: Sequence[object]) -> None:
        """Raises StoredBytesBudgetError when ``values`` in place of ``replaced`` would not fit
        (checked whatever the size)."""
        budget.check_context_growth(self, pipeline_id, replaced, values)

    def all_stored_bytes(self) -> int:
        """The bytes every root pipeline stores together (culm_root_bytes: every counter row)."""
        row = self._one(ALL_ROOT_BYTES, [])
        return int(row[0] or 0) if row else 0

    def stored_total_after(self, grows: int, *, counted: int = 0) -> int:
        """The bytes every root pipeline would store once a write adds ``grows``: read by
        :meth:`all_stored_bytes` near :data:`~culm.model.limits.MAX_STORED_BYTES` or once a second,
        else this store's estimate (:class:`culm.storage.budget.StoreTotal`). ``counted``: bytes of
        ``grows`` this transaction wrote already (a read counts them)."""
        if self.totals is None:
            return self.all_stored_bytes() - counted + grows
        return self.totals.after(lambda: self.all_stored_bytes() - counted, grows)

    def set_execution_outputs(self, node_id: str, outputs: dict, *, checked: bool = False) -> None:
        """Replace a node's outputs, keeping its inputs (a node without a row gets empty inputs).
        ``checked``: past :data:`~culm.model.limits.STORED_BYTES_CHECK_AT` bytes, checked against
        the budget first (StoredBytesBudgetError, nothing written)."""
        text = codec.dumps(outputs)
        if checked:
            budget.check(node_id, "outputs", len(text), lambda: self.stored_bytes(node_id, replacing="outputs", serialise=True),
                         self.stored_total_after)
        self._write_outputs(node_id, text)

    def _write_outputs(self, node_id: str, outputs: str) -> None:
        self._later(self.outputs_upsert, [node_id, codec.dumps({}), outputs],
                    (("culm_execution_data", (node_id,)),))

    def prefetch_contexts(self, pipeline_ids: Iterable[str], limit: int = CONTEXTS_AHEAD) -> None:
        """Read the contexts of ``pipeline_ids`` in one statement, for the reads this transaction is
        about to make (rendering the inputs of a batch of activities). Skipped when they hold more
        than ``limit`` values: then each read takes only the keys it needs."""
        missing = self._contexts_missing(pipeline_ids)
        if missing:
            self._take_contexts(missing, self._all(*self._contexts_read(missing, limit)), limit)

    def _contexts_missing(self, pipeline_ids: Iterable[str]) -> list[str]:
        return [i for i in dict.fromkeys(pipeline_ids) if i not in self._context_view]

    @staticmethod
    def _contexts_read(missing: Sequence[str], limit: int) -> tuple[str, Sequence[Any]]:
        return ('SELECT pipeline_id, "key", type, value, code, refs FROM culm_context_value'
                f' WHERE pipeline_id IN ({marks(len(missing))}) LIMIT {int(limit) + 1}', missing)

    def _take_contexts(self, missing: Sequence[str], rows: Sequence[Any], limit: int) -> None:
        if len(rows) > limit:
            return
        view = self._context_view
        for pid in missing:
            view[pid] = {}
        for r in rows:
            view[r[0]][r[1]] = r[1:]

    def get_context(self, pipeline_id: str, keys: Iterable[str] | None = None) -> dict[str, ContextValue]:
        known = self._context_view.get(pipeline_id) if self._context_view else None
        if known is not None:
            picked = known.values() if keys is None else [known[k] for k in keys if k in known]
            return {r[0]: ContextValue(r[0], r[1], codec.loads(r[2]), r[3], frozenset(codec.loads(r[4])))
                    for r in picked}
        sql = 'SELECT "key", type, value, code, refs FROM culm_context_value WHERE pipeline_id = ?'
        params: list[Any] = [pipeline_id]
        if keys is not None:
            keys = list(keys)
            if not keys:
                return {}
            sql += f' AND "key" IN ({marks(len(keys))})'
            params.extend(keys)
        return {
            r[0]: ContextValue(r[0], r[1], codec.loads(r[2]), r[3], frozenset(codec.loads(r[4])))
            for r in self._all(sql, params)
        }

    def insert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None:
        rows = [self._context_row(pipeline_id, v) for v in values]
        self._note_context(pipeline_id, rows)
        self._insert("culm_context_value", rows)

    def upsert_context(self, pipeline_id: str, values: Iterable[ContextValue], *, checked: bool = False) -> None:
        """``checked`` (the engine's copies of a node's outputs): past STORED_BYTES_CHECK_AT bytes,
        checked against the budget first (:func:`budget.check_context_copy`; nothing written)."""
        rows = [self._context_row(pipeline_id, v) for v in values]
        if checked:
            self._check_context_copy(pipeline_id, rows)
        for row in rows:
            self._note_context(pipeline_id, [row])
            self._upsert("culm_context_value", row, ["pipeline_id", "key"])

    def _check_context_copy(self, pipeline_id: str, rows: Sequence[dict]) -> None:
        budget.check_context_copy(self, pipeline_id, sum(len(r["value"]) for r in rows),
                                  lambda: self._context_bytes(pipeline_id, [r["key"] for r in rows]))

    def _context_bytes(self, pipeline_id: str, keys: Sequence[str]) -> int:
        """The stored bytes of context values ``keys`` of pipeline ``pipeline_id``."""
        row = self._one(f'SELECT SUM({self.octet_length}(value)) FROM culm_context_value WHERE pipeline_id = ? '
                        f'AND "key" IN ({marks(len(keys))})', [pipeline_id, *keys])
        return int(row[0] or 0) if row else 0

    def _note_context(self, pipeline_id: str, rows: list[dict]) -> None:
        known = self._context_view.get(pipeline_id) if self._context_view else None
        if known is not None:
            for row in rows:
                known[row["key"]] = (row["key"], row["type"], row["value"], row["code"], row["refs"])

    @staticmethod
    def _context_row(pipeline_id: str, v: ContextValue) -> dict:
        value = codec.dumps_variable(pipeline_id, v.key, v.value)
        return {
            "pipeline_id": pipeline_id, "key": v.key, "type": v.type, "value": value,
            "code": v.code, "refs": codec.dumps_ids(sorted(v.references)),
        }

    # -- schedules and callbacks ----------------------------------------------------------
    def insert_schedule(self, rec: ScheduleRecord) -> None:
        self._insert("culm_schedule", [{
            "id": rec.id, "node_id": rec.node_id, "version": rec.version, "process_id": rec.process_id,
            "type": rec.type, "finished": rec.finished, "expired": rec.expired, "times": rec.times,
            "locked_until": rec.locked_until,
        }])

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        row = self._one(SCHEDULE_BY_ID, [schedule_id])
        return _schedule_row(row) if row else None

    def schedule_of(self, node_id: str, version: str) -> ScheduleRecord | None:
        row = self._one(SCHEDULE_OF_RUN, [node_id, version])
        return _schedule_row(row) if row else None

    def schedules_of_nodes(self, node_ids: Sequence[str]) -> list[ScheduleRecord]:
        """Every schedule (finished or not) of ``node_ids``."""
        found: list[ScheduleRecord] = []
        for i in range(0, len(node_ids), 500):
            chunk = list(node_ids[i : i + 500])
            found.extend(_schedule_row(r) for r in self._all(
                SCHEDULES_IN.format(marks=marks(len(chunk))), chunk))
        return found

    def live_schedules(self, node_ids: Sequence[str]) -> list[ScheduleRecord]:
        """The unfinished schedules of ``node_ids`` (any version: the caller compares)."""
        return self._answer(self._plan_live_schedules(node_ids))

    def update_schedule(self, schedule_id: str, **fields: Unpack[ScheduleFields]) -> None:
        self._update_later("culm_schedule", "id = ?", [schedule_id], fields)

    def lock_schedule(self, schedule_id: str, until: float, at: float) -> bool:
        n = self._x("UPDATE culm_schedule SET locked_until = ? WHERE id = ? AND (locked_until IS NULL "
                    "OR locked_until < ?)", [until, schedule_id, at]).rowcount
        return n == 1

    def lock_schedule_call(self, schedule_id: str, root_id: str, task_id: str, until: float, at: float) -> bool:
        row = self._one(SCHEDULE_LOCK, [schedule_id])
        if row is None or self._one(SCHEDULE_CALL_HELD, [root_id, schedule_id, task_id, at]) is not None:
            return False
        if row[0] is None:
            return int(self._x(LOCK_FREE_SCHEDULE, [until, schedule_id]).rowcount) == 1
        return int(self._x(RELOCK_SCHEDULE, [until, schedule_id, row[0]]).rowcount) == 1

    def insert_callback(self, callback_id: str, node_id: str, version: str, data: object, *,
                        always: bool = True) -> None:
        """Raises StoredBytesBudgetError before anything is written."""
        text = codec.dumps_named(data, f"callback data for node {node_id}")
        budget.check(node_id, "callback data", len(text), lambda: self.stored_bytes(node_id, serialise=True),
                     self.stored_total_after, always=always)
        # The caller holds the node's state row (SQLite: the write lock), so no other callback of
        # the run takes the same number.
        last = self._one(CALLBACK_SEQ, [node_id, version])
        seq = int(last[0]) + 1 if last and last[0] is not None else 1
        self._insert("culm_callback_data",
                     [{"id": callback_id, "node_id": node_id, "version": version, "data": text, "seq": seq}])

    def first_callback_task(self, root_id: str, node_id: str, version: str) -> str | None:
        row = self._one(FIRST_CALLBACK_TASK, [root_id, node_id, version])
        return str(row[0]) if row else None

    def has_callback(self, node_id: str, version: str) -> bool:
        """Whether a callback was accepted for this run (``version``) of the node."""
        return self._one("SELECT id FROM culm_callback_data WHERE node_id = ? AND version = ?",
                         [node_id, version]) is not None

    def get_callback(self, callback_id: str) -> object:
        row = self._one("SELECT data FROM culm_callback_data WHERE id = ?", [callback_id])
        return codec.loads(row[0]) if row else None

    # -- histories and logs ---------------------------------------------------------------
    def add_history(self, rec: HistoryRecord, *, always: bool = False) -> None:
        """Raises StoredBytesBudgetError before anything is written."""
        texts = codec.dumps(rec.inputs), codec.dumps(rec.outputs)
        size = len(texts[0]) + len(texts[1])
        budget.check(rec.node_id, "history", size, lambda: self.stored_bytes(rec.node_id, serialise=budget.serialised(size)),
                     self.stored_total_after, always=always)
        self._insert("culm_history", [{
            "node_id": rec.node_id, "started_time": rec.started_time, "archived_time": rec.archived_time,
            "loop": rec.loop, "skip": rec.skip, "retry": rec.retry, "version": rec.version,
            "inputs": texts[0], "outputs": texts[1],
        }])

    def histories(self, node_id: str, loop: int = -1, payload_chars: int | None = None) -> list[HistoryRecord]:
        where = "WHERE node_id = ?"
        params: list[Any] = [node_id]
        if loop != -1:
            where += ' AND "loop" = ?'
            params.append(loop)
        head = 'SELECT id, node_id, started_time, archived_time, "loop", skip, retry, version'
        if payload_chars is None:
            return [_history(r, codec.loads(r[8]), codec.loads(r[9]))
                    for r in self._all(f"{head}, inputs, outputs FROM culm_history {where} ORDER BY id", params)]
        rows = self._all(f"{head}, LENGTH(inputs) + LENGTH(outputs) FROM culm_history {where} ORDER BY id", params)
        wanted = payloads_within([(r[0], r[8]) for r in rows], payload_chars)
        texts: dict[int, tuple[str, str]] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            texts.update((r[0], (r[1], r[2])) for r in self._all(
                f"SELECT id, inputs, outputs FROM culm_history WHERE id IN ({marks(len(chunk))})", chunk))
        return [_history(r, codec.loads(texts[r[0]][0]), codec.loads(texts[r[0]][1])) if r[0] in texts
                else _history(r, {}, {}, int(r[8])) for r in rows]

    def add_logs(self, rows: Sequence[LogRow]) -> None:
        """Raises UnstorableValueError (naming the lines at fault) before anything is written."""
        codec.check_log_lines(rows)
        # Numbered from the run's count (kept by the triggers of 0010, this transaction's earlier
        # lines included: deferred writes go with the read): a page from an offset seeks (logs_at).
        # One run's lines are written by the one worker that holds its claim.
        numbered: list[dict[str, Any]] = []
        nexts: dict[tuple[str, str], int] = {}
        for r in rows:
            run = (r["node_id"], r["version"])
            if run not in nexts:
                nexts[run] = self.log_count(*run)
            numbered.append({**r, "line_no": nexts[run]})
            nexts[run] += 1
        self._insert("culm_log", numbered)

    def logs(self, node_id: str, version: str, first: int = 0, count: int | None = None) -> list[str]:
        sql = LOG_LINES
        if count is not None or first:
            # MySQL has no OFFSET without LIMIT: "no count" is the largest BIGINT.
            sql += f" LIMIT {int(count) if count is not None else 2**63 - 1} OFFSET {int(first)}"
        return [r[0] for r in self._all(sql, [node_id, version, version])]

    def logs_at(self, node_id: str, version: str, first: int, count: int) -> list[str] | None:
        # Along ix_culm_log_node_version_line (0011) from the line numbered ``first``; None when
        # that line has no number (stored before 0011): the caller walks to it instead. Only the
        # consecutive numbers are kept: lines an older worker wrote unnumbered in the middle of a
        # run (after `culm db upgrade`) lie between two numbers, and the caller walks over them.
        rows = self._all(f"{LOG_AT} LIMIT {int(count)}", [node_id, version, int(first)])
        kept = 0
        while kept < len(rows) and rows[kept][0] == first + kept:
            kept += 1
        return [r[1] for r in rows[:kept]] if kept else None

    def last_logs(self, node_id: str, version: str, skip: int, count: int) -> list[str]:
        # Backwards along ix_culm_log_node_version_id (0009) from the run's last line: a tail of a
        # run of millions of lines reads its own rows only, not the millions before them.
        sql = f"{LOG_TAIL} LIMIT {int(count)} OFFSET {int(skip)}"
        return [r[0] for r in reversed(self._all(sql, [node_id, version, version]))]

    def log_count(self, node_id: str, version: str) -> int:
        # Kept by the triggers of revision 0010: one row by primary key, not a count of the lines.
        row = self._one(LOG_COUNT, [node_id, version])
        return int(row[0]) if row else 0

    def retag_logs(self, node_id: str, old_version: str, new_version: str) -> None:
        self._x("UPDATE culm_log SET version = ? WHERE node_id = ? AND version = ?", [new_version, node_id, old_version])


# How long a server session of culm's may sit idle inside a transaction before the server ends it
# (rolling the transaction back, its row locks with it). culm never runs user code or waits for
# anything but the database inside a transaction, so a session idle there for long belongs to a
# process that was frozen mid-transaction (SIGSTOP, a debugger, a paused VM): alive, so no watchdog
# or vanished-client check ends it, and holding rows every other runner and every operator call on
# that pipeline then waits for, for as long as it stays frozen. Ended by the server, it wakes to a
# lost connection, which it treats as an outage (its lease, long gone, fences anything it retries).
IDLE_TRANSACTION_SECONDS = 30


def idle_transaction_seconds() -> int:
    """CULM_IDLE_TRANSACTION_SECONDS, else :data:`IDLE_TRANSACTION_SECONDS` (0: not set, the
    server's own setting applies). Read as each connection opens."""
    raw = os.environ.get("CULM_IDLE_TRANSACTION_SECONDS", "").strip()
    if not raw:
        return IDLE_TRANSACTION_SECONDS
    try:
        return max(0, int(raw))
    except ValueError:
        raise SettingsError(f"CULM_IDLE_TRANSACTION_SECONDS must be a whole number of seconds, not {raw!r}") from None


PING_AFTER_IDLE = 1.0  # seconds a pooled server connection may sit unused before it is pinged


def ping_idle(engine: Engine) -> None:
    """Ping a pooled connection on checkout only when it sat unused for ``PING_AFTER_IDLE``.

    A server restart, an idle timeout or a killed session hits connections that wait in the pool,
    and the ping makes the pool replace them unseen. A connection back from work moments ago is
    alive; pinging it would add a round trip to every transaction. One that breaks anyway fails
    its statement, which the worker retries (``culm.dispatch.celery``) on a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["culm_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("culm_idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return  # new (just connected) or busy
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure means: replace it
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        if not alive:
            raise DisconnectionError("pooled connection is dead")


# Marks (in a pooled connection's ``info``) a connection whose transaction the store has ended.
ENDED = "culm_ended"


def skip_needless_reset(engine: Engine) -> None:
    """Let the pool skip its rollback on check-in when the store ended the transaction already.

    The pool rolls back every connection handed back (``pool_reset_on_return``); the store's units
    end their transactions themselves (:meth:`SqlStore._raw`), so on drivers that send every
    rollback to the server (PyMySQL) that is a second, needless round trip per unit. For an engine
    made with ``pool_reset_on_return=None``: a connection returned without the store's mark (its
    end failed, or SQLAlchemy's own Connection did not reset it) is still rolled back here, and one
    whose rollback fails is dropped by the pool.
    """

    @event.listens_for(engine, "reset")
    def _reset(dbapi_conn: Any, record: Any, state: Any) -> None:
        if record is not None and record.info.pop(ENDED, False):
            return
        if not state.transaction_was_reset:
            dbapi_conn.rollback()


class WriterSessions:
    """Each thread's (by ident) server session of the write transaction it began last, for a
    dialect's ``lock_waits`` (the engine thread's batch): one dict store per write unit, no round
    trip. Threads that ended are dropped whenever it holds :attr:`PRUNE_AT` more entries than after
    the last pruning (a server's request threads come and go: it grew by one per thread that ever
    wrote, for ever, until session 19); a thread not made by the threading module is dropped too
    (only the engine thread's entry is ever asked for)."""

    PRUNE_AT = 256

    def __init__(self) -> None:
        self._by_thread: dict[int, int] = {}
        self._kept = 0  # entries left by the last pruning

    def __len__(self) -> int:
        return len(self._by_thread)

    def note(self, session: int) -> None:
        """The calling thread begins a write transaction on server session ``session``."""
        ident, known = threading.get_ident(), self._by_thread
        if ident not in known and len(known) >= self._kept + self.PRUNE_AT:
            alive = {t.ident for t in threading.enumerate()}
            for other in list(known):
                if other not in alive:
                    known.pop(other, None)
            self._kept = len(known)
        known[ident] = session

    def get(self, thread_id: int) -> int | None:
        return self._by_thread.get(thread_id)


class Dialect:
    """What a store does its own way on one kind of database: the traits and hooks each dialect
    module (culm.storage.sql.sqlite, postgres, mysql) sets; these defaults are a server's."""

    name = ""  # the SQLAlchemy dialect name
    unit: type[SqlUnit] = SqlUnit  # its transactions
    one_writer = False  # one writer at a time: writes queue on the store's lock, through one connection
    keeps_copies = False  # the embedded engine thread may keep copies of rows (cached_unit)
    migrates_at_open = False  # opening a database at an older known revision upgrades it (embedded)
    db_now = ""  # an SQL expression: the database's clock, as epoch seconds (a float)
    snapshot_read = ""  # sent first in a read transaction whose reads must all see one snapshot

    def database_file(self, url: str) -> str | None:
        """The file the database lives in (None: a server's, or in memory)."""
        return None

    def engine_options(self, *, memory: bool, url: str = "") -> dict[str, Any]:
        """create_engine's options (``url``: the database's). No pool_pre_ping: a ping per checkout is a round trip per
        transaction; ping_idle pings only connections that sat unused (see PING_AFTER_IDLE)."""
        return {"pool_size": 10, "max_overflow": 20, "pool_recycle": 1800}

    def prepare(self, store: SqlStore) -> None:
        """Set up ``store.engine`` (its event hooks) before the first connection."""
        ping_idle(store.engine)

    def end_own_sessions(self, store: SqlStore) -> int:
        """End, on the server, the sessions this process opened on ``store``'s engine (a process
        about to exit because its engine thread is stuck: their transactions are rolled back and
        their row locks released now, not when the server finds the client gone). Returns how many;
        0 where the server ends them itself soon enough (PostgreSQL's client check)."""
        return 0

    def plain_reads_engine(self, store: SqlStore) -> Engine | None:
        """An engine of its own for the read-only units that need no snapshot (a poll), or None:
        they use ``store.engine`` like every other unit."""
        return None

    def begin(self, raw: Any, *, write: bool, snapshot: bool = False) -> None:
        """Start a unit on the DB-API connection ``raw`` (the driver's own begin, here):
        a write unit, or a read-only one (``snapshot``: its reads must see one snapshot)."""

    def commit(self, raw: Any) -> None:
        """Commit the transaction of a write unit on ``raw`` at its end (its last writes were
        sent by its ``flush(commit=True)``, which may have committed already)."""
        raw.commit()

    def end_read(self, raw: Any) -> None:
        """End a read-only unit on ``raw``: nothing it did is kept."""
        raw.rollback()

    def abort(self, raw: Any) -> None:
        """End a unit on ``raw`` that raised: undo what it did."""
        raw.rollback()

    def cached_unit(self, raw: Any, cache: Any) -> SqlUnit:
        """A unit answering hot reads from ``cache`` (culm.storage.cache)."""
        raise InvalidOperationError(f"the engine's kept copies (RecordCache) need SQLite's single writer, "
                                    f"not {self.name}")

    def checkpoint(self, store: SqlStore) -> None:
        """Move committed log pages into the database, if the database has such a step."""

    def keep_statistics(self, store: SqlStore) -> None:
        """Give the planner statistics of culm's tables where the server has left them far behind
        the tables' size, if this database needs it (PostgreSQL without autovacuum)."""

    def lock_waits(self, store: SqlStore, thread_id: int) -> int:
        """1 when the write transaction thread ``thread_id`` began last waits, now, for a lock only
        other processes' sessions hold, asked on a connection of its own (0 where this database
        cannot tell)."""
        return 0

    def interruptions(self, engine: Engine) -> tuple[type[BaseException], ...]:
        """The driver's own errors that mean the database was interrupted (a lost connection, a
        restarting server, a deadlock victim). The hot path talks to the DB-API driver directly,
        so they reach callers unwrapped by SQLAlchemy; every DB-API driver names them alike."""
        dbapi = engine.dialect.loaded_dbapi
        kinds = (getattr(dbapi, "OperationalError", None), getattr(dbapi, "InterfaceError", None))
        return tuple(k for k in kinds if isinstance(k, type) and issubclass(k, BaseException))

    def is_duplicate(self, exc: BaseException) -> bool:
        """Whether ``exc`` (the driver's own error) is a unique key refusing a row. Only the
        dialects whose units refuse a new run's taken ids by their keys answer (see
        ``SqlUnit.refuses_duplicate_ids``)."""
        return False


def dialect_for(url: str) -> Dialect:
    """The one place a store's dialect is chosen, from its (normalised) database URL."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise InvalidOperationError(
            f"{re.sub(r':[^:@/]*@', ':***@', url)!r} is not a database URL: culm takes sqlite:///path/to/file.db, sqlite:///:memory:, "
            "postgresql://user@host/db, mysql://user@host/db or memory://") from None
    if backend == "sqlite":
        from culm.storage.sql.sqlite import SqliteDialect

        return SqliteDialect()
    if backend == "postgresql":
        from culm.storage.sql.postgres import PostgresDialect

        return PostgresDialect()
    if backend in ("mysql", "mariadb"):
        from culm.storage.sql.mysql import MysqlDialect

        return MysqlDialect()
    shown = make_url(url).render_as_string(hide_password=True)
    raise InvalidOperationError(f"culm keeps its data in SQLite, PostgreSQL or MySQL/MariaDB, not {backend!r} "
                                f"(database URL {shown!r})")


class SqlStore:
    """Owns the SQLAlchemy engine and hands out transactions (:class:`SqlUnit`)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = normalise_url(url)
        # What this kind of database does its own way (read by culm.storage's other modules too).
        dialect = self.traits = dialect_for(self.url)
        self.dialect = dialect.name
        self.keeps_copies = dialect.keeps_copies
        self.database_file = dialect.database_file(self.url)
        # A SQLite database in memory (sqlite://, :memory: with parameters, a file: URI with
        # mode=memory): one connection for all (StaticPool), no file.
        self.memory = dialect.name == "sqlite" and self.database_file is None
        self._unit = dialect.unit
        self.engine: Engine = create_engine(self.url, future=True, **dialect.engine_options(memory=self.memory, url=self.url))
        dialect.prepare(self)
        self._plain_reads = dialect.plain_reads_engine(self) or self.engine
        self._interruptions = dialect.interruptions(self.engine)
        # SQLite allows one writer; queueing writers here is far cheaper than SQLite's busy wait.
        self._write_lock = threading.RLock() if dialect.one_writer else None
        # ...and they all write through ONE connection: SQLite empties a connection's page cache
        # whenever another connection has written, so rotating pooled connections (or a submitter
        # and the engine thread on two of them) would make every transaction start cold.
        self._writer: Any = None
        # SQLite files: each reading thread's own connection (see _thread_reader).
        self._readers = threading.local()
        # Each reader connection with the lock its thread holds while it reads: dispose() takes it
        # before closing the connection (closing one mid-statement crashed the process).
        self._all_readers: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
        # The change feed's readers; told after each commit that recorded changes.
        from culm.storage.feed import ChangeFeed

        self.feed = ChangeFeed(self, ordered=dialect.unit.feed_ordered, indexed_by_root=True)
        # What every pipeline stores together, as this process last read it (MAX_STORED_BYTES).
        self.totals = budget.StoreTotal()
        if create:
            self.ensure_schema()

    def ensure_schema(self) -> None:
        """Create the schema on an empty database; refuse one from another schema version."""
        from culm.storage.migrate import ensure_schema

        ensure_schema(self)

    @contextlib.contextmanager
    def transaction(self, cache: Any = None, *, adds_only: bool = False) -> Iterator[SqlUnit]:
        """A unit of work: committed when the block ends, rolled back on an exception.

        ``cache`` (a :class:`culm.storage.cache.RecordCache`, embedded engine thread only) makes the
        unit answer hot reads from it; it is emptied when the transaction does not commit.
        ``adds_only`` (run_pipeline's transaction, on the submitting thread): the unit only adds a
        new run's rows to ``cache``, which is not checked first (``RecordCache.sync``): should it
        be stale, the engine's next transaction finds that and drops the new rows with the rest.
        """
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._raw(write=True, pinned=lock is not None) as raw:
                if cache is None:
                    unit = self._unit(raw)
                else:
                    unit = self.traits.cached_unit(raw, cache)
                    if not adds_only:
                        cache.sync(unit)
                unit.totals = self.totals
                try:
                    yield unit
                    unit.flush(commit=True)
                finally:
                    unit.close()
        except BaseException:
            if cache is not None:
                cache.clear()  # rolled back (or the commit failed): the copies may hold undone writes
            raise
        finally:
            if lock is not None:
                lock.release()
        if unit.changes_sent:
            self.feed.committed()

    @contextlib.contextmanager
    def reading(self, *, snapshot: bool = False) -> Iterator[SqlUnit]:
        """A read-only unit (no write lock on SQLite files, so readers never wait for writers).

        ``snapshot``: every read of the unit sees the database as of its first (on a server,
        REPEATABLE READ; a SQLite read transaction is a snapshot already).
        """
        if self.memory:
            with self.transaction() as unit:
                yield unit
            return
        reader = self._readers if self.traits.one_writer else None
        if reader is None or getattr(reader, "busy", False):  # a read inside a read: a pooled one
            with self._raw(write=False, snapshot=snapshot) as raw:
                unit = self._unit(raw)
                try:
                    if snapshot and self.traits.snapshot_read:
                        unit._x(self.traits.snapshot_read)
                    yield unit
                finally:
                    unit.close()
            return
        raw, guard = self._thread_reader()
        reader.busy = True
        try:
            with guard:
                unit = self._unit(raw)
                try:
                    unit._x("BEGIN")  # on the unit's own cursor: a poll pays for one cursor, not two
                    yield unit
                finally:
                    unit.close()
                    raw.rollback()
        finally:
            reader.busy = False

    def is_interruption(self, exc: BaseException) -> bool:
        """A lost connection, a restarting server, a deadlock: worth trying the same work again
        (:meth:`culm.core.ports.Store.is_interruption`)."""
        if isinstance(exc, OperationalError | InterfaceError):
            return True
        if isinstance(exc, DBAPIError):
            return bool(exc.connection_invalidated)
        return isinstance(exc, self._interruptions)

    def is_duplicate(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by one of this store's units) is a unique key refusing a row
        (:meth:`culm.core.ports.Store.is_duplicate`)."""
        return self.traits.is_duplicate(exc)

    def schema_problem(self, exc: BaseException) -> str | None:
        """A missing culm table named with its fix (:meth:`culm.core.ports.Store.schema_problem`)."""
        from culm.storage.migrate import schema_missing_error

        found = schema_missing_error(self, exc)
        return None if found is None else str(found)

    def _thread_reader(self) -> tuple[Any, threading.Lock]:
        """This thread's own read connection to the SQLite file, outside the pool.

        Pollers read often: checking a pooled connection out and in (and SQLAlchemy's reset on
        return) cost as much as reading a 17-node state tree. In WAL mode a reader never waits for
        the writer. The connection lives as long as its thread (dispose() closes what is left).
        """
        readers = self._readers
        raw = getattr(readers, "raw", None)
        if raw is None:
            raw = self.engine.raw_connection()
            raw.detach()
            readers.raw, readers.guard = raw, threading.Lock()
            self._all_readers[raw] = readers.guard
        return raw, readers.guard

    @contextlib.contextmanager
    def _raw(self, *, write: bool, pinned: bool = False, snapshot: bool = False) -> Iterator[Any]:
        # The DB-API connection directly: the hot path runs a handful of fixed statements per
        # transaction, and SQLAlchemy's per-transaction bookkeeping would cost more than they do.
        # ``pinned``: the store's one SQLite writer connection (the caller holds the write lock).
        if pinned:
            if self._writer is None:
                self._writer = self.engine.raw_connection()
            raw = self._writer
        else:
            raw = (self.engine if write or snapshot else self._plain_reads).raw_connection()
        info = raw.info
        try:
            info.pop(ENDED, None)
            self.traits.begin(raw, write=write, snapshot=snapshot)
            yield raw
            if write:
                self.traits.commit(raw)
            else:
                self.traits.end_read(raw)
            info[ENDED] = True  # the pool need not roll back again (see skip_needless_reset)
        except BaseException:
            self.traits.abort(raw)
            info[ENDED] = True
            raise
        finally:
            if not pinned:
                raw.close()

    def end_own_sessions(self) -> int:
        """End this process's server sessions on this store (its dialect's ``end_own_sessions``):
        culm.dispatch.liveness.EngineWatchdog, before it ends a process whose engine is stuck."""
        return self.traits.end_own_sessions(self)

    def worker_registry(self) -> SqlWorkerRegistry:
        """The worker registry in this store's database (``culm.storage.workers``)."""
        from culm.storage.workers import SqlWorkerRegistry

        return SqlWorkerRegistry(self)

    def checkpoint(self) -> None:
        """SQLite files: copy committed WAL pages into the database without blocking anyone."""
        self.traits.checkpoint(self)

    def keep_statistics(self) -> None:
        """PostgreSQL: analyse culm's tables that have doubled since they were last analysed (every
        runner calls it about once a second; see PostgresDialect.keep_statistics)."""
        self.traits.keep_statistics(self)

    def lock_waits(self, thread_id: int) -> int:
        """PostgreSQL: 1 when the write transaction of thread ``thread_id`` (the engine thread's
        batch) waits for a lock only another process's session holds, else 0
        (culm.dispatch.liveness.EngineWatchdog: such a wait is not a stuck engine)."""
        return self.traits.lock_waits(self, thread_id)

    def dispose(self) -> None:
        lock = self._write_lock
        if lock is not None:
            with lock:
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.close()
        for reader, guard in list(self._all_readers.items()):
            with guard:  # never under a statement another thread is running on it
                reader.close()  # a thread still holding one gets "closed database" on its next read
        self._all_readers.clear()
        self._readers = threading.local()
        self.engine.dispose()
        if self._plain_reads is not self.engine:
            self._plain_reads.dispose()

    def forget_inherited_connections(self) -> None:
        """In a forked child: drop the pooled connections the parent still uses, unclosed."""
        self.engine.dispose(close=False)
        if self._plain_reads is not self.engine:
            self._plain_reads.dispose(close=False)


__all__ = ["SqlStore", "SqlUnit", "SchemaOutdatedError", "normalise_url"]
