"""MySQL and MariaDB: backquoted names, their own upsert, READ COMMITTED; writes deferred and sent
together as one multi-statement query, a batch's tasks read ahead."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, create_engine

from culm.core.records import ProcessRecord, TaskRecord
from culm.errors import DatabaseSettingsError
from culm.storage.sql.base import (
    Dialect,
    MergedRows,
    SqlStore,
    SqlUnit,
    WriterSessions,
    _process_row,
    _state_row,
    _task_row,
    idle_transaction_seconds,
    ping_idle,
    skip_needless_reset,
)
from culm.storage.sql.statements import (
    ACK_CHILDREN,
    CLAIM_MANY_MYSQL,
    DB_NOW_MYSQL,
    HELD_BY_US,
    KEEP_HELD_LEASE,
    LISTING_TABLES_MYSQL,
    MANY_WITH_PROCESS_OURS,
    OUTPUTS_UPSERT_MYSQL,
    PROCESS_COLUMNS,
    PROCESSES_IN,
    SNAPSHOT_READ,
    STATES_IN_LOCKED,
    TASK_COLUMNS,
    TASK_WITH_PROCESS,
    marks,
    upsert_sql_mysql,
)

_END = len(TASK_COLUMNS) + len(PROCESS_COLUMNS)  # where a joined row's task and process columns end
# Characters of deferred writes per multi-statement query: well under the server's smallest usual
# max_allowed_packet (4 MiB by default on MySQL 5.7, 16 MiB on MariaDB and MySQL 8).
MAX_QUERY_CHARS = 1 << 20
# Marks (in the pooled connection's ``info``) a transaction whose last query ended with COMMIT, so
# that the store's commit sends none. The server's status flags cannot tell: PyMySQL keeps those
# of OK packets only, and a transaction that only read would look committed.
_COMMITTED = "culm_committed"
_AUTOCOMMIT = "culm_autocommit"  # marks (in a pooled connection's ``info``) one of the plain reads' pool


# Writes several of which merge into one statement (see _merged): a plain or upserting INSERT
# whose values are placeholders only, a DELETE of one row by its key, an UPDATE of one row by its
# key (with conditions on that row) that sets columns to values.
_INSERT_VALUES = re.compile(r"(INSERT INTO \S+ \([^()]*\) VALUES )(\((?:%s, ?)*%s\))(?:, \2)*((?: ON DUPLICATE KEY UPDATE .*)?)",
                            re.DOTALL)
_DELETE_ONE = re.compile(r"(DELETE FROM \S+ WHERE \w+) = %s")
_UPDATE_ONE = re.compile(r"UPDATE (\S+) SET ((?:`?\w+`? = %s, )*`?\w+`? = %s) WHERE (\w+) = %s"
                         r"((?: AND (?:\w+ = %s|\w+ IS NULL|\w+ IN \((?:%s, )*%s\)))*)")
MAX_MERGED_ROWS = 500  # rows per INSERT or DELETE made of several (as _insert's chunks)
MAX_MERGED_UPDATES = 50  # rows per UPDATE made of several (each row's values are looked up in a CASE)


@dataclasses.dataclass(frozen=True, slots=True)
class _Cases:
    """UPDATEs of one row each that merge into one: each column set to a CASE on the key, the
    rows picked by their keys (and their own conditions, kept row by row)."""

    head: str  # "UPDATE <table> SET "
    cols: tuple[str, ...]
    key: str
    tail: str  # the conditions after "<key> = %s", or ""
    width: int
    limit: int = MAX_MERGED_UPDATES

    def merge(self, blocks: list[Sequence[Any]]) -> tuple[str, list[Any]]:
        n, k = len(blocks), len(self.cols)
        when = " ".join(["WHEN %s THEN %s"] * n)
        sets = ", ".join(f"{c} = CASE {self.key} {when} END" for c in self.cols)
        if self.tail:
            where = " OR ".join([f"({self.key} = %s{self.tail})"] * n)
            picks = [v for block in blocks for v in block[k:]]
        else:
            where = f"{self.key} IN ({', '.join(['%s'] * n)})"
            picks = [block[k] for block in blocks]
        params = [v for i in range(k) for block in blocks for v in (block[k], block[i])]
        return f"{self.head}{sets} WHERE {where}", params + picks


@functools.lru_cache(maxsize=512)
def _mergeable(sql: str) -> MergedRows | _Cases | None:
    """How writes of this text merge with others of the same shape, or None."""
    m = _INSERT_VALUES.fullmatch(sql)
    if m is not None:
        return MergedRows(m[1], m[2], m[3], m[2].count("%s"), MAX_MERGED_ROWS)
    m = _DELETE_ONE.fullmatch(sql)
    if m is not None:
        return MergedRows(m[1] + " IN (", "%s", ")", 1, MAX_MERGED_ROWS)
    m = _UPDATE_ONE.fullmatch(sql)
    if m is not None:
        cols = tuple(part.split(" = ")[0] for part in m[2].split(", "))
        return _Cases(f"UPDATE {m[1]} SET ", cols, m[3], m[4], len(cols) + 1 + m[4].count("%s"))
    return None


def _merged(pending: Sequence[tuple[str, Sequence[Any], Any]]) -> list[tuple[str, Sequence[Any]]]:
    """Deferred writes in order, several of one shape merged into one statement (_mergeable):
    INSERTs into one multi-row INSERT, DELETEs and UPDATEs of single rows into one of them all.

    The statements of a multi-statement query run one after the other, but each still costs the
    server a parse and an execution: a batch inserting a state row per node entered sent as many
    INSERTs. A later write joins an earlier one of the same shape (table, columns, conditions,
    upsert tail) of the same run, a run being what PostgreSQL's combined statement may reorder
    freely (culm.storage.sql.base._combined): writes to rows all known and all distinct. So the
    rows it moves ahead of are not ones any write in between touches, as for PostgreSQL's parts;
    a write whose rows are unknown, or one touching a row the run touched, starts a new run. In a
    multi-row upsert each row meets its own duplicate (VALUES(col) is that row's value).
    """
    out: list[tuple[str, Sequence[Any]]] = []
    joinable: dict[MergedRows | _Cases, int] = {}  # the shape of a mergeable write -> its place in out
    merged: dict[int, tuple[MergedRows | _Cases, list[Sequence[Any]]]] = {}  # place -> shape, each write's params
    touched: set[Any] = set()
    for sql, params, keys in pending:
        if keys is None or not touched.isdisjoint(keys):
            joinable.clear()
            touched.clear()
        shape = None
        if keys is not None:
            touched.update(keys)
            shape = _mergeable(sql)
        if shape is None:
            out.append((sql, params))
            continue
        at = joinable.get(shape)
        if at is not None:
            _, blocks = merged.setdefault(at, (shape, [out[at][1]]))
            if sum(map(len, blocks)) + len(params) <= shape.limit * shape.width:
                blocks.append(params)
                continue
        joinable[shape] = len(out)
        out.append((sql, params))
    for at, (shape, blocks) in merged.items():
        out[at] = shape.merge(blocks)
    return out


def _up_to(texts: list[str], limit: int) -> Iterator[list[str]]:
    """``texts`` in consecutive runs of at most ``limit`` characters (a longer text alone)."""
    run: list[str] = []
    size = 0
    for text in texts:
        if run and size + len(text) > limit:
            yield run
            run, size = [], 0
        run.append(text)
        size += len(text) + 2
    if run:
        yield run


@functools.lru_cache(maxsize=4096)
def adapt_mysql(sql: str) -> str:
    return sql.replace("?", "%s").replace('"', "`")


DUPLICATE_ENTRY = 1062  # MySQL/MariaDB: "Duplicate entry ... for key ...", a row a unique key refused


class MysqlUnit(SqlUnit):
    """A transaction on MySQL/MariaDB. As on PostgreSQL, writes whose result nobody reads wait and
    go to the server with the next statement that needs an answer (a read, a compare-and-set on a
    row not locked here, a savepoint, the commit): here as one multi-statement query (the
    connection allows them, see MysqlDialect.prepare), whose statements the server runs in order
    and stops at the first error, which is raised then and aborts the transaction (or the
    savepoint) as on PostgreSQL."""

    dialect = "mysql"
    share_lock = " LOCK IN SHARE MODE"  # MariaDB has no FOR SHARE
    adapt = staticmethod(adapt_mysql)
    upsert_statement = staticmethod(upsert_sql_mysql)
    outputs_upsert = OUTPUTS_UPSERT_MYSQL
    # MariaDB's GET_LOCK lasts as long as the session, not the transaction: the budget lock is the
    # row lock of a counter row of the root that no trigger writes (shard -1, 0 bytes: sums are
    # unchanged), made by the first callback checked and locked by each one to its commit. Under
    # READ COMMITTED no gap is locked, so the triggers' inserts of the root's other rows never wait.
    budget_lock = "INSERT INTO culm_root_bytes (root_id, shard, bytes) VALUES (?, -1, 0) ON DUPLICATE KEY UPDATE bytes = 0"
    defers_writes = True
    refuses_duplicate_ids = True
    combine = staticmethod(_merged)
    listing_tables = LISTING_TABLES_MYSQL

    def _send_deferred(
        self,
        pending: list[tuple[str, Sequence[Any]]],
        last: tuple[str, Sequence[Any]] | None,
        *,
        commit: bool = False,
    ) -> None:
        # The driver quotes the parameters into the text (as it does for any statement); the
        # answers of the writes are read and dropped, the last statement's stays on the cursor.
        cur = self._cur
        texts = [cur.mogrify(sql, params) for sql, params in pending]
        if last is not None:
            texts.append(cur.mogrify(*last))
        if commit:
            texts.append("COMMIT")  # the store's commit then sends none (MysqlDialect.commit)
        for run in _up_to(texts, MAX_QUERY_CHARS):
            cur.execute(";\n".join(run))  # no parameters: the text is sent as it is
            for _ in range(len(run) - 1):  # to the last answer, unread (mysqlclient reads one it leaves)
                cur.nextset()
        if commit:
            self.conn.info[_COMMITTED] = True  # every statement ran, COMMIT included

    def _send_with_commit(
        self, pending: list[tuple[str, Sequence[Any]]], reads: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[list[Any]]:
        # As _send_deferred with the reads before the COMMIT; their answers are kept, the others
        # read and dropped.
        cur = self._cur
        texts = [cur.mogrify(sql, params) for sql, params in pending]
        first = len(texts)
        texts += [cur.mogrify(self._sql(sql), params) for sql, params in reads]
        texts.append("COMMIT")  # the store's commit then sends none (MysqlDialect.commit)
        answers: list[list[Any]] = []
        at = 0
        for run in _up_to(texts, MAX_QUERY_CHARS):
            cur.execute(";\n".join(run))
            while True:
                if first <= at < first + len(reads):
                    answers.append(list(cur.fetchall()))
                at += 1
                if not cur.nextset():
                    break
        self.conn.info[_COMMITTED] = True  # every statement ran, COMMIT included
        return answers

    def _all_together(self, reads: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        if len(reads) < 2:
            return super()._all_together(reads)
        cur = self._cur
        writes = [cur.mogrify(sql, params) for sql, params in self._take_deferred()]
        texts = [*writes, *(cur.mogrify(self._sql(sql), params) for sql, params in reads)]
        answers: list[list[Any]] = []
        skip = len(writes)  # the writes' answers are read and dropped
        for run in _up_to(texts, MAX_QUERY_CHARS):
            cur.execute(";\n".join(run))
            while True:
                if skip:
                    skip -= 1
                else:
                    answers.append(list(cur.fetchall()))
                if not cur.nextset():
                    break
        return answers

    def _acked_rows(self, acks: Sequence[tuple[int, str]]) -> list[Any]:
        # The UPDATEs lock the parents' rows (serialising siblings) and the read that follows in
        # the same query sees the counts with these children in them: one round trip for all.
        for n, pid in acks:
            self._later(ACK_CHILDREN, [n, pid], (("culm_process", (pid,)),))
        ids = [pid for _, pid in acks]
        return self._all(PROCESSES_IN.format(marks=marks(len(ids))), ids)

    def _task_held(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        # MariaDB cannot lock only the task row of a join (no FOR UPDATE OF), and locking the
        # process row before the node's state would break the lock order: the lease is kept
        # with a conditional UPDATE (locks the task row alone), then the usual read.
        owner, until, at = lease
        kept = self._x(KEEP_HELD_LEASE, [owner, until, task_id, owner, at]).rowcount == 1
        return self._task_and_process(self._one(TASK_WITH_PROCESS, [task_id])) if kept else (None, None)

    walks_with_claim = True  # expect_walks' reads go in the claim's query (read_tasks_ahead)

    def read_tasks_ahead(
        self, fresh: Sequence[str], resumed: Sequence[str], lease: tuple[str, float, float],
        resumed_at: Sequence[str] = (),
    ) -> None:
        """A batch's tasks in one round trip instead of two or three per task (see
        CLAIM_MANY_MYSQL): the leases taken or kept in one UPDATE, the tasks read with their
        processes, and the states of the nodes the resumed tasks' calls ran at (``resumed_at``)
        locked, in node id order, all in one multi-statement query. The lock order stays: task rows
        first, then states; process rows are only read. A resumed task whose row names a node not
        in ``resumed_at`` has that state locked in a query of its own, as before the hint; a state
        locked for a task that turns out not to be ours stays locked, unused, until the commit.
        The walks' reads announced by expect_walks follow in the same query (held states, with
        their shared locks, after the task rows and the locked states: the lock order stays)."""
        ids = list(dict.fromkeys([*fresh, *resumed]))
        if not ids:
            self._expected = None  # no read ahead: the walks read as they go
            return
        owner, until, at = lease
        mine = list(dict.fromkeys(resumed))
        held = HELD_BY_US.format(resumed=marks(len(mine))) if mine else ""
        # The UPDATE's count is not needed (the read says which rows are ours): it goes with the read.
        self._later(
            CLAIM_MANY_MYSQL.format(marks=marks(len(ids)), held=held),
            [owner, until, *ids, at, *([owner, *mine] if mine else [])],
        )
        read = (MANY_WITH_PROCESS_OURS.format(marks=marks(len(ids))), [owner, until, *ids])
        hinted = sorted(set(resumed_at)) if mine else []
        reads: list[tuple[str, Sequence[Any]]] = [read]
        if hinted:
            reads.append((STATES_IN_LOCKED.format(marks=marks(len(hinted))), hinted))
        walks, take_walks = self._expected_reads()
        answers = self._all_together(reads + walks)
        rows, locked_rows = answers[0], answers[1] if hinted else []
        take_walks(answers[len(reads):])
        locked = {st.node_id: st for st in map(_state_row, locked_rows)}
        ahead = self._tasks_ahead
        ahead.update(dict.fromkeys(ids))  # not there, or not ours: None
        n_task, waiting = len(TASK_COLUMNS), set(mine)
        nodes = []
        for r in rows:
            if not r[-1]:
                continue  # leased by another runner (a fresh one that was not free, a resumed one taken over)
            ahead[r[0]] = (
                _task_row(r[:n_task]),
                _process_row(r[n_task:_END]) if r[n_task] is not None else None,
                None,
            )
            if r[0] in waiting:  # its node's state: the result's compare-and-set comes next
                if r[3] in locked:
                    self._lock_ahead(locked[r[3]])
                elif r[3] not in hinted:
                    nodes.append(r[3])  # not where the runner thought: lock it now
        if nodes:
            for st in self._all(STATES_IN_LOCKED.format(marks=marks(len(nodes))), sorted(set(nodes))):
                self._lock_ahead(_state_row(st))


class MysqlDialect(Dialect):
    name = "mysql"
    unit = MysqlUnit
    db_now = DB_NOW_MYSQL
    snapshot_read = SNAPSHOT_READ

    def engine_options(self, *, memory: bool, url: str = "") -> dict[str, Any]:
        # Read what others committed (version checks, joins) rather than a snapshot. No rollback
        # by the pool on check-in where the store ended the transaction (skip_needless_reset).
        return {
            **super().engine_options(memory=memory, url=url),
            "isolation_level": "READ COMMITTED",
            "pool_reset_on_return": None,
        }

    def begin(self, raw: Any, *, write: bool, snapshot: bool = False) -> None:
        raw.info.pop(_COMMITTED, None)
        _wait_for_replies(raw, None if write else READ_REPLY_SECONDS)
        if write and (session := raw.info.get(_SESSION)) is not None:
            _writers.note(session[2])

    def abort(self, raw: Any) -> None:
        if not getattr(raw.dbapi_connection, "open", True):
            # The driver dropped the connection (lost, or an answer waited for past
            # READ_REPLY_SECONDS): nothing to roll back here (the server does, with the session),
            # and a ROLLBACK would only replace that error by "InterfaceError(0, '')". The pool
            # throws it away.
            raw.invalidate()
            return
        super().abort(raw)
        _wait_for_replies(raw, None)  # the URL's timeouts again, as after end_read

    def lock_waits(self, store: SqlStore, thread_id: int) -> int:
        """1 when the session of the write transaction thread ``thread_id`` began last waits for a
        lock: a table's (a migration's ALTER TABLE, LOCK TABLES: bounded only by lock_wait_timeout,
        a year by default) or a row's that only other processes' sessions hold (bounded by
        innodb_lock_wait_timeout, 50 s by default, but each statement of a batch may wait that
        long, and a server may set it higher than CULM_ENGINE_STUCK_AFTER). Asked on a connection
        of its own (2 s to connect, 2 s for each read). A row's wait is read from information_schema's
        InnoDB tables (twice: they are a copy, see INNODB_COPY_IDLE), which need the PROCESS
        privilege: without it (or on MySQL 8, which has no INNODB_LOCK_WAITS) the question fails
        and the batch counts as stuck, as before. A table's
        metadata lock wait counts only while another process's session holds a metadata lock in
        the waiter's database, when the server says who holds them (MariaDB's metadata_lock_info
        plugin: LOCK_WAITS_MDL); without it, a wait for a lock this process's own session holds
        counts too."""
        session = _writers.get(thread_id)
        if session is None:
            return 0
        own = _own_session_ids(store.engine) or [0]
        args, params = store.engine.dialect.create_connect_args(store.engine.url)
        raw = store.engine.dialect.connect(*args, **{**params, "connect_timeout": 2, "read_timeout": 2})
        try:
            cur = raw.cursor()
            cur.execute(HAS_MDL_INFO)
            found = cur.fetchone()
            ids = ", ".join(str(int(i)) for i in own)
            mdl = LOCK_WAITS_MDL.format(own=ids) if found and int(found[0] or 0) else ""
            question = LOCK_WAITS_MYSQL.format(own=ids, mdl=mdl)
            # The first answer may come from a stale copy of InnoDB's lock tables (INNODB_COPY_IDLE);
            # read, the copy is ours: unless another client reads it meanwhile, the second is fresh.
            cur.execute(question, [session, session])
            cur.fetchone()
            time.sleep(INNODB_COPY_IDLE)
            cur.execute(question, [session, session])
            row = cur.fetchone()
        finally:
            raw.close()
        return 1 if row and int(row[0] or 0) else 0

    def is_duplicate(self, exc: BaseException) -> bool:
        args: tuple[Any, ...] = getattr(exc, "args", ())
        return type(exc).__module__.startswith(("pymysql", "MySQLdb")) and bool(args) and args[0] == DUPLICATE_ENTRY

    def commit(self, raw: Any) -> None:
        if not raw.info.pop(_COMMITTED, False):  # else the unit's last query ended with COMMIT
            raw.commit()

    def prepare(self, store: SqlStore) -> None:
        """Let connections send several statements in one query (the deferred writes, see
        MysqlUnit): the client flag is added to the ones SQLAlchemy sets (FOUND_ROWS among them:
        a compare-and-set counts the rows it matched)."""
        super().prepare(store)
        idle_transaction_seconds()  # a bad value is refused as the store opens, not per connection
        skip_needless_reset(store.engine)
        _allow_multi_statements(store.engine)
        check_packet_size(store.engine)
        _note_sessions(store.engine)

    def end_own_sessions(self, store: SqlStore) -> int:
        """KILL every session this process opened on this store's server (see :data:`_SESSIONS`)."""
        return _kill_own_sessions(store.engine)

    # A read-only unit that needs no snapshot (a poll: one SELECT) runs on a connection of its own
    # pool that is in autocommit, set once when it connects: each read is then a transaction of
    # its own, as each already saw its own snapshot at READ COMMITTED, and there is no transaction
    # left to end. In a transaction it cost a ROLLBACK, a round trip of its own (PyMySQL sends
    # every one); and leaving the transaction open would keep, on an idle pooled connection, the
    # metadata locks of the tables it read (an ALTER TABLE would wait for them).

    def plain_reads_engine(self, store: SqlStore) -> Engine:
        engine = create_engine(store.url, future=True,
                               **{**self.engine_options(memory=False), "isolation_level": "AUTOCOMMIT"})
        ping_idle(engine)
        skip_needless_reset(engine)
        _allow_multi_statements(engine)

        @event.listens_for(engine, "connect")
        def _mark_autocommit(_dbapi_conn: Any, record: Any) -> None:
            record.info[_AUTOCOMMIT] = True

        return engine

    def end_read(self, raw: Any) -> None:
        if not raw.info.get(_AUTOCOMMIT):
            raw.rollback()
        # Back to the URL's timeouts: the pool's SQLAlchemy-level users (the token table's writes,
        # migrations) begin no unit of ours, and a write must not be given up after READ_REPLY_SECONDS.
        _wait_for_replies(raw, None)


