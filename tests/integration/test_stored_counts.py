"""The stored-bytes counter of each root pipeline and the line count of each run (revision 0010), on
SQLite, PostgreSQL and MariaDB: kept exact by the database whatever writes (every payload table,
replacements, deletions, a log retagged), counted for the budget (context values, callback data and
log lines too), seen across connections, and filled in for databases migrated from 0009.
"""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
from alembic import command
from backends import create_database, drop_database

from culm.core.records import ContextValue, HistoryRecord
from culm.errors import DatabaseSettingsError, StoredBytesBudgetError
from culm.model import limits
from culm.storage import budget, migrate
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(180)

ROOT, SUB, NODE, OTHER = "r" * 32, "s" * 32, "n" * 32, "o" * 32


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    made = create_database(request.param)
    yield made
    drop_database(made)


def _open(url: str, *, at: str | None = None) -> SqlStore:
    store = SqlStore(url, create=False)
    with store.engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), at or "head")
    return store


def _log(node_id: str, version: str, line: str) -> dict:
    return {"node_id": node_id, "version": version, "loop": 1, "created_time": 0.0, "line": line}


def _add_logs(unit, rows: list[dict]) -> None:
    """Log lines as any revision's writer stores them (unit.add_logs numbers them, 0011: a column
    the revisions these tests migrate through do not all have)."""
    unit._insert("culm_log", rows)


def _shard(unit) -> int:
    """The counter shard the triggers give this unit's session (revision 0010)."""
    session = "pg_backend_pid()" if unit.dialect == "postgresql" else "CONNECTION_ID()"
    cursor = unit.conn.cursor()
    try:
        cursor.execute(f"SELECT {session} % 16")
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()


def _pipeline(unit, root: str = ROOT) -> None:
    unit.add_pipeline(root, {"id": root}, {}, {}, 0.0)
    unit.add_nodes(
        [
            (root, root, root, "Pipeline"),
            (SUB + root[:1], root, root, "SubProcess"),
            (NODE + root[:1], root, SUB + root[:1], "ServiceActivity"),
        ]
    )


def _fill(store: SqlStore, root: str = ROOT, at_0009: bool = False) -> None:
    """Every kind of payload a root stores, written, replaced and retagged as the engine does.
    ``at_0009``: the database has no counters to check a write against (callback data is checked
    whatever its size): it is written unchecked, as a 0009 store wrote it."""
    if at_0009:
        with mock.patch.object(budget, "check", lambda *args, **kwargs: None):
            _fill(store, root)
        return
    node, sub = NODE + root[:1], SUB + root[:1]
    with store.transaction() as unit:
        _pipeline(unit, root)
        unit.insert_context(root, [ContextValue("${a}", "plain", "x" * 100)])
        unit.insert_context(sub, [ContextValue("${b}", "plain", "y" * 50)])
        unit.set_execution_data(node, {"i": "a" * 1000}, {})
    with store.transaction() as unit:
        unit.set_execution_data(node, {"i": "a" * 10}, {"o": "b" * 300})  # replaced: smaller
        unit.set_execution_outputs(node, {"o": "c" * 5000})
        unit.set_inputs_override(node, {"i": "d" * 700})
        unit.upsert_context(root, [ContextValue("${a}", "plain", "z" * 3000)])
        unit.add_history(HistoryRecord(0, node, 0.0, 1.0, 1, False, 0, "v1", {"i": "e" * 400}, {"o": "f"}))
        unit.insert_callback("c" * 31 + root[:1], node, "v2", {"data": "g" * 900})
        _add_logs(unit, [_log(node, "v1", f"line {i} " + "h" * i) for i in range(250)])
    with store.transaction() as unit:
        unit.retag_logs(node, "v1", "v2")
        _add_logs(unit, [_log(node, "v1", "again")])


_RECOUNT = (
    "SELECT SUM(b) FROM ("
    "SELECT {n}(inputs) + {n}(outputs) AS b FROM culm_execution_data"
    " UNION ALL SELECT {n}(inputs) FROM culm_node_data"
    " UNION ALL SELECT {n}(inputs) + {n}(outputs) FROM culm_history"
    " UNION ALL SELECT {n}(value) FROM culm_context_value"
    " UNION ALL SELECT {n}(data) FROM culm_callback_data"
    " UNION ALL SELECT {n}(line) FROM culm_log) x"
)


