"""The SQL culm sends, as named statements and the few builders for statements whose shape
depends on the columns written (cached: the same shapes recur at every step).

SQL is written once with ``?`` placeholders and double-quoted identifiers; each dialect adapts
it to its driver (culm.storage.sql.sqlite, postgres, mysql).
"""

from __future__ import annotations

import functools

STATE_COLUMNS = ("node_id", "root_id", "parent_id", "name", "version", '"loop"', "inner_loop", "retry", "skip",
                  "error_ignored", "created_time", "started_time", "archived_time")
NODE_COLUMNS = ("id", "root_id", "pipeline_id", "type")
NODE_INSERT = f"INSERT INTO culm_node ({', '.join(NODE_COLUMNS)}) VALUES (?, ?, ?, ?)"
STATE_SELECT = "SELECT " + ", ".join(STATE_COLUMNS) + " FROM culm_state"
STATE_INSERT = (f"INSERT INTO culm_state ({', '.join(STATE_COLUMNS)}) "
                 f"VALUES ({','.join('?' * len(STATE_COLUMNS))})")
STATE_INDEX = {c.strip('"'): i for i, c in enumerate(STATE_COLUMNS)}  # field name -> position
TASK_COLUMNS = ("id", "kind", "process_id", "node_id", "root_id", "schedule_id", "callback_id", "due",
                 "running_version", "priority", "queue")
TASK_SELECT = "SELECT " + ", ".join(TASK_COLUMNS) + " FROM culm_task"
PROCESS_COLUMNS = ("id", "root_id", "parent_id", "current_node_id", "destination_id", "stack", "asleep",
                    "suspended", "suspended_by", "dead", "ack_num", "need_ack", "priority", "queue",
                    "last_heartbeat")
PROCESS_SELECT = "SELECT " + ", ".join(PROCESS_COLUMNS) + " FROM culm_process"
# The columns of a task (t) and then of its process (p), as a joined read returns them.
_T_AND_P = ", ".join(f"t.{c}" for c in TASK_COLUMNS) + ", " + ", ".join(f"p.{c}" for c in PROCESS_COLUMNS)
_JOIN_PROCESS = " LEFT JOIN culm_process p ON p.id = t.process_id"
# A task and its process in one round trip (a task's process may be gone: LEFT JOIN).
TASK_WITH_PROCESS = "SELECT " + _T_AND_P + " FROM culm_task t" + _JOIN_PROCESS + " WHERE t.id = ?"
# Applying a result needs the task's lease still ours (or free): another runner may have taken the
# task over while the user code ran (a lost lease), and then its result is the one that counts. The
# read that starts the step also returns the lease columns (last) and, on a server database, locks
# the task row, so a claim cannot slip in between the check and the commit (SQLite's write
# transaction holds the database). No statement is added for it.
TASK_WITH_PROCESS_HELD = (
    "SELECT " + _T_AND_P + ", t.owner, t.claimed_until FROM culm_task t" + _JOIN_PROCESS + " WHERE t.id = ?"
)


def _held_with_state(where: str) -> str:
    """PostgreSQL: tasks (``where``) locked first in a CTE (the documented lock order: task rows,
    then states), then read with their processes, their nodes' states (locked) and lease columns.

    A task resumed after its user code ran: the state of its node is read FOR UPDATE next (the
    result's compare-and-set), so it is read and locked in the same statement.
    """
    return (
        "WITH t AS (SELECT " + ", ".join(TASK_COLUMNS) + ", owner, claimed_until FROM culm_task WHERE " + where
        + " FOR UPDATE) SELECT " + _T_AND_P + ", " + ", ".join(f"s.{c}" for c in STATE_COLUMNS)
        + ", t.owner, t.claimed_until FROM t" + _JOIN_PROCESS
        + " LEFT JOIN LATERAL (" + STATE_SELECT + " WHERE node_id = t.node_id FOR UPDATE) s ON true"
    )


