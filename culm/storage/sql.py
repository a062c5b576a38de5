"""SqlStore: the storage ports implemented with SQLAlchemy Core (SQLite, PostgreSQL, MySQL)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, delete, event, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine, create_engine
from sqlalchemy.pool import StaticPool

from culm.core.records import (
    ContextValue,
    HistoryRecord,
    ProcessRecord,
    ScheduleRecord,
    StateRecord,
    TaskRecord,
)
from culm.errors import SchemaOutdatedError
from culm.storage import codec
from culm.storage import schema as s

_STATE_COLS = [c.name for c in s.state.columns]
_PROCESS_COLS = [c.name for c in s.process.columns]
_TASK_FIELDS = [
    "id", "kind", "process_id", "node_id", "root_id", "schedule_id", "callback_id", "due",
    "running_version", "priority", "queue",
]


def normalise_url(url: str) -> str:
    """Pick the drivers culm installs for bare ``postgresql://`` and ``mysql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("mysql://") or url.startswith("mariadb://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def _state(row: Any) -> StateRecord:
    m = row._mapping
    return StateRecord(**{c: m[c] for c in _STATE_COLS})


def _process(row: Any) -> ProcessRecord:
    m = dict(row._mapping)
    m["stack"] = codec.loads(m["stack"])
    return ProcessRecord(**m)


def _task(row: Any) -> TaskRecord:
    m = row._mapping
    return TaskRecord(**{f: m[f] for f in _TASK_FIELDS})


