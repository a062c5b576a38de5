"""Does a database full of finished pipelines slow new work? ``python -m bench.stored [--pipelines N]``

A long-lived service keeps every finished run. This builds a SQLite database holding N finished
17-node pipelines (100 run through the engine, then their rows cloned with SQL under new ids, so
the indexes hold N realistic entries), and compares, interleaved, against an empty database:

* ``run_pipeline``: the time of one call (the submitting thread, engine idle);
* the state tree of a pipeline just run (``get_pipeline_states`` read fresh, nothing kept: the
  one indexed query a running pipeline's first poll makes);
* the batch (100 x 17 nodes) to FINISHED (``wait_idle``).

It also reports the database size per finished pipeline (after a checkpoint). One JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from typing import Any

from bench.trees import normal_pipeline

SEED = 100
# Columns holding ids that must stay unique (or consistent) in a clone; other columns are copied.
_ID_COLUMNS = {"id", "root_id", "node_id", "parent_id", "pipeline_id", "process_id", "current_node_id",
               "destination_id", "suspended_by", "schedule_id", "callback_id"}
_AUTOINCREMENT = {"culm_history": "id", "culm_log": "id", "culm_change": "seq"}


def _run_batch(rt: Any, n: int) -> tuple[float, list[float], str]:
    """Submit ``n`` 17-node pipelines, wait until idle; (batch seconds, run_pipeline seconds each,
    the id of the last pipeline)."""
    from culm import api

    trees = [normal_pipeline() for _ in range(n)]
    calls = []
    t0 = time.perf_counter()
    for tree in trees:
        c0 = time.perf_counter()
        api.run_pipeline(rt, tree)
        calls.append(time.perf_counter() - c0)
    rt.wait_idle(600)
    took = time.perf_counter() - t0
    states = [api.get_pipeline_states(rt, t["id"]).data[t["id"]]["state"] for t in trees]
    if set(states) != {"FINISHED"}:
        raise SystemExit(f"not every pipeline finished: {sorted(set(states))}")
    return took, calls, trees[-1]["id"]


def _clone(path: str, copies: int) -> None:
    """Add ``copies`` clones of every stored row, ids suffixed, in SQL (no engine work)."""
    db = sqlite3.connect(path, isolation_level=None)
    # Filling only: a big page cache (the indexes take random inserts), no sync (a crash here only
    # loses a benchmark database).
    db.execute("PRAGMA cache_size=-2000000")
    db.execute("PRAGMA synchronous=OFF")
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'culm_%'")
              if r[0] != "culm_alembic_version"]
    for k in range(1, copies + 1):
        db.execute("BEGIN")  # one transaction per copy: the WAL stays small
        for table in tables:
            cols = [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]
            cols = [c for c in cols if c != _AUTOINCREMENT.get(table)]
            values = [f"CASE WHEN \"{c}\" = '' OR \"{c}\" IS NULL THEN \"{c}\" ELSE \"{c}\" || 'c{k}' END"
                      if c in _ID_COLUMNS else f'"{c}"' for c in cols]
            names = ", ".join(f'"{c}"' for c in cols)
            db.execute(f'INSERT INTO "{table}" ({names}) SELECT {", ".join(values)} FROM "{table}" '
                       f"WHERE {_seed_filter(cols)}")
        db.execute("COMMIT")
    # Every index takes the clones' rows one by one, as it would from the engine: dropping and
    # rebuilding them would be far faster, but leaves their pages packed full, so the first
    # inserts afterwards split pages a grown database would not.
    db.close()


def _seed_filter(cols: list[str]) -> str:
    # Only the seed's rows are copied each time: culm's ids have 33 characters at most, clones more.
    for key in ("id", "node_id", "pipeline_id", "root_id"):
        if key in cols:
            return f'length("{key}") <= 33'
    return "1"


def _fresh_tree(rt: Any, root_id: str) -> float:
    from culm import api
    from culm.core.state_tree import StateTrees

    rt.engine.state_trees = StateTrees()  # nothing kept: the read the first poll of a pipeline makes
    t0 = time.perf_counter()
    api.get_pipeline_states(rt, root_id)
    return time.perf_counter() - t0


def measure(path: str, rounds: int) -> dict[str, float]:
    import culm

    out: dict[str, list[float]] = {"batch_s": [], "run_pipeline_ms": [], "tree_read_ms": []}
    rt = culm.Runtime(f"sqlite:///{path}")
    try:
        for _ in range(rounds):
            took, calls, last = _run_batch(rt, 100)
            out["batch_s"].append(took)
            out["run_pipeline_ms"].append(statistics.median(calls) * 1000)
            out["tree_read_ms"].append(statistics.median(_fresh_tree(rt, last) for _ in range(50)) * 1000)
    finally:
        rt.close()
    return {k: round(statistics.median(v), 4) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stored", description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=100_000, help="finished pipelines stored (default 100000)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import culm

    work = tempfile.mkdtemp(prefix="culm-bench-stored-")
    try:
        full, empty = os.path.join(work, "full.db"), os.path.join(work, "empty.db")
        rt = culm.Runtime(f"sqlite:///{full}")
        _run_batch(rt, SEED)
        rt.close()
        t0 = time.perf_counter()
        _clone(full, max(0, args.pipelines // SEED - 1))
        db = sqlite3.connect(full)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = db.execute("SELECT count(*) FROM culm_pipeline").fetchone()[0]
        db.close()
        size = os.path.getsize(full)
        result: dict[str, Any] = {"stored_pipelines": stored, "fill_s": round(time.perf_counter() - t0, 1),
                                  "bytes_per_finished_pipeline": round(size / stored)}
        culm.Runtime(f"sqlite:///{empty}").close()
        for side, path in (("empty", empty), ("full", full), ("empty", empty), ("full", full)):
            got = measure(path, args.rounds)
            for k, v in got.items():
                result.setdefault(f"{side}_{k}", []).append(v)
        for k in [k for k in result if isinstance(result[k], list)]:
            result[k] = round(statistics.median(result[k]), 4)
        for k in ("batch_s", "run_pipeline_ms", "tree_read_ms"):
            result[f"full_over_empty_{k}"] = round(result[f"full_{k}"] / result[f"empty_{k}"], 3)
        print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
