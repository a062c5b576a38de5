"""Schema migrations (Alembic) and the version check a store makes when it opens.

The revisions live in ``culm/storage/migrations``; Alembic's version table (``culm_alembic_version``)
is the only record of the schema's version. SQLite databases are upgraded when a store opens them;
server databases (PostgreSQL, MySQL/MariaDB) are upgraded only by ``culm db upgrade``, because a
migration there is an operator's decision, not a side effect of starting a worker.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from culm._retry import causes
from culm.errors import SchemaMissingError, SchemaOutdatedError
from culm.storage.names import TASK_TABLE, VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

    from culm.storage.sql import SqlStore

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in culm/storage/migrations (a test checks it against Alembic's view). Opening
# a database already at it needs no Alembic: importing Alembic (with Mako and Pygments) would add
# ~110 modules and ~30,000 objects to every process that opens a store, and every full garbage
# collection in it would walk them.
HEAD_REVISION = "0011"


def alembic_config(connection: Any = None, url: str | None = None) -> Config:
    """An Alembic configuration for culm's revisions, bound to a connection or a URL."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_version() -> str:
    """The newest revision this culm ships, as Alembic reads it from the revision files."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "culm ships at least one revision"
    return head


def _read_version(conn: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def _read_version_plainly(store: SqlStore) -> str | None:
    """The recorded revision read with plain SQL (None: no version table, or no single row)."""
    with store.engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None


def current_version(store: SqlStore) -> str | None:
    """The revision recorded in the database, None when culm's schema is absent."""
    with store.engine.connect() as conn:
        return _read_version(conn)


def _check_not_foreign(conn: Any, url: str) -> None:
    if _read_version(conn) is None and inspect(conn).has_table(TASK_TABLE):
        raise SchemaOutdatedError(
            f"the database at {url} holds culm tables without a migration record (made by a "
            "pre-release culm); drop them or use a fresh database"
        )


def upgrade(store: SqlStore) -> str:
    """Apply every pending migration to the store's database; returns the revision reached."""
    url = _display_url(store)
    with store.engine.begin() as conn:
        _check_not_foreign(conn, url)
        _no_idle_transaction_timeout(conn)
        from alembic import command

        command.upgrade(alembic_config(conn), "head")
    return head_version()


def _no_idle_transaction_timeout(conn: Any) -> None:
    """Let this migration's transaction sit idle as long as it needs: a data migration may work out
    rows in Python between two statements for longer than an engine batch ever does (see
    base.IDLE_TRANSACTION_SECONDS, which every culm connection otherwise sets). On PostgreSQL for
    this transaction only; on MariaDB for the connection (a migration's store is its own)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
    elif conn.dialect.name in ("mysql", "mariadb"):
        conn.exec_driver_sql("SET SESSION sql_mode = @@SESSION.sql_mode /*M!100300 , idle_transaction_timeout = 0 */")


def upgrade_database(url: str) -> str:
    """Open ``url`` without the version check, upgrade it, close it (``culm db upgrade``)."""
    from culm.storage.sql import SqlStore

    store = SqlStore(url, create=False)
    try:
        return upgrade(store)
    finally:
        store.dispose()


def recount_database(url: str) -> dict[str, int]:
    """Open ``url``, count its root pipelines per state again from their rows into the kept counts
    that listing reads (``culm_root_count``), close it (``culm db recount``); returns the counts.

    Needed only when root state rows were changed behind culm's writers: edited by hand, restored
    from a partial copy, or written by a culm older than revision 0007 that kept running after
    the upgrade. Safe while workers run: their commits wait for it, then add to the new count.
    """
    from culm.storage.sql import SqlStore

    store = SqlStore(url)
    try:
        with store.transaction() as unit:
            return unit.recount_roots()
    finally:
        store.dispose()


def ensure_schema(store: SqlStore) -> None:
    """Upgrade an embedded (SQLite) database; refuse a server database that is not at head."""
    if _read_version_plainly(store) == HEAD_REVISION:
        return
    version = current_version(store)
    head = head_version()
    if version == head:
        return
    url = _display_url(store)
    if store.traits.migrates_at_open and _is_known(version):
        upgrade(store)
        return
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
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(version) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


# The drivers culm picks for a bare ``postgresql://`` or ``mysql://`` URL (normalise_url), left out of
# the URL shown to the user: the hint ``culm db upgrade --db URL`` shows the URL as they wrote it.
_DEFAULT_DRIVERS = {"postgresql+psycopg": "postgresql", "mysql+pymysql": "mysql", "mysql+mysqldb": "mysql"}


def _display_url(store: SqlStore) -> str:
    url = store.engine.url
    bare = _DEFAULT_DRIVERS.get(url.drivername)
    return (url.set(drivername=bare) if bare else url).render_as_string(hide_password=True)


# How each server names a missing table: SQLite "no such table: culm_state", PostgreSQL (SQLSTATE
# 42P01) 'relation "culm_state" does not exist', MySQL/MariaDB (error 1146) "Table
# 'test.culm_state' doesn't exist".
# Only culm's own tables: a user's table missing (a signal receiver's, an expression function's)
# is not a culm schema to upgrade.
_MISSING_TABLE = re.compile(
    r"no such table: (?:\w+\.)?(culm_\w+)|relation \"(?:\w+\.)?(culm_\w+)\" does not exist"
    r"|Table '(?:\w+\.)?(culm_\w+)' doesn't exist"
)


def missing_table(exc: BaseException) -> str | None:
    """The table ``exc`` (or an exception it wraps) says is missing, or None."""
    for e in causes(exc):
        found = _MISSING_TABLE.search(str(e))
        if found:
            return next(name for name in found.groups() if name)
    return None


def check_tables(store: SqlStore) -> None:
    """Refuse a database at head that lacks one of culm's tables (dropped, or only part of it
    restored): the version check alone passes it, and a worker would then meet the missing table
    in every beat and task. One inspection of the table names.

    Raises:
        SchemaMissingError: naming the first missing table and the fix.
    """
    from culm.storage.schema import metadata

    with store.engine.connect() as conn:
        present = set(inspect(conn).get_table_names())
    missing = sorted(set(metadata.tables) - present)
    if missing:
        raise _missing_table_error(store, missing[0])


def schema_missing_error(store: SqlStore, exc: BaseException) -> SchemaMissingError | None:
    """A :class:`SchemaMissingError` naming the table ``exc`` found missing and the way to make
    the schema whole, or None when ``exc`` is about something else."""
    table = missing_table(exc)
    if table is None:
        return None
    return _missing_table_error(store, table)


def _missing_table_error(store: SqlStore, table: str) -> SchemaMissingError:
    url = _display_url(store)
    try:
        version = _read_version_plainly(store)
    except Exception:  # noqa: BLE001 - the database went away meanwhile: the advice covers both
        version = "unknown"
    if version is None:
        return SchemaMissingError(
            f"the database at {url} has no culm table {table}: culm's schema is not there (never "
            f"created, or dropped); run `culm db upgrade --db {url}` to create it"
        )
    return SchemaMissingError(
        f"the database at {url} has no culm table {table}, although it records schema revision "
        f"{version}: its tables were dropped, or only part of it was restored. Restore it from a "
        f"backup; or, to start afresh without its pipelines, drop every culm_* table (with "
        f"{VERSION_TABLE}) and run `culm db upgrade --db {url}`"
    )
