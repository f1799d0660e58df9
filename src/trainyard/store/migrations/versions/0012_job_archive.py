"""archived jobs (retention prunes finished jobs to object storage; issue 14)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archived_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("user_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("archived_at", sa.Float(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_status_id", ["status", "id"], unique=False)
        batch_op.create_index("ix_jobs_user_id", ["user_name", "id"], unique=False)
        batch_op.create_index("ix_jobs_finished_at", ["finished_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None, recreate="never") as batch_op:
        for index in ("ix_jobs_finished_at", "ix_jobs_user_id", "ix_jobs_status_id"):
            batch_op.drop_index(index)
    op.drop_table("archived_jobs")
