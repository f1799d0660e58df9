"""`yard worker` without Typer: its options (:class:`WorkerOptions`), their checks, the agent's
configuration (:func:`worker_config`) and :func:`run`, which starts the agent or the simulated fleet.

``trainyard.cli.worker`` declares the command's options for Typer and hands them here. The agents that
`yard up` starts, and a `yard worker` given only a few common options, skip Typer entirely
(:func:`plain_options`, ``trainyard.cli.plain``).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from trainyard.cli import plain
from trainyard.cli.home import home_dir, setup_logging
from trainyard.model.quantity import parse_memory

if TYPE_CHECKING:
    from trainyard.worker.config import WorkerConfig
    from trainyard.worker.fleet import FleetSpec
    from trainyard.worker.isolation import IsolationMode


@dataclass(frozen=True)
class WorkerOptions:
    """`yard worker`'s options as given (after Typer's own checks), before they are validated; the
    defaults are the command's."""

    server: str = "127.0.0.1:50051"
    home: Path | None = None
    token_file: Path | None = None
    name: str | None = None
    work_dir: Path | None = None
    data_cache: Path | None = None
    cpus: float | None = None
    memory: str | None = None
    gpus: int | None = None
    gpu_type: str | None = None
    pool: str = "default"
    region: str | None = None
    label: list[str] | None = None
    spot: bool = False
    spot_notice_url: str | None = None
    spot_notice_style: str = "auto"
    spot_poll: float = 2.0
    preempt_grace: float = 30.0
    max_log_bytes: str = "1Gi"
    isolation: str = "best-effort"
    job_network: bool = True
    job_pids_limit: int = 4096
    docker_host: str | None = None
    docker_ulimit: list[str] | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_cwd: list[Path] | None = None
    run_as: str | None = None
    workdir_unpacked_limit: str = "10Gi"
    workdir_file_limit: int = 100_000
    executor: str = "process"
    agents: int = 1
    sim_shape: list[str] | None = None
    sim_pools: str | None = None
    sim_regions: str | None = None
    sim_spot_fraction: float | None = None
    sim_channels: int = 0
    sim_ramp: float = 0.0
    sim_default: str = ""
    k8s_namespace: str = "trainyard-jobs"
    k8s_node_name: str | None = None
    k8s_default_image: str | None = None
    k8s_kubeconfig: Path | None = None
    k8s_host_network: bool = False
    k8s_work_claim: str | None = None
    k8s_data_cache_claim: str | None = None
    log_shipper: str = "builtin"


def run(options: WorkerOptions, verbose: bool) -> None:
    """Check ``options``, then run the agent (with ``--executor sim``, the simulated fleet) until it stops."""
    setup_logging(verbose)
    _check_executor(options)
    cfg = worker_config(options)
    if options.executor == "sim":
        from trainyard.worker.fleet import main as fleet_main

        fleet_main(fleet_spec(options, cfg))
        return
    from trainyard.worker.agent import main as agent_main

    agent_main(cfg)


# -- validation --------------------------------------------------------------------------------


