"""The engine's promises about one pipeline, checked on a snapshot of its rows ("never stuck").

:func:`check` is a pure function of a :class:`Snapshot` (the rows of one root pipeline, read by
:func:`culm.core.snapshots.read_snapshot` or built by a simulation) and of the state transitions
seen so far. It reports, as :class:`Violation` values:

* ``unknown_state``: a state name outside ``states.TRANSITIONS``;
* ``misfiled_state``: a node's row whose ``root_id``/``parent_id`` are not its root and pipeline
  (queries by root would not show it);
* ``bad_transition``: a transition the table does not allow, a write that does not start from the
  node's last recorded state, or a row created in a state other than RUNNING (or SUSPENDED, by an
  appointed pause) -- read back from the change feed (``store.feed.transitions``);
* ``stranded_process``: a live process that nothing can move: no task of its own, not parked on a
  paused node or pipeline, not asleep on a FAILED node or a callback wait, not waiting for children;
* ``stuck``: a RUNNING pipeline with no live process (so nothing can ever finish it);
* ``orphan_running``: a RUNNING activity of a running (or paused) pipeline that no live process is
  on (nothing will ever finish or fail it);
* ``unfinished_path``: a FINISHED pipeline where a node on the path it took is not FINISHED;
* ``alive_after_end``: a FINISHED or REVOKED pipeline that still has live processes;
* ``early_converge``: a converge gateway passed while a branch of its fork has not arrived.

An operator wait (a FAILED node, a paused node or pipeline, a callback) counts as able to move:
a person can see it and act on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from culm.core import states
from culm.core.records import ProcessRecord, ScheduleRecord, StateRecord, TaskRecord, Transition
from culm.model import compiled as g

# A state row is created by entering a node (RUNNING) or by an appointed pause before it is reached.
# Stricter than the engine's ``transitions.CREATED_AS``: the engine also creates a row FAILED to
# record its own fault on a node never entered, and such a fault is itself a finding here.
CREATED_AS = frozenset({states.RUNNING, states.SUSPENDED})
_CALLBACK_TYPES = ("callback", "multiple_callback")
_ONE_OF_TARGETS = (g.EXCLUSIVE, g.CONDITIONAL_PARALLEL)
_ENDS = (g.END, g.EXECUTABLE_END)


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken promise: what kind, about which node (or process) and why, in words."""

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.message}"


@dataclass(slots=True)
class Snapshot:
    """The rows of one root pipeline at one moment.

    ``states`` holds the rows of the graph's node ids (read by node id, not by their ``root_id``
    column, so a misfiled row is still found); ``tasks`` the runnable and timed tasks of the root;
    ``schedules`` the schedules of its nodes.
    """

    graph: g.Graph
    states: Mapping[str, StateRecord]
    processes: Sequence[ProcessRecord]
    tasks: Sequence[TaskRecord] = ()
    schedules: Sequence[ScheduleRecord] = ()

    @property
    def root_id(self) -> str:
        return self.graph.root_id


class SnapshotReader(Protocol):
    """What a checker needs from a store: one pipeline's rows, read together."""

    def read_snapshot(self, root_id: str) -> Snapshot: ...


def check(snap: Snapshot, transitions: Iterable[Transition] = ()) -> list[Violation]:
    """Every violation of the engine's promises in ``snap`` (and in ``transitions``)."""
    found = check_transitions(transitions)
    found += _check_rows(snap)
    root = snap.states.get(snap.root_id)
    if root is None:
        return found + [Violation("stuck", snap.root_id, "the pipeline has no state row")]
    live = [p for p in snap.processes if not p.dead]
    if root.name in (states.FINISHED, states.REVOKED):
        found += [Violation("alive_after_end", p.id, f"process at {p.current_node_id} is alive in a {root.name} "
                            "pipeline") for p in live]
    if root.name == states.FINISHED:
        found += _check_path(snap)
    if root.name in (states.RUNNING, states.SUSPENDED) and not _revoked_subprocess(snap):
        # (A revoked subprocess holds its run up until the operator revokes the root: its wait
        # reason says so, and nothing else in the run needs to move.)
        found += _check_movers(snap, live)
        found += _check_running_activities(snap, live)
        if root.name == states.RUNNING and not live:
            found.append(Violation("stuck", snap.root_id, "RUNNING with no live process: nothing can finish it"))
    found += _check_converges(snap, live)
    return found


