"""team quotas (concurrent CPU, memory and GPUs, also per GPU type) and the scheduling fields of a
job as columns (preemptible, replicas, data region and URIs), so a cycle never parses specs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cpu_quota", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("memory_quota", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("gpu_quota", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpu_type_quotas", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("replicas", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("region", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("require_region", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("data_uris", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, recreate="never") as batch_op:
        for column in ("data_uris", "require_region", "region", "replicas", "preemptible"):
            batch_op.drop_column(column)
    # In place: rebuilding `teams` is refused by the foreign keys of users once there are any.
    with op.batch_alter_table("teams", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("gpu_type_quotas")
        batch_op.drop_column("gpu_quota")
        batch_op.drop_column("memory_quota")
        batch_op.drop_column("cpu_quota")
