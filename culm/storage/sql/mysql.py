"""MySQL and MariaDB: backquoted names, their own upsert, READ COMMITTED."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from culm.core.records import ProcessRecord, TaskRecord
from culm.storage.sql.base import Dialect, SqlUnit, _process_row, _state_row, _task_row
from culm.storage.sql.statements import (
    CLAIM_MANY_MYSQL,
    HELD_BY_US,
    KEEP_HELD_LEASE,
    MANY_WITH_PROCESS_OURS,
    OUTPUTS_UPSERT_MYSQL,
    PROCESS_COLUMNS,
    STATES_IN_LOCKED,
    TASK_COLUMNS,
    TASK_WITH_PROCESS,
    marks,
    upsert_sql_mysql,
)

_END = len(TASK_COLUMNS) + len(PROCESS_COLUMNS)  # where a joined row's task and process columns end


@functools.lru_cache(maxsize=4096)
def adapt_mysql(sql: str) -> str:
    return sql.replace("?", "%s").replace('"', "`")


class MysqlUnit(SqlUnit):
    dialect = "mysql"
    adapt = staticmethod(adapt_mysql)
    upsert_statement = staticmethod(upsert_sql_mysql)
    outputs_upsert = OUTPUTS_UPSERT_MYSQL

    def _task_held(
        self, task_id: str, lease: tuple[str, float, float]
    ) -> tuple[TaskRecord | None, ProcessRecord | None]:
        # MariaDB cannot lock only the task row of a join (no FOR UPDATE OF), and locking the
        # process row before the node's state would break the lock order: the lease is kept
        # with a conditional UPDATE (locks the task row alone), then the usual read.
        owner, until, at = lease
        kept = self._x(KEEP_HELD_LEASE, [owner, until, task_id, owner, at]).rowcount == 1
        return self._task_and_process(self._one(TASK_WITH_PROCESS, [task_id])) if kept else (None, None)

    reads_tasks_ahead = True

    def read_tasks_ahead(self, fresh: Sequence[str], resumed: Sequence[str], lease: tuple[str, float, float]) -> None:
        """A batch's tasks in three statements instead of two or three per task (see
        CLAIM_MANY_MYSQL): the leases taken or kept in one UPDATE, the tasks read with their
        processes, then the states of the resumed tasks' nodes locked, in node id order (the lock
        order stays: task rows first, then states; process rows are only read)."""
        ids = list(dict.fromkeys([*fresh, *resumed]))
        if len(ids) < 2:
            return
        owner, until, at = lease
        mine = list(dict.fromkeys(resumed))
        held = HELD_BY_US.format(resumed=marks(len(mine))) if mine else ""
        self._x(CLAIM_MANY_MYSQL.format(marks=marks(len(ids)), held=held),
                [owner, until, *ids, at, *([owner, *mine] if mine else [])])
        rows = self._all(MANY_WITH_PROCESS_OURS.format(marks=marks(len(ids))), [owner, until, *ids])
        ahead = self._tasks_ahead
        ahead.update(dict.fromkeys(ids))  # not there, or not ours: None
        n_task, waiting = len(TASK_COLUMNS), set(mine)
        nodes = []
        for r in rows:
            if not r[-1]:
                continue  # leased by another runner (a fresh one that was not free, a resumed one taken over)
            ahead[r[0]] = (_task_row(r[:n_task]), _process_row(r[n_task:_END]) if r[n_task] is not None else None, None)
            if r[0] in waiting:
                nodes.append(r[3])  # its node's state: the result's compare-and-set comes next
        if nodes:
            for st in self._all(STATES_IN_LOCKED.format(marks=marks(len(nodes))), nodes):
                self._lock_ahead(_state_row(st))


class MysqlDialect(Dialect):
    name = "mysql"
    unit = MysqlUnit

    def engine_options(self, *, memory: bool) -> dict[str, Any]:
        # Read what others committed (version checks, joins) rather than a snapshot.
        return {**super().engine_options(memory=memory), "isolation_level": "READ COMMITTED"}