# PostgreSQL: a task, its process and its node's state (locked), with the lease columns.
TASK_WITH_PROCESS_AND_STATE = _held_with_state("id = ?")
LEASE_WHERE = "id = ? AND (claimed_until IS NULL OR claimed_until < ?)"
TAKE_LEASE = "UPDATE culm_task SET owner = ?, claimed_until = ? WHERE " + LEASE_WHERE
# PostgreSQL: take the lease and read task and process in one statement.
CLAIM_WITH_PROCESS = (
    "WITH t AS (" + TAKE_LEASE + " RETURNING " + ", ".join(TASK_COLUMNS) + ") SELECT " + _T_AND_P
    + " FROM t" + _JOIN_PROCESS
)
# PostgreSQL, a batch's fresh tasks: claim them all and read them with their processes at once
# (the last ?: the task ids as one array, so the text is the same however many: see STATES_ANY).
CLAIM_MANY_WITH_PROCESS = (
    "WITH t AS (UPDATE culm_task SET owner = ?, claimed_until = ? WHERE (claimed_until IS NULL OR claimed_until < ?)"
    " AND id = ANY(?) RETURNING " + ", ".join(TASK_COLUMNS) + ") SELECT " + _T_AND_P + " FROM t" + _JOIN_PROCESS
)
# PostgreSQL, a batch's resumed tasks: task, process and the node's state (locked), all at once
# (?: the task ids as one array).
MANY_WITH_PROCESS_AND_STATE = _held_with_state("id = ANY(?) ORDER BY id")  # one lock order
# MySQL/MariaDB, a batch's tasks (neither UPDATE ... RETURNING nor FOR UPDATE OF there). First one
# UPDATE takes the lease of the fresh tasks that are free and keeps (or takes again) the lease of
# the resumed ones still ours ({marks}: one ? per task id; {held}: HELD_BY_US, or nothing when no
# task is resumed); it locks those task rows alone, in id order. Then one plain read returns them
# with their processes and whether the row is ours now: the lease columns compared in SQL with the
# values just written (one parse of the same literals, so no rounding of the time in between).
CLAIM_MANY_MYSQL = ("UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id IN ({marks})"
                    " AND (claimed_until IS NULL OR claimed_until < ?{held}) ORDER BY id")
HELD_BY_US = " OR (owner = ? AND id IN ({resumed}))"
MANY_WITH_PROCESS_OURS = ("SELECT " + _T_AND_P + ", t.owner = ? AND t.claimed_until = ? FROM culm_task t"
                          + _JOIN_PROCESS + " WHERE t.id IN ({marks})")
SCHEDULE_SELECT = (
    "SELECT id, node_id, version, process_id, type, finished, expired, times, locked_until FROM culm_schedule"
)
QUOTED = ("key", "loop", "time")
# The change feed's columns as a writer fills them (seq comes from the database).
CHANGE_COLUMNS = ("root_id", "node_id", "from_state", "to_state", "version", "loop", "time")
CHANGE_SELECT = 'SELECT seq, root_id, node_id, from_state, to_state, version, "loop", "time" FROM culm_change'


# The statements built from column names are cached: the same few shapes recur at every step.
@functools.lru_cache(maxsize=1024)
def update_sql(table: str, cols: tuple[str, ...], key_sql: str) -> str:
    sets = ", ".join(f"{col(k)} = ?" for k in cols)
    return f"UPDATE {table} SET {sets} WHERE {key_sql}"


@functools.lru_cache(maxsize=256)
def insert_sql(table: str, cols: tuple[str, ...], rows: int = 1) -> str:
    values = ", ".join([f"({marks(len(cols))})"] * rows)
    return f"INSERT INTO {table} ({', '.join(col(c) for c in cols)}) VALUES {values}"


