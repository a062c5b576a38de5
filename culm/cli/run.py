"""``culm run`` (and ``run --attach``) and ``culm validate``; following a pipeline until it stops."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from culm.cli import render
from culm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Refused,
    UsageError,
    add_broker,
    add_db,
    add_imports,
    an_id,
    broker_url,
    check,
    db_url,
    err,
    open_runtime,
    parse_json_object,
    seconds,
    server_database,
    state_entry,
    workers_run,
    workers_serve,
)
from culm.cli.loading import apply_settings, import_names, load_tree

DEFAULT_TIMEOUT = 600.0
POLL_SECONDS = 0.1
# Nothing moved for this long: the pipeline waits (for a callback, a poll, an operator).
STILL_SECONDS = 1.0


def _say(line: str) -> None:
    """Print a progress line; when the reader left (`culm run X | head`), the rest goes nowhere
    (these lines come from the engine's threads, where a BrokenPipeError was logged as an error)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class Progress:
    """Prints one line per node state change, from signals or from polled state trees."""

    def __init__(self, root_id: str, info: dict[str, tuple[str, str]]) -> None:
        self.root_id = root_id
        self.info = info
        self.last: dict[str, str] = {}
        self._lock = threading.Lock()
        self._held: list[str] | None = None

    def hold(self) -> None:
        """Keep lines back until :meth:`release` (changes that come before the command's own line)."""
        self._held = []

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
        for line in held:
            _say(line)

    def show(self, node_id: str, state: str, note: str = "") -> None:
        with self._lock:
            if self.last.get(node_id) == state + note:
                return
            self.last[node_id] = state + note
            stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
            kind = "pipeline" if node_id == self.root_id else "node"
            line = f"{stamp} {state:<9} {kind} {render.label(node_id, self.info)}{note}"
            if self._held is not None:
                self._held.append(line)
                return
        _say(line)

    def on_set_state(self, node_id: str, to_state: str, root_id: str, **_: Any) -> None:
        if root_id == self.root_id:
            self.show(node_id, to_state)


def _moving(flat: dict[str, dict], waiting_moves: bool) -> bool:
    """Whether some node of the pipeline is on its way (``waiting_moves``: callbacks, polls and
    pauses count as on their way, for they go on by themselves or by another process's command)."""
    # A pipeline is its own parent: one none of whose nodes has started yet (its first step not
    # taken, say by a worker's relay) is on its way, not a container of nodes that are still.
    containers = {e.get("parent_id") for e in flat.values() if e.get("parent_id") != e["id"]}
    for e in flat.values():
        if e["state"] not in ("RUNNING", "READY", "SUSPENDED") or e["id"] in containers:
            continue
        if e["state"] == "READY" and _paused_around(flat, e):
            # Parked by a pause (a node retried in a paused pipeline): waits for `culm resume`.
            if waiting_moves:
                return True
            continue
        reason = e.get("wait_reason")
        if not reason or reason["kind"] == "poll" or (waiting_moves and reason["kind"] != "failed"):
            return True
    return False


def _paused_around(flat: dict[str, dict], entry: dict) -> bool:
    """Whether the pipeline or a subprocess around ``entry`` is paused (SUSPENDED)."""
    seen: set[str] = set()
    parent = flat.get(entry.get("parent_id") or "")
    while parent is not None and parent["id"] not in seen:
        if parent["state"] == "SUSPENDED":
            return True
        seen.add(parent["id"])
        parent = flat.get(parent.get("parent_id") or "")
    return False


def _started(entry: dict) -> tuple:
    at = entry.get("archived_time") or entry.get("started_time")
    return (at is None, at.timestamp() if at else 0.0, entry["id"])


class Stillness:
    """Tells when a pipeline stopped moving: nothing of it ran for :data:`STILL_SECONDS` but failed
    nodes (``"failed"``: bamboo keeps such a pipeline RUNNING until an operator acts) or, unless
    ``waiting_moves``, nodes that wait for a callback or an operator (``"waiting"``)."""

    def __init__(self, waiting_moves: bool) -> None:
        self.waiting_moves = waiting_moves
        self.since: float | None = None

    def stopped(self, flat: dict[str, dict]) -> str | None:
        """``"failed"``, ``"waiting"`` or None (still moving, or not still for long enough yet)."""
        if _moving(flat, self.waiting_moves):
            self.since = None
            return None
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since < STILL_SECONDS:
            return None
        return "failed" if any(e["state"] == "FAILED" for e in flat.values()) else "waiting"


def follow(rt: Any, root_id: str, timeout: float, progress: Progress | None, stop_when_waiting: bool = False,
           on_callback: Callable[[dict], None] | None = None, stalled_after: float | None = None
           ) -> tuple[str, dict[str, dict]]:
    """Poll until the pipeline ended or stopped moving: ``("ended"|"failed"|"waiting"|"stalled"|"timeout", flat)``.

    A pipeline stops moving when nothing runs but failed nodes (``"failed"``) or, with
    ``stop_when_waiting``, nodes that wait for a callback or an operator (``"waiting"``), or, from
    ``stalled_after`` seconds on, work that nothing takes (``"stalled"``: the pipeline's ``stalled``
    wait reason: no worker runs); a poll always goes on by itself. ``on_callback`` is told once of each run of a node that starts
    waiting for a callback.
    """
    from culm import api

    begun = time.monotonic()
    deadline = begun + timeout
    still = Stillness(waiting_moves=not stop_when_waiting)
    told: set[tuple[str, str]] = set()
    while True:
        flat = render.flatten(check(api.get_pipeline_states(rt, root_id)))
        if progress is not None:
            for entry in sorted(flat.values(), key=_started):
                progress.show(entry["id"], entry["state"])
        if on_callback is not None:
            for entry in flat.values():
                if (entry.get("wait_reason") or {}).get("kind") == "callback" \
                        and (entry["id"], entry["version"]) not in told:
                    told.add((entry["id"], entry["version"]))
                    on_callback(entry)
        if flat.get(root_id, {}).get("state") in render.ENDED:
            return "ended", flat
        stopped = still.stopped(flat)
        if stopped is not None:
            return stopped, flat
        if stalled_after is not None and time.monotonic() - begun >= stalled_after \
                and (flat.get(root_id, {}).get("wait_reason") or {}).get("kind") == "stalled":
            return "stalled", flat
        if time.monotonic() >= deadline:
            return "timeout", flat
        time.sleep(POLL_SECONDS)


def ex_data_text(rt: Any, node_id: str) -> str:
    """A failed node's ``ex_data`` as text (``(no ex_data)`` when it left none)."""
    from culm import api

    return explained(rt, node_id, ex_data_of(api.get_execution_data_outputs(rt, node_id).data or {}))


NO_EX_DATA = "(no ex_data)"


def ex_data_of(outputs: dict) -> str:
    """The ``ex_data`` of a node's outputs as text (``(no ex_data)`` when there is none)."""
    ex_data = outputs.get("ex_data")
    return str(ex_data).rstrip() if ex_data not in (None, "") else NO_EX_DATA


def explained(rt: Any, node_id: str, text: str) -> str:
    """``text`` (from :func:`ex_data_of`), or for a node that failed leaving no ``ex_data``, why:
    which component's ``execute()`` or ``schedule()`` returned False (nothing is stored for it)."""
    from culm import api

    if text != NO_EX_DATA:
        return text
    note = (api.get_node_debug_info(rt, node_id).data or {}).get("failure_note")
    return f"(no ex_data: {note})" if note else text


def node_word(failed: Sequence[str]) -> str:
    """What a hint writes for the node to retry or skip: the one failed node's id (quoted for the
    shell), so that the command can be pasted as it is; ``NODE`` when several failed."""
    return shlex.quote(failed[0]) if len(failed) == 1 else "NODE"


SKIPPABLE_TYPES = ("ServiceActivity", "EmptyStartEvent")
# How the engine's refusal to copy a subprocess's outputs into its parent starts (its end event's
# ex_data): the one end event skip_node takes (culm.core.handlers.events.COPY_REFUSED).
COPY_REFUSED_TEXT = "its outputs could not be copied to the context variables"


def skippable(node_id: str, info: dict[str, tuple[str, str]], ex_data: dict[str, str]) -> bool:
    """Whether the engine skips this failed node (``culm skip``): an activity, a start event, or
    the end event of a subprocess whose outputs could not be copied into its parent."""
    text = ex_data.get(node_id, "")
    return (info.get(node_id, ("", ""))[1] in SKIPPABLE_TYPES
            or (text.startswith("pipeline ") and COPY_REFUSED_TEXT in text.split("\n", 1)[0]))


def skip_hint(live: Sequence[str], info: dict[str, tuple[str, str]], ex_data: dict[str, str], imports: str) -> str:
    """The ``, skip with ...`` part of a hint, worded for the failed nodes the engine skips ("" when
    it skips none of them: a gateway, a subprocess, an end event that failed otherwise)."""
    nodes = [n for n in live if skippable(n, info, ex_data)]
    if not nodes:
        return ""
    node = node_word(nodes)  # the one node that skips, even among several failed
    if len(nodes) > 1:
        return f", skip an activity, start event or refused subprocess end event with `culm skip {node}{imports}`"
    if info.get(nodes[0], ("", ""))[1] in SKIPPABLE_TYPES:
        return f", skip with `culm skip {node}{imports}`"
    return (f", skip the end event with `culm skip {node}{imports}` (its subprocess finishes without copying "
            "its outputs into the parent)")


def beyond_repair(flat: dict[str, dict], root_id: str, node_id: str) -> bool:
    """Whether a failed node lies inside a revoked pipeline (the root, or a subprocess around it, as
    its wait reason says): the engine refuses its retry and skip."""
    return (flat.get(root_id, {}).get("state") == "REVOKED"
            or bool((flat.get(node_id, {}).get("wait_reason") or {}).get("revoked")))


def failure_report(root_id: str, flat: dict[str, dict], info: dict[str, tuple[str, str]],
                   ex_data: dict[str, str], imports: str = "", where: str = "") -> list[str]:
    """What ``culm run`` and ``culm watch`` print of a pipeline held by failed nodes: how to go on,
    then each failed node with its ``ex_data`` (``ex_data``: by node id; ``imports``: the
    `` --import X`` a retry needs when it runs the node in its own process, and the options that
    reach the same database and workers; ``where``: the ``--db`` of the `culm status` named)."""
    failed = sorted(n for n, e in flat.items() if e["state"] == "FAILED")
    if not failed:
        return []
    root_state = flat.get(root_id, {}).get("state", "UNKNOWN")
    live = [n for n in failed if not beyond_repair(flat, root_id, n)]
    see = f"(see `culm status {shlex.quote(root_id)}{where}`)"
    if live:
        node = node_word(live)
        lines = [f"pipeline {root_id} is {root_state} with {len(failed)} failed node(s); retry with "
                 f"`culm retry {node} [--data '{{...}}']{imports}`{skip_hint(live, info, ex_data, imports)} {see}"]
    else:
        lines = [f"pipeline {root_id} is {root_state} with {len(failed)} failed node(s); revoked, they can no "
                 f"longer be retried or skipped {see}"]
    for node_id in failed:
        lines.append(f"FAILED {render.label(node_id, info)}")
        lines.extend(f"    {line}" for line in ex_data.get(node_id, NO_EX_DATA).splitlines() or [""])
    return lines


@contextmanager
def progress_by_signal(rt: Any, progress: Progress) -> Iterator[Progress | None]:
    """Progress lines from signals when this process runs the work (exact, in order), else by polling."""
    from culm import signals

    if getattr(rt, "dispatcher", None) is None or getattr(rt, "broker", None):
        yield progress
        return
    signals.post_set_state.connect(progress.on_set_state)
    try:
        yield None
    finally:
        signals.post_set_state.disconnect(progress.on_set_state)


@contextmanager
def _stops_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the wait like Ctrl-C does, so that the pipeline id and how to go on are printed."""
    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _imports_option(args: argparse.Namespace) -> str:
    """`` --import X`` for every module this run imported: a ``MODULE.py`` it ran, and ``--import``."""
    names = list(getattr(args, "imports", None) or [])
    source = getattr(args, "source", None)
    if source and str(source).endswith(".py") and source not in names:
        names.insert(0, source)
    return "".join(f" --import {name}" for name in names)


def where_options(args: argparse.Namespace, cluster: bool = True) -> str:
    """`` --db URL --broker URL --prefix P`` as this command was given them on its command line (not
    from the environment): the commands a hint names reach the same database (and, ``cluster``, the
    same workers)."""
    parts = [f" --db {shlex.quote(args.db)}" if getattr(args, "db", None) else ""]
    if not cluster:
        return parts[0]
    parts.append(f" --broker {shlex.quote(args.broker)}" if getattr(args, "broker", None) else "")
    prefix = getattr(args, "prefix", None)
    if prefix and prefix != os.environ.get("CULM_QUEUE_PREFIX", "culm"):
        parts.append(f" --prefix {shlex.quote(prefix)}")
    return "".join(parts)


def continue_hint(args: argparse.Namespace, root_id: str, cluster: bool, rt: Any = None) -> str:
    """How to go on with a run this command stops following. On a SQLite file another process (a
    `culm serve`, another `culm run`) may hold the runner lock: that process goes on with it, so
    the hint is to follow it there, not to `--attach` (which would only stand by for the lock)."""
    db = f" --db {db_url(args)}" if getattr(args, "db", None) else ""
    if cluster:
        return (f"the workers go on with it: follow it with `culm watch {root_id}{db}`, "
                f"see it with `culm status {root_id}{db}`")
    if rt is not None and getattr(rt, "dispatcher", None) is None and getattr(rt.store, "database_file", None):
        return (f"another process runs the work of {rt.store.database_file} (a `culm serve` or another "
                f"`culm run`) and goes on with it: follow it with `culm watch {root_id}{db}` "
                f"(or stop it with `culm revoke {root_id}{db}`)")
    return (f"continue it with `culm run --attach {root_id}{_imports_option(args)}{db}` "
            f"(or stop it with `culm revoke {root_id}{db}`)")


def require_components(rt: Any, root_id: str, tree: Any, doing: str, other: str = "",
                       runs: str | None = None, stops: str | None = None) -> None:
    """When this process runs the pipeline's work, every component of a node that may still run
    (not reached, waiting, or ``runs``: the node a retry or callback runs) must be registered here:
    else exit 2 before anything is done (the node would fail naming the code). A FAILED or finished
    node is left out, and ``stops`` (the node a skip or force-fail ends): they do not run again; so is
    a pipeline that is FINISHED or REVOKED, and a ``runs`` node that is: the engine refuses the command."""
    missing = missing_components(rt, root_id, tree, runs, stops)
    if missing:
        raise UsageError(f"{doing}: pipeline {root_id} uses component(s) {', '.join(missing)} that are not "
                         "registered in this process, which would run its nodes: name the modules that define "
                         f"them with --import MODULE (or $CULM_IMPORTS){other}")


def missing_components(rt: Any, root_id: str, tree: Any, runs: str | None = None,
                       stops: str | None = None) -> list[str]:
    """The codes :func:`require_components` finds missing (none when this process runs no work)."""
    from culm import api
    from culm.validator import tree_problems

    if getattr(rt, "dispatcher", None) is None or getattr(rt, "broker", None) or not isinstance(tree, dict):
        return []
    problems = [p for p in tree_problems(tree, cycle_tolerate=True) if p.message.endswith(" is not registered")]
    if not problems:
        return []
    root = (api.get_pipeline_states(rt, root_id).data or {}).get(root_id, {})
    if root.get("state") in ("FINISHED", "REVOKED"):
        return []  # nothing of it runs again: the engine's refusal (exit 5) says why, not a missing import
    flat = root.get("children") or {}
    ended = ("FINISHED", "FAILED", "REVOKED")
    return sorted({p.message.split("component ", 1)[1].rsplit(" is not registered", 1)[0] for p in problems
                   if (p.where == runs and flat.get(p.where, {}).get("state") not in ("FINISHED", "REVOKED"))
                   or (p.where != stops and flat.get(p.where, {}).get("state") not in ended)})


def conclude(rt: Any, root_id: str, info: dict[str, tuple[str, str]], outcome: str, flat: dict[str, dict],
             args: argparse.Namespace, cluster: bool) -> int:
    """Print how the run stands and return the exit code (0 only when FINISHED)."""
    root_state = flat.get(root_id, {}).get("state", "UNKNOWN")
    if outcome == "ended":
        print(f"pipeline {root_id} {root_state}")
        return EXIT_OK if root_state == "FINISHED" else EXIT_FAILED
    if outcome == "timeout":
        print(f"timed out after {args.timeout:g}s: pipeline {root_id} is {root_state}")
    elif outcome == "stalled":
        print(f"pipeline {root_id} is {root_state}, and nothing takes its work:")
    elif outcome == "waiting":
        print(f"pipeline {root_id} is {root_state} and waits:")
    for node_id, entry in sorted(flat.items()):
        reason = entry.get("wait_reason")
        if node_id != root_id and entry["state"] == "RUNNING" and not reason:
            print(f"  still RUNNING: {render.label(node_id, info)}")
        elif reason and reason["kind"] != "failed":
            print(f"  {render.label(node_id, info)}: {reason['text']}")
    failed = {n: ex_data_text(rt, n) for n, e in flat.items() if e["state"] == "FAILED"}
    imports = "" if cluster else _imports_option(args)
    for line in failure_report(root_id, flat, info, failed, imports + where_options(args), where_options(args, False)):
        print(line)
    if outcome == "waiting" and root_state == "SUSPENDED":  # `run --attach` would wait on it too
        print(f"resume it with `culm resume {shlex.quote(root_id)}{imports}{where_options(args)}` "
              f"(or stop it with `culm revoke {shlex.quote(root_id)}{where_options(args)}`)")
    elif outcome in ("timeout", "waiting", "stalled"):
        print(continue_hint(args, root_id, cluster, rt))
    return EXIT_FAILED


def print_problems(problems: Sequence[Any], info: dict[str, tuple[str, str]], out: Any) -> None:
    """One line per problem, naming the node by name and id and the CLI flag that would help."""
    for problem in problems:
        where = render.label(problem.where, info) if problem.where else "<tree>"
        message = problem.message.replace("pass cycle_tolerate=True", "pass --cycle-tolerate")
        print(f"{where}: {message}", file=out)


def _check_tree(tree: dict, info: dict[str, tuple[str, str]], cycle_tolerate: bool) -> None:
    """Embedded runs only: the tree is valid and every component it names is registered here (else
    exit 2, before any database is opened or a line says it runs)."""
    from culm.validator import tree_problems

    problems = tree_problems(tree, cycle_tolerate=cycle_tolerate)
    if not problems:
        return
    print_problems(problems, info, sys.stderr)
    missing = [p for p in problems if "component" in p.message]
    hint = (f"{len(missing)} component(s) are not registered in this process; name the modules that "
            "define them with --import MODULE (or $CULM_IMPORTS)") if missing else ""
    if len(missing) == len(problems):
        raise UsageError(hint)
    raise UsageError(f"invalid pipeline tree: {len(problems)} problem(s)" + (f"; {hint}" if hint else ""))


def cmd_run(args: argparse.Namespace) -> int:
    if args.attach:
        if args.source:
            raise UsageError("--attach ID continues a stored pipeline: give no TREE as well")
        return _attach(args)
    if not args.source:
        raise UsageError("give the pipeline to run (TREE.json or MODULE.py), or --attach ID")
    from culm import api
    from culm.model import with_new_ids

    tree = load_tree(args.source, args.imports)
    if args.new_ids:
        tree = with_new_ids(tree)
    tree = apply_settings(tree, args.settings)
    data = parse_json_object(args.data, "--data") or {}
    info = render.node_info(tree)
    root_id = tree.get("id")
    # Run here unless a cluster's workers do (see open_runtime): published with --broker, else
    # found by the relay of a live `culm worker` on a server database.
    url = db_url(args)
    cluster = bool(broker_url(args)) or (server_database(url) and workers_serve(url))
    if not cluster:
        _check_tree(tree, info, args.cycle_tolerate)
    progress = Progress(str(root_id), info)
    progress.hold()  # a refused run says so alone; the first lines wait for the "running:" one
    assert isinstance(root_id, str)
    with open_runtime(args, read_only=False, run=not cluster) as rt, progress_by_signal(rt, progress) as polled:
        cluster = workers_run(args, rt)  # a worker that came up meanwhile runs it

        def begin(left: Unfinished) -> None:
            started = api.run_pipeline(rt, tree, root_pipeline_data=data, cycle_tolerate=args.cycle_tolerate)
            left.unconfirmed = ""
            if not started.result:
                _refused_run(started, info)
            where = "submitted to the workers" if cluster else "running"
            print(f"{where}: pipeline {root_id} on {rt!r}", flush=True)
            if cluster and not broker_url(args):
                _relay_note()
            progress.release()

        return wait_and_conclude(rt, args, root_id, info, polled, cluster, begin=begin, sending="the run")


def _relay_note() -> None:
    """Work recorded on a server database without --broker while a `culm worker` serves it."""
    err("note: a `culm worker` serves this database: its relay takes up the work, CULM_RELAY_GRACE (15 s) "
        "from now; pass --broker URL (or $CULM_BROKER_URL) to hand it to the workers at once")


def _refused_run(started: Any, info: dict[str, tuple[str, str]]) -> NoReturn:
    """A run the engine did not start: an invalid tree is the caller's input (exit 2, each problem
    listed); a tree id that already ran here is the engine's refusal (exit 5)."""
    from culm.errors import InvalidOperationError

    problems = getattr(started.exc, "problems", None) or []
    if problems:
        print_problems(problems, info, sys.stderr)
        raise UsageError(f"invalid pipeline tree: {len(problems)} problem(s)")
    if isinstance(started.exc, InvalidOperationError):  # its ids ran here before
        raise Refused(f"{started.message}; pass --new-ids to run the tree again under fresh ids")
    check(started, bad_input=True)  # a database failure (exit 4), else the input (exit 2)
    raise UsageError(started.message)


