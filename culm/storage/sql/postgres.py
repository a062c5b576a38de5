"""PostgreSQL: writes deferred and pipelined, several reads folded into one statement."""

from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from culm._printable import engine_logger
from culm.core.records import EXECUTE, ProcessRecord, TaskRecord
from culm.storage.sql.base import (
    CONTEXTS_AHEAD,
    Dialect,
    MergedRows,
    Parts,
    SqlUnit,
    WriterSessions,
    _Plan,
    _process_row,
    _schedule_row,
    _state_row,
    _task_row,
    combined_runs,
    idle_transaction_seconds,
)
from culm.storage.sql.statements import (
    ACK_CHILDREN_RETURNING,
    CLAIM_MANY_WITH_PROCESS,
    CLAIM_WITH_PROCESS,
    CONTEXTS_ANY,
    DB_NOW_POSTGRES,
    LIVE_SCHEDULES_ANY,
    MANY_WITH_PROCESS_AND_STATE,
    PROCESS_COLUMNS,
    PROCESSES_IN_STORED,
    SNAPSHOT_READ,
    STATE_COLUMNS,
    STATES_ANY,
    TASK_COLUMNS,
    TASK_WITH_PROCESS_AND_STATE,
    WAKE_ON_ACK_POSTGRES,
    marks,
)

if TYPE_CHECKING:
    from culm.storage.sql.base import SqlStore

UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE for a row a unique key refused
_END = len(TASK_COLUMNS) + len(PROCESS_COLUMNS)  # where a joined row's task and process columns end
CONTEXT_WIDTH = 6  # the columns of SqlUnit._contexts_read
_NO_CONTEXT = ", ".join(["NULL"] * CONTEXT_WIDTH)  # a state row's padding in the walks' one read
_NO_STATE = ", ".join(["NULL"] * len(STATE_COLUMNS))


# Statements up to this long have their numbered form cached (culm's fixed statements); longer
# ones are combined writes and multi-row inserts, whose texts vary from one transaction to the next.
CACHED_SQL_LENGTH = 4096


