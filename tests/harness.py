"""Test harness: a real control plane and real worker agents on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from trainyard.server.run import serve
from trainyard.server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
YARD = [sys.executable, "-m", "trainyard"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(n: int, avoid: Collection[int] = ()) -> int:
    """The first of ``n`` consecutive free ports, below the kernel's ephemeral range: a run picked
    there (port 0's way) can lose its later ports to the next process that asks for any port."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 32000)
        run = set(range(first, first + n))
        if run & set(avoid):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for p in sorted(run):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports found")


def wait_for(
    pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ControlPlane:
    """The control plane in this process, on its own event loop thread."""

    def __init__(
        self, home: Path, port: int | None = None, grpc_port: int | None = None, **overrides: Any
    ) -> None:
        self.home = home
        self.port = port or free_port()
        self.grpc_port = grpc_port or free_port()
        defaults: dict[str, Any] = {"heartbeat_interval": 0.3, "cancel_grace": 2.0, "scheduler_interval": 0.2}
        defaults.update(overrides)
        self.settings = Settings(home=home, port=self.port, grpc_port=self.grpc_port, **defaults)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def token(self) -> str:
        return (self.home / "token").read_text().strip()

    def start(self) -> ControlPlane:
        ready = threading.Event()

        def run() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                started = asyncio.Event()
                task = asyncio.create_task(serve(self.settings, self._stop, started))
                await started.wait()
                ready.set()
                await task

            try:
                asyncio.run(main())
            except BaseException as e:  # surfaced by start()/stop()
                self._error = e
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(30)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(15)

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=30
        )


class Agent:
    """A real `yard worker` process."""

    def __init__(
        self,
        cp: ControlPlane | ServerProcess,
        name: str,
        *args: str,
        extra_env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.name = name
        self.log = cp.home / f"agent-{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k, v in (extra_env or {}).items():  # None removes a variable the test process has
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        if "--allow-cwd" not in args:
            # Tests run jobs in their temporary directories and in the checkout, as users of a
            # cluster run them in shared directories the operator allowed.
            args = (*args, "--allow-cwd", tempfile.gettempdir(), "--allow-cwd", str(REPO))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*YARD, "worker", "--server", cp.grpc, "--home", str(cp.home), "--name", name, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        # Leave no job processes behind, whatever the test did.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def shared_dir(path: Path) -> Path:
    """A directory jobs may use as their ``cwd`` and write into, as a cluster's shared scratch
    directory is: jobs run as an unprivileged user, and pytest makes its directories private."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def job_status(c: httpx.Client, job_id: str) -> str:
    return str(c.get(f"/v1/jobs/{job_id}").json()["status"])


def wait_status(c: httpx.Client, job_id: str, statuses: set[str], timeout: float = 30.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    result: dict[str, Any] = wait_for(check, timeout, 0.05, f"job {job_id} to reach {statuses}")
    return result


@contextlib.contextmanager
def platform(
    tmp: Path,
    agents: int = 1,
    agent_args: tuple[str, ...] = (),
    agent_env: Mapping[str, str | None] | None = None,
    **overrides: Any,
) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    cp = ControlPlane(tmp / "home", **overrides).start()
    started = [Agent(cp, f"agent-{i}", *agent_args, extra_env=agent_env) for i in range(1, agents + 1)]
    try:
        with cp.client() as c:
            wait_for(
                lambda: sum(w["status"] == "ALIVE" for w in c.get("/v1/workers").json()["workers"]) >= agents,
                30,
                0.05,
                "agents to register",
            )
        yield cp, started
    finally:
        for a in started:
            a.stop()
        cp.stop()


class ServerProcess:
    """A `yard server` control-plane replica in its own process (so a test can kill -9 it).

    Configured only through TRAINYARD_* environment variables, as an operator would."""

    def __init__(self, home: Path, env: dict[str, str], name: str = "server") -> None:
        self.home = home
        self.port = free_port()
        self.grpc_port = free_port()
        self.log = home / f"{name}.log"
        home.mkdir(parents=True, exist_ok=True)
        full = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TRAINYARD_HOME": str(home),
            "TRAINYARD_PORT": str(self.port),
            "TRAINYARD_GRPC_PORT": str(self.grpc_port),
            **env,
        }
        self._env = full
        self._spawn()

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*YARD, "server"], stdout=out, stderr=subprocess.STDOUT, env=self._env, start_new_session=True
            )

    def restart(self) -> ServerProcess:
        """Start it again on the same ports and home (after ``kill``), as a supervisor would."""
        if self.proc.poll() is None:
            raise AssertionError("restart() needs the server to be down first")
        self._spawn()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"yard server exited {self.proc.returncode}:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, 0.1, f"yard server on {self.port}")
        return self

    def is_leader(self) -> bool:
        try:
            return bool(httpx.get(f"{self.url}/healthz", timeout=2).json()["leader"])
        except httpx.HTTPError:
            return False

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")
