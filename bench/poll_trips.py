"""What one ``get_pipeline_states`` poll sends to the database: ``python -m bench.poll_trips``.

Counts, per poll and per backend, the statements the polling thread sends and the round trips
they take (load-independent, unlike timings). The engine runs in the same process (an embedded
runner: ``culm.Runtime(url)``) and its threads are not counted; only the poller's are.

Backends (``--backend``, several allowed; ``all`` by default): ``sqlite`` (a SQLite file; what a
second process polling the same file sends too: the read path is the same), ``postgresql``
(``CULM_BENCH_PG``), ``mysql`` (MariaDB through PyMySQL) and ``mysqlclient`` (the C driver), on
``CULM_BENCH_MARIADB``'s server (``root@127.0.0.1:3306``). On SQLite every statement the reader's
connection runs is counted (``BEGIN`` and ``ROLLBACK`` included) and "round trips" is the same
number (there is no server); on PostgreSQL a statement or commit sent outside a pipeline, or a
whole pipeline, is one round trip; on MySQL every query (a multi-statement query is one, of as
many statements as it holds). The pool's ping of a connection that sat unused for a second
(each counted poll of the moving shapes comes after such a wait) is counted apart (``pings``).

Shapes (each after one uncounted poll of every pipeline, and, on server databases, after the
change feed's cursor settled):

* ``idle_17``: 100 finished 17-node pipelines, polled in turn (200 polls);
* ``idle_1004``: one finished 1,004-node pipeline (20 polls);
* ``waiting_1004``: one RUNNING 1,004-node pipeline standing still, 100 branches waiting for a
  callback (101 live processes, 100 wait reasons; 20 polls);
* ``moving_1004``: the same pipeline, 10 branches called back between polls (uncounted; each
  counted poll catches up with ~40 changed nodes; 5 polls);
* ``moving_20``: 20 RUNNING pipelines of 4 branches waiting for a callback, one branch of each
  called back between rounds, each polled once a round (3 rounds, 60 polls);
* ``polled_batch``: 100 17-node pipelines submitted at once and polled as ``bench.polled`` polls
  them (each pending root in turn, every 10 ms, until all are FINISHED) while the engine runs them
  (the polls counted, however many it takes);
* ``stood_still_20``: one pipeline of 4 branches waiting for a callback, one of them FAILED by its
  callback, polled after it stood still for over 10 s (the wait reasons then look for stalled
  steps, and name the failed node's type; 20 polls).

``--trace`` prints the statements of the last poll of each shape.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from sqlalchemy.engine import make_url

from bench.scenarios import PG_ADMIN, Cluster, Skipped
from bench.statements import _patched
from bench.trees import normal_pipeline, waiting_pipeline, wide_pipeline

MARIADB = os.environ.get("CULM_BENCH_MARIADB", "mysql://root@127.0.0.1:3306/mysql")
BACKENDS = ("sqlite", "postgresql", "mysql", "mysqlclient")
SETTLE = 1.3  # the feed cursor's SETTLE (culm.core.state_tree) and a margin


class Counter:
    """Statements and round trips the counted thread sent, and the last poll's statements."""

    def __init__(self) -> None:
        self.thread: int | None = None  # the thread counted (None: nothing is counted)
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: list[str] = []

    def mine(self) -> bool:
        return self.thread == threading.get_ident()

    def statement(self, text: str, trip: bool) -> None:
        if not self.mine():
            return
        if text.strip() == ";":  # the pool's ping of a connection that sat idle (culm.storage.sql.base.ping_idle)
            self.counts["pings"] += 1
            return
        # A multi-statement query (MySQL) is one round trip of several statements.
        parts = [part for part in text.split(";\n") if part.strip()]
        self.counts["statements"] += len(parts)
        self.counts["round trips"] += trip
        self.log.extend(" ".join(part.split())[:160] for part in parts)

    def trip(self) -> None:
        if self.mine():
            self.counts["round trips"] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.thread = threading.get_ident()
        try:
            yield
        finally:
            self.thread = None


