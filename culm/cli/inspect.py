"""Read commands: ``list``, ``status`` (``show``), ``logs``, ``history`` and ``watch``."""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from culm.cli import render
from culm.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    NotFound,
    UsageError,
    a_text,
    add_db,
    add_json,
    an_id,
    check,
    check_sqlite,
    console,
    db_url,
    err,
    open_runtime,
    positive_seconds,
    print_json,
    print_table,
    shown,
    state_entry,
    whole_number,
)
from culm.cli.run import Stillness, beyond_repair, ex_data_of, explained, failure_report, node_word, skip_hint
from culm.cli.terminal import on_terminal

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class Described:
    """One pipeline (or node) as ``status`` and ``watch`` show it."""

    root_id: str
    entry: dict  # nested state entry of the described id
    flat: dict[str, dict]
    info: dict[str, tuple[str, str]]
    ex_data: dict[str, str] = field(default_factory=dict)  # of failed nodes
    outputs: dict[str, dict] = field(default_factory=dict)  # when asked for

    @property
    def notes(self) -> dict[str, list[str]]:
        """Lines shown under each node: its ex_data, its outputs."""
        notes: dict[str, list[str]] = {}
        for node_id, text in self.ex_data.items():
            lines = text.splitlines() or [""]
            notes[node_id] = [f"ex_data: {lines[0]}", *(f"         {line}" for line in lines[1:])]
        for node_id, data in self.outputs.items():
            notes.setdefault(node_id, []).extend(f"output {k} = {shown(v)}" for k, v in data.items()
                                                 if k != "ex_data" and not k.startswith("_"))
        return notes

    @property
    def failed(self) -> list[str]:
        return sorted(i for i, e in self.flat.items() if e["state"] == "FAILED")

    @property
    def outcome(self) -> int:
        """1 when a node failed or the pipeline was revoked, else 0."""
        revoked = self.flat.get(self.root_id, self.entry)["state"] == "REVOKED"
        return EXIT_FAILED if self.failed or revoked else EXIT_OK


def describe(rt: Any, target: str, outputs: bool = False) -> Described:
    """The state tree of a pipeline or node, with names, ``ex_data`` of failed nodes and outputs.

    Raises:
        NotFound: no pipeline or node has this id.
    """
    from culm import api

    states = check(api.get_pipeline_states(rt, target, flat_children=False))
    if not states:
        states = check(api.get_children_states(rt, target))
    if not states:
        raise NotFound(f"no pipeline or node with id {target} in this database")
    entry = states[target]
    root_id = entry.get("root_id") or target
    tree = api.get_pipeline_tree(rt, root_id)
    info = render.node_info(tree.data) if tree.result else {}
    flat = render.flatten(states)
    found = Described(root_id, entry, flat, info)
    for node_id, node in flat.items():
        if node["state"] != "FAILED" and not outputs:
            continue
        data = api.get_execution_data_outputs(rt, node_id).data or {}
        if node["state"] == "FAILED":
            found.ex_data[node_id] = explained(rt, node_id, ex_data_of(data))
        if outputs:
            found.outputs[node_id] = data
    return found


def as_json(found: Described) -> dict:
    """The nested state tree with each node's name and type (and ex_data, outputs) added."""
    def walk(entry: dict) -> dict:
        name, kind = found.info.get(entry["id"], ("", ""))
        out = {k: v for k, v in entry.items() if k not in ("children", "root_id:", "error_ignorable")}
        out.update(name=name, type=kind)
        if entry["id"] in found.ex_data:
            out["ex_data"] = found.ex_data[entry["id"]]
        if entry["id"] in found.outputs:
            out["outputs"] = found.outputs[entry["id"]]
        out["children"] = {k: walk(v) for k, v in (entry.get("children") or {}).items()}
        return out

    return {"id": found.entry["id"], "root_id": found.root_id, "failed": found.failed, "tree": walk(found.entry)}


# -- status -------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    with open_runtime(args) as rt:
        found = describe(rt, args.id, args.outputs)
        if args.json:
            print_json(as_json(found))
            return found.outcome
    out = console()
    out.print(render.state_tree(found.entry, found.info, found.notes))
    if found.root_id in found.flat:  # (a node's tree has no pipeline to count: no empty line for it)
        out.print(render.progress_line(found.flat, found.root_id))
    if found.failed:
        out.print(_failed_hint(rt, found), soft_wrap=True)
    note = _no_runner_note(rt, found)
    if note:
        out.print(f"[yellow]{note}[/]", soft_wrap=True)
    return found.outcome