def _revoked_subprocess(snap: Snapshot) -> bool:
    nodes = snap.graph.nodes
    return any(
        st.name == states.REVOKED and node_id in nodes and nodes[node_id].type == g.SUBPROCESS
        for node_id, st in snap.states.items()
    )


def check_transitions(transitions: Iterable[Transition], last: dict[str, str] | None = None) -> list[Violation]:
    """The transitions ``states.TRANSITIONS`` does not allow, and breaks in each node's chain.

    ``transitions`` come in commit order for each node (the change feed's order); each must start
    from the state the node's previous one ended in. ``last`` (node id -> its last state) carries
    that over from an earlier call, for a reader that checks the feed as it grows.
    """
    last = {} if last is None else last
    found = []
    for t in transitions:
        before = last.get(t.node_id)
        if t.from_state is None:
            if before is not None:
                found.append(Violation("bad_transition", t.node_id, f"created again as {t.to_state} (was {before})"))
            elif t.to_state not in CREATED_AS:
                found.append(Violation("bad_transition", t.node_id, f"created as {t.to_state}"))
        else:
            if not states.can_transit(t.from_state, t.to_state):
                found.append(Violation("bad_transition", t.node_id, f"{t.from_state} -> {t.to_state}"))
            if before is not None and before != t.from_state:
                found.append(Violation("bad_transition", t.node_id, f"written {t.from_state} -> {t.to_state}, but "
                                       f"its last recorded state was {before}"))
        last[t.node_id] = t.to_state
    return found


def _check_rows(snap: Snapshot) -> list[Violation]:
    found = []
    for node_id, st in snap.states.items():
        if st.name not in states.TRANSITIONS:
            found.append(Violation("unknown_state", node_id, f"state {st.name!r} is not in the table"))
        node = snap.graph.nodes.get(node_id)
        want = (snap.root_id, node.pipeline_id) if node is not None else (snap.root_id, "")
        if node_id != snap.root_id and (st.root_id, st.parent_id) != want:
            found.append(Violation("misfiled_state", node_id, f"row has root {st.root_id!r} and parent "
                                   f"{st.parent_id!r}, expected {want[0]!r} and {want[1]!r}"))
        elif node_id == snap.root_id and st.root_id != snap.root_id:
            found.append(Violation("misfiled_state", node_id, f"root row has root {st.root_id!r}"))
    return found


def _check_movers(snap: Snapshot, live: list[ProcessRecord]) -> list[Violation]:
    """Every live process can be moved by the engine or by an operator."""
    tasked = {t.process_id for t in snap.tasks}
    parents = {p.parent_id for p in live if p.parent_id}
    found = []
    for p in live:
        if p.id in tasked or _waits_visibly(snap, p, parents):
            continue
        st = snap.states.get(p.current_node_id)
        found.append(Violation(
            "stranded_process", p.id,
            f"at {p.current_node_id} ({st.name if st else 'no state'}; asleep={p.asleep}, suspended={p.suspended}"
            f" by {p.suspended_by}, acks {p.ack_num}/{p.need_ack}): no task, and no operator or callback wait",
        ))
    return found


def _check_running_activities(snap: Snapshot, live: list[ProcessRecord]) -> list[Violation]:
    """Every RUNNING activity has a live process on it (else nothing will ever end its run)."""
    at = {p.current_node_id for p in live}
    return [Violation("orphan_running", node_id, "RUNNING with no live process on it: nothing will end its run")
            for node_id, st in snap.states.items()
            if st.name == states.RUNNING and node_id not in at and node_id in snap.graph.nodes
            and snap.graph.nodes[node_id].type == g.ACTIVITY]


