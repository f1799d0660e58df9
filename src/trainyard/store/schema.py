"""Tables. Times are unix seconds (float) so SQLite and PostgreSQL agree to the microsecond."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

teams = sa.Table(
    "teams",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("weight", sa.Float, nullable=False, server_default="1"),
    sa.Column("created_at", sa.Float, nullable=False),
    # Concurrent limits; NULL: none. gpu_type_quotas: {"a100": 8, ...} on top of gpu_quota.
    sa.Column("cpu_quota", sa.Float, nullable=True),
    sa.Column("memory_quota", sa.BigInteger, nullable=True),
    sa.Column("gpu_quota", sa.Integer, nullable=True),
    sa.Column("gpu_type_quotas", sa.JSON, nullable=True),
    # Dollars a calendar month (UTC), in micro-dollars (model/pricing.py); NULL: no budget.
    sa.Column("monthly_budget", sa.BigInteger, nullable=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("tier", sa.String(32), nullable=True),  # rate-limit tier; None: the default tier
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("users.name"), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("description", sa.String(200), nullable=True),
    sa.Column("created_by", sa.String(64), nullable=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=True),
    sa.Column("user_name", sa.String(64), nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("pool", sa.String(64), nullable=True),
    # Resources are copied out of the spec so the scheduler's snapshot needs no JSON parsing.
    sa.Column("cpu", sa.Float, nullable=False),
    sa.Column("memory", sa.BigInteger, nullable=False),
    sa.Column("gpu", sa.Integer, nullable=False),
    sa.Column("gpu_type", sa.String(32), nullable=True),
    sa.Column("max_runtime", sa.Float, nullable=False),
    # The spec's scheduling fields as columns: a cycle reads thousands of pending jobs.
    sa.Column("preemptible", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("replicas", sa.Integer, nullable=False, server_default="1"),
    sa.Column("region", sa.String(64), nullable=True),
    sa.Column("require_region", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("data_uris", sa.JSON, nullable=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("spec_hash", sa.String(64), nullable=False),
    sa.Column("idempotency_key", sa.String(256), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("queued_at", sa.Float, nullable=False),  # its place in the queue: kept when preempted or lost
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("deadline", sa.Float, nullable=True),  # started_at + max_runtime while running
    sa.Column("cancel_requested_at", sa.Float, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),  # current attempt number
    sa.Column("tries", sa.Integer, nullable=False, server_default="0"),  # attempts of this run using a try
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("worker_id", sa.String(64), nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("pending_reason", sa.Text, nullable=True),
    sa.Column("not_before", sa.Float, nullable=True),
    # Gangs (replicas > 1): the job is rank 0 and names itself as gang; ranks 1..N-1 are member
    # rows "<id>-<rank>" that run like jobs but are not listed or scheduled on their own.
    sa.Column("gang_id", sa.String(32), nullable=True),
    sa.Column("replica_rank", sa.Integer, nullable=False, server_default="0"),
    # Set on rank 0 when another rank ended badly: {"outcome", "reason"} rank 0's attempt ends with.
    sa.Column("gang_abort", sa.JSON(none_as_null=True), nullable=True),
    # Arrays: the parent (array_tasks: how many it has) never runs, and its status follows its
    # tasks; each task is a row "<id>-<index>" (array_id: the parent; array_index) that is scheduled,
    # retried and logged as a job of its own, but not listed. array_limit is the array's parallelism,
    # on every row of it: the scheduler caps the array's running tasks.
    sa.Column("array_id", sa.String(32), nullable=True),
    sa.Column("array_index", sa.Integer, nullable=True),
    sa.Column("array_tasks", sa.Integer, nullable=True),
    sa.Column("array_limit", sa.Integer, nullable=True),
    # True while the job (an array: each row of it) waits for the jobs its spec's depends_on names.
    sa.Column("awaiting_dependencies", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("user_name", "idempotency_key", name="uq_jobs_user_idempotency_key"),
    sa.Index("ix_jobs_status", "status"),
    sa.Index("ix_jobs_team_id", "team", "id"),
    sa.Index("ix_jobs_worker", "worker_id"),
    sa.Index("ix_jobs_gang", "gang_id"),
    sa.Index("ix_jobs_array", "array_id", "array_index"),
    sa.Index("ix_jobs_array_status", "array_id", "status"),
    sa.Index("ix_jobs_awaiting", "awaiting_dependencies", "status"),
    # Keyset pages of `yard ls` by status or user, newest first, without sorting every match; and
    # retention's scan of finished jobs by age (migration 0012).
    sa.Index("ix_jobs_status_id", "status", "id"),
    sa.Index("ix_jobs_user_id", "user_name", "id"),
    sa.Index("ix_jobs_finished_at", "finished_at", "id"),
)

job_attempts = sa.Table(
    "job_attempts",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("worker_id", sa.String(64), nullable=False),
    sa.Column("lease_token", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("gpu_indices", sa.JSON, nullable=False),
    sa.Column("scheduled_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("stderr_tail", sa.Text, nullable=True),
    sa.Column("log_bytes", sa.BigInteger, nullable=True),
    sa.Column("checkpoint_key", sa.Text, nullable=True),
    # When the running job last wrote a checkpoint, as its agent reports it: preemption picks the
    # victims that would lose the least work since theirs.
    sa.Column("last_checkpoint_at", sa.Float, nullable=True),
    sa.Index("ix_job_attempts_worker_status", "worker_id", "status"),
    # Usage reports and the budget watch find attempts by when they ended (NULL: still open).
    sa.Index("ix_job_attempts_finished", "finished_at"),
)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False, unique=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_job_events_job", "job_id", "id"),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("topic", sa.String(64), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, nullable=True),
    sa.Index("ix_outbox_unsent", "sent_at", "id"),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("hostname", sa.String(256), nullable=False),
    sa.Column("pool", sa.String(64), nullable=False),
    sa.Column("region", sa.String(64), nullable=True),
    sa.Column("cpu", sa.Float, nullable=False),
    sa.Column("memory", sa.BigInteger, nullable=False),
    sa.Column("gpu", sa.Integer, nullable=False),
    sa.Column("gpu_type", sa.String(32), nullable=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("version", sa.String(32), nullable=True),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("registered_at", sa.Float, nullable=False),
    sa.Column("last_heartbeat", sa.Float, nullable=False),
    # Dataset URIs in the worker's local data cache, as its agent last reported them.
    sa.Column("cached_uris", sa.JSON, nullable=True),
    # Set by a drain: from then on the worker's running attempts are preempted (NULL: not drained,
    # or drained by its own agent, which stops its jobs itself).
    sa.Column("drain_deadline", sa.Float, nullable=True),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

log_chunks = sa.Table(
    "log_chunks",
    metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("stored_size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Token buckets for rate limits while Redis is unavailable (cache.sql.SqlCache).
rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("bucket", sa.String(200), primary_key=True),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# What the leader publishes for every replica to serve (key "queue": positions and estimated starts).
scheduler_state = sa.Table(
    "scheduler_state",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Who cancelled, restarted, drained, changed a team, or managed tokens, users and secrets.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(256), nullable=False),
    sa.Column("team", sa.String(64), nullable=True),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Index("ix_audit_log_team_id", "team", "id"),
)

# Team secrets, encrypted with the control plane's key (Fernet); only a leased attempt gets a value.
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(64), nullable=False),
)

# Budgets and usage (issue 16): what an hour of each resource costs, set by an admin. One row (id 1)
# holding Prices.to_settings(): exact dollar amounts as text, so no float ever rounds a price.
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("settings", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(64), nullable=False),
)

# Each budget threshold (80, 100) a team crossed in a month (YYYY-MM, UTC): the primary key makes the
# event fire once per month however many replicas or leaders look.
budget_alerts = sa.Table(
    "budget_alerts",
    metadata,
    sa.Column("team", sa.String(64), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("percent", sa.Integer, primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("spent", sa.BigInteger, nullable=False),
    sa.Column("budget", sa.BigInteger, nullable=False),
)

# Jobs an admin let through although their team is over its monthly budget.
budget_overrides = sa.Table(
    "budget_overrides",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("ix_budget_overrides_team", "team"),
)

# Jobs that retention moved to object storage (store/archive.py): one row per archived jobs row (a
# gang's ranks and an array's tasks too), so `GET /v1/jobs/{id}` finds the archive object and still
# applies the visibility rules (team) before reading it.
archived_jobs = sa.Table(
    "archived_jobs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("user_name", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("archived_at", sa.Float, nullable=False),
    sa.Column("object_key", sa.Text, nullable=False),
)

# Log search (store/logsearch.py). A sealed chunk waits here until the indexer has read it, so the
# worker's seal never waits for indexing and a restart resumes where the last one stopped.
log_index_queue = sa.Table(
    "log_index_queue",
    metadata,
    sa.Column("job_id", sa.String(32), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("enqueued_at", sa.Float, nullable=False),
    sa.Index("ix_log_index_queue_at", "enqueued_at"),
)

# The indexed lines. The full-text index over ``line`` depends on the database, so migration 0011
# creates it and the schema comparison skips it (``DIALECT_ONLY``): on SQLite the FTS5 table
# ``log_lines_fts`` (external content, kept by triggers), on PostgreSQL a generated ``tsv`` column
# with a GIN index.
log_lines = sa.Table(
    "log_lines",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("byte_offset", sa.BigInteger, nullable=False),
    sa.Column("team", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("line", sa.Text, nullable=False),
    sa.Index("ix_log_lines_job", "job_id", "attempt", "byte_offset"),
    sa.Index("ix_log_lines_team_id", "team", "id"),
)

LOG_SEARCH_DIALECT_ONLY = frozenset({"log_lines_fts", "tsv", "ix_log_lines_tsv"})
"""What migration 0011 creates for one database only (see ``log_lines``), with FTS5's own tables
(``log_lines_fts_*``): Alembic's comparison with ``metadata`` must not see them."""


def declared_by_metadata(name: str | None, type_: str, parent: object) -> bool:
    """Alembic's ``include_name`` hook: False for the dialect-only log search objects."""
    if name is None:
        return True
    return name not in LOG_SEARCH_DIALECT_ONLY and not name.startswith("log_lines_fts_")
