"""The state-change feed: one row per state write, appended in the writer's transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = 64


def upgrade() -> None:
    op.create_table(
        "culm_change",
        # SQLite: INTEGER PRIMARY KEY is the rowid (no AUTOINCREMENT: pruning keeps the newest row,
        # so a seq is never handed out twice).
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("root_id", sa.String(ID), nullable=False),
        sa.Column("node_id", sa.String(ID), nullable=False),
        sa.Column("from_state", sa.String(32)),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("version", sa.String(ID), nullable=False),
        sa.Column("loop", sa.Integer(), nullable=False),
        sa.Column("time", sa.Double(), nullable=False),
    )
    # No secondary index: each would cost every state write a B-tree insert at a random place.
    # Readers follow seq (the primary key); one root's history starts from a seq found by time
    # (culm.storage.feed).


def downgrade() -> None:
    op.drop_table("culm_change")
