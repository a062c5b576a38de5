"""Human rendering of state trees: names, durations, failures and wait reasons (with rich)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rich is imported where it draws: a control command (`culm pause`) never loads it
    from rich.tree import Tree

ENDED = frozenset({"FINISHED", "REVOKED"})
COLOURS = {"FINISHED": "green", "FAILED": "bold red", "RUNNING": "yellow", "SUSPENDED": "magenta",
           "REVOKED": "red", "READY": "cyan", "BLOCKED": "magenta"}


# Characters of a name shown: a tree's names have no length limit, and laying out long ones is
# slow (20 names of 200,000 combining accents held `culm status` for 50 s).
MAX_NAME_SHOWN = 200


def short_name(raw: Any) -> str:
    """A name as shown: cut to MAX_NAME_SHOWN characters, with how many more it has."""
    name = str(raw or "")
    if len(name) <= MAX_NAME_SHOWN:
        return name
    return f"{name[:MAX_NAME_SHOWN]}... ({len(name) - MAX_NAME_SHOWN:,} more characters)"


def node_info(tree: Any) -> dict[str, tuple[str, str]]:
    """``{id: (name, type)}`` of the pipeline, its nodes and its subprocesses' nodes (names cut
    to MAX_NAME_SHOWN characters)."""
    from culm.model import walk_tree

    info: dict[str, tuple[str, str]] = {}
    for pipe, nodes in walk_tree(tree):
        if isinstance(pipe.get("id"), str):
            info.setdefault(pipe["id"], (short_name(pipe.get("name")), "Pipeline"))
        info.update({node["id"]: (short_name(node.get("name")), short_name(node.get("type"))) for node in nodes})
    return info


def flatten(states: dict) -> dict[str, dict]:
    """Every entry of a (nested or flat) state tree, by node id."""
    flat: dict[str, dict] = {}
    stack = list(states.values())
    while stack:
        entry = stack.pop()
        flat[entry["id"]] = entry
        stack.extend((entry.get("children") or {}).values())
    return flat


def label(node_id: str, info: dict[str, tuple[str, str]]) -> str:
    """``name (id)`` or the id alone."""
    name = info.get(node_id, ("", ""))[0]
    return f"{name} ({node_id})" if name else node_id


def seconds(entry: dict) -> float | None:
    started = entry.get("started_time")
    if not isinstance(started, datetime):
        return None
    ended = entry.get("archived_time")
    end = ended.timestamp() if isinstance(ended, datetime) else time.time()
    return max(0.0, end - started.timestamp())


def span(value: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def when(value: Any) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


def state_text(state: str) -> str:
    return f"[{COLOURS.get(state, 'white')}]{state}[/]"


def _title(entry: dict, info: dict[str, tuple[str, str]]) -> str:
    from rich.markup import escape

    name, kind = info.get(entry["id"], ("", ""))
    parts = [f"[bold]{escape(name)}[/]" if name else "", f"[dim]{kind}[/]" if kind else "",
             escape(entry["id"]), state_text(entry["state"]), span(seconds(entry))]
    if entry.get("retry"):
        parts.append(f"retry={entry['retry']}")
    if (entry.get("loop") or 1) > 1:
        parts.append(f"loop={entry['loop']}")
    if entry.get("skip"):
        parts.append("[dim]skipped[/]")
    return "  ".join(p for p in parts if p)


def _ordered(children: Iterable[dict]) -> list[dict]:
    return sorted(children, key=lambda e: (e.get("created_time") is None, e.get("created_time") or 0, e["id"]))


def state_tree(root: dict, info: dict[str, tuple[str, str]], notes: dict[str, list[str]]) -> Tree:
    """A rich tree of ``root`` (a nested state entry) with ``notes`` lines under their nodes."""
    from rich.tree import Tree

    tree = Tree(_title(root, info))
    _notes(tree, root, notes)
    stack = [(tree, root)]
    while stack:
        branch, entry = stack.pop()
        for child in _ordered((entry.get("children") or {}).values()):
            sub = branch.add(_title(child, info))
            _notes(sub, child, notes)
            stack.append((sub, child))
    return tree


def waits_line(text: str) -> str:
    """``waits: <why>``; a reason that already says it waits (``waits for a callback...``) is not
    prefixed again (it read ``waits: waits for a callback``)."""
    return text if text.startswith("waits ") else f"waits: {text}"


def _notes(branch: Tree, entry: dict, notes: dict[str, list[str]]) -> None:
    from rich.text import Text

    reason = entry.get("wait_reason")
    if reason:
        branch.add(Text(waits_line(reason["text"]), style="magenta"))
    for line in notes.get(entry["id"], []):
        branch.add(Text(line, style="dim" if not line.startswith("ex_data") else "red"))


def progress_line(flat: dict[str, dict], root_id: str) -> str:
    """``12/40 nodes finished · 2 running · 1 failed · 3 waiting · 1m05s``."""
    nodes = [e for i, e in flat.items() if i != root_id]
    count = {s: sum(1 for e in nodes if e["state"] == s) for s in ("FINISHED", "RUNNING", "FAILED")}
    waiting = sum(1 for e in nodes if e.get("wait_reason") and e["state"] != "FAILED")
    parts = [f"{count['FINISHED']}/{len(nodes)} nodes finished"]
    if count["RUNNING"]:
        parts.append(f"{count['RUNNING']} running")
    if count["FAILED"]:
        parts.append(f"{count['FAILED']} failed")
    if waiting:
        parts.append(f"{waiting} waiting")
    parts.append(span(seconds(flat[root_id])) if root_id in flat else "-")
    return " · ".join(parts)
