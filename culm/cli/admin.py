"""Operations commands: ``worker``, ``workers`` and ``db upgrade``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from culm.cli.common import (
    EXIT_OK,
    DatabaseError,
    NotFound,
    UsageError,
    a_text,
    add_db,
    add_imports,
    add_json,
    broker_url,
    check_sqlite,
    console,
    database_error,
    db_errors,
    db_url,
    err,
    port_number,
    positive_seconds,
    print_json,
    whole_number,
)
from culm.cli.loading import import_modules, import_names
from culm.errors import CulmError, InvalidOperationError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        from culm.dispatch import queue_names, run_worker
    except ImportError as exc:
        raise UsageError(f"the Celery worker is not available: {exc} (install culm[celery])") from exc

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues is not None else None
    if queues == []:
        raise UsageError(f"--queues {args.queues!r}: names no queue (give Q1,Q2, or leave it out for every "
                         "queue of --prefix)")
    if queues is None and args.queue_suffix:
        queues = queue_names(args.queue_suffix, args.prefix)
    broker = broker_url(args)
    if not broker:
        raise UsageError("a broker is needed: pass --broker URL or set $CULM_BROKER_URL")
    port = args.metrics_port or _metrics_port_from_environment()
    if port:
        from culm.web import start_worker_metrics

        try:
            print(start_worker_metrics(port, args.pool, args.metrics_host), file=sys.stderr, flush=True)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {args.metrics_host}:{port}: "
                             f"{exc.strerror or exc} (pick another --metrics-port or --metrics-host)") from exc
    # Imported here first: a missing or broken module is one clear line (and the working directory
    # is searched, as for `culm run`); a MODULE.py file stays loaded in the pool's forked processes,
    # and run_worker, which reads $CULM_IMPORTS again, does not import it twice.
    imports = import_names(args.imports)
    import_modules(imports)
    check_sqlite(db_url(args), read_only=False)  # a folder, another program's SQLite file: exit 4
    from culm.runtime import WorkerWiring

    try:
        run_worker(db=db_url(args), broker=broker, imports=imports,
                   concurrency=args.concurrency, queues=queues, loglevel=args.loglevel, pool=args.pool,
                   prefix=args.prefix, wiring=WorkerWiring())
    except CulmError as exc:
        if isinstance(exc, db_errors()):
            raise  # the database's own message, with its exit code
        raise UsageError(str(exc)) from exc
    return EXIT_OK


def _log_level(text: str) -> str:
    """An argparse type: one of Celery's log levels, in any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, not {text!r}")
    return level


def _metrics_port_from_environment() -> int | None:
    text = os.environ.get("CULM_METRICS_PORT") or ""
    if not text.strip():
        return None
    try:
        return port_number(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"$CULM_METRICS_PORT: {exc}") from None


def cmd_workers(args: argparse.Namespace) -> int:
    """List the registered worker processes: live ones, and silent ones the relays will bury."""
    url = db_url(args)
    try:
        check_sqlite(url, read_only=True)
    except NotFound as missing:  # no file, no worker: as `culm list` answers there (exit 0)
        err(f"note: {missing}")
        found = []
    else:
        found = _registered_workers(url)
    rows = [{**w.as_dict(), "alive": w.silent_for <= args.dead_after} for w in found]
    if args.json:
        print_json(rows)
        return EXIT_OK
    out = console()
    if not rows:
        out.print("no worker is registered")
    for r in rows:
        # An embedded runner is taken for dead only once its process is seen gone (culm.storage.workers).
        state = "alive" if r["alive"] else "silent" if r["embedded"] else "silent (taken for dead)"
        serves = "an embedded runner, no queues" if r["embedded"] else f"prefix {r['prefix']}"
        out.print(f"{r['host']} pid {r['pid']}  {state}, last beat {r['silent_for']:.1f} s ago, "
                  f"{r['threads']} user-code threads, {serves}  [{r['owner']}]", markup=False)
    return EXIT_OK


def _registered_workers(url: str) -> list[Any]:
    from culm.storage import SqlStore, SqlWorkerRegistry

    try:
        store = SqlStore(url)
        try:
            return SqlWorkerRegistry(store).workers()
        finally:
            store.dispose()
    except db_errors() as exc:
        raise database_error(exc, url) from exc
    except InvalidOperationError as exc:  # memory://: no registry to read
        raise DatabaseError(str(exc)) from None