@contextlib.contextmanager
def _driver_counted(url: str, counter: Counter) -> Iterator[None]:
    """Count what the server driver of ``url`` sends (a measuring patch; SQLite: see _sqlite_traced)."""
    driver = make_url(url).get_driver_name()
    if driver == "psycopg":
        import psycopg

        execute, commit, rollback, pipeline = (psycopg.Cursor.execute, psycopg.Connection.commit,
                                               psycopg.Connection.rollback, psycopg.Connection.pipeline)

        def pg_execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
            counter.statement(str(query), self.connection._pipeline is None)
            return execute(self, query, params, **kw)

        def pg_end(real: Callable[[Any], None], word: str) -> Callable[[Any], None]:
            def end(self: Any) -> None:
                if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:  # else nothing is sent
                    counter.statement(word, self._pipeline is None)
                real(self)
            return end

        @contextlib.contextmanager
        def pg_pipeline(self: Any) -> Iterator[Any]:
            counter.trip()
            with pipeline(self) as p:
                yield p

        with _patched([(psycopg.Cursor, "execute", pg_execute), (psycopg.Connection, "commit", pg_end(commit, "COMMIT")),
                       (psycopg.Connection, "rollback", pg_end(rollback, "ROLLBACK")),
                       (psycopg.Connection, "pipeline", pg_pipeline)]):
            yield
        return
    if driver == "pymysql":
        from pymysql.connections import Connection as Conn
    elif driver == "mysqldb":
        from MySQLdb.connections import Connection as Conn
    else:
        raise SystemExit(f"no counting for the driver {driver!r} of {url}")
    query, commit, rollback = Conn.query, Conn.commit, Conn.rollback

    def my_query(self: Any, sql: Any, *args: Any) -> Any:
        counter.statement(sql if isinstance(sql, str) else bytes(sql).decode(errors="replace"), True)
        return query(self, sql, *args)

    def my_end(real: Callable[[Any], None], word: str) -> Callable[[Any], None]:
        def end(self: Any) -> None:
            counter.statement(word, True)  # both drivers send every one
            real(self)
        return end

    with _patched([(Conn, "query", my_query), (Conn, "commit", my_end(commit, "COMMIT")),
                   (Conn, "rollback", my_end(rollback, "ROLLBACK"))]):
        yield


def _sqlite_traced(rt: Any, counter: Counter) -> None:
    """Count the statements of this thread's SQLite read connection (made by a first poll)."""
    raw, _ = rt.store._thread_reader()
    raw.dbapi_connection.set_trace_callback(lambda text: counter.statement(text, True))


def _ok(result: Any, what: str) -> Any:
    if not result.result:
        raise SystemExit(f"{what} was refused: {result.message}")
    return result.data


def _settled(rt: Any) -> None:
    if not rt.wait_idle(600):
        raise SystemExit("the engine did not reach idle in 600 s")
    if rt.store.dialect != "sqlite":
        time.sleep(SETTLE)  # the feed cursor moves past the last changes once they settle


def _poll_all(rt: Any, ids: list[str]) -> dict[str, Any]:
    from culm import api

    return {root: _ok(api.get_pipeline_states(rt, root), f"get_pipeline_states({root})")[root] for root in ids}


def _call_back(rt: Any, ids: list[str], per_pipeline: int) -> None:
    """Call back the first ``per_pipeline`` waiting nodes (by id) of each pipeline."""
    from culm import api

    for root, entry in _poll_all(rt, ids).items():
        waiting = sorted((e for e in entry["children"].values() if (e["wait_reason"] or {}).get("kind") == "callback"),
                         key=lambda e: e["id"])
        for node in waiting[:per_pipeline]:
            _ok(api.callback(rt, node["id"], node["version"], {}), f"callback of {node['id']} ({root})")


def _stand_still(rt: Any, ids: list[str]) -> None:
    """Fail one waiting node of each pipeline (its callback says so), then let them stand still
    past the stalled check's 10 s (culm.core.waits.STALLED_AFTER)."""
    from culm import api

    for root, entry in _poll_all(rt, ids).items():
        node = min((e for e in entry["children"].values() if (e["wait_reason"] or {}).get("kind") == "callback"),
                   key=lambda e: e["id"])
        _ok(api.callback(rt, node["id"], node["version"], {"ok": False}), f"callback of {node['id']} ({root})")
    _settled(rt)
    time.sleep(10.5)


def _polled_batch(rt: Any, counter: Counter) -> dict[str, Any]:
    from culm import api

    trees = [normal_pipeline() for _ in range(100)]
    counter.counts.clear()
    pending = [t["id"] for t in trees]
    for tree in trees:
        _ok(api.run_pipeline(rt, tree), "run_pipeline")
    polls, deadline = 0, time.monotonic() + 600
    traced = False
    while pending and time.monotonic() < deadline:
        still = []
        for root in pending:
            with counter.counting():
                data = _ok(api.get_pipeline_states(rt, root), "get_pipeline_states")
            polls += 1
            if rt.store.dialect == "sqlite" and not traced:
                _sqlite_traced(rt, counter)  # from the second poll on
                traced = True
            if data[root]["state"] != "FINISHED":
                still.append(root)
        pending = still
        time.sleep(0.01)
    if pending:
        raise SystemExit(f"{len(pending)} pipelines not FINISHED in 600 s")
    if rt.store.dialect == "sqlite":
        raw, _ = rt.store._thread_reader()
        raw.dbapi_connection.set_trace_callback(None)
    counted = polls - (rt.store.dialect == "sqlite")
    return {"shape": "polled_batch", "polls": polls,
            **{f"{k} per poll".replace(" ", "_"): round(v / counted, 2) for k, v in sorted(counter.counts.items())},
            "last_poll": list(counter.log[-12:])}