@dataclass
class Unfinished:
    """What an interrupt inside :func:`wait_and_conclude` leaves: pipeline ``root_id`` unfinished,
    and, while it is set, ``unconfirmed``: the command sent to the engine whose answer has not come
    back (it may or may not be recorded)."""

    root_id: str
    unconfirmed: str = ""

    def said(self, args: argparse.Namespace, cluster: bool, rt: Any) -> str:
        db = f" --db {db_url(args)}" if getattr(args, "db", None) else ""
        unsure = (f", and whether {self.unconfirmed} was recorded is not known (`culm status {self.root_id}{db}` "
                  "shows it)") if self.unconfirmed else ""
        return (f"\ninterrupted: pipeline {self.root_id} is not finished{unsure}; "
                f"{continue_hint(args, self.root_id, cluster, rt)}")


def wait_and_conclude(rt: Any, args: argparse.Namespace, root_id: str, info: dict[str, tuple[str, str]],
                      progress: Progress | None, cluster: bool, stop_when_waiting: bool = False,
                      judge: Callable[[str, dict[str, dict]], int] | None = None,
                      stalled_after: float | None = None,
                      begin: Callable[[Unfinished], object] | None = None, sending: str = "") -> int:
    """``begin(left)`` first (what the command does and says before it follows: the run or control
    call ``sending`` names, which clears ``left.unconfirmed`` once it is answered, and the line that
    says so), then follow the pipeline, print how it stands and return the exit code:
    :func:`conclude`'s, or ``judge(outcome, flat)``'s when given (a control command's: what it
    waited for).

    Ctrl-C (or SIGTERM) from before ``begin`` to the end of the follow exits 130 saying that the
    pipeline is not finished and how to go on. Around the follow alone, an interrupt that came
    while the "resumed ..." line was written, or just after, said only "interrupted".
    """
    db = f" --db {db_url(args)}" if getattr(args, "db", None) else ""
    # On a server database that no worker serves, the callback command runs the node's schedule
    # itself (this process holds no runner lock there, as it does a SQLite file's).
    imports = _imports_option(args) if not cluster and server_database(db_url(args)) else ""

    def tell(entry: dict) -> None:
        # The run goes on waiting (up to --timeout): say what would move it on, and how.
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp} {'WAITING':<9} node {render.label(entry['id'], info)} for a callback; from another shell: "
              f"`culm callback {entry['id']} --data '{{...}}'{imports}{db}`", flush=True)

    left = Unfinished(root_id, sending)
    try:
        with _stops_on_sigterm():
            if begin is not None:
                begin(left)
            outcome, flat = follow(rt, root_id, args.timeout, progress, stop_when_waiting,
                                   on_callback=None if stop_when_waiting else tell, stalled_after=stalled_after)
    except KeyboardInterrupt:
        err(left.said(args, cluster, rt))
        return 130
    code = conclude(rt, root_id, info, outcome, flat, args, cluster)
    return code if judge is None else judge(outcome, flat)