def _failed_hint(rt: Any, found: Described) -> str:
    """How to go on from failed nodes (one: its id, so that the command can be pasted). On a SQLite
    file the retry or skip runs the pipeline on in its own process, which needs the components: the
    hint asks for the ``--import`` (status cannot know which module ``culm run`` was given); a server
    database's workers have theirs. Failed nodes inside a revoked pipeline are past retrying: the
    hint says so instead."""
    from rich.markup import escape

    root_id = found.root_id
    failed = [n for n in found.failed if not beyond_repair(found.flat, root_id, n)]
    if not failed:
        return (f"[red]{len(found.failed)} failed node(s)[/] inside a revoked pipeline: they can no longer "
                "be retried or skipped")
    imports = " --import MODULE" if getattr(rt.store, "database_file", None) else ""
    which = (" (MODULE: the module or .py file that defines the components, as given to `culm run`)"
             if imports else "")
    node, root = escape(node_word(failed)), escape(shlex.quote(root_id))
    skip = escape(skip_hint(failed, found.info, found.ex_data, imports))
    return (f"[red]{len(failed)} failed node(s)[/]: retry with `culm retry {node} [--data '{{...}}']{imports}`"
            f"{skip}, or stop with `culm revoke {root}`{which}")


def _no_runner_note(rt: Any, found: Described) -> str:
    """On a SQLite file whose runner lock nobody holds, while nodes of the pipeline are due to
    move: that nothing moves them, and how to continue ("" otherwise)."""
    root = found.flat.get(found.root_id, {})
    moving = any(e["state"] in ("READY", "RUNNING") and (e.get("wait_reason") or {}).get("kind") != "callback"
                 for n, e in found.flat.items() if n != found.root_id)
    if root.get("state") != "RUNNING" or not moving or _runner_alive(rt):
        return ""
    return (f"no process runs the work of {rt.store.database_file} now: its RUNNING nodes wait for one; "
            f"continue with `culm run --attach {found.root_id} --import MODULE`")


def _runner_alive(rt: Any) -> bool:
    """Whether a process holds the runner lock of this SQLite file (True for other databases,
    whose workers the registry tells about: `culm workers`)."""
    import fcntl

    path = getattr(rt.store, "database_file", None)
    if not path:
        return True
    try:
        with open(path + ".runner-lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a runner holds it
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    except OSError:
        return True
    return False


# -- list ---------------------------------------------------------------------------------------
def parse_when(text: str | None, flag: str) -> datetime | None:
    """``2h`` / ``30m`` / ``7d`` ago, or an ISO date or datetime (local time when no zone)."""
    if text is None:
        return None
    match = _AGE.match(text.strip())
    if match:
        try:
            return datetime.now(UTC) - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        except OverflowError:
            raise UsageError(f"{flag} {text!r}: further back than dates go (year 1)") from None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected an age such as 30m, 2h or 7d, or an ISO date "
                         "such as 2026-12-01 or 2026-12-01T08:00") from None
    return value if value.tzinfo else value.astimezone()


def _states_option(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    for value in values:  # "" or "RUNNING," would filter on no state, or quietly on fewer
        if not all(part.strip() for part in value.split(",")):
            raise UsageError(f"--state {value!r}: expected STATE or STATE,STATE,... with no empty state")
    return [s.strip().upper() for v in values for s in v.split(",")]


def cmd_list(args: argparse.Namespace) -> int:
    from culm import api

    if not 0 <= args.limit <= 1000:
        raise UsageError(f"--limit {args.limit}: expected a number of pipelines from 0 to 1000")
    if args.offset < 0:
        raise UsageError(f"--offset {args.offset}: expected 0 or more")
    since, before = parse_when(args.since, "--since"), parse_when(args.before, "--before")  # mistakes first
    missing = _missing_database(args)
    with open_runtime(args) if missing is None else _no_database(missing) as rt:
        found = check(api.list_pipelines(
            rt, state=_states_option(args.state), name=args.name, created_after=since,
            created_before=before, limit=args.limit, offset=args.offset,
        ), bad_input=True)
        from culm.core import waits

        # The same fields as the REST list API's items (failed_node_list, callback_nodes...).
        waits.mark_list_items(rt.store, found["items"])
    if args.json:
        print_json({**found, "limit": args.limit, "offset": args.offset})
        return EXIT_OK
    marks = _marks(found["items"])
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "STATE", "CREATED", "DURATION"):
        table.add_column(column)
    for item in found["items"]:
        table.add_row(item["id"], item["name"] or "-", render.state_text(item["state"]) + marks.get(item["id"], ""),
                      render.when(item["created_time"]), render.span(render.seconds(item)))
    out = console()
    if found["items"]:
        print_table(table)
    counts = " · ".join(f"{render.state_text(s)} {n}" for s, n in sorted(found["counts"].items()))
    shown = f"{args.offset + 1}-{args.offset + len(found['items'])}" if found["items"] else "none"
    # The counts ignore --state (they say what the other states hold): say so when it filtered.
    where = "in every state: " if args.state else ""
    out.print(f"{found['total']} pipeline(s), showing {shown}" + (f"   {where}{counts}" if counts else ""))
    return EXIT_OK