def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ...

    culm's SQL has no ``?`` other than its placeholders (see culm.storage.sql.statements).
    """
    if len(sql) <= CACHED_SQL_LENGTH:
        return _numbered_cached(sql)
    return _number(sql)


def _number(sql: str) -> str:
    parts = sql.split("?")
    if len(parts) == 1:
        return sql
    while len(_MARKS) < len(parts) - 1:
        _MARKS.append(f"${len(_MARKS) + 1}")
    out = [""] * (2 * len(parts) - 1)
    out[::2] = parts
    out[1::2] = _MARKS[: len(parts) - 1]
    return "".join(out)


_MARKS: list[str] = []
_numbered_cached = functools.lru_cache(maxsize=2048)(_number)


@functools.cache
def numbering_cursor() -> Any:
    """The class of a psycopg cursor that takes culm's ``?`` statements and numbers them.

    psycopg's default cursor turns ``%s`` placeholders into ``$n`` with a regular expression and a
    tuple per placeholder, and caches that only for short statements: for a worker's combined
    writes (hundreds of parameters, a different text in each transaction) it cost about a seventh
    of the worker's CPU. A raw cursor sends ``$n`` as they are; numbering ``?`` is a split and a
    join. (Made on first use: psycopg is an optional extra.)
    """
    from psycopg import RawCursor

    class NumberingCursor(RawCursor):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            return super().execute(numbered(query), params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
            return super().executemany(numbered(query), params_seq, **kw)

    return NumberingCursor


# -- merging the writes of a combined statement ---------------------------------------------------
# Each part of a combined write (a WITH query, see culm.storage.sql.base._combined) is planned and
# started by the server on its own: a batch's run of 40 parts (an execution data upsert, a state
# update, a process update, a task delete per task...) cost ~1 ms of planning alone. Parts of one
# run touch distinct rows and run in no set order against one snapshot, so parts of one shape
# merge into one part with the same outcome: INSERTs into one multi-row INSERT (an upsert's rows
# each meet their own conflict: their keys are distinct), DELETEs by key into one by a key list,
# and UPDATEs of one row by key into one UPDATE joined to a VALUES list of each row's values.
_INSERT = re.compile(r"(INSERT INTO \S+ \([^()]*\) VALUES )(\((?:\?, ?)*\?\))(?:, ?\2)*((?: ON CONFLICT .*)?)", re.DOTALL)
_DELETE = re.compile(r"(DELETE FROM \S+ WHERE \S+) = \?")
_UPDATE = re.compile(r"UPDATE (\w+) SET ((?:\S+ = \?, )*\S+ = \?) WHERE (\S+ = \?(?: AND (?:\S+ = \?|\S+ IS NULL|\S+ IN \((?:\?, ?)*\?\)))*)")
_CONDITION = re.compile(r"(\S+) (?:(=) \?|(IS NULL)|IN \(((?:\?, ?)*\?)\))")


class _Updates(NamedTuple):
    """UPDATEs of one row each that merge into one, joined to the rows' values by their keys."""

    table: str
    sets: tuple[str, ...]  # the columns set, as written
    conditions: tuple[tuple[str, str, int], ...]  # (column, "=" | "IN" | "IS NULL", its parameters)
    width: int

    def merge(self, blocks: list[Sequence[Any]]) -> tuple[str, Sequence[Any]]:
        # The first row's values are cast to their columns' types: the VALUES list takes its
        # column types from them (a parameter sent as text or NULL would make a column text).
        types = _column_types(self.table)
        cols = [*self.sets, *(c for c, _, n in self.conditions for _ in range(n))]
        first = "(" + ", ".join(f"CAST(? AS {types[c.strip(chr(34))]})" for c in cols) + ")"
        rows = ", ".join([first, *["(" + ",".join("?" * self.width) + ")"] * (len(blocks) - 1)])
        where, at = [], len(self.sets)
        for column, op, n in self.conditions:
            if op == "IS NULL":
                where.append(f"t.{column} IS NULL")
            elif op == "=":
                where.append(f"t.{column} = v.c{at}")
            else:
                where.append(f"t.{column} IN ({', '.join(f'v.c{at + i}' for i in range(n))})")
            at += n
        # The keys once more as a list: the rows are then found by the key's index. Joined to the
        # VALUES list alone, the planner may hash it and scan the table whole, which on a server
        # that never vacuums means every dead task row ever deleted.
        key, at = self.conditions[0][0], len(self.sets)
        where.append(f"t.{key} IN ({', '.join('?' * len(blocks))})")
        sets = ", ".join(f"{c} = v.c{i}" for i, c in enumerate(self.sets))
        names = ", ".join(f"c{i}" for i in range(self.width))
        sql = (f"UPDATE {self.table} AS t SET {sets} FROM (VALUES {rows}) AS v ({names}) "
               f"WHERE {' AND '.join(where)}")
        return sql, [*(v for block in blocks for v in block), *(block[at] for block in blocks)]


@functools.cache
def _column_types(table: str) -> dict[str, str]:
    """The PostgreSQL type of each column of one of culm's tables, without a length (a cast to
    VARCHAR(n) would cut a longer value instead of refusing it as the column does)."""
    from sqlalchemy.dialects import postgresql

    from culm.storage.schema import metadata

    dialect = postgresql.dialect()
    return {c.name: re.sub(r"\(\d+\)", "", c.type.compile(dialect=dialect)) for c in metadata.tables[table].c}


@functools.cache
def _table_names() -> frozenset[str]:
    from culm.storage.schema import metadata

    return frozenset(metadata.tables)


