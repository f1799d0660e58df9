"""team budgets, resource prices and per-attempt cost (issue 16)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("monthly_budget", sa.BigInteger(), nullable=True))
    op.create_table(
        "prices",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.Column("budget", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team", "month", "percent"),
    )
    op.create_table(
        "budget_overrides",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    op.create_index("ix_budget_overrides_team", "budget_overrides", ["team"], unique=False)
    op.create_index("ix_job_attempts_finished", "job_attempts", ["finished_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_attempts_finished", table_name="job_attempts")
    op.drop_index("ix_budget_overrides_team", table_name="budget_overrides")
    op.drop_table("budget_overrides")
    op.drop_table("budget_alerts")
    op.drop_table("prices")
    with op.batch_alter_table("teams", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("monthly_budget")
