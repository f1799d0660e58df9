"""moto's S3 server for tests, behind a TCP proxy that a test can close to make S3 unreachable.

Stopping moto itself would not do: a stopped ThreadedMotoServer keeps its socket bound (clients
hang instead of being refused), and a restarted one may not keep the buckets. The proxy is what an
outage looks like to a client: connections refused, open ones cut; reopened on the same port with
every object intact behind it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
else:
    S3Client = Any

REGION = "us-east-1"
_BUF = 256 << 10


class TcpProxy:
    """Forwards a loopback port to ``target`` while open; closed, the port refuses connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    def open(self) -> None:
        """Listen (on the same port as before, after a close)."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, args=(ls,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in select on it
            s.close()

    def _accept(self, ls: socket.socket) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([ls], [], [], 0.05)
            if not ready:
                continue
            try:
                client, _ = ls.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                continue
            with self._lock:
                self._conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(_BUF)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns -= {a, b}
            for s in (a, b):
                s.close()


class S3Server:
    """moto's S3 on a free loopback port; ``endpoint`` goes through the proxy, ``direct`` does not."""

    def __init__(self) -> None:
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.proxy: TcpProxy | None = None
        self.direct = ""

    def start(self) -> S3Server:
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.direct = f"http://{host}:{port}"
        self.proxy = TcpProxy((host, port))
        self.proxy.open()
        return self

    @property
    def endpoint(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.port}"

    def client(self, *, direct: bool = False) -> S3Client:
        """A boto3 client; ``direct`` bypasses the proxy, to look into the bucket during an outage."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.direct if direct else self.endpoint,
            region_name=REGION,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self) -> str:
        """A new bucket: moto's state is per process, so every test gets its own name."""
        name = f"ty-{uuid.uuid4().hex[:16]}"
        self.client(direct=True).create_bucket(Bucket=name)
        return name

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """S3 is unreachable inside the block: connections are refused, open ones are cut."""
        assert self.proxy is not None
        self.proxy.close()
        try:
            yield
        finally:
            self.proxy.open()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self._moto.stop()
        server = getattr(self._moto, "_server", None)
        if server is not None:  # moto's stop() leaves the socket bound
            server.server_close()


@contextlib.contextmanager
def aws_env(tmp: Path) -> Iterator[None]:
    """Fake credentials for this block only, and nothing from the host's AWS configuration."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(tmp / "aws-config-none"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "aws-credentials-none"))
        yield


@contextlib.contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """moto's S3 server and the credentials to use it, for the duration of the block."""
    with aws_env(tmp):
        server = S3Server().start()
        try:
            yield server
        finally:
            server.stop()


AWS_VARS: dict[str, str | None] = {
    var: None
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    )
}
"""Pass as an agent's environment changes: workers must work with no storage credentials at all."""
