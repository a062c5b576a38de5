"""Schema creation and version checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import inspect, insert, select

from culm.errors import SchemaOutdatedError
from culm.storage import schema as s

if TYPE_CHECKING:
    from culm.storage.sql import SqlStore


def current_version(store: SqlStore) -> str | None:
    """The schema version recorded in the database, None when culm's tables are absent."""
    with store.engine.connect() as conn:
        if not inspect(conn).has_table(s.schema_version.name):
            return None
        row = conn.execute(select(s.schema_version.c.version)).first()
        return row[0] if row else None


def upgrade(store: SqlStore) -> str:
    """Bring the schema to the version this culm expects; returns that version."""
    version = current_version(store)
    if version == s.SCHEMA_VERSION:
        return version
    if version is None:
        with store.engine.begin() as conn:
            s.metadata.create_all(conn)
            conn.execute(insert(s.schema_version), {"id": 1, "version": s.SCHEMA_VERSION})
        return s.SCHEMA_VERSION
    raise SchemaOutdatedError(f"database schema {version} cannot be upgraded to {s.SCHEMA_VERSION}")


def ensure_schema(store: SqlStore) -> None:
    """Embedded databases are created or upgraded on open; server ones must be migrated first."""
    version = current_version(store)
    if version == s.SCHEMA_VERSION:
        return
    if store.dialect == "sqlite":
        upgrade(store)
        return
    raise SchemaOutdatedError(
        f"the database at {store.engine.url.render_as_string(hide_password=True)} has schema "
        f"{version or 'none'}, culm needs {s.SCHEMA_VERSION}: run `culm db upgrade --db URL` first"
    )