# The server's ids of the sessions this process opened (pid, id): culm.dispatch.liveness's
# EngineWatchdog ends them (KILL) before it ends a process whose engine thread is stuck. MariaDB
# and MySQL have no check for a vanished client while a statement runs (PostgreSQL's
# client_connection_check_interval): a statement of a process gone keeps running, and keeps its
# transaction's row locks (and with them the leases the relays would free), until it ends on its
# own (a lock wait at innodb_lock_wait_timeout, 50 s by default; a long statement at its end; only
# SLEEP() looks for its client, every 5 s). The ids are the drivers' own (thread_id(): no round
# trip), of every engine of this process's stores, by server (:func:`_server`): an id is one
# server's, and the KILLs an engine sends go to its own server only (ids of another server's
# sessions of ours could name unrelated sessions there); pairs noted in a parent before a fork
# are not the child's (the pid tells).
_SESSIONS: set[tuple[tuple[str, int, str], int, int]] = set()  # (server, pid, id)
# Each thread's session of the write transaction it began last (MysqlDialect.lock_waits).
_writers = WriterSessions()
# Whether session %s waits for a table's lock ({mdl}: held by a session not of this process, when
# the server can tell), or for a row's that a session not of this process ({own}: its ids) holds.
LOCK_WAITS_MYSQL = (
    "SELECT (SELECT COUNT(*) FROM information_schema.PROCESSLIST p WHERE p.ID = %s"
    " AND p.STATE LIKE 'Waiting for%%lock'{mdl})"
    " + (SELECT COUNT(*) FROM information_schema.INNODB_TRX r"
    " JOIN information_schema.INNODB_LOCK_WAITS w ON w.requesting_trx_id = r.trx_id"
    " JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id"
    " WHERE r.trx_mysql_thread_id = %s AND b.trx_mysql_thread_id NOT IN ({own}))"
)
# With MariaDB's metadata_lock_info plugin (information_schema.METADATA_LOCK_INFO, the metadata
# locks granted, by session; not the one a waiter asks for): a wait for a table's metadata lock
# counts only while a session not of this process holds one on a table or the schema of the
# waiter's database (this process's own sessions cannot block it for good: they commit, or the
# engine's liveness ends them). Other waits (a global read lock, a backup lock: every session's
# DML holds one of those, on any database) count as before, and so does every wait without the
# plugin: nothing tells the blocker.
LOCK_WAITS_MDL = (" AND (p.STATE <> 'Waiting for table metadata lock' OR EXISTS (SELECT 1"
                  " FROM information_schema.METADATA_LOCK_INFO m WHERE m.THREAD_ID <> p.ID"
                  " AND m.THREAD_ID NOT IN ({own}) AND m.TABLE_SCHEMA = p.DB))")
