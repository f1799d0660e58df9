"""gangs: a job with replicas > 1 runs as rank 0 plus member rows for ranks 1..N-1

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gang_id", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("replica_rank", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("gang_abort", sa.JSON(), nullable=True))
        batch_op.create_index("ix_jobs_gang", ["gang_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, recreate="never") as batch_op:
        batch_op.drop_index("ix_jobs_gang")
        for column in ("gang_abort", "replica_rank", "gang_id"):
            batch_op.drop_column(column)
