"""job arrays (a parent and one task row per index) and dependencies (a job waits for others)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("array_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("array_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("array_tasks", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("array_limit", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("awaiting_dependencies", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_index("ix_jobs_array", ["array_id", "array_index"], unique=False)
        batch_op.create_index("ix_jobs_array_status", ["array_id", "status"], unique=False)
        batch_op.create_index("ix_jobs_awaiting", ["awaiting_dependencies", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, recreate="never") as batch_op:
        for index in ("ix_jobs_awaiting", "ix_jobs_array_status", "ix_jobs_array"):
            batch_op.drop_index(index)
        for column in ("awaiting_dependencies", "array_limit", "array_tasks", "array_index", "array_id"):
            batch_op.drop_column(column)
