"""The relational schema, shared by SQLite, PostgreSQL and MySQL (SQLAlchemy Core).

Times are stored as UTC epoch seconds (8-byte floats: MySQL's 4-byte FLOAT would round them to
minutes) so that every backend compares them the same way;
JSON payloads are stored as text written by :mod:`culm.storage.codec`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql

from culm.model import limits
from culm.storage.names import ROOT_COUNT_SHARDS, TASK_TABLE, VERSION_TABLE  # noqa: F401 - also read from here

metadata = MetaData()

# The validator refuses ids and keys longer than these (culm.model.limits), on every backend.
ID = limits.ID_LENGTH  # node ids are 33 chars in bamboo; user trees may bring longer ones
KEY = limits.KEY_LENGTH
# MySQL's TEXT stops at 64 KiB; execution data and trees can be far larger.
BigText = Text().with_variant(mysql.LONGTEXT(), "mysql").with_variant(mysql.LONGTEXT(), "mariadb")

# The schema's version lives in Alembic's table VERSION_TABLE (see culm/storage/migrations); a
# change here needs a new revision there.

pipeline = Table(
    "culm_pipeline",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("tree", BigText, nullable=False),
    Column("root_data", BigText, nullable=False),
    Column("options", Text, nullable=False),
    Column("created_time", Double, nullable=False),
    Column("name", String(KEY), nullable=False, server_default=""),
    Index("ix_culm_pipeline_id_name", "id", "name"),
)

node = Table(
    "culm_node",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("root_id", String(ID), nullable=False, index=True),
    Column("pipeline_id", String(ID), nullable=False),
    Column("type", String(64), nullable=False),
)

state = Table(
    "culm_state",
    metadata,
    Column("node_id", String(ID), primary_key=True),
    Column("root_id", String(ID), nullable=False, index=True),
    Column("parent_id", String(ID), nullable=False, index=True),
    Column("name", String(32), nullable=False),
    Column("version", String(ID), nullable=False),
    Column("loop", Integer, nullable=False, default=1),
    Column("inner_loop", Integer, nullable=False, default=1),
    Column("retry", Integer, nullable=False, default=0),
    Column("skip", Boolean, nullable=False, default=False),
    Column("error_ignored", Boolean, nullable=False, default=False),
    Column("created_time", Double),
    Column("started_time", Double),
    Column("archived_time", Double),
)
# Root states (parent_id empty) for listing pipelines: partial on SQLite and PostgreSQL (see
# migration 0003).
_ROOTS = text("parent_id = ''")
Index("ix_culm_state_roots", state.c.parent_id, state.c.created_time, state.c.name, state.c.root_id,
      sqlite_where=_ROOTS, postgresql_where=_ROOTS)

# Root pipelines per state, for a listing's counts (culm.storage.listing): a few rows, whatever
# the number of pipelines stored. A transaction that moves root states adds its net change per
# state to the rows of ONE shard, picked at random, in its last statements before the commit
# (SqlUnit._count_roots): concurrent writers rarely meet on a row, and when they do the second
# waits only for the first one's commit. Every (shard, state) row exists from the migration on
# (0007), so each change is a plain UPDATE by primary key: no insert races, no gap locks.
# ROOT_COUNT_SHARDS rows per state (culm.storage.names).
root_count = Table(
    "culm_root_count",
    metadata,
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("name", String(32), primary_key=True),
    Column("pipelines", BigInteger, nullable=False, default=0),
)

# Stored bytes per root pipeline (its nodes' execution data, inputs overrides, histories, callback
# data and log lines, its pipelines' context values), for its budget (culm.storage.budget), and log
# lines per run of a node (a log page's total). Database triggers keep both in the writing
# transaction (migration 0010): no write path can miss them, no process has to add them up.
# PostgreSQL and MySQL add to the row of the session's shard (the connection's id modulo
# ROOT_BYTES_SHARDS), so writers of one pipeline on other connections rarely wait for each other;
# a root's bytes are the sum of its rows. No row: nothing stored.
root_bytes = Table(
    "culm_root_bytes",
    metadata,
    Column("root_id", String(ID), primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("bytes", BigInteger, nullable=False),
)

log_count = Table(
    "culm_log_count",
    metadata,
    Column("node_id", String(ID), primary_key=True),
    Column("version", String(ID), primary_key=True),
    Column("line_count", BigInteger, nullable=False),
)

process = Table(
    "culm_process",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("root_id", String(ID), nullable=False, index=True),
    Column("parent_id", String(ID)),
    Column("current_node_id", String(ID), nullable=False, index=True),
    Column("destination_id", String(ID)),
    Column("stack", Text, nullable=False),
    Column("asleep", Boolean, nullable=False, default=False),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("suspended_by", String(ID), index=True),
    Column("dead", Boolean, nullable=False, default=False),
    Column("ack_num", Integer, nullable=False, default=0),
    Column("need_ack", Integer, nullable=False, default=0),
    Column("priority", Integer, nullable=False, default=100),
    Column("queue", String(KEY), nullable=False, default=""),
    Column("last_heartbeat", Double),
)

task = Table(
    TASK_TABLE,
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("process_id", String(ID), nullable=False),
    Column("node_id", String(ID), nullable=False),
    Column("root_id", String(ID), nullable=False, index=True),
    Column("schedule_id", String(ID)),
    Column("callback_id", String(ID)),
    Column("due", Double, nullable=False),
    Column("running_version", String(ID)),
    Column("owner", String(KEY)),
    Column("claimed_until", Double),
    Column("priority", Integer, nullable=False, default=100),
    Column("queue", String(KEY), nullable=False, default=""),
    Column("published", Boolean, nullable=False, default=False),
    # When a relay last re-published the row: relays in many workers then publish it once per
    # period, not once each.
    Column("relayed_at", Double),
    Index("ix_culm_task_due", "due"),
)

node_data = Table(
    "culm_node_data",
    metadata,
    Column("node_id", String(ID), primary_key=True),
    Column("inputs", BigText, nullable=False),
)

execution_data = Table(
    "culm_execution_data",
    metadata,
    Column("node_id", String(ID), primary_key=True),
    Column("inputs", BigText, nullable=False),
    Column("outputs", BigText, nullable=False),
)

context_value = Table(
    "culm_context_value",
    metadata,
    Column("pipeline_id", String(ID), primary_key=True),
    Column("key", String(KEY), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("value", BigText, nullable=False),
    Column("code", String(KEY)),
    Column("refs", Text, nullable=False),
)

schedule = Table(
    "culm_schedule",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("node_id", String(ID), nullable=False),
    Column("version", String(ID), nullable=False),
    Column("process_id", String(ID), nullable=False),
    Column("type", String(32), nullable=False),
    Column("finished", Boolean, nullable=False, default=False),
    Column("expired", Boolean, nullable=False, default=False),
    Column("times", Integer, nullable=False, default=0),
    Column("locked_until", Double),
    UniqueConstraint("node_id", "version", name="uq_culm_schedule_node_version"),
)

callback_data = Table(
    "culm_callback_data",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("node_id", String(ID), nullable=False, index=True),
    Column("version", String(ID), nullable=False),
    Column("data", BigText, nullable=False),
    # 1, 2, ... per run of the node (node_id, version), in the order the callbacks were accepted
    # (migration 0008): a multiple-callback node's schedule() sees them in that order.
    Column("seq", Integer, nullable=False, server_default="0"),
)

history = Table(
    "culm_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", String(ID), nullable=False, index=True),
    Column("started_time", Double),
    Column("archived_time", Double),
    Column("loop", Integer, nullable=False),
    Column("skip", Boolean, nullable=False),
    Column("retry", Integer, nullable=False),
    Column("version", String(ID), nullable=False),
    Column("inputs", BigText, nullable=False),
    Column("outputs", BigText, nullable=False),
)

log = Table(
    "culm_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", String(ID), nullable=False),
    Column("version", String(ID), nullable=False),
    Column("loop", Integer, nullable=False),
    Column("created_time", Double, nullable=False),
    Column("line", Text, nullable=False),
    # The line's number in its run (0-based), given by the writer from culm_log_count (0011): a
    # page from an offset seeks ix_culm_log_node_version_line. NULL for lines stored before 0011.
    Column("line_no", BigInteger, nullable=True),
    Index("ix_culm_log_node_version_id", "node_id", "version", "id"),
    Index("ix_culm_log_node_version_line", "node_id", "version", "line_no"),
)

# The state-change feed (culm.storage.feed): every state write appends a row in the same
# transaction. ``seq`` grows with every row (SQLite: the rowid); readers follow it.
change = Table(
    "culm_change",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("root_id", String(ID), nullable=False),
    Column("node_id", String(ID), nullable=False),
    Column("from_state", String(32)),
    Column("to_state", String(32), nullable=False),
    Column("version", String(ID), nullable=False),
    Column("loop", Integer, nullable=False),
    Column("time", Double, nullable=False),
    # One pipeline's changes in seq order (migration 0006): a watcher reads only its own rows.
    Index("ix_culm_change_root_seq", "root_id", "seq"),
)

# API tokens of `culm serve` (culm.web): only a salted scrypt hash of each secret is kept.
api_token = Table(
    "culm_api_token",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("name", String(KEY), nullable=False, default=""),
    Column("salt", String(64), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created_time", Double, nullable=False),
    Column("revoked_time", Double),
    Column("last_used_time", Double),
)

# The worker registry (culm.storage.workers): one row per live worker process, beaten every second
# or so with the database's time; relays bury the rows that fall silent and free their leases.
worker = Table(
    "culm_worker",
    metadata,
    Column("owner", String(KEY), primary_key=True),
    Column("host", String(KEY), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("process_key", String(KEY), nullable=False, default=""),
    Column("threads", Integer, nullable=False),
    Column("prefix", String(KEY), nullable=False, default=""),
    Column("started_time", Double, nullable=False),
    Column("beat_time", Double, nullable=False),
)
