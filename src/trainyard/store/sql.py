"""The state store on SQLAlchemy Core: one implementation for PostgreSQL and SQLite.

Every job state change goes through ``_move``: one conditional UPDATE guarded by the current status
(and the lease token where a worker is involved) plus an event row and an outbox row, all in the
caller's transaction. A move whose UPDATE matches no row is refused, never applied twice.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from trainyard.model import retry as retry_policy
from trainyard.model.ids import (
    TOKEN_ID_HEX,
    TOKEN_ID_PREFIX,
    hash_token,
    new_job_id,
    new_lease_token,
    new_token,
    token_id,
)
from trainyard.model.records import (
    ROLES,
    ArtifactRecord,
    Attempt,
    AuditEntry,
    Event,
    Job,
    LiveAttempt,
    LogChunk,
    OutboxRow,
    Replica,
    SecretInfo,
    Team,
    TokenInfo,
    User,
    Worker,
)
from trainyard.model.spec import JobSpec, Retry, spec_fingerprint
from trainyard.model.states import LIVE, TERMINAL, AttemptOutcome, JobStatus, sources_of
from trainyard.store import migrate
from trainyard.store.schema import (
    api_tokens,
    artifacts,
    audit_log,
    job_attempts,
    job_events,
    jobs,
    log_chunks,
    outbox,
    scheduler_state,
    secrets,
    teams,
    users,
    workers,
)

TOPIC_SUBMITTED = "job.submitted"
TOPIC_EVENTS = "job.events"
EVENT_SCHEMA_VERSION = 1
_LIVE_NAMES = [s.value for s in LIVE]
_LEASABLE = sources_of(JobStatus.SCHEDULED)
_member = jobs.alias("member")


# Hot-path statements are built once: constructing a Core statement per call costs ~5x executing
# a prebuilt one (cache-key generation and coercions), and these run several times per job.
_MOVE = jobs.update().where(
    jobs.c.id == sa.bindparam("g_id"),
    jobs.c.status == sa.bindparam("g_status"),
    jobs.c.attempt == sa.bindparam("g_attempt"),
)
_MOVE_FENCED = _MOVE.where(jobs.c.lease_token == sa.bindparam("g_token"))
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("s_id"))
_INSERT_JOB = jobs.insert()
_INSERT_EVENT = job_events.insert()
_INSERT_OUTBOX = outbox.insert()
_INSERT_ATTEMPT = job_attempts.insert()
_UPDATE_ATTEMPT = job_attempts.update().where(
    job_attempts.c.job_id == sa.bindparam("a_job"), job_attempts.c.number == sa.bindparam("a_number")
)


class StoreError(Exception):
    """Base of the errors the API maps to HTTP codes."""


class ConcurrentChange(RuntimeError):
    """A guarded write found the row changed since it was read in the same transaction."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class IdempotencyConflict(Conflict):
    pass


@dataclass(frozen=True)
class SubmitResult:
    job: Job
    created: bool


@dataclass(frozen=True)
class Placement:
    job_id: str
    worker_id: str
    gpu_indices: tuple[int, ...]
    expected_attempt: int
    rank: int = 0
    """A gang's rank (its row is ``member_id(job_id, rank)``); a gang is leased whole or not at all."""
    world_size: int = 1


@dataclass(frozen=True)
class Lease:
    """A granted lease with everything the worker's assignment needs."""

    job_id: str
    attempt: int
    worker_id: str
    lease_token: str
    gpu_indices: tuple[int, ...]
    spec: dict[str, Any]
    name: str | None
    team: str
    user: str
    resume_key: str | None  # newest checkpoint of an earlier attempt
    cpu: float
    memory: int
    max_runtime: float
    rank: int = 0
    world_size: int = 1
    master_addr: str = ""
    """Rank 0's worker host (gangs): where the ranks rendezvous."""
    master_port: int = 0
    gang_id: str | None = None


@dataclass(frozen=True)
class ReportResult:
    ok: bool
    status: JobStatus | None = None
    message: str = ""
    gang_id: str | None = None
    """Set when the report was a gang rank's: other ranks may now have to stop (``gang_stops``)."""


@dataclass(frozen=True)
class FinishReport:
    job_id: str
    attempt: int
    lease_token: str
    worker_id: str
    outcome: AttemptOutcome
    exit_code: int | None = None
    reason: str | None = None
    stderr_tail: str | None = None
    artifacts: tuple[tuple[str, int, str, str], ...] = ()  # (path, size, sha256, object_key)
    log_bytes: int | None = None
    checkpoint_key: str | None = None


@dataclass(frozen=True)
class WorkerCommand:
    kind: str  # cancel | kill_stale | timeout | preempt
    job_id: str
    attempt: int
    lease_token: str
    reason: str = ""
    worker_id: str | None = None


