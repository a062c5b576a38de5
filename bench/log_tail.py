"""The tail of a run's log of millions of lines on PostgreSQL, before and after revision 0009.

    python -m bench.log_tail POSTGRESQL_URL [LINES]

URL names an empty database of its own (it is migrated to 0008, filled, migrated to 0009, then to
0010, which counts the stored lines per run once: ``culm_log_count``, and to 0011, which adds
each line's number in its run for the lines written since).
LINES lines (default 1,000,000) are stored for one run of a node, one row in five while 1,000
other nodes log the other four, then LINES / 2 lines of those other nodes after the run ended. Printed: PostgreSQL's plan and execution time (``EXPLAIN ANALYZE``) of the
last page of 1,000 lines as culm read it before 0009 (ascending by id from the offset
``LINES - 1000``, under the (node_id, version) index) and as it reads it now (backwards from the
run's end, ``LOG_TAIL``, under (node_id, version, id)), and the wall time of
``culm.api.get_node_log_page`` for the last page and for a page at nine tenths of the run with
the new index (both read the run's line count, ``total``: since 0010 one row of ``culm_log_count``,
before it a count of all the run's lines, whose plan is printed too); then the run's lines are
numbered as a writer since 0011 numbers them, and the page at nine tenths is read again: a seek of
``ix_culm_log_node_version_line`` (LOG_AT) instead of a walk over the lines after it.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

from alembic import command

from culm.storage import migrate
from culm.storage.sql import SqlStore
from culm.storage.sql.statements import LOG_COUNT, LOG_TAIL

PAGE = 1000


def _explain(store: SqlStore, sql: str) -> list[str]:
    with store.engine.connect() as conn:
        params = ("n1", "v1", "v1")[:sql.count("?")]
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql.replace("?", "%s"), params).fetchall()
    return [str(r[0]) for r in rows]


def _show(title: str, plan: list[str]) -> None:
    print(f"-- {title}")
    for line in plan:
        if not line.strip().startswith(("Buffers", "Planning:", "JIT:", "Functions:", "Options:", "Timing:")):
            print("   " + line)


def main(url: str, lines: int) -> None:
    rows = 5 * lines + lines // 2
    store = SqlStore(url, create=False)
    try:
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0008")
            conn.exec_driver_sql(
                "INSERT INTO culm_log (node_id, version, loop, created_time, line) "
                "SELECT CASE WHEN mod(i, 5) = 0 AND i <= %s THEN 'n1' ELSE 'o' || mod(i, 1000) END, 'v1', 1, i, "
                "'[INFO] polled ' || i FROM generate_series(1, %s) AS i", (5 * lines, rows))
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE culm_log")
            total = conn.exec_driver_sql("SELECT COUNT(*) FROM culm_log WHERE node_id = 'n1' AND version = 'v1'").scalar()
        old = f"SELECT line FROM culm_log WHERE node_id = ? AND version = ? ORDER BY id LIMIT {PAGE} OFFSET {total - PAGE}"
        print(f"{total:,} lines in run v1 of node n1 ({rows:,} rows in culm_log)")
        _show("0008, the read before 0009 (ascending from the offset)", _explain(store, old))
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0009")
            conn.exec_driver_sql("ANALYZE culm_log")
        _show("0009, the read before 0009 (ascending from the offset)", _explain(store, old))
        _show("0009, the tail read now (LOG_TAIL, backwards from the end)", _explain(store, f"{LOG_TAIL} LIMIT {PAGE} OFFSET 0"))
        _show("0009, a page's total as counted before 0010 (all the run's lines)",
              _explain(store, "SELECT COUNT(*) FROM culm_log WHERE node_id = ? AND version = ?"))
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0010")  # counts the stored lines once
        _show("0010, a page's total now (LOG_COUNT, one row)", _explain(store, LOG_COUNT))
        with store.engine.begin() as conn:
            command.upgrade(migrate.alembic_config(conn), "0011")  # the lines stored so far: unnumbered
    finally:
        store.dispose()
    import culm
    from culm import api
    from culm.core.queries import node_log_page

    rt = culm.Runtime(url, workers=0)
    try:
        began = time.perf_counter()
        page = node_log_page(rt.engine, "n1", "v1", None, PAGE)
        spent = time.perf_counter() - began
        assert page["offset"] == total - PAGE and len(page["lines"]) == PAGE, page["offset"]
        assert api.get_node_log_page(rt, "n1", "v1", None, PAGE).data["lines"] == page["lines"]
        print(f"get_node_log_page(last {PAGE:,} lines): {spent * 1000:.1f} ms")
        began = time.perf_counter()
        page = node_log_page(rt.engine, "n1", "v1", total * 9 // 10, PAGE)
        spent = time.perf_counter() - began
        assert page["lines"][0] == f"[INFO] polled {(total * 9 // 10 + 1) * 5}", page["lines"][0]
        print(f"get_node_log_page({PAGE:,} lines from offset {total * 9 // 10:,}), unnumbered: {spent * 1000:.1f} ms")
    finally:
        rt.close()
    _numbered(url, total)


def _numbered(url: str, total: int) -> None:
    """The same page once the run's lines carry their numbers, as lines written since 0011 do."""
    from culm.core.queries import node_log_page
    from culm.storage.sql.statements import LOG_AT

    store = SqlStore(url, create=False)
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE culm_log SET line_no = x.n FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) - 1 AS n "
                "FROM culm_log WHERE node_id = 'n1' AND version = 'v1') x WHERE culm_log.id = x.id")
            conn.exec_driver_sql("ANALYZE culm_log")
        at = total * 9 // 10
        _show("0011, a page from an offset (LOG_AT, lines numbered)",
              _explain(store, f"{LOG_AT.replace('line_no >= ?', f'line_no >= {at}')} LIMIT {PAGE}"))
        began = time.perf_counter()
        page = node_log_page(SimpleNamespace(store=store), "n1", "v1", at, PAGE)  # type: ignore[arg-type]
        spent = time.perf_counter() - began
        assert page["lines"][0] == f"[INFO] polled {(at + 1) * 5}", page["lines"][0]
        print(f"get_node_log_page({PAGE:,} lines from offset {at:,}), numbered (0011): {spent * 1000:.1f} ms")
    finally:
        store.dispose()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
