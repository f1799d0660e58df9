"""Platform commands: `yard up` (everything on embedded defaults), `yard server`, `yard worker`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from trainyard.model.quantity import parse_memory

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state directory (default $TRAINYARD_HOME or ./.trainyard)")
]


def _home(home: Path | None) -> Path:
    return (home or Path(os.environ.get("TRAINYARD_HOME", ".trainyard"))).resolve()


def _settings(home: Path, **overrides: object) -> object:
    from trainyard.server.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(home=home, **values)  # type: ignore[arg-type]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def register(app: typer.Typer) -> None:
    _register_admin()

    @app.command()
    def up(
        home: HomeOpt = None,
        host: Annotated[str, typer.Option(help="address to serve REST on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="REST port")] = 8080,
        grpc_port: Annotated[int, typer.Option("--grpc-port", help="worker gRPC port")] = 50051,
        workers: Annotated[int, typer.Option(help="local worker agents to start", min=0, max=64)] = 1,
        heartbeat_interval: Annotated[
            float | None, typer.Option(help="seconds between worker heartbeats")
        ] = None,
        cancel_grace: Annotated[float | None, typer.Option(help="seconds from SIGTERM to SIGKILL")] = None,
        worker_cpus: Annotated[float | None, typer.Option(help="declared CPUs per local worker")] = None,
        worker_memory: Annotated[
            str | None, typer.Option(help="declared memory per local worker, e.g. 8Gi")
        ] = None,
        worker_gpus: Annotated[int | None, typer.Option(help="declared GPUs per local worker")] = None,
        worker_gpu_type: Annotated[
            str | None, typer.Option(help="declared GPU type of local workers")
        ] = None,
        services: Annotated[
            bool,
            typer.Option(
                "--services",
                help="run on PostgreSQL, Redis, S3 and Kafka (starting local ones that are not configured)",
            ),
        ] = False,
        replicas: Annotated[
            int, typer.Option(help="control-plane replicas (more than 1 needs --services)", min=1, max=8)
        ] = 1,
        share_cwd: Annotated[
            bool,
            typer.Option(
                "--share-cwd/--no-share-cwd",
                help="let jobs run in their submit directory when it is inside the directory `yard up` "
                "started in (jobs read it as an unprivileged user; the home stays hidden)",
            ),
        ] = True,
        allow_cwd: Annotated[
            list[Path] | None,
            typer.Option(help="another shared root for jobs' submit directories (repeatable)"),
        ] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Run the whole platform: control plane plus local worker agents, each its own process."""
        _logging(verbose)
        h = _home(home)
        if replicas > 1 and not services:
            typer.echo(
                "error: --replicas needs --services (replicas share PostgreSQL, Redis and Kafka)", err=True
            )
            raise typer.Exit(2)
        if set(range(port, port + replicas)) & set(range(grpc_port, grpc_port + replicas)):
            typer.echo(
                f"error: replicas take REST ports {port}.. and gRPC ports {grpc_port}..; they overlap",
                err=True,
            )
            raise typer.Exit(2)
        for i in range(replicas):
            for p_, what in ((port + i, "REST"), (grpc_port + i, "worker gRPC")):
                if not _port_free(host, p_):
                    typer.echo(
                        f"error: port {p_} on {host} ({what}) is in use; "
                        "pick another with --port/--grpc-port",
                        err=True,
                    )
                    raise typer.Exit(1)
        stack = contextlib.ExitStack()
        if services:
            from trainyard.cli.services import LocalServices, ServiceError

            try:
                # The services take free ports, but never the ones the replicas will bind.
                reserved = {q for i in range(replicas) for q in (port + i, grpc_port + i)}
                local = stack.enter_context(LocalServices(h, reserved=reserved).start())
            except ServiceError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(1) from None
            os.environ.update(local.env)  # for this process's Settings and every child process
            for line in local.started:
                typer.echo(f"started {line}")
        settings = _settings(
            h,
            host=host,
            port=port,
            grpc_port=grpc_port,
            grpc_host=host,
            heartbeat_interval=heartbeat_interval,
            cancel_grace=cancel_grace,
        )
        worker_args: list[str] = []
        if worker_cpus is not None:
            worker_args += ["--cpus", str(worker_cpus)]
        if worker_memory is not None:
            worker_args += ["--memory", worker_memory]
        if worker_gpus is not None:
            worker_args += ["--gpus", str(worker_gpus)]
        if worker_gpu_type is not None:
            worker_args += ["--gpu-type", worker_gpu_type]
        roots = list(allow_cwd or [])
        if share_cwd and _shareable(Path.cwd()):
            # A laptop's convention: `yard submit` from the project runs the job there (Slurm's).
            roots.append(Path.cwd())
        for root in roots:
            worker_args += ["--allow-cwd", str(root.resolve())]
        from trainyard import aio

        with stack, _database_errors():
            aio.run(_up(settings, h, workers, worker_args, replicas))

    @app.command()
    def server(
        home: HomeOpt = None,
        host: Annotated[str | None, typer.Option(help="REST address")] = None,
        port: Annotated[int | None, typer.Option(help="REST port")] = None,
        grpc_port: Annotated[int | None, typer.Option("--grpc-port")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Run only the control plane (REST, worker gRPC, scheduler, reconciler, outbox relay)."""
        from trainyard.server.run import main as serve_main

        _logging(verbose)
        with _database_errors():
            serve_main(_settings(_home(home), host=host, port=port, grpc_port=grpc_port))  # type: ignore[arg-type]

    @app.command()
    def worker(
        server: Annotated[
            str,
            typer.Option(
                envvar="TRAINYARD_SERVER",
                help="control plane gRPC address; several replicas as a comma list of IP:port",
            ),
        ] = ("127.0.0.1:50051"),
        home: HomeOpt = None,
        token_file: Annotated[Path | None, typer.Option(help="file with the worker bootstrap token")] = None,
        name: Annotated[str | None, typer.Option(help="stable worker name (default: hostname)")] = None,
        work_dir: Annotated[
            Path | None, typer.Option(help="local state (default: HOME/workers/NAME)")
        ] = None,
        data_cache: Annotated[
            Path | None,
            typer.Option(
                help="datasets kept across jobs, reported for placement (default: WORK_DIR/data-cache)"
            ),
        ] = None,
        cpus: Annotated[float | None, typer.Option(help="declared CPUs (default: detected)")] = None,
        memory: Annotated[
            str | None, typer.Option(help="declared memory, e.g. 32Gi (default: detected)")
        ] = None,
        gpus: Annotated[int | None, typer.Option(help="declared GPUs (default: NVML)")] = None,
        gpu_type: Annotated[str | None, typer.Option(help="GPU type label, e.g. a100")] = None,
        pool: Annotated[str, typer.Option(help="worker pool label")] = "default",
        region: Annotated[str | None, typer.Option(help="region label, e.g. us-east-1")] = None,
        label: Annotated[list[str] | None, typer.Option(help="extra label K=V (repeatable)")] = None,
        spot: Annotated[
            bool, typer.Option("--spot", help="spot capacity: only preemptible jobs are placed here")
        ] = False,
        spot_notice_url: Annotated[
            str | None,
            typer.Option(
                envvar="TRAINYARD_SPOT_NOTICE_URL",
                help="interruption-notice endpoint to watch, e.g. "
                "http://169.254.169.254/latest/meta-data/spot/instance-action (AWS) or "
                "http://metadata.google.internal/computeMetadata/v1/instance/preempted (GCP)",
            ),
        ] = None,
        spot_notice_style: Annotated[
            str, typer.Option(envvar="TRAINYARD_SPOT_NOTICE_STYLE", help="aws, gcp or auto (from the URL)")
        ] = "auto",
        spot_poll: Annotated[
            float, typer.Option(envvar="TRAINYARD_SPOT_POLL", help="seconds between notice checks")
        ] = 2.0,
        preempt_grace: Annotated[
            float,
            typer.Option(
                envvar="TRAINYARD_PREEMPT_GRACE",
                help="seconds a preempted job has to checkpoint (SIGTERM to SIGKILL)",
            ),
        ] = 30.0,
        max_log_bytes: Annotated[
            str,
            typer.Option(
                envvar="TRAINYARD_MAX_LOG_BYTES",
                help="per-attempt log cap, e.g. 1Gi; past it output is dropped",
            ),
        ] = "1Gi",
        isolation: Annotated[
            str,
            typer.Option(
                envvar="TRAINYARD_ISOLATION",
                help="required (refuse jobs that cannot be sandboxed and limited), best-effort (apply "
                "what the node offers, warn about the rest) or off (plain process groups)",
            ),
        ] = "best-effort",
        job_network: Annotated[
            bool,
            typer.Option(
                "--job-network/--no-job-network", help="give jobs a network (off: loopback only, sandboxed)"
            ),
        ] = True,
        job_pids_limit: Annotated[
            int, typer.Option(help="processes and threads per job (its cgroup's pids limit; 0: none)", min=0)
        ] = 4096,
        docker_host: Annotated[
            str | None,
            typer.Option(
                envvar="TRAINYARD_DOCKER_HOST",
                help="Docker Engine API for jobs with an image, e.g. unix:///var/run/docker.sock or "
                "Podman's socket (default: none; such jobs fail to start here)",
            ),
        ] = None,
        docker_ulimit: Annotated[
            list[str] | None,
            typer.Option(
                help="ulimit for every container, NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable)"
            ),
        ] = None,
        tls_ca: Annotated[
            Path | None,
            typer.Option(
                envvar="TRAINYARD_TLS_CA",
                exists=True,
                dir_okay=False,
                help="CA (PEM) that signed the control plane's gRPC certificate: connect with TLS",
            ),
        ] = None,
        tls_cert: Annotated[
            Path | None,
            typer.Option(
                envvar="TRAINYARD_TLS_CERT",
                exists=True,
                dir_okay=False,
                help="this worker's client certificate (PEM), for a control plane that requires mTLS",
            ),
        ] = None,
        tls_key: Annotated[
            Path | None,
            typer.Option(
                envvar="TRAINYARD_TLS_KEY", exists=True, dir_okay=False, help="the key (PEM) of --tls-cert"
            ),
        ] = None,
        allow_cwd: Annotated[
            list[Path] | None,
            typer.Option(
                envvar="TRAINYARD_ALLOW_CWD",
                help="a shared root (e.g. /data, /home) that jobs' submit directories (cwd) may be in "
                "(repeatable; default: none, jobs run in their own directory)",
            ),
        ] = None,
        run_as: Annotated[
            str | None,
            typer.Option(
                envvar="TRAINYARD_RUN_AS",
                help="USER[:GROUP] sandboxed jobs run as when the agent is root (default: nobody); "
                "never root",
            ),
        ] = None,
        workdir_unpacked_limit: Annotated[
            str,
            typer.Option(
                envvar="TRAINYARD_WORKDIR_UNPACKED_LIMIT",
                help="bytes a workdir bundle may unpack to, e.g. 10Gi",
            ),
        ] = "10Gi",
        workdir_file_limit: Annotated[
            int,
            typer.Option(
                envvar="TRAINYARD_WORKDIR_FILE_LIMIT", help="files a workdir bundle may hold", min=1
            ),
        ] = 100_000,
        verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    ) -> None:
        """Run a worker agent: leases jobs from the control plane and runs them as local processes
        (or, with --docker-host, jobs that name an image as containers)."""
        from trainyard.worker.agent import main as agent_main
        from trainyard.worker.config import WorkerConfig, grpc_target
        from trainyard.worker.isolation import IsolationMode

        _logging(verbose)
        h = _home(home)
        try:
            grpc_target(server)
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        token = os.environ.get("TRAINYARD_WORKER_TOKEN")
        if not token:
            path = token_file or h / "worker-token"
            try:
                token = path.read_text().strip()
            except OSError as e:
                typer.echo(
                    f"error: no worker token: set TRAINYARD_WORKER_TOKEN or --token-file ({e})", err=True
                )
                raise typer.Exit(1) from None
        labels = {}
        for item in label or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                typer.echo(f"error: --label {item!r} must be K=V", err=True)
                raise typer.Exit(2)
            labels[k] = v
        if spot:
            labels["spot"] = "true"  # the scheduler reads it: preemptible jobs only
        try:
            mem = parse_memory(memory) if memory is not None else None
        except ValueError as e:
            typer.echo(f"error: --memory: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            log_cap = parse_memory(max_log_bytes)
        except ValueError as e:
            typer.echo(f"error: --max-log-bytes: {e}", err=True)
            raise typer.Exit(2) from None
        if spot_notice_style not in ("aws", "gcp", "auto"):
            typer.echo("error: --spot-notice-style must be aws, gcp or auto", err=True)
            raise typer.Exit(2)
        try:
            mode = IsolationMode(isolation)
        except ValueError:
            typer.echo("error: --isolation must be required, best-effort or off", err=True)
            raise typer.Exit(2) from None
        try:
            unpacked_cap = parse_memory(workdir_unpacked_limit)
        except ValueError as e:
            typer.echo(f"error: --workdir-unpacked-limit: {e}", err=True)
            raise typer.Exit(2) from None
        if run_as is not None:
            from trainyard.worker.jobuser import BadRunAs, parse_run_as

            try:
                parse_run_as(run_as)
            except BadRunAs as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None
        shared: list[Path] = []
        for root in allow_cwd or []:
            if not root.is_absolute() or str(root) == "/":
                typer.echo(f"error: --allow-cwd {root}: must be an absolute directory other than /", err=True)
                raise typer.Exit(2)
            shared.append(Path(os.path.normpath(root)))
        for u in docker_ulimit or []:
            from trainyard.worker.executors.docker import parse_ulimit  # the docker SDK: only if used

            try:
                parse_ulimit(u)
            except ValueError as e:
                typer.echo(f"error: --docker-ulimit: {e}", err=True)
                raise typer.Exit(2) from None
        if (tls_cert is None) != (tls_key is None):
            typer.echo("error: a client certificate needs both --tls-cert and --tls-key", err=True)
            raise typer.Exit(2)
        wname = name or socket.gethostname()
        cfg = WorkerConfig(
            server=server,
            token=token,
            name=wname,
            work_dir=(work_dir or h / "workers" / wname).resolve(),
            data_cache_dir=data_cache.resolve() if data_cache else None,
            cpus=cpus,
            memory=mem,
            gpus=gpus,
            gpu_type=gpu_type,
            pool=pool,
            region=region,
            labels=labels,
            max_log_bytes=log_cap,
            preempt_grace_s=preempt_grace,
            spot_notice_url=spot_notice_url or None,
            spot_notice_style=spot_notice_style,
            spot_poll_s=spot_poll,
            isolation=mode,
            job_network=job_network,
            job_pids_limit=job_pids_limit,
            # The platform home holds the database, tokens and credentials: never a job's business.
            protected_dirs=(h.resolve(),),
            docker_host=docker_host or None,
            docker_ulimits=tuple(docker_ulimit or ()),
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            allow_cwd=tuple(shared),
            run_as=run_as,
            workdir_unpacked_limit=unpacked_cap,
            workdir_file_limit=workdir_file_limit,
        )
        agent_main(cfg)


def _shareable(path: Path) -> bool:
    """A directory `yard up` may share with jobs by default: not /, a system directory or a home."""
    from trainyard.model.spec import cwd_problem

    resolved = str(path.resolve())
    return cwd_problem(resolved) is None and resolved != str(Path.home().resolve())


def _register_admin() -> None:
    from trainyard.cli.main import admin_app

    @admin_app.command("replay")
    def replay(
        home: HomeOpt = None,
        timeout: Annotated[float, typer.Option(help="seconds to read the log to its end")] = 120.0,
    ) -> None:
        """Read the event log (Kafka) from the beginning into a fresh store and compare every job's
        history with the database's: exit 0 when they are equal (the log is complete), 1 otherwise."""
        from trainyard.bus.base import BusUnavailable
        from trainyard.bus.replay import replay as replay_log
        from trainyard.server.settings import Settings
        from trainyard.store.sql import SqlStore

        settings = Settings(home=_home(home))
        if not settings.kafka_bootstrap:
            typer.echo("error: set TRAINYARD_KAFKA_BOOTSTRAP: the event log lives in Kafka", err=True)
            raise typer.Exit(2)
        with _database_errors():
            store = SqlStore(settings.db_url)
            try:
                report = replay_log(settings.kafka_bootstrap, store, timeout)
            except BusUnavailable as e:
                typer.echo(f"error: cannot read the event log: {e}", err=True)
                raise typer.Exit(1) from None
            finally:
                store.close()
        typer.echo(report.summary())
        raise typer.Exit(0 if report.ok else 1)

    @admin_app.command("migrate")
    def migrate(home: HomeOpt = None) -> None:
        """Apply database migrations (TRAINYARD_DATABASE_URL, else SQLite in home); safe to repeat."""
        import sqlalchemy as sa

        from trainyard.server.settings import Settings
        from trainyard.store.sql import SqlStore

        settings = Settings(home=_home(home))
        settings.home.mkdir(parents=True, exist_ok=True)
        store = SqlStore(settings.db_url)
        try:
            store.migrate()
        except sa.exc.OperationalError as e:
            typer.echo(f"error: cannot reach the database: {e.orig}", err=True)
            raise typer.Exit(1) from None
        finally:
            store.close()
        typer.echo(f"database at {store.engine.url.render_as_string(hide_password=True)} is up to date")


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """A database that cannot be reached or named is a clear one-line error, not a traceback."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.ArgumentError as e:
        typer.echo(f"error: TRAINYARD_DATABASE_URL is not a database URL: {e}", err=True)
        raise typer.Exit(1) from None
    except sa.exc.OperationalError as e:
        typer.echo(f"error: cannot reach the database: {e.orig}", err=True)
        raise typer.Exit(1) from None


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def _up(
    settings: object, home: Path, n_workers: int, worker_args: list[str], replicas: int = 1
) -> None:
    from trainyard.server.run import serve
    from trainyard.server.settings import Settings

    assert isinstance(settings, Settings)
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
    procs: list[subprocess.Popen[bytes]] = []
    # Replicas 2..N: `yard server` processes on the next ports, sharing home (tokens) and the services.
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
            "TRAINYARD_PUBLIC_URL": f"http://{settings.host}:{settings.port + i}",
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
    for i, proc in enumerate(servers, start=2):
        url = f"http://{settings.host}:{settings.port + i - 1}/healthz"
        if not await asyncio.to_thread(_wait_healthy, url, proc, 60.0):
            print(f"warning: replica {i} did not come up; see {home}/logs/server-{i}.log", file=sys.stderr)
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
    token_path = home / "token"
    extra = "".join(
        f"  replica {i + 1}  http://{settings.host}:{settings.port + i} (log: logs/server-{i + 1}.log)\n"
        for i in range(1, replicas)
    )
    print(
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
        f"Press Ctrl-C to stop.",
        flush=True,
    )
    watcher = asyncio.create_task(_watch_workers(procs, stop))
    await stop.wait()
    watcher.cancel()
    hold.set()
    print(
        "Stopping: workers first (running jobs get SIGTERM and a grace period), then the control plane.",
        flush=True,
    )
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.cancel_grace + 15
    for proc in procs:
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
    for proc in servers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in servers:
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
    server_stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await server_task
    print("Stopped.", flush=True)


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
