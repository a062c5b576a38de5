"""How long ``culm.api.list_pipelines`` takes over many stored pipelines.

Rows are written straight into the tables (as ``run_pipeline`` would leave them, trees of a few
KiB and a few child states per pipeline), then each listing is timed.

    python -m bench.list_pipelines [--db URL] [--pipelines 100000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid

import culm
from culm import api
from culm.storage import schema
from culm.storage.sql import SqlStore

STATES = ("FINISHED",) * 8 + ("RUNNING", "REVOKED")
CHILDREN = 5


def fill(url: str, count: int) -> None:
    """Write ``count`` finished-looking root pipelines with their child states."""
    store = SqlStore(url)
    tree = "{" + '"pad": "' + "x" * 4000 + '"}'
    start = time.time() - count
    with store.engine.begin() as conn:
        for i in range(0, count, 1000):
            pipes, sts = [], []
            for j in range(i, min(count, i + 1000)):
                pid = "p" + uuid.uuid4().hex
                at = start + j
                pipes.append({"id": pid, "tree": tree, "root_data": "{}", "options": "{}", "created_time": at,
                              "name": f"job_{j % 97}"})
                sts.append({"node_id": pid, "root_id": pid, "parent_id": "", "name": random.choice(STATES),
                            "version": "v", "created_time": at, "started_time": at, "archived_time": at + 1})
                sts.extend({"node_id": "n" + uuid.uuid4().hex, "root_id": pid, "parent_id": pid, "name": "FINISHED",
                            "version": "v", "created_time": at, "started_time": at, "archived_time": at}
                           for _ in range(CHILDREN))
            # The schema's tables: SQLAlchemy quotes, binds and fills the defaults for every dialect.
            conn.execute(schema.pipeline.insert(), pipes)
            conn.execute(schema.state.insert(), sts)
    with store.transaction() as unit:
        unit.recount_roots()  # the rows went in behind the writers' backs: count them as the migration does
    store.dispose()


def timed(rt: culm.Runtime, label: str, **kwargs: object) -> None:
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        found = api.list_pipelines(rt, **kwargs)
        runs.append(time.perf_counter() - t)
        assert found.result, found.message
    print(f"{label:<32} {statistics.median(runs) * 1000:8.1f} ms   total={found.data['total']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite:///bench-list.db")
    parser.add_argument("--pipelines", type=int, default=100_000)
    parser.add_argument("--no-fill", action="store_true")
    args = parser.parse_args()
    if not args.no_fill:
        t = time.perf_counter()
        fill(args.db, args.pipelines)
        print(f"filled {args.pipelines} pipelines in {time.perf_counter() - t:.1f} s")
    with culm.Runtime(args.db, workers=0) as rt:
        timed(rt, "newest 50")
        timed(rt, "page 100 (offset 5000)", offset=5000)
        timed(rt, "state=RUNNING", state="RUNNING")
        timed(rt, "state=REVOKED, FAILED", state=["REVOKED", "FAILED"])
        timed(rt, "name contains 'job_42'", name="job_42")
        timed(rt, "name + state", name="job_4", state="RUNNING")


if __name__ == "__main__":
    main()