def _counted(store: SqlStore, root: str = ROOT) -> tuple[int, int]:
    """The root's counter, and the bytes its rows hold counted from them."""
    fn = "OCTET_LENGTH" if store.engine.dialect.name == "postgresql" else "LENGTH"
    with store.engine.connect() as conn:
        kept = conn.exec_driver_sql(
            f"SELECT COALESCE(SUM(bytes), 0) FROM culm_root_bytes WHERE root_id = '{root}'"
        ).scalar()
        real = conn.exec_driver_sql(_RECOUNT.format(n=fn)).scalar()
    return int(kept or 0), int(real or 0)


def test_the_counter_is_what_the_root_stores_after_every_kind_of_write(url):
    store = _open(url)
    try:
        _fill(store)
        kept, real = _counted(store)
        assert kept == real and real > 10_000, (kept, real)
        with store.reading() as unit:
            root, held, replaced = unit.stored_bytes(NODE + "r")
            assert (root, held, replaced) == (ROOT, real, 0)
            assert unit.log_count(NODE + "r", "v2") == 250
            assert unit.log_count(NODE + "r", "v1") == 1
            assert unit.log_count(NODE + "r", "v9") == 0
    finally:
        store.dispose()


def test_context_values_logs_and_callbacks_count_toward_the_budget(url, monkeypatch):
    monkeypatch.setattr(limits, "MAX_PIPELINE_STORED_BYTES", 3_000_000)
    store = _open(url)
    try:
        node = NODE + "r"
        with store.transaction() as unit:
            _pipeline(unit)
            unit.insert_context(ROOT, [ContextValue("${big}", "plain", "x" * 900_000)])
            unit.insert_callback("c" * 32, node, "v1", {"data": "y" * 900_000})
            unit.add_logs([_log(node, "v1", "z" * 9_000) for _ in range(100)])
        with pytest.raises(StoredBytesBudgetError) as info, store.transaction() as unit:
            unit.set_execution_data(node, {"i": "a" * 400_000}, {})
        message = str(info.value)
        assert f"node {node}: storing its inputs (400,0" in message, message
        assert (
            "over the 3,000,000 one pipeline may store" in message and "MAX_PIPELINE_STORED_BYTES" in message
        )
        with store.transaction() as unit:  # an operator's retry inputs are checked too
            with pytest.raises(StoredBytesBudgetError, match=f"node {node}: storing its inputs"):
                unit.set_inputs_override(node, {"i": "b" * 400_000})
        with store.reading() as unit:
            assert unit.get_execution_data(node) is None and unit.get_inputs_override(node) is None
            assert unit.stored_bytes(node)[1] == _counted(store)[1]
    finally:
        store.dispose()


def test_a_check_counts_other_connections_writes_once_committed_and_never_waits_for_them(url, monkeypatch):
    """Two connections (two workers): a big write in flight on one does not hold up the check of a
    small write on the other (a check that locked every counter row deadlocked with the rows the
    writers' earlier writes held; since session 20 a write past STORED_BYTES_CHECK_AT waits for the
    pipeline's budget lock, a smaller one checked whatever its size does not), and once committed
    it is counted there (before 0010 a SQLite process counted from a remembered figure and did not
    see it)."""
    monkeypatch.setattr(limits, "MAX_PIPELINE_STORED_BYTES", 1_000_000)
    store = _open(url)
    try:
        with store.transaction() as unit:
            _pipeline(unit)
            unit.add_nodes(
                [(OTHER, ROOT, ROOT, "ServiceActivity"), (NODE + "q", ROOT, ROOT, "ServiceActivity"),
                 (NODE + "s", ROOT, ROOT, "ServiceActivity")]
            )
        if not url.startswith("sqlite"):  # SQLite: one writer at a time, nothing can be in flight
            writing, release = threading.Event(), threading.Event()
            writer_shard: list[int] = []

            def first() -> None:
                with store.transaction() as unit:
                    unit.set_execution_data(OTHER, {"i": "a" * 600_000}, {})
                    unit.flush()
                    writer_shard.append(_shard(unit))
                    writing.set()
                    release.wait(60)

            def check_on_another_shard() -> None:
                """30,000 of 1,000,000, checked: the write in flight is not waited for. Two sessions that share a
                counter shard add to the same row, so the second waits for the first's commit (row
                contention, not the check); a session on the writer's shard stays checked out, so the
                next transaction gets another connection."""
                with store.transaction() as unit:
                    if _shard(unit) == writer_shard[0]:
                        check_on_another_shard()
                        return
                    unit.set_execution_data(NODE + "s", {"i": "d" * 30_000}, {}, always=True)

            writer = threading.Thread(target=first)
            writer.start()
            try:
                assert writing.wait(30)
                started = time.monotonic()
                check_on_another_shard()
                assert time.monotonic() - started < 20
            finally:
                release.set()
                writer.join(60)
        else:
            with store.transaction() as unit:
                unit.set_execution_data(OTHER, {"i": "a" * 600_000}, {})
            with store.transaction() as unit:
                unit.set_execution_data(NODE + "s", {"i": "d" * 30_000}, {}, always=True)
        with store.transaction() as unit:
            unit.set_execution_data(NODE + "r", {"i": "b" * 300_000}, {})
        with pytest.raises(StoredBytesBudgetError, match="1,230,0"), store.transaction() as unit:
            unit.set_execution_data(NODE + "q", {"i": "c" * 300_000}, {})
        kept, real = _counted(store)
        assert kept == real and 900_000 < real < 1_000_000
    finally:
        store.dispose()


