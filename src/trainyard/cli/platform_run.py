"""`yard up` and `yard server` without Typer: what they do, their checks, and `yard up`'s processes.

``trainyard.cli.platform`` declares the commands' options for Typer and calls :func:`up` and
:func:`server`; their plain command lines (``trainyard.cli.plain``), such as the replicas `yard up`
starts, run them without importing Typer, whose parsing and app were 2 MB of the control plane
(bench/footprint.py). The server, the local services and the event loop helpers are imported only when
a command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from trainyard.cli import plain
from trainyard.cli.home import database_errors, home_dir, settings_for, setup_logging

if TYPE_CHECKING:
    from trainyard.server.settings import Settings


def up(
    home: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    grpc_port: int = 50051,
    workers: int = 1,
    heartbeat_interval: float | None = None,
    cancel_grace: float | None = None,
    worker_cpus: float | None = None,
    worker_memory: str | None = None,
    worker_gpus: int | None = None,
    worker_gpu_type: str | None = None,
    services: bool = False,
    replicas: int = 1,
    share_cwd: bool = True,
    allow_cwd: list[Path] | None = None,
    verbose: bool = False,
) -> None:
    """Run the whole platform: control plane plus local worker agents, each its own process."""
    setup_logging(verbose)
    h = home_dir(home)
    _check_replica_ports(host, port, grpc_port, replicas, services)
    stack = contextlib.ExitStack()
    if services:
        # The services take free ports, but never the ones the replicas will bind.
        reserved = {q for i in range(replicas) for q in (port + i, grpc_port + i)}
        _start_services(stack, h, reserved)
    settings = settings_for(
        h,
        host=host,
        port=port,
        grpc_port=grpc_port,
        grpc_host=host,
        heartbeat_interval=heartbeat_interval,
        cancel_grace=cancel_grace,
    )
    worker_args = _local_worker_args(
        worker_cpus, worker_memory, worker_gpus, worker_gpu_type, share_cwd, allow_cwd or []
    )
    from trainyard import aio

    with stack, database_errors():
        _migrate_apart(settings)
        aio.run(_up(settings, h, workers, worker_args, replicas))


def server(
    home: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    grpc_port: int | None = None,
    verbose: bool = False,
) -> None:
    """Run only the control plane (REST, worker gRPC, scheduler, reconciler, outbox relay)."""
    from trainyard.server.run import main as serve_main

    setup_logging(verbose)
    settings = settings_for(home_dir(home), host=host, port=port, grpc_port=grpc_port)
    with database_errors():
        _migrate_apart(settings)
        serve_main(settings)


def _migrate_apart(settings: Settings) -> None:
    """Migrate a schema that is behind in a child `yard admin migrate`, so that the control plane,
    which stays up, never imports Alembic (with Mako and Pygments, 10 MB): its own start-up check then
    finds the schema up to date. Costs a second or so on the first start of a new database."""
    from trainyard.store.db import create_engine
    from trainyard.store.migrate import current_revisions, head_revisions

    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            if current_revisions(conn) == head_revisions():
                return
    finally:
        engine.dispose()
    argv = [sys.executable, "-m", "trainyard", "admin", "migrate", "--home", str(settings.home)]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False)  # its errors go to stderr
    if done.returncode != 0:
        raise SystemExit(done.returncode)


# -- `yard up`'s checks and arguments ------------------------------------------------------------


def _check_replica_ports(host: str, port: int, grpc_port: int, replicas: int, services: bool) -> None:
    """Replicas need the services, distinct REST and gRPC port ranges, and every port free."""
    if replicas > 1 and not services:
        _fail("--replicas needs --services (replicas share PostgreSQL, Redis and Kafka)", 2)
    if set(range(port, port + replicas)) & set(range(grpc_port, grpc_port + replicas)):
        _fail(f"replicas take REST ports {port}.. and gRPC ports {grpc_port}..; they overlap", 2)
    for i in range(replicas):
        for p_, what in ((port + i, "REST"), (grpc_port + i, "worker gRPC")):
            if not _port_free(host, p_):
                _fail(f"port {p_} on {host} ({what}) is in use; pick another with --port/--grpc-port", 1)


def _start_services(stack: contextlib.ExitStack, home: Path, reserved: set[int]) -> None:
    """`--services`: start the local ones (stopped when `stack` closes) and export their settings."""
    from trainyard.cli.services import LocalServices, ServiceError

    try:
        local = stack.enter_context(LocalServices(home, reserved=reserved).start())
    except ServiceError as e:
        _fail(str(e), 1)
    os.environ.update(local.env)  # for this process's Settings and every child process
    for line in local.started:
        print(f"started {line}", flush=True)


def _local_worker_args(
    cpus: float | None,
    memory: str | None,
    gpus: int | None,
    gpu_type: str | None,
    share_cwd: bool,
    allow_cwd: list[Path],
) -> list[str]:
    """The `yard worker` options every local worker agent gets."""
    worker_args: list[str] = []
    if cpus is not None:
        worker_args += ["--cpus", str(cpus)]
    if memory is not None:
        worker_args += ["--memory", memory]
    if gpus is not None:
        worker_args += ["--gpus", str(gpus)]
    if gpu_type is not None:
        worker_args += ["--gpu-type", gpu_type]
    roots = list(allow_cwd)
    if share_cwd and _shareable(Path.cwd()):
        # A laptop's convention: `yard submit` from the project runs the job there (Slurm's).
        roots.append(Path.cwd())
    for root in roots:
        worker_args += ["--allow-cwd", str(root.resolve())]
    return worker_args


def _shareable(path: Path) -> bool:
    """A directory `yard up` may share with jobs by default: not /, a system directory or a home."""
    from trainyard.model.spec import cwd_problem

    resolved = str(path.resolve())
    return cwd_problem(resolved) is None and resolved != str(Path.home().resolve())


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# -- `yard up`'s processes ---------------------------------------------------------------------


async def _up(
    settings: Settings, home: Path, n_workers: int, worker_args: list[str], replicas: int = 1
) -> None:
    """Serve in this process, start replicas 2..N and the workers, and stop them all in order."""
    from trainyard.server.run import serve

    stop = asyncio.Event()  # Ctrl-C or SIGTERM
    server_stop = asyncio.Event()  # set only once the workers are gone
    hold = asyncio.Event()  # no new placements while the workers drain
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server_task = asyncio.create_task(serve(settings, server_stop, ready, hold))
    ready_wait = asyncio.create_task(ready.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({server_task, ready_wait, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if server_task.done() or stop.is_set():
        ready_wait.cancel()
        server_stop.set()
        await server_task
        return
    servers, grpc_addrs = _start_replicas(settings, home, replicas)
    await _wait_replicas(settings, home, servers)
    if replicas > 1:
        # Each replica wrote its own URL there as it started (the last one won): the CLI and SDK
        # read a comma list and fail over between the replicas.
        from trainyard.server.settings import write_private

        urls = [_replica_url(settings, i) for i in range(replicas)]
        write_private(home / "url", ",".join(urls) + "\n")
    procs = _start_workers(home, n_workers, grpc_addrs, worker_args)
    print(_banner(settings, home, n_workers, replicas), flush=True)
    watcher = asyncio.create_task(_watch_workers(procs, stop))
    await stop.wait()
    watcher.cancel()
    hold.set()
    print(
        "Stopping: workers first (running jobs get SIGTERM and a grace period), then the control plane.",
        flush=True,
    )
    await _stop_workers(procs, settings.cancel_grace + 15)
    await _stop_replicas(servers)
    server_stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await server_task
    print("Stopped.", flush=True)


def _start_replicas(
    settings: Settings, home: Path, replicas: int
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Replicas 2..N: `yard server` processes on the next ports, sharing home (tokens) and the services.

    Returns them and every replica's gRPC address, this process's first.
    """
    servers: list[subprocess.Popen[bytes]] = []
    grpc_addrs = [f"{settings.grpc_host}:{settings.grpc_port}"]
    for i in range(1, replicas):
        env = {
            **os.environ,
            "TRAINYARD_HOME": str(home),
            "TRAINYARD_HOST": settings.host,
            "TRAINYARD_PORT": str(settings.port + i),
            "TRAINYARD_GRPC_HOST": settings.grpc_host,
            "TRAINYARD_GRPC_PORT": str(settings.grpc_port + i),
            "TRAINYARD_PUBLIC_URL": _replica_url(settings, i),
            "TRAINYARD_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
            "TRAINYARD_CANCEL_GRACE": str(settings.cancel_grace),
        }
        log_path = home / "logs" / f"server-{i + 1}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            servers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "trainyard", "server"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        grpc_addrs.append(f"{settings.grpc_host}:{settings.grpc_port + i}")
    return servers, grpc_addrs


