"""What a budget check costs on a pipeline holding MEGABYTES MB (culm.storage.budget).

    python -m bench.budget_check URL [MEGABYTES]
    python -m bench.budget_check URL --counters ROWS [--writes N]

URL names an empty database of its own (SQLite file, PostgreSQL or MariaDB): it is migrated to head
and one root pipeline is given MEGABYTES (default 120) histories of 1 MB each. Printed: the count as
culm made it before revision 0010 (every stored value of the pipeline summed; PostgreSQL: its plan
with the pages read, a figure that does not depend on the machine's load) and the check now
(``SqlUnit.stored_bytes``: the root's counter rows), with their wall times (load-dependent) and
results.

``--counters ROWS``: the cost of $CULM_MAX_STORED_BYTES (culm.model.limits.MAX_STORED_BYTES) with
ROWS counter rows stored (``culm_root_bytes``, 16 a pipeline on a server): N (default 200) small
callbacks checked whatever their size, each in its transaction, far from the bound; printed: how
many of them summed every counter row, each way (a sum at every check, as before session 18, and
``budget.StoreTotal``: again only near the bound or once a second), the wall time of the writes
(load-dependent) and, on PostgreSQL, the pages one sum reads.
"""

from __future__ import annotations

import argparse
import time

from culm.core.records import HistoryRecord
from culm.model import limits
from culm.storage import budget, migrate
from culm.storage.sql import SqlStore
from culm.storage.sql.base import SqlUnit
from culm.storage.sql.statements import ALL_ROOT_BYTES

ROOT, NODE = "r" * 32, "n" * 32

# SqlUnit.stored_bytes before 0010 (without its own row's part): every payload of the root summed.
_BEFORE = (
    "SELECT r.root_id,"
    " (SELECT COALESCE(SUM({n}(e.inputs) + {n}(e.outputs)), 0) FROM culm_node m"
    "  JOIN culm_execution_data e ON e.node_id = m.id WHERE m.root_id = r.root_id),"
    " (SELECT COALESCE(SUM({n}(h.inputs) + {n}(h.outputs)), 0) FROM culm_node m"
    "  JOIN culm_history h ON h.node_id = m.id WHERE m.root_id = r.root_id),"
    " (SELECT COALESCE(SUM({n}(d.inputs)), 0) FROM culm_node m"
    "  JOIN culm_node_data d ON d.node_id = m.id WHERE m.root_id = r.root_id)"
    " FROM culm_node r WHERE r.id = '{node}'"
)


def _fill(store: SqlStore, megabytes: int) -> None:
    with store.transaction() as unit:
        unit.add_pipeline(ROOT, {"id": ROOT}, {}, {}, 0.0)
        unit.add_nodes([(ROOT, ROOT, ROOT, "Pipeline"), (NODE, ROOT, ROOT, "ServiceActivity")])
    for i in range(megabytes):
        with store.transaction() as unit:  # 1 MB each: under the budget's check, as the engine writes
            unit.add_history(
                HistoryRecord(0, NODE, 0.0, 1.0, 1, False, i, "v", {"i": f"{i}" + "x" * 999_980}, {})
            )


def main(url: str, megabytes: int) -> None:
    store = SqlStore(url, create=False)
    try:
        migrate.upgrade(store)
        _fill(store, megabytes)
        postgres = store.engine.dialect.name == "postgresql"
        before = _BEFORE.format(n="OCTET_LENGTH" if postgres else store.traits.unit.octet_length, node=NODE)
        with store.engine.connect() as conn:
            began = time.perf_counter()
            row = conn.exec_driver_sql(before).fetchone()
            spent = time.perf_counter() - began
            print(
                f"before 0010: {int(row[1]) + int(row[2]) + int(row[3]):,} bytes counted in {spent * 1000:.1f} ms"
            )
            if postgres:
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + before).fetchall()
                print("   " + next(str(r[0]) for r in plan if "Buffers" in str(r[0])).strip())
        with store.transaction() as unit:
            began = time.perf_counter()
            root, held, _own = unit.stored_bytes(NODE, replacing="culm_execution_data")
            spent = time.perf_counter() - began
        print(f"0010: {held:,} bytes held by {root} read in {spent * 1000:.1f} ms (its counter rows)")
        if postgres:
            with store.engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN (ANALYZE, BUFFERS) SELECT SUM(bytes) FROM culm_root_bytes WHERE root_id = %s",
                    (ROOT,),
                ).fetchall()
            print("   " + next(str(r[0]) for r in plan if "Buffers" in str(r[0])).strip())
    finally:
        store.dispose()


def counters(url: str, rows: int, writes: int) -> None:
    store = SqlStore(url, create=False)
    limits.MAX_STORED_BYTES = 10**15  # set, and far away
    sums = [0]
    summed = SqlUnit.all_stored_bytes

    def counted(unit: SqlUnit) -> int:
        sums[0] += 1
        return summed(unit)

    SqlUnit.all_stored_bytes = counted  # type: ignore[method-assign]
    try:
        migrate.upgrade(store)
        with store.transaction() as unit:
            unit.add_pipeline(ROOT, {"id": ROOT}, {}, {}, 0.0)
            unit.add_nodes([(ROOT, ROOT, ROOT, "Pipeline"), (NODE, ROOT, ROOT, "ServiceActivity")])
        with store.engine.begin() as conn:
            for start in range(0, rows, 10_000):
                conn.exec_driver_sql(
                    "INSERT INTO culm_root_bytes (root_id, shard, bytes) VALUES "
                    + ", ".join(f"('{i // 16:032d}', {i % 16}, 1000)" for i in range(start, min(rows, start + 10_000)))
                )
        for way, totals in (("a sum at every check (before)", None), ("StoreTotal (now)", budget.StoreTotal())):
            store.totals = totals  # type: ignore[assignment]
            sums[0] = 0
            began = time.perf_counter()
            for i in range(writes):
                with store.transaction() as unit:
                    unit.insert_callback(f"{way[0]}{i:031d}", NODE, "v", {"n": i}, always=True)
            spent = time.perf_counter() - began
            print(f"{rows:,} counter rows, {writes} checked callbacks, {way}: {sums[0]} sums of every counter row,"
                  f" {spent:.2f} s wall")
        if store.engine.dialect.name == "postgresql":
            with store.engine.connect() as conn:
                plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + ALL_ROOT_BYTES).fetchall()
            print("   one sum: " + next(str(r[0]) for r in plan if "Buffers" in str(r[0])).strip())
    finally:
        SqlUnit.all_stored_bytes = summed  # type: ignore[method-assign]
        store.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.budget_check")
    parser.add_argument("url")
    parser.add_argument("megabytes", nargs="?", type=int, default=120)
    parser.add_argument("--counters", type=int, default=None, metavar="ROWS")
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    if args.counters is None:
        main(args.url, args.megabytes)
    else:
        counters(args.url, args.counters, args.writes)
