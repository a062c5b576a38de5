"""The order callbacks were accepted in: ``culm_callback_data.seq``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Each callback of one run of a node (node_id, version) gets the next number when it is
    # accepted (the node's state row is locked then), and a multiple-callback node runs them in
    # that order (culm.core.scheduling). Rows stored before have 0: their order among themselves
    # was never kept, so it stays unknown; every callback accepted after comes after them.
    with op.batch_alter_table("culm_callback_data") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("culm_callback_data") as batch:
        batch.drop_column("seq")
