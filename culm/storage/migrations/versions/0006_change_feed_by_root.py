"""The change feed read by pipeline: an index on culm_change (root_id, seq).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One pipeline's changes, in seq order, without reading the other pipelines' rows: without
    # it, a watcher of a pipeline started long ago (`culm watch`, the console) read every change
    # written since that pipeline's creation (0.6 s with 100,000 finished pipelines stored).
    # A pipeline's rows sit together in it, so the engine's appends touch one leaf per running
    # pipeline.
    op.create_index("ix_culm_change_root_seq", "culm_change", ["root_id", "seq"])


def downgrade() -> None:
    op.drop_index("ix_culm_change_root_seq", table_name="culm_change")
