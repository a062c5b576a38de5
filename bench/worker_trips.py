"""Round trips and transactions a ``culm worker``'s processes send per pipeline of the distributed
batch: ``python -m bench.worker_trips [--backend postgresql|mariadb] [--batches 2] [--pipelines 100]``.

Starts the cluster ``bench.cpu distributed`` starts (fresh database, private Redis prefix, 2
``culm worker`` processes with 1 pool process each), with a tracer loaded into every worker
process (a ``sitecustomize`` on ``PYTHONPATH``) that counts, per thread role (``engine``: the
pool processes' engine threads, where node steps go; ``other``: the heartbeat, the relay, the
Celery task's reads), the round trips at the driver: psycopg's statements sent outside a pipeline,
its pipelines and commits; MySQLdb's and PyMySQL's queries and commits (a multi-statement query
is one). Transactions are the engine threads' commits; ``--shapes`` prints the most frequent
ones, a round trip's statements joined by ``+``, round trips by `` | ``. The counts do not depend on the machine's
load (how batches form does, a little: each run differs by a few per cent).

The submitter (this process: ``run_pipeline`` and the root-state polls) is not counted; see
``bench.statements`` for ``run_pipeline``'s statements and ``bench.poll_trips`` for a poll's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# Loaded by every worker process at start (and inherited by its forked pool processes). Counts
# live in the process; each count flushes them to <dir>/<pid>.json at most every 0.2 s.
TRACER = r"""
import json, os, threading, time

_dir = os.environ.get("CULM_TRIPS_DIR")
_counts = {}
_last = [0.0]
_lock = threading.Lock()


def _role():
    return "engine" if threading.current_thread().name == "culm-engine" else "other"


