"""The state store: one interface, one SQL implementation for PostgreSQL and SQLite.

Import what callers exchange with the store from here (errors, records, typed rows, the ``Protocol``
each consumer needs); only the composition root imports the implementation, ``store.sql.SqlStore``.
"""

from trainyard.store.errors import ConcurrentChange, Conflict, IdempotencyConflict, NotFound, StoreError
from trainyard.store.ports import (
    AuditTrail,
    Authenticator,
    BatchWriter,
    EventLog,
    Heartbeats,
    Outbox,
    Schema,
    Secrets,
    Tenancy,
)
from trainyard.store.records import (
    DEFAULT_MAX_PREEMPTIONS,
    FinishReport,
    JobFilter,
    Lease,
    Placement,
    ReportResult,
    StoreConfig,
    SubmitResult,
    WorkerCommand,
)
from trainyard.store.rows import PendingRow, RunningRow

__all__ = [
    "DEFAULT_MAX_PREEMPTIONS",
    "AuditTrail",
    "Authenticator",
    "BatchWriter",
    "ConcurrentChange",
    "Conflict",
    "EventLog",
    "FinishReport",
    "Heartbeats",
    "IdempotencyConflict",
    "JobFilter",
    "Lease",
    "NotFound",
    "Outbox",
    "PendingRow",
    "Placement",
    "ReportResult",
    "RunningRow",
    "Schema",
    "Secrets",
    "StoreConfig",
    "StoreError",
    "SubmitResult",
    "Tenancy",
    "WorkerCommand",
]