# InnoDB's tables in information_schema (INNODB_TRX, INNODB_LOCK_WAITS) are a server-wide copy
# that MariaDB refreshes at a read only once nobody has read it for 100 ms (trx0i_s.cc,
# CACHE_MIN_IDLE_TIME). A client reading it within that of another's read (another worker's
# watchdog, a monitoring tool) gets the copy as it was, which may predate a lock wait (the
# watchdog then ended a process that only waited) or show one that has ended; one that reads it
# more often than every 100 ms keeps it as it was for as long as it does. lock_waits reads twice,
# this long apart, and goes by the second answer.
INNODB_COPY_IDLE = 0.15  # seconds
HAS_MDL_INFO = ("SELECT COUNT(*) FROM information_schema.PLUGINS"
                " WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE'")
# How long a read-only unit waits for the next bytes of a reply before it gives the connection up
# (PyMySQL's per-read timeout, set on the pooled connection as each unit begins): a reply that
# never comes is then a lost connection (OperationalError: an outage, which the caller's retry
# or the operator's next call meets on a fresh connection) instead of a thread blocked in recv for
# ever (session 20, crash-control seed 32 on MariaDB: the operator thread waited in read_snapshots
# for a SELECT's answer the server had no statement left for). Reads take no row locks (consistent
# reads at READ COMMITTED and REPEATABLE READ), so innodb_lock_wait_timeout does not bound them; a
# table's metadata lock (an ALTER TABLE under way) may hold one longer, and then it fails as an
# outage. 60 s: generous for culm's indexed reads on a loaded server, and the time MariaDB and MySQL
# give a client to take their answer (net_write_timeout). Write units wait for ever as before: their
# statements may wait for row and table locks as long as the server lets them
# (innodb_lock_wait_timeout, lock_wait_timeout), and a write given up with its statement still
# running on the server would keep its locks from the retry.
# mysqlclient has no per-read timeout to change: its connections wait as before.
READ_REPLY_SECONDS = 60.0
_GIVEN_TIMEOUTS = "culm_given_timeouts"  # a pooled connection's own (read, write) timeouts, in its ``info``
_SESSIONS_LOCK = threading.Lock()
_SESSION = "culm_session"  # the (pid, id) of a pooled connection, in its ``info``
UNKNOWN_THREAD = 1094  # KILL of a session that has ended meanwhile
KILL_TIMEOUT = 5  # seconds: the KILLs' own connection gives up on a server that does not answer