@functools.lru_cache(maxsize=512)
def with_sql(parts: tuple[str, ...]) -> str:
    return "WITH " + ", ".join(f"w{i} AS ({q})" for i, q in enumerate(parts)) + " SELECT 1"


@functools.lru_cache(maxsize=256)
def upsert_sql(table: str, cols: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """INSERT ``cols``, or update the columns other than ``keys`` of the row already there."""
    tail = (f" ON CONFLICT ({', '.join(col(k) for k in keys)}) DO UPDATE SET "
            + ", ".join(f"{col(c)} = excluded.{col(c)}" for c in cols if c not in keys))
    return insert_sql(table, cols) + tail


@functools.lru_cache(maxsize=256)
def upsert_sql_mysql(table: str, cols: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """MySQL's upsert_sql (its own syntax, no conflict target: the row's keys decide)."""
    tail = " ON DUPLICATE KEY UPDATE " + ", ".join(f"{col(c)} = VALUES({col(c)})" for c in cols if c not in keys)
    return insert_sql(table, cols) + tail


# A node's outputs replaced, its inputs kept (a node without a row gets the inputs given).
_OUTPUTS_INSERT = "INSERT INTO culm_execution_data (node_id, inputs, outputs) VALUES (?, ?, ?)"
OUTPUTS_UPSERT = _OUTPUTS_INSERT + " ON CONFLICT (node_id) DO UPDATE SET outputs = excluded.outputs"
OUTPUTS_UPSERT_MYSQL = _OUTPUTS_INSERT + " ON DUPLICATE KEY UPDATE outputs = VALUES(outputs)"
# More children of a process finished; then its count and how many it waits for.
ACK_CHILDREN = "UPDATE culm_process SET ack_num = ack_num + ? WHERE id = ?"
# PostgreSQL: the ack and the process row after it in one statement.
ACK_CHILDREN_RETURNING = ACK_CHILDREN + " RETURNING " + ", ".join(PROCESS_COLUMNS)
# Server databases, a join decided with the commit (SqlUnit.ack_children_at_commit): after a
# parent's ack, the last child's wake, each statement seeing the one before (never merged into one):
# the parent's task at the gateway (its run, priority and queue from the row), then the parent up.
WAKE_TASK_ON_ACK = ("INSERT INTO culm_task (id, kind, process_id, node_id, root_id, due, priority, queue, published)"
                    " SELECT ?, ?, id, ?, root_id, ?, priority, queue, FALSE FROM culm_process"
                    " WHERE id = ? AND ack_num = need_ack")
WAKE_ON_ACK = ("UPDATE culm_process SET asleep = FALSE, ack_num = 0, need_ack = 0, current_node_id = ?"
               " WHERE id = ? AND ack_num = need_ack")
# Server databases, a join decided with the commit: refused (its scalar subquery gives two rows,
# an error on every server) unless each of the parents counted is stored. A join whose parent is
# gone then commits nothing: the engine loop replays its tasks one by one, and the walk whose child
# reached the gateway fails its node, saying so (culm.core.joins), as on SQLite.
_PARENTS_MISSING = ("(SELECT 0 UNION ALL SELECT 0 FROM (SELECT COUNT(*) AS n FROM culm_process"
                    " WHERE id IN ({marks})) AS found WHERE n < ?)")
PARENTS_STORED = "SELECT " + _PARENTS_MISSING
# PostgreSQL: the three in one statement (an UPDATE's SET reads the row as it was; RETURNING gives
# it after: woken, its counts are 0, else ack_num is at least the count just added).
_WOKEN = "ack_num + ? = need_ack"
WAKE_ON_ACK_POSTGRES = (
    f"WITH acked AS (UPDATE culm_process SET ack_num = CASE WHEN {_WOKEN} THEN 0 ELSE ack_num + ? END,"
    f" need_ack = CASE WHEN {_WOKEN} THEN 0 ELSE need_ack END,"
    f" asleep = CASE WHEN {_WOKEN} THEN FALSE ELSE asleep END,"
    f" current_node_id = CASE WHEN {_WOKEN} THEN ? ELSE current_node_id END"
    " WHERE id = ? RETURNING id, root_id, priority, queue, ack_num, need_ack)"
    " INSERT INTO culm_task (id, kind, process_id, node_id, root_id, due, priority, queue, published)"
    " SELECT ?, ?, id, ?, root_id, ?, priority, queue, FALSE FROM acked WHERE ack_num = 0 AND need_ack = 0"
)
# A task's lease taken again by its owner (it ran out and nobody else took it).
RETAKE_LEASE = "UPDATE culm_task SET owner = ?, claimed_until = ? WHERE id = ?"
# MySQL: a lease kept by its owner, or taken again when it ran out; locks the task row alone.
KEEP_HELD_LEASE = RETAKE_LEASE + " AND (owner = ? OR claimed_until IS NULL OR claimed_until < ?)"


def same_sql(sql: str) -> str:
    """A statement as written here: what SQLite's driver takes."""
    return sql


def marks(n: int) -> str:
    return ",".join("?" * n)


def col(name: str) -> str:
    return f'"{name}"' if name in QUOTED else name


# Reads by key ({marks}: one ? per id of the list). *_LOCKED: the same, row-locked (server databases).
STATE_BY_ID = STATE_SELECT + " WHERE node_id = ?"
STATE_BY_ID_LOCKED = STATE_BY_ID + " FOR UPDATE"
STATES_IN = STATE_SELECT + " WHERE node_id IN ({marks})"
STATES_IN_LOCKED = STATES_IN + " ORDER BY node_id FOR UPDATE"  # one lock order
# PostgreSQL: the ids as one array parameter, not a ? each. psycopg prepares a statement on its
# fifth run of the same text: an IN list's text differs with its length, an array's never does.
STATES_ANY = STATE_SELECT + " WHERE node_id = ANY(?)"
CONTEXTS_ANY = 'SELECT pipeline_id, "key", type, value, code, refs FROM culm_context_value WHERE pipeline_id = ANY(?)'
STATES_OF_ROOT = STATE_SELECT + " WHERE root_id = ?"
STATES_OF_PARENT = STATE_SELECT + " WHERE parent_id = ?"
# reset_inner_loops: a change-feed note for each row it is about to change, then the reset.
NOTE_INNER_LOOPS = ('INSERT INTO culm_change (root_id, node_id, from_state, to_state, version, "loop", "time") '
                    'SELECT root_id, node_id, name, name, version, "loop", ? FROM culm_state '
                    "WHERE parent_id = ? AND inner_loop <> 0")
RESET_INNER_LOOPS = "UPDATE culm_state SET inner_loop = 0 WHERE parent_id = ? AND inner_loop <> 0"
PROCESS_BY_ID = PROCESS_SELECT + " WHERE id = ?"
PROCESSES_IN = PROCESS_SELECT + " WHERE id IN ({marks})"
# PostgreSQL: PARENTS_STORED in the parents' read, one statement: a WHERE term that reads no row of
# the scan is a one-time filter, evaluated before the scan whether any row is found or not
# (MariaDB skips it when the key lookups find nothing: a statement of its own there).
PROCESSES_IN_STORED = PROCESSES_IN + " AND " + _PARENTS_MISSING + " = 0"
PROCESS_BY_ID_LOCKED = PROCESS_BY_ID + " FOR UPDATE"
PROCESSES_OF_ROOT = PROCESS_SELECT + " WHERE root_id = ?"
LIVE_POSITIONS_OF_ROOT = ("SELECT id, parent_id, current_node_id, destination_id, suspended_by, ack_num, need_ack"
                          " FROM culm_process WHERE root_id = ? AND dead = ?")
PROCESSES_SUSPENDED_BY = PROCESS_SELECT + " WHERE suspended_by = ? AND suspended = ? AND dead = ?"
PROCESSES_AT = PROCESS_SELECT + " WHERE current_node_id = ? AND dead = ?"
TASK_BY_ID = TASK_SELECT + " WHERE id = ?"
TASKS_OF_ROOT = TASK_SELECT + " WHERE root_id = ? AND kind = ?"
# Tasks due (before at + horizon) with a free lease, oldest first.
PENDING_TASKS = TASK_SELECT + " WHERE due <= ? AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY due LIMIT ?"
# Tasks a relay hands to the broker again: overdue, or timers due soon never published.
RELAY_CANDIDATES = (
    TASK_SELECT + " WHERE (claimed_until IS NULL OR claimed_until < ?)"
    " AND (relayed_at IS NULL OR relayed_at <= ?)"
    " AND (due <= ? OR (published = ? AND due > ? AND due <= ?))"
    " ORDER BY due LIMIT ?"
)
RELAY_CANDIDATES_LOCKED = RELAY_CANDIDATES + " FOR UPDATE SKIP LOCKED"  # concurrent relays split them
CHANGES_BETWEEN = CHANGE_SELECT + " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
CHANGES_OF_ROOT_BETWEEN = CHANGE_SELECT + " WHERE seq > ? AND seq <= ? AND root_id = ? ORDER BY seq LIMIT ?"
CHANGED_PAIRS = "SELECT DISTINCT root_id, node_id FROM culm_change WHERE seq > ? AND seq <= ?"
# The nodes of one root the feed names in a seq range (through ix_culm_change_root_seq), each once,
# with their state rows (NULLs from the root id on: none); the state tree's catch-up
# (culm.core.state_tree). The node id is the state's, or the change's where there is no state: one
# column, not both (-7 % for the statement and its rows, docs/performance.md, big22).
CHANGED_STATES = ("SELECT COALESCE(s.node_id, c.node_id), " + ", ".join("s." + c for c in STATE_COLUMNS[1:])
                  + " FROM (SELECT DISTINCT node_id FROM culm_change WHERE root_id = ? AND seq > ? AND seq <= ?) c"
                  " LEFT JOIN culm_state s ON s.node_id = c.node_id")
# Old changes of ended pipelines in a seq range: each row's root state looked up by key (an IN over
# the ended roots would read every state row of every stored pipeline at each chunk).
PRUNE_CHANGES = (
    'DELETE FROM culm_change WHERE seq >= ? AND seq < ? AND "time" < ? AND EXISTS (SELECT 1 FROM culm_state s'
    " WHERE s.node_id = culm_change.root_id AND s.root_id = s.node_id AND s.name IN (?, ?))"
)
SCHEDULE_BY_ID = SCHEDULE_SELECT + " WHERE id = ?"
SCHEDULE_LOCK = "SELECT locked_until FROM culm_schedule WHERE id = ?"
RELOCK_SCHEDULE = "UPDATE culm_schedule SET locked_until = ? WHERE id = ? AND locked_until = ?"
LOCK_FREE_SCHEDULE = "UPDATE culm_schedule SET locked_until = ? WHERE id = ? AND locked_until IS NULL"
# A task of the schedule (but the asking one) that a live runner holds: the one running its call.
SCHEDULE_CALL_HELD = ("SELECT id FROM culm_task WHERE root_id = ? AND schedule_id = ? AND id <> ? "
                      "AND owner IS NOT NULL AND claimed_until >= ?")
# The callback task of a run whose turn it is: the one whose callback was accepted first (migration
# 0008's ``seq``; ids break the ties of rows stored before it) among those still waiting.
FIRST_CALLBACK_TASK = ("SELECT t.id FROM culm_task t JOIN culm_callback_data c ON c.id = t.callback_id "
                       "WHERE t.root_id = ? AND t.node_id = ? AND t.running_version = ? "
                       "ORDER BY c.seq, c.id LIMIT 1")
CALLBACK_SEQ = "SELECT MAX(seq) FROM culm_callback_data WHERE node_id = ? AND version = ?"
SCHEDULE_OF_RUN = SCHEDULE_SELECT + " WHERE node_id = ? AND version = ?"
SCHEDULES_IN = SCHEDULE_SELECT + " WHERE node_id IN ({marks})"
LIVE_SCHEDULES_IN = SCHEDULE_SELECT + " WHERE node_id IN ({marks}) AND finished = ?"
# The RUNNING nodes of a page of pipelines that wait for callbacks (culm.core.waits.callback_waits).
CALLBACK_WAITERS = ("SELECT s.root_id, s.node_id, s.version, c.type FROM culm_state s JOIN culm_schedule c "
                    "ON c.node_id = s.node_id AND c.version = s.version WHERE s.root_id IN ({marks}) AND s.name = ? "
                    "AND c.finished = ? AND c.type IN (?, ?) ORDER BY s.root_id, s.node_id")
# The same, the first few per root (by node id) with how many there are (culm.core.waits.attention):
# a list page reads a bounded number of rows however many nodes wait.
CALLBACK_WAITERS_FIRST = (
    "SELECT root_id, node_id, version, type, n FROM (SELECT s.root_id, s.node_id, s.version, c.type, "
    "ROW_NUMBER() OVER (PARTITION BY s.root_id ORDER BY s.node_id) AS k, COUNT(*) OVER (PARTITION BY s.root_id) AS n "
    "FROM culm_state s JOIN culm_schedule c ON c.node_id = s.node_id AND c.version = s.version "
    "WHERE s.root_id IN ({marks}) AND s.name = ? AND c.finished = ? AND c.type IN (?, ?)) w "
    "WHERE k <= ? ORDER BY root_id, node_id")
# The first few FAILED nodes per root (by node id) with how many there are (culm.core.waits.attention).
FAILED_FIRST = (
    "SELECT root_id, node_id, n FROM (SELECT root_id, node_id, "
    "ROW_NUMBER() OVER (PARTITION BY root_id ORDER BY node_id) AS k, COUNT(*) OVER (PARTITION BY root_id) AS n "
    "FROM culm_state WHERE root_id IN ({marks}) AND name = ?) w WHERE k <= ? ORDER BY root_id, node_id")
LIVE_SCHEDULES_ANY = SCHEDULE_SELECT + " WHERE node_id = ANY(?) AND finished = ?"  # PostgreSQL (see STATES_ANY)

# Root pipelines per state (culm_root_count, see culm.storage.schema): one shard's row moved by a
# transaction's net change, and the counts a listing reads (all shards summed).
ROOT_COUNT_ADD = "UPDATE culm_root_count SET pipelines = pipelines + ? WHERE shard = ? AND name = ?"
ROOT_COUNTS = "SELECT name, SUM(pipelines) FROM culm_root_count GROUP BY name"
# Counting again from the root states (`culm db recount`, `bench.stored` after its copies): the counter
# rows locked first, in the writers' order, so a writer committing meanwhile waits and then adds
# its change to the new count (its rows are not in the count: not committed when it was read).
ROOT_COUNT_ROWS = "SELECT shard, name FROM culm_root_count ORDER BY shard, name"
ROOT_COUNT_ROWS_LOCKED = ROOT_COUNT_ROWS + " FOR UPDATE"
ROOT_COUNT_INSERT = "INSERT INTO culm_root_count (shard, name, pipelines) VALUES (?, ?, 0)"
ROOTS_COUNTED = "SELECT name, COUNT(*) FROM culm_state WHERE parent_id = '' AND root_id <> '' GROUP BY name"
ROOT_COUNTS_CLEAR = "UPDATE culm_root_count SET pipelines = 0 WHERE pipelines <> 0"
ROOT_COUNT_SET = "UPDATE culm_root_count SET pipelines = ? WHERE shard = 0 AND name = ?"

# What differs per dialect outside the unit's verbs (see each dialect's Dialect class).
# The FROM names of a listing's root states and pipeline names (culm.storage.listing). SQLite's
# planner, once ANALYZE has run, prefers the plain parent_id index (a row lookup per pipeline) and
# reads the name from the pipeline row, past its tree: there, the covering indexes are named.
LISTING_TABLES = ("culm_state s", "culm_pipeline p")
LISTING_TABLES_SQLITE = ("culm_state s INDEXED BY ix_culm_state_roots",
                         "culm_pipeline p INDEXED BY ix_culm_pipeline_id_name")
# MariaDB looks a listed pipeline's name up by primary key, in the row that holds its tree (InnoDB
# keeps a few KiB of tree in the row): 23 s for a name filter over 100,000 pipelines, 2 s by the
# (id, name) index.
LISTING_TABLES_MYSQL = ("culm_state s FORCE INDEX (ix_culm_state_roots)",
                        "culm_pipeline p FORCE INDEX (ix_culm_pipeline_id_name)")
# The database's clock as epoch seconds (a float, compared with the worker registry's beat columns).
DB_NOW_POSTGRES = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
DB_NOW_MYSQL = "UNIX_TIMESTAMP(SYSDATE(6))"
DB_NOW_SQLITE = "((julianday('now') - 2440587.5) * 86400.0)"
# A read transaction whose reads all see one snapshot (a SQLite transaction is one already).
SNAPSHOT_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
# A run's log lines in order (LOG_LINES) and from its last one backwards (LOG_TAIL: `culm logs`,
# get_node_logs), along ix_culm_log_node_version_id (0009); LIMIT/OFFSET are added by the unit.
# The version is a range of one value and the order names it: with "version = ?", PostgreSQL drops
# the constant from the order, reads "ORDER BY id" off the primary key, and guesses the run's lines
# are spread evenly over the table: the tail of a run that ended 500,000 rows ago was read past
# those rows (0.2 s); before 0009 it sorted all of the run's lines (1,000,000: 3.4 s). Ordered by
# (version, id), only the (node_id, version, id) index gives the rows in order.
_LOG_RUN = "FROM culm_log WHERE node_id = ? AND version >= ? AND version <= ?"
LOG_LINES = f"SELECT line {_LOG_RUN} ORDER BY version, id"
LOG_TAIL = f"SELECT line {_LOG_RUN} ORDER BY version DESC, id DESC"
# A run's lines from a line number on (0011), along ix_culm_log_node_version_line.
LOG_AT = "SELECT line_no, line FROM culm_log WHERE node_id = ? AND version = ? AND line_no >= ? ORDER BY line_no"

# A root pipeline's stored bytes (culm_root_bytes, kept by the triggers of revision 0010): the sum
# of its counter rows; ROOT_BYTES_OWN: the bytes of a node's row a write replaces ({size}: the
# dialect's byte-length function), by table.
ROOT_BYTES_HELD = "SELECT SUM(bytes) FROM culm_root_bytes WHERE root_id = ?"
# Every root pipeline's stored bytes together (for culm.model.limits.MAX_STORED_BYTES).
ALL_ROOT_BYTES = "SELECT SUM(bytes) FROM culm_root_bytes"
ROOT_BYTES_OWN = {
    "culm_execution_data": "(SELECT {size}(inputs) + {size}(outputs) FROM culm_execution_data WHERE node_id = n.id)",
    "culm_node_data": "(SELECT {size}(inputs) FROM culm_node_data WHERE node_id = n.id)",
    "outputs": "(SELECT {size}(outputs) FROM culm_execution_data WHERE node_id = n.id)",  # set_execution_outputs
}
# The lines of one run of a node (culm_log_count, revision 0010).
LOG_COUNT = "SELECT line_count FROM culm_log_count WHERE node_id = ? AND version = ?"