def _waits_visibly(snap: Snapshot, p: ProcessRecord, parents: set[str]) -> bool:
    if p.suspended:
        by = snap.states.get(p.suspended_by or "")
        return by is not None and by.name == states.SUSPENDED
    if not p.asleep:
        return False  # awake without a task: nothing will run it
    if p.need_ack > p.ack_num:
        return p.id in parents  # waits for children, which are checked themselves
    st = snap.states.get(p.current_node_id)
    if st is None:
        return False
    if st.name == states.FAILED:
        return True  # retry, skip (or revoke) it
    if st.name == states.RUNNING:
        return any(s.node_id == st.node_id and s.version == st.version and s.process_id == p.id
                   and s.type in _CALLBACK_TYPES and not s.finished and not s.expired for s in snap.schedules)
    return False


def _check_path(snap: Snapshot) -> list[Violation]:
    """In a FINISHED pipeline, every node on the path taken is FINISHED."""
    graph, sts = snap.graph, snap.states
    found: list[Violation] = []

    def finished(node_id: str) -> bool:
        st = sts.get(node_id)
        return st is not None and st.name == states.FINISHED

    def need(node_id: str, why: str) -> None:
        if not finished(node_id):
            st = sts.get(node_id)
            found.append(Violation("unfinished_path", node_id,
                                   f"{st.name if st else 'never run'} in a FINISHED pipeline ({why})"))

    spec = graph.pipelines[snap.root_id]
    need(spec.start_event_id, "the start event")
    need(spec.end_event_id, "the end event")
    for node in graph.nodes.values():
        if not finished(node.id) or node.type in _ENDS:
            continue
        if node.type == g.SUBPROCESS:
            sub = graph.pipelines[node.id]
            need(sub.start_event_id, f"start of finished subprocess {node.id}")
            need(sub.end_event_id, f"end of finished subprocess {node.id}")
        if node.type in _ONE_OF_TARGETS:
            if not any(finished(t) for t in node.targets):
                found.append(Violation("unfinished_path", node.id, "finished gateway, no branch after it finished"))
            continue
        for target in node.targets:
            need(target, f"after finished {node.id}")
    for node_id, st in sts.items():
        if st.name in (states.RUNNING, states.FAILED, states.READY, states.LOOP_READY) and node_id != snap.root_id \
                and not _lifted_appointment(st):
            found.append(Violation("unfinished_path", node_id, f"{st.name} in a FINISHED pipeline"))
    return _unique(found)


def _lifted_appointment(st: StateRecord) -> bool:
    """A READY row that ``resume_node_appoint`` left on a node never entered (an appointed pause on a
    branch the run did not take, as bamboo leaves it): not on the path, and nothing is owed to it.
    A node on the path is still required FINISHED above; a retried node has ``retry`` > 0."""
    return st.name == states.READY and st.started_time is None and st.retry == 0


def _check_converges(snap: Snapshot, live: list[ProcessRecord]) -> list[Violation]:
    """A converge gateway passed in the same round as its fork must have no branch still out."""
    found = []
    for fork in snap.graph.nodes.values():
        conv_id = fork.converge_gateway_id
        if fork.type not in (g.PARALLEL, g.CONDITIONAL_PARALLEL) or not conv_id:
            continue
        conv, fork_st = snap.states.get(conv_id), snap.states.get(fork.id)
        if conv is None or fork_st is None or conv.name not in (states.RUNNING, states.FINISHED):
            continue
        if fork_st.loop != conv.loop:
            continue  # the fork started another round since the converge was passed
        out = [p.id for p in live if p.destination_id == conv_id]
        if out:
            found.append(Violation("early_converge", conv_id,
                                   f"passed while {len(out)} branch process(es) of fork {fork.id} are still out"))
    return found


def _unique(found: list[Violation]) -> list[Violation]:
    return list(dict.fromkeys(found))