def worker_config(o: WorkerOptions) -> WorkerConfig:
    """Check the options and build the agent's configuration.

    An invalid option is `error: ...` on stderr and exit status 2; a missing worker token, status 1.
    """
    from trainyard.worker.config import WorkerConfig

    h = home_dir(o.home)
    _check_server(o.server)
    token = _worker_token(o.token_file, h)
    labels = _labels(o.label or [], o.spot)
    mem = _size("--memory", o.memory) if o.memory is not None else None
    log_cap = _size("--max-log-bytes", o.max_log_bytes)
    if o.spot_notice_style not in ("aws", "gcp", "auto"):
        _fail("--spot-notice-style must be aws, gcp or auto")
    mode = _isolation(o.isolation)
    unpacked_cap = _size("--workdir-unpacked-limit", o.workdir_unpacked_limit)
    if o.run_as is not None:
        _check_run_as(o.run_as)
    shared = _shared_roots(o.allow_cwd or [])
    _check_ulimits(o.docker_ulimit or [])
    if (o.tls_cert is None) != (o.tls_key is None):
        _fail("a client certificate needs both --tls-cert and --tls-key")
    wname = o.name or socket.gethostname()
    return WorkerConfig(
        server=o.server,
        token=token,
        name=wname,
        work_dir=(o.work_dir or h / "workers" / wname).resolve(),
        data_cache_dir=o.data_cache.resolve() if o.data_cache else None,
        cpus=o.cpus,
        memory=mem,
        gpus=o.gpus,
        gpu_type=o.gpu_type,
        pool=o.pool,
        region=o.region,
        labels=labels,
        max_log_bytes=log_cap,
        preempt_grace_s=o.preempt_grace,
        spot_notice_url=o.spot_notice_url or None,
        spot_notice_style=o.spot_notice_style,
        spot_poll_s=o.spot_poll,
        isolation=mode,
        job_network=o.job_network,
        job_pids_limit=o.job_pids_limit,
        # The platform home holds the database, tokens and credentials: never a job's business.
        protected_dirs=(h.resolve(),),
        docker_host=o.docker_host or None,
        docker_ulimits=tuple(o.docker_ulimit or ()),
        tls_ca=o.tls_ca,
        tls_cert=o.tls_cert,
        tls_key=o.tls_key,
        allow_cwd=tuple(shared),
        run_as=o.run_as,
        workdir_unpacked_limit=unpacked_cap,
        workdir_file_limit=o.workdir_file_limit,
        executor="kubernetes" if o.executor == "kubernetes" else "process",
        k8s_namespace=o.k8s_namespace,
        k8s_node_name=o.k8s_node_name or None,
        k8s_default_image=o.k8s_default_image or None,
        k8s_kubeconfig=o.k8s_kubeconfig.resolve() if o.k8s_kubeconfig else None,
        k8s_host_network=o.k8s_host_network,
        k8s_work_claim=o.k8s_work_claim or None,
        k8s_data_cache_claim=o.k8s_data_cache_claim or None,
        log_shipper=o.log_shipper,
    )


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _check_executor(o: WorkerOptions) -> None:
    if o.executor not in ("process", "kubernetes", "sim"):
        _fail("--executor must be process, kubernetes or sim")
    _check_kubernetes(o)
    if o.log_shipper not in ("builtin", "external"):
        _fail("--log-shipper must be builtin or external")
    if o.log_shipper == "external" and o.executor != "kubernetes":
        # Fluent Bit reads container logs; a process executor's jobs write into the agent's spool.
        _fail("--log-shipper external needs --executor kubernetes")
    if o.executor == "sim":
        return
    if o.agents != 1:
        _fail("--agents needs --executor sim (only simulated agents share a process)")
    given = [
        flag
        for flag, value in (
            ("--sim-shape", o.sim_shape),
            ("--sim-pools", o.sim_pools),
            ("--sim-regions", o.sim_regions),
            ("--sim-spot-fraction", o.sim_spot_fraction),
            ("--sim-channels", o.sim_channels),
            ("--sim-ramp", o.sim_ramp),
            ("--sim-default", o.sim_default),
        )
        if value
    ]
    if given:
        _fail(f"{given[0]} needs --executor sim")


