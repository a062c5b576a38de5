"""SQL statements a 17-node pipeline costs on PostgreSQL: ``python -m bench.statements [--trace]``.

(On MySQL/MariaDB with ``CULM_BENCH_PG=mysql+pymysql://root@127.0.0.1:3306/test``.)
Submits ``normal_pipeline()`` runs to a fresh PostgreSQL database and runs their tasks in this
process, one at a time, through the engine loop a ``culm worker`` runs (``ThreadDispatcher``:
batch transaction, user code on its thread), without Celery: the follow-up tasks a commit makes
are queued here instead of published, and each is handed to the loop once the one before it is
done. It counts what psycopg sends: statements
(each multi-row or combined write is one), ``BEGIN``/``COMMIT``/``ROLLBACK`` excluded, transactions
and rollbacks (those the driver sends to the server, the pool's on check-in included).
Unlike timings, the counts do not depend on what else the machine is doing. ``--trace`` prints
every statement of the last pipeline, grouped by task. ``--batched --pipelines 100`` submits the
runs together and lets the batching loop of a worker process run them (transactions over many
tasks; the counts then vary a little with how batches form).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import make_url

from bench.scenarios import PG_ADMIN, Cluster
from bench.trees import normal_pipeline

_ENDS = ("COMMIT", "ROLLBACK")  # counted apart from the statements


class _Queue:
    """A Dispatcher that keeps committed tasks for this process instead of publishing them."""

    def __init__(self) -> None:
        self.tasks: collections.deque[Any] = collections.deque()

    def submit(self, tasks: Sequence[Any]) -> None:
        self.tasks.extend(t for t in tasks if t is not None)

    def submitting(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # nothing to batch around: tasks wait here

    def close(self) -> None:
        pass


@contextmanager
def _counting(log: list[str], trips: collections.Counter[str] | None = None,
              left_out: tuple[str, ...] = ()) -> Iterator[None]:
    """Record every statement and commit the database driver sends while the block runs (a
    measuring patch): psycopg on PostgreSQL, PyMySQL on MySQL/MariaDB (``CULM_BENCH_PG`` a
    ``mysql+pymysql://`` URL). ``trips["round trips"]`` counts the round trips: on PostgreSQL a
    statement or commit sent outside a pipeline, or a whole pipeline; on MySQL every query.
    Statements of the threads named in ``left_out`` are not recorded (PostgreSQL)."""
    trips = trips if trips is not None else collections.Counter()
    if make_url(PG_ADMIN).get_backend_name() in ("mysql", "mariadb"):
        with _counting_pymysql(log, trips):
            yield
        return
    import psycopg

    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany
    commit, rollback = psycopg.Connection.commit, psycopg.Connection.rollback
    pipeline = psycopg.Connection.pipeline

    def counted_execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        if left_out and threading.current_thread().name in left_out:
            return execute(self, query, params, **kw)
        log.append(str(query))
        trips["round trips"] += self.connection._pipeline is None
        return execute(self, query, params, **kw)

    @contextmanager
    def counted_pipeline(self: Any) -> Iterator[Any]:
        trips["round trips"] += 1
        with pipeline(self) as p:
            yield p

    def counted_executemany(self: Any, query: Any, params: Any, **kw: Any) -> Any:
        log.append(f"(many) {query}")
        return executemany(self, query, params, **kw)

    def counted_commit(self: Any) -> None:
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            log.append("COMMIT")
            trips["round trips"] += self._pipeline is None
        commit(self)

    def counted_rollback(self: Any) -> None:
        if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:  # else psycopg sends none
            log.append("ROLLBACK")
        rollback(self)

    with _patched([(psycopg.Cursor, "execute", counted_execute), (psycopg.Cursor, "executemany", counted_executemany),
                   (psycopg.Connection, "commit", counted_commit), (psycopg.Connection, "rollback", counted_rollback),
                   (psycopg.Connection, "pipeline", counted_pipeline)]):
        yield


@contextmanager
def _counting_pymysql(log: list[str], trips: collections.Counter[str]) -> Iterator[None]:
    """PyMySQL: every query sent is one round trip (culm's deferred writes travel as one
    multi-statement query, an ``executemany`` of an INSERT as multi-row INSERTs); a commit is
    counted as a transaction, whether sent alone or at the end of such a query.
    ``trips["server statements"]``: the statements of those queries, each of which the server
    parses and runs (COMMITs not counted)."""
    from pymysql.connections import Connection

    query, commit, rollback = Connection.query, Connection.commit, Connection.rollback

    def counted_query(self: Any, sql: Any, unbuffered: bool = False) -> Any:
        text = sql if isinstance(sql, str) else sql.decode(errors="replace")
        trips["round trips"] += 1
        # What the server parses and runs: each statement of a multi-statement query, COMMIT aside.
        trips["server statements"] += text.count(";\n") + 1 - text.endswith("COMMIT")
        if text == "COMMIT":
            log.append("COMMIT")
        elif text.endswith(";\nCOMMIT"):
            log.extend([text[: -len(";\nCOMMIT")], "COMMIT"])
        else:
            log.append(text)
        return query(self, sql, unbuffered)

    def counted_commit(self: Any) -> None:
        log.append("COMMIT")
        trips["round trips"] += 1
        commit(self)

    def counted_rollback(self: Any) -> None:
        log.append("ROLLBACK")  # PyMySQL sends every one
        trips["round trips"] += 1
        rollback(self)

    with _patched([(Connection, "query", counted_query), (Connection, "commit", counted_commit),
                   (Connection, "rollback", counted_rollback)]):
        yield


@contextmanager
def _patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    for cls, name, fn in patches:
        setattr(cls, name, fn)
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def count(pipelines: int, trace: bool) -> dict[str, Any]:
    import culm
    from culm import api
    from culm.core.engine import Engine
    from culm.dispatch.threads import ThreadDispatcher

    with Cluster(0) as cluster:
        queue = _Queue()
        rt = culm.Runtime(cluster.db_url, workers=0)
        # The engine loop a worker runs (batch transaction, user-code thread), handed one task at a
        # time: the follow-ups its commits make wait in ``queue`` instead of joining its next batch.
        loop = ThreadDispatcher(1, sole_runner=False, follow_ups=queue.submit)
        try:
            rt.engine.dispatcher = queue
            loop.start(Engine(rt.store, queue))

            def run(task: Any) -> None:
                loop.submit([task])
                if not loop.wait_idle(60):
                    raise RuntimeError(f"task {task.id} did not reach its next resting point in 60 s")

            log: list[str] = []
            api.run_pipeline(rt, normal_pipeline())  # warm: graph caches, pooled connections
            while queue.tasks:
                run(queue.tasks.popleft())
            per_pipeline: list[tuple[int, int, int]] = []
            # Not the timer threads: their once-a-second look (keep_statistics, sweeps) is no
            # pipeline's cost, and on a slow machine it lands inside one pipeline's count or another's.
            with _counting(log, left_out=("culm-timer",)):
                for _ in range(pipelines):
                    log.clear()
                    log.append("== run_pipeline")
                    assert api.run_pipeline(rt, normal_pipeline()).result
                    tasks = 0
                    while queue.tasks:
                        task = queue.tasks.popleft()
                        tasks += 1
                        log.append(f"== task {task.kind} at node {task.node_id}")
                        run(task)
                    statements = sum(1 for line in log if not line.startswith("==") and line not in _ENDS)
                    per_pipeline.append((statements, log.count("COMMIT"), tasks, log.count("ROLLBACK")))
        finally:
            loop.close()
            rt.close()
    if trace:
        for line in log:
            print(line if line.startswith("==") else "    " + " ".join(line.split())[:160])
    statements, commits, tasks, rollbacks = per_pipeline[-1]
    return {"shape": "normal_pipeline() (17 nodes)", "statements_per_pipeline": statements,
            "transactions_per_pipeline": commits, "tasks_per_pipeline": tasks, "rollbacks_per_pipeline": rollbacks,
            "same_every_run": len(set(per_pipeline)) == 1}


def count_batched(pipelines: int) -> dict[str, Any]:
    """``pipelines`` runs submitted together and run by the batching engine loop that each
    ``culm worker`` process runs (here in this process: an embedded runtime on PostgreSQL).
    Batches form as they do in a worker, so the counts vary a little from run to run."""
    import culm
    from bench.scenarios import submit_and_wait

    postgres = make_url(PG_ADMIN).get_backend_name() == "postgresql"
    with Cluster(0) as cluster:
        rt = culm.Runtime(cluster.db_url)
        try:
            submit_and_wait(rt, [normal_pipeline() for _ in range(10)])  # warm
            log: list[str] = []
            trips: collections.Counter[str] = collections.Counter()
            with _counting(log, trips), (_counting_prepared(trips) if postgres else contextlib.nullcontext()):
                submit_and_wait(rt, [normal_pipeline() for _ in range(pipelines)])
        finally:
            rt.close()  # its sessions end: the server has their table counts
        scans = _table_scans(cluster.db_url) if postgres else {}
    statements = sum(1 for line in log if line not in _ENDS)
    out = {"shape": f"{pipelines} x normal_pipeline() submitted together, batched", "statements": statements,
           "statements_per_pipeline": round(statements / pipelines, 1), "transactions": log.count("COMMIT"),
           "rollbacks": log.count("ROLLBACK"), "round_trips": trips["round trips"],
           "round_trips_per_pipeline": round(trips["round trips"] / pipelines, 1)}
    if "server statements" in trips:
        out["server_statements_per_pipeline"] = round(trips["server statements"] / pipelines, 1)
    if postgres:
        out["unprepared"] = trips["unprepared"]  # sent as text, parsed and planned by the server
        out.update(scans)
    return out


@contextmanager
def _counting_prepared(counts: collections.Counter[str]) -> Iterator[None]:
    """Count the statements psycopg sends without a prepared statement (``counts["unprepared"]``):
    it prepares a text on its fifth run on a connection (a measuring patch of its internals)."""
    from psycopg import _preparing

    get = _preparing.PrepareManager.get

    def counted_get(self: Any, query: Any, prepare: Any = None) -> Any:
        got = get(self, query, prepare)
        counts["unprepared"] += got[0] is _preparing.Prepare.NO
        return got

    with _patched([(_preparing.PrepareManager, "get", counted_get)]):
        yield


def _table_scans(url: str) -> dict[str, Any]:
    """Sequential scans of culm's tables (and rows they read) and analyses, over the database's
    life (warm-up included): the server's own counts."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT relname, seq_scan, seq_tup_read, analyze_count FROM pg_stat_user_tables"
                                     " WHERE relname LIKE 'culm%' ORDER BY relname")).all()
    finally:
        engine.dispose()
    return {"seq_scans": {r[0]: [int(r[1]), int(r[2])] for r in rows if r[1]},
            "seq_rows": sum(int(r[2]) for r in rows), "analyses": sum(int(r[3]) for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.statements")
    parser.add_argument("--pipelines", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="print the statements of the last pipeline")
    parser.add_argument("--batched", action="store_true",
                        help="submit the pipelines together and run them in batches, as a culm worker does")
    args = parser.parse_args(argv)
    result = count_batched(args.pipelines) if args.batched else count(args.pipelines, args.trace)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