def _shape(rt: Any, counter: Counter, name: str, trees: list[dict[str, Any]], rounds: int,
           moves: int = 0, prepare: Callable[[Any, list[str]], None] | None = None) -> dict[str, Any]:
    from culm import api

    for tree in trees:
        _ok(api.run_pipeline(rt, tree), "run_pipeline")
    _settled(rt)
    ids = [t["id"] for t in trees]
    if prepare is not None:
        prepare(rt, ids)
    _poll_all(rt, ids)  # the kept trees are read in full once, uncounted
    if rt.store.dialect == "sqlite":
        _sqlite_traced(rt, counter)
    polls = 0
    counter.counts.clear()
    for _ in range(rounds):
        if moves:
            _call_back(rt, ids, moves)
            _settled(rt)
        for root in ids:
            counter.log.clear()
            with counter.counting():
                _ok(api.get_pipeline_states(rt, root), "get_pipeline_states")
            polls += 1
    if rt.store.dialect == "sqlite":
        raw, _ = rt.store._thread_reader()
        raw.dbapi_connection.set_trace_callback(None)
    counts = dict(counter.counts)
    return {"shape": name, "polls": polls,
            **{f"{k} per poll".replace(" ", "_"): round(v / polls, 2) for k, v in sorted(counts.items())},
            "last_poll": list(counter.log)}


# (name, trees, rounds of polls, callbacks per pipeline before each round, what is done first)
SHAPES: list[tuple[str, Callable[[], list[dict[str, Any]]], int, int, Callable[[Any, list[str]], None] | None]] = [
    ("idle_17", lambda: [normal_pipeline() for _ in range(100)], 2, 0, None),
    ("idle_1004", lambda: [wide_pipeline(100, 10)], 20, 0, None),
    ("waiting_1004", lambda: [waiting_pipeline(100, 10)], 20, 0, None),
    ("moving_1004", lambda: [waiting_pipeline(100, 10)], 5, 10, None),
    ("moving_20", lambda: [waiting_pipeline(4, 4) for _ in range(20)], 3, 1, None),
    ("stood_still_20", lambda: [waiting_pipeline(4, 4)], 20, 0, _stand_still),
]


def _database(backend: str, stack: contextlib.ExitStack) -> str:
    if backend == "sqlite":
        workdir = tempfile.mkdtemp(prefix="culm-bench-trips-")
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        return f"sqlite:///{workdir}/bench.db"
    if backend == "postgresql":
        admin = PG_ADMIN
    else:
        url = make_url(MARIADB)
        admin = url.set(drivername="mysql+pymysql" if backend == "mysql" else "mysql+mysqldb").render_as_string(
            hide_password=False)
    cluster = stack.enter_context(Cluster(0, admin=admin))
    return cluster.db_url


def measure(backend: str, only: Collection[str] = ()) -> list[dict[str, Any]]:
    import culm

    out = []
    with contextlib.ExitStack() as stack:
        url = _database(backend, stack)
        counter = Counter()
        if backend != "sqlite":
            stack.enter_context(_driver_counted(url, counter))
        if not only or "polled_batch" in only:
            rt = culm.Runtime(url)
            try:
                out.append({"backend": backend, **_polled_batch(rt, counter)})
            finally:
                rt.close()
        for name, trees, rounds, moves, prepare in SHAPES:
            if only and name not in only:
                continue
            rt = culm.Runtime(url)
            try:
                out.append({"backend": backend, **_shape(rt, counter, name, trees(), rounds, moves, prepare)})
            finally:
                rt.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll_trips", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", action="append", choices=[*BACKENDS, "all"])
    parser.add_argument("--shape", action="append", choices=["polled_batch", *(name for name, *_ in SHAPES)], help="only these shapes")
    parser.add_argument("--trace", action="store_true", help="print the statements of each shape's last poll")
    args = parser.parse_args(argv)
    chosen = args.backend or ["all"]
    backends = list(BACKENDS) if "all" in chosen else list(dict.fromkeys(chosen))
    for backend in backends:
        try:
            lines = measure(backend, args.shape or ())
        except Skipped as exc:
            print(json.dumps({"backend": backend, "skipped": str(exc)}), flush=True)
            continue
        for line in lines:
            trace = line.pop("last_poll")
            print(json.dumps(line), flush=True)
            if args.trace:
                for text in trace:
                    print(f"    {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
