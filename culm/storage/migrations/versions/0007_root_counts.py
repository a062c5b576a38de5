"""Root pipelines per state, kept by the writers: a listing's counts without reading every root.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SHARDS = 16  # culm.storage.schema.ROOT_COUNT_SHARDS when this revision was written
STATES = (
    "CREATED", "READY", "LOOP_READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED",
    "ROLLING_BACK", "ROLL_BACK_SUCCESS", "ROLL_BACK_FAILED",
)


def upgrade() -> None:
    # Before it, the counts of `culm list` and the console's first page read every root state
    # (50 ms with 100,000 pipelines stored on SQLite, growing with each one). Each writer adds
    # its net change to one shard's rows at its commit (culm.storage.sql.base SqlUnit._count_roots).
    counts = op.create_table(
        "culm_root_count",
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("pipelines", sa.BigInteger(), nullable=False),
    )
    conn = op.get_bind()
    stored: dict[str, int] = {str(r[0]): int(r[1]) for r in conn.execute(sa.text(
        "SELECT name, COUNT(*) FROM culm_state WHERE parent_id = '' AND root_id <> '' GROUP BY name"))}
    names = sorted({*STATES, *stored})
    # The stored pipelines are counted in shard 0; the other shards start at nothing.
    op.bulk_insert(counts, [{"shard": shard, "name": name, "pipelines": stored.get(name, 0) if shard == 0 else 0}
                            for shard in range(SHARDS) for name in names])


def downgrade() -> None:
    op.drop_table("culm_root_count")