def _wait_for_replies(raw: Any, seconds: float | None) -> None:
    """Have the PyMySQL connection under the pooled ``raw`` wait at most ``seconds`` for each read
    of a reply (see READ_REPLY_SECONDS; None: as long as its URL's read_timeout says, for ever by
    default); its sends get the same bound, so that the driver does not switch the socket's timeout
    twice per statement. Other drivers: nothing."""
    conn = raw.dbapi_connection
    if not hasattr(conn, "_read_timeout"):
        return
    given = raw.info.get(_GIVEN_TIMEOUTS)
    if given is None:  # the URL's read_timeout and write_timeout, as the driver got them
        given = raw.info[_GIVEN_TIMEOUTS] = (conn._read_timeout, conn._write_timeout)
    read, write = given if seconds is None else (min(t or seconds, seconds) for t in given)
    if conn._read_timeout != read or conn._write_timeout != write:  # applied at the next send and read
        conn._read_timeout, conn._write_timeout = read, write


def _server(engine: Engine) -> tuple[str, int, str]:
    """The server an engine connects to, as its URL names it: host, port, unix socket."""
    url = engine.url
    return (url.host or "", url.port or 0, str(url.query.get("unix_socket", "")))


def _note_sessions(engine: Engine) -> None:
    server = _server(engine)

    @event.listens_for(engine, "connect")
    def _noted(dbapi_conn: Any, record: Any) -> None:
        key = (server, os.getpid(), int(dbapi_conn.thread_id()))
        record.info[_SESSION] = key
        with _SESSIONS_LOCK:
            _SESSIONS.add(key)

    @event.listens_for(engine, "close")
    def _gone(_dbapi_conn: Any, record: Any) -> None:
        key = record.info.pop(_SESSION, None)
        with _SESSIONS_LOCK:
            _SESSIONS.discard(key)