def test_revision_0010_counts_what_a_0009_database_stores_and_downgrades(url):
    store = _open(url, at="0009")
    try:
        _fill(store, ROOT, at_0009=True)
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0010")
        kept, real = _counted(store)
        assert kept == real and real > 10_000
        with store.reading() as unit:
            assert unit.log_count(NODE + "r", "v2") == 250
        _fill(store, "q" * 32)  # written at 0010: counted by the triggers, apart from the first root
        assert _counted(store, ROOT)[0] == kept and _counted(store, "q" * 32)[0] == kept
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0009")
        with store.transaction() as unit:  # no trigger left behind names a dropped table
            _add_logs(unit, [_log(NODE + "r", "v3", "after")])
            unit.set_execution_data(NODE + "r", {"i": 1}, {})
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0010")
        assert _counted(store, ROOT)[0] + _counted(store, "q" * 32)[0] == _counted(store)[1]
    finally:
        store.dispose()


def test_revision_0010_refused_a_trigger_on_mysql_undoes_itself_and_can_run_again(url):
    """MySQL commits each DDL statement: a trigger the server refuses (with binary logging on, only
    a user with SUPER may create one) left the new tables and the triggers made so far behind, and
    every later `culm db upgrade` failed on them (review16). A trigger name taken in advance makes
    the last CREATE TRIGGER fail here."""
    import sqlalchemy as sa

    if not url.startswith("mysql"):
        pytest.skip("PostgreSQL and SQLite run the revision in one transaction")
    store = _open(url, at="0009")
    try:
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER culm_log_lines_delete AFTER DELETE ON culm_log FOR EACH ROW SET @x = 1"
                )
            )
        with (
            store.engine.begin() as conn,
            pytest.raises(DatabaseSettingsError, match="still at revision 0009"),
        ):
            command.upgrade(migrate.alembic_config(conn), "0010")
        with store.engine.begin() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            triggers = {r[0] for r in conn.execute(sa.text("SHOW TRIGGERS"))}
            at = conn.execute(sa.text("SELECT version_num FROM culm_alembic_version")).scalar()
        assert at == "0009" and not {"culm_root_bytes", "culm_log_count"} & tables
        assert triggers == {"culm_log_lines_delete"}
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER culm_log_lines_delete"))
        _fill(store, ROOT, at_0009=True)
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0010")
        kept, real = _counted(store)
        assert kept == real and real > 10_000
    finally:
        store.dispose()


# Each root's stored bytes counted from its rows (a key's root as the triggers find it), on SQLite.
_BY_ROOT = " UNION ALL ".join(
    f"SELECT COALESCE(n.root_id, t.{key}) AS r, {size} AS b FROM {table} t LEFT JOIN culm_node n ON n.id = t.{key}"
    for table, key, size in (
        ("culm_execution_data", "node_id", "LENGTH(t.inputs) + LENGTH(t.outputs)"),
        ("culm_node_data", "node_id", "LENGTH(t.inputs)"),
        ("culm_history", "node_id", "LENGTH(t.inputs) + LENGTH(t.outputs)"),
        ("culm_context_value", "pipeline_id", "LENGTH(t.value)"),
        ("culm_callback_data", "node_id", "LENGTH(t.data)"),
        ("culm_log", "node_id", "LENGTH(t.line)"),
    )
)


