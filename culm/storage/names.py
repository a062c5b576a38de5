"""Names from culm's schema that code needs without the table definitions.

Importing :mod:`culm.storage.schema` builds every ``Table`` and loads the option tables of the
PostgreSQL and MySQL dialects its indexes and types name: about a third of a second of a short
command's start (``culm pause`` on a SQLite file), which needs none of it. Opening a database
already at head, and the SQL units, read only these names; migrations, token and gauge queries
import the schema itself.
"""

from __future__ import annotations

# Alembic's version table: the only record of the schema's version (culm.storage.migrate).
VERSION_TABLE = "culm_alembic_version"
# A table every culm schema has: its presence without a version row marks a pre-release schema.
TASK_TABLE = "culm_task"
# Rows per state of culm_root_count (see the comment above ``root_count`` in culm.storage.schema).
ROOT_COUNT_SHARDS = 16
# Counter rows a root pipeline's stored bytes may be spread over (culm_root_bytes, revision 0010).
ROOT_BYTES_SHARDS = 16
