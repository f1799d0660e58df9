"""What each consumer of the store needs, as small ``Protocol``s.

Modules outside the store depend on these rather than on ``SqlStore``: the composition root builds
the store and hands each consumer the facade or the repository that fits. ``SqlStore`` satisfies
every one; each repository satisfies those of its topic (checked by mypy in ``sql.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import sqlalchemy as sa

from trainyard.model.records import AuditEntry, Event, OutboxRow, SecretInfo, Team, TokenInfo, User
from trainyard.store.logsearch import LogHit, LogQuery


class Outbox(Protocol):
    """What the outbox relay needs: unsent events in commit order, and marking them sent."""

    def outbox_unsent(self, limit: int = ...) -> list[OutboxRow]:
        """The oldest unsent rows, in id order."""
        ...

    def outbox_mark_sent_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Mark sent the unsent rows whose ids lie in these inclusive ranges, each read whole."""
        ...


class EventLog(Protocol):
    """What the event-log replay check needs: the outbox joined with its events."""

    def outbox_events(self, after_id: int = ..., limit: int = ...) -> list[tuple[int, str, bool, Event]]:
        """Outbox rows after ``after_id`` as ``(outbox id, topic, sent, event)``, in id order."""
        ...

    def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids the store holds."""
        ...


class Heartbeats(Protocol):
    """What the cache's SQL fallback needs from the fleet: worker heartbeats in the ``workers``
    table, a writer transaction of the store's (its rate buckets), and a liveness check."""

    def record_heartbeat(self, worker_id: str, at: float) -> None:
        """Set one worker's last heartbeat."""
        ...

    def heartbeat_at(self, worker_id: str) -> float | None:
        """One worker's last heartbeat as stored."""
        ...

    def transaction(self) -> AbstractContextManager[sa.Connection]:
        """A write transaction of the store (on SQLite, queued behind the store's writers)."""
        ...

    def ping(self) -> bool:
        """True when the database answers; raises when it does not."""
        ...


class RateBuckets(Protocol):
    """What the cache's SQL fallback needs for rate limits: one token bucket, updated atomically."""

    def take_rate_tokens(
        self, bucket: str, burst: float, now: float, step: Callable[[float, float], tuple[float, float]]
    ) -> float:
        """Apply ``step`` (tokens, stamp) → (left, wait) to the bucket; returns the wait."""
        ...


class CacheFallback(Heartbeats, RateBuckets, Protocol):
    """Everything the cache's SQL fallback uses of the store."""


class Tenancy(Protocol):
    """What the admin commands and routes need: teams, users and API tokens."""

    def create_user(self, name: str, team: str, role: str = ..., tier: str | None = ...) -> str:
        """Create a user (or add a token to an existing one); returns a new API token."""
        ...

    def get_user(self, name: str) -> User | None:
        """The user of that name, if any."""
        ...

    def create_token(
        self, user: str, *, expires_at: float | None, description: str | None, created_by: str
    ) -> tuple[TokenInfo, str]:
        """A new API token for an existing user: its listing and the token."""
        ...

    def list_tokens(self, *, user: str | None = ..., team: str | None = ...) -> list[TokenInfo]:
        """API tokens as listed, oldest first."""
        ...

    def revoke_token(self, token_id_: str) -> TokenInfo | None:
        """Revoke by listed id; None: no such token."""
        ...

    def set_team(self, name: str, changes: dict[str, Any]) -> Team:
        """Create or update a team."""
        ...

    def list_teams(self) -> list[Team]:
        """Every team, by name."""
        ...

    def team_exists(self, name: str) -> bool:
        """Whether the team exists."""
        ...


class Authenticator(Protocol):
    """What request authentication needs: the user behind a token, or an SSO identity."""

    def token_user(self, token: str) -> tuple[User, float | None] | None:
        """The user a valid token belongs to, and when the token expires."""
        ...

    def provision_user(self, name: str, team: str, role: str) -> User:
        """A user vouched for by single sign-on, created or brought in step."""
        ...


class Secrets(Protocol):
    """What team secrets need: sealed values by team and name."""

    def put_secret(self, team: str, name: str, ciphertext: str, actor: str) -> SecretInfo:
        """Create or replace a team secret."""
        ...

    def list_secrets(self, team: str) -> list[SecretInfo]:
        """A team's secrets (metadata only)."""
        ...

    def secret_ciphertexts(self, team: str, names: Sequence[str]) -> dict[str, str]:
        """The sealed values of those of a team's secrets that exist."""
        ...

    def delete_secret(self, team: str, name: str) -> bool:
        """Delete a team secret; False when there was none."""
        ...


class AuditTrail(Protocol):
    """What the audit trail needs: appending entries and reading them back."""

    def audit(self, actor: str, action: str, target: str, team: str | None, details: dict[str, Any]) -> None:
        """Append an entry."""
        ...

    def list_audit(
        self,
        *,
        team: str | None = ...,
        actor: str | None = ...,
        action: str | None = ...,
        limit: int = ...,
    ) -> list[AuditEntry]:
        """Entries, newest first."""
        ...


class BatchWriter(Protocol):
    """What group commit needs: several writes applied in one transaction."""

    def apply_batch(self, ops: Sequence[Callable[[sa.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Run the ops in one transaction; each op's result or exception, in order."""
        ...


class Schema(Protocol):
    """What ``yard admin migrate`` needs: the schema brought up to date, and the pool closed."""

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        ...

    def close(self) -> None:
        """Close the pool's connections."""
        ...


class LogIndex(Protocol):
    """What log search and retention need of the log search index (``store/logsearch.py``)."""

    def search_logs(self, query: LogQuery) -> list[LogHit]:
        """Indexed lines holding the query's phrase that its caller may see, newest first."""
        ...

    def delete_log_index(self, job_ids: Sequence[str]) -> int:
        """Remove the jobs' indexed lines and queued chunks; how many lines went."""
        ...
