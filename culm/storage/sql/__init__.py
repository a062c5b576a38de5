"""The SQL store: the storage ports implemented with SQLAlchemy Core (SQLite, PostgreSQL, MySQL).

``base`` holds the store and the unit of work common to all dialects, ``statements`` the SQL they
send, and ``sqlite``, ``postgres`` and ``mysql`` what each dialect does its own way (chosen once,
by ``base.dialect_for``, from the database URL).
"""

from culm.storage.sql.base import SchemaOutdatedError, SqlStore, SqlUnit, normalise_url

__all__ = ["SqlStore", "SqlUnit", "SchemaOutdatedError", "normalise_url"]
