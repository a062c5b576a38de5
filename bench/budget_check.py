"""What a budget check costs on a pipeline holding MEGABYTES MB (culm.storage.budget).

    python -m bench.budget_check URL [MEGABYTES]

URL names an empty database of its own (SQLite file, PostgreSQL or MariaDB): it is migrated to head
and one root pipeline is given MEGABYTES (default 120) histories of 1 MB each. Printed: the count as
culm made it before revision 0010 (every stored value of the pipeline summed; PostgreSQL: its plan
with the pages read, a figure that does not depend on the machine's load) and the check now
(``SqlUnit.stored_bytes``: the root's counter rows), with their wall times (load-dependent) and
results.
"""

from __future__ import annotations

import sys
import time

from culm.core.records import HistoryRecord
from culm.storage import migrate
from culm.storage.sql import SqlStore

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


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 120)
