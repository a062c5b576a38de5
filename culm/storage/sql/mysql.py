"""MySQL and MariaDB: backquoted names, their own upsert, READ COMMITTED."""

from __future__ import annotations

import functools
from typing import Any

from culm.core.records import ProcessRecord, TaskRecord
from culm.storage.sql.base import Dialect, SqlUnit
from culm.storage.sql.statements import (
    DB_NOW_MYSQL,
    KEEP_HELD_LEASE,
    OUTPUTS_UPSERT_MYSQL,
    SNAPSHOT_READ,
    TASK_WITH_PROCESS,
    upsert_sql_mysql,
)


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


class MysqlDialect(Dialect):
    name = "mysql"
    unit = MysqlUnit
    db_now = DB_NOW_MYSQL
    snapshot_read = SNAPSHOT_READ

    def engine_options(self, *, memory: bool) -> dict[str, Any]:
        # Read what others committed (version checks, joins) rather than a snapshot.
        return {**super().engine_options(memory=memory), "isolation_level": "READ COMMITTED"}
