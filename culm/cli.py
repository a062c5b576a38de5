"""The ``culm`` command line: run, validate and inspect pipelines, run workers, migrate databases.

Every subcommand goes through the public API (:mod:`culm.api`, :class:`culm.Runtime`). User
mistakes (a missing file, bad JSON, a module that fails to import, an invalid tree) are reported
in one or a few lines and a non-zero exit code, never as a traceback.

Exit codes: 0 success; 1 the pipeline did not finish (failed node, timeout) or ``validate``
found problems; 2 the input could not be used (usage, file, JSON, module, refused tree).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

DEFAULT_DB = "sqlite:///culm.db"
DEFAULT_TIMEOUT = 600.0
POLL_SECONDS = 0.1
ENDED = frozenset({"FINISHED", "REVOKED"})


class UsageError(Exception):
    """An input the command cannot use; the message is shown as is, exit code 2."""


# ---------------------------------------------------------------------------------------------
# Loading trees and modules
# ---------------------------------------------------------------------------------------------


def import_names(names: Sequence[str] | None) -> list[str]:
    """Module names from ``--import`` options and ``$CULM_IMPORTS`` (comma-separated), each once."""
    found: list[str] = []
    raw = [*(names or []), *os.environ.get("CULM_IMPORTS", "").split(",")]
    for item in raw:
        for name in item.split(","):
            name = name.strip()
            if name and name not in found:
                found.append(name)
    return found


def _short_error(exc: BaseException) -> str:
    """``Type: message`` plus the innermost frame, without the whole traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if not f.filename.startswith("<")]
    where = f" (at {user_frames[-1].filename}:{user_frames[-1].lineno})" if user_frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that define components, so that they register.

    Raises:
        UsageError: a module is missing or raised while being imported.
    """
    # Modules named relative to the working directory should import as they do with `python -m`.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise UsageError(f"cannot import module {name!r}: {_short_error(exc)}") from exc
            raise UsageError(f"cannot import module {name!r}: no such module on the path "
                             f"(the working directory and $PYTHONPATH are searched)") from exc
        except Exception as exc:
            raise UsageError(f"cannot import module {name!r}: {_short_error(exc)}") from exc


def load_module_file(path: Path) -> Any:
    """Import a ``.py`` file under its stem, with its folder importable (for sibling modules)."""
    name = path.stem
    if not name.isidentifier():
        raise UsageError(f"{path}: the file name must be a valid module name to be imported")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != path.resolve():
        raise UsageError(f"{path}: module name {name!r} is already taken by {existing!r}; rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UsageError(f"{path}: import failed: {_short_error(exc)}") from exc
    return module


def _tree_from_module(path: Path) -> dict:
    module = load_module_file(path)
    build = getattr(module, "build_pipeline", None)
    if callable(build):
        try:
            tree = build()
        except Exception as exc:
            raise UsageError(f"{path}: build_pipeline() failed: {_short_error(exc)}") from exc
    elif hasattr(module, "pipeline"):
        tree = module.pipeline
    else:
        raise UsageError(f"{path}: defines neither a module-level `pipeline` dict nor `build_pipeline()`")
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: the pipeline must be a dict (a pipeline tree), got {type(tree).__name__}")
    return tree


def _tree_from_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(tree, dict):
        raise UsageError(f"{path}: the JSON must be an object (a pipeline tree), got {type(tree).__name__}")
    return tree


def load_tree(source: str, imports: Sequence[str] | None) -> dict:
    """Import the component modules, then read the tree from a ``.json`` or ``.py`` file.

    Raises:
        UsageError: the file is missing or unusable, or an import failed.
    """
    import_modules(import_names(imports))
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{source}: no such file")
    if path.suffix == ".py":
        return _tree_from_module(path)
    return _tree_from_json(path)


def parse_data(raw: str | None) -> dict:
    """The ``--data`` option: a JSON object, or ``@FILE`` holding one."""
    if not raw:
        return {}
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--data: cannot read {raw[1:]}: {exc}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--data: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--data must be a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Tree helpers
# ---------------------------------------------------------------------------------------------


def node_names(tree: Any) -> dict[str, str]:
    """``{node_id: name}`` for every named node of a tree, subprocesses included."""
    names: dict[str, str] = {}
    stack = [tree]
    while stack:
        pipe = stack.pop()
        if not isinstance(pipe, dict):
            continue
        if isinstance(pipe.get("id"), str) and pipe.get("name"):
            names[pipe["id"]] = str(pipe["name"])
        nodes: list[Any] = [pipe.get("start_event"), pipe.get("end_event")]
        for key in ("activities", "gateways"):
            section = pipe.get(key)
            if isinstance(section, dict):
                nodes.extend(section.values())
        for node in nodes:
            if not isinstance(node, dict) or not isinstance(node.get("id"), str):
                continue
            if node.get("name"):
                names[node["id"]] = str(node["name"])
            if isinstance(node.get("pipeline"), dict):
                stack.append(node["pipeline"])
    return names


def _tree_ids(tree: Any) -> dict[str, str]:
    """Every pipeline, node and flow id of a tree, mapped to a fresh id of the same kind."""
    fresh: dict[str, str] = {}
    stack = [tree]
    while stack:
        pipe = stack.pop()
        if not isinstance(pipe, dict):
            continue
        if isinstance(pipe.get("id"), str):
            fresh[pipe["id"]] = "p" + uuid.uuid4().hex
        nodes: list[Any] = [pipe.get("start_event"), pipe.get("end_event")]
        for key in ("activities", "gateways"):
            if isinstance(pipe.get(key), dict):
                nodes.extend(pipe[key].values())
        for node in nodes:
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                fresh[node["id"]] = "n" + uuid.uuid4().hex
                stack.append(node.get("pipeline"))
        if isinstance(pipe.get("flows"), dict):
            fresh.update({flow_id: "f" + uuid.uuid4().hex for flow_id in pipe["flows"] if isinstance(flow_id, str)})
    return fresh


def with_new_ids(tree: dict) -> dict:
    """A copy of ``tree`` in which every id, and every exact reference to one, is fresh."""
    fresh = _tree_ids(tree)

    def renew(value: Any) -> Any:
        if isinstance(value, str):
            return fresh.get(value, value)
        if isinstance(value, dict):
            return {renew(k): renew(v) for k, v in value.items()}
        if isinstance(value, list):
            return [renew(v) for v in value]
        return value

    result: dict = renew(tree)
    return result


def flatten_states(states: dict) -> dict[str, dict]:
    """Every entry of a (nested or flat) state tree, by node id."""
    flat: dict[str, dict] = {}
    stack = list(states.values())
    while stack:
        entry = stack.pop()
        flat[entry["id"]] = entry
        stack.extend((entry.get("children") or {}).values())
    return flat


def _label(node_id: str, names: dict[str, str]) -> str:
    name = names.get(node_id)
    return f"{node_id} ({name})" if name else node_id


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> str:
    return str(args.db or os.environ.get("CULM_DATABASE_URL") or DEFAULT_DB)


class Progress:
    """Prints one line per node state change, from signals or from polled state trees."""

    def __init__(self, root_id: str, names: dict[str, str], out: TextIO) -> None:
        self.root_id = root_id
        self.names = names
        self.out = out
        self.last: dict[str, str] = {}
        self._lock = threading.Lock()

    def show(self, node_id: str, state: str) -> None:
        with self._lock:
            if self.last.get(node_id) == state:
                return
            self.last[node_id] = state
            stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
            kind = "pipeline" if node_id == self.root_id else "node"
            print(f"{stamp} {state:<9} {kind} {_label(node_id, self.names)}", file=self.out, flush=True)

    def on_set_state(self, node_id: str, to_state: str, root_id: str, **_: Any) -> None:
        if root_id == self.root_id:
            self.show(node_id, to_state)


def _failed_nodes(flat: dict[str, dict]) -> list[str]:
    return sorted(node_id for node_id, entry in flat.items() if entry["state"] == "FAILED")


def _report_failures(rt: Any, api: Any, failed: list[str], names: dict[str, str], out: TextIO) -> None:
    for node_id in failed:
        outputs = api.get_execution_data_outputs(rt, node_id).data or {}
        ex_data = outputs.get("ex_data")
        print(f"FAILED {_label(node_id, names)}", file=out)
        text = str(ex_data).rstrip() if ex_data not in (None, "") else "(no ex_data)"
        for line in text.splitlines() or [""]:
            print(f"    {line}", file=out)


def _wait(rt: Any, api: Any, root_id: str, timeout: float, progress: Progress | None) -> tuple[str, dict]:
    """Poll until the pipeline ended, a node failed or time ran out: ("ended"|"failed"|"timeout", states)."""
    deadline = time.monotonic() + timeout
    flat: dict[str, dict] = {}
    while True:
        states = api.get_pipeline_states(rt, root_id).data or {}
        flat = flatten_states(states)
        if progress is not None:
            for node_id, entry in flat.items():
                progress.show(node_id, entry["state"])
        root_state = flat.get(root_id, {}).get("state")
        if root_state in ENDED:
            return "ended", flat
        if _failed_nodes(flat):
            # Let branches that are still running settle, so that every failure is reported.
            rt.wait_idle(max(0.0, min(2.0, deadline - time.monotonic())))
            states = api.get_pipeline_states(rt, root_id).data or {}
            return "failed", flatten_states(states)
        if time.monotonic() >= deadline:
            return "timeout", flat
        time.sleep(POLL_SECONDS)


def _print_problems(exc: Any, message: str, out: TextIO) -> None:
    problems = getattr(exc, "problems", None) or []
    if not problems:
        print(message, file=out)
        return
    print(f"invalid pipeline tree: {len(problems)} problem(s)", file=out)
    for problem in problems:
        print(f"  {problem.where or '<tree>'}: {problem.message}", file=out)


def cmd_run(args: argparse.Namespace) -> int:
    import culm
    from culm import api, signals

    tree = load_tree(args.source, args.imports)
    if args.new_ids:
        tree = with_new_ids(tree)
    data = parse_data(args.data)
    names = node_names(tree)
    root_id = tree.get("id")
    with culm.Runtime(_db(args)) as rt:
        progress = Progress(str(root_id), names, sys.stdout)
        # Signals fire only in the process that runs the work (exact, in order); when another
        # process holds the workers of this database, polling shows the changes it can see.
        by_signal = getattr(rt, "dispatcher", None) is not None
        if by_signal:
            signals.post_set_state.connect(progress.on_set_state)
        print(f"running pipeline {root_id} on {rt!r}", flush=True)
        try:
            started = api.run_pipeline(rt, tree, root_pipeline_data=data, cycle_tolerate=args.cycle_tolerate)
            if not started.result:
                _print_problems(started.exc, f"refused: {started.message}", sys.stderr)
                if isinstance(root_id, str) and api.get_pipeline_states(rt, root_id).data:
                    print(f"hint: pipeline {root_id} already ran in this database; pass --new-ids to run "
                          "the tree again under fresh ids", file=sys.stderr)
                return 2
            assert isinstance(root_id, str)
            outcome, flat = _wait(rt, api, root_id, args.timeout, None if by_signal else progress)
        finally:
            signals.post_set_state.disconnect(progress.on_set_state)
        return _conclude(rt, api, root_id, names, outcome, flat, args.timeout)


def _conclude(rt: Any, api: Any, root_id: str, names: dict[str, str], outcome: str, flat: dict[str, dict],
              timeout: float) -> int:
    root_state = flat.get(root_id, {}).get("state", "UNKNOWN")
    failed = _failed_nodes(flat)
    if outcome == "ended" and root_state == "FINISHED":
        print(f"pipeline {root_id} FINISHED")
        return 0
    if outcome == "ended":
        print(f"pipeline {root_id} {root_state}")
    elif outcome == "timeout":
        running = sorted(n for n, e in flat.items() if e["state"] not in ("FINISHED", "FAILED") and n != root_id)
        print(f"timed out after {timeout:g}s: pipeline {root_id} is {root_state}")
        for node_id in running:
            print(f"  still {flat[node_id]['state']}: {_label(node_id, names)}")
    else:
        print(f"pipeline {root_id} is {root_state} with {len(failed)} failed node(s); "
              f"retry, skip or revoke it with the API (see `culm status {root_id}`)")
    _report_failures(rt, api, failed, names, sys.stdout)
    return 1


def cmd_validate(args: argparse.Namespace) -> int:
    from culm import events, variables
    from culm.components import library
    from culm.model.validator import tree_warnings, validate_tree

    tree = load_tree(args.source, args.imports)
    problems = validate_tree(
        tree, cycle_tolerate=args.cycle_tolerate, component_exists=library.has,
        lazy_exists=variables.library.has, end_event_exists=events.library.has,
    )
    for problem in problems:
        print(f"{problem.where or '<tree>'}: {problem.message}")
    for warning in tree_warnings(tree):  # templates and conditions that will not work as written
        print(f"warning: {warning.where or '<tree>'}: {warning.message}")
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("OK")
    return 0


def _fmt_time(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


def _print_state(rt: Any, api: Any, entry: dict, depth: int, out: TextIO) -> None:
    info = api.get_node_debug_info(rt, entry["id"])
    node = (info.data or {}).get("node") or {} if info.result else {}
    name = node.get("name")
    kind = node.get("type")
    title = f"{name} " if name else ""
    title += f"[{kind}] " if kind else ""
    print(
        f"{'  ' * depth}{title}{entry['id']}: {entry['state']} loop={entry.get('loop')} "
        f"retry={entry.get('retry')} skip={entry.get('skip')} "
        f"started={_fmt_time(entry.get('started_time'))} archived={_fmt_time(entry.get('archived_time'))}",
        file=out,
    )
    children = sorted((entry.get("children") or {}).values(), key=lambda e: (e.get("created_time") is None,
                                                                              e.get("created_time") or 0))
    for child in children:
        _print_state(rt, api, child, depth + 1, out)


def cmd_status(args: argparse.Namespace) -> int:
    import culm
    from culm import api

    with culm.Runtime(_db(args), workers=0) as rt:
        found = api.get_pipeline_states(rt, args.id, flat_children=False)
        if not found.result:
            print(f"error: {found.message}", file=sys.stderr)
            return 1
        states = found.data or {}
        if not states:
            found = api.get_children_states(rt, args.id)
            states = found.data or {} if found.result else {}
        if not states:
            print(f"no pipeline or node with id {args.id} in {rt!r}", file=sys.stderr)
            return 1
        for entry in states.values():
            _print_state(rt, api, entry, 0, sys.stdout)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        from culm.dispatch.celery import run_worker
    except ImportError as exc:
        raise UsageError(f"the Celery worker is not available: {exc} (install culm[celery])") from exc
    from culm.dispatch.celery import queue_names

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    if queues is None and args.queue_suffix:
        queues = queue_names(args.queue_suffix, args.prefix)
    broker = args.broker or os.environ.get("CULM_BROKER_URL")
    if not broker:
        raise UsageError("a broker is needed: pass --broker URL or set $CULM_BROKER_URL")
    run_worker(db=_db(args), broker=broker, imports=import_names(args.imports),
               concurrency=args.concurrency, queues=queues, loglevel=args.loglevel, pool=args.pool,
               prefix=args.prefix)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from culm.errors import CulmError
    from culm.storage.migrate import upgrade
    from culm.storage.sql import SqlStore

    url = _db(args)
    try:
        store = SqlStore(url, create=False)
    except Exception as exc:
        raise UsageError(f"cannot open database {url}: {type(exc).__name__}: {exc}") from exc
    try:
        version = upgrade(store)
    except CulmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"database schema is at version {version}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    print("culm serve: the REST API and web console are not available yet in this release; "
          "use culm.api from Python or `culm status ID`.", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="database URL (default: $CULM_DATABASE_URL, then sqlite:///culm.db)")


def _add_imports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="module defining components; repeat or comma-separate (also $CULM_IMPORTS)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``culm`` command."""
    parser = argparse.ArgumentParser(prog="culm", description="culm workflow engine command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run a pipeline to its end on the embedded runtime")
    run.add_argument("source", metavar="TREE.json|MODULE.py")
    _add_db(run)
    run.add_argument("--data", metavar="JSON", help="root pipeline data: a JSON object or @FILE")
    _add_imports(run)
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                     help=f"give up after S seconds (default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--cycle-tolerate", action="store_true", help="allow loop-back flows")
    run.add_argument("--new-ids", action="store_true",
                     help="give the pipeline, its nodes and flows fresh ids (to run a JSON tree again)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="list every problem of a pipeline tree")
    validate.add_argument("source", metavar="TREE.json|MODULE.py")
    _add_imports(validate)
    validate.add_argument("--cycle-tolerate", action="store_true", help="allow loop-back flows")
    validate.set_defaults(func=cmd_validate)

    status = sub.add_parser("status", help="print the state tree of a pipeline or node")
    status.add_argument("id", metavar="ID")
    _add_db(status)
    status.set_defaults(func=cmd_status)

    worker = sub.add_parser("worker", help="run a Celery worker for the distributed runtime")
    _add_db(worker)
    worker.add_argument("--broker", metavar="URL", help="Celery broker URL (default: $CULM_BROKER_URL)")
    _add_imports(worker)
    worker.add_argument("--concurrency", type=int, default=None, metavar="N")
    worker.add_argument("--queues", default=None, metavar="Q1,Q2")
    worker.add_argument("--queue-suffix", default="", metavar="S",
                        help="consume the queues of runs started with queue=S")
    worker.add_argument("--prefix", default="culm", help="queue name prefix, as given to the submitting runtimes")
    worker.add_argument("--pool", default=None, choices=["prefork", "threads", "solo"],
                        help="Celery pool (default prefork; solo runs tasks in the worker process itself)")
    worker.add_argument("--loglevel", default="INFO", metavar="L")
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply the schema migrations")
    _add_db(upgrade)
    upgrade.set_defaults(func=cmd_db_upgrade)

    serve = sub.add_parser("serve", help="REST API and web console (not available yet)")
    serve.set_defaults(func=cmd_serve)
    return parser


class _OneLineFormatter(logging.Formatter):
    """Engine log records as one line each; a failing component's traceback is shown from ``ex_data``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname} {record.name}: {record.getMessage()}"


@contextlib.contextmanager
def _engine_logs_one_line() -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    logger = logging.getLogger("culm")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``culm`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command == "worker":
            return func(args)
        with _engine_logs_one_line():
            return func(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
