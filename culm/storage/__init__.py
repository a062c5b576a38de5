"""The SQLAlchemy store (SQLite, PostgreSQL, MySQL/MariaDB), its schema and migrations.

It implements :mod:`culm.core.ports` and imports from the core only the ports, the records and
the state names (see docs/architecture.md). What other packages may use is named here.
"""

from culm.storage.migrate import upgrade_database
from culm.storage.snapshot import read_snapshot, read_snapshots, read_transitions
from culm.storage.sql import SqlStore
from culm.storage.workers import SqlWorkerRegistry

__all__ = [
    # the store
    "SqlStore",
    # the worker registry (`culm workers`; workers reach it through SqlStore.worker_registry)
    "SqlWorkerRegistry",
    # `culm db upgrade`
    "upgrade_database",
    # pipelines' rows for the invariant checker (culm.core.invariants)
    "read_snapshot",
    "read_snapshots",
    "read_transitions",
]