@functools.lru_cache(maxsize=512)
def _shape(sql: str) -> MergedRows | _Updates | None:
    """How writes of this text merge with others of the same text, or None."""
    m = _INSERT.fullmatch(sql)
    if m is not None:
        return MergedRows(m[1], m[2], m[3], m[2].count("?"))
    m = _DELETE.fullmatch(sql)
    if m is not None:
        return MergedRows(m[1] + " IN (", "?", ")", 1)
    m = _UPDATE.fullmatch(sql)
    if m is not None and m[1] in _table_names():
        sets = tuple(part.split(" = ")[0] for part in m[2].split(", "))
        conditions = tuple((c[1], c[2] or c[3] or "IN", c[4].count("?") if c[4] else int(bool(c[2])))
                           for c in _CONDITION.finditer(m[3]))
        columns = _column_types(m[1])
        if all(c.strip('"') in columns for c in (*sets, *(c for c, _, _ in conditions))):
            return _Updates(m[1], sets, conditions, len(sets) + sum(n for _, _, n in conditions))
    return None


def merge_parts(run: Parts) -> Parts:
    """The writes of one run of a combined statement (distinct rows, no set order), those of one
    text merged into one write (see MergedRows and _Updates), in the place of the first."""
    out: Parts = []
    merging: dict[str, tuple[int, list[Sequence[Any]]]] = {}  # text -> its place in out, each write's params
    for sql, params in run:
        shape = _shape(sql)
        if shape is None:
            out.append((sql, params))
            continue
        found = merging.get(sql)
        if found is None:
            merging[sql] = (len(out), [params])
            out.append((sql, params))
        else:
            found[1].append(params)
    for sql, (at, blocks) in merging.items():
        if len(blocks) > 1:
            shape = _shape(sql)
            assert shape is not None
            out[at] = shape.merge(blocks)
    return out


def combined_and_merged(pending: Sequence[tuple[str, Sequence[Any], Any]]) -> list[tuple[str, Sequence[Any]]]:
    """Deferred writes as few statements (culm.storage.sql.base.combined_runs), each run's writes of
    one text merged (merge_parts)."""
    return combined_runs(pending, merge_parts)