def _on_database(args: argparse.Namespace, action: Callable[[str], Any]) -> Any:
    """``action(url)`` on the command's database, its failures as the CLI's database errors."""
    url = db_url(args)
    # A folder, a missing directory, another program's SQLite file: said before the store opens it.
    check_sqlite(url, read_only=False, shared=getattr(args, "shared_file", False))
    try:
        return action(url)
    except db_errors() as exc:
        raise database_error(exc, url) from exc
    except InvalidOperationError as exc:  # memory://: no schema to migrate, nothing stored to count
        raise DatabaseError(str(exc)) from None


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from culm.storage import upgrade_database

    print(f"database schema is at version {_on_database(args, upgrade_database)}")
    return EXIT_OK


def cmd_db_recount(args: argparse.Namespace) -> int:
    from culm.storage import recount_database

    counts = _on_database(args, recount_database)
    shown = ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"
    print(f"root pipelines counted again: {shown}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``worker`` and ``db`` to the ``culm`` parser."""
    worker = sub.add_parser("worker", help="run a Celery worker for the distributed runtime")
    add_db(worker)
    worker.add_argument("--broker", metavar="URL", type=a_text("a broker URL"),
                        help="the Celery broker to take tasks from (default: $CULM_BROKER_URL)")
    add_imports(worker)
    worker.add_argument("--concurrency", type=whole_number(1, "a number of processes, 1 or more"), default=None,
                        metavar="N",
                        help="Celery pool size: processes (prefork) or threads (threads) taking messages, default "
                             "the number of CPUs, at most 4 (more: size it against the database's "
                             "max_connections); each process runs user code on $CULM_WORKER_THREADS threads (8)")
    worker.add_argument("--queues", default=None, metavar="Q1,Q2",
                        help="consume only these queues (default: every queue of --prefix)")
    worker.add_argument("--queue-suffix", default="", metavar="S",
                        help="consume the queues of runs started with queue=S")
    worker.add_argument("--prefix", default=os.environ.get("CULM_QUEUE_PREFIX", "culm"), type=a_text("a queue name prefix"),
                        help="queue name prefix, as given to the submitting runtimes (also $CULM_QUEUE_PREFIX)")
    worker.add_argument("--pool", default=None, choices=["prefork", "threads", "solo"],
                        help="Celery pool (default prefork; solo runs tasks in the worker process itself)")
    worker.add_argument("--loglevel", default="INFO", type=_log_level, metavar="L",
                        help="Celery's log level: DEBUG, INFO, WARNING, ERROR (default INFO)")
    worker.add_argument("--metrics-port", type=port_number, default=None, metavar="PORT",
                        help="serve Prometheus metrics on PORT (default $CULM_METRICS_PORT; none if unset); "
                             "no token protects them")
    worker.add_argument("--metrics-host", default=os.environ.get("CULM_METRICS_HOST") or "127.0.0.1", metavar="H",
                        type=a_text("an address"),
                        help="address the metrics are served on (default $CULM_METRICS_HOST, then 127.0.0.1: "
                             "this machine only; 0.0.0.0 for every interface, where a scraper elsewhere reaches them)")
    worker.set_defaults(func=cmd_worker, own_logging=True)

    workers = sub.add_parser("workers", help="list the worker processes of a cluster and when each last beat")
    add_db(workers)
    workers.add_argument("--dead-after", type=positive_seconds, default=float(os.environ.get("CULM_WORKER_DEAD_AFTER") or 3),
                         metavar="S", help="call a worker silent this long dead, as the relays do "
                                           "(default: $CULM_WORKER_DEAD_AFTER, then 3)")
    add_json(workers)
    workers.set_defaults(func=cmd_workers)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply the schema migrations")
    add_db(upgrade)
    upgrade.add_argument("--shared-file", action="store_true",
                         help="add culm's tables to a SQLite file that already holds other tables (refused "
                              "without it: --db would name another program's database)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    recount = db_sub.add_parser("recount", help="count the pipelines per state again (after rows were edited by hand)")
    add_db(recount)
    recount.set_defaults(func=cmd_db_recount)

