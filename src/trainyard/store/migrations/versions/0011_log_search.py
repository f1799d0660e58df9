"""full-text index of sealed log chunks (issue 14)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Both databases split a line into the same words as trainyard.model.logsearch.query_words: runs of
# letters and digits, case-folded, with everything else a separator ("2.00 GiB" is 2, 00, gib), so a
# query finds the same lines on either.
#
# SQLite: an FTS5 index over log_lines.line that stores no second copy of the text (external
# content), kept in step by triggers so that every insert and delete of a line, whoever makes it
# (the indexer, retention), updates it in the same transaction. Diacritics are kept, as PostgreSQL
# keeps them.
_SQLITE = [
    "CREATE VIRTUAL TABLE log_lines_fts USING fts5("
    "line, content='log_lines', content_rowid='id', tokenize='unicode61 remove_diacritics 0')",
    "CREATE TRIGGER log_lines_fts_ai AFTER INSERT ON log_lines BEGIN "
    "INSERT INTO log_lines_fts(rowid, line) VALUES (new.id, new.line); END",
    "CREATE TRIGGER log_lines_fts_ad AFTER DELETE ON log_lines BEGIN "
    "INSERT INTO log_lines_fts(log_lines_fts, rowid, line) VALUES ('delete', old.id, old.line); END",
]
# PostgreSQL: the 'simple' configuration (no stemming, no stop words: "out of" must match as
# written) over the line with every non-alphanumeric run made a space (its own parser would keep
# "2.00" or "a-b" whole); a stored column, so a GIN recheck does not parse the line again.
_POSTGRES = [
    "ALTER TABLE log_lines ADD COLUMN tsv tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple', regexp_replace(line, '[^[:alnum:]]+', ' ', 'g'))) STORED",
    "CREATE INDEX ix_log_lines_tsv ON log_lines USING gin (tsv)",
]


def upgrade() -> None:
    op.create_table(
        "log_index_queue",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "seq"),
    )
    op.create_index("ix_log_index_queue_at", "log_index_queue", ["enqueued_at"])
    op.create_table(
        "log_lines",
        sa.Column("id", _BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), nullable=False),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_log_lines_job", "log_lines", ["job_id", "attempt", "byte_offset"])
    op.create_index("ix_log_lines_team_id", "log_lines", ["team", "id"])
    dialect = op.get_bind().dialect.name
    for stmt in _SQLITE if dialect == "sqlite" else _POSTGRES if dialect == "postgresql" else []:
        op.execute(stmt)
    # Chunks sealed before this revision are indexed too: the indexer starts on them.
    op.execute(
        "INSERT INTO log_index_queue (job_id, attempt, seq, enqueued_at) "
        "SELECT job_id, attempt, seq, created_at FROM log_chunks"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS log_lines_fts_ad")
        op.execute("DROP TRIGGER IF EXISTS log_lines_fts_ai")
        op.execute("DROP TABLE IF EXISTS log_lines_fts")
    op.drop_index("ix_log_lines_team_id", table_name="log_lines")
    op.drop_index("ix_log_lines_job", table_name="log_lines")
    op.drop_table("log_lines")
    op.drop_index("ix_log_index_queue_at", table_name="log_index_queue")
    op.drop_table("log_index_queue")