def _split_walks(answers: list[list[Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """The rows of the walks' one read (PostgresUnit._walk_reads), by the read each answers."""
    got: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    width = len(STATE_COLUMNS) + 1
    for r in answers[0]:
        got[r[0]].append(r[1:width] if r[0] < 2 else r[width:])
    return got


class PostgresUnit(SqlUnit):
    """A transaction on PostgreSQL: writes whose result nobody reads wait and go together with the
    next statement that needs an answer (see SqlUnit._later); reads that lock, lock in the read."""

    dialect = "postgresql"
    defers_writes = True

    octet_length = "OCTET_LENGTH"
    walks_with_claim = True  # expect_walks' read goes in the claim's pipeline (read_tasks_ahead)
    combine = staticmethod(combined_and_merged)
    refuses_duplicate_ids = True
    # A transaction-scoped advisory lock (no row, released at the commit or rollback; in the
    # server's deadlock detection like a row lock). Other users of advisory locks on the same
    # database would only rarely share a key, and then only wait.
    budget_lock = "SELECT pg_advisory_xact_lock(hashtextextended('culm budget ' || ?, 0))"
    # Statements go to the cursor as written here, with ``?`` placeholders: numbering_cursor
    # numbers them, combined writes included (their parts are joined before they are numbered).

    @staticmethod
    def new_cursor(conn: Any) -> Any:
        return numbering_cursor()(conn.driver_connection)

    def _send_deferred(
        self, pending: list[tuple[str, Sequence[Any]]], last: tuple[str, Sequence[Any]] | None, *, commit: bool = False
    ) -> None:
        cur = self._cur
        # psycopg's pipeline sends them all, then reads the answers (one round trip). The commit is
        # one more statement of the pipeline, not psycopg's Connection.commit(): inside a pipeline
        # that sends COMMIT and a Sync, flushes once and then only waits to read (psycopg 3.3.9,
        # BasePipeline._sync_gen fetches without flushing), so a message bigger than the socket
        # buffers (a node's inputs of a few hundred kB, a server busy with an earlier statement)
        # stayed half sent: the server waited for its rest (ClientRead), the worker for answers,
        # for ever (CI, session 17). Leaving the pipeline sends its Sync and flushes until all is
        # sent, reading meanwhile; one Sync instead of two. tests/integration/test_pipeline_big_writes.py
        with self.conn.driver_connection.pipeline():
            for sql, params in pending:
                cur.execute(sql, params)
            if last is not None:
                cur.execute(*last)
            if commit:
                cur.execute("COMMIT", prepare=False)

    def _send_with_commit(
        self, pending: list[tuple[str, Sequence[Any]]], reads: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[Any]]:
        # One pipeline, as _send_deferred's (see there why the COMMIT is a statement of it); a
        # cursor per read keeps its answer.
        cur = self._cur
        cursors = [self.new_cursor(self.conn) for _ in reads]
        try:
            with self.conn.driver_connection.pipeline():
                for sql, params in pending:
                    cur.execute(sql, params)
                for read_cur, (sql, params) in zip(cursors, reads, strict=True):
                    read_cur.execute(self._sql(sql), params)
                cur.execute("COMMIT", prepare=False)
            return [read_cur.fetchall() for read_cur in cursors]
        finally:
            for read_cur in cursors:
                read_cur.close()

    def _all_together(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        if len(reads) < 2:
            return super()._all_together(reads)
        cursors = [self.new_cursor(self.conn) for _ in reads]  # a cursor keeps one answer
        pending = self._take_deferred() if self._deferred else []
        with self.conn.driver_connection.pipeline():
            for sql, params in pending:
                self._cur.execute(sql, params)
            for cur, (sql, params) in zip(cursors, reads, strict=True):
                cur.execute(sql, params)
        return [cur.fetchall() for cur in cursors]

    # Reads by a list of ids take the list as one array (see STATES_ANY): one text whatever its
    # length, so each is prepared once per connection, the walks' one read below included.
    def _hold_read(self, fresh: Sequence[str]) -> tuple[str, Sequence[Any]]:
        return STATES_ANY + " ORDER BY node_id" + self.share_lock, [list(fresh)]

    @staticmethod
    def _states_reads(missing: Sequence[str]) -> list[tuple[str, Sequence[Any]]]:
        return [(STATES_ANY, [list(missing)])]

    def _plan_live_schedules(self, node_ids: Sequence[str]) -> _Plan:
        reads: list[tuple[str, Sequence[Any]]] = [(LIVE_SCHEDULES_ANY, [list(node_ids), False])] if node_ids else []
        return reads, lambda answers: [_schedule_row(r) for rows in answers for r in rows]

    @staticmethod
    def _contexts_read(missing: Sequence[str], limit: int) -> tuple[str, Sequence[Any]]:
        return f"{CONTEXTS_ANY} LIMIT {int(limit) + 1}", [list(missing)]

    def _walk_reads(
        self, fresh: Sequence[str], missing: Sequence[str], contexts: Sequence[str]
    ) -> tuple[list[tuple[str, Sequence[Any]]], Callable[[list[list[Any]]], tuple[list[Any], list[Any], list[Any]]]]:
        # One statement instead of up to three (each costs the driver and the server a statement's
        # work, pipelined or not): the held states locked first, in node id order, in a
        # materialised WITH; each row tagged with the read it answers, a state row padded to a
        # context row's width and the other way round.
        if sum(map(bool, (fresh, missing, contexts))) < 2:
            return super()._walk_reads(fresh, missing, contexts)
        head, parts, params = "", [], list[Any]()
        if fresh:
            sql, ids = self._hold_read(fresh)
            head = f"WITH h AS MATERIALIZED ({sql}) "
            parts.append(f"SELECT 0, h.*, {_NO_CONTEXT} FROM h")
            params += ids
        for sql, ids in self._states_reads(missing) if missing else ():
            parts.append(sql.replace("SELECT ", "SELECT 1, ", 1).replace(" FROM ", f", {_NO_CONTEXT} FROM ", 1))
            params += ids
        if contexts:
            sql, ids = self._contexts_read(contexts, CONTEXTS_AHEAD)
            parts.append(f"SELECT 2, {_NO_STATE}, c.* FROM ({sql}) c")
            params += ids
        return [(head + " UNION ALL ".join(parts), params)], _split_walks

    @staticmethod
    def _ack_and_wake(pid: str, n: int, gateway: str, task_id: str, due: float) -> list[tuple[str, Sequence[Any]]]:
        return [(WAKE_ON_ACK_POSTGRES, [n, n, n, n, n, gateway, pid, task_id, EXECUTE, gateway, due])]

    def _read_parents_at_commit(self, pids: list[str], take: Callable[[list[Any]], None]) -> None:
        self._commit_reads.append((PROCESSES_IN_STORED.format(marks=marks(len(pids))), [*pids, *pids, len(pids)], take))

    def _acked_rows(self, acks: Sequence[tuple[int, str]]) -> list[Any]:
        answers = self._all_together([(ACK_CHILDREN_RETURNING, [n, pid]) for n, pid in acks])
        return [rows[0] for rows in answers if rows]

    def _claim_with_process(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        owner, until, at = lease
        return self._task_and_process(self._one(CLAIM_WITH_PROCESS, [owner, until, task_id, at]))

    def _task_held(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        row = self._one(TASK_WITH_PROCESS_AND_STATE, [task_id])
        if row is None or not self._keep_lease(task_id, row[-2], row[-1], lease):
            return None, None
        if row[_END] is not None:
            self._lock_ahead(_state_row(row[_END:-2]))
        return self._task_and_process(row[:_END])

    def read_tasks_ahead(self, fresh: Sequence[str], resumed: Sequence[str], lease: tuple[str, float, float],
                         resumed_at: Sequence[str] = ()) -> None:
        # (resumed_at unused: the resumed tasks' read locks their nodes' states by a join)
        owner, until, at = lease
        ahead = self._tasks_ahead
        n_task, end = len(TASK_COLUMNS), len(TASK_COLUMNS) + len(PROCESS_COLUMNS)
        # The fresh tasks' claim, then the resumed ones' locking read: pipelined, one round trip,
        # lone tasks included. Every task is claimed (or locked) before the expected walks'
        # shared locks are taken: the lock order of every runner (task rows, then states).
        reads = [(ids, sql, [*params, list(ids)])
                 for ids, sql, params in ((fresh, CLAIM_MANY_WITH_PROCESS, [owner, until, at]),
                                          (resumed, MANY_WITH_PROCESS_AND_STATE, []))
                 if ids]
        if not reads:
            self._expected = None  # no read ahead: the walks read as they go
            return
        # The walks' read the runner expects goes in the same pipeline, after the claim and the
        # resumed tasks' locks (the lock order stays: task rows, then states).
        walks, take_walks = self._expected_reads()
        answers = self._all_together([(sql, params) for _, sql, params in reads] + walks)
        take_walks(answers[len(reads):])
        for (ids, _, _), rows in zip(reads, answers[: len(reads)], strict=True):
            ahead.update(dict.fromkeys(ids))
            for r in rows:
                st = None
                if len(r) > end:  # a resumed task: still ours? (see TASK_WITH_PROCESS_HELD)
                    if not self._keep_lease(r[0], r[-2], r[-1], lease):
                        continue
                    st = _state_row(r[end:-2]) if r[end] is not None else None
                proc = _process_row(r[n_task:end]) if r[n_task] is not None else None
                ahead[r[0]] = (_task_row(r[:n_task]), proc, st)



# keep_statistics: a table is analysed once it holds ANALYZE_FROM rows and twice the rows it held
# at its last analysis (never analysed: any number), and only by one process at a time (the lock).
ANALYZE_FROM = 100
_ANALYZE_LOCK = 0x63756C6D  # "culm": the advisory lock key of keep_statistics
_GROWN = ("SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
          " WHERE s.schemaname = current_schema() AND s.relname = ANY(CAST(%s AS text[]))"
          " AND s.n_live_tup >= %s AND s.n_live_tup > 2 * GREATEST(c.reltuples, 0)"
          " AND pg_has_role(c.relowner, 'USAGE') ORDER BY s.relname")  # ANALYZE skips others' tables


# Every connection asks its server (PostgreSQL 14 and later) to check, this often while a statement
# runs, that the client is still there, and to end the statement and the session when it is not. A
# worker process that died, or that its EngineWatchdog ended (culm.dispatch.liveness), may leave a
# statement running for ever (a lock wait, a wedged trigger): without the check it kept its
# transaction's row locks, and with them the leases the relays free only once it ends.
# CULM_PG_CLIENT_CHECK_MS changes it (0: not set). A server that cannot check (Windows, PostgreSQL 14
# on macOS/BSD: "must be set to 0 on this platform") refuses the SET: culm says so once and goes on.
CLIENT_CHECK_MS = 5000
_logger = engine_logger("culm.storage.postgres")
_check_refused: list[str] = []  # the refusal, said once per process
# Each store's connections (by its SQLAlchemy engine), for PostgresDialect.lock_waits.
_connections: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
# Each thread's backend pid of the write transaction it began last: the engine thread's batch, for
# PostgresDialect.lock_waits (WriterSessions: no round trip, threads that ended dropped).
_writers = WriterSessions()
_backends_lock = threading.Lock()  # guards the sets' changes


def client_check_ms() -> int:
    """CULM_PG_CLIENT_CHECK_MS, else :data:`CLIENT_CHECK_MS` (0: the connections do not set it)."""
    raw = os.environ.get("CULM_PG_CLIENT_CHECK_MS", "").strip()
    return int(raw) if raw else CLIENT_CHECK_MS


def _set_client_check(dbapi_conn: Any, ms: int) -> None:
    import psycopg

    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute(f"SET client_connection_check_interval = {int(ms)}")
    except psycopg.Error as exc:
        if not _check_refused:
            _check_refused.append(str(exc))
            _logger.warning("PostgreSQL refused client_connection_check_interval = %d (%s): culm goes on "
                            "without it (a stuck statement of a vanished worker then lasts until the server "
                            "notices otherwise); set CULM_PG_CLIENT_CHECK_MS=0 to stop trying",
                            ms, (str(exc).strip() or type(exc).__name__).splitlines()[0])
    finally:
        dbapi_conn.autocommit = False


def _set_idle_transaction_timeout(dbapi_conn: Any, seconds: int) -> None:
    """Have the server end this session when it sits idle in a transaction for ``seconds``
    (see base.IDLE_TRANSACTION_SECONDS; 0 leaves the server's setting)."""
    if not seconds:
        return
    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute(f"SET idle_in_transaction_session_timeout = {int(seconds) * 1000}")
    finally:
        dbapi_conn.autocommit = False


class PostgresDialect(Dialect):
    name = "postgresql"
    unit = PostgresUnit
    db_now = DB_NOW_POSTGRES
    snapshot_read = SNAPSHOT_READ

    def prepare(self, store: SqlStore) -> None:
        super().prepare(store)
        from sqlalchemy import event

        backends: weakref.WeakSet[Any] = weakref.WeakSet()
        _connections[store.engine] = backends

        idle_transaction_seconds()  # a bad value is refused as the store opens, not per connection

        @event.listens_for(store.engine, "connect")
        def _check_client(dbapi_conn: Any, _record: Any) -> None:
            with _backends_lock:
                backends.add(dbapi_conn)
            _set_idle_transaction_timeout(dbapi_conn, idle_transaction_seconds())  # a round trip per new connection
            ms = client_check_ms()
            if ms and dbapi_conn.info.server_version >= 140000:  # one round trip per new connection
                _set_client_check(dbapi_conn, ms)

    def is_duplicate(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == UNIQUE_VIOLATION

    def lock_waits(self, store: SqlStore, thread_id: int) -> int:
        """1 when the connection of the write transaction that thread ``thread_id`` began last
        waits for a lock that only other processes' sessions hold, else 0. A wait for a session of
        this process (another thread's unit, an operator command) does not count: the next worker
        would not wait for it. Asked on a short connection of its own (outside the pool, 2 s to
        connect, 2 s for the read): a wedged pool or server makes it fail, never wait."""
        import psycopg

        pid = _writers.get(thread_id)
        if pid is None:
            return 0
        with _backends_lock:
            own = [c.info.backend_pid for s in list(_connections.values()) for c in list(s) if not c.closed]
        args, kwargs = store.engine.dialect.create_connect_args(store.engine.url)
        kwargs = {**kwargs, "connect_timeout": 2, "autocommit": True}
        with psycopg.connect(*args, **kwargs) as conn:
            conn.execute("SET statement_timeout = 2000")
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'"
                               " AND NOT pg_blocking_pids(pid) && %s::int[]", [pid, own]).fetchone()
        return int(row[0]) if row else 0

    def keep_statistics(self, store: SqlStore) -> None:
        """Analyse culm's tables that have doubled since PostgreSQL last analysed them.

        A server with autovacuum off (a CI machine, some managed setups) never analyses them:
        the planner then guesses a table's rows from its width, and a prepared statement (psycopg
        prepares one on its fifth run) keeps the plan it got while the table was small, a
        sequential scan, for as long as the connection lives (nothing invalidates it). Analysing
        as a table doubles costs a few analyses in all and makes every cached plan on it be made
        again. With autovacuum on (it analyses after 10 % of changes) this finds nothing to do.
        One read; ANALYZE only by the process that gets the lock, never waiting long for a
        table's lock (a migration, a VACUUM).
        """
        raw = store.engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            with conn.transaction():
                cur = conn.cursor()
                grown = [r[0] for r in cur.execute(_GROWN, [sorted(_table_names()), ANALYZE_FROM])]
                if grown and cur.execute("SELECT pg_try_advisory_xact_lock(%s)", [_ANALYZE_LOCK]).fetchone()[0]:
                    cur.execute("SET LOCAL lock_timeout = '1s'")
                    cur.execute("ANALYZE " + ", ".join(grown))  # culm's own table names, as listed
        finally:
            raw.close()

    # A read-only unit that needs no snapshot runs in autocommit: each of its reads is a
    # transaction of its own, as each already saw its own snapshot at READ COMMITTED, and it
    # leaves no transaction to end. psycopg would otherwise send BEGIN before its first read and
    # ROLLBACK after its last: two round trips of three for a poll's one SELECT. Switching is
    # psycopg's own setting (nothing sent); every unit sets the mode it needs, and the connection
    # goes back to the pool out of autocommit (or is dropped), as SQLAlchemy expects.

    def begin(self, raw: Any, *, write: bool, snapshot: bool = False) -> None:
        alone = not write and not snapshot
        conn = raw.driver_connection
        if write:
            _writers.note(conn.info.backend_pid)
        if conn.autocommit != alone:
            conn.autocommit = alone

    def end_read(self, raw: Any) -> None:
        if raw.driver_connection.autocommit:
            self._leave_autocommit(raw)
        else:
            raw.rollback()

    def abort(self, raw: Any) -> None:
        try:
            raw.rollback()  # nothing to undo (and nothing sent) in autocommit
        finally:
            if raw.driver_connection.autocommit:
                self._leave_autocommit(raw)

    @staticmethod
    def _leave_autocommit(raw: Any) -> None:
        conn = raw.driver_connection
        if conn.info.transaction_status == psycopg_idle():
            conn.autocommit = False
        else:  # broken, or a statement still running: never hand it out again
            raw.invalidate()


def psycopg_idle() -> Any:
    """psycopg's "no transaction open" status (imported late: psycopg is an optional extra)."""
    from psycopg.pq import TransactionStatus

    return TransactionStatus.IDLE

