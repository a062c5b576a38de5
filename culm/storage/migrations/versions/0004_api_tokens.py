"""API tokens of ``culm serve``: role, salted secret hash, creation and revocation times.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "culm_api_token",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_time", sa.Double(), nullable=False),
        sa.Column("revoked_time", sa.Double()),
        sa.Column("last_used_time", sa.Double()),
    )


def downgrade() -> None:
    op.drop_table("culm_api_token")