def _attach(args: argparse.Namespace) -> int:
    from culm import api
    from culm.cli.loading import import_modules

    import_modules(import_names(args.imports))
    with open_runtime(args, read_only=True, run=True) as rt:
        cluster = workers_run(args, rt)
        root_id = args.attach
        states = check(api.get_pipeline_states(rt, root_id))
        if not states:
            pipeline = state_entry(rt, root_id).get("root_id")  # NotFound: no such id at all
            raise UsageError(f"{root_id} is a node of pipeline {pipeline}: attach the pipeline "
                             f"(`culm run --attach {pipeline}`)")
        tree = check(api.get_pipeline_tree(rt, root_id))
        info = render.node_info(tree)
        if not cluster and states[root_id]["state"] not in ("FINISHED", "REVOKED"):
            require_components(rt, root_id, tree, f"run --attach {root_id}")

        def begin(_left: Unfinished) -> None:
            if getattr(rt, "dispatcher", None) is None and not cluster:
                print(f"another process runs the work of this database; following pipeline {root_id}", flush=True)
            elif cluster and not broker_url(args):
                print(f"a `culm worker` runs the work of this database; following pipeline {root_id}", flush=True)

        with progress_by_signal(rt, Progress(root_id, info)) as polled:
            return wait_and_conclude(rt, args, root_id, info, polled, cluster, begin=begin)


