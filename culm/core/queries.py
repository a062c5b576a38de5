"""Read-only views: states, data, histories, logs, debug information."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from culm._printable import log_line
from culm.core import data as cdata
from culm.core import states, waits
from culm.core.engine import Engine
from culm.core.ports import Unit
from culm.core.records import ENGINE_MARKERS, StateRecord, TaskRecord, public_outputs
from culm.core.state_tree import Tree
from culm.errors import NodeNotReachedError, NotFoundError
from culm.model import compiled as g
from culm.model import limits


def _time(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


def state_entry(st: StateRecord, root_is_self: bool = False) -> dict[str, Any]:
    """One state in bamboo's result shape (misspelt ``root_id:`` key included on purpose)."""
    entry = kept_entry(st, root_is_self)
    entry["children"] = {}
    return entry


class _Entry:
    """Nothing but its instances' attribute dicts, which are the entries (:func:`kept_entry`)."""


def kept_entry(st: StateRecord, root_is_self: bool, before: tuple[StateRecord, dict[str, Any]] | None = None,
               ) -> dict[str, Any]:
    """:func:`state_entry` without its ``children`` dict (None): the kept trees hold these, and a
    dict holding no container is one the garbage collector never scans (:mod:`culm.core.state_tree`).

    ``before``: the record and entry kept for this node until now; their datetimes are reused
    where the times are the same (a node that ended keeps its created and started times).

    The entry is a plain ``dict``, but an instance's attribute dict, filled key by key: CPython
    then keeps its keys in one table shared by every entry (a "split" dict), and its ``copy()``
    (each poll copies every entry it hands out) copies the 16 values only, not the key table,
    and gives a split dict too (docs/performance.md, big21: -12 % instructions for an idle poll
    of 1,004 nodes). Only the speed depends on it: a caller may change or extend its copies.
    """
    parent = st.node_id if root_is_self else st.parent_id
    if before is not None and before[0].created_time == st.created_time:
        created = before[1]["created_time"]
    else:
        created = _time(st.created_time)
    # A node's first run starts as its row is created: one (immutable) datetime serves both.
    if st.started_time == st.created_time:
        started = created
    elif before is not None and before[0].started_time == st.started_time:
        started = before[1]["started_time"]
    else:
        started = _time(st.started_time)
    # (A literal, or update() with one, would make a dict with a key table of its own.)
    entry = _Entry().__dict__
    entry["id"] = st.node_id
    entry["state"] = st.name
    entry["root_id:"] = entry["root_id"] = st.root_id
    entry["parent_id"] = parent
    entry["version"] = st.version
    entry["loop"] = st.loop
    entry["retry"] = st.retry
    entry["skip"] = st.skip
    entry["error_ignorable"] = entry["error_ignored"] = st.error_ignored
    entry["created_time"] = created
    entry["started_time"] = started
    entry["archived_time"] = _time(st.archived_time)
    entry["children"] = entry["wait_reason"] = None
    return entry


