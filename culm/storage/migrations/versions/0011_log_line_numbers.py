"""Each log line's number in its run, so a page from an offset is a seek, not a walk.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Before it, `get_node_log_page` from an offset in the middle of a run of a million lines
    # passed over the lines before it (or after it, from the end): 0.75 s on PostgreSQL. The writer
    # numbers the lines it adds from the run's count (culm_log_count, 0010), so the page reads the
    # (node_id, version, line_no) index from the offset. The lines stored before this revision are
    # left unnumbered (NULL): numbering them would rewrite the whole log table while writers wait;
    # a page in their part of a run is read as before (see SqlUnit.logs_at).
    op.add_column("culm_log", sa.Column("line_no", sa.BigInteger(), nullable=True))
    op.create_index("ix_culm_log_node_version_line", "culm_log", ["node_id", "version", "line_no"])


def downgrade() -> None:
    op.drop_index("ix_culm_log_node_version_line", table_name="culm_log")
    op.drop_column("culm_log", "line_no")
