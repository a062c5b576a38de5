"""Why a node that is not moving waits: one answer for the API, the CLI, the service and the checks.

A *wait reason* is a dict ``{"kind", "text", ...}``; ``kind`` is one of

* ``"callback"``: a service waits for ``culm.api.callback`` (``version`` is the one to send);
* ``"poll"``: a service polls; ``next_poll`` is when (a tz-aware datetime), ``polls`` how often so far;
  a poll or callback wait of a node whose ``timeout_config`` enables a timeout also has
  ``deadline``: when the timeout's action runs if the node is still RUNNING then; one inside a
  revoked pipeline has ``revoked`` (True) and its text says so: polls go on until the service
  finishes or fails, then the branch ends; a callback is refused;
* ``"paused"``: an operator paused this pipeline or subprocess (``resume`` goes on);
* ``"pause_appointed"``: an operator set a pause at this node (``reached`` says whether a branch stands
  there already; ``resume-node`` goes on);
* ``"converge"``: the branches forked here have not all reached ``converge`` (``branches``: the
  node each missing branch stands at);
* ``"failed"``: the node failed and waits for an operator (retry, skip or revoke); one inside a
  revoked pipeline has ``revoked`` (True) and its text says so: it can no longer be retried or
  skipped;
* ``"revoked"``: an operator revoked this subprocess; its pipeline cannot go on past it and waits
  for the operator to revoke it too;
* ``"stalled"`` (on the pipeline): a step of it has been due for over ``STALLED_AFTER`` seconds
  and nothing has taken it: no worker runs (or reaches the broker or the database), or, on a
  SQLite file, no process with workers holds its runner lock. ``since`` is when it fell due,
  ``nodes`` where the steps wait. A poll overdue as long says so in its own reason (``overdue``).

Nodes that run, have ended, or never stop (gateways, events) get none. The facts come from rows
the engine keeps anyway (states, processes, schedules, schedule tasks, node types) and are read
only when a state could need them, so a finished pipeline costs no extra read.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from culm.core import states
from culm.core.ports import Unit
from culm.core.records import (
    EXECUTE,
    SCHEDULE,
    TIMEOUT,
    ProcessPosition,
    ScheduleRecord,
    StateRecord,
    TaskRecord,
)

SUBPROCESS = "SubProcess"
PIPELINE = "Pipeline"
MAY_WAIT = frozenset({states.FAILED, states.SUSPENDED, states.RUNNING, states.REVOKED})
ACTIVITY = "ServiceActivity"
# A step due for this long and not taken means nothing runs the work: a healthy runner takes a
# step within milliseconds, and a backed-up queue shows itself well before a relay's grace (15 s).
STALLED_AFTER = 10.0
_CHECK = ("check that a worker runs and reaches the broker and the database (on a SQLite file: that a "
          "process with workers has it open), and that its user-code threads are not all held by calls "
          "that do not return (its log says so)")


@dataclass
class WaitFacts:
    """What :func:`wait_reasons` looks at besides the states themselves."""

    node_types: Mapping[str, str] = field(default_factory=dict)
    schedules: Mapping[str, ScheduleRecord] = field(default_factory=dict)  # live ones, by node id
    next_runs: Mapping[str, float] = field(default_factory=dict)  # due time of a schedule task, by schedule id
    processes: Sequence[ProcessPosition] = ()  # the live ones (not dead)
    candidates: Sequence[StateRecord] = ()  # the states that may wait (failed, suspended, running)
    stalled: Sequence[TaskRecord] = ()  # execute tasks due for over STALLED_AFTER s, not started
    deadlines: Mapping[str, float] = field(default_factory=dict)  # node id -> when its timeout fires
    # node id -> the revoked pipeline around it, for the waiting (RUNNING) and FAILED nodes inside one
    revoked_in: Mapping[str, str] = field(default_factory=dict)
    # (read_facts) Whether these facts, and the reasons made of them, stay what a new read_facts
    # of the same rows and kept facts would give, the stalled check left out: none rests on rows
    # without a feed of their own (poll and timeout tasks: a poll taken, a timeout's task) nor
    # counts time (a poll's texts). The stalled check, which does both, is then the caller's
    # (read_facts(stalled=False), stalled_since, stalled_note).
    reusable: bool = False
    alive_root: str | None = None  # the pipeline the stalled check looks at (None: it ended)


def _time(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _failed(kind: str | None) -> dict[str, Any]:
    if kind == SUBPROCESS:
        how = "retry the subprocess or revoke the pipeline"
    elif kind in ("ExclusiveGateway", "ConditionalParallelGateway"):
        how = "skip it along chosen flows or revoke the pipeline"
    else:
        how = "retry it (maybe with new inputs), skip it or revoke the pipeline"
    return {"kind": "failed", "text": f"failed; an operator may {how}"}


def _suspended(st: StateRecord, kind: str | None, facts: WaitFacts) -> dict[str, Any]:
    if st.node_id == st.root_id or kind in (SUBPROCESS, PIPELINE):
        what = "pipeline" if st.node_id == st.root_id else "subprocess"
        return {"kind": "paused", "text": f"{what} paused by an operator; resume it to go on"}
    reached = any(p.current_node_id == st.node_id and p.suspended_by == st.node_id for p in facts.processes)
    text = ("stopped here by an operator's pause; resume the node to go on" if reached else
            "an operator appointed a pause here: a branch that reaches this node stops before running it")
    return {"kind": "pause_appointed", "text": text, "reached": reached}


def _scheduled(st: StateRecord, sched: ScheduleRecord, facts: WaitFacts) -> dict[str, Any]:
    reason = _schedule_wait(st, sched, facts)
    deadline = facts.deadlines.get(st.node_id)
    if deadline is not None:
        reason["deadline"] = _time(deadline)
        reason["text"] += f"; times out at {_time(deadline).astimezone().strftime('%H:%M:%S')} (timeout_config)"
    return reason


def _revoked_wait(reason: dict[str, Any], pipeline_id: str) -> dict[str, Any]:
    """A poll or callback wait inside a revoked pipeline: what becomes of it (culm.core.revoking)."""
    reason["revoked"] = True
    if reason["kind"] == "poll":
        reason["text"] += (f"; pipeline {pipeline_id} is revoked: the polls go on until the service finishes or "
                           "fails, then this branch ends (nothing after it runs)")
    else:
        reason["text"] += f"; pipeline {pipeline_id} is revoked: callbacks are refused, the node never moves again"
    return reason


def _revoked_failure(kind: str | None, pipeline_id: str) -> dict[str, Any]:
    """A failed node inside a revoked pipeline: the engine refuses its retry and skip (culm.core.revoking)."""
    what = "the subprocess" if kind == SUBPROCESS else "it"
    return {"kind": "failed", "revoked": True,
            "text": f"failed; pipeline {pipeline_id} is revoked: {what} can no longer be retried or skipped"}


def _schedule_wait(st: StateRecord, sched: ScheduleRecord, facts: WaitFacts) -> dict[str, Any]:
    if sched.type == "poll":
        due = facts.next_runs.get(sched.id)
        reason: dict[str, Any] = {"kind": "poll", "polls": sched.times,
                                  "next_poll": _time(due) if due is not None else None}
        if due is None:
            reason["text"] = "polls its service; a poll is under way"
        elif due <= time.time() - STALLED_AFTER:
            reason["overdue"] = True
            reason["text"] = f"polls its service; a poll has been due for {time.time() - due:.0f} s and not taken: {_CHECK}"
        elif due <= time.time():
            reason["text"] = "polls its service; a poll is due now"
        else:
            reason["text"] = f"polls its service; next poll at {_time(due).astimezone().strftime('%H:%M:%S')}"
        return reason
    return _callback(st.version, sched.type)


def _callback(version: str, schedule_type: str) -> dict[str, Any]:
    many = " (several may arrive)" if schedule_type == "multiple_callback" else ""
    return {"kind": "callback", "version": version, "text": f"waits for a callback{many} with version {version}"}


def callback_waits(unit: Unit, root_ids: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{root_id: {node_id: reason}}`` for the nodes of the pipelines ``root_ids`` that wait for a
    callback: their ``"callback"`` reasons (as :func:`wait_reasons` gives them, without the deadline
    and revoke notes), in one read for a whole page of a pipeline list."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for root_id, node_id, version, schedule_type in unit.callback_waiters(root_ids):
        found.setdefault(root_id, {})[node_id] = _callback(version, schedule_type)
    return found


# A list names at most this many failed or waiting nodes of a pipeline (then "and N more").
NAMED_IN_A_LIST = 3


class NodeNames:
    """The names the trees of runs give their nodes, ``{root_id: {node_id: name}}``, kept for a
    store (:func:`node_names`): a run's tree never changes, so a list that names a few nodes of
    the same pipelines again (the console reloads its list on every change) reads no name again.
    Only the runs with a name not kept yet are read (:meth:`Unit.node_names`). At most ``KEEP`` names are kept, those of the runs named last."""

    KEEP = 100_000

    def __init__(self) -> None:
        self._runs: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._kept = 0
        self._lock = threading.Lock()

    def of(self, unit: Unit, wanted: Mapping[str, Collection[str]]) -> dict[str, dict[str, str]]:
        """The names of the nodes ``wanted`` (``{root_id: node_ids}``); those not kept are read,
        in one read."""
        found: dict[str, dict[str, str]] = {}
        missing: dict[str, list[str]] = {}
        with self._lock:
            for root_id, node_ids in wanted.items():
                kept = self._runs.get(root_id, {})
                if kept:
                    self._runs.move_to_end(root_id)
                found[root_id] = {n: kept[n] for n in node_ids if n in kept}
                if need := [n for n in node_ids if n not in kept]:
                    missing[root_id] = need
        if missing:
            read = unit.node_names(missing)
            with self._lock:
                for root_id, names in read.items():
                    found.setdefault(root_id, {}).update(names)
                    kept = self._runs.setdefault(root_id, {})
                    self._kept += len(set(names) - set(kept))
                    kept.update(names)
                while self._kept > self.KEEP and self._runs:
                    self._kept -= len(self._runs.popitem(last=False)[1])
        return found


_NAMES: WeakKeyDictionary[Any, NodeNames] = WeakKeyDictionary()
_NAMES_LOCK = threading.Lock()


def node_names(store: Any) -> NodeNames:
    """The :class:`NodeNames` kept for ``store`` (a runtime's ``store``) in this process."""
    with _NAMES_LOCK:
        names = _NAMES.get(store)
        if names is None:
            names = _NAMES[store] = NodeNames()
        return names


def attention(unit: Unit, root_ids: Sequence[str], names: NodeNames | None = None
              ) -> dict[str, dict[str, Any]]:
    """``{root_id: {"failed": [...], "failed_count": n, "callbacks": [...], "callback_count": m}}``
    for the pipelines of a list page: the first :data:`NAMED_IN_A_LIST` of their FAILED nodes
    (``{"node_id", "name"}``, by node id) and of the nodes that wait for a callback (the same,
    with their :func:`callback_waits` reason), each by the name the tree gives it (``""``: none),
    with how many there are, so a list can say *which* step needs an operator.

    What it reads is bounded by the page, not by the pipelines' sizes: one grouped read of each
    kind returns at most NAMED_IN_A_LIST rows per pipeline, and the names come from ``names``
    (:func:`node_names` of the store; trees not kept there are read, only their tree column)."""
    found: dict[str, dict[str, Any]] = {}

    def entry(root_id: str) -> dict[str, Any]:
        return found.setdefault(root_id, {"failed": [], "failed_count": 0, "callbacks": [], "callback_count": 0})

    for root_id, (n, node_ids) in unit.failed_nodes(root_ids, NAMED_IN_A_LIST).items():
        entry(root_id).update(failed=[{"node_id": node_id} for node_id in node_ids], failed_count=n)
    for root_id, (n, waiting) in unit.callback_waiters_first(root_ids, NAMED_IN_A_LIST).items():
        entry(root_id).update(callbacks=[{"node_id": node_id, **_callback(version, schedule_type)}
                                         for node_id, version, schedule_type in waiting], callback_count=n)
    if found:
        wanted = {root_id: [n["node_id"] for n in (*nodes["failed"], *nodes["callbacks"])]
                  for root_id, nodes in found.items()}
        named = (names or NodeNames()).of(unit, wanted)
        for root_id, nodes in found.items():
            of_run = named.get(root_id, {})
            for node in (*nodes["failed"], *nodes["callbacks"]):
                node["name"] = of_run.get(node["node_id"], "")
    return found


def mark_list_items(store: Any, items: Sequence[dict[str, Any]]) -> None:
    """Add to each RUNNING item of a :func:`culm.api.list_pipelines` page what needs an operator, as
    the REST list API and ``culm list --json`` show it: ``failed_nodes`` (how many FAILED nodes),
    ``failed_node_list`` (the first of them, ``{"node_id", "name"}``), ``callback_nodes`` (the
    first nodes that wait for a callback, with their reason) and ``callback_node_count``."""
    running = [item for item in items if item["state"] == "RUNNING"]
    if not running:
        return
    with store.reading() as unit:  # grouped reads for the page
        marked = attention(unit, [item["id"] for item in running], node_names(store))
    for item in running:
        nodes = marked.get(item["id"], {})
        item["failed_nodes"] = nodes.get("failed_count", 0)
        item["failed_node_list"] = nodes.get("failed", [])
        item["callback_nodes"] = nodes.get("callbacks", [])
        item["callback_node_count"] = nodes.get("callback_count", 0)


def _stalled(tasks: Sequence[TaskRecord]) -> dict[str, Any]:
    since = min(t.due for t in tasks)
    nodes = sorted({t.node_id for t in tasks})
    return {"kind": "stalled", "since": _time(since), "nodes": nodes,
            "text": f"{len(tasks)} step(s) due for {time.time() - since:.0f} s and not taken (at "
                    f"{', '.join(nodes[:5])}{', ...' if len(nodes) > 5 else ''}): {_CHECK}"}


def _converge(proc: ProcessPosition, children: Iterable[ProcessPosition]) -> dict[str, Any]:
    missing = list(children)  # live branches: the ones that have not reached the converge
    target = missing[0].destination_id if missing else None
    branches = sorted({c.current_node_id for c in missing})
    where = f"converge gateway {target}" if target else "its converge gateway"
    return {"kind": "converge", "converge": target, "branches": branches,
            "text": f"waits at {where} for {len(branches)} branch(es), now at {', '.join(branches)}"}


def wait_reasons(facts: WaitFacts) -> dict[str, dict[str, Any]]:
    """``{node_id: reason}`` for every node that waits among the states ``facts`` were read for."""
    reasons: dict[str, dict[str, Any]] = {}
    for st in facts.candidates:
        kind = facts.node_types.get(st.node_id)
        if st.name == states.FAILED:
            revoked = facts.revoked_in.get(st.node_id)
            reasons[st.node_id] = _failed(kind) if revoked is None else _revoked_failure(kind, revoked)
        elif st.name == states.SUSPENDED:
            reasons[st.node_id] = _suspended(st, kind, facts)
        elif st.name == states.REVOKED:
            if kind == SUBPROCESS:
                reasons[st.node_id] = {
                    "kind": "revoked",
                    "text": f"revoked by an operator; its pipeline cannot go on past it: revoke pipeline {st.root_id}",
                }
        elif st.name == states.RUNNING and st.node_id in facts.schedules:
            reasons[st.node_id] = _scheduled(st, facts.schedules[st.node_id], facts)
            if st.node_id in facts.revoked_in:
                _revoked_wait(reasons[st.node_id], facts.revoked_in[st.node_id])
    if facts.stalled:
        reasons.setdefault(facts.stalled[0].root_id, _stalled(facts.stalled))
    by_parent: dict[str, list[ProcessPosition]] = {}
    for p in facts.processes:
        if p.parent_id is not None:
            by_parent.setdefault(p.parent_id, []).append(p)
    for p in facts.processes:
        # A process that forked sleeps at its gateway until every branch reached the converge.
        if p.need_ack > p.ack_num and p.id in by_parent:
            reasons.setdefault(p.current_node_id, _converge(p, by_parent[p.id]))
    return reasons


def _deadlines(versions: Mapping[str, str], waiting: Mapping[str, ScheduleRecord],
               tasks: Sequence[TaskRecord]) -> dict[str, float]:
    """When the timeouts of the waiting nodes fire, by node id, from the pipeline's TIMEOUT tasks."""
    return {t.node_id: t.due for t in tasks if t.node_id in waiting and versions.get(t.node_id) == t.running_version}


def moved_since(t: float, records: Sequence[StateRecord], root: StateRecord | None) -> bool:
    """Whether a node of ``records`` (or the root) started or ended after ``t``: then a runner took
    a step of this pipeline lately, and the stalled check need not read its tasks (a poller of a
    moving pipeline pays nothing for it)."""
    return any((st.started_time or 0.0) > t or (st.archived_time or 0.0) > t
               for st in (*records, *((root,) if root is not None else ())))


def _revoked_in(records: Sequence[StateRecord], root: StateRecord | None,
                waiting: Sequence[StateRecord]) -> dict[str, str]:
    """For the ``waiting`` nodes inside a revoked pipeline (the root or a subprocess around them,
    as far as ``records`` and ``root`` show them), that pipeline's id."""
    by_id = {st.node_id: st for st in (*records, *((root,) if root is not None else ()))}
    revoked = {nid for nid, st in by_id.items() if st.name == states.REVOKED}
    found: dict[str, str] = {}
    if not revoked:
        return found
    for st in waiting:
        pid, seen = st.parent_id, 0
        while pid and pid not in revoked and pid in by_id and pid != st.root_id and seen < 64:
            pid, seen = by_id[pid].parent_id, seen + 1
        if pid in revoked or st.root_id in revoked:
            found[st.node_id] = pid if pid in revoked else st.root_id
    return found


@dataclass
class KeptFacts:
    """Facts read for a kept state tree (:class:`culm.core.state_tree.Tree`), valid until the
    change feed names what they are about: a reader takes them from here and adds what it reads.

    Every write of a schedule's existence, count or end writes a feed note for its node
    (:mod:`culm.core.handlers.activity`, :mod:`culm.core.scheduling`, :mod:`culm.core.faults`), and
    every write of a live process's position comes with a state change or note of its pipeline
    (the simulation checks both after every step: ``tests/integration/simulation.py``). A node's
    type never changes.
    """

    schedules: dict[str, list[ScheduleRecord]] = field(default_factory=dict)  # live ones, by node id
    processes: list[ProcessPosition] | None = None  # the pipeline's live ones (None: not read)
    node_types: dict[str, str] = field(default_factory=dict)  # of the nodes asked about so far


def read_facts(unit: Unit, records: Sequence[StateRecord], root: StateRecord | None = None,
               timed: Callable[[str], Collection[str]] | None = None,
               kept: KeptFacts | None = None, execute_tasks: Sequence[TaskRecord] | None = None,
               forked: bool = True, stalled: bool = True, ancestors: Sequence[StateRecord] = ()) -> WaitFacts:
    """Read the rows :func:`wait_reasons` needs for ``records``, and only those: those that do
    not depend on each other together (one round trip on a server database), then the tasks the
    waiting nodes' schedules need.

    Args:
        unit: a reading unit of the store.
        records: the states of one pipeline (or of a node and its children).
        root: the state of their root pipeline, when ``records`` do not hold it.
        timed: ``timed(root_id)``, the nodes of that pipeline with an enabled timeout; asked only
            when a node waits for a poll or a callback (then its deadline is read).
        kept: the facts kept with the tree ``records`` come from (taken from there, and what is
            read here is added to it).
        execute_tasks: the pipeline's EXECUTE tasks, when the caller read them already (with the
            change feed: culm.core.state_tree); the stalled check then reads none.
        forked: False when no forking gateway of the pipeline has a state in ``records`` (the
            caller knows its graph): then no process has branches, no converge waits, and the
            live processes are read only for a SUSPENDED node (a poller of a pipeline that has
            not forked yet reads them at none of its polls).
        stalled: False to leave the stalled check out (the caller makes it: stalled_since,
            stalled_note); ``reusable`` says whether the facts may then serve again.
        ancestors: the states of the subprocesses around ``records`` that they do not hold (a
            node read with its children only): a revoked one among them parks its failed and
            waiting nodes as a revoked root does.
    """
    # One pass over the states; a finished pipeline's leave nothing to read.
    # A revoked root has ended; only a revoked subprocess holds its run up.
    candidates = [st for st in records if st.name in MAY_WAIT
                  and not (st.name == states.REVOKED and st.node_id == st.root_id)]
    facts = WaitFacts(candidates=candidates)
    odd = [st.node_id for st in candidates if st.name != states.RUNNING]
    running = [st for st in candidates if st.name == states.RUNNING]
    # Processes (converging forks, parked branches) matter only while something is alive.
    live = (states.RUNNING, states.SUSPENDED)
    alive = root if root is not None and root.name in live else next(
        (st for st in candidates if st.name in live and st.root_id), None)
    # Processes answer two questions: which branches a fork waits for (none before a fork) and
    # whether a branch reached an appointed pause (a SUSPENDED node).
    wants_processes = alive is not None and (forked or any(st.name == states.SUSPENDED for st in candidates))
    known_types = kept.node_types if kept is not None else {}
    types_missing = [node_id for node_id in odd if node_id not in known_types]
    known_schedules = kept.schedules if kept is not None else {}
    schedules_missing = list(dict.fromkeys(st.node_id for st in running if st.node_id not in known_schedules))
    processes = kept.processes if kept is not None else None
    late = time.time() - STALLED_AFTER
    # A pipeline that moves has a runner.
    stalled_check = stalled and alive is not None and not moved_since(late, records, root)
    calls: list[tuple[str, tuple[Any, ...]]] = []
    if types_missing:
        calls.append(("node_types", (types_missing,)))
    if schedules_missing:
        calls.append(("live_schedules", (schedules_missing,)))
    if alive is not None and wants_processes and processes is None:
        calls.append(("live_process_positions", (alive.root_id,)))
    if stalled_check and execute_tasks is None and alive is not None:
        calls.append(("tasks_of_root", (alive.root_id, EXECUTE)))
    answers = iter(unit.read_together(calls) if calls else ())
    if types_missing:
        found_types: dict[str, str] = next(answers)
        if kept is None:
            known_types = found_types
        else:
            known_types.update(found_types)  # a node's type never changes
    facts.node_types = {node_id: known_types[node_id] for node_id in odd if node_id in known_types}
    if schedules_missing:
        read: dict[str, list[ScheduleRecord]] = {node_id: [] for node_id in schedules_missing}
        for sched in next(answers):
            if sched.node_id in read:  # (MySQL's collation matches ids of another case too)
                read[sched.node_id].append(sched)
        if kept is None:
            known_schedules = read
        else:
            known_schedules.update(read)
    if wants_processes and processes is None:
        processes = next(answers)
        if kept is not None:
            kept.processes = processes
    if stalled_check and execute_tasks is None:
        execute_tasks = next(answers)
    polls = timeouts = False
    if running:
        versions = {st.node_id: st.version for st in running}
        current = [s for node_id in versions for s in known_schedules[node_id] if versions[node_id] == s.version]
        facts.schedules = {s.node_id: s for s in current}
        root_id = running[0].root_id
        polls = any(s.type == "poll" for s in current)
        timeouts = bool(current) and timed is not None and bool(set(facts.schedules).intersection(timed(root_id)))
        reads = [("tasks_of_root", (root_id, kind)) for kind, wanted in ((SCHEDULE, polls), (TIMEOUT, timeouts))
                 if wanted]
        tasks = iter(unit.read_together(reads) if reads else ())
        if polls:
            facts.next_runs = {t.schedule_id: t.due for t in next(tasks) if t.schedule_id and not t.callback_id}
        if timeouts:
            facts.deadlines = _deadlines(versions, facts.schedules, next(tasks))
    # The nodes a revoke leaves where they are (waiting on a service, failed): their reasons say so.
    parked = [st for st in candidates if st.name == states.FAILED or st.node_id in facts.schedules]
    if parked:
        facts.revoked_in = _revoked_in([*records, *ancestors], root, parked)
    if alive is not None:
        facts.processes = processes or []
        if stalled_check:
            facts.stalled = [t for t in execute_tasks or () if t.running_version is None and t.due < late]
        # A fork's converge wait hangs on its (finished) gateway: any node may carry a reason now.
        facts.candidates = candidates or [alive]
    facts.reusable = not (polls or timeouts)
    facts.alive_root = alive.root_id if alive is not None else None
    return facts


def stalled_since(records: Sequence[StateRecord], root: StateRecord | None) -> float:
    """From when on (time.time()) :func:`read_facts` of ``records`` and ``root`` would make the
    stalled check: STALLED_AFTER seconds after a node of them (or the root) last started or ended."""
    last = max((max(st.started_time or 0.0, st.archived_time or 0.0)
                for st in (*records, *((root,) if root is not None else ()))), default=0.0)
    return last + STALLED_AFTER


def stalled_note(unit: Unit, root_id: str, execute_tasks: Sequence[TaskRecord] | None) -> dict[str, Any] | None:
    """The stalled check :func:`read_facts` makes (with ``stalled=True``) for the live pipeline
    ``root_id``: its ``"stalled"`` reason, or None when no step of it has been due for over
    STALLED_AFTER seconds untaken. ``execute_tasks``: its EXECUTE tasks when read already."""
    late = time.time() - STALLED_AFTER
    tasks = unit.tasks_of_root(root_id, EXECUTE) if execute_tasks is None else execute_tasks
    found = [t for t in tasks if t.running_version is None and t.due < late]
    return _stalled(found) if found else None
