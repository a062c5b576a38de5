"""The worker registry: one row per live ``culm worker`` process, beaten with the database's time.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "culm_worker",
        sa.Column("owner", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_key", sa.String(255), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(255), nullable=False),
        sa.Column("started_time", sa.Double(), nullable=False),
        sa.Column("beat_time", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("culm_worker")