def _missing_database(args: argparse.Namespace) -> NotFound | None:
    """Why there is no SQLite file where ``list`` looks; None when there is one (or a server)."""
    try:
        check_sqlite(db_url(args), read_only=True)
    except NotFound as missing:
        return missing
    return None


@contextlib.contextmanager
def _no_database(missing: NotFound) -> Iterator[Any]:
    """No file, no pipeline: ``list`` answers as on a new database (exit 0; its options checked as
    there), with a note on stderr saying why, for a mistyped path. Only an id that is not there is
    "not found" (exit 3). Nothing is created."""
    import culm

    err(f"note: {missing}")
    with culm.Runtime("memory://", workers=0) as rt:
        yield rt


def _marks(items: list[dict]) -> dict[str, str]:
    """What each RUNNING pipeline of ``items`` waits on, to follow its state: its failed nodes
    (bamboo keeps such a pipeline RUNNING) and those that wait for a callback, each by name and id
    (the id is what `culm retry` or `culm callback` takes), as the console's list shows them."""
    from rich.markup import escape

    marks: dict[str, str] = {}
    for item in items:
        parts = []
        if item.get("failed_node_list"):
            failed = escape(_some(item["failed_node_list"], item["failed_nodes"]))
            parts.append(f"[red]{item['failed_nodes']} failed: {failed}[/]")
        if item.get("callback_nodes"):
            parts.append(f"waits for a callback: {escape(_some(item['callback_nodes'], item['callback_node_count']))}")
        if parts:
            marks[item["id"]] = f" ({'; '.join(parts)})"
    return marks


def _some(nodes: list[dict], total: int) -> str:
    """``name (id)`` of the first few of ``nodes`` (of ``total``), then how many more."""
    from culm.core.waits import NAMED_IN_A_LIST

    shown = [f"{render.short_name(n['name'])} ({n['node_id']})" if n["name"] else n["node_id"]
             for n in nodes[:NAMED_IN_A_LIST]]
    more = total - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


# -- logs and history ---------------------------------------------------------------------------
def _node_entry(rt: Any, node_id: str, command: str, what: str) -> dict:
    """The state entry of a node; a pipeline's id is a usage mistake (exit 2) that says what to do."""
    entry = state_entry(rt, node_id)
    if entry.get("root_id") == node_id:
        raise UsageError(f"{node_id} is a pipeline: its nodes keep {what} (`culm status {node_id}` lists "
                         f"them; then `culm {command} NODE`)")
    return entry


def cmd_logs(args: argparse.Namespace) -> int:
    from culm import api

    with open_runtime(args) as rt:
        entry = _node_entry(rt, args.node, "logs", "the logs")
        limit = args.limit or LOG_PAGE_LINES
        page = check(api.get_node_log_page(rt, args.node, args.version, args.offset, limit))
        if args.version and not page["total"]:
            runs = check(api.get_node_histories(rt, args.node)) or []
            known = [entry.get("version"), *(h.get("version") for h in runs)]
            if args.version not in known:
                raise NotFound(f"node {args.node} has no version {args.version} (its versions: "
                               f"{', '.join(str(v) for v in known if v)}; see `culm history {args.node}`)")
        for line in page["lines"]:
            print(line, flush=True)
        seen = page["offset"] + len(page["lines"])
        _say_left_out(args.node, page, seen)
        if not args.follow:
            if not page["total"]:  # on stderr: a script reading the lines reads none
                err(f"node {args.node} logged nothing" + (f" in version {args.version}" if args.version else ""))
            return EXIT_OK
        while True:
            entry = check(api.get_children_states(rt, args.node)).get(args.node, {})
            page = check(api.get_node_log_page(rt, args.node, args.version, seen, LOG_PAGE_LINES))
            for line in page["lines"]:
                print(line, flush=True)
            seen += len(page["lines"])
            if len(page["lines"]) == LOG_PAGE_LINES:
                continue  # more may be there already
            if entry.get("state") in ("FINISHED", "FAILED", "REVOKED") or (entry.get("wait_reason") or {}).get(
                    "kind") in ("failed", "paused", "pause_appointed"):
                return EXIT_OK
            time.sleep(args.interval)