def _own_session_ids(engine: Engine) -> list[int]:
    """The ids of the sessions this process opened on ``engine``'s server."""
    server, pid = _server(engine), os.getpid()
    with _SESSIONS_LOCK:
        return sorted(i for s, p, i in _SESSIONS if s == server and p == pid)


def _kill_own_sessions(engine: Engine) -> int:
    """KILL the sessions this process opened on ``engine``'s server, but the one sending the
    KILLs (on a connection of its own, never one of the pool's: the stuck engine thread holds
    one). Returns how many."""
    ids = _own_session_ids(engine)
    if not ids:
        return 0
    killed = 0
    args, params = engine.dialect.create_connect_args(engine.url)
    params = {**params, "connect_timeout": KILL_TIMEOUT, "read_timeout": KILL_TIMEOUT}
    raw = engine.dialect.connect(*args, **params)
    try:
        cur = raw.cursor()
        own = int(raw.thread_id())
        for i in ids:
            if i == own:
                continue
            try:
                cur.execute(f"KILL CONNECTION {int(i)}")
                killed += 1
            except Exception as exc:  # noqa: BLE001 - ended meanwhile
                if not (getattr(exc, "args", ()) and exc.args[0] == UNKNOWN_THREAD):
                    raise
    finally:
        raw.close()
    return killed


