"""What the benchmarks share: free ports, percentiles, a throwaway PostgreSQL database and
redis-server. Imported by bench/run.py and bench/fleet.py, which run as scripts from bench/."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

PG_ADMIN = os.environ.get("TRAINYARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def ts(s: str) -> float:
    """An API timestamp (ISO 8601) as epoch seconds."""
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def postgres_db(prefix: str = "ty_bench") -> Iterator[str]:
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port (the bench owns it, like the tests do)."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def named_children() -> dict[str, int]:
    """This process's children that are the backends the benches start, by what they are."""
    out: dict[str, int] = {}
    for pid in sorted(_children()):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            for key, name in (("redis-server", "redis"), ("tansu", "kafka (tansu)"), ("moto", "s3 (moto)")):
                if key in cmd:
                    out[name] = pid
    return out


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            with (
                contextlib.suppress(OSError, IndexError),
                open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f,
            ):
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    out.add(int(d))
    return out


@contextlib.contextmanager
def s3_and_kafka(
    home: Path, database_url: str, redis_url: str
) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """moto's S3 server and the tansu broker keeping its log in it, started as `yard up --services`
    starts them (trainyard.cli.services.LocalServices, the launcher the Kafka tests' broker mirrors):
    the environment the control plane needs to use them, and their pids (for CPU accounting)."""
    from trainyard.cli.services import LocalServices

    # LocalServices takes what the environment already names and starts the rest: name the bench's
    # own database and redis-server so that only S3 and Kafka are started.
    saved = {k: os.environ.get(k) for k in ("TRAINYARD_DATABASE_URL", "TRAINYARD_REDIS_URL")}
    os.environ["TRAINYARD_DATABASE_URL"] = database_url
    os.environ["TRAINYARD_REDIS_URL"] = redis_url
    before = _children()
    try:
        with LocalServices(home) as services:
            services.start()
            pids: dict[str, int] = {}
            for pid in sorted(_children() - before):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    pids[
                        "kafka (tansu)" if "tansu" in cmd else "s3 (moto)" if "moto" in cmd else cmd[:40]
                    ] = pid
            yield dict(services.env), pids
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