def cmd_validate(args: argparse.Namespace) -> int:
    from culm.validator import tree_problems, tree_warnings

    tree = load_tree(args.source, args.imports)
    problems = tree_problems(tree, cycle_tolerate=args.cycle_tolerate)
    info = render.node_info(tree)
    print_problems(problems, info, sys.stdout)
    # Warnings (a fragment that will stay text, a condition that will not parse) never change the exit code.
    for warning in tree_warnings(tree):
        where = render.label(warning.where, info) if warning.where else "<tree>"
        print(f"warning: {where}: {warning.message}")
    if problems:
        err(f"{len(problems)} problem(s)")
        return EXIT_USAGE
    print("OK")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``run`` and ``validate`` to the ``culm`` parser."""
    run = sub.add_parser("run", help="run a pipeline to its end (embedded), or submit it to a cluster's workers")
    run.add_argument("source", nargs="?", metavar="TREE.json|MODULE.py")
    run.add_argument("--attach", type=an_id, metavar="ID", help="continue (and follow) a pipeline an earlier run left unfinished")
    add_db(run)
    add_broker(run)
    run.add_argument("--data", metavar="'{...}'",
                     help="root pipeline data (what components read from parent_data): a JSON object or @FILE")
    run.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                     help="override a context input the tree declares (--set who=world sets ${who}); repeat")
    add_imports(run)
    run.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="S",
                     help=f"stop following after S seconds (default {DEFAULT_TIMEOUT:g}); the pipeline stays")
    run.add_argument("--cycle-tolerate", action="store_true", help="allow loop-back flows")
    run.add_argument("--new-ids", action="store_true",
                     help="give the pipeline, its nodes and flows fresh ids (to run a JSON tree again)")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="list every problem of a pipeline tree (exit 2 if any)")
    validate.add_argument("source", metavar="TREE.json|MODULE.py")
    add_imports(validate)
    validate.add_argument("--cycle-tolerate", action="store_true", help="allow loop-back flows")
    validate.set_defaults(func=cmd_validate)



