"""Revision 0011: each log line's number in its run, given by the writer, so a page from an
offset seeks the (node_id, version, line_no) index instead of passing over the lines before it.
On SQLite, PostgreSQL and MariaDB: the numbers follow the run's count across transactions and a
retag, lines stored before 0011 stay unnumbered and are still paged right, and 0011 downgrades.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from alembic import command
from backends import create_database, drop_database

from culm.core import queries
from culm.storage import migrate
from culm.storage.sql import SqlStore
from culm.storage.sql.statements import LOG_AT

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'c.db'}"
        return
    made = create_database(request.param)
    yield made
    drop_database(made)


def _migrate(store: SqlStore, to: str, *, down: bool = False) -> None:
    with store.engine.begin() as conn:
        (command.downgrade if down else command.upgrade)(migrate.alembic_config(conn), to)


def _add(store: SqlStore, node_id: str, version: str, lines: range) -> None:
    with store.transaction() as unit:
        unit.add_logs([{"node_id": node_id, "version": version, "loop": 1, "created_time": 0.0,
                        "line": f"{node_id} {version} line {i}"} for i in lines])


def _add_old(store: SqlStore, node_id: str, version: str, lines: range) -> None:
    """Lines as a 0010 writer stored them: without a number."""
    old = sa.table("culm_log", *(sa.column(c) for c in ("node_id", "version", "loop", "created_time", "line")))
    with store.engine.begin() as conn:
        for i in lines:  # one by one: ids in order
            conn.execute(old.insert().values(node_id=node_id, version=version, loop=1, created_time=0.0,
                                             line=f"{node_id} {version} line {i}"))


def _numbers(store: SqlStore, node_id: str, version: str) -> list[int | None]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(
            f"SELECT line_no FROM culm_log WHERE node_id = '{node_id}' AND version = '{version}' ORDER BY id")]


def _page(store: SqlStore, node_id: str, version: str, offset: int, limit: int) -> dict:
    return queries.node_log_page(SimpleNamespace(store=store), node_id, version, offset, limit)  # type: ignore[arg-type]


def _plan(store: SqlStore) -> str:
    sql = f"{LOG_AT} LIMIT 10"
    with store.engine.connect() as conn:
        dialect = store.engine.dialect.name
        if dialect == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("n1", "v1", 5)).fetchall()
        elif dialect == "postgresql":
            rows = conn.exec_driver_sql("EXPLAIN " + sql.replace("?", "%s"), ("n1", "v1", 5)).fetchall()
        else:
            rows = conn.exec_driver_sql("EXPLAIN " + sql.replace("?", "%s"), ("n1", "v1", 5)).mappings().fetchall()
            return " ".join(f"{r['key']} {r['Extra']}" for r in rows)
    return " ".join(str(r[-1]) for r in rows)


def test_lines_are_numbered_in_their_run_and_an_offset_page_seeks(url):
    store = SqlStore(url, create=False)
    try:
        _migrate(store, "head")
        _add(store, "n1", "v1", range(0, 120))
        _add(store, "n2", "v1", range(0, 30))  # another run between: numbered on its own
        _add(store, "n1", "v1", range(120, 300))
        assert _numbers(store, "n1", "v1") == list(range(300))
        assert _numbers(store, "n2", "v1") == list(range(30))
        with store.transaction() as unit:  # a forced failure moves the run's lines to a new version
            unit.retag_logs("n2", "v1", "v2")
        _add(store, "n2", "v2", range(30, 35))
        assert _numbers(store, "n2", "v2") == list(range(35))
        with store.transaction() as unit:  # two writes of one run in one transaction (deferred on a server)
            for i in (35, 36):
                unit.add_logs([{"node_id": "n2", "version": "v2", "loop": 1, "created_time": 0.0,
                                "line": f"n2 v2 line {i}"}])
        assert _numbers(store, "n2", "v2") == list(range(37))
        with store.reading() as unit:
            assert unit.logs_at("n1", "v1", 250, 3) == [f"n1 v1 line {i}" for i in (250, 251, 252)]
            assert unit.logs_at("n1", "v1", 300, 3) is None  # past the end: nothing to seek
        page = _page(store, "n1", "v1", 140, 50)
        assert (page["total"], page["offset"]) == (300, 140)
        assert page["lines"] == [f"n1 v1 line {i}" for i in range(140, 190)]
        assert _page(store, "n2", "v2", 33, 10)["lines"] == [f"n2 v2 line {i}" for i in range(33, 37)]
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE culm_log")
        assert "ix_culm_log_node_version_line" in _plan(store)
    finally:
        store.dispose()


def test_revision_0011_keeps_older_lines_unnumbered_pages_them_all_and_downgrades(url):
    store = SqlStore(url, create=False)
    try:
        _migrate(store, "0010")
        _add_old(store, "n1", "v1", range(0, 40))
        _migrate(store, "0011")
        assert _numbers(store, "n1", "v1") == [None] * 40
        _add(store, "n1", "v1", range(40, 70))  # the same run, continued after the upgrade
        assert _numbers(store, "n1", "v1") == [None] * 40 + list(range(40, 70))
        with store.reading() as unit:
            assert unit.logs_at("n1", "v1", 10, 5) is None  # unnumbered: the caller walks
            assert unit.logs_at("n1", "v1", 45, 2) == ["n1 v1 line 45", "n1 v1 line 46"]
        for offset in (0, 10, 35, 45, 69):  # both sides of where the numbers start, from both ends
            page = _page(store, "n1", "v1", offset, 20)
            assert page["lines"] == [f"n1 v1 line {i}" for i in range(offset, min(offset + 20, 70))], offset
        _migrate(store, "0010", down=True)
        assert migrate.current_version(store) == "0010"
        with store.engine.connect() as conn:
            cols = [r[0] for r in conn.exec_driver_sql("SELECT * FROM culm_log").cursor.description]
        assert "line_no" not in cols
        with store.reading() as unit:
            assert unit.logs("n1", "v1") == [f"n1 v1 line {i}" for i in range(70)]
            assert unit.log_count("n1", "v1") == 70
        _migrate(store, "0011")
        assert _numbers(store, "n1", "v1") == [None] * 70
    finally:
        store.dispose()


def test_lines_an_older_worker_wrote_unnumbered_in_the_middle_of_a_run_are_not_skipped(url):
    """Found reviewing (session 17): a worker of the previous release still writing after
    `culm db upgrade` leaves unnumbered lines between numbered ones; a page that started at a
    numbered line jumped over them (offset 5, limit 10 gave lines 5-9, then 20-24)."""
    store = SqlStore(url, create=False)
    try:
        _migrate(store, "head")
        _add(store, "n1", "v1", range(0, 10))
        _add_old(store, "n1", "v1", range(10, 20))
        _add(store, "n1", "v1", range(20, 30))
        assert _numbers(store, "n1", "v1") == list(range(10)) + [None] * 10 + list(range(20, 30))
        with store.reading() as unit:
            assert unit.logs_at("n1", "v1", 5, 10) == [f"n1 v1 line {i}" for i in range(5, 10)]  # the numbered run only
            assert unit.logs_at("n1", "v1", 12, 5) is None
        for offset, limit in ((5, 10), (0, 30), (9, 2), (15, 10), (19, 11), (25, 10)):
            page = _page(store, "n1", "v1", offset, limit)
            assert page["lines"] == [f"n1 v1 line {i}" for i in range(offset, min(offset + limit, 30))], (offset, limit)
    finally:
        store.dispose()
