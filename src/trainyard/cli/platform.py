"""Platform commands: `yard up` (everything on embedded defaults) and `yard server`.

Their options, declared for Typer; what they do is in ``trainyard.cli.platform_run``, which runs
without Typer. `yard worker` is in ``trainyard.cli.worker``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli import platform_run
from trainyard.cli.app import app
from trainyard.cli.local import HomeOpt
from trainyard.cli.platform_run import _local_worker_args, _migrate_apart


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
    worker_gpu_type: Annotated[str | None, typer.Option(help="declared GPU type of local workers")] = None,
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
    platform_run.up(**locals())


@app.command()
def server(
    home: HomeOpt = None,
    host: Annotated[str | None, typer.Option(help="REST address")] = None,
    port: Annotated[int | None, typer.Option(help="REST port")] = None,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run only the control plane (REST, worker gRPC, scheduler, reconciler, outbox relay)."""
    platform_run.server(**locals())


__all__ = ["_local_worker_args", "_migrate_apart", "server", "up"]
