"""Schema migrations (Alembic) and the version check a store makes when it opens.

The revisions live in ``culm/storage/migrations``; Alembic's version table (``culm_alembic_version``)
is the only record of the schema's version. SQLite databases are upgraded when a store opens them;
server databases (PostgreSQL, MySQL/MariaDB) are upgraded only by ``culm db upgrade``, because a
migration there is an operator's decision, not a side effect of starting a worker.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from culm.errors import SchemaOutdatedError
from culm.storage import schema as s

if TYPE_CHECKING:
    from culm.storage.sql import SqlStore

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Any = None, url: str | None = None) -> Config:
    """An Alembic configuration for culm's revisions, bound to a connection or a URL."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_version() -> str:
    """The newest revision this culm ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "culm ships at least one revision"
    return head


def _read_version(conn: Any) -> str | None:
    return MigrationContext.configure(conn, opts={"version_table": s.VERSION_TABLE}).get_current_revision()


def current_version(store: SqlStore) -> str | None:
    """The revision recorded in the database, None when culm's schema is absent."""
    with store.engine.connect() as conn:
        return _read_version(conn)


def _check_not_foreign(conn: Any, url: str) -> None:
    if _read_version(conn) is None and inspect(conn).has_table(s.task.name):
        raise SchemaOutdatedError(
            f"the database at {url} holds culm tables without a migration record (made by a "
            "pre-release culm); drop them or use a fresh database"
        )


def upgrade(store: SqlStore) -> str:
    """Apply every pending migration to the store's database; returns the revision reached."""
    url = _display_url(store)
    with store.engine.begin() as conn:
        _check_not_foreign(conn, url)
        command.upgrade(alembic_config(conn), "head")
    return head_version()


def upgrade_database(url: str) -> str:
    """Open ``url`` without the version check, upgrade it, close it (``culm db upgrade``)."""
    from culm.storage.sql import SqlStore

    store = SqlStore(url, create=False)
    try:
        return upgrade(store)
    finally:
        store.dispose()


def ensure_schema(store: SqlStore) -> None:
    """Upgrade an embedded (SQLite) database; refuse a server database that is not at head."""
    version = current_version(store)
    head = head_version()
    if version == head:
        return
    if store.dialect == "sqlite":
        upgrade(store)
        return
    url = _display_url(store)
    if not _is_known(version):
        raise SchemaOutdatedError(
            f"the database at {url} has schema revision {version}, which this culm does not know "
            f"(it expects {head}); it was migrated by a newer culm: upgrade culm"
        )
    raise SchemaOutdatedError(
        f"the database at {url} has schema revision {version or 'none'}, culm needs {head}: "
        f"run `culm db upgrade --db {url}` first"
    )


def _is_known(version: str | None) -> bool:
    if version is None:
        return True
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(version) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


def _display_url(store: SqlStore) -> str:
    return store.engine.url.render_as_string(hide_password=True)