def _check_kubernetes(o: WorkerOptions) -> None:
    if o.executor != "kubernetes":
        # The node name is not checked: NODE_NAME may be set on any node.
        given = [
            flag
            for flag, value in (
                ("--k8s-namespace", o.k8s_namespace != "trainyard-jobs"),
                ("--k8s-default-image", o.k8s_default_image),
                ("--k8s-kubeconfig", o.k8s_kubeconfig),
                ("--k8s-host-network", o.k8s_host_network),
                ("--k8s-work-claim", o.k8s_work_claim),
                ("--k8s-data-cache-claim", o.k8s_data_cache_claim),
            )
            if value
        ]
        if given:
            _fail(f"{given[0]} needs --executor kubernetes")
        return
    if not o.k8s_node_name:
        _fail("--executor kubernetes needs --k8s-node-name (or NODE_NAME, from the downward API)")
    if len(o.k8s_namespace) > 63 or not _K8S_NAME.fullmatch(o.k8s_namespace):
        _fail(f"--k8s-namespace {o.k8s_namespace!r} is not a Kubernetes namespace name")
    for flag, claim in (
        ("--k8s-work-claim", o.k8s_work_claim),
        ("--k8s-data-cache-claim", o.k8s_data_cache_claim),
    ):
        if claim and (len(claim) > 253 or not _K8S_NAME.fullmatch(claim)):
            _fail(f"{flag} {claim!r} is not a PersistentVolumeClaim name")
    if o.docker_host:
        _fail(
            "--docker-host and --executor kubernetes exclude each other: on Kubernetes, jobs with an "
            "image run as Pods"
        )
    if o.k8s_kubeconfig is not None and not o.k8s_kubeconfig.is_file():
        _fail(f"--k8s-kubeconfig {o.k8s_kubeconfig}: no such file")


def _items(value: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (value or "").split(",") if s.strip())


def fleet_spec(o: WorkerOptions, cfg: WorkerConfig) -> FleetSpec:
    """The simulated fleet of `yard worker --executor sim`; `error: ...` for a bad --sim-* option."""
    from trainyard.worker.executors.sim import SimSyntaxError, parse_sim
    from trainyard.worker.fleet import FleetSpec, parse_shape

    shapes = []
    for text in o.sim_shape or []:
        try:
            shapes.append(parse_shape(text))
        except ValueError as e:
            _fail(f"--sim-shape: {e}")
    try:
        behaviour = parse_sim(o.sim_default)
    except SimSyntaxError as e:
        _fail(f"--sim-default: {e}")
    return FleetSpec(
        base=cfg,
        agents=o.agents,
        shapes=tuple(shapes),
        pools=_items(o.sim_pools),
        regions=_items(o.sim_regions),
        spot_fraction=o.sim_spot_fraction,
        channels=o.sim_channels,
        ramp_s=o.sim_ramp,
        behaviour=behaviour,
    )


def _fail(message: str, code: int = 2) -> NoReturn:
    # SystemExit, not typer.Exit: this module runs without Typer, and Typer passes it on unchanged.
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _check_server(server: str) -> None:
    from trainyard.worker.config import grpc_target

    try:
        grpc_target(server)
    except ValueError as e:
        _fail(str(e))


def _worker_token(token_file: Path | None, home: Path) -> str:
    """$TRAINYARD_WORKER_TOKEN, else the contents of `--token-file`, else of HOME/worker-token."""
    token = os.environ.get("TRAINYARD_WORKER_TOKEN")
    if token:
        return token
    path = token_file or home / "worker-token"
    try:
        return path.read_text().strip()
    except OSError as e:
        _fail(f"no worker token: set TRAINYARD_WORKER_TOKEN or --token-file ({e})", code=1)


def _labels(items: list[str], spot: bool) -> dict[str, str]:
    labels = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            _fail(f"--label {item!r} must be K=V")
        labels[k] = v
    if spot:
        labels["spot"] = "true"  # the scheduler reads it: preemptible jobs only
    return labels


def _size(flag: str, value: str) -> int:
    """A byte size such as 1Gi, or `error: FLAG: ...`."""
    try:
        return parse_memory(value)
    except ValueError as e:
        _fail(f"{flag}: {e}")


def _isolation(value: str) -> IsolationMode:
    from trainyard.worker.isolation import IsolationMode

    try:
        return IsolationMode(value)
    except ValueError:
        _fail("--isolation must be required, best-effort or off")


def _check_run_as(run_as: str) -> None:
    from trainyard.worker.jobuser import BadRunAs, parse_run_as

    try:
        parse_run_as(run_as)
    except BadRunAs as e:
        _fail(str(e))


def _shared_roots(roots: list[Path]) -> list[Path]:
    """`--allow-cwd` roots, normalized; each must be absolute and not /."""
    shared: list[Path] = []
    for root in roots:
        if not root.is_absolute() or str(root) == "/":
            _fail(f"--allow-cwd {root}: must be an absolute directory other than /")
        shared.append(Path(os.path.normpath(root)))
    return shared