def _flush(force=False):
    now = time.monotonic()
    if not force and now - _last[0] < 0.2:
        return
    _last[0] = now
    tmp = os.path.join(_dir, f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(_counts, f)
    os.replace(tmp, os.path.join(_dir, f"{os.getpid()}.json"))


_shapes = os.environ.get("CULM_TRIPS_SHAPES") == "1"
_txn = []  # the engine thread's round trips since its last commit: each a list of statement heads


def _head(sql):
    words = " ".join(str(sql).split()).split(" ")
    for i, word in enumerate(words):
        if word.upper() in ("FROM", "INTO", "UPDATE", "TABLE") and i + 1 < len(words):
            return (words[0] + " " + words[i + 1])[:40]
    return " ".join(words[:2])[:40]


def _note(sql, new_trip):
    if _shapes and _role() == "engine":
        if new_trip or not _txn:
            _txn.append([])
        _txn[-1].append(_head(sql))


def _end_transaction():
    if _shapes and _role() == "engine":
        shape = " | ".join("+".join(trip) for trip in _txn)
        _txn.clear()
        with _lock:
            for key in ("shape " + shape, f"trips {len(shape.split(' | '))}"):
                _counts[key] = _counts.get(key, 0) + 1


def _count(what):
    key = _role() + " " + what
    with _lock:
        _counts[key] = _counts.get(key, 0) + 1
        _flush()


def _in_pipeline(conn):
    return getattr(conn, "_pipeline", None) is not None


def _psycopg():
    import psycopg
    from contextlib import contextmanager

    execute, pipeline, commit = psycopg.Cursor.execute, psycopg.Connection.pipeline, psycopg.Connection.commit

    def counted_execute(self, query, params=None, **kw):
        alone = not _in_pipeline(self.connection)
        if alone:
            _count("trips")
        _note(query, alone)
        result = execute(self, query, params, **kw)
        if isinstance(query, str) and query.strip().upper() == "COMMIT":  # a pipeline's own COMMIT (PostgresUnit)
            _count("commits")
            _end_transaction()
        return result

    @contextmanager
    def counted_pipeline(self):
        outer = not _in_pipeline(self)
        if outer:
            _count("trips")
            _note("(pipeline)", True)
        with pipeline(self) as p:
            yield p

    def counted_commit(self):
        if self.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return commit(self)  # nothing open: psycopg sends nothing
        if not _in_pipeline(self):
            _count("trips")
            _note("COMMIT", True)
        else:
            _note("COMMIT", False)
        _count("commits")
        _end_transaction()
        return commit(self)

    psycopg.Cursor.execute = counted_execute
    psycopg.Connection.pipeline = counted_pipeline
    psycopg.Connection.commit = counted_commit


def _commits(text):
    # MySQL units end a transaction with a COMMIT inside their last multi-statement query
    return any(p.strip().upper() == "COMMIT" for p in text.split(";"))


def _mysqldb():
    import MySQLdb.connections
    import MySQLdb.cursors

    query, commit = MySQLdb.cursors.BaseCursor._query, MySQLdb.connections.Connection.commit

    def counted_query(self, q):
        _count("trips")
        text = q.decode(errors="replace") if isinstance(q, bytes) else str(q)
        for i, part in enumerate(p for p in text.split(";") if p.strip()):
            _note(part, i == 0)  # a multi-statement query is one round trip
        if _commits(text):
            _count("commits")
            _end_transaction()
        return query(self, q)

    def counted_commit(self):
        _count("trips")
        _note("COMMIT", True)
        _count("commits")
        _end_transaction()
        return commit(self)

    MySQLdb.cursors.BaseCursor._query = counted_query
    MySQLdb.connections.Connection.commit = counted_commit


def _pymysql():
    from pymysql.connections import Connection

    query, commit = Connection.query, Connection.commit

    def counted_query(self, sql, unbuffered=False):
        _count("trips")
        text = sql.decode(errors="replace") if isinstance(sql, bytes) else str(sql)
        for i, part in enumerate(p for p in text.split(";") if p.strip()):
            _note(part, i == 0)
        if _commits(text):
            _count("commits")
            _end_transaction()
        return query(self, sql, unbuffered)

    def counted_commit(self):
        _count("trips")  # sent as a command of its own, not through query()
        _count("commits")
        _note("COMMIT", True)
        _end_transaction()
        return commit(self)

    Connection.query = counted_query
    Connection.commit = counted_commit


if _dir:
    for _patch in (_psycopg, _mysqldb, _pymysql):
        try:
            _patch()
        except ImportError:
            pass
"""


def _read(trace_dir: Path) -> dict[str, int]:
    total: dict[str, int] = {}
    for path in trace_dir.glob("*.json"):
        try:
            counts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced: read at the next look
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


def run(backend: str, pipelines: int, batches: int, workers: int) -> list[dict[str, Any]]:
    trace_dir = Path(tempfile.mkdtemp(prefix="culm-worker-trips-"))
    (trace_dir / "sitecustomize.py").write_text(TRACER)
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "CULM_TRIPS_DIR")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(trace_dir), saved["PYTHONPATH"] or "") if p)
    os.environ["CULM_TRIPS_DIR"] = str(trace_dir)
    try:
        return _batches(backend, pipelines, batches, workers, trace_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(trace_dir, ignore_errors=True)


def _batches(
    backend: str, pipelines: int, batches: int, workers: int, trace_dir: Path
) -> list[dict[str, Any]]:
    import culm
    from bench.polled import MARIADB_ADMIN
    from bench.scenarios import PG_ADMIN, REDIS, Cluster, submit_and_wait
    from bench.trees import normal_pipeline
    from culm.storage.sql import normalise_url

    admin = normalise_url(MARIADB_ADMIN) if backend == "mariadb" else PG_ADMIN
    out = []
    with Cluster(workers, admin=admin) as cluster:
        rt = culm.Runtime(cluster.db_url, broker=REDIS, prefix=cluster.prefix)
        try:
            time.sleep(2.0)  # the pool processes set themselves up (registry, first beats)
            for batch in range(batches):
                trees = [normal_pipeline() for _ in range(pipelines)]
                before = _read(trace_dir)
                elapsed = submit_and_wait(rt, trees, timeout=300)
                time.sleep(1.5)  # the last counts reach their files (flushed by the next beat)
                after = _read(trace_dir)
                used = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                line = {
                    "backend": backend,
                    "batch": batch + 1,
                    "pipelines": pipelines,
                    "wall_s": round(elapsed, 3),
                    "engine_round_trips": used.get("engine trips", 0),
                    "engine_transactions": used.get("engine commits", 0),
                    "other_round_trips": used.get("other trips", 0),
                }
                line["engine_round_trips_per_pipeline"] = round(line["engine_round_trips"] / pipelines, 2)
                line["engine_round_trips_per_transaction"] = round(
                    line["engine_round_trips"] / max(1, line["engine_transactions"]), 2
                )
                out.append(line)
                print(json.dumps(line), flush=True)
                by_trips = {int(k[6:]): v for k, v in used.items() if k.startswith("trips ") and v}
                if by_trips:
                    print(
                        "  transactions by round trips: "
                        + ", ".join(f"{n}: {by_trips[n]}" for n in sorted(by_trips))
                    )
                shapes = sorted(
                    ((v, k[6:]) for k, v in used.items() if k.startswith("shape ") and v), reverse=True
                )
                for count, shape in shapes[:12]:
                    print(f"  {count:4d} x {shape}", flush=True)
        finally:
            rt.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_trips", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backend", choices=["postgresql", "mariadb"], default="postgresql")
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="also print the engine threads' most frequent transactions, round trip by round trip",
    )
    args = parser.parse_args(argv)
    if args.shapes:
        os.environ["CULM_TRIPS_SHAPES"] = "1"
    run(args.backend, args.pipelines, args.batches, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
