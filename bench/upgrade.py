"""How long `culm db upgrade` takes on a big database: ``python -m bench.upgrade URL [FROM]``

URL names a database at the head revision (e.g. the 100,000-pipeline database ``python -m
bench.stored --fill-only`` keeps: ``sqlite:////tmp/culm-stored/stored-100000.db`` or the server
database ``culm_stored_100000``). It is taken down to FROM (default 0009: 0010 and 0011 dropped,
their counts and numbers with them), then up one revision at a time to the head, each step timed
as `culm db upgrade` runs it (one transaction per step where the database has transactional DDL);
the rows of the biggest tables are printed with it. The database ends at the head, as it began.
"""

from __future__ import annotations

import json
import sys
import time

from alembic import command
from alembic.script import ScriptDirectory

from culm.storage import migrate
from culm.storage.sql import SqlStore

TABLES = ("culm_log", "culm_history", "culm_execution_data", "culm_node", "culm_context_value")


def _step(store: SqlStore, go: object, to: str) -> float:
    began = time.perf_counter()
    with store.engine.begin() as conn:
        go(migrate.alembic_config(conn), to)  # type: ignore[operator]
    return time.perf_counter() - began


def main(url: str, start: str) -> dict:
    store = SqlStore(url, create=False)
    try:
        with store.engine.connect() as conn:
            rows = {t: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar() for t in TABLES}
        out: dict = {"url": url, "rows": rows, "down_to": start,
                     "down_s": round(_step(store, command.downgrade, start), 1)}
        with store.engine.connect() as conn:
            script = ScriptDirectory.from_config(migrate.alembic_config(conn))
        ups = [r.revision for r in reversed(list(script.walk_revisions(start, "heads"))) if r.revision != start]
        for rev in ups:
            out[f"up_to_{rev}_s"] = round(_step(store, command.upgrade, rev), 1)
        return out
    finally:
        store.dispose()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "0009")), flush=True)