def _add_wait_reasons(facts: waits.WaitFacts, root: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
    """Set ``wait_reason`` on the entries of nodes that wait (see :mod:`culm.core.waits`)."""
    if not facts.candidates:
        return
    for node_id, reason in waits.wait_reasons(facts).items():
        entry = root if node_id == root["id"] else entries.get(node_id)
        if entry is not None:
            entry["wait_reason"] = reason


def _hand_out_reasons(reasons: dict[str, dict[str, Any]], root: dict[str, Any],
                      entries: dict[str, dict[str, Any]]) -> None:
    """Set ``wait_reason`` on the entries from ``reasons`` kept with a tree: each a copy (with
    copies of its lists: ``branches``, ``nodes``), so a caller that changes its result changes
    nothing the next poll hands out. The other values are str, int, bool, None or datetime."""
    for node_id, reason in reasons.items():
        entry = root if node_id == root["id"] else entries.get(node_id)
        if entry is not None:
            out = entry["wait_reason"] = reason.copy()
            for key, value in out.items():
                if type(value) is list:
                    out[key] = value.copy()


def _kept_reasons(engine: Engine, unit: Unit, root_id: str, tree: Tree,
                  execute_tasks: list[TaskRecord] | None) -> tuple[dict[str, dict[str, Any]], bool]:
    """The wait reasons of a kept tree's pipeline, ``{node_id: reason}``, and whether they are
    kept with the tree (then what is handed out must be copies).

    A poll that finds the tree as an earlier one left it (the feed named none of its nodes: the
    same Tree and kept facts) reuses the reasons made then, when they may serve again
    (WaitFacts.reusable: none counts time or rests on rows without a feed, such as poll and
    timeout tasks): it makes no facts and no reasons. Only the stalled check, which counts time
    and reads tasks, is made at every poll once it is due (waits.stalled_since). Reasons are kept
    from a tree's second poll on: a moving pipeline's polls each see a new tree once, and pay
    nothing for keeping (nor for copying) reasons no later poll would reuse."""
    kept = tree.reasons
    facts_kept = tree.facts
    seen = kept is not None and kept[0] is facts_kept and kept[1] is facts_kept.processes
    if seen and kept is not None and kept[2] is not None:
        reasons, alive_root, stall_at = kept[2], kept[3], kept[4]
    elif not seen:  # the first poll of this tree: made as before, the stalled check included
        facts = _kept_wait_facts(engine, unit, root_id, tree, execute_tasks, stalled=True)
        # (A first sight of reusable facts is noted: the next poll of the same tree keeps them.)
        tree.reasons = (facts_kept, facts_kept.processes, None, None, 0.0) if facts.reusable else None
        return (waits.wait_reasons(facts) if facts.candidates else {}), False
    else:  # the second: made without the stalled check, and kept (the check made below)
        facts = _kept_wait_facts(engine, unit, root_id, tree, execute_tasks, stalled=False)
        reasons = waits.wait_reasons(facts) if facts.candidates else {}
        alive_root = facts.alive_root
        # (The same rows as read_facts' own check: the tree's may_wait, set by _kept_wait_facts.)
        stall_at = waits.stalled_since(tree.may_wait or (), tree.records.get(root_id)) if alive_root else 0.0
        # (Kept only while the facts still say they may be: a fact that can change without a feed row
        # makes them unreusable, and then every poll makes them again.)
        tree.reasons = (facts_kept, facts_kept.processes, reasons, alive_root, stall_at) if facts.reusable else None
    if alive_root is not None and time.time() >= stall_at and alive_root not in reasons:
        note = waits.stalled_note(unit, alive_root, execute_tasks)
        if note is not None:
            reasons = {**reasons, alive_root: note}  # (a copy: the kept reasons stay as made)
    return reasons, True


def _kept_wait_facts(engine: Engine, unit: Unit, root_id: str, tree: Tree,
                     execute_tasks: list[TaskRecord] | None, stalled: bool) -> waits.WaitFacts:
    """Wait facts for a pipeline whose rows came from the kept trees (current as of this unit's
    reads): only the other rows the waiting nodes need are read (none for a finished pipeline);
    ``execute_tasks``: the pipeline's EXECUTE tasks when they were read with the rows."""
    if tree.may_wait is None:  # a tree read in full (a refresh carries them over: culm.core.state_tree)
        may_wait = waits.MAY_WAIT
        tree.may_wait = [r for r in tree.records.values() if r.name in may_wait]
    # Before any fork no process has branches (culm.core.waits.read_facts); a graph not compiled
    # here (another process runs the pipeline) is not read just for that: the processes are.
    # Asked only when no processes are kept (an idle poll keeps them and pays nothing for this).
    records = tree.records
    forked = True
    if tree.facts.processes is None:
        graph = engine.known_graph(root_id)
        forked = graph is None or any(node_id in records for node_id in graph.forks)
    return waits.read_facts(unit, tree.may_wait, root=records.get(root_id), timed=_timed(engine, unit),
                            kept=tree.facts, execute_tasks=execute_tasks, forked=forked, stalled=stalled)


def _timed(engine: Engine, unit: Unit) -> Callable[[str], Collection[str]]:
    """``timed(root_id)``: the activities of that pipeline with an enabled timeout."""
    return lambda root_id: engine.graph(root_id, unit).timed


def pipeline_states(engine: Engine, root_id: str, flat_children: bool = True) -> dict[str, Any]:
    with engine.store.reading() as unit:
        # Shared with the kept trees (culm.core.state_tree): each entry handed out is a copy.
        tree, execute_tasks = engine.state_trees.tree(unit, root_id, kept_entry)
        kept = tree.entries
        if root_id not in kept:
            return {}
        reasons, shared = _kept_reasons(engine, unit, root_id, tree, execute_tasks)
    # A copy of the kept dict: sized and keyed already, each key's value is then only replaced.
    # An entry's copy() copies its values (kept_entry; a {**entry} literal inserts key by key, a
    # third slower); the root is taken out after the loop rather than compared with at every node.
    children = kept.copy()
    for node_id, e in kept.items():
        out = children[node_id] = e.copy()
        out["children"] = {}
    entry = children.pop(root_id)
    if flat_children:
        entry["children"] = children
    else:
        for node_id, e in children.items():
            parent = e["parent_id"]
            holder = entry if parent == root_id else children.get(parent, entry)
            holder["children"][node_id] = e
    if shared:
        _hand_out_reasons(reasons, entry, children)
    else:  # made for this poll alone
        for node_id, reason in reasons.items():
            waiting = entry if node_id == root_id else children.get(node_id)
            if waiting is not None:
                waiting["wait_reason"] = reason
    return {root_id: entry}


def children_states(engine: Engine, node_id: str) -> dict[str, Any]:
    with engine.store.reading() as unit:
        st = unit.get_state(node_id)
        if st is None:
            return {}
        kids = [k for k in unit.states_of_parent(node_id) if k.node_id != node_id]
        root = unit.get_state(st.root_id) if st.root_id and st.root_id != node_id else None
        facts = waits.read_facts(unit, [st, *kids], root, timed=_timed(engine, unit),
                                 ancestors=_ancestors(unit, st, kids))
    entry = state_entry(st, root_is_self=st.root_id == node_id)
    # bamboo's get_children_states gives the asked node's root id as its parent_id, whatever its
    # depth (a subprocess inside another one says the root, not the subprocess holding it);
    # code that walks these entries by parent_id was written against that.
    entry["parent_id"] = st.root_id
    entry["children"] = {k.node_id: state_entry(k) for k in kids}
    _add_wait_reasons(facts, entry, entry["children"])
    return {node_id: entry}


# Subprocesses nest at most this deep in what a reader walks up (as culm.core.waits._revoked_in).
MAX_NESTING = 64


def _ancestors(unit: Unit, st: StateRecord, kids: list[StateRecord]) -> list[StateRecord]:
    """The states of the subprocesses between ``st`` and its root, read only when a failed or
    waiting node among ``st`` and ``kids`` needs them: one of them revoked parks it for good (a
    FAILED node under a revoked inner subprocess can no longer be retried or skipped)."""
    if not any(k.name in (states.FAILED, states.RUNNING) for k in (st, *kids)):
        return []
    found: list[StateRecord] = []
    parent = st.parent_id
    while parent and parent != st.root_id and parent != st.node_id and len(found) < MAX_NESTING:
        above = unit.get_state(parent)
        if above is None:
            break
        found.append(above)
        parent = above.parent_id
    return found


def execution_data(engine: Engine, node_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A node's stored inputs and outputs, an end event's without the engine's markers (:func:`_shown`)."""
    with engine.store.reading() as unit:
        found = unit.get_execution_data(node_id)
        return (found[0], _shown(engine, unit, node_id, found[1])) if found else None


def _shown(engine: Engine, unit: Unit, node_id: str, outputs: Any) -> Any:
    """``outputs`` of node ``node_id`` as the public reads show them: an end event's without the
    engine's markers (records.public_outputs: they live only there), any other node's as stored,
    a user's outputs of the same names included (all of them were hidden in session 20). The
    node's type is read only when such a name is there."""
    if not isinstance(outputs, dict) or not any(key in outputs for key in ENGINE_MARKERS):
        return outputs
    root_id = unit.node_root(node_id)
    node = engine.graph(root_id, unit).nodes.get(node_id) if root_id is not None else None
    return public_outputs(outputs) if node is not None and node.type in (g.END, g.EXECUTABLE_END) else outputs


def _reached_root(unit: Unit, node_id: str, what: str) -> tuple[str, StateRecord]:
    """The root id and state of a node a process has reached. A node only in a stored tree is
    refused as the contract says (bamboo answers ``get_data`` from its data rows)."""
    root_id = unit.node_root(node_id)
    if root_id is None:
        raise NotFoundError(f"node {node_id} does not exist")
    st = unit.get_state(node_id)
    if st is None:
        root = unit.get_state(root_id)
        if root is not None and root.name in (states.FINISHED, states.REVOKED):
            # No process will reach it: a branch the pipeline did not take, or one it left when revoked.
            raise NodeNotReachedError(
                f"node {node_id} was not reached: its pipeline {root_id} ended ({root.name}) without reaching "
                f"it, so it has no {what}; get_pipeline_tree({root_id}) shows its definition")
        raise NodeNotReachedError(
            f"node {node_id} has not been reached yet (it has no state): it is in pipeline {root_id}'s tree, "
            f"and its {what} can be read once a process reaches it; get_pipeline_tree({root_id}) shows its "
            f"definition")
    return root_id, st


def raw_data(engine: Engine, node_id: str) -> dict[str, Any]:
    with engine.store.reading() as unit:
        root_id, _st = _reached_root(unit, node_id, "data")
        if root_id == node_id:
            root_data = unit.get_root_data(root_id)
            return {"inputs": {k: {"need_render": False, "value": v} for k, v in root_data.items()}, "outputs": {}}
        graph = engine.graph(root_id, unit)
        node = graph.nodes[node_id]
        override = unit.get_inputs_override(node_id)
    raw = override if override is not None else cdata.refer_lazy_inputs(node, cdata.node_inputs(node))
    render, _escape = cdata.split_inputs(raw)
    # A lazy input refers to the context variable that holds it, as bamboo shows it.
    inputs = {k: {"need_render": k in render,
                  "value": (v.get("context_key") or v.get("value")) if isinstance(v, dict) else v}
              for k, v in raw.items()}
    outputs = dict(cdata.output_mapping(graph, node))
    return {"inputs": inputs, "outputs": outputs}


def histories(engine: Engine, node_id: str, loop: int = -1, short: bool = False) -> list[dict[str, Any]]:
    with engine.store.reading() as unit:
        records = unit.histories(node_id, loop, 0 if short else limits.MAX_HISTORY_READ_CHARS)
        shown = [_shown(engine, unit, node_id, h.outputs) for h in records] if not short else []
    out = []
    for i, h in enumerate(records):
        # Keys in the contract's order; a short history is the same without retry, inputs, outputs.
        item: dict[str, Any] = {
            "id": h.id, "node_id": h.node_id, "started_time": _time(h.started_time),
            "archived_time": _time(h.archived_time), "loop": h.loop,
        }
        if not short:
            item["retry"] = h.retry
        item.update(skip=h.skip, version=h.version)
        if not short:
            item.update(inputs=h.inputs, outputs=shown[i])
            if h.left_out is not None:
                item["left_out"] = (
                    f"inputs and outputs ({h.left_out:,} characters stored) left out: one read returns the newest "
                    f"histories' within {limits.MAX_HISTORY_READ_CHARS:,} characters "
                    f"(culm.model.limits.MAX_HISTORY_READ_CHARS); read one loop's with loop={h.loop}")
        out.append(item)
    return out


def node_logs(engine: Engine, node_id: str, version: str | None = None) -> str:
    """The run's lines as one text: all of them, or the last ones within the page bounds
    (limits.MAX_LOG_PAGE_LINES / MAX_LOG_PAGE_CHARS) under a first line saying how many were left
    out and how to page them."""
    page = node_log_page(engine, node_id, version, None, limits.MAX_LOG_PAGE_LINES)
    lines = page["lines"]
    if page["offset"]:
        lines = [f"[culm: the first {page['offset']:,} of {page['total']:,} lines of node {node_id} "
                 f"(version {page['version']}) are left out: one read returns at most "
                 f"{limits.MAX_LOG_PAGE_LINES:,} lines / {limits.MAX_LOG_PAGE_CHARS:,} characters; page them with "
                 f"culm.api.get_node_log_page(runtime, node_id, version, offset, limit), "
                 f"`culm logs NODE --offset N`, or GET /api/v1/nodes/{{id}}/logs?offset=N&limit=M]", *lines]
    return "\n".join(lines)


def node_log_page(engine: Engine, node_id: str, version: str | None, offset: int | None,
                  limit: int) -> dict[str, Any]:
    """Up to ``limit`` lines of a run from line ``offset`` (0-based; None: the last ones), fewer when
    they pass limits.MAX_LOG_PAGE_CHARS: ``{"node_id", "version", "total", "offset", "lines"}``,
    ``offset`` being the first line's number."""
    with engine.store.reading(snapshot=True) as unit:  # the count and the lines of one moment
        if version is None:
            st = unit.get_state(node_id)
            version = st.version if st is not None else None
        total = unit.log_count(node_id, version) if version is not None else 0
        if offset is None:
            first, lines = _last_lines(unit, node_id, version, total, limit) if total else (0, [])
        else:
            first, lines = offset, _lines_from(unit, node_id, version, offset, min(limit, max(total - offset, 0)), total)
    # As the process log shows them (culm._printable.log_line): a line a component logged
    # cannot forge others after it (a newline in a message, a traceback's own lines are indented)
    # nor steer the terminal of whoever reads it (`culm logs`, curl of the REST endpoint).
    return {"node_id": node_id, "version": version, "total": total, "offset": first,
            "lines": [log_line(line) for line in lines]}


def _lines_from(unit: Unit, node_id: str, version: str | None, first: int, count: int, total: int) -> list[str]:
    budget, at = limits.MAX_LOG_PAGE_CHARS, first
    out: list[str] = []
    while len(out) < count:
        n = min(limits.LOG_READ_CHUNK, count - len(out))
        chunk = unit.logs_at(node_id, version or "", at, n)
        if chunk is None:
            # Lines stored unnumbered: an offset passes over the lines before it (past the
            # middle, from the end is shorter).
            chunk = (unit.last_logs(node_id, version or "", total - at - n, n) if at > total // 2
                     else unit.logs(node_id, version or "", at, n))
        for line in chunk:
            budget -= len(line) + 1
            if budget < 0 and out:
                return out
            out.append(line)
        if not chunk:
            break
        at += len(chunk)
    return out


def _last_lines(unit: Unit, node_id: str, version: str | None, total: int, count: int) -> tuple[int, list[str]]:
    budget, kept, at = limits.MAX_LOG_PAGE_CHARS, 0, total
    chunks: list[list[str]] = []
    while kept < count and at > 0:
        start = max(at - limits.LOG_READ_CHUNK, total - count, 0)
        chunk = unit.last_logs(node_id, version or "", total - at, at - start)
        for i in range(len(chunk) - 1, -1, -1):
            budget -= len(chunk[i]) + 1
            if budget < 0 and (kept or i < len(chunk) - 1):
                chunks.append(chunk[i + 1:])
                return start + i + 1, [line for c in reversed(chunks) for line in c]
        chunks.append(chunk)
        kept += len(chunk)
        at = start
    return at, [line for c in reversed(chunks) for line in c]


class Record(dict[str, Any]):
    """A dict whose keys also read as attributes: bamboo answers debug queries with objects
    (``ContextValue``, ``ProcessInfo``) and code written for it reads ``cv.key``, ``p.process_id``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def pipeline_debug_info(engine: Engine, pipeline_id: str) -> dict[str, Any]:
    with engine.store.reading() as unit:
        root_id = unit.node_root(pipeline_id)
        if root_id is None:
            raise NotFoundError(f"pipeline {pipeline_id} does not exist")
        ctx = unit.get_context(pipeline_id)
        procs = unit.processes_of_root(root_id)
    context_values = [
        Record(key=v.key, type=v.type, value=v.value, code=v.code, references=sorted(v.references))
        for v in ctx.values() if not v.key.startswith(cdata.LOOP_TIMES_PREFIX)  # engine bookkeeping
    ]
    return {
        "context_values": context_values,
        # bamboo's key is misspelt; code written for bamboo reads it (same list).
        "contex_values": context_values,
        "processes": [
            Record(process_id=p.id, parent_id=p.parent_id, root_pipeline_id=p.root_id,
                   current_node=p.current_node_id, destination_id=p.destination_id, pipeline_stack=p.stack,
                   asleep=p.asleep, suspended=p.suspended, suspended_by=p.suspended_by, dead=p.dead,
                   ack_num=p.ack_num, need_ack=p.need_ack)
            for p in procs
        ],
    }


def silent_failure(unit: Unit, st: StateRecord, raw: dict[str, Any] | None,
                   outputs: dict[str, Any] | None) -> str | None:
    """Why a FAILED service activity left no ``ex_data`` (its component returned False from
    ``execute()`` or ``schedule()`` without setting one; as in bamboo, nothing is stored for it), or
    None when it left one or is no such node. Said for people: the stored outputs stay as they are."""
    if st.name != states.FAILED or not raw or raw.get("type") != "ServiceActivity":
        return None
    outputs = outputs or {}
    if outputs.get("ex_data") not in (None, "") or outputs.get("_forced_failed"):
        return None
    code = (raw.get("component") or {}).get("code") or "?"
    call = "schedule()" if unit.schedule_of(st.node_id, st.version) is not None else "execute()"
    return f"node {st.node_id} failed: component {code}'s {call} returned False and set no ex_data"


def node_debug_info(engine: Engine, node_id: str) -> dict[str, Any]:
    """Also ``failure_note``: :func:`silent_failure`'s text, or None."""
    with engine.store.reading() as unit:
        root_id, st = _reached_root(unit, node_id, "debug info")
        graph = engine.graph(root_id, unit)
        exec_data = unit.get_execution_data(node_id)
        node = graph.nodes.get(node_id)
        note = silent_failure(unit, st, node.raw if node else None, exec_data[1] if exec_data else None)
        outputs = _shown(engine, unit, node_id, exec_data[1]) if exec_data else None
    return {
        "node": node.raw if node else {"id": node_id, "type": "Pipeline"},
        "data": raw_data(engine, node_id),
        "state": state_entry(st),
        "execution_data": {"inputs": exec_data[0], "outputs": outputs} if exec_data else None,
        "err": [],
        "failure_note": note,
    }
