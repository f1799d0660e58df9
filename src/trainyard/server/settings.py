"""Control-plane settings: one place, read from TRAINYARD_* environment variables."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from trainyard.model.quantity import parse_duration, parse_memory


class Settings(BaseSettings):
    """Everything a control plane is configured with (``TRAINYARD_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    home: Path = Field(default=Path(".trainyard"), description="all embedded state lives here")
    database_url: str | None = Field(default=None, description="default: SQLite in home")
    object_store: str | None = Field(default=None, description="default: file://<home>/objects")
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Worker gRPC over TLS (PEM files). With a client CA, a worker must also present a certificate
    # that CA signed (mutual TLS). Unset: plaintext, for a trusted network or a laptop.
    grpc_tls_cert: Path | None = Field(default=None, description="server certificate chain (PEM)")
    grpc_tls_key: Path | None = Field(default=None, description="server private key (PEM)")
    grpc_tls_client_ca: Path | None = Field(default=None, description="CA that signs worker certificates")
    # Single sign-on: bearer tokens that are JWTs are verified against this JWKS; platform tokens
    # keep working alongside.
    jwks_url: str | None = Field(
        default=None, description="e.g. https://sso.example.com/.well-known/jwks.json"
    )
    jwt_audience: str | None = Field(default=None, description="required `aud`; unset: not checked")
    jwt_issuer: str | None = Field(default=None, description="required `iss`; unset: not checked")
    jwt_user_claim: str = Field(default="sub", description="claim holding the user name")
    jwt_team_claim: str = Field(default="team", description="claim holding the team")
    jwt_role_claim: str = Field(default="role", description="claim holding the role (default: user)")
    public_url: str | None = Field(
        default=None, description="base of presigned URLs; default http://host:port"
    )
    heartbeat_interval: float = 10.0
    cancel_grace: float = 10.0
    restart_grace: float = 15.0  # after a control-plane restart, how long known workers have to check in
    max_preemptions: int = 10  # free preemptions per job; later ones use a retry (no eviction livelock)
    scheduler_interval: float = 1.0
    max_body: int = 1 << 20
    workdir_limit: int = 100 << 20
    # What one workdir bundle may unpack to (a small tar.gz can inflate a thousandfold): checked on
    # upload, and again by the worker when it unpacks.
    workdir_unpacked_limit: int = Field(default=10 << 30, description="bytes a bundle may unpack to")
    workdir_file_limit: int = Field(default=100_000, description="entries a bundle may hold")
    object_limit: int = 5 << 30
    url_ttl: float = 600.0
    submit_rate: float = 0.0  # submissions per second per user; 0 = unlimited
    submit_burst: float = 50.0
    log_tail_bytes: int = 4 << 20
    # Production backends (DESIGN.md's table); each unset one keeps its embedded default.
    redis_url: str | None = Field(default=None, description="e.g. redis://127.0.0.1:6379/0")
    kafka_bootstrap: str | None = Field(default=None, description="e.g. 127.0.0.1:9092")
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint URL; default: AWS")
    s3_region: str | None = Field(default=None, description="S3 region; default: the AWS chain's")
    # Fluent Bit (deploy/kubernetes/fluent-bit): where in object storage it writes job Pods' logs, for
    # agents run with --log-shipper external. Unset: nothing is taken in.
    fluent_bit_prefix: str | None = Field(
        default=None, description="object-store prefix Fluent Bit's s3 output writes under, e.g. fluent-bit"
    )
    fluent_bit_namespace: str = Field(
        default="trainyard-jobs", description="the only namespace whose Pods' records are taken in"
    )
    fluent_bit_interval: float = Field(default=10.0, description="seconds between the leader's passes")
    rate_tiers: str = Field(
        default="free=5/day,standard=60/min,enterprise=unlimited",
        description="submission limits per user tier",
    )
    default_tier: str = "enterprise"
    secret_key: str | None = Field(
        default=None,
        description="key for team secrets at rest (64 hex chars); default: generated in home/secret-key",
    )

    fair_share_half_life: float = Field(
        default=7 * 86400.0,
        description="half-life of the usage history fair share weighs (Slurm's PriorityDecayHalfLife)",
    )

    # Every blocking store call of a control plane runs in one thread pool (the event loop's default
    # executor). Python's default of (cores + 4) threads, 6 on a 2-core machine, is what broke first
    # under a simulated fleet on PostgreSQL: each call holds a thread for a network round trip with
    # the GIL released, and heartbeats, reports, status reads and the scheduler cycle queued for six
    # threads while PostgreSQL sat idle. SQLite needs fewer: its writers queue on one lock anyway.
    db_threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="threads for blocking store calls; default 32 on PostgreSQL, 8 on SQLite",
    )
    db_pool_size: int | None = Field(
        default=None, ge=1, le=1000, description="PostgreSQL connections kept open; default db_threads + 4"
    )
    db_pool_overflow: int = Field(
        default=8, ge=0, le=1000, description="PostgreSQL connections opened beyond db_pool_size under bursts"
    )
    # Group commit of submissions: how many batches may be in flight at once. One on SQLite (its
    # writers queue on one lock anyway); on PostgreSQL a batch mostly waits for round trips and the
    # commit's flush, so a few overlap. Two since a batch's rows go in one statement per table
    # (store/bulk.py): each batch in flight costs a transaction of its own, and four split eight
    # clients' submissions into more, smaller batches (submit bench, 5 pairs at load 6-8: 2 writers
    # 377 jobs/s median, control-plane CPU 1.24 ms/job; 4 writers 341 jobs/s, 1.49 ms/job).
    submit_writers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="submission batches in flight; default 2 on PostgreSQL, 1 on SQLite",
    )

    # Log search's indexer runs on the leader beside heartbeats, reports and the scheduler. A fleet
    # writing more lines than it can index in this share of a core builds a backlog (its metric
    # says how long) instead of taking the leader's CPU: search then lags, nothing else does.
    log_index_cpu: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="most of one core the leader's log-search indexer takes while it has a backlog",
    )

    # Retention: the leader archives jobs finished longer ago than this to object storage
    # (``archive/``) and deletes their rows, in batches (unset or "off": jobs are kept for good).
    retention: float | None = Field(
        default=None, description="archive and prune jobs finished longer ago than this, e.g. 90d; unset: off"
    )
    retention_batch: int = Field(default=200, description="jobs per archive object and delete transaction")
    retention_interval: float = Field(default=300.0, description="seconds between the leader's passes")

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, v: object) -> object:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "off", "none", "0")):
            return None
        value = parse_duration(v) if isinstance(v, str | int | float) and not isinstance(v, bool) else v
        if isinstance(value, float) and value <= 0:
            raise ValueError("must be a positive duration, e.g. 90d, or off")
        return value

    @field_validator("retention_batch")
    @classmethod
    def _batch(cls, v: int) -> int:
        if not 1 <= v <= 5000:
            raise ValueError("must be 1 to 5000")
        return v

    @field_validator("fair_share_half_life", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        value = parse_duration(v) if isinstance(v, str | int | float) and not isinstance(v, bool) else v
        if isinstance(value, float) and value <= 0:
            raise ValueError("must be a positive duration, e.g. 7d or 12h")
        return value

    @field_validator(
        "max_body", "workdir_limit", "workdir_unpacked_limit", "object_limit", "log_tail_bytes", mode="before"
    )
    @classmethod
    def _size(cls, v: object) -> object:
        return parse_memory(v) if isinstance(v, str) else v

    @field_validator("workdir_unpacked_limit", "workdir_file_limit")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be more than 0")
        return v

    @property
    def db_url(self) -> str:
        """The database URL: ``database_url``, or a SQLite file in home."""
        return self.database_url or f"sqlite:///{self.home.resolve() / 'trainyard.db'}"

    @property
    def on_postgres(self) -> bool:
        """Whether the store is PostgreSQL (else the embedded SQLite)."""
        return self.db_url.startswith(("postgresql", "postgres"))

    @property
    def db_thread_count(self) -> int:
        """Threads for blocking store calls: ``db_threads``, or the default for the database."""
        if self.db_threads is not None:
            return self.db_threads
        return 32 if self.on_postgres else 8

    @property
    def submit_writer_count(self) -> int:
        """Submission batches in flight at once: ``submit_writers``, or the default for the database."""
        if self.submit_writers is not None:
            return self.submit_writers
        return 2 if self.on_postgres else 1

    @property
    def db_pool_connections(self) -> int:
        """PostgreSQL connections kept open: one per store thread, so that no thread waits for a
        connection, and a few for calls made outside the pool's threads (startup, the health check)."""
        return self.db_pool_size if self.db_pool_size is not None else self.db_thread_count + 4

    @property
    def base_url(self) -> str:
        """The URL clients are told: ``public_url``, or the address served."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def objects_dir(self) -> Path:
        """Where a local object store keeps its files."""
        if self.object_store and self.object_store.startswith("file://"):
            return Path(self.object_store[len("file://") :])
        return self.home / "objects"


def _secret_file(path: Path, make: str) -> str:
    """Read a secret kept in home, creating it (mode 600) the first time.

    Replicas sharing a home may start together: the secret is written whole to a private temporary
    file and linked into place, so exactly one value wins and nobody reads a half-written file.
    """
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(make + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text().strip()
    finally:
        os.unlink(tmp)
    return make


def url_secret(home: Path) -> bytes:
    """The key presigned object URLs are signed with, kept in home."""
    return _secret_file(home / "secret", secrets.token_hex(32)).encode()


def secret_key(settings: Settings) -> bytes:
    """The 256-bit key team secrets are encrypted with. Replicas must share it: set
    TRAINYARD_SECRET_KEY, or share home (where the first start writes one)."""
    raw = settings.secret_key or _secret_file(settings.home / "secret-key", secrets.token_hex(32))
    try:
        key = bytes.fromhex(raw.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("TRAINYARD_SECRET_KEY must be 64 hex characters (a 256-bit key)")
    return key


def worker_bootstrap_token(home: Path) -> str:
    """The token worker agents present to Register; distinct from every user token."""
    env = os.environ.get("TRAINYARD_WORKER_TOKEN")
    if env:
        return env
    return _secret_file(home / "worker-token", "tyb_" + secrets.token_urlsafe(32))


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (mode 600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