# Lines one read of `culm logs` prints (and the most --limit takes): the API's page bound.
LOG_PAGE_LINES = 20_000


def _say_left_out(node_id: str, page: dict, end: int) -> None:
    """On stderr (a script reads only lines): which lines of the run were not printed, and how to."""
    first, total = page["offset"], page["total"]
    if first == 0 and end >= total:
        return
    err(f"lines {first + 1:,}-{end:,} of {total:,} logged by node {node_id} (version {page['version']}); "
        + (f"the next: --offset {end}" if end < total else f"the earlier: --offset 0 --limit {min(first, LOG_PAGE_LINES)}"))


def _loop_number(text: str) -> int:
    """An argparse type: a loop number, 1 or more (-1, the default, means every loop)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a loop number, 1 or more, not {text!r}") from None
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"expected a loop number, 1 or more (loops count from 1), not {value}")
    return value


def cmd_history(args: argparse.Namespace) -> int:
    from culm import api

    with open_runtime(args) as rt:
        _node_entry(rt, args.node, "history", "their earlier runs")
        records = check(api.get_node_histories(rt, args.node, args.loop))
    if args.json:
        print_json(records)
        return EXIT_OK
    if not records:
        loop = f" in loop {args.loop}" if args.loop != -1 else ""
        print(f"node {args.node} has no earlier runs{loop} (histories are kept when a node is retried or looped)")
        return EXIT_OK
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("LOOP", "RETRY", "STARTED", "DURATION", "SKIPPED", "EX_DATA"):
        table.add_column(column)
    for h in records:
        ex_data = str((h.get("outputs") or {}).get("ex_data") or "").splitlines()
        table.add_row(str(h["loop"]), str(h["retry"]), render.when(h["started_time"]), render.span(render.seconds(h)),
                      "yes" if h["skip"] else "", ex_data[0] if ex_data else "")
    print_table(table)
    return EXIT_OK


# -- watch --------------------------------------------------------------------------------------
def cmd_watch(args: argparse.Namespace) -> int:
    with open_runtime(args) as rt:
        found = describe(rt, args.id)
        if found.entry["id"] != found.root_id:
            raise UsageError(f"{args.id} is a node of pipeline {found.root_id}: watch the pipeline "
                             f"(`culm watch {found.root_id}`)")
        note = _no_runner_note(rt, found)
        if note:
            err(f"note: {note}")
        if on_terminal():
            return _watch_live(rt, args, found)
        return _watch_lines(rt, args, found)


def _ended(found: Described, still: Stillness) -> bool:
    """The pipeline ended, or stopped with nothing running but failed nodes (bamboo keeps it
    RUNNING then); a pipeline that waits (a callback, a poll, a pause) is watched on."""
    return found.entry["state"] in render.ENDED or still.stopped(found.flat) == "failed"


def _conclude(rt: Any, found: Described) -> int:
    """The failed nodes with their ex_data, as ``culm run`` prints them; the exit code. The retry and
    skip it suggests ask for ``--import`` where ``culm status`` does (a new user's trial: the hint
    without it led straight to exit 2, "name the modules that define them with --import")."""
    imports = " --import MODULE" if getattr(rt.store, "database_file", None) else ""
    for line in failure_report(found.root_id, found.flat, found.info, found.ex_data, imports):
        print(line, flush=True)
    return found.outcome


def _watch_live(rt: Any, args: argparse.Namespace, found: Described) -> int:
    from rich.console import Group
    from rich.live import Live

    def view(f: Described) -> Group:
        return Group(render.state_tree(f.entry, f.info, f.notes), render.progress_line(f.flat, f.root_id))

    still = Stillness(waiting_moves=True)
    with Live(view(found), console=console(), refresh_per_second=4) as live:
        while not _ended(found, still):
            time.sleep(args.interval)
            found = describe(rt, args.id)
            live.update(view(found))
    return _conclude(rt, found)


def _wait_key(reason: dict | None) -> Any:
    """What makes a wait new for ``culm watch``: a stalled step or an overdue poll says how many
    seconds it has been due, and that count alone (a new text every second) is no change."""
    if not reason:
        return ""
    if reason.get("kind") == "stalled":
        return ("stalled", str(reason.get("since")), tuple(reason.get("nodes") or ()))
    if reason.get("overdue"):
        return ("overdue", reason.get("kind"), str(reason.get("next_poll")), reason.get("polls"))
    return reason.get("text", "")


def _watch_lines(rt: Any, args: argparse.Namespace, found: Described) -> int:
    """One line per state change (and a progress line now and then) when stdout is not a terminal."""
    last: dict[str, tuple[str, Any]] = {}
    progress_at = time.monotonic()
    still = Stillness(waiting_moves=True)
    while True:
        for node_id, entry in sorted(found.flat.items(), key=lambda kv: str(kv[1].get("created_time"))):
            reason = entry.get("wait_reason") or {}
            seen = (entry["state"], _wait_key(reason))
            if last.get(node_id) != seen:
                last[node_id] = seen
                waits = f" — {render.waits_line(reason['text'])}" if reason.get("text") else ""
                print(f"{datetime.now().strftime('%H:%M:%S')} {entry['state']:<9} "
                      f"{render.label(node_id, found.info)}{waits}", flush=True)
        if _ended(found, still):
            print(render.progress_line(found.flat, found.root_id), flush=True)
            return _conclude(rt, found)
        if time.monotonic() - progress_at >= args.progress_every:
            progress_at = time.monotonic()
            print(render.progress_line(found.flat, found.root_id), flush=True)
        time.sleep(args.interval)
        found = describe(rt, args.id)


# -- parser -------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add the read commands to the ``culm`` parser."""
    p = sub.add_parser("list", help="list pipelines, newest first, with counts per state")
    p.add_argument("--state", action="append", metavar="STATE",
                   help="only these states (RUNNING, FINISHED, REVOKED, SUSPENDED...); repeat or comma-separate")
    p.add_argument("--name", metavar="TEXT", type=a_text("a part of a pipeline name"), help="only pipelines whose name contains TEXT (any case)")
    p.add_argument("--since", metavar="AGE|DATE", help="created at most this long ago (30m, 2h, 7d) or since DATE")
    p.add_argument("--before", metavar="AGE|DATE", help="created before this age or DATE")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N pipelines (default 50, max 1000)")
    p.add_argument("--offset", type=int, default=0, metavar="N", help="pass over the N newest first")
    add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_list)

    for name, aliases in (("status", ["show"]),):
        p = sub.add_parser(name, aliases=aliases,
                           help="the state tree of a pipeline or node: names, durations, failures, waits")
        p.add_argument("id", type=an_id, metavar="ID", help="pipeline or node id")
        p.add_argument("--outputs", action="store_true", help="show every node's outputs")
        add_db(p)
        add_json(p)
        p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="the lines a node's component logged")
    p.add_argument("node", type=an_id, metavar="NODE")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the node stops")
    p.add_argument("--version", metavar="V", type=a_text("a version"), help="a run's version (default: the current one)")
    p.add_argument("--offset", type=whole_number(0, "a line number, 0 or more"), metavar="N",
                   help="print from line N (0-based; default: the last --limit lines)")
    p.add_argument("--limit", type=whole_number(1, f"a number of lines, 1 to {LOG_PAGE_LINES}", LOG_PAGE_LINES), metavar="N",
                   help=f"print at most N lines (1 to {LOG_PAGE_LINES:,}, the default; fewer past 8,000,000 characters)")
    p.add_argument("--interval", type=positive_seconds, default=0.5, metavar="S", help=argparse.SUPPRESS)
    add_db(p)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("history", help="earlier runs of a node (retries and loops)")
    p.add_argument("node", type=an_id, metavar="NODE")
    p.add_argument("--loop", type=_loop_number, default=-1, metavar="N", help="only loop N (1 or more)")
    add_db(p)
    add_json(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("watch", help="follow a pipeline live until it ends or only failed nodes hold it")
    p.add_argument("id", type=an_id, metavar="ID")
    p.add_argument("--interval", type=positive_seconds, default=0.5, metavar="S", help="seconds between refreshes")
    p.add_argument("--progress-every", type=positive_seconds, default=10.0, metavar="S",
                   help="without a terminal: print a progress line every S seconds")
    add_db(p)
    p.set_defaults(func=cmd_watch)
