"""Stored bytes per root pipeline and log lines per run, kept by the database at every write.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.errors import DatabaseSettingsError

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# What a root pipeline stores: (table, key column naming a node or pipeline, payload columns).
PAYLOADS = (
    ("culm_execution_data", "node_id", ("inputs", "outputs")),
    ("culm_node_data", "node_id", ("inputs",)),
    ("culm_history", "node_id", ("inputs", "outputs")),
    ("culm_context_value", "pipeline_id", ("value",)),
    ("culm_callback_data", "node_id", ("data",)),
    ("culm_log", "node_id", ("line",)),
)
SHARDS = 16  # culm.storage.names.ROOT_BYTES_SHARDS when this revision was written
EVENTS = ("INSERT", "UPDATE", "DELETE")


def upgrade() -> None:
    # Before it, the budget check of a big write (culm.storage.budget) summed every stored value
    # of the pipeline (MariaDB: read them all; SQLite before 3.43 likewise, so it remembered counts
    # for 5 s per process), and counted neither context values, callback data nor log lines; a log
    # page counted all the run's lines first. Now triggers keep both counts in the writing
    # transaction itself: exact whoever writes (any process, any path), and nothing to lose in a crash.
    op.create_table(
        "culm_root_bytes",
        sa.Column("root_id", sa.String(64), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "culm_log_count",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("line_count", sa.BigInteger(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    # Triggers first: on PostgreSQL (transactional DDL) they lock the tables until the counts below
    # are committed, so no write falls between the two. MySQL commits each DDL statement: stop the
    # workers while `culm db upgrade` runs (as for every revision).
    if dialect in ("mysql", "mariadb"):
        _create_or_undo(_triggers(dialect))
    else:
        for sql in _triggers(dialect):
            op.execute(sql)
    size = "OCTET_LENGTH" if dialect == "postgresql" else "LENGTH"
    parts = " UNION ALL ".join(
        f"SELECT COALESCE(n.root_id, t.{key}) AS r, {' + '.join(f'{size}(t.{c})' for c in cols)} AS b "
        f"FROM {table} t LEFT JOIN culm_node n ON n.id = t.{key}"
        for table, key, cols in PAYLOADS
    )
    op.execute(
        f"INSERT INTO culm_root_bytes (root_id, shard, bytes) SELECT r, 0, SUM(b) FROM ({parts}) x GROUP BY r"
    )
    op.execute(
        "INSERT INTO culm_log_count (node_id, version, line_count) "
        "SELECT node_id, version, COUNT(*) FROM culm_log GROUP BY node_id, version"
    )


def _create_or_undo(statements: list[str]) -> None:
    """MySQL commits each DDL statement: a trigger it refuses (with binary logging on, only a user
    with SUPER may create one unless log_bin_trust_function_creators is set) would leave the new
    tables and the triggers made so far behind, and the next `culm db upgrade` failing on them.
    Undo those, then say what to do."""
    made: list[str] = []
    try:
        for sql in statements:
            op.execute(sql)
            made.append(sql.split()[2])  # CREATE TRIGGER <name> ...
    except Exception as exc:
        for name in made:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.drop_table("culm_log_count")
        op.drop_table("culm_root_bytes")
        code = getattr(getattr(exc, "orig", None), "args", (None,))[0]
        hint = (
            " With binary logging on, the server lets only a user with SUPER create triggers: set"
            " log_bin_trust_function_creators=1 on the server (a parameter group on managed MySQL),"
            " or run `culm db upgrade` as such a user."
            if code == 1419
            else ""
        )
        raise DatabaseSettingsError(
            f"revision 0010 could not create the triggers that count each pipeline's stored bytes and "
            f"log lines ({getattr(exc, 'orig', None) or exc}); it undid what it had made, the database is still "
            f"at revision 0009.{hint}"
        ) from exc


def downgrade() -> None:
    for sql in _drops(op.get_bind().dialect.name):
        op.execute(sql)
    op.drop_table("culm_log_count")
    op.drop_table("culm_root_bytes")


def _size(row: str, cols: tuple[str, ...], fn: str) -> str:
    return " + ".join(f"{fn}({row}.{c})" for c in cols)


def _triggers(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return _pg_triggers()
    if dialect in ("mysql", "mariadb"):
        return _row_triggers("CONNECTION_ID() % " + str(SHARDS), _mysql_body, "LENGTH")
    return _row_triggers("0", _sqlite_body, "LENGTH")


def _drops(dialect: str) -> list[str]:
    names = [f"{table}_bytes_{e.lower()}" for table, _k, _c in PAYLOADS for e in EVENTS]
    names += [f"culm_log_lines_{e.lower()}" for e in EVENTS]
    if dialect == "postgresql":
        return [f"DROP TRIGGER {n} ON {n.rsplit('_', 2)[0]}" for n in names] + [
            f"DROP FUNCTION {n}()" for n in names
        ]
    return [f"DROP TRIGGER {n}" for n in names]


_ADD_BYTES = (
    "INSERT INTO culm_root_bytes (root_id, shard, bytes) VALUES "
    "(COALESCE((SELECT root_id FROM culm_node WHERE id = {key}), {key}), {shard}, {delta})"
)
_ADD_LINES = (
    "INSERT INTO culm_log_count (node_id, version, line_count) VALUES ({row}.node_id, {row}.version, {delta})"
)


def _row_triggers(shard: str, body: object, fn: str) -> list[str]:
    """SQLite and MySQL: triggers FOR EACH ROW (neither has statement triggers with the rows)."""
    out = []
    for table, key, cols in PAYLOADS:
        new, old = _size("NEW", cols, fn), _size("OLD", cols, fn)
        changes = {
            "INSERT": [(_ADD_BYTES.format(key=f"NEW.{key}", shard=shard, delta=new), "bytes")],
            "DELETE": [(_ADD_BYTES.format(key=f"OLD.{key}", shard=shard, delta=f"-({old})"), "bytes")],
            "UPDATE": [
                (_ADD_BYTES.format(key=f"NEW.{key}", shard=shard, delta=f"({new}) - ({old})"), "bytes")
            ],
        }
        for event in EVENTS:
            when = f"({new}) <> ({old})" if event == "UPDATE" else None  # a key never changes
            out.append(body(f"{table}_bytes_{event.lower()}", table, event, changes[event], when))  # type: ignore[operator]
    lines = {
        "INSERT": [(_ADD_LINES.format(row="NEW", delta="1"), "line_count")],
        "DELETE": [(_ADD_LINES.format(row="OLD", delta="-1"), "line_count")],
        "UPDATE": [
            (_ADD_LINES.format(row="OLD", delta="-1"), "line_count"),
            (_ADD_LINES.format(row="NEW", delta="1"), "line_count"),
        ],
    }
    for event in EVENTS:  # retag_logs moves a run's lines to another version
        when = "NEW.node_id <> OLD.node_id OR NEW.version <> OLD.version" if event == "UPDATE" else None
        out.append(body(f"culm_log_lines_{event.lower()}", "culm_log", event, lines[event], when))  # type: ignore[operator]
    return out


def _sqlite_body(name: str, table: str, event: str, inserts: list[tuple[str, str]], when: str | None) -> str:
    keys = {"bytes": "root_id, shard", "line_count": "node_id, version"}
    stmts = " ".join(
        f"{sql} ON CONFLICT ({keys[col]}) DO UPDATE SET {col} = {col} + excluded.{col};"
        for sql, col in inserts
    )
    return (
        f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW"
        f"{' WHEN ' + when if when else ''} BEGIN {stmts} END"
    )


def _mysql_body(name: str, table: str, event: str, inserts: list[tuple[str, str]], when: str | None) -> str:
    stmts = " ".join(f"{sql} ON DUPLICATE KEY UPDATE {col} = {col} + VALUES({col});" for sql, col in inserts)
    if when:
        stmts = f"IF {when} THEN {stmts} END IF;"
    return f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW BEGIN {stmts} END"


def _pg_triggers() -> list[str]:
    """PostgreSQL: statement triggers reading the statement's rows (transition tables): one
    counter update per root (and per run) a statement touches, however many rows it writes. The
    shard is the session's: a transaction adds to one row per root, so two transactions wait for
    each other on it only when their sessions share a shard."""
    out = []
    for table, key, cols in PAYLOADS:
        for event in EVENTS:
            rows = {
                "INSERT": [("new_rows", "")],
                "DELETE": [("old_rows", "-")],
                "UPDATE": [("new_rows", ""), ("old_rows", "-")],
            }[event]
            deltas = " UNION ALL ".join(
                f"SELECT {key} AS k, {sign}({_size('t', cols, 'OCTET_LENGTH')}) AS d FROM {tt} t"
                for tt, sign in rows
            )
            sql = (
                "INSERT INTO culm_root_bytes (root_id, shard, bytes) SELECT COALESCE(n.root_id, x.k), "
                f"pg_backend_pid() % {SHARDS}, SUM(x.d) FROM ({deltas}) x LEFT JOIN culm_node n ON n.id = x.k "
                "GROUP BY 1 HAVING SUM(x.d) <> 0 ORDER BY 1 "
                "ON CONFLICT (root_id, shard) DO UPDATE SET bytes = culm_root_bytes.bytes + excluded.bytes"
            )
            out += _pg_function(f"{table}_bytes_{event.lower()}", table, event, [sql])
    for event in EVENTS:
        rows = {
            "INSERT": [("new_rows", "1")],
            "DELETE": [("old_rows", "-1")],
            "UPDATE": [("new_rows", "1"), ("old_rows", "-1")],
        }[event]
        deltas = " UNION ALL ".join(f"SELECT node_id, version, {d} AS d FROM {tt}" for tt, d in rows)
        sql = (
            "INSERT INTO culm_log_count (node_id, version, line_count) SELECT node_id, version, SUM(d) "
            f"FROM ({deltas}) x GROUP BY node_id, version HAVING SUM(d) <> 0 ORDER BY node_id, version "
            "ON CONFLICT (node_id, version) DO UPDATE SET line_count = culm_log_count.line_count + excluded.line_count"
        )
        out += _pg_function(f"culm_log_lines_{event.lower()}", "culm_log", event, [sql])
    return out


def _pg_function(name: str, table: str, event: str, stmts: list[str]) -> list[str]:
    refs = {
        "INSERT": "NEW TABLE AS new_rows",
        "DELETE": "OLD TABLE AS old_rows",
        "UPDATE": "NEW TABLE AS new_rows OLD TABLE AS old_rows",
    }[event]
    body = " ".join(s + ";" for s in stmts)
    return [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NULL; END $$",
        f"CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {refs} FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {name}()",
    ]