def _recount_by_root(path) -> tuple[dict[str, int], dict[str, int]]:
    """Each root's bytes recounted from its rows, and as its counter rows hold them."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        real = dict(conn.execute(f"SELECT r, SUM(b) FROM ({_BY_ROOT}) x GROUP BY r").fetchall())
        kept = dict(conn.execute("SELECT root_id, SUM(bytes) FROM culm_root_bytes GROUP BY root_id").fetchall())
    return {r: b for r, b in real.items() if b}, {r: b for r, b in kept.items() if b}


def test_sqlite_counts_stay_exact_with_culm_and_foreign_writers_mixed(tmp_path):
    """On SQLite the triggers count every writer's bytes: culm's writes (first writes, replacements,
    a pipeline's own execution data row, which has no culm_node row), a plain sqlite3 connection
    with trusted_schema off (its triggers may call no function a connection must register), the
    sqlite3 shell. The counters equal a recount after all of it; a savepoint rolled back takes its
    bytes with it, and a budget read inside the transaction sees the bytes written so far. (The
    guard for any change that lets culm count its own writes instead: trigger9.)"""
    import shutil
    import sqlite3
    import subprocess

    path = tmp_path / "mixed.db"
    store = _open(f"sqlite:///{path}")
    roots = ["a" * 32, "b" * 32]
    try:
        for root in roots:
            _fill(store, root)
        foreign = sqlite3.connect(path, isolation_level=None)
        foreign.execute("PRAGMA trusted_schema=OFF")
        for i, root in enumerate(roots):
            node, sub = NODE + root[:1], SUB + root[:1]
            with store.transaction() as unit:
                unit.add_nodes([(f"x{i}{j}" + "0" * 28, root, sub, "ServiceActivity") for j in range(5)])
                for j in range(5):
                    unit.set_execution_data(f"x{i}{j}" + "0" * 28, {"i": "p" * (10 + j)}, {"o": "q" * j})
                unit.insert_context(sub, [ContextValue(f"${{k{j}}}", "plain", "v" * (j + 1)) for j in range(4)])
                unit.set_execution_outputs(root, {"end": "e" * 40})  # a pipeline's own row, no culm_node row
                assert unit.stored_bytes(node)[1] == _recount_by_root_in(unit, root)
                with pytest.raises(RuntimeError), unit.savepoint():
                    unit.set_execution_data(f"x{i}9" + "0" * 28, {"i": "w" * 500}, {})
                    raise RuntimeError("undone")
            foreign.execute("BEGIN")
            foreign.execute(
                "INSERT INTO culm_execution_data (node_id, inputs, outputs) VALUES (?, ?, ?)",
                (f"x{i}5" + "0" * 28, '{"f":1}', "{}"),
            )
            foreign.execute("UPDATE culm_execution_data SET outputs = ? WHERE node_id = ?", ('{"o":"' + "z" * 99 + '"}',
                                                                                            f"x{i}0" + "0" * 28))
            foreign.execute("DELETE FROM culm_context_value WHERE pipeline_id = ? AND \"key\" = '${k0}'", (sub,))
            foreign.execute("COMMIT")
            with store.transaction() as unit:  # replaced by culm: the triggers count these
                unit.set_execution_data(f"x{i}1" + "0" * 28, {}, {"o": "r" * 77})
                unit.set_execution_outputs(root, {"end": "e" * 4})
        shell = shutil.which("sqlite3")
        if shell is not None:
            script = (
                f"INSERT INTO culm_context_value (pipeline_id, \"key\", type, value, refs) "
                f"VALUES ('{roots[0]}', '${{shell}}', 'plain', '\"{'s' * 60}\"', '[]');"
                f"UPDATE culm_execution_data SET inputs = '{{}}' WHERE node_id = 'x12{'0' * 28}';"
            )
            subprocess.run([shell, str(path), script], check=True, capture_output=True, timeout=60)
        foreign.close()
        real, kept = _recount_by_root(path)
        assert set(roots) <= set(real) and kept == real
    finally:
        store.dispose()


def _recount_by_root_in(unit, root: str) -> int:
    """A root's stored bytes counted from its rows, inside ``unit``'s transaction."""
    return int(unit._one(f"SELECT SUM(b) FROM ({_BY_ROOT}) x WHERE r = ?", [root])[0])
