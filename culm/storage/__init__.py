"""The SQLAlchemy store (SQLite, PostgreSQL, MySQL/MariaDB), its schema and migrations, and the
memory store (tests and experiments).

It implements :mod:`culm.core.ports` and imports from the core only the ports, the records and
the state names (see docs/architecture.md). What other packages may use is named here.
"""

from typing import TYPE_CHECKING

from culm._faces import lazy_face

if TYPE_CHECKING:
    from culm.storage.memory import MemoryStore
    from culm.storage.migrate import recount_database, upgrade_database
    from culm.storage.sql import SqlStore
    from culm.storage.sqlite_url import parse_sqlite_url
    from culm.storage.workers import SqlWorkerRegistry

__all__ = [
    # the stores
    "SqlStore",
    "MemoryStore",
    # the worker registry (`culm workers`; workers reach it through SqlStore.worker_registry)
    "SqlWorkerRegistry",
    "worker_dead_after",
    # `culm db upgrade`, `culm db recount`
    "upgrade_database",
    "recount_database",
    # what a sqlite:/// URL names (the CLI's checks of the file before it opens it)
    "parse_sqlite_url",
]

# Imported when first used (culm._faces): the memory store does not load SQLAlchemy.
__getattr__, __dir__ = lazy_face(__name__, {
    "SqlStore": ".sql", "MemoryStore": ".memory", "SqlWorkerRegistry": ".workers", "parse_sqlite_url": ".sqlite_url",
    "worker_dead_after": ".workers",
    **dict.fromkeys(("upgrade_database", "recount_database"), ".migrate"),
})
