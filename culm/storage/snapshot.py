"""Read one pipeline's rows as a :class:`culm.core.invariants.Snapshot` (for the invariant checker).

Not on any hot path: tests, storms and simulations call it to check a pipeline. On PostgreSQL and
MySQL the reads run in one REPEATABLE READ transaction, so they see a single moment even while
workers keep writing.
"""

from __future__ import annotations

from typing import Any

from culm.core.engine import Engine
from culm.core.invariants import Snapshot
from culm.storage.sql import _SCHEDULE_SELECT, _TASK_SELECT, SqlStore, _marks, _schedule_row, _task_row


def read_snapshot(engine: Engine, root_id: str) -> Snapshot:
    """The rows of root pipeline ``root_id`` in ``engine``'s store, read in one transaction."""
    store: SqlStore = engine.store  # type: ignore[assignment]
    with store.reading() as unit:
        if store.dialect != "sqlite":
            unit._x("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        graph = engine.graph(root_id, unit)
        ids = [root_id, *graph.nodes]
        sts: dict[str, Any] = {}
        for i in range(0, len(ids), 500):
            sts.update(unit.get_states(ids[i : i + 500]))
        procs = unit.processes_of_root(root_id)
        tasks = [_task_row(r) for r in unit._all(_TASK_SELECT + " WHERE root_id = ?", [root_id])]
        schedules = []
        node_ids = list(graph.nodes)
        for i in range(0, len(node_ids), 500):
            chunk = node_ids[i : i + 500]
            rows = unit._all(_SCHEDULE_SELECT + f" WHERE node_id IN ({_marks(len(chunk))})", chunk)
            schedules += [_schedule_row(r) for r in rows]
    return Snapshot(graph, sts, procs, tasks, schedules)


class StoreSnapshots:
    """A :class:`culm.core.invariants.SnapshotReader` over an engine's SQL store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def read_snapshot(self, root_id: str) -> Snapshot:
        return read_snapshot(self.engine, root_id)