def _check_ulimits(ulimits: list[str]) -> None:
    for u in ulimits:
        from trainyard.worker.executors.docker import parse_ulimit  # the docker SDK: only if used

        try:
            parse_ulimit(u)
        except ValueError as e:
            _fail(f"--docker-ulimit: {e}")


# -- the plain path ----------------------------------------------------------------------------

OPTION_ENVVARS = frozenset(
    {
        *("TRAINYARD_SERVER", "TRAINYARD_SPOT_NOTICE_URL", "TRAINYARD_SPOT_NOTICE_STYLE"),
        *("TRAINYARD_SPOT_POLL", "TRAINYARD_PREEMPT_GRACE", "TRAINYARD_MAX_LOG_BYTES"),
        *("TRAINYARD_ISOLATION", "TRAINYARD_DOCKER_HOST", "TRAINYARD_TLS_CA", "TRAINYARD_TLS_CERT"),
        *("TRAINYARD_TLS_KEY", "TRAINYARD_ALLOW_CWD", "TRAINYARD_RUN_AS", "TRAINYARD_EXECUTOR"),
        *("TRAINYARD_WORKDIR_UNPACKED_LIMIT", "TRAINYARD_WORKDIR_FILE_LIMIT", "NODE_NAME"),
        *("TRAINYARD_K8S_WORK_CLAIM", "TRAINYARD_K8S_DATA_CACHE_CLAIM", "TRAINYARD_LOG_SHIPPER"),
        "_YARD_COMPLETE",  # shell completion, which only Typer answers
    }
)
"""Every environment variable that sets a `yard worker` option (a unit test compares them with the
command's). One that is set, for an option not given as a flag, leaves the command line to Typer."""


_PLAIN = {
    # What `yard up` gives its agents, and the other plain options of a node's `yard worker`; none of
    # them has a range or must exist.
    "--server": plain.Flag("server", plain.text),
    "--home": plain.Flag("home", plain.path),
    "--token-file": plain.Flag("token_file", plain.path),
    "--name": plain.Flag("name", plain.text),
    "--work-dir": plain.Flag("work_dir", plain.path),
    "--cpus": plain.Flag("cpus", plain.number),
    "--memory": plain.Flag("memory", plain.text),
    "--gpus": plain.Flag("gpus", plain.integer),
    "--gpu-type": plain.Flag("gpu_type", plain.text),
    "--pool": plain.Flag("pool", plain.text),
    "--region": plain.Flag("region", plain.text),
    "--label": plain.Flag("label", plain.text, repeatable=True),
    "--allow-cwd": plain.Flag("allow_cwd", plain.path, repeatable=True),
}
_SWITCHES = {"--verbose": ("verbose", True), "-v": ("verbose", True)}
_ENVVAR_OF = {"server": "TRAINYARD_SERVER", "allow_cwd": "TRAINYARD_ALLOW_CWD"}


def plain_options(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[WorkerOptions, bool] | None:
    """`yard worker ARGV`'s options and --verbose, exactly as Typer would parse them, when ARGV has only
    plain options (``_PLAIN``, ``_SWITCHES``) and no environment variable sets another option; else
    None, and Typer parses the command line (and answers --help and every error) as always."""
    try:
        given = plain.parse(argv, _PLAIN, _SWITCHES)
    except plain.NotPlain:
        return None
    verbose = bool(given.pop("verbose", False))
    covered = {env for field, env in _ENVVAR_OF.items() if field in given}
    if (OPTION_ENVVARS - covered) & set(environ):
        return None
    return WorkerOptions(**given), verbose  # type: ignore[arg-type]


def main(argv: Sequence[str]) -> None:
    """`yard worker ARGV` on the plain path; Typer's app when ARGV needs it."""
    parsed = plain_options(argv, os.environ)
    if parsed is None:
        from trainyard.cli.main import typer_main

        typer_main(["worker", *argv])
        return
    plain.finish(lambda: run(*parsed))
