"""Initial schema: pipelines, nodes, states, processes, tasks, data, schedules, histories, logs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 64
KEY = 255


def _big_text() -> sa.types.TypeEngine:
    # MySQL's TEXT stops at 64 KiB; trees and execution data can be far larger.
    return sa.Text().with_variant(mysql.LONGTEXT(), "mysql").with_variant(mysql.LONGTEXT(), "mariadb")


def _id(name: str, nullable: bool = False, **kw: Any) -> sa.Column:
    return sa.Column(name, sa.String(ID), nullable=nullable, **kw)


def upgrade() -> None:
    op.create_table(
        "culm_pipeline",
        _id("id", primary_key=True),
        sa.Column("tree", _big_text(), nullable=False),
        sa.Column("root_data", _big_text(), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("created_time", sa.Double(), nullable=False),
    )
    op.create_table(
        "culm_node",
        _id("id", primary_key=True),
        _id("root_id"),
        _id("pipeline_id"),
        sa.Column("type", sa.String(64), nullable=False),
    )
    op.create_index("ix_culm_node_root_id", "culm_node", ["root_id"])
    op.create_table(
        "culm_state",
        _id("node_id", primary_key=True),
        _id("root_id"),
        _id("parent_id"),
        sa.Column("name", sa.String(32), nullable=False),
        _id("version"),
        sa.Column("loop", sa.Integer(), nullable=False),
        sa.Column("inner_loop", sa.Integer(), nullable=False),
        sa.Column("retry", sa.Integer(), nullable=False),
        sa.Column("skip", sa.Boolean(), nullable=False),
        sa.Column("error_ignored", sa.Boolean(), nullable=False),
        sa.Column("created_time", sa.Double()),
        sa.Column("started_time", sa.Double()),
        sa.Column("archived_time", sa.Double()),
    )
    op.create_index("ix_culm_state_root_id", "culm_state", ["root_id"])
    op.create_index("ix_culm_state_parent_id", "culm_state", ["parent_id"])
    op.create_table(
        "culm_process",
        _id("id", primary_key=True),
        _id("root_id"),
        _id("parent_id", nullable=True),
        _id("current_node_id"),
        _id("destination_id", nullable=True),
        sa.Column("stack", sa.Text(), nullable=False),
        sa.Column("asleep", sa.Boolean(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        _id("suspended_by", nullable=True),
        sa.Column("dead", sa.Boolean(), nullable=False),
        sa.Column("ack_num", sa.Integer(), nullable=False),
        sa.Column("need_ack", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(KEY), nullable=False),
        sa.Column("last_heartbeat", sa.Double()),
    )
    op.create_index("ix_culm_process_root_id", "culm_process", ["root_id"])
    op.create_index("ix_culm_process_current_node_id", "culm_process", ["current_node_id"])
    op.create_index("ix_culm_process_suspended_by", "culm_process", ["suspended_by"])
    op.create_table(
        "culm_task",
        _id("id", primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        _id("process_id"),
        _id("node_id"),
        _id("root_id"),
        _id("schedule_id", nullable=True),
        _id("callback_id", nullable=True),
        sa.Column("due", sa.Double(), nullable=False),
        _id("running_version", nullable=True),
        sa.Column("owner", sa.String(KEY)),
        sa.Column("claimed_until", sa.Double()),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(KEY), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("relayed_at", sa.Double()),
    )
    op.create_index("ix_culm_task_root_id", "culm_task", ["root_id"])
    op.create_index("ix_culm_task_due", "culm_task", ["due"])
    op.create_table(
        "culm_node_data",
        _id("node_id", primary_key=True),
        sa.Column("inputs", _big_text(), nullable=False),
    )
    op.create_table(
        "culm_execution_data",
        _id("node_id", primary_key=True),
        sa.Column("inputs", _big_text(), nullable=False),
        sa.Column("outputs", _big_text(), nullable=False),
    )
    op.create_table(
        "culm_context_value",
        _id("pipeline_id", primary_key=True),
        sa.Column("key", sa.String(KEY), primary_key=True, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("value", _big_text(), nullable=False),
        sa.Column("code", sa.String(KEY)),
        sa.Column("refs", sa.Text(), nullable=False),
    )
    op.create_table(
        "culm_schedule",
        _id("id", primary_key=True),
        _id("node_id"),
        _id("version"),
        _id("process_id"),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("expired", sa.Boolean(), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.Double()),
        sa.UniqueConstraint("node_id", "version", name="uq_culm_schedule_node_version"),
    )
    op.create_table(
        "culm_callback_data",
        _id("id", primary_key=True),
        _id("node_id"),
        _id("version"),
        sa.Column("data", _big_text(), nullable=False),
    )
    op.create_index("ix_culm_callback_data_node_id", "culm_callback_data", ["node_id"])
    op.create_table(
        "culm_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _id("node_id"),
        sa.Column("started_time", sa.Double()),
        sa.Column("archived_time", sa.Double()),
        sa.Column("loop", sa.Integer(), nullable=False),
        sa.Column("skip", sa.Boolean(), nullable=False),
        sa.Column("retry", sa.Integer(), nullable=False),
        _id("version"),
        sa.Column("inputs", _big_text(), nullable=False),
        sa.Column("outputs", _big_text(), nullable=False),
    )
    op.create_index("ix_culm_history_node_id", "culm_history", ["node_id"])
    op.create_table(
        "culm_log",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _id("node_id"),
        _id("version"),
        sa.Column("loop", sa.Integer(), nullable=False),
        sa.Column("created_time", sa.Double(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
    )
    op.create_index("ix_culm_log_node_version", "culm_log", ["node_id", "version"])


def downgrade() -> None:
    for table in (
        "culm_log", "culm_history", "culm_callback_data", "culm_schedule", "culm_context_value",
        "culm_execution_data", "culm_node_data", "culm_task", "culm_process", "culm_state",
        "culm_node", "culm_pipeline",
    ):
        op.drop_table(table)