def _replica_url(settings: Settings, i: int) -> str:
    """Replica ``i``'s URL (0: this process's, its public URL if set; the others serve on the ports
    after this one's)."""
    return settings.base_url if i == 0 else f"http://{settings.host}:{settings.port + i}"


async def _wait_replicas(settings: Settings, home: Path, servers: list[subprocess.Popen[bytes]]) -> None:
    for i, proc in enumerate(servers, start=2):
        url = f"{_replica_url(settings, i - 1)}/healthz"
        if not await asyncio.to_thread(_wait_healthy, url, proc, 60.0):
            print(f"warning: replica {i} did not come up; see {home}/logs/server-{i}.log", file=sys.stderr)


def _start_workers(
    home: Path, n_workers: int, grpc_addrs: list[str], worker_args: list[str]
) -> list[subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(1, n_workers + 1):
        name = f"local-{i}"
        cmd = [
            sys.executable,
            "-m",
            "trainyard",
            "worker",
            "--server",
            ",".join(grpc_addrs),
            "--home",
            str(home),
            "--name",
            name,
            *worker_args,
        ]
        log_path = home / "logs" / f"worker-{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            # Its own process group, so Ctrl-C reaches the workers through us, in order.
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def _banner(settings: Settings, home: Path, n_workers: int, replicas: int) -> str:
    token_path = home / "token"
    extra = "".join(
        f"  replica {i + 1}  {_replica_url(settings, i)} (log: logs/server-{i + 1}.log)\n"
        for i in range(1, replicas)
    )
    return (
        f"Trainyard is up.\n"
        f"  web UI     {settings.base_url}/?token={token_path.read_text().strip()}\n"
        f"  REST API   {settings.base_url}  (OpenAPI: {settings.base_url}/openapi.json)\n"
        f"{extra}"
        f"  workers    {n_workers} local agent(s), gRPC {settings.grpc_host}:{settings.grpc_port}, "
        f"logs in {home / 'logs'}\n"
        f"  admin token in {token_path} (the CLI reads it; export TRAINYARD_HOME={home} elsewhere)\n"
        f"Try:\n"
        f"  yard submit --cpu 1 --memory 512Mi -- python examples/train_tiny.py --epochs 5\n"
        f"  yard logs -f <job id>\n"
        f"Press Ctrl-C to stop."
    )


async def _stop_workers(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every worker, then SIGKILL those still running after `grace` seconds."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()


async def _stop_replicas(servers: list[subprocess.Popen[bytes]]) -> None:
    for proc in servers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in servers:
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        time.sleep(0.1)
    return False


async def _watch_workers(procs: list[subprocess.Popen[bytes]], stop: asyncio.Event) -> None:
    reported: set[int] = set()
    while not stop.is_set():
        for proc in procs:
            if proc.pid not in reported and proc.poll() is not None:
                reported.add(proc.pid)
                print(
                    f"warning: worker agent pid {proc.pid} exited with {proc.returncode}",
                    file=sys.stderr,
                    flush=True,
                )
        await asyncio.sleep(0.5)


# -- plain command lines -----------------------------------------------------------------------

_PLAIN_UP = {
    "--home": plain.Flag("home", plain.path),
    "--host": plain.Flag("host", plain.text),
    "--port": plain.Flag("port", plain.integer),
    "--grpc-port": plain.Flag("grpc_port", plain.integer),
    "--workers": plain.Flag("workers", plain.integer_in(0, 64)),
    "--heartbeat-interval": plain.Flag("heartbeat_interval", plain.number),
    "--cancel-grace": plain.Flag("cancel_grace", plain.number),
    "--worker-cpus": plain.Flag("worker_cpus", plain.number),
    "--worker-memory": plain.Flag("worker_memory", plain.text),
    "--worker-gpus": plain.Flag("worker_gpus", plain.integer),
    "--worker-gpu-type": plain.Flag("worker_gpu_type", plain.text),
    "--replicas": plain.Flag("replicas", plain.integer_in(1, 8)),
    "--allow-cwd": plain.Flag("allow_cwd", plain.path, repeatable=True),
}
_SWITCHES_UP = {
    "--services": ("services", True),
    "--share-cwd": ("share_cwd", True),
    "--no-share-cwd": ("share_cwd", False),
    "--verbose": ("verbose", True),
    "-v": ("verbose", True),
}
_PLAIN_SERVER = {
    "--home": plain.Flag("home", plain.path),
    "--host": plain.Flag("host", plain.text),
    "--port": plain.Flag("port", plain.integer),
    "--grpc-port": plain.Flag("grpc_port", plain.integer),
}
_SWITCHES_SERVER = {"--verbose": ("verbose", True), "-v": ("verbose", True)}
PLAIN = {"up": (_PLAIN_UP, _SWITCHES_UP), "server": (_PLAIN_SERVER, _SWITCHES_SERVER)}
"""The plain options of `yard up` and `yard server` (neither has one that an environment variable sets)."""


def plain_arguments(
    command: str, argv: Sequence[str], environ: Mapping[str, str]
) -> dict[str, object] | None:
    """`yard COMMAND ARGV`'s parameters, exactly as Typer would parse them, when ARGV has only plain
    options; else None, and Typer parses the command line (and answers --help and every error)."""
    if "_YARD_COMPLETE" in environ:
        return None  # shell completion, which only Typer answers
    try:
        return plain.parse(argv, *PLAIN[command])
    except plain.NotPlain:
        return None


def main(command: str, argv: Sequence[str]) -> None:
    """`yard up ARGV` or `yard server ARGV` on the plain path; Typer's app when ARGV needs it."""
    given = plain_arguments(command, argv, os.environ)
    if given is None:
        from trainyard.cli.main import typer_main

        typer_main([command, *argv])
        return
    run = up if command == "up" else server
    plain.finish(lambda: run(**given))  # type: ignore[arg-type]


def _fail(message: str, code: int) -> NoReturn:
    # SystemExit, not typer.Exit: this module runs without Typer, and Typer passes it on unchanged.
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
