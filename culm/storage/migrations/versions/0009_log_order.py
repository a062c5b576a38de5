"""A run's log lines in their order: the index on culm_log becomes (node_id, version, id).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A page of a run's lines (`culm logs`, GET /nodes/{id}/logs, get_node_log_page) is read in id
    # order from one (node_id, version). With (node_id, version) alone, PostgreSQL fetched every
    # line of the run and sorted them for each page: a tail of a run of millions of lines sorted
    # millions of rows. With id last in the index the rows come out in order, and the last page is
    # read backwards from the end. (SQLite's and InnoDB's indexes end with the primary key anyway:
    # there the new index only names it.) It replaces the old index (same leading columns).
    op.create_index("ix_culm_log_node_version_id", "culm_log", ["node_id", "version", "id"])
    op.drop_index("ix_culm_log_node_version", table_name="culm_log")


def downgrade() -> None:
    op.create_index("ix_culm_log_node_version", "culm_log", ["node_id", "version"])
    op.drop_index("ix_culm_log_node_version_id", table_name="culm_log")