def _allow_multi_statements(engine: Engine) -> None:
    dbapi = engine.dialect.loaded_dbapi
    multi = importlib.import_module(dbapi.__name__ + ".constants.CLIENT").MULTI_STATEMENTS

    @event.listens_for(engine, "do_connect")
    def _add_flag(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        params["client_flag"] = params.get("client_flag", 0) | multi
        # A server whose sql_mode is not strict (MySQL before 5.7, sql_mode='' in a my.cnf) stores
        # a value too long for its column cut, with a warning nobody reads: a tree or a payload
        # that some check of culm's missed would be kept corrupted. Strict, it is refused. Added to
        # the session's mode (the server's other flags stay), after any init_command of the URL.
        params["init_command"] = "; ".join(filter(None, [params.get("init_command"),
                                                         session_settings(idle_transaction_seconds())]))


STRICT_MODE = "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES')"


def session_settings(idle_seconds: int) -> str:
    """The statement each new connection runs first: STRICT_MODE and, on MariaDB 10.3 and later,
    ``idle_transaction_timeout`` (see base.IDLE_TRANSACTION_SECONDS; 0 leaves the server's). It is
    written in a ``/*M!100300 ... */`` comment, which only MariaDB 10.3+ runs: MySQL has no such
    setting (its sessions frozen in a transaction hold their locks until they wake or the server's
    wait_timeout ends them) and reads the comment as one. No round trip of its own."""
    if not idle_seconds:
        return STRICT_MODE
    return f"{STRICT_MODE} /*M!100300 , idle_transaction_timeout = {int(idle_seconds)} */"
# The server's max_allowed_packet culm needs: one row holds two payloads of up to
# limits.MAX_PAYLOAD_BYTES. A statement over it is answered by dropping the connection, which looks
# like a network fault: the engine would send the write again for ever, its node RUNNING.
LEAST_PACKET_BYTES = 16 * 1024 * 1024


def check_packet_size(engine: Engine) -> None:
    """Refuse, at the first connection, a server whose max_allowed_packet is under LEAST_PACKET_BYTES.

    Raises:
        DatabaseSettingsError: naming the setting, its value and how to raise it.
    """

    @event.listens_for(engine, "first_connect")
    def _check(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("SELECT @@GLOBAL.max_allowed_packet")
            packet = int(cursor.fetchone()[0])
        finally:
            cursor.close()
        if packet < LEAST_PACKET_BYTES:
            raise DatabaseSettingsError(
                f"the MySQL server's max_allowed_packet is {packet:,} bytes; culm needs at least "
                f"{LEAST_PACKET_BYTES:,} to store its largest rows: set max_allowed_packet={LEAST_PACKET_BYTES >> 20}M under "
                f"[mysqld] in the server's configuration (or SET GLOBAL max_allowed_packet={LEAST_PACKET_BYTES}) and "
                "connect again")