class SqlUnit:
    """One database transaction, offering the domain verbs the core needs."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self._lock_rows = dialect != "sqlite"

    # -- pipelines and nodes -------------------------------------------------------------
    def add_pipeline(self, root_id: str, tree: dict, root_data: dict, options: dict, at: float) -> None:
        self.conn.execute(
            insert(s.pipeline),
            {
                "id": root_id, "tree": codec.dumps(tree), "root_data": codec.dumps(root_data),
                "options": codec.dumps(options), "created_time": at,
            },
        )

    def get_pipeline(self, root_id: str) -> tuple[dict, dict, dict] | None:
        row = self.conn.execute(
            select(s.pipeline.c.tree, s.pipeline.c.root_data, s.pipeline.c.options).where(
                s.pipeline.c.id == root_id
            )
        ).first()
        if row is None:
            return None
        return codec.loads(row[0]), codec.loads(row[1]), codec.loads(row[2])

    def get_root_data(self, root_id: str) -> dict:
        row = self.conn.execute(select(s.pipeline.c.root_data).where(s.pipeline.c.id == root_id)).first()
        return codec.loads(row[0]) if row else {}

    def pipeline_exists(self, root_id: str) -> bool:
        return self.conn.execute(select(s.pipeline.c.id).where(s.pipeline.c.id == root_id)).first() is not None

    def add_nodes(self, rows: Sequence[dict]) -> None:
        if rows:
            self.conn.execute(insert(s.node), list(rows))

    def node_root(self, node_id: str) -> str | None:
        row = self.conn.execute(select(s.node.c.root_id).where(s.node.c.id == node_id)).first()
        return row[0] if row else None

    def existing_node_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            found.update(r[0] for r in self.conn.execute(select(s.node.c.id).where(s.node.c.id.in_(chunk))))
        return found

    # -- states ---------------------------------------------------------------------------
    def get_state(self, node_id: str, *, for_update: bool = False) -> StateRecord | None:
        stmt = select(s.state).where(s.state.c.node_id == node_id)
        if for_update and self._lock_rows:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        return _state(row) if row else None

    def get_states(self, node_ids: Iterable[str]) -> dict[str, StateRecord]:
        ids = list(node_ids)
        if not ids:
            return {}
        rows = self.conn.execute(select(s.state).where(s.state.c.node_id.in_(ids)))
        return {r.node_id: _state(r) for r in rows}

    def states_of_root(self, root_id: str) -> list[StateRecord]:
        return [_state(r) for r in self.conn.execute(select(s.state).where(s.state.c.root_id == root_id))]

    def states_of_parent(self, parent_id: str) -> list[StateRecord]:
        rows = self.conn.execute(select(s.state).where(s.state.c.parent_id == parent_id))
        return [_state(r) for r in rows]

    def insert_state(self, rec: StateRecord) -> None:
        self.conn.execute(insert(s.state), {c: getattr(rec, c) for c in _STATE_COLS})

    def update_state(
        self,
        node_id: str,
        *,
        expect_version: str | None = None,
        expect_names: Iterable[str] | None = None,
        **fields: Any,
    ) -> bool:
        """Compare-and-set: write ``fields`` only if version and state name still match."""
        cond = [s.state.c.node_id == node_id]
        if expect_version is not None:
            cond.append(s.state.c.version == expect_version)
        if expect_names is not None:
            cond.append(s.state.c.name.in_(list(expect_names)))
        res = self.conn.execute(update(s.state).where(and_(*cond)).values(**fields))
        return res.rowcount == 1

    def reset_inner_loops(self, parent_id: str) -> None:
        self.conn.execute(update(s.state).where(s.state.c.parent_id == parent_id).values(inner_loop=0))

    # -- processes ------------------------------------------------------------------------
    def insert_processes(self, recs: Sequence[ProcessRecord]) -> None:
        rows = []
        for r in recs:
            row = {c: getattr(r, c) for c in _PROCESS_COLS}
            row["stack"] = codec.dumps(r.stack)
            rows.append(row)
        if rows:
            self.conn.execute(insert(s.process), rows)

    def get_process(self, process_id: str, *, for_update: bool = False) -> ProcessRecord | None:
        stmt = select(s.process).where(s.process.c.id == process_id)
        if for_update and self._lock_rows:
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        return _process(row) if row else None

    def update_process(self, process_id: str, **fields: Any) -> None:
        if "stack" in fields:
            fields["stack"] = codec.dumps(fields["stack"])
        self.conn.execute(update(s.process).where(s.process.c.id == process_id).values(**fields))

    def ack_child(self, parent_id: str) -> tuple[int, int]:
        """Count one finished child; the row lock taken by the update serialises siblings."""
        self.conn.execute(
            update(s.process).where(s.process.c.id == parent_id).values(ack_num=s.process.c.ack_num + 1)
        )
        row = self.conn.execute(
            select(s.process.c.ack_num, s.process.c.need_ack).where(s.process.c.id == parent_id)
        ).one()
        return int(row[0]), int(row[1])

    def processes_of_root(self, root_id: str) -> list[ProcessRecord]:
        rows = self.conn.execute(select(s.process).where(s.process.c.root_id == root_id))
        return [_process(r) for r in rows]

    def processes_suspended_by(self, by: str) -> list[ProcessRecord]:
        rows = self.conn.execute(
            select(s.process).where(
                s.process.c.suspended_by == by, s.process.c.suspended.is_(True), s.process.c.dead.is_(False)
            )
        )
        return [_process(r) for r in rows]

    def processes_at(self, node_id: str) -> list[ProcessRecord]:
        rows = self.conn.execute(
            select(s.process).where(s.process.c.current_node_id == node_id, s.process.c.dead.is_(False))
        )
        return [_process(r) for r in rows]

    def kill_processes_of_root(self, root_id: str) -> None:
        self.conn.execute(update(s.process).where(s.process.c.root_id == root_id).values(dead=True))

    # -- tasks ----------------------------------------------------------------------------
    def insert_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        if tasks:
            self.conn.execute(insert(s.task), [{f: getattr(t, f) for f in _TASK_FIELDS} for t in tasks])

    def claim_task(self, task_id: str, owner: str, until: float, at: float) -> TaskRecord | None:
        """Take a lease on a task; None when it is gone (done) or leased by a live worker."""
        res = self.conn.execute(
            update(s.task)
            .where(
                s.task.c.id == task_id,
                or_(s.task.c.claimed_until.is_(None), s.task.c.claimed_until < at, s.task.c.owner == owner),
            )
            .values(owner=owner, claimed_until=until)
        )
        if res.rowcount != 1:
            return None
        row = self.conn.execute(select(s.task).where(s.task.c.id == task_id)).first()
        return _task(row) if row else None

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self.conn.execute(select(s.task).where(s.task.c.id == task_id)).first()
        return _task(row) if row else None

    def update_task(self, task_id: str, **fields: Any) -> None:
        self.conn.execute(update(s.task).where(s.task.c.id == task_id).values(**fields))

    def delete_task(self, task_id: str) -> None:
        self.conn.execute(delete(s.task).where(s.task.c.id == task_id))

    def delete_tasks_of_root(self, root_id: str) -> None:
        self.conn.execute(delete(s.task).where(s.task.c.root_id == root_id))

    def pending_tasks(self, at: float, limit: int, *, horizon: float = 0.0) -> list[TaskRecord]:
        """Tasks due before ``at + horizon`` whose lease (if any) has run out, oldest first."""
        rows = self.conn.execute(
            select(s.task)
            .where(s.task.c.due <= at + horizon, or_(s.task.c.claimed_until.is_(None), s.task.c.claimed_until < at))
            .order_by(s.task.c.due)
            .limit(limit)
        )
        return [_task(r) for r in rows]

    def extend_leases(self, owner: str, task_ids: Sequence[str], until: float) -> None:
        if task_ids:
            self.conn.execute(
                update(s.task)
                .where(s.task.c.owner == owner, s.task.c.id.in_(list(task_ids)))
                .values(claimed_until=until)
            )

    def release_leases(self, task_ids: Sequence[str] | None = None) -> None:
        stmt = update(s.task).values(owner=None, claimed_until=None)
        if task_ids is not None:
            stmt = stmt.where(s.task.c.id.in_(list(task_ids)))
        self.conn.execute(stmt)

    # -- node data, execution data, context ----------------------------------------------
    def get_inputs_override(self, node_id: str) -> dict | None:
        row = self.conn.execute(select(s.node_data.c.inputs).where(s.node_data.c.node_id == node_id)).first()
        return codec.loads(row[0]) if row else None

    def set_inputs_override(self, node_id: str, inputs: dict) -> None:
        self._upsert(s.node_data, {"node_id": node_id, "inputs": codec.dumps(inputs)}, ["node_id"])

    def get_execution_data(self, node_id: str) -> tuple[dict, dict] | None:
        row = self.conn.execute(
            select(s.execution_data.c.inputs, s.execution_data.c.outputs).where(
                s.execution_data.c.node_id == node_id
            )
        ).first()
        return (codec.loads(row[0]), codec.loads(row[1])) if row else None

    def set_execution_data(self, node_id: str, inputs: dict, outputs: dict) -> None:
        self._upsert(
            s.execution_data,
            {"node_id": node_id, "inputs": codec.dumps(inputs), "outputs": codec.dumps(outputs)},
            ["node_id"],
        )

    def set_execution_outputs(self, node_id: str, outputs: dict) -> None:
        res = self.conn.execute(
            update(s.execution_data)
            .where(s.execution_data.c.node_id == node_id)
            .values(outputs=codec.dumps(outputs))
        )
        if res.rowcount == 0:
            self.set_execution_data(node_id, {}, outputs)

    def get_context(self, pipeline_id: str, keys: Iterable[str] | None = None) -> dict[str, ContextValue]:
        stmt = select(s.context_value).where(s.context_value.c.pipeline_id == pipeline_id)
        if keys is not None:
            keys = list(keys)
            if not keys:
                return {}
            stmt = stmt.where(s.context_value.c.key.in_(keys))
        out = {}
        for r in self.conn.execute(stmt):
            out[r.key] = ContextValue(r.key, r.type, codec.loads(r.value), r.code, frozenset(codec.loads(r.refs)))
        return out

    def insert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None:
        rows = [self._context_row(pipeline_id, v) for v in values]
        if rows:
            self.conn.execute(insert(s.context_value), rows)

    def upsert_context(self, pipeline_id: str, values: Iterable[ContextValue]) -> None:
        for v in values:
            self._upsert(s.context_value, self._context_row(pipeline_id, v), ["pipeline_id", "key"])

    @staticmethod
    def _context_row(pipeline_id: str, v: ContextValue) -> dict:
        return {
            "pipeline_id": pipeline_id, "key": v.key, "type": v.type, "value": codec.dumps(v.value),
            "code": v.code, "refs": codec.dumps(sorted(v.references)),
        }

    # -- schedules and callbacks ----------------------------------------------------------
    def insert_schedule(self, rec: ScheduleRecord) -> None:
        self.conn.execute(
            insert(s.schedule),
            {
                "id": rec.id, "node_id": rec.node_id, "version": rec.version, "process_id": rec.process_id,
                "type": rec.type, "finished": rec.finished, "expired": rec.expired, "times": rec.times,
                "locked_until": rec.locked_until,
            },
        )

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        row = self.conn.execute(select(s.schedule).where(s.schedule.c.id == schedule_id)).first()
        return ScheduleRecord(**dict(row._mapping)) if row else None

    def schedule_of(self, node_id: str, version: str) -> ScheduleRecord | None:
        row = self.conn.execute(
            select(s.schedule).where(s.schedule.c.node_id == node_id, s.schedule.c.version == version)
        ).first()
        return ScheduleRecord(**dict(row._mapping)) if row else None

    def update_schedule(self, schedule_id: str, **fields: Any) -> None:
        self.conn.execute(update(s.schedule).where(s.schedule.c.id == schedule_id).values(**fields))

    def lock_schedule(self, schedule_id: str, until: float, at: float) -> bool:
        res = self.conn.execute(
            update(s.schedule)
            .where(
                s.schedule.c.id == schedule_id,
                or_(s.schedule.c.locked_until.is_(None), s.schedule.c.locked_until < at),
            )
            .values(locked_until=until)
        )
        return res.rowcount == 1

    def insert_callback(self, callback_id: str, node_id: str, version: str, data: Any) -> None:
        self.conn.execute(
            insert(s.callback_data),
            {"id": callback_id, "node_id": node_id, "version": version, "data": codec.dumps(data)},
        )

    def get_callback(self, callback_id: str) -> Any:
        row = self.conn.execute(select(s.callback_data.c.data).where(s.callback_data.c.id == callback_id)).first()
        return codec.loads(row[0]) if row else None

    # -- histories and logs ---------------------------------------------------------------
    def add_history(self, rec: HistoryRecord) -> None:
        self.conn.execute(
            insert(s.history),
            {
                "node_id": rec.node_id, "started_time": rec.started_time, "archived_time": rec.archived_time,
                "loop": rec.loop, "skip": rec.skip, "retry": rec.retry, "version": rec.version,
                "inputs": codec.dumps(rec.inputs), "outputs": codec.dumps(rec.outputs),
            },
        )

    def histories(self, node_id: str, loop: int = -1) -> list[HistoryRecord]:
        stmt = select(s.history).where(s.history.c.node_id == node_id)
        if loop != -1:
            stmt = stmt.where(s.history.c.loop == loop)
        out = []
        for r in self.conn.execute(stmt.order_by(s.history.c.id)):
            m = dict(r._mapping)
            m["inputs"], m["outputs"] = codec.loads(m["inputs"]), codec.loads(m["outputs"])
            out.append(HistoryRecord(**m))
        return out

    def add_logs(self, rows: Sequence[dict]) -> None:
        if rows:
            self.conn.execute(insert(s.log), list(rows))

    def logs(self, node_id: str, version: str) -> list[str]:
        rows = self.conn.execute(
            select(s.log.c.line)
            .where(s.log.c.node_id == node_id, s.log.c.version == version)
            .order_by(s.log.c.id)
        )
        return [r[0] for r in rows]

    def retag_logs(self, node_id: str, old_version: str, new_version: str) -> None:
        self.conn.execute(
            update(s.log).where(s.log.c.node_id == node_id, s.log.c.version == old_version).values(version=new_version)
        )

    # -- helpers --------------------------------------------------------------------------
    def _upsert(self, table: Any, row: dict, keys: list[str]) -> None:
        values = {k: v for k, v in row.items() if k not in keys}
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=values)
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table).values(**row).on_conflict_do_update(index_elements=keys, set_=values)
        else:
            from sqlalchemy.dialects.mysql import insert as my_insert

            stmt = my_insert(table).values(**row).on_duplicate_key_update(**values)
        self.conn.execute(stmt)


class SqlStore:
    """Owns the SQLAlchemy engine and hands out transactions (:class:`SqlUnit`)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = normalise_url(url)
        self.memory = self.url in ("sqlite://", "sqlite:///:memory:")
        kwargs: dict[str, Any] = {"future": True}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if self.memory:
                kwargs["poolclass"] = StaticPool
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)
        self.engine: Engine = create_engine(self.url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            self._setup_sqlite()
        # SQLite allows one writer; queueing writers here is far cheaper than SQLite's busy wait.
        self._write_lock = threading.RLock() if self.dialect == "sqlite" else None
        if create:
            self.ensure_schema()

    def _setup_sqlite(self) -> None:
        memory = self.memory

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL survives a killed process (not a power cut) and is much faster.
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writers take the lock up front (no deadlocking lock upgrades); readers do not.
            read_only = conn.get_execution_options().get("culm_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    def ensure_schema(self) -> None:
        """Create the schema on an empty database; refuse one from another schema version."""
        from culm.storage.migrate import ensure_schema

        ensure_schema(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqlUnit]:
        """A unit of work: committed when the block ends, rolled back on an exception."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.engine.begin() as conn:
                yield SqlUnit(conn, self.dialect)
        finally:
            if lock is not None:
                lock.release()

    @contextlib.contextmanager
    def reading(self) -> Iterator[SqlUnit]:
        """A read-only unit (no write lock on SQLite files, so readers never wait for writers)."""
        if self.memory:
            with self.transaction() as unit:
                yield unit
            return
        with self.engine.connect() as conn:
            conn.execution_options(culm_read_only=True)
            yield SqlUnit(conn, self.dialect)
            conn.rollback()

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = ["SqlStore", "SqlUnit", "SchemaOutdatedError", "normalise_url"]