@dataclass(frozen=True)
class JobFilter:
    status: Sequence[str] = ()
    user: str | None = None
    team: str | None = None
    name: str | None = None
    visible_team: str | None = None  # None: every team (admins)


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here; other URLs pass through."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# Every job row carries its spec and every event its data as JSON: orjson encodes and decodes them
# several times faster than the json module, a visible share of a busy control plane.
_JSON = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _private_sqlite_file(url: str) -> None:
    """The database holds token hashes, sealed secrets and every job: mode 0600, not the umask's
    0644. SQLite gives its -wal and -shm files the main file's mode, so creating that one first is
    enough; files an older version left readable are narrowed."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError:
        return  # no such directory, no permission: SQLite says so when it connects
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with suppress(OSError):
            os.chmod(name, 0o600)


def create_engine(url: str) -> sa.Engine:
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **_JSON)
    _private_sqlite_file(url)
    engine = sa.create_engine(
        url,
        **_JSON,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=sa.pool.QueuePool,
        pool_size=8,
        max_overflow=16,
    )

    # A pool event: unlike connection events (e.g. "begin"), it does not make SQLAlchemy dispatch
    # events around every statement, which costs ~5 % of a busy control plane.
    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the store issues BEGIN itself (see SqlStore._tx)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


def _encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("cursor is not one this API returned") from None
    if not raw.startswith("j") or len(raw) > 32:
        raise ValueError("cursor is not one this API returned")
    return raw


DEFAULT_MAX_PREEMPTIONS = 10


class SqlStore:
    """The source of truth. Thread-safe; every public method is one transaction."""

    def __init__(self, url: str, *, clock: Any = time.time) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self.clock = clock
        self.dialect = self.engine.dialect.name
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._teams: set[str] = set()  # teams known to exist: spares a lookup per submission
        # Called with the ids of the jobs a transaction changed, once it has committed (or failed in
        # doubt): the control plane invalidates its status cache there.
        self.on_commit: Callable[[Sequence[str]], None] | None = None
        # Free preemptions per job; past them a preemption uses a retry like any infrastructure
        # failure, so a job that keeps being evicted (a flapping spot fleet) cannot cycle forever.
        self.max_preemptions = DEFAULT_MAX_PREEMPTIONS

    # ---- lifecycle -----------------------------------------------------------------------------
    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        touched: list[str] = []
        try:
            if self._write_lock is None:
                with self.engine.begin() as conn:
                    yield from self._with_event_buffer(conn, touched)
                return
            # SQLite has one writer at a time. Queue this process's writers on a lock that wakes the
            # next one at once, instead of SQLite's busy handler, which sleeps in steps of up to 100 ms;
            # and take the write lock up front (IMMEDIATE) so two writers never deadlock on an upgrade.
            with self._write_lock, self.engine.begin() as conn:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield from self._with_event_buffer(conn, touched)
        finally:
            # After the commit, or after a failure that leaves it in doubt: caches of these jobs
            # must not outlive this transaction.
            if touched and self.on_commit is not None:
                self.on_commit(touched)

    def _with_event_buffer(self, conn: sa.Connection, touched: list[str]) -> Iterator[sa.Connection]:
        """Collect the transaction's event and outbox rows and insert them with one executemany
        each just before commit: a job's four transitions would otherwise cost eight statements."""
        events: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        conn.info["ty_events"] = (events, outbox_rows)
        try:
            yield conn
            if events:
                touched.extend(e["job_id"] for e in events)
                conn.execute(_INSERT_EVENT, events)
                conn.execute(_INSERT_OUTBOX, outbox_rows)
        finally:
            conn.info.pop("ty_events", None)

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            if self._write_lock is not None:
                conn.exec_driver_sql("BEGIN")  # one WAL snapshot for every statement of the read
            yield conn

    # ---- teams, users, tokens ------------------------------------------------------------------
    def _ensure_team(self, conn: sa.Connection, name: str, weight: float = 1.0) -> None:
        if conn.execute(sa.select(teams.c.name).where(teams.c.name == name)).first() is None:
            conn.execute(teams.insert().values(name=name, weight=weight, created_at=self.clock()))

    def create_user(self, name: str, team: str, role: str = "user", tier: str | None = None) -> str:
        """Create a user (or add a token to an existing one) and return a new API token. ``tier``
        None keeps an existing user's tier."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        token = new_token("ty")
        now = self.clock()
        with self._tx() as conn:
            self._ensure_team(conn, team)
            existing = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if existing is None:
                conn.execute(
                    users.insert().values(name=name, team=team, role=role, tier=tier, created_at=now)
                )
            elif (
                existing.team != team or existing.role != role or (tier is not None and existing.tier != tier)
            ):
                conn.execute(
                    users.update()
                    .where(users.c.name == name)
                    .values(team=team, role=role, tier=tier if tier is not None else existing.tier)
                )
            conn.execute(
                api_tokens.insert().values(token_hash=hash_token(token), user_name=name, created_at=now)
            )
        return token

    def provision_user(self, name: str, team: str, role: str) -> User:
        """A user vouched for by single sign-on: created on first sight (without an API token),
        its team and role kept in step with what the identity provider says; tier untouched."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with self._tx() as conn:
            existing = conn.execute(sa.select(users).where(users.c.name == name)).first()
            if existing is None:
                self._ensure_team(conn, team)
                conn.execute(
                    users.insert().values(name=name, team=team, role=role, tier=None, created_at=self.clock())
                )
                return User(name=name, team=team, role=role)
            if existing.team != team or existing.role != role:
                self._ensure_team(conn, team)
                conn.execute(users.update().where(users.c.name == name).values(team=team, role=role))
            return User(name=name, team=team, role=role, tier=existing.tier)

    def authenticate(self, token: str) -> User | None:
        found = self.token_user(token)
        return None if found is None else found[0]

    def token_user(self, token: str) -> tuple[User, float | None] | None:
        """The user a valid token belongs to, and when the token expires (None: never)."""
        now = self.clock()
        with self._read() as conn:
            row = conn.execute(
                sa.select(
                    users.c.name,
                    users.c.team,
                    users.c.role,
                    users.c.tier,
                    api_tokens.c.expires_at,
                    api_tokens.c.revoked_at,
                )
                .select_from(api_tokens.join(users, users.c.name == api_tokens.c.user_name))
                .where(api_tokens.c.token_hash == hash_token(token))
            ).first()
        if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at < now):
            return None
        return User(name=row.name, team=row.team, role=row.role, tier=row.tier), row.expires_at

    # ---- tokens, audit, secrets -----------------------------------------------------------------
    def get_user(self, name: str) -> User | None:
        with self._read() as conn:
            r = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return None if r is None else User(name=r.name, team=r.team, role=r.role, tier=r.tier)

    def create_token(
        self, user: str, *, expires_at: float | None, description: str | None, created_by: str
    ) -> tuple[TokenInfo, str]:
        """A new API token for an existing user: its listing and the token (shown this once)."""
        token = new_token("ty")
        now = self.clock()
        digest = hash_token(token)
        with self._tx() as conn:
            owner = conn.execute(sa.select(users.c.team).where(users.c.name == user)).first()
            if owner is None:
                raise NotFound(user)
            conn.execute(
                api_tokens.insert().values(
                    token_hash=digest,
                    user_name=user,
                    created_at=now,
                    expires_at=expires_at,
                    description=description,
                    created_by=created_by,
                )
            )
        info = TokenInfo(token_id(digest), user, owner.team, now, expires_at, None, description, created_by)
        return info, token

    def list_tokens(self, *, user: str | None = None, team: str | None = None) -> list[TokenInfo]:
        q = (
            sa.select(api_tokens, users.c.team)
            .select_from(api_tokens.join(users, users.c.name == api_tokens.c.user_name))
            .order_by(api_tokens.c.created_at, api_tokens.c.token_hash)
        )
        if user is not None:
            q = q.where(api_tokens.c.user_name == user)
        if team is not None:
            q = q.where(users.c.team == team)
        with self._read() as conn:
            return [
                TokenInfo(
                    token_id(r.token_hash),
                    r.user_name,
                    r.team,
                    r.created_at,
                    r.expires_at,
                    r.revoked_at,
                    r.description,
                    r.created_by,
                )
                for r in conn.execute(q)
            ]

    def revoke_token(self, token_id_: str) -> TokenInfo | None:
        """Revoke by listed id (idempotent: revoking again keeps the first time). None: no such token."""
        prefix = token_id_.removeprefix(TOKEN_ID_PREFIX)
        if len(prefix) != TOKEN_ID_HEX or not all(c in "0123456789abcdef" for c in prefix):
            return None
        now = self.clock()
        with self._tx() as conn:
            rows = conn.execute(
                sa.select(api_tokens.c.token_hash).where(api_tokens.c.token_hash.startswith(prefix))
            ).all()
            if len(rows) != 1:
                return None  # none, or (astronomically unlikely) ambiguous: never revoke a guess
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.token_hash == rows[0].token_hash, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return next(t for t in self.list_tokens() if t.id == token_id_)

    def audit(self, actor: str, action: str, target: str, team: str | None, details: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                audit_log.insert().values(
                    at=self.clock(), actor=actor, action=action, target=target, team=team, details=details
                )
            )

    def list_audit(
        self,
        *,
        team: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first."""
        q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if team is not None:
            q = q.where(audit_log.c.team == team)
        if actor is not None:
            q = q.where(audit_log.c.actor == actor)
        if action is not None:
            q = q.where(audit_log.c.action == action)
        with self._read() as conn:
            return [
                AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.team, dict(r.details))
                for r in conn.execute(q)
            ]

    def put_secret(self, team: str, name: str, ciphertext: str, actor: str) -> SecretInfo:
        now = self.clock()
        with self._tx() as conn:
            self._ensure_team(conn, team)
            res = conn.execute(
                secrets.update()
                .where(secrets.c.team == team, secrets.c.name == name)
                .values(ciphertext=ciphertext, updated_at=now, updated_by=actor)
            )
            if res.rowcount == 0:
                conn.execute(
                    secrets.insert().values(
                        team=team,
                        name=name,
                        ciphertext=ciphertext,
                        created_at=now,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
            r = conn.execute(sa.select(secrets).where(secrets.c.team == team, secrets.c.name == name)).one()
        return SecretInfo(r.team, r.name, r.created_at, r.updated_at, r.updated_by)

    def list_secrets(self, team: str) -> list[SecretInfo]:
        with self._read() as conn:
            return [
                SecretInfo(r.team, r.name, r.created_at, r.updated_at, r.updated_by)
                for r in conn.execute(
                    sa.select(secrets).where(secrets.c.team == team).order_by(secrets.c.name)
                )
            ]

    def secret_ciphertexts(self, team: str, names: Sequence[str]) -> dict[str, str]:
        if not names:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                sa.select(secrets.c.name, secrets.c.ciphertext).where(
                    secrets.c.team == team, secrets.c.name.in_(list(names))
                )
            )
            return {r.name: r.ciphertext for r in rows}

    def delete_secret(self, team: str, name: str) -> bool:
        with self._tx() as conn:
            res = conn.execute(secrets.delete().where(secrets.c.team == team, secrets.c.name == name))
        return res.rowcount > 0

    def set_team(self, name: str, changes: dict[str, Any]) -> Team:
        """Create or update a team. ``changes`` holds only what changes: weight, cpu_quota,
        memory_quota, gpu_quota, gpu_type_quotas (a quota of None removes that limit)."""
        allowed = {"weight", "cpu_quota", "memory_quota", "gpu_quota", "gpu_type_quotas"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown team fields: {sorted(unknown)}")
        with self._tx() as conn:
            self._ensure_team(conn, name)
            if changes:
                conn.execute(teams.update().where(teams.c.name == name).values(**changes))
            row = conn.execute(sa.select(teams).where(teams.c.name == name)).one()
        self._teams.add(name)
        return _team(row)

    def list_teams(self) -> list[Team]:
        with self._read() as conn:
            return [_team(r) for r in conn.execute(sa.select(teams).order_by(teams.c.name))]

    def team_exists(self, name: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(teams.c.name).where(teams.c.name == name)).first() is not None

    def apply_batch(self, ops: Sequence[Callable[[sa.Connection], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: run several independent writes in one transaction. Failures are rare (an
        idempotency-key replay), so no savepoint is paid per op: when one op raises, the batch is
        rolled back and each op runs again in a transaction of its own."""
        try:
            with self._tx() as conn:
                return [(True, op(conn)) for op in ops]
        except sa.exc.OperationalError:
            raise  # the database is unreachable: every op fails alike
        except Exception:
            if len(ops) == 1:
                raise
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                with self._tx() as conn:
                    out.append((True, op(conn)))
            except Exception as e:
                out.append((False, e))
        return out

    # ---- the guarded transition ----------------------------------------------------------------
    def _move(
        self,
        conn: sa.Connection,
        job: sa.Row[Any],
        to: JobStatus,
        *,
        event_type: str | None = None,
        lease_token: str | None = None,
        values: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        now: float,
        stored_status: JobStatus | None = None,
    ) -> bool:
        """``stored_status``: what the row says when it differs from ``job.status`` (a transition
        recorded as an event but folded into this UPDATE, see ``_start``)."""
        src = JobStatus(job.status)
        if src not in sources_of(to):
            return False
        # The attempt number only grows (on each lease), so it fences a move computed from a stale read.
        vals = {"status": to.value, "updated_at": now, **(values or {})}
        guard = {"g_id": job.id, "g_status": (stored_status or src).value, "g_attempt": job.attempt}
        if lease_token is None:
            stmt = _MOVE
        else:
            stmt, guard["g_token"] = _MOVE_FENCED, lease_token
        if conn.execute(stmt, {**vals, **guard}).rowcount != 1:
            return False
        self._event(
            conn,
            job_id=job.id,
            team=job.team,
            type_=event_type or to.value.lower(),
            src=src.value,
            dst=to.value,
            attempt=int(vals.get("attempt", job.attempt)),
            data=data or {},
            now=now,
        )
        return True

    def _event(
        self,
        conn: sa.Connection,
        *,
        job_id: str,
        team: str,
        type_: str,
        src: str | None,
        dst: str | None,
        attempt: int,
        data: dict[str, Any],
        now: float,
        topic: str = TOPIC_EVENTS,
    ) -> None:
        event_id = str(uuid.uuid4())
        row = {
            "event_id": event_id,
            "job_id": job_id,
            "team": team,
            "type": type_,
            "from_status": src,
            "to_status": dst,
            "attempt": attempt,
            "at": now,
            "data": data,
        }
        payload = {"schema": EVENT_SCHEMA_VERSION, **row}
        out = {"event_id": event_id, "topic": topic, "key": job_id, "payload": payload, "created_at": now}
        buffered = conn.info.get("ty_events")
        if buffered is None:  # a connection outside _tx (tests, tools): write at once
            conn.execute(_INSERT_EVENT, row)
            conn.execute(_INSERT_OUTBOX, out)
        else:
            buffered[0].append(row)
            buffered[1].append(out)

    def _job_row(self, conn: sa.Connection, job_id: str) -> sa.Row[Any] | None:
        return conn.execute(_SELECT_JOB, {"s_id": job_id}).first()

    # ---- jobs: submit, read, cancel, restart ---------------------------------------------------
    def submit(self, user: User, spec: JobSpec, idempotency_key: str | None = None) -> SubmitResult:
        try:
            # The common case has no prior job under the key: insert and let the unique index
            # catch a replay, rather than paying a lookup on every submission.
            with self._tx() as conn:
                job = self.insert_job_in(conn, user, spec, idempotency_key)
        except sa.exc.IntegrityError:
            # The key was used before (a replay, or a concurrent request that won the race).
            if idempotency_key is None:
                raise
            return self.replay(user, spec, idempotency_key)
        return SubmitResult(job=job, created=True)

    def replay(self, user: User, spec: JobSpec, idempotency_key: str) -> SubmitResult:
        """The answer to a submission whose Idempotency-Key is taken: the same job, or a conflict."""
        with self._read() as conn:
            prior = self._by_idempotency_key(conn, user.name, idempotency_key)
            if prior is None:
                raise StoreError("idempotency key vanished while replaying")
            return self._replay(conn, prior, spec.fingerprint())

    def insert_job_in(
        self, conn: sa.Connection, user: User, spec: JobSpec, idempotency_key: str | None
    ) -> Job:
        """Insert a new PENDING job; raises IntegrityError when the user's idempotency key is taken."""
        now = self.clock()
        team = spec.team or user.team
        base = spec.canonical()  # dumped once: the fingerprint and the stored spec both come from it
        fingerprint = spec_fingerprint(base)
        canonical = {**base, "team": team}
        job_id = new_job_id()
        row = dict(
            id=job_id,
            name=spec.name,
            user_name=user.name,
            team=team,
            status=JobStatus.PENDING.value,
            priority=spec.priority.rank,
            pool=spec.pool,
            cpu=spec.resources.cpu,
            memory=spec.resources.memory,
            gpu=spec.resources.gpu,
            gpu_type=spec.resources.gpu_type,
            max_runtime=spec.max_runtime,
            preemptible=spec.preemptible,
            replicas=spec.replicas,
            region=spec.data.region if spec.data else None,
            require_region=bool(spec.data and spec.data.require_region),
            data_uris=list(spec.data.uris) if spec.data and spec.data.uris else None,
            spec=canonical,
            spec_hash=fingerprint,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            queued_at=now,
        )
        if team not in self._teams:
            self._ensure_team(conn, team)
        if spec.replicas > 1:
            row["gang_id"] = job_id
        conn.execute(_INSERT_JOB, row)
        if spec.replicas > 1:
            # Ranks 1..N-1: hidden rows that the gang's lease and ending move with rank 0.
            conn.execute(
                _INSERT_JOB,
                [
                    {**row, "id": member_id(job_id, k), "replica_rank": k, "idempotency_key": None}
                    for k in range(1, spec.replicas)
                ],
            )
        self._event(
            conn,
            job_id=job_id,
            team=team,
            type_="submitted",
            src=None,
            dst=JobStatus.PENDING.value,
            attempt=0,
            data={"user": user.name, "name": spec.name},
            now=now,
            topic=TOPIC_SUBMITTED,
        )
        self._teams.add(team)
        return Job(
            id=job_id,
            name=spec.name,
            user=user.name,
            team=team,
            status=JobStatus.PENDING,
            priority=spec.priority.rank,
            pool=spec.pool,
            spec=canonical,
            created_at=now,
            updated_at=now,
            queued_at=now,
            started_at=None,
            finished_at=None,
            attempt=0,
            tries=0,
            worker_id=None,
            exit_code=None,
            reason=None,
            pending_reason=None,
            not_before=None,
            gang_id=job_id if spec.replicas > 1 else None,
        )

    def _by_idempotency_key(self, conn: sa.Connection, user: str, key: str) -> sa.Row[Any] | None:
        return conn.execute(
            sa.select(jobs.c.id, jobs.c.spec_hash).where(
                jobs.c.user_name == user, jobs.c.idempotency_key == key
            )
        ).first()

    def _replay(self, conn: sa.Connection, prior: sa.Row[Any], fingerprint: str) -> SubmitResult:
        if prior.spec_hash != fingerprint:
            raise IdempotencyConflict("Idempotency-Key was already used with a different job spec")
        job = self._load_job(conn, prior.id)
        assert job is not None
        return SubmitResult(job=job, created=False)

    def get_job(self, job_id: str) -> Job | None:
        with self._read() as conn:
            return self._load_job(conn, job_id)

    def _load_job(self, conn: sa.Connection, job_id: str) -> Job | None:
        row = self._job_row(conn, job_id)
        if row is None:
            return None
        atts = conn.execute(
            sa.select(job_attempts).where(job_attempts.c.job_id == job_id).order_by(job_attempts.c.number)
        ).all()
        replicas = None
        if row.gang_id == row.id:
            replicas = [_replica(m) for m in self._members(conn, row.id)]
        return _job(row, [_attempt(a) for a in atts], replicas)

    def _members(self, conn: sa.Connection, gang_id: str) -> list[sa.Row[Any]]:
        """Ranks 1..N-1 of a gang, in rank order."""
        return list(
            conn.execute(
                sa.select(jobs)
                .where(jobs.c.gang_id == gang_id, jobs.c.replica_rank > 0)
                .order_by(jobs.c.replica_rank)
            )
        )

    def list_jobs(
        self, flt: JobFilter, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        # A gang is listed once, as its rank 0.
        q = sa.select(jobs).where(jobs.c.replica_rank == 0).order_by(jobs.c.id.desc()).limit(limit + 1)
        if flt.status:
            q = q.where(jobs.c.status.in_(list(flt.status)))
        if flt.user:
            q = q.where(jobs.c.user_name == flt.user)
        if flt.team:
            q = q.where(jobs.c.team == flt.team)
        if flt.visible_team is not None:
            q = q.where(jobs.c.team == flt.visible_team)
        if flt.name:
            q = q.where(jobs.c.name == flt.name)
        if cursor:
            q = q.where(jobs.c.id < _decode_cursor(cursor))
        with self._read() as conn:
            rows = conn.execute(q).all()
            page = rows[:limit]
            ids = [r.id for r in page]
            by_job: dict[str, list[Attempt]] = {i: [] for i in ids}
            if ids:
                for a in conn.execute(
                    sa.select(job_attempts)
                    .where(job_attempts.c.job_id.in_(ids))
                    .order_by(job_attempts.c.job_id, job_attempts.c.number)
                ):
                    by_job[a.job_id].append(_attempt(a))
        next_cursor = _encode_cursor(page[-1].id) if len(rows) > limit else None
        return [_job(r, by_job[r.id]) for r in page], next_cursor

    def cancel(self, job_id: str, actor: str) -> Job:
        """PENDING jobs end at once; leased ones go to CANCELLING until their worker stops them."""
        now = self.clock()
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if row is None:
                raise NotFound(job_id)
            if row.gang_id is not None and row.gang_id != row.id:
                job_id, row = row.gang_id, self._job_row(conn, row.gang_id)  # a rank: cancel its gang
                if row is None:
                    raise NotFound(job_id)
            status = JobStatus(row.status)
            data = {"by": actor}
            if status is JobStatus.PENDING:
                self._move(
                    conn,
                    row,
                    JobStatus.CANCELLED,
                    data=data,
                    now=now,
                    values={"finished_at": now, "reason": f"cancelled by {actor}", "pending_reason": None},
                )
            elif status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                self._move(
                    conn,
                    row,
                    JobStatus.CANCELLING,
                    data=data,
                    now=now,
                    values={"cancel_requested_at": now, "reason": f"cancelled by {actor}"},
                )
                conn.execute(
                    job_attempts.update()
                    .where(job_attempts.c.job_id == job_id, job_attempts.c.number == row.attempt)
                    .values(status=JobStatus.CANCELLING.value)
                )
            if row.gang_id is not None:
                stop = {"outcome": "cancelled", "reason": f"cancelled by {actor}"}
                if status is JobStatus.PENDING:
                    self._end_gang_attempt(conn, job_id, row.attempt, JobStatus.CANCELLED, now)
                elif status in (JobStatus.SCHEDULED, JobStatus.RUNNING):
                    self._stop_members(conn, job_id, row.attempt, stop, now)
            job = self._load_job(conn, job_id)
        assert job is not None
        return job

    def restart(self, job_id: str, actor: str) -> Job:
        now = self.clock()
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if row is None:
                raise NotFound(job_id)
            if row.gang_id is not None and row.gang_id != row.id:
                job_id, row = row.gang_id, self._job_row(conn, row.gang_id)  # a rank: restart its gang
                if row is None:
                    raise NotFound(job_id)
            if JobStatus(row.status) not in TERMINAL:
                raise Conflict(f"job {job_id} is {row.status}; only a finished job can be restarted")
            res = conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == row.status)
                .values(
                    status=JobStatus.PENDING.value,
                    updated_at=now,
                    queued_at=now,
                    tries=0,
                    started_at=None,
                    finished_at=None,
                    deadline=None,
                    exit_code=None,
                    reason=None,
                    lease_token=None,
                    worker_id=None,
                    not_before=None,
                    cancel_requested_at=None,
                )
            )
            if res.rowcount != 1:
                raise Conflict(f"job {job_id} changed while restarting; try again")
            if row.gang_id is not None:
                conn.execute(
                    jobs.update()
                    # Ranks still stopping from the last run go idle when they report (_close_member).
                    .where(
                        jobs.c.gang_id == job_id,
                        jobs.c.replica_rank > 0,
                        jobs.c.status.in_([t.value for t in TERMINAL]),
                    )
                    .values(
                        status=JobStatus.PENDING.value,
                        updated_at=now,
                        finished_at=None,
                        exit_code=None,
                        reason=None,
                        lease_token=None,
                        worker_id=None,
                        gang_abort=None,
                    )
                )
            self._event(
                conn,
                job_id=job_id,
                team=row.team,
                type_="restarted",
                src=row.status,
                dst=JobStatus.PENDING.value,
                attempt=row.attempt,
                data={"by": actor},
                now=now,
            )
            job = self._load_job(conn, job_id)
        assert job is not None
        return job

    def job_events(self, job_id: str, after_id: int = 0) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(job_events)
                .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
                .order_by(job_events.c.id)
            ).all()
        return [_event(r) for r in rows]

    def events_since(self, after_id: int, team: str | None = None, limit: int = 1000) -> list[Event]:
        q = sa.select(job_events).where(job_events.c.id > after_id).order_by(job_events.c.id).limit(limit)
        if team is not None:
            q = q.where(job_events.c.team == team)
        with self._read() as conn:
            return [_event(r) for r in conn.execute(q)]

    def last_event_id(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.coalesce(sa.func.max(job_events.c.id), 0))).scalar_one()
            )

    # ---- scheduling ----------------------------------------------------------------------------
    def pending_for_scheduling(self, now: float, limit: int = 50_000) -> list[sa.Row[Any]]:
        """Pending jobs with every field the scheduler weighs (columns only: no spec parsing)."""
        q = (
            sa.select(
                jobs.c.id,
                jobs.c.team,
                jobs.c.user_name,
                jobs.c.priority,
                jobs.c.queued_at,
                jobs.c.cpu,
                jobs.c.memory,
                jobs.c.gpu,
                jobs.c.gpu_type,
                jobs.c.pool,
                jobs.c.region,
                jobs.c.require_region,
                jobs.c.data_uris,
                jobs.c.preemptible,
                jobs.c.replicas,
                jobs.c.max_runtime,
                jobs.c.attempt,
            )
            .where(jobs.c.status == JobStatus.PENDING.value)
            .where(sa.or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now))
            # A gang is scheduled as its rank 0, once every other rank is idle again (the ranks
            # of its last attempt may still be stopping).
            .where(jobs.c.replica_rank == 0)
            .where(
                sa.or_(
                    jobs.c.gang_id.is_(None),
                    ~sa.exists().where(
                        _member.c.gang_id == jobs.c.id,
                        _member.c.replica_rank > 0,
                        _member.c.status != JobStatus.PENDING.value,
                    ),
                )
            )
            .order_by(jobs.c.priority.desc(), jobs.c.queued_at, jobs.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return list(conn.execute(q))

    def running_for_scheduling(self) -> list[sa.Row[Any]]:
        """Every live attempt with what it holds and what losing it would cost (for preemption)."""
        q = (
            sa.select(
                jobs.c.id,
                jobs.c.team,
                jobs.c.worker_id,
                jobs.c.priority,
                jobs.c.cpu,
                jobs.c.memory,
                jobs.c.gpu,
                job_attempts.c.gpu_indices,
                jobs.c.preemptible,
                jobs.c.started_at,
                job_attempts.c.scheduled_at,
                jobs.c.max_runtime,
                jobs.c.status,
                jobs.c.attempt,
                jobs.c.lease_token,
                jobs.c.gang_id,
                jobs.c.replica_rank,
                job_attempts.c.last_checkpoint_at,
            )
            .select_from(
                jobs.join(
                    job_attempts,
                    sa.and_(job_attempts.c.job_id == jobs.c.id, job_attempts.c.number == jobs.c.attempt),
                )
            )
            .where(jobs.c.status.in_(_LIVE_NAMES))
        )
        with self._read() as conn:
            return list(conn.execute(q))

    def live_attempts(self, worker_id: str | None = None) -> list[LiveAttempt]:
        q = (
            sa.select(
                job_attempts.c.job_id,
                job_attempts.c.number,
                job_attempts.c.worker_id,
                job_attempts.c.lease_token,
                jobs.c.status,
                jobs.c.cpu,
                jobs.c.memory,
                job_attempts.c.gpu_indices,
                job_attempts.c.scheduled_at,
            )
            .select_from(job_attempts.join(jobs, jobs.c.id == job_attempts.c.job_id))
            .where(jobs.c.status.in_(_LIVE_NAMES))
            .where(jobs.c.attempt == job_attempts.c.number)
        )
        if worker_id is not None:
            q = q.where(job_attempts.c.worker_id == worker_id)
        with self._read() as conn:
            return [
                LiveAttempt(
                    job_id=r.job_id,
                    attempt=r.number,
                    worker_id=r.worker_id,
                    lease_token=r.lease_token,
                    status=JobStatus(r.status),
                    cpu=r.cpu,
                    memory=r.memory,
                    gpu_indices=tuple(r.gpu_indices),
                    scheduled_at=r.scheduled_at,
                )
                for r in conn.execute(q)
            ]

    def lease(self, placements: Iterable[Placement]) -> list[Lease]:
        """Apply the scheduler's placements in one transaction; each is guarded by status and attempt.

        The rows are read locked (SQLite: the transaction is the only writer; PostgreSQL: FOR UPDATE),
        so every guard that holds at the read holds at the write, and the whole cycle's moves and
        attempt rows go in one executemany each instead of two statements per job."""
        now = self.clock()
        placements = list(placements)
        if not placements:
            return []
        leases: list[Lease] = []
        moves: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        with self._tx() as conn:
            query = sa.select(jobs).where(jobs.c.id.in_([member_id(p.job_id, p.rank) for p in placements]))
            if self._write_lock is None:
                query = query.with_for_update()
            rows = {r.id: r for r in conn.execute(query)}
            masters = self._gang_masters(conn, placements)
            for p, row in self._leasable(placements, rows, now):
                token = new_lease_token()
                number = row.attempt + 1
                moves.append(
                    {
                        "status": JobStatus.SCHEDULED.value,
                        "updated_at": now,
                        "attempt": number,
                        "tries": row.tries + 1,
                        "lease_token": token,
                        "worker_id": p.worker_id,
                        "pending_reason": None,
                        "not_before": None,
                        "gang_abort": None,
                        "g_id": row.id,
                        "g_status": row.status,
                        "g_attempt": row.attempt,
                    }
                )
                self._event(
                    conn,
                    job_id=row.id,
                    team=row.team,
                    type_=JobStatus.SCHEDULED.value.lower(),
                    src=row.status,
                    dst=JobStatus.SCHEDULED.value,
                    attempt=number,
                    data={"worker": p.worker_id, "gpu_indices": list(p.gpu_indices)},
                    now=now,
                )
                attempts.append(
                    {
                        "job_id": row.id,
                        "number": number,
                        "worker_id": p.worker_id,
                        "lease_token": token,
                        "status": JobStatus.SCHEDULED.value,
                        "gpu_indices": list(p.gpu_indices),
                        "scheduled_at": now,
                    }
                )
                leases.append(
                    Lease(
                        row.id,
                        number,
                        p.worker_id,
                        token,
                        p.gpu_indices,
                        row.spec,
                        row.name,
                        row.team,
                        row.user_name,
                        # Every rank resumes from the gang's checkpoint: rank 0 writes it.
                        self._resume_key(conn, p.job_id) if row.attempt else None,
                        row.cpu,
                        row.memory,
                        row.max_runtime,
                        rank=p.rank,
                        world_size=p.world_size,
                        master_addr=masters.get(p.job_id, ""),
                        master_port=gang_port(p.job_id, number) if p.world_size > 1 else 0,
                        gang_id=row.gang_id,
                    )
                )
            if moves:
                result = conn.execute(_MOVE, moves)
                if self.engine.dialect.supports_sane_multi_rowcount and result.rowcount != len(moves):
                    # Cannot happen with the rows locked; if it does, write nothing rather than guess.
                    raise ConcurrentChange("a leased job changed while the lease was applied")
                conn.execute(_INSERT_ATTEMPT, attempts)
        return leases

    def _leasable(
        self, placements: list[Placement], rows: dict[str, sa.Row[Any]], now: float
    ) -> Iterator[tuple[Placement, sa.Row[Any]]]:
        """The placements that may be leased, with their rows: a gang only when every rank's row is
        there, idle and at the attempt the scheduler saw (all ranks or none)."""
        by_job: dict[str, list[Placement]] = {}
        for p in placements:
            by_job.setdefault(p.job_id, []).append(p)
        for job_id, group in by_job.items():
            head = rows.get(job_id)
            if head is None or head.attempt != group[0].expected_attempt:
                continue
            if head.not_before is not None and head.not_before > now:
                continue
            ranks = {p.rank: p for p in group}  # a job placed twice in one cycle is leased once
            world = max(head.replicas, 1)
            if sorted(ranks) != list(range(world)):
                continue
            chosen = [(ranks[k], rows.get(member_id(job_id, k))) for k in range(world)]
            if all(
                r is not None and r.attempt == head.attempt and JobStatus(r.status) in _LEASABLE
                for _, r in chosen
            ):
                yield from ((p, r) for p, r in chosen if r is not None)

    def _gang_masters(self, conn: sa.Connection, placements: list[Placement]) -> dict[str, str]:
        """Each gang's rendezvous host: the hostname of the worker its rank 0 goes to."""
        rank0 = {p.job_id: p.worker_id for p in placements if p.world_size > 1 and p.rank == 0}
        if not rank0:
            return {}
        hosts: dict[str, str] = {
            r.id: r.hostname
            for r in conn.execute(
                sa.select(workers.c.id, workers.c.hostname).where(workers.c.id.in_(set(rank0.values())))
            )
        }
        return {job: hosts.get(worker, "") for job, worker in rank0.items()}

    def _resume_key(self, conn: sa.Connection, job_id: str) -> str | None:
        return conn.execute(
            sa.select(job_attempts.c.checkpoint_key)
            .where(job_attempts.c.job_id == job_id, job_attempts.c.checkpoint_key.is_not(None))
            .order_by(job_attempts.c.number.desc())
            .limit(1)
        ).scalar()

    def set_pending_reasons(self, reasons: dict[str, str]) -> None:
        """Record why each pending job waits (jobs that left PENDING meanwhile are left alone)."""
        if not reasons:
            return
        with self._tx() as conn:
            for job_id, reason in reasons.items():
                conn.execute(
                    jobs.update()
                    .where(jobs.c.id == job_id, jobs.c.status == JobStatus.PENDING.value)
                    .values(pending_reason=reason)
                )
        if self.on_commit is not None:
            self.on_commit(list(reasons))  # no event row, but the job's view changed

    # ---- worker reports ------------------------------------------------------------------------
    def _leased_row(
        self, conn: sa.Connection, job_id: str, attempt: int, token: str, worker_id: str
    ) -> sa.Row[Any] | None:
        row = self._job_row(conn, job_id)
        if (
            row is None
            or row.lease_token != token
            or row.attempt != attempt
            or row.worker_id != worker_id
            or JobStatus(row.status) not in LIVE
        ):
            return None
        return row

    def report_started(self, job_id: str, attempt: int, token: str, worker_id: str) -> ReportResult:
        with self._tx() as conn:
            return self.report_started_in(conn, job_id, attempt, token, worker_id)

    def report_started_in(
        self, conn: sa.Connection, job_id: str, attempt: int, token: str, worker_id: str
    ) -> ReportResult:
        row = self._leased_row(conn, job_id, attempt, token, worker_id)
        if row is None:
            return ReportResult(False, message="lease is not held by this worker")
        status = JobStatus(row.status)
        if status is not JobStatus.SCHEDULED:
            return ReportResult(True, status)  # a repeated report; CANCELLING stays CANCELLING
        self._start(conn, row, worker_id, self.clock())
        return ReportResult(True, JobStatus.RUNNING)

    def _start(
        self, conn: sa.Connection, row: sa.Row[Any], worker_id: str, now: float, *, fold: bool = False
    ) -> Any:
        """SCHEDULED → RUNNING for a row already read and checked; returns the row as it is now.

        ``fold``: the attempt also ended (a run of a few milliseconds, reported once): record the
        RUNNING event, but leave the row's writes to the closing UPDATEs, which carry ``started_at``
        (two statements fewer for the shortest jobs)."""
        if fold:
            self._event(
                conn,
                job_id=row.id,
                team=row.team,
                type_=JobStatus.RUNNING.value.lower(),
                src=row.status,
                dst=JobStatus.RUNNING.value,
                attempt=row.attempt,
                data={"worker": worker_id},
                now=now,
            )
            return SimpleNamespace(
                **{**row._asdict(), "status": JobStatus.RUNNING.value, "started_at": now, "folded_start": now}
            )
        self._move(
            conn,
            row,
            JobStatus.RUNNING,
            lease_token=row.lease_token,
            now=now,
            values={"started_at": now, "deadline": now + row.max_runtime},
            data={"worker": worker_id},
        )
        conn.execute(
            _UPDATE_ATTEMPT,
            {"a_job": row.id, "a_number": row.attempt, "status": JobStatus.RUNNING.value, "started_at": now},
        )
        return SimpleNamespace(**{**row._asdict(), "status": JobStatus.RUNNING.value, "started_at": now})

    def report_finished(self, rep: FinishReport) -> ReportResult:
        with self._tx() as conn:
            return self.report_finished_in(conn, rep)

    def report_finished_in(self, conn: sa.Connection, rep: FinishReport) -> ReportResult:
        now = self.clock()
        row = self._leased_row(conn, rep.job_id, rep.attempt, rep.lease_token, rep.worker_id)
        if (
            row is not None
            and row.status == JobStatus.SCHEDULED.value
            and rep.outcome not in (AttemptOutcome.START_FAILED, AttemptOutcome.INFRA)
        ):
            # The worker merged a very short run's STARTED report into this one: record both.
            fold = rep.outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED)
            row = self._start(conn, row, rep.worker_id, now, fold=fold)
        if row is None:
            # A retried report of an attempt we already closed is answered OK, not STALE.
            prior = conn.execute(
                sa.select(job_attempts.c.outcome, job_attempts.c.lease_token).where(
                    job_attempts.c.job_id == rep.job_id, job_attempts.c.number == rep.attempt
                )
            ).first()
            if (
                prior is not None
                and prior.lease_token == rep.lease_token
                and prior.outcome == rep.outcome.value
            ):
                return ReportResult(True, message="already recorded")
            return ReportResult(False, message="lease is not held by this worker")
        for path, size, sha, key in rep.artifacts:
            conn.execute(
                artifacts.insert().values(
                    job_id=rep.job_id,
                    attempt=rep.attempt,
                    path=path,
                    size=size,
                    sha256=sha,
                    object_key=key,
                    created_at=now,
                )
            )
        status = self._close_attempt(
            conn,
            row,
            rep.outcome,
            rep.exit_code,
            rep.reason,
            now,
            stderr_tail=rep.stderr_tail,
            log_bytes=rep.log_bytes,
            checkpoint_key=rep.checkpoint_key,
        )
        return ReportResult(True, status, gang_id=row.gang_id)

    def _close_attempt(
        self,
        conn: sa.Connection,
        row: sa.Row[Any],
        outcome: AttemptOutcome,
        exit_code: int | None,
        reason: str | None,
        now: float,
        *,
        stderr_tail: str | None = None,
        log_bytes: int | None = None,
        checkpoint_key: str | None = None,
    ) -> JobStatus:
        """End the job's current attempt and move the job on: terminal, or back to PENDING."""
        if row.gang_id is not None and row.replica_rank > 0:
            return self._close_member(
                conn, row, outcome, exit_code, reason, now, stderr_tail, log_bytes, checkpoint_key
            )
        status = JobStatus(row.status)
        # Only the retry policy matters here; validating the whole spec again would cost more.
        policy = Retry.model_validate(row.spec.get("retry") or {})
        cancel_requested = status is JobStatus.CANCELLING
        if cancel_requested and outcome is not AttemptOutcome.SUCCEEDED:
            outcome = AttemptOutcome.CANCELLED
        elif row.gang_abort is not None and outcome is not AttemptOutcome.SUCCEEDED:
            # Another rank ended badly and this one was stopped for it: the gang's attempt ends
            # as that rank's did (a preempted rank requeues the gang without using a try).
            outcome = AttemptOutcome(row.gang_abort["outcome"])
            reason = row.gang_abort["reason"]
        attempt_status: JobStatus
        values: dict[str, Any] = {"exit_code": exit_code, "lease_token": None, "deadline": None}
        folded: float | None = getattr(row, "folded_start", None)
        stored = JobStatus.SCHEDULED if folded is not None else None
        if folded is not None:
            values["started_at"] = folded
        requeue: dict[str, Any] = {}
        if outcome is AttemptOutcome.PREEMPTED:
            before = self._preemptions(conn, row.id, row.attempt)
            if before >= self.max_preemptions:
                outcome = AttemptOutcome.INFRA
                reason = f"{reason or 'preempted'}; preempted {before} times before, so this one uses a retry"
            elif before + 1 >= self.max_preemptions:
                # The scheduler must not pick it again (it leaves spot capacity too): no more evictions.
                requeue["preemptible"] = False
        data: dict[str, Any] = {"outcome": outcome.value, "exit_code": exit_code, "reason": reason}
        if outcome is AttemptOutcome.PREEMPTED:
            self._move(conn, row, JobStatus.PREEMPTED, now=now, data=data, values={"lease_token": None})
            row = self._job_row(conn, row.id)  # type: ignore[assignment]
            self._move(
                conn,
                row,
                JobStatus.PENDING,
                event_type="requeued",
                now=now,
                values={"tries": max(0, row.tries - 1), "queued_at": now, "worker_id": None, **requeue},
            )
            attempt_status = JobStatus.PREEMPTED
            final = JobStatus.PENDING
        else:
            if outcome is AttemptOutcome.LOST:
                self._move(conn, row, JobStatus.LOST, now=now, data=data, values={"lease_token": None})
                row = self._job_row(conn, row.id)  # type: ignore[assignment]
            # The worker reports an OOM kill as a reason starting "oom" (ExitStatus.describe).
            oom = outcome is AttemptOutcome.FAILED and (reason or "").startswith("oom")
            decision = retry_policy.decide(policy, outcome, exit_code, row.tries, oom=oom)
            attempt_status = JobStatus.LOST if outcome is AttemptOutcome.LOST else decision.final_status
            if decision.retry and not cancel_requested:
                moved = self._move(
                    conn,
                    row,
                    JobStatus.PENDING,
                    event_type="retrying",
                    now=now,
                    data=data,
                    values={
                        **values,
                        "queued_at": now,
                        "worker_id": None,
                        "reason": reason,
                        "not_before": now + decision.delay_s if decision.delay_s else None,
                    },
                    stored_status=stored,
                )
                final = JobStatus.PENDING
            else:
                final = decision.final_status
                moved = self._move(
                    conn,
                    row,
                    final,
                    now=now,
                    data=data,
                    values={**values, "finished_at": now, "reason": reason or row.reason},
                    stored_status=stored,
                )
            if folded is not None and not moved:
                # The row changed since it was read (a cancel on another connection): the RUNNING
                # event already recorded must not stand alone. Roll back; the report is applied again.
                raise ConcurrentChange(f"job {row.id} changed while its report was applied")
        _end_attempt_row(
            conn,
            row,
            attempt_status,
            outcome,
            exit_code,
            reason,
            now,
            folded,
            stderr_tail,
            log_bytes,
            checkpoint_key,
        )
        if row.gang_id is not None:
            self._end_gang_attempt(conn, row.gang_id, row.attempt, final, now)
        return final

    # ---- gangs ---------------------------------------------------------------------------------
    # A gang is its rank 0 (the job, which the retry policy and preemption act on) plus member rows
    # for ranks 1..N-1. Rank 0 decides: when it ends, the other ranks are stopped, and the gang's
    # attempt ends as rank 0's did (as Kubeflow's default success policy: the master's exit is the
    # job's). When another rank ends badly first, rank 0 is stopped with that rank's outcome. A
    # member row between attempts waits PENDING ("idle"), unscheduled; the gang is leased again only
    # once every rank is idle.

    def _close_member(
        self,
        conn: sa.Connection,
        row: sa.Row[Any],
        outcome: AttemptOutcome,
        exit_code: int | None,
        reason: str | None,
        now: float,
        stderr_tail: str | None,
        log_bytes: int | None,
        checkpoint_key: str | None,
    ) -> JobStatus:
        head = self._job_row(conn, row.gang_id)
        head_status = JobStatus(head.status) if head is not None else JobStatus.CANCELLED
        same_attempt = head is not None and head.attempt == row.attempt
        if row.gang_abort is not None and outcome is not AttemptOutcome.SUCCEEDED:
            outcome = AttemptOutcome.CANCELLED  # stopped because the gang's attempt ended
        final = head_status if head_status in TERMINAL else JobStatus.PENDING
        folded: float | None = getattr(row, "folded_start", None)
        values: dict[str, Any] = {
            "exit_code": exit_code,
            "lease_token": None,
            "deadline": None,
            "worker_id": None,
            "gang_abort": None,
            "reason": reason,
        }
        if final in TERMINAL:
            values["finished_at"] = now
        if folded is not None:
            values["started_at"] = folded
        self._set_member(conn, row, final, now, values, {"outcome": outcome.value, "exit_code": exit_code})
        _end_attempt_row(
            conn,
            row,
            _ATTEMPT_STATUS[outcome],
            outcome,
            exit_code,
            reason,
            now,
            folded,
            stderr_tail,
            log_bytes,
            checkpoint_key,
        )
        if (
            outcome is not AttemptOutcome.SUCCEEDED
            and same_attempt
            and head is not None
            and head_status in (JobStatus.SCHEDULED, JobStatus.RUNNING)
            and head.gang_abort is None
        ):
            abort = {
                "outcome": outcome.value,
                "reason": f"rank {row.replica_rank} {outcome.value}: {reason or ''}",
            }
            conn.execute(
                jobs.update()
                .where(jobs.c.id == head.id, jobs.c.attempt == head.attempt)
                .values(gang_abort=abort, updated_at=now)
            )
            self._stop_members(conn, head.id, head.attempt, abort, now)
        return final

    def _set_member(
        self,
        conn: sa.Connection,
        row: sa.Row[Any],
        to: JobStatus,
        now: float,
        values: dict[str, Any],
        data: dict[str, Any],
    ) -> None:
        """A member row follows its gang rather than the job state machine (a rank that finished
        waits idle while rank 0 runs on): guarded by status and attempt only."""
        conn.execute(
            _MOVE,
            {
                "status": to.value,
                "updated_at": now,
                **values,
                "g_id": row.id,
                # A folded start (see ``_start``) was not written: the row still says SCHEDULED.
                "g_status": JobStatus.SCHEDULED.value if hasattr(row, "folded_start") else row.status,
                "g_attempt": row.attempt,
            },
        )
        self._event(
            conn,
            job_id=row.id,
            team=row.team,
            type_="replica_ended",
            src=row.status,
            dst=to.value,
            attempt=row.attempt,
            data={**data, "gang": row.gang_id, "rank": row.replica_rank},
            now=now,
        )

    def _stop_members(
        self, conn: sa.Connection, gang_id: str, attempt: int, abort: dict[str, Any], now: float
    ) -> None:
        """Flag the gang's live ranks of ``attempt`` to stop (``worker_commands`` and ``gang_stops``
        tell their workers)."""
        conn.execute(
            jobs.update()
            .where(
                jobs.c.gang_id == gang_id,
                jobs.c.replica_rank > 0,
                jobs.c.attempt == attempt,
                jobs.c.status.in_(_LIVE_NAMES),
                jobs.c.gang_abort.is_(None),
            )
            .values(gang_abort=abort, updated_at=now)
        )

    def _end_gang_attempt(
        self, conn: sa.Connection, gang_id: str, attempt: int, final: JobStatus, now: float
    ) -> None:
        """Rank 0's attempt ended as ``final``: stop the other ranks still running it, and let idle
        ones end with the gang when it is over."""
        self._stop_members(conn, gang_id, attempt, {"outcome": "cancelled", "reason": "rank 0 ended"}, now)
        if final in TERMINAL:
            for m in self._members(conn, gang_id):
                if m.status == JobStatus.PENDING.value:
                    self._set_member(
                        conn,
                        m,
                        final,
                        now,
                        {"finished_at": now, "pending_reason": None},
                        {"gang_ended": final.value},
                    )
        # The head is between attempts (or done): its stop flag has served.
        conn.execute(jobs.update().where(jobs.c.id == gang_id).values(gang_abort=None))

    def gang_stops(self, gang_id: str) -> list[WorkerCommand]:
        """The gang's ranks flagged to stop, as commands for their workers (pushed at once; the
        heartbeat's ``worker_commands`` repeats them until they stop)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs).where(
                    sa.or_(jobs.c.gang_id == gang_id, jobs.c.id == gang_id),
                    jobs.c.status.in_(_LIVE_NAMES),
                    jobs.c.gang_abort.is_not(None),
                )
            ).all()
        return [_stop_command(r) for r in rows]

    # ---- workers -------------------------------------------------------------------------------
    def register_worker(
        self,
        *,
        name: str,
        hostname: str,
        pool: str,
        region: str | None,
        cpu: float,
        memory: int,
        gpu: int,
        gpu_type: str | None,
        labels: dict[str, str],
        version: str | None,
    ) -> tuple[Worker, str]:
        """Register (or re-register) by name; returns the worker and a fresh worker credential.

        A worker that re-registers has restarted, so whatever it held before is gone: its live
        attempts are closed as LOST first, which requeues them under the retry policy.
        """
        now = self.clock()
        token = new_token("tyw")
        with self._tx() as conn:
            prior = conn.execute(sa.select(workers).where(workers.c.name == name)).first()
            vals = dict(
                hostname=hostname,
                pool=pool,
                region=region,
                cpu=cpu,
                memory=memory,
                gpu=gpu,
                gpu_type=gpu_type,
                labels=labels,
                status="ALIVE",
                version=version,
                token_hash=hash_token(token),
                drain_deadline=None,
                last_heartbeat=now,
            )
            if prior is None:
                worker_id = "w-" + uuid.uuid4().hex[:12]
                conn.execute(workers.insert().values(id=worker_id, name=name, registered_at=now, **vals))
            else:
                worker_id = prior.id
                self._lose_worker_attempts(conn, worker_id, now, "worker restarted")
                conn.execute(
                    workers.update().where(workers.c.id == worker_id).values(registered_at=now, **vals)
                )
            w = conn.execute(sa.select(workers).where(workers.c.id == worker_id)).one()
        return _worker(w), token

    def worker_by_token(self, token: str) -> Worker | None:
        with self._read() as conn:
            row = conn.execute(sa.select(workers).where(workers.c.token_hash == hash_token(token))).first()
        return None if row is None else _worker(row)

    def get_worker(self, worker_id: str) -> Worker | None:
        with self._read() as conn:
            row = conn.execute(sa.select(workers).where(workers.c.id == worker_id)).first()
        return None if row is None else _worker(row)

    def _preemptions(self, conn: sa.Connection, job_id: str, before_attempt: int) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(job_attempts)
                .where(
                    job_attempts.c.job_id == job_id,
                    job_attempts.c.number < before_attempt,
                    job_attempts.c.status == JobStatus.PREEMPTED.value,
                )
            ).scalar_one()
        )

    def drain_worker(self, ref: str, deadline: float | None) -> Worker | None:
        """Mark a worker (by id or name) DRAINING: nothing new is placed there, and from ``deadline``
        on its running attempts are preempted (None: its agent stops them itself). Draining again
        only brings a deadline forward. None when no live worker has that id or name."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(workers).where(
                    sa.or_(workers.c.id == ref, workers.c.name == ref), workers.c.status != "DEAD"
                )
            ).first()
            if row is None:
                return None
            if row.drain_deadline is not None and (deadline is None or row.drain_deadline < deadline):
                deadline = row.drain_deadline
            conn.execute(
                workers.update()
                .where(workers.c.id == row.id)
                .values(status="DRAINING", drain_deadline=deadline)
            )
            return _worker(conn.execute(sa.select(workers).where(workers.c.id == row.id)).one())

    def list_workers(self, include_dead: bool = True) -> list[Worker]:
        q = sa.select(workers).order_by(workers.c.name)
        if not include_dead:
            q = q.where(workers.c.status != "DEAD")
        with self._read() as conn:
            return [_worker(r) for r in conn.execute(q)]

    def set_checkpoint_times(self, times: Sequence[tuple[str, int, float]]) -> None:
        """Record when running attempts last checkpointed ((job, attempt, unix s); only forward)."""
        if not times:
            return
        with self._tx() as conn:
            for job_id, number, at in times:
                conn.execute(
                    job_attempts.update()
                    .where(
                        job_attempts.c.job_id == job_id,
                        job_attempts.c.number == number,
                        sa.or_(
                            job_attempts.c.last_checkpoint_at.is_(None),
                            job_attempts.c.last_checkpoint_at < at,
                        ),
                    )
                    .values(last_checkpoint_at=at)
                )

    def set_cached_uris(self, worker_id: str, uris: Sequence[str]) -> None:
        """Record the dataset URIs a worker's local cache holds (sent when they change, not per beat)."""
        with self._tx() as conn:
            conn.execute(
                workers.update().where(workers.c.id == worker_id).values(cached_uris=sorted(set(uris)))
            )

    # ---- what the leader publishes -------------------------------------------------------------
    def put_scheduler_state(self, key: str, data: dict[str, Any]) -> None:
        now = self.clock()
        with self._tx() as conn:
            res = conn.execute(
                scheduler_state.update().where(scheduler_state.c.key == key).values(data=data, updated_at=now)
            )
            if res.rowcount == 0:
                conn.execute(scheduler_state.insert().values(key=key, data=data, updated_at=now))

    def get_scheduler_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The published data and when it was written (``None``: nothing published yet)."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(scheduler_state.c.data, scheduler_state.c.updated_at).where(
                    scheduler_state.c.key == key
                )
            ).first()
        return None if row is None else (dict(row.data), row.updated_at)

    def touch_workers(self, seen: dict[str, float]) -> None:
        """Persist last-heartbeat times (batched; the hot path keeps them in the cache)."""
        if not seen:
            return
        with self._tx() as conn:
            for wid, at in seen.items():
                conn.execute(
                    workers.update()
                    .where(workers.c.id == wid, workers.c.status != "DEAD")
                    .values(last_heartbeat=at)
                )

    def mark_worker_dead(
        self, worker_id: str, reason: str = "worker stopped sending heartbeats"
    ) -> list[str]:
        """The worker is gone: its live attempts become LOST and their jobs go back under the retry policy."""
        now = self.clock()
        with self._tx() as conn:
            res = conn.execute(
                workers.update()
                .where(workers.c.id == worker_id, workers.c.status != "DEAD")
                .values(status="DEAD")
            )
            if res.rowcount == 0:
                return []
            return self._lose_worker_attempts(conn, worker_id, now, reason)

    def _lose_worker_attempts(
        self, conn: sa.Connection, worker_id: str, now: float, reason: str
    ) -> list[str]:
        rows = conn.execute(
            sa.select(jobs).where(jobs.c.worker_id == worker_id, jobs.c.status.in_(_LIVE_NAMES))
        ).all()
        for row in rows:
            self._close_attempt(conn, row, AttemptOutcome.LOST, None, reason, now)
        return [r.id for r in rows]

    def worker_commands(self, worker_id: str, running: Sequence[tuple[str, int, str]]) -> list[WorkerCommand]:
        """What a worker must do about the attempts it says it runs, and about cancels it holds."""
        cmds: list[WorkerCommand] = []
        ids = [j for j, _, _ in running]
        with self._read() as conn:
            rows = {
                r.id: r
                for r in conn.execute(
                    sa.select(
                        jobs.c.id,
                        jobs.c.status,
                        jobs.c.attempt,
                        jobs.c.lease_token,
                        jobs.c.worker_id,
                        jobs.c.gang_abort,
                    ).where(
                        sa.or_(
                            jobs.c.id.in_(ids),
                            sa.and_(
                                jobs.c.worker_id == worker_id, jobs.c.status == JobStatus.CANCELLING.value
                            ),
                        )
                    )
                )
            }
        reported = set()
        for job_id, attempt, token in running:
            reported.add((job_id, attempt))
            r = rows.get(job_id)
            if r is None or r.lease_token != token or r.attempt != attempt or r.worker_id != worker_id:
                cmds.append(WorkerCommand("kill_stale", job_id, attempt, token, "lease no longer held"))
            elif r.status == JobStatus.CANCELLING.value:
                cmds.append(WorkerCommand("cancel", job_id, attempt, token, "cancel requested"))
            elif r.gang_abort is not None:
                cmds.append(_stop_command(r))
        for r in rows.values():
            if (
                r.status == JobStatus.CANCELLING.value
                and r.worker_id == worker_id
                and (r.id, r.attempt) not in reported
            ):
                cmds.append(WorkerCommand("cancel", r.id, r.attempt, r.lease_token or "", "cancel requested"))
        return cmds

    def leased_to(self, worker_id: str) -> list[Lease]:
        """Every attempt a worker holds: re-sent on each lease-stream (re)connect."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs, job_attempts.c.gpu_indices)
                .select_from(
                    jobs.join(
                        job_attempts,
                        sa.and_(job_attempts.c.job_id == jobs.c.id, job_attempts.c.number == jobs.c.attempt),
                    )
                )
                .where(jobs.c.worker_id == worker_id, jobs.c.status.in_(_LIVE_NAMES))
                .order_by(jobs.c.id)
            ).all()
            return [
                Lease(
                    r.id,
                    r.attempt,
                    worker_id,
                    r.lease_token,
                    tuple(r.gpu_indices),
                    r.spec,
                    r.name,
                    r.team,
                    r.user_name,
                    self._resume_key(conn, r.id) if r.attempt > 1 else None,
                    r.cpu,
                    r.memory,
                    r.max_runtime,
                )
                for r in rows
            ]

    # ---- reconciler ----------------------------------------------------------------------------
    def expire_overdue(self, now: float, grace: float) -> list[str]:
        """Backstop for a worker that failed to enforce max_runtime: close such jobs as TIMED_OUT."""
        overdue = sa.and_(
            jobs.c.status == JobStatus.RUNNING.value,
            jobs.c.deadline.is_not(None),
            jobs.c.deadline + grace < now,
        )
        return self._close_where(overdue, AttemptOutcome.TIMED_OUT, lambda _: "exceeded max_runtime", now)

    def _close_where(
        self,
        condition: sa.ColumnElement[bool],
        outcome: AttemptOutcome,
        reason: Callable[[sa.Row[Any]], str],
        now: float,
    ) -> list[str]:
        """Close the current attempt of every job matching ``condition``. Looked up with a read first,
        so the reconciler's idle cycles never take the write lock from the hot path."""
        with self._read() as conn:
            ids = [r.id for r in conn.execute(sa.select(jobs.c.id).where(condition))]
        if not ids:
            return []
        closed = []
        with self._tx() as conn:
            # Re-read under the write lock: a job that moved on meanwhile no longer matches.
            for row in conn.execute(sa.select(jobs).where(jobs.c.id.in_(ids), condition)).all():
                self._close_attempt(conn, row, outcome, None, reason(row), now)
                closed.append(row.id)
        return closed

    def requeue_undelivered(self, job_id: str, attempt: int, token: str) -> bool:
        """Close a SCHEDULED attempt its worker never acknowledged as an infrastructure failure."""
        now = self.clock()
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if (
                row is None
                or row.status != JobStatus.SCHEDULED.value
                or row.attempt != attempt
                or row.lease_token != token
            ):
                return False
            self._close_attempt(
                conn, row, AttemptOutcome.INFRA, None, "the worker never acknowledged the assignment", now
            )
        return True

    def lose_attempt(self, job_id: str, attempt: int, token: str, reason: str) -> bool:
        """Close a RUNNING attempt that its live worker no longer runs as LOST (retried as an
        infrastructure failure). False when the attempt moved on meanwhile."""
        now = self.clock()
        with self._tx() as conn:
            row = self._job_row(conn, job_id)
            if (
                row is None
                or row.status != JobStatus.RUNNING.value
                or row.attempt != attempt
                or row.lease_token != token
            ):
                return False
            self._close_attempt(conn, row, AttemptOutcome.LOST, None, reason, now)
        return True

    def finish_stuck_cancels(self, now: float, after: float) -> list[str]:
        """A cancel the worker never confirmed (worker wedged) ends as CANCELLED; its lease is void."""
        stuck = sa.or_(
            sa.and_(jobs.c.status == JobStatus.CANCELLING.value, jobs.c.cancel_requested_at < now - after),
            # A gang rank told to stop (its gang's attempt ended) that never did holds the gang back.
            sa.and_(
                jobs.c.status.in_(_LIVE_NAMES),
                jobs.c.gang_abort.is_not(None),
                jobs.c.updated_at < now - after,
            ),
        )
        return self._close_where(stuck, AttemptOutcome.CANCELLED, lambda row: row.reason or "cancelled", now)

    # ---- logs and artifacts --------------------------------------------------------------------
    def _attempt_token_ok(self, conn: sa.Connection, job_id: str, attempt: int, token: str) -> bool:
        r = conn.execute(
            sa.select(job_attempts.c.lease_token).where(
                job_attempts.c.job_id == job_id, job_attempts.c.number == attempt
            )
        ).first()
        return r is not None and r.lease_token == token

    def attempt_token_ok(self, job_id: str, attempt: int, token: str) -> bool:
        """An attempt's own lease token (even after it ended) lets its worker upload that attempt's logs."""
        with self._read() as conn:
            return self._attempt_token_ok(conn, job_id, attempt, token)

    def add_log_chunk(self, chunk: LogChunk, token: str) -> bool:
        with self._tx() as conn:
            if not self._attempt_token_ok(conn, chunk.job_id, chunk.attempt, token):
                return False
            exists = conn.execute(
                sa.select(log_chunks.c.seq).where(
                    log_chunks.c.job_id == chunk.job_id,
                    log_chunks.c.attempt == chunk.attempt,
                    log_chunks.c.seq == chunk.seq,
                )
            ).first()
            if exists is None:
                conn.execute(
                    log_chunks.insert().values(
                        job_id=chunk.job_id,
                        attempt=chunk.attempt,
                        seq=chunk.seq,
                        start_offset=chunk.start_offset,
                        end_offset=chunk.end_offset,
                        object_key=chunk.object_key,
                        stored_size=chunk.stored_size,
                        created_at=self.clock(),
                    )
                )
        return True

    def log_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(log_chunks)
                .where(log_chunks.c.job_id == job_id, log_chunks.c.attempt == attempt)
                .order_by(log_chunks.c.start_offset)
            ).all()
        return [
            LogChunk(r.job_id, r.attempt, r.seq, r.start_offset, r.end_offset, r.object_key, r.stored_size)
            for r in rows
        ]

    def artifacts(self, job_id: str, attempt: int | None = None) -> list[ArtifactRecord]:
        q = sa.select(artifacts).where(artifacts.c.job_id == job_id)
        if attempt is not None:
            q = q.where(artifacts.c.attempt == attempt)
        with self._read() as conn:
            rows = conn.execute(q.order_by(artifacts.c.attempt, artifacts.c.path)).all()
        return [
            ArtifactRecord(r.job_id, r.attempt, r.path, r.size, r.sha256, r.object_key, r.created_at)
            for r in rows
        ]

    # ---- outbox --------------------------------------------------------------------------------
    def outbox_unsent(self, limit: int = 500) -> list[OutboxRow]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox).where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
            ).all()
        return [OutboxRow(r.id, r.event_id, r.topic, r.key, r.payload) for r in rows]

    def outbox_mark_sent(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._tx() as conn:
            conn.execute(outbox.update().where(outbox.c.id.in_(list(ids))).values(sent_at=self.clock()))

    def outbox_lag(self) -> int:
        with self._read() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(outbox.c.sent_at.is_(None))).scalar_one()
            )

    # ---- fleet and queue views -----------------------------------------------------------------
    def count_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            return {
                r[0]: int(r[1])
                for r in conn.execute(
                    # A gang counts once (its rank 0), as it is listed.
                    sa.select(jobs.c.status, sa.func.count())
                    .where(jobs.c.replica_rank == 0)
                    .group_by(jobs.c.status)
                )
            }

    def pending_by_pool_team(self) -> list[tuple[str | None, str, int]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(jobs.c.pool, jobs.c.team, sa.func.count())
                .where(jobs.c.status == JobStatus.PENDING.value, jobs.c.replica_rank == 0)
                .group_by(jobs.c.pool, jobs.c.team)
            ).all()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def running_by_team(self) -> list[tuple[str, int, float, int, int]]:
        """(team, jobs, cpu, memory, gpu) over live jobs."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    jobs.c.team,
                    sa.func.count(),
                    sa.func.sum(jobs.c.cpu),
                    sa.func.sum(jobs.c.memory),
                    sa.func.sum(jobs.c.gpu),
                )
                .where(jobs.c.status.in_(_LIVE_NAMES))
                .group_by(jobs.c.team)
            ).all()
        return [(r[0], int(r[1]), float(r[2] or 0), int(r[3] or 0), int(r[4] or 0)) for r in rows]

    # ---- outbox relay and the event-log replay check -------------------------------------------
    def outbox_mark_sent_ranges(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Mark sent the unsent outbox rows whose id lies in one of the inclusive ``(first, last)``
        ranges: one short statement per range instead of an IN list of every id.

        Pass only ranges the caller read whole. An id missing inside a range can belong to a row
        that committed after the read (ids are taken before commit), and it would be marked sent
        without ever being published."""
        if not ranges:
            return
        stmt = (
            outbox.update()
            .where(
                outbox.c.id >= sa.bindparam("r_first"),
                outbox.c.id <= sa.bindparam("r_last"),
                outbox.c.sent_at.is_(None),
            )
            .values(sent_at=sa.bindparam("r_now"))
        )
        now = self.clock()
        with self._tx() as conn:
            conn.execute(stmt, [{"r_first": a, "r_last": b, "r_now": now} for a, b in ranges])

    def outbox_events(self, after_id: int = 0, limit: int = 10_000) -> list[tuple[int, str, bool, Event]]:
        """Outbox rows after ``after_id`` in id order, each as ``(outbox id, topic, sent, event)``:
        what the replay check expects in the event log. Joined on the events' unique event_id."""
        q = (
            sa.select(job_events, outbox.c.id.label("outbox_id"), outbox.c.topic, outbox.c.sent_at)
            .select_from(outbox.join(job_events, job_events.c.event_id == outbox.c.event_id))
            .where(outbox.c.id > after_id)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [(r.outbox_id, r.topic, r.sent_at is not None, _event(r)) for r in rows]

    def existing_event_ids(self, event_ids: Iterable[str]) -> set[str]:
        """Which of these event ids the store holds."""
        ids = list(event_ids)
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                q = sa.select(job_events.c.event_id).where(job_events.c.event_id.in_(chunk))
                found.update(conn.execute(q).scalars())
        return found


def _team(r: sa.Row[Any]) -> Team:
    return Team(
        name=r.name,
        weight=r.weight,
        cpu_quota=r.cpu_quota,
        memory_quota=r.memory_quota,
        gpu_quota=r.gpu_quota,
        gpu_type_quotas=dict(r.gpu_type_quotas or {}),
    )


def _end_attempt_row(
    conn: sa.Connection,
    row: Any,
    status: JobStatus,
    outcome: AttemptOutcome,
    exit_code: int | None,
    reason: str | None,
    now: float,
    folded: float | None,
    stderr_tail: str | None,
    log_bytes: int | None,
    checkpoint_key: str | None,
) -> None:
    """Close the job's current attempt row; ``folded``: a start reported with the end."""
    values = {
        "a_job": row.id,
        "a_number": row.attempt,
        "status": status.value,
        "outcome": outcome.value,
        "finished_at": now,
        "exit_code": exit_code,
        "reason": reason,
        "stderr_tail": stderr_tail,
        "log_bytes": log_bytes,
        "checkpoint_key": checkpoint_key,
    }
    if folded is not None:
        values["started_at"] = folded
    conn.execute(_UPDATE_ATTEMPT, values)


def _stop_command(r: Any) -> WorkerCommand:
    # A gang that will run again (a rank preempted or lost) stops through the preempt path, so rank 0
    # uploads its checkpoint and the next attempt resumes from it.
    again = r.gang_abort.get("outcome") in (AttemptOutcome.PREEMPTED.value, AttemptOutcome.LOST.value)
    kind = "preempt" if again else "cancel"
    return WorkerCommand(
        kind, r.id, r.attempt, r.lease_token or "", str(r.gang_abort.get("reason", "")), r.worker_id
    )


_ATTEMPT_STATUS = {
    AttemptOutcome.SUCCEEDED: JobStatus.SUCCEEDED,
    AttemptOutcome.FAILED: JobStatus.FAILED,
    AttemptOutcome.CANCELLED: JobStatus.CANCELLED,
    AttemptOutcome.TIMED_OUT: JobStatus.TIMED_OUT,
    AttemptOutcome.START_FAILED: JobStatus.FAILED,
    AttemptOutcome.INFRA: JobStatus.FAILED,
    AttemptOutcome.PREEMPTED: JobStatus.PREEMPTED,
    AttemptOutcome.LOST: JobStatus.LOST,
}


def gang_port(gang_id: str, attempt: int) -> int:
    """The gang's MASTER_PORT: fixed per attempt (every rank computes the same), spread over
    20000-29999 so gangs sharing a rank-0 host rarely collide."""
    digest = hashlib.sha256(f"{gang_id}:{attempt}".encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "big") % 10000


def member_id(gang_id: str, rank: int) -> str:
    """Rank ``rank``'s row of gang ``gang_id`` (rank 0 is the gang's job itself)."""
    return gang_id if rank == 0 else f"{gang_id}-{rank}"


def _replica(r: sa.Row[Any]) -> Replica:
    return Replica(r.replica_rank, r.id, JobStatus(r.status), r.attempt, r.worker_id, r.exit_code, r.reason)


def _job(row: sa.Row[Any], attempts: list[Attempt], replicas: list[Replica] | None = None) -> Job:
    return Job(
        id=row.id,
        name=row.name,
        user=row.user_name,
        team=row.team,
        status=JobStatus(row.status),
        priority=row.priority,
        pool=row.pool,
        spec=row.spec,
        created_at=row.created_at,
        updated_at=row.updated_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempt=row.attempt,
        tries=row.tries,
        worker_id=row.worker_id,
        exit_code=row.exit_code,
        reason=row.reason,
        pending_reason=row.pending_reason,
        not_before=row.not_before,
        attempts=attempts,
        lease_token=row.lease_token,
        gang_id=row.gang_id,
        replica_rank=row.replica_rank,
        replicas=replicas or [],
    )


def _attempt(a: sa.Row[Any]) -> Attempt:
    return Attempt(
        job_id=a.job_id,
        number=a.number,
        worker_id=a.worker_id,
        status=a.status,
        outcome=a.outcome,
        gpu_indices=list(a.gpu_indices),
        scheduled_at=a.scheduled_at,
        started_at=a.started_at,
        finished_at=a.finished_at,
        exit_code=a.exit_code,
        reason=a.reason,
        stderr_tail=a.stderr_tail,
        log_bytes=a.log_bytes,
        lease_token=a.lease_token,
    )


def _event(r: sa.Row[Any]) -> Event:
    return Event(
        id=r.id,
        event_id=r.event_id,
        job_id=r.job_id,
        team=r.team,
        type=r.type,
        from_status=r.from_status,
        to_status=r.to_status,
        attempt=r.attempt,
        at=r.at,
        data=r.data,
    )


def _worker(r: sa.Row[Any]) -> Worker:
    return Worker(
        id=r.id,
        name=r.name,
        hostname=r.hostname,
        pool=r.pool,
        region=r.region,
        cpu=r.cpu,
        memory=r.memory,
        gpu=r.gpu,
        gpu_type=r.gpu_type,
        labels=dict(r.labels),
        status=r.status,
        version=r.version,
        registered_at=r.registered_at,
        last_heartbeat=r.last_heartbeat,
        cached_uris=tuple(r.cached_uris or ()),
        drain_deadline=r.drain_deadline,
    )
