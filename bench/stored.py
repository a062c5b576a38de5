"""Does a database full of finished pipelines slow new work? ``python -m bench.stored``

A long-lived service keeps every finished run. This fills a database with N finished 17-node
pipelines (default 100,000) and compares it with an empty database of the same kind:

* the batch (100 x 17 nodes) to FINISHED (``wait_idle``) and the median ``run_pipeline`` call
  while the engine runs it: ``--rounds`` batches per side, the sides interleaved ``--pairs`` times;
* with the engines idle, both databases open, in turn ``--pairs`` times, 100 calls each: the state
  tree of a running pipeline (``get_pipeline_states`` of a paused pipeline, read fresh with
  nothing kept: what every poll of a running pipeline reads), its whole history from the change
  feed (``runtime.changes(root, after=0)``: what ``culm watch`` reads first) and
  ``runtime.wait`` on a finished pipeline;

and ``list_pipelines`` as the console's first page asks it (the newest 50 with the counts per
state), and the database size per finished pipeline. ``--backend sqlite`` (the embedded default),
``postgresql``, ``mysql`` (MariaDB or MySQL), ``both`` (SQLite and PostgreSQL) or ``all``; one
JSON line per backend.

The fill (:func:`fill`) is fast and honest: :data:`SEED` pipelines run through the engine, then
every row of every table the engine wrote for them (pipelines, nodes, states, processes, execution
data, contexts, schedules, histories, logs, the change feed) is copied in bulk SQL, a few thousand
pipelines per statement, under fresh ids (``c`` + 32 hex digits of md5(seed id, copy number): as
random as the engine's uuids, so every index takes its rows at random places, as it would in a
year of real runs) and with every time moved back by one seed run's span per copy (the copies are
older than the seed and the feed's seq grows with time, as ``culm.storage.feed`` expects). The
JSON payloads (trees, process stacks, data) are copied as they are: their sizes are real, the ids
inside them still name the seed's nodes. The kept counts of root pipelines per state
(``culm_root_count``) are not copied: they are counted again once the copies are in; the stored
bytes per root and lines per run (revision 0010) are counted by the triggers as the copies go in. The filled
database is kept for repeats: a SQLite file under ``--keep`` (``/tmp/culm-stored``), a PostgreSQL
or MySQL database ``culm_stored_<N>`` (``$CULM_BENCH_DB_PREFIX`` instead of ``culm_stored``: two
people benchmarking on one server keep apart); ``--refill`` builds it again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import make_url

from bench.trees import normal_pipeline

SEED = 200  # pipelines run through the engine (at most); the rest are copies of them
COPIES_PER_STATEMENT = 20  # 4,000 pipelines per INSERT ... SELECT
PG_ADMIN = os.environ.get("CULM_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("CULM_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
DB_PREFIX = os.environ.get("CULM_BENCH_DB_PREFIX", "culm_stored")  # the server databases' names
# Columns holding node, process or pipeline ids: a copy gives them fresh ids (empty and NULL stay).
ID_COLUMNS = frozenset(
    {
        "id",
        "root_id",
        "node_id",
        "parent_id",
        "pipeline_id",
        "process_id",
        "current_node_id",
        "destination_id",
        "suspended_by",
        "schedule_id",
        "callback_id",
    }
)
# Columns holding times (epoch seconds): a copy moves them back.
TIME_COLUMNS = frozenset(
    {
        "created_time",
        "started_time",
        "archived_time",
        "time",
        "due",
        "claimed_until",
        "last_heartbeat",
        "locked_until",
        "relayed_at",
    }
)
# Keys the database hands out: a copy leaves them to it.
GENERATED = {"culm_history": "id", "culm_log": "id", "culm_change": "seq"}
# Not pipeline data (the worker registry, API tokens, the schema version), or kept counts of it
# (counted again after the copies, see fill): not copied.
# culm_root_bytes and culm_log_count are kept by the database's triggers (revision 0010): they count
# the copies as they go in (culm_node first, so each copied row finds its root).
SKIPPED = frozenset({"culm_worker", "culm_api_token", "culm_alembic_version", "culm_root_count", "culm_root_bytes",
                     "culm_log_count"})


def clone_id(value: str | None, copy: int) -> str | None:
    """The id of ``value`` in copy ``copy`` (SQLite's culm_clone_id; PostgreSQL computes the same
    in SQL)."""
    if not value:
        return value
    return "c" + hashlib.md5(f"{value}:{copy}".encode()).hexdigest()


# -- running pipelines ---------------------------------------------------------------------------


def _run_batch(rt: Any, n: int) -> tuple[float, list[float], str]:
    """Submit ``n`` 17-node pipelines, wait until idle; (batch seconds, run_pipeline seconds each,
    the last pipeline's id)."""
    from culm import api

    trees = [normal_pipeline() for _ in range(n)]
    calls = []
    t0 = time.perf_counter()
    for tree in trees:
        c0 = time.perf_counter()
        api.run_pipeline(rt, tree)
        calls.append(time.perf_counter() - c0)
    if not rt.wait_idle(600):
        raise SystemExit("the batch did not finish in 600 s")
    took = time.perf_counter() - t0
    states = {api.get_pipeline_states(rt, t["id"]).data[t["id"]]["state"] for t in trees}
    if states != {"FINISHED"}:
        raise SystemExit(f"not every pipeline finished: {sorted(states)}")
    return took, calls, trees[-1]["id"]


def _median_ms(call: Any, times: int) -> float:
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        call()
        took.append(time.perf_counter() - t0)
    return statistics.median(took) * 1000


class _Reader:
    """A runtime on one database with a pipeline paused while running and one finished, for
    timing the reads of a poll, a watcher and a waiter on them."""

    def __init__(self, url: str) -> None:
        import culm
        from culm import api

        self.rt = culm.Runtime(url)
        self.paused, finished = normal_pipeline(), normal_pipeline()
        api.run_pipeline(self.rt, finished)
        api.run_pipeline(self.rt, self.paused)
        api.pause_pipeline(self.rt, self.paused["id"])
        self.rt.wait_idle(60)
        self.finished = finished["id"]
        state = api.get_pipeline_states(self.rt, self.paused["id"]).data[self.paused["id"]]["state"]
        if state != "SUSPENDED":
            raise SystemExit(f"the paused pipeline is {state}, not SUSPENDED")

    def times(self, calls: int) -> dict[str, float]:
        from culm import api
        from culm.core.state_tree import StateTrees

        rt, root = self.rt, self.paused["id"]

        def tree() -> None:
            rt.engine.state_trees = StateTrees()  # nothing kept: the read a poll of it makes
            api.get_pipeline_states(rt, root)

        def history() -> None:  # a watcher's first read (`culm watch`, the console)
            if not list(rt.changes(root, 0, timeout=0)):
                raise SystemExit("the paused pipeline's history is missing from the change feed")

        def wait() -> None:
            if rt.wait(self.finished, 10) != "FINISHED":
                raise SystemExit(f"{self.finished} did not wait to FINISHED")

        def listing() -> None:  # the console's first page: the newest 50 and the counts per state
            if not api.list_pipelines(rt).data["items"]:
                raise SystemExit("list_pipelines listed nothing")

        return {
            "running_tree_ms": _median_ms(tree, calls),
            "feed_history_ms": _median_ms(history, calls),
            "wait_finished_ms": _median_ms(wait, calls),
            "list_pipelines_ms": _median_ms(listing, calls),
        }

    def close(self) -> None:
        from culm import api

        api.revoke_pipeline(self.rt, self.paused["id"])
        self.rt.wait_idle(60)
        self.rt.close()


def reads(empty: str, full: str, pairs: int, calls: int = 100) -> dict[str, float]:
    """The reads of one pipeline, timed on both databases in turn (``pairs`` times) with the
    engines idle: medians of each side's medians, as ``empty_*`` and ``full_*``."""
    readers = {"empty": _Reader(empty), "full": _Reader(full)}
    got: dict[str, list[float]] = {}
    try:
        for _ in range(pairs):
            for side, reader in readers.items():
                for k, v in reader.times(calls).items():
                    got.setdefault(f"{side}_{k}", []).append(v)
    finally:
        for reader in readers.values():
            reader.close()
    return {k: round(statistics.median(v), 4) for k, v in got.items()}


def measure(url: str, rounds: int) -> dict[str, float]:
    """Medians over ``rounds`` batches on ``url``: the batch and the median run_pipeline call."""
    import culm

    out: dict[str, list[float]] = {"batch_s": [], "run_pipeline_ms": []}
    rt = culm.Runtime(url)
    try:
        _run_batch(rt, 10)  # warm: imports, connections, statement caches
        for _ in range(rounds):
            took, calls, _last = _run_batch(rt, 100)
            out["batch_s"].append(took)
            out["run_pipeline_ms"].append(statistics.median(calls) * 1000)
    finally:
        rt.close()
    return {k: round(statistics.median(v), 4) for k, v in out.items()}


# -- the fill --------------------------------------------------------------------------------------


class _Db:
    """Just what the fill needs of a SQLite (sqlite3), PostgreSQL or MySQL (SQLAlchemy) connection.

    The SQL is written once, PostgreSQL's way: MySQL's session takes double-quoted names and
    ``||`` as PostgreSQL does (ANSI_QUOTES, PIPES_AS_CONCAT)."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        self.mysql = url.startswith("mysql")
        if self.sqlite:
            self.conn: Any = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
            # Filling only: a big page cache, no sync (a crash here only loses a bench database).
            self.conn.execute("PRAGMA cache_size=-1000000")
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.create_function("culm_clone_id", 2, clone_id, deterministic=True)
        else:
            from sqlalchemy import create_engine

            self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
            self.conn = self.engine.connect()
            if self.mysql:
                self.run("SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES,PIPES_AS_CONCAT')")

    def run(self, sql: str) -> list[Any]:
        if self.sqlite:
            return self.conn.execute(sql).fetchall()
        from sqlalchemy import text

        result = self.conn.execute(text(sql).execution_options(no_parameters=True))
        return result.fetchall() if result.returns_rows else []

    @property
    def schema_sql(self) -> str:
        """The SQL naming the database's own schema, in information_schema."""
        return "DATABASE()" if self.mysql else "current_schema()"

    def columns(self, table: str) -> list[str]:
        if self.sqlite:
            return [r[1] for r in self.run(f'PRAGMA table_info("{table}")')]
        return [
            r[0]
            for r in self.run(
                "SELECT column_name FROM information_schema.columns WHERE table_name = "
                f"'{table}' AND table_schema = {self.schema_sql} ORDER BY ordinal_position"
            )
        ]

    def tables(self) -> list[str]:
        if self.sqlite:
            found = self.run(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'culm!_%' ESCAPE '!'"
            )
        else:
            found = self.run(
                f"SELECT table_name FROM information_schema.tables WHERE table_schema = {self.schema_sql}"
                " AND table_name LIKE 'culm!_%' ESCAPE '!'"
            )
        return sorted(r[0] for r in found if r[0] not in SKIPPED)

    def id_sql(self, column: str) -> str:
        if self.sqlite:
            return f'culm_clone_id("{column}", k.k)'
        return (
            f'CASE WHEN "{column}" = \'\' OR "{column}" IS NULL THEN "{column}" '
            f"ELSE 'c' || md5(\"{column}\" || ':' || k.k) END"
        )

    def close(self) -> None:
        self.conn.close()
        if not self.sqlite:
            self.engine.dispose()


def seed_size(pipelines: int) -> int:
    """How many pipelines to run for real: the largest divisor of ``pipelines`` up to SEED (the
    rest are whole copies of them)."""
    return next(n for n in range(min(SEED, pipelines), 0, -1) if pipelines % n == 0)


def fill(url: str, pipelines: int, say: Callable[[str], None] = lambda _m: None) -> int:
    """Store ``pipelines`` finished 17-node pipelines in the empty database at ``url`` (see the
    module docstring); returns how many are stored."""
    import culm

    seed = seed_size(pipelines)
    rt = culm.Runtime(url)
    try:
        _run_batch(rt, seed)
    finally:
        rt.close()
    copies = pipelines // seed - 1
    db = _Db(url)
    try:
        tables = sorted(db.tables(), key=lambda t: t != "culm_node")  # nodes first: see SKIPPED
        for table in tables:
            db.run(f'CREATE TABLE "seed_{table}" AS SELECT * FROM "{table}"')
        lo, hi = db.run('SELECT MIN("time"), MAX("time") FROM culm_change')[0]
        span = float(hi) - float(lo) + 1.0
        db.run("CREATE TABLE seed_k (k INTEGER NOT NULL, shift DOUBLE PRECISION NOT NULL)")
        for first in range(1, copies + 1, COPIES_PER_STATEMENT):
            ks = range(first, min(first + COPIES_PER_STATEMENT, copies + 1))
            db.run("BEGIN")
            db.run("DELETE FROM seed_k")
            db.run(
                "INSERT INTO seed_k (k, shift) VALUES "
                + ", ".join(f"({k}, {(copies + 1 - k) * span})" for k in ks)
            )
            for table in tables:
                if table != "culm_change":
                    _copy(db, table, "k.k")
            _copy(db, "culm_change", "k.k, s.seq")  # in the order the engine wrote them
            db.run("COMMIT")
            say(f"{(ks[-1] + 1) * seed} pipelines stored")
        # The seed's own feed rows go after the copies' (the seed is the newest work).
        top = db.run("SELECT MAX(seq) FROM seed_culm_change")[0][0]
        db.run("BEGIN")
        _copy(db, "culm_change", "s.seq", seed_only=True)
        db.run(f"DELETE FROM culm_change WHERE seq <= {int(top)}")
        db.run("COMMIT")
        for table in [*tables, "k"]:
            db.run(f'DROP TABLE "seed_{table}"')
        if db.sqlite:
            db.run("PRAGMA wal_checkpoint(TRUNCATE)")
        elif db.mysql:
            db.run("ANALYZE TABLE " + ", ".join(f'"{t}"' for t in tables))  # as InnoDB's own sampling would
        else:
            db.run("VACUUM ANALYZE")  # what autovacuum does to a grown database
        stored = int(db.run("SELECT COUNT(*) FROM culm_pipeline")[0][0])
    finally:
        db.close()
    _recount(url)
    return stored


def _recount(url: str) -> None:
    """Count the root pipelines per state again, as ``culm db recount`` does: the copies went in
    behind the writers' backs."""
    from culm.storage.sql import SqlStore

    store = SqlStore(url)
    try:
        with store.transaction() as unit:
            unit.recount_roots()
    finally:
        store.dispose()


def _copy(db: _Db, table: str, order: str, *, seed_only: bool = False) -> None:
    """INSERT ... SELECT the seed's rows of ``table``, once per copy in seed_k (or once as they
    are, ``seed_only``)."""
    cols = [c for c in db.columns(table) if c != GENERATED.get(table)]
    values = []
    for c in cols:
        if seed_only:
            values.append(f's."{c}"')
        elif c in ID_COLUMNS:
            values.append(db.id_sql(c).replace(f'"{c}"', f's."{c}"'))
        elif c in TIME_COLUMNS:
            values.append(f's."{c}" - k.shift')
        else:
            values.append(f's."{c}"')
    source = f'"seed_{table}" s' if seed_only else f'"seed_{table}" s CROSS JOIN seed_k k'
    names = ", ".join(f'"{c}"' for c in cols)
    db.run(f'INSERT INTO "{table}" ({names}) SELECT {", ".join(values)} FROM {source} ORDER BY {order}')


# -- databases -------------------------------------------------------------------------------------


def _admin(backend: str) -> str:
    return MY_ADMIN if backend == "mysql" else PG_ADMIN


def _server_url(backend: str, name: str) -> str:
    return make_url(_admin(backend)).set(database=name).render_as_string(hide_password=False)


def _drop_and_create(backend: str, name: str, template: str | None = None) -> None:
    """A new empty server database ``name`` (PostgreSQL: a copy of ``template`` when given)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(_admin(backend), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        force = "" if backend == "mysql" else " WITH (FORCE)"
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        conn.execute(text(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")))
    engine.dispose()


def _server_recreate(backend: str, name: str) -> str:
    _drop_and_create(backend, name)
    from culm.storage.migrate import upgrade_database

    upgrade_database(_server_url(backend, name))  # `culm db upgrade`: a server database is migrated by its operator
    return _server_url(backend, name)


def _stored(url: str) -> int | None:
    """Finished pipelines in a kept database (None: absent or unreadable)."""
    try:
        db = _Db(url)
    except Exception:  # noqa: BLE001 - no such database: fill it
        return None
    try:
        return int(db.run("SELECT COUNT(*) FROM culm_pipeline")[0][0])
    except Exception:  # noqa: BLE001
        return None
    finally:
        db.close()


def size_bytes(url: str) -> int:
    """The database's size on disk (SQLite: the file after a checkpoint; MySQL: InnoDB's data and
    index lengths, as its statistics last saw them)."""
    db = _Db(url)
    try:
        if db.sqlite:
            db.run("PRAGMA wal_checkpoint(TRUNCATE)")
            return os.path.getsize(url.split(":///", 1)[1])
        if db.mysql:
            return int(db.run("SELECT SUM(data_length + index_length) FROM information_schema.tables"
                              " WHERE table_schema = DATABASE()")[0][0])
        return int(db.run("SELECT pg_database_size(current_database())")[0][0])
    finally:
        db.close()


def _kept(
    backend: str, pipelines: int, keep: str, refill: bool, say: Callable[[str], None]
) -> tuple[str, float]:
    """The URL of the filled database, filled now unless kept; (url, fill seconds or 0)."""
    if backend == "sqlite":
        os.makedirs(keep, exist_ok=True)
        path = os.path.join(keep, f"stored-{pipelines}.db")
        url = f"sqlite:///{path}"
        if not refill and os.path.exists(path) and _stored(url) == pipelines:
            return url, 0.0
        _remove_sqlite(path)
    else:
        name = f"{DB_PREFIX}_{pipelines}"
        url = _server_url(backend, name)
        if not refill and _stored(url) == pipelines:
            from culm.storage.migrate import upgrade_database

            upgrade_database(url)  # a database kept from an older culm
            return url, 0.0
        url = _server_recreate(backend, name)
    t0 = time.perf_counter()
    fill(url, pipelines, say)
    return url, time.perf_counter() - t0


def _working_copy(backend: str, kept: str, keep: str) -> str:
    """A copy of the kept database to measure on (measuring adds pipelines; the kept one stays as
    filled), except on MySQL (see below)."""
    if backend == "sqlite":
        path = os.path.join(keep, "work.db")
        _remove_sqlite(path)
        shutil.copyfile(kept.split(":///", 1)[1], path)
        return f"sqlite:///{path}"
    if backend == "postgresql":
        _drop_and_create(backend, f"{DB_PREFIX}_work", template=make_url(kept).database)
        return _server_url(backend, f"{DB_PREFIX}_work")
    # MySQL has no template databases, and copying the tables row by row (CREATE TABLE ... LIKE,
    # INSERT ... SELECT) took longer than the fill (over 7 minutes for a sixth of the rows, indexes
    # built before or after them): the kept database is measured on itself, and the pipelines the
    # measuring adds make the next run fill it again.
    return kept


def _remove_sqlite(path: str) -> None:
    for suffix in ("", "-wal", "-shm", ".runner-lock"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def _empty(backend: str, keep: str) -> str:
    if backend == "sqlite":
        path = os.path.join(keep, "empty.db")
        _remove_sqlite(path)
        return f"sqlite:///{path}"
    return _server_recreate(backend, f"{DB_PREFIX}_empty")


def compare(
    backend: str,
    pipelines: int,
    rounds: int,
    keep: str,
    refill: bool,
    say: Callable[[str], None],
    pairs: int = 2,
) -> dict[str, Any]:
    import culm

    kept, fill_s = _kept(backend, pipelines, keep, refill, say)
    empty = _empty(backend, keep)
    culm.Runtime(empty, workers=0).close()
    stored = _stored(kept) or 0
    result: dict[str, Any] = {
        "backend": backend,
        "stored_pipelines": stored,
        "fill_s": round(fill_s, 1),
        "bytes_per_finished_pipeline": round((size_bytes(kept) - size_bytes(empty)) / stored),
    }
    full = _working_copy(backend, kept, keep)
    got: dict[str, list[float]] = {}
    for side, url in [("empty", empty), ("full", full)] * pairs:
        say(f"measuring {side}")
        for k, v in measure(url, rounds).items():
            got.setdefault(f"{side}_{k}", []).append(v)
    result.update({k: round(statistics.median(v), 4) for k, v in got.items()})
    say("timing the reads")
    result.update(reads(empty, full, pairs))
    for k in ("batch_s", "run_pipeline_ms", "running_tree_ms", "feed_history_ms", "wait_finished_ms",
              "list_pipelines_ms"):
        result[f"full_over_empty_{k}"] = round(result[f"full_{k}"] / result[f"empty_{k}"], 3)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stored", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--pipelines", type=int, default=100_000, help="finished pipelines stored (default 100000)"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "mysql", "both", "all"), default="sqlite",
                        help="both: SQLite and PostgreSQL; all: and MySQL ($CULM_BENCH_MYSQL)")
    parser.add_argument("--rounds", type=int, default=3, help="batches per measurement (default 3)")
    parser.add_argument("--pairs", type=int, default=2, help="empty/full alternations (default 2)")
    parser.add_argument("--keep", default="/tmp/culm-stored", help="where the filled SQLite file is kept")
    parser.add_argument("--refill", action="store_true", help="fill again even when a kept database exists")
    parser.add_argument(
        "--fill-only", action="store_true", help="fill (or find) the database, measure nothing"
    )
    args = parser.parse_args(argv)
    if args.pipelines < 1:
        parser.error("--pipelines must be at least 1")

    def say(msg: str) -> None:
        print(f"# {time.strftime('%H:%M:%S')} {msg}", flush=True)

    chosen = {"both": ("sqlite", "postgresql"), "all": ("sqlite", "postgresql", "mysql")}
    for backend in chosen.get(args.backend, (args.backend,)):
        if args.fill_only:
            url, took = _kept(backend, args.pipelines, args.keep, args.refill, say)
            print(
                json.dumps(
                    {
                        "backend": backend,
                        "url": url,
                        "stored_pipelines": _stored(url),
                        "fill_s": round(took, 1),
                    }
                ),
                flush=True,
            )
            continue
        print(
            json.dumps(
                compare(backend, args.pipelines, args.rounds, args.keep, args.refill, say, args.pairs)
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
