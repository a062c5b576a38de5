"""Alembic migrations on real servers: an empty database is brought to head, and an outdated one is
refused with a message that names ``culm db upgrade``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from backends import REDIS, REPO
from sqlalchemy.engine import make_url

import culm
from culm.errors import SchemaOutdatedError
from culm.storage import migrate, schema
from culm.storage.sql import SqlStore

pytestmark = pytest.mark.timeout(120)


def _schema_diff(store: SqlStore) -> list:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": schema.VERSION_TABLE}
        )
        return compare_metadata(ctx, schema.metadata)


def test_upgrade_creates_exactly_the_schema(server_database):
    store = SqlStore(server_database, create=False)
    try:
        assert migrate.current_version(store) is None
        assert migrate.upgrade(store) == migrate.head_version()
        assert migrate.current_version(store) == migrate.head_version()
        assert _schema_diff(store) == []
        assert migrate.upgrade(store) == migrate.head_version()  # a second run changes nothing
    finally:
        store.dispose()
    SqlStore(server_database).dispose()  # the version check now passes


def test_upgrade_database_by_url(server_database):
    assert migrate.upgrade_database(server_database) == migrate.head_version()
    store = SqlStore(server_database)
    try:
        with store.transaction() as unit:
            assert unit.pending_tasks(0.0, 10) == []
    finally:
        store.dispose()


def test_empty_server_database_is_refused(server_database):
    # the URL as a user writes it (no driver), shown so in the hint, not culm's driver URL
    given = make_url(server_database).set(drivername=make_url(server_database).get_backend_name())
    given = given.set(drivername="mysql") if given.drivername == "mariadb" else given
    with pytest.raises(SchemaOutdatedError) as info:
        SqlStore(given.render_as_string(hide_password=False))
    message = str(info.value)
    assert f"culm db upgrade --db {given.render_as_string(hide_password=True)}` first" in message
    assert "+psycopg" not in message and "+pymysql" not in message
    assert "none" in message


def test_runtime_refuses_outdated_schema(server_database):
    store = SqlStore(server_database, create=False)
    try:
        migrate.upgrade(store)
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "base")
        assert migrate.current_version(store) is None
    finally:
        store.dispose()
    with pytest.raises(SchemaOutdatedError, match="culm db upgrade"):
        culm.Runtime(server_database, broker=REDIS)


def _record_revision(store: SqlStore, revision: str) -> None:
    """Migrate ``store`` to head, then record ``revision`` as its version; closes the store."""
    try:
        migrate.upgrade(store)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE {schema.VERSION_TABLE} SET version_num = '{revision}'")
    finally:
        store.dispose()


def test_unknown_revision_is_refused(server_database):
    _record_revision(SqlStore(server_database, create=False), "ffff")
    with pytest.raises(SchemaOutdatedError, match="newer culm"):
        SqlStore(server_database)


def test_worker_refuses_outdated_schema(server_database):
    proc = subprocess.run(
        [sys.executable, "-m", "culm", "worker", "--db", server_database, "--broker", REDIS],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "culm db upgrade --db" in proc.stderr


def test_worker_refuses_a_database_at_head_missing_a_culm_table(server_database):
    # The version check passes (the version table is there); the worker met the missing tables in
    # every beat and logged the driver's traceback each second. Now: exit 4 and one line.
    migrate.upgrade_database(server_database)
    store = SqlStore(server_database)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE culm_worker")
    finally:
        store.dispose()
    proc = subprocess.run(
        [sys.executable, "-m", "culm", "worker", "--db", server_database, "--broker", REDIS],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 4, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "does not exist" not in proc.stderr.replace("doesn't", ""), proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "has no culm table culm_worker" in last, last
    assert "culm db upgrade --db" in last, last


@pytest.mark.parametrize("where", ["file", "memory"])
def test_sqlite_is_upgraded_on_open(tmp_path, where):
    url = f"sqlite:///{tmp_path / 'c.db'}" if where == "file" else "sqlite:///:memory:"
    store = SqlStore(url)
    try:
        assert migrate.current_version(store) == migrate.head_version()
        assert _schema_diff(store) == []
    finally:
        store.dispose()


def test_head_revision_constant_is_alembics_head():
    assert migrate.HEAD_REVISION == migrate.head_version()


def test_opening_an_up_to_date_database_does_not_load_alembic(tmp_path):
    """Alembic (with Mako and Pygments) is loaded only to migrate: a process that opens a database
    already at head carries none of it (fewer modules, less memory, cheaper garbage collections)."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SqlStore(url).dispose()  # created and migrated here
    probe = (
        "import sys, culm\n"
        f"rt = culm.Runtime({url!r})\n"
        "rt.close()\n"
        "print(sorted(m for m in ('alembic', 'mako', 'pygments') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_sqlite_database_of_an_unknown_revision_is_refused_clearly(tmp_path):
    """A file migrated by a newer culm: a SchemaOutdatedError naming the revision, not Alembic's."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    _record_revision(SqlStore(url), "not-a-revision")
    with pytest.raises(SchemaOutdatedError, match="not-a-revision"):
        SqlStore(url)


def _sqlite_file_at(tmp_path, revision: str, fill: Callable[[SqlStore], Any]) -> tuple[str, Any]:
    """A SQLite file migrated to ``revision`` and filled by ``fill`` (closed again): its URL and
    what ``fill`` returned."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = SqlStore(url, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), revision)
        return url, fill(store)
    finally:
        store.dispose()


def test_revision_0005_adds_the_worker_registry_and_downgrades_cleanly(server_database):
    """0004 -> 0005 adds ``culm_worker`` (the worker registry) and nothing else; back to 0004 drops it."""
    from sqlalchemy import inspect

    store = SqlStore(server_database, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0004")
        with store.engine.connect() as conn:
            tables_0004 = set(inspect(conn).get_table_names())
        assert "culm_worker" not in tables_0004
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0005")
        assert migrate.current_version(store) == "0005"
        with store.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == tables_0004 | {"culm_worker"}
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0004")
        with store.engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == tables_0004
    finally:
        store.dispose()


def _change_indexes(store: SqlStore) -> set[str]:
    from sqlalchemy import inspect

    with store.engine.connect() as conn:
        return {ix["name"] for ix in inspect(conn).get_indexes("culm_change")}


def _feed_of(store: SqlStore, root_id: str) -> list[tuple[int, str, str]]:
    with store.reading() as unit:
        return [
            (c.seq, c.node_id, c.to_state) for c in unit.read_changes(0, unit.last_change_seq(), root_id, 100)
        ]


def _record_changes(store: SqlStore) -> None:
    """Two pipelines' changes, interleaved, as the engine writes them."""
    with store.transaction() as unit:
        for i in range(3):
            for root in ("root-a", "root-b"):
                unit.record_change(root, f"{root}-n{i}", None, "RUNNING", "v1", 1)


def test_revision_0006_indexes_the_change_feed_by_root_and_downgrades_cleanly(server_database):
    """0005 -> 0006 adds ``ix_culm_change_root_seq`` and keeps the rows: each root's changes read
    the same, in seq order; back to 0005 drops the index alone."""
    store = SqlStore(server_database, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0005")
        _record_changes(store)
        before = {root: _feed_of(store, root) for root in ("root-a", "root-b")}
        assert [n for _s, n, _t in before["root-a"]] == ["root-a-n0", "root-a-n1", "root-a-n2"]
        assert "ix_culm_change_root_seq" not in _change_indexes(store)
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0006")
        assert migrate.current_version(store) == "0006"
        assert "ix_culm_change_root_seq" in _change_indexes(store)
        assert {root: _feed_of(store, root) for root in ("root-a", "root-b")} == before
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0005")
        assert "ix_culm_change_root_seq" not in _change_indexes(store)
        assert migrate.current_version(store) == "0005"
    finally:
        store.dispose()


def test_a_sqlite_file_at_0005_gets_the_feed_index_when_opened(tmp_path):
    """An embedded database of the previous culm is upgraded on open, its feed rows kept, and a
    root's changes are then read through the new index (no pass over other pipelines' rows)."""
    def fill(store: SqlStore) -> list:
        _record_changes(store)
        return _feed_of(store, "root-b")

    url, before = _sqlite_file_at(tmp_path, "0005", fill)
    store = SqlStore(url)  # the version check upgrades an embedded file
    try:
        assert migrate.current_version(store) == migrate.HEAD_REVISION
        assert _feed_of(store, "root-b") == before
        with store.engine.connect() as conn:
            from culm.storage.sql.statements import CHANGES_OF_ROOT_BETWEEN

            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + CHANGES_OF_ROOT_BETWEEN, (0, 10, "root-b", 100)
            ).fetchall()
        assert "ix_culm_change_root_seq" in " ".join(str(row[-1]) for row in plan)
    finally:
        store.dispose()


def _callback_columns(store: SqlStore) -> set[str]:
    from sqlalchemy import inspect

    with store.engine.connect() as conn:
        return {c["name"] for c in inspect(conn).get_columns("culm_callback_data")}


def _store_callback_at_0007(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0007")
        conn.exec_driver_sql("INSERT INTO culm_callback_data (id, node_id, version, data) "
                             "VALUES ('cb-old', 'n1', 'v1', '{\"n\": 0}')")


def _check_callbacks_numbered(store: SqlStore) -> None:
    """The row kept from 0007 comes first (number 0); callbacks accepted since are numbered after it."""
    from culm.core.records import SCHEDULE, TaskRecord

    assert "seq" in _callback_columns(store)
    with store.transaction() as unit:
        unit.insert_callback("cb-new", "n1", "v1", {"n": 1})
        unit.insert_tasks([TaskRecord(t, SCHEDULE, "p", "n1", "r1", callback_id=c, running_version="v1")
                           for t, c in (("t-new", "cb-new"), ("t-old", "cb-old"))])
    with store.reading() as unit:
        assert unit.get_callback("cb-old") == {"n": 0}
        assert unit.first_callback_task("r1", "n1", "v1") == "t-old"
    with store.engine.connect() as conn:
        assert dict(conn.exec_driver_sql("SELECT id, seq FROM culm_callback_data").fetchall()) == \
            {"cb-old": 0, "cb-new": 1}


def test_revision_0008_numbers_callbacks_and_downgrades_cleanly(server_database):
    """0007 -> 0008 adds ``culm_callback_data.seq`` (0 for the rows kept); back to 0007 drops it
    and keeps the rows."""
    store = SqlStore(server_database, create=False)
    try:
        _store_callback_at_0007(store)
        assert "seq" not in _callback_columns(store)
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0008")
        assert migrate.current_version(store) == "0008"
        _check_callbacks_numbered(store)
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0007")
        assert "seq" not in _callback_columns(store)
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM culm_callback_data").scalar() == 2
    finally:
        store.dispose()


def test_a_sqlite_file_at_0007_gets_callback_numbers_when_opened(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = SqlStore(url, create=False)
    try:
        _store_callback_at_0007(store)
    finally:
        store.dispose()
    store = SqlStore(url)  # the version check upgrades an embedded file
    try:
        assert migrate.current_version(store) == migrate.HEAD_REVISION
        _check_callbacks_numbered(store)
    finally:
        store.dispose()


def _log_indexes(store: SqlStore) -> dict[str, list[str]]:
    from sqlalchemy import inspect

    with store.engine.connect() as conn:
        return {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("culm_log")}


def _store_logs(store: SqlStore, runs: int = 3, lines: int = 400) -> None:
    """``lines`` lines for each of ``runs`` runs of one node, interleaved as concurrent runs log."""
    with store.transaction() as unit:  # as the writers of 0008-0010 stored them (add_logs numbers them, 0011)
        unit._insert("culm_log", [{"node_id": "n1", "version": f"v{r}", "loop": 1, "created_time": float(i),
                                   "line": f"[INFO] v{r} line {i}"} for i in range(lines) for r in range(runs)])


def _tail_plan(store: SqlStore) -> str:
    """The database's plan of the tail read of one run (culm.storage.sql.statements.LOG_TAIL)."""
    from culm.storage.sql.statements import LOG_TAIL

    explain = {"sqlite": "EXPLAIN QUERY PLAN "}.get(store.engine.dialect.name, "EXPLAIN ")
    with store.reading() as unit:
        rows = unit._all(explain + LOG_TAIL + " LIMIT 10 OFFSET 0", ["n1", "v1", "v1"])
    return " | ".join(" ".join(str(v) for v in row) for row in rows)


def _sorts(plan: str) -> bool:
    """Whether a plan sorts the rows (PostgreSQL "Sort", SQLite "TEMP B-TREE", MySQL "filesort")."""
    return any(word in plan for word in ("Sort", "TEMP B-TREE", "filesort"))


def test_revision_0009_reads_a_log_tail_in_index_order_and_downgrades_cleanly(server_database):
    """0008 -> 0009 replaces the (node_id, version) index of culm_log by (node_id, version, id):
    a run's last lines are read from the index's end, not sorted out of all the run's lines; the
    rows stay, each run's lines read the same; back to 0008 restores the old index."""
    store = SqlStore(server_database, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0008")
        _store_logs(store)
        assert _log_indexes(store) == {"ix_culm_log_node_version": ["node_id", "version"]}
        with store.reading() as unit:
            before = unit.logs("n1", "v1")
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0009")
        assert migrate.current_version(store) == "0009"
        assert _log_indexes(store) == {"ix_culm_log_node_version_id": ["node_id", "version", "id"]}
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE culm_log")
        plan = _tail_plan(store)
        assert "ix_culm_log_node_version_id" in plan and not _sorts(plan), plan
        with store.reading() as unit:
            assert unit.logs("n1", "v1") == before == [f"[INFO] v1 line {i}" for i in range(400)]
            assert unit.last_logs("n1", "v1", 5, 3) == [f"[INFO] v1 line {i}" for i in (392, 393, 394)]
        with store.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(conn), "0008")
        assert _log_indexes(store) == {"ix_culm_log_node_version": ["node_id", "version"]}
    finally:
        store.dispose()


def test_a_sqlite_file_at_0008_gets_the_log_index_when_opened(tmp_path):
    """SQLite's old index already ended with the rowid (culm_log.id): its tail read did not sort
    either; the file is upgraded on open and reads through the new index."""
    url, _ = _sqlite_file_at(tmp_path, "0008", _store_logs)
    store = SqlStore(url)  # the version check upgrades an embedded file
    try:
        assert migrate.current_version(store) == migrate.HEAD_REVISION
        plan = _tail_plan(store)
        assert "ix_culm_log_node_version_id" in plan and not _sorts(plan), plan
    finally:
        store.dispose()


def test_a_sqlite_file_at_0009_gets_its_stored_counts_when_opened(tmp_path):
    """0010 counts what a file stores (bytes per root pipeline, lines per run) when it is opened."""
    url, _ = _sqlite_file_at(tmp_path, "0009", _store_logs)
    store = SqlStore(url)
    try:
        assert migrate.current_version(store) == migrate.HEAD_REVISION
        with store.reading() as unit:
            assert unit.log_count("n1", "v1") == 400
        with store.engine.connect() as conn:
            kept = conn.exec_driver_sql("SELECT SUM(bytes) FROM culm_root_bytes").scalar()
            real = conn.exec_driver_sql("SELECT SUM(LENGTH(line)) FROM culm_log").scalar()
        assert kept == real > 0
    finally:
        store.dispose()
