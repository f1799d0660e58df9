"""A redis-server of the test's own on a free loopback port, which the test may stop and restart.

Never a skip: without redis-server the tests that need it fail, as Redis is part of the test bed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not on PATH; the Redis backends cannot be tested")
        self.port = port or free_port()
        self._may_move = port is None  # until it first runs: a restart must keep the port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        for _ in range(3):
            if self._start(timeout):
                self._may_move = False
                return
            # Another process took the free port between our probe and redis-server's bind.
            self.port = free_port()
        pytest.fail("redis-server could not bind a free port three times")

    def _start(self, timeout: float) -> bool:
        assert self._proc is None, "already running"
        assert self.binary is not None
        cmd = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        # Its log goes to a file, not a pipe: an unread pipe that fills would stall the server.
        # Open until stop(), so not a with-block.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    # The pid check: a server that answers on this port must be this one.
                    if client.ping() and client.info("server")["process_id"] == self._proc.pid:
                        return True
                except redis.ConnectionError:
                    pass
                if self._proc.poll() is not None:
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")
                    self._log.close()
                    self._proc = None
                    if self._may_move and "Address already in use" in err:
                        return False
                    pytest.fail(f"redis-server exited at start on port {self.port}: {err}")
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"redis-server did not answer on port {self.port} within {timeout}s")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, as an operator or orchestrator would; nothing is saved (``--save ""``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2.0)


@contextmanager
def running_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def key_prefix() -> str:
    """A key prefix of the test's own, so tests can share a server and run in any order."""
    return f"t{uuid.uuid4().hex[:12]}:"
