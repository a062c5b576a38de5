"""Listing pipelines: a name column on culm_pipeline and indexes that answer a list without a scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = 255
# Root states are the culm_state rows whose parent_id is empty. SQLite and PostgreSQL index only
# those rows (a partial index: the state writes of ordinary nodes never touch it); MySQL has no
# partial index, so there every state row is in it (a state change updates it too).
PARTIAL = sa.text("parent_id = ''")


def _backfill_names() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, tree FROM culm_pipeline")).fetchall()
    for pipeline_id, tree in rows:
        try:
            name = json.loads(tree).get("name") or ""
        except (ValueError, AttributeError):
            name = ""
        if name:
            conn.execute(sa.text("UPDATE culm_pipeline SET name = :name WHERE id = :id"),
                         {"name": str(name)[:NAME], "id": pipeline_id})


def upgrade() -> None:
    op.add_column("culm_pipeline", sa.Column("name", sa.String(NAME), nullable=False, server_default=""))
    _backfill_names()
    # (id, name): the name of a listed pipeline is read from the index, never from the row that
    # also holds the (possibly large) tree.
    op.create_index("ix_culm_pipeline_id_name", "culm_pipeline", ["id", "name"])
    op.create_index("ix_culm_state_roots", "culm_state", ["parent_id", "created_time", "name", "root_id"],
                    sqlite_where=PARTIAL, postgresql_where=PARTIAL)


def downgrade() -> None:
    op.drop_index("ix_culm_state_roots", table_name="culm_state")
    op.drop_index("ix_culm_pipeline_id_name", table_name="culm_pipeline")
    op.drop_column("culm_pipeline", "name")
