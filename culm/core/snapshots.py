"""Read pipelines' rows as :class:`culm.core.invariants.Snapshot` values (for the invariant checker).

Reads only through the store's ports (:mod:`culm.core.ports`), so every backend is checked the same
way. Not on any hot path: tests, storms and simulations call it to check pipelines. On PostgreSQL and
MySQL the reads run in one REPEATABLE READ transaction, so they see a single moment even while
workers keep writing.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.core.engine import Engine
from culm.core.invariants import Snapshot
from culm.core.records import EXECUTE, SCHEDULE, ScheduleRecord, StateRecord

_CHUNK = 500


def read_snapshot(engine: Engine, root_id: str) -> Snapshot:
    """The rows of root pipeline ``root_id`` in ``engine``'s store, read in one transaction."""
    return read_snapshots(engine, [root_id])[root_id]


def read_snapshots(engine: Engine, root_ids: Sequence[str]) -> dict[str, Snapshot]:
    """The rows of several root pipelines, read together in one transaction."""
    with engine.store.reading(snapshot=True) as unit:  # the roots' rows as of one moment
        graphs = {r: engine.graph(r, unit) for r in root_ids}
        node_root = {n: r for r, g in graphs.items() for n in (r, *g.nodes)}
        ids = list(node_root)
        sts: dict[str, dict[str, StateRecord]] = {r: {} for r in root_ids}
        schedules: dict[str, list[ScheduleRecord]] = {r: [] for r in root_ids}
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            for st in unit.get_states(chunk).values():
                sts[node_root[st.node_id]][st.node_id] = st
            for sched in unit.schedules_of_nodes(chunk):
                schedules[node_root[sched.node_id]].append(sched)
        procs = {r: unit.processes_of_root(r) for r in root_ids}
        tasks = {r: unit.tasks_of_root(r, EXECUTE) + unit.tasks_of_root(r, SCHEDULE) for r in root_ids}
    return {r: Snapshot(graphs[r], sts[r], procs[r], tasks[r], schedules[r]) for r in root_ids}


class StoreSnapshots:
    """A :class:`culm.core.invariants.SnapshotReader` over an engine's store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def read_snapshot(self, root_id: str) -> Snapshot:
        return read_snapshot(self.engine, root_id)
