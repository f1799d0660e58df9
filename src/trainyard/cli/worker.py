"""`yard worker`: run a worker agent on this machine.

The command only collects its options into :class:`WorkerOptions`; :func:`worker_config` checks them
(in the order a user meets the errors) and builds the agent's :class:`WorkerConfig`. The agent, the
docker SDK and the job-user lookup are imported only when the command runs.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from trainyard.cli.app import app
from trainyard.cli.local import HomeOpt, home_dir, setup_logging
from trainyard.model.quantity import parse_memory

if TYPE_CHECKING:
    from trainyard.worker.config import WorkerConfig
    from trainyard.worker.fleet import FleetSpec
    from trainyard.worker.isolation import IsolationMode

# -- options -----------------------------------------------------------------------------------

ServerOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_SERVER",
        help="control plane gRPC address; several replicas as a comma list of IP:port",
    ),
]
TokenFileOpt = Annotated[Path | None, typer.Option(help="file with the worker bootstrap token")]
NameOpt = Annotated[str | None, typer.Option(help="stable worker name (default: hostname)")]
WorkDirOpt = Annotated[Path | None, typer.Option(help="local state (default: HOME/workers/NAME)")]
DataCacheOpt = Annotated[
    Path | None,
    typer.Option(help="datasets kept across jobs, reported for placement (default: WORK_DIR/data-cache)"),
]
CpusOpt = Annotated[float | None, typer.Option(help="declared CPUs (default: detected)")]
MemoryOpt = Annotated[str | None, typer.Option(help="declared memory, e.g. 32Gi (default: detected)")]
GpusOpt = Annotated[int | None, typer.Option(help="declared GPUs (default: NVML)")]
GpuTypeOpt = Annotated[str | None, typer.Option(help="GPU type label, e.g. a100")]
PoolOpt = Annotated[str, typer.Option(help="worker pool label")]
RegionOpt = Annotated[str | None, typer.Option(help="region label, e.g. us-east-1")]
LabelOpt = Annotated[list[str] | None, typer.Option(help="extra label K=V (repeatable)")]
SpotOpt = Annotated[bool, typer.Option("--spot", help="spot capacity: only preemptible jobs are placed here")]
SpotNoticeUrlOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINYARD_SPOT_NOTICE_URL",
        help="interruption-notice endpoint to watch, e.g. "
        "http://169.254.169.254/latest/meta-data/spot/instance-action (AWS) or "
        "http://metadata.google.internal/computeMetadata/v1/instance/preempted (GCP)",
    ),
]
SpotNoticeStyleOpt = Annotated[
    str, typer.Option(envvar="TRAINYARD_SPOT_NOTICE_STYLE", help="aws, gcp or auto (from the URL)")
]
SpotPollOpt = Annotated[
    float, typer.Option(envvar="TRAINYARD_SPOT_POLL", help="seconds between notice checks")
]
PreemptGraceOpt = Annotated[
    float,
    typer.Option(
        envvar="TRAINYARD_PREEMPT_GRACE",
        help="seconds a preempted job has to checkpoint (SIGTERM to SIGKILL)",
    ),
]
MaxLogBytesOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_MAX_LOG_BYTES",
        help="per-attempt log cap, e.g. 1Gi; past it output is dropped",
    ),
]
IsolationOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_ISOLATION",
        help="required (refuse jobs that cannot be sandboxed and limited), best-effort (apply "
        "what the node offers, warn about the rest) or off (plain process groups)",
    ),
]
JobNetworkOpt = Annotated[
    bool,
    typer.Option(
        "--job-network/--no-job-network", help="give jobs a network (off: loopback only, sandboxed)"
    ),
]
JobPidsLimitOpt = Annotated[
    int, typer.Option(help="processes and threads per job (its cgroup's pids limit; 0: none)", min=0)
]
DockerHostOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINYARD_DOCKER_HOST",
        help="Docker Engine API for jobs with an image, e.g. unix:///var/run/docker.sock or "
        "Podman's socket (default: none; such jobs fail to start here)",
    ),
]
DockerUlimitOpt = Annotated[
    list[str] | None,
    typer.Option(help="ulimit for every container, NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable)"),
]
TlsCaOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="TRAINYARD_TLS_CA",
        exists=True,
        dir_okay=False,
        help="CA (PEM) that signed the control plane's gRPC certificate: connect with TLS",
    ),
]
TlsCertOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="TRAINYARD_TLS_CERT",
        exists=True,
        dir_okay=False,
        help="this worker's client certificate (PEM), for a control plane that requires mTLS",
    ),
]
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option(envvar="TRAINYARD_TLS_KEY", exists=True, dir_okay=False, help="the key (PEM) of --tls-cert"),
]
AllowCwdOpt = Annotated[
    list[Path] | None,
    typer.Option(
        envvar="TRAINYARD_ALLOW_CWD",
        help="a shared root (e.g. /data, /home) that jobs' submit directories (cwd) may be in "
        "(repeatable; default: none, jobs run in their own directory)",
    ),
]
RunAsOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINYARD_RUN_AS",
        help="USER[:GROUP] sandboxed jobs run as when the agent is root (default: nobody); never root",
    ),
]
WorkdirUnpackedLimitOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_WORKDIR_UNPACKED_LIMIT",
        help="bytes a workdir bundle may unpack to, e.g. 10Gi",
    ),
]
WorkdirFileLimitOpt = Annotated[
    int,
    typer.Option(envvar="TRAINYARD_WORKDIR_FILE_LIMIT", help="files a workdir bundle may hold", min=1),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_EXECUTOR",
        help="process (run jobs; with --docker-host, images as containers), kubernetes (every job as a "
        "Pod on this node, through the Kubernetes API; see --k8s-*) or sim (simulate each "
        "job's process from its YARD_SIM variable, for fleet simulation; see the README)",
    ),
]
K8sNamespaceOpt = Annotated[str, typer.Option(help="namespace of the job Pods (--executor kubernetes)")]
K8sNodeNameOpt = Annotated[
    str | None,
    typer.Option(
        envvar="NODE_NAME",
        help="this agent's node, which every job Pod is pinned to (--executor kubernetes; default: "
        "$NODE_NAME, from the downward API)",
    ),
]
K8sDefaultImageOpt = Annotated[
    str | None,
    typer.Option(
        help="image of the job Pods of jobs that name none, usually the agent's own "
        "(--executor kubernetes; default: none, such jobs fail to start)"
    ),
]
K8sKubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        help="kubeconfig file for the Kubernetes API (--executor kubernetes; default: the Pod's "
        "service account inside a cluster, else ~/.kube/config)"
    ),
]
K8sHostNetworkOpt = Annotated[
    bool,
    typer.Option(
        "--k8s-host-network",
        help="job Pods use the node's network, for multi-node gangs (--executor kubernetes)",
    ),
]
K8sWorkClaimOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINYARD_K8S_WORK_CLAIM",
        help="PersistentVolumeClaim in the jobs namespace bound to a local volume of --work-dir's node "
        "path: job Pods mount their directories from it, as Pod Security restricted allows, instead of "
        "as host paths (--executor kubernetes)",
    ),
]
K8sDataCacheClaimOpt = Annotated[
    str | None,
    typer.Option(
        envvar="TRAINYARD_K8S_DATA_CACHE_CLAIM",
        help="the same for --data-cache (--executor kubernetes)",
    ),
]
LogShipperOpt = Annotated[
    str,
    typer.Option(
        envvar="TRAINYARD_LOG_SHIPPER",
        help="builtin (the agent seals and uploads each job's log) or external (Fluent Bit ships the "
        "job Pods' logs, deploy/kubernetes/fluent-bit; --executor kubernetes only)",
    ),
]
AgentsOpt = Annotated[
    int,
    typer.Option(help="agents in this process, named NAME-0001.. (--executor sim only)", min=1),
]
SimShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="a simulated node's CPUS/MEMORY[/GPUS[xTYPE]], e.g. 8/32Gi or 96/1Ti/8xa100; repeatable: "
        "agent i takes shape i mod the count (default: --cpus/--memory/--gpus/--gpu-type, else 8/32Gi)"
    ),
]
SimPoolsOpt = Annotated[
    str | None, typer.Option(help="comma list of pools; agent i takes pool i mod the count (default: --pool)")
]
SimRegionsOpt = Annotated[
    str | None,
    typer.Option(help="comma list of regions; agent i takes region i mod the count (default: --region)"),
]
SimSpotFractionOpt = Annotated[
    float | None,
    typer.Option(help="share of the agents that are spot, spread evenly (default: --spot)", min=0.0, max=1.0),
]
SimChannelsOpt = Annotated[
    int,
    typer.Option(help="gRPC connections the simulated agents share (0: one per 100 agents)", min=0),
]
SimRampOpt = Annotated[
    float, typer.Option(help="seconds over which the simulated agents start, evenly spread", min=0.0)
]
SimDefaultOpt = Annotated[
    str,
    typer.Option(help="the simulated behaviour of jobs without YARD_SIM, e.g. duration=30s,log_rate=1/s"),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v")]


@dataclass(frozen=True)
class WorkerOptions:
    """`yard worker`'s options as given (after Typer's own checks), before they are validated."""

    server: str
    home: Path | None
    token_file: Path | None
    name: str | None
    work_dir: Path | None
    data_cache: Path | None
    cpus: float | None
    memory: str | None
    gpus: int | None
    gpu_type: str | None
    pool: str
    region: str | None
    label: list[str] | None
    spot: bool
    spot_notice_url: str | None
    spot_notice_style: str
    spot_poll: float
    preempt_grace: float
    max_log_bytes: str
    isolation: str
    job_network: bool
    job_pids_limit: int
    docker_host: str | None
    docker_ulimit: list[str] | None
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    allow_cwd: list[Path] | None
    run_as: str | None
    workdir_unpacked_limit: str
    workdir_file_limit: int
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


@app.command()
def worker(
    server: ServerOpt = "127.0.0.1:50051",
    home: HomeOpt = None,
    token_file: TokenFileOpt = None,
    name: NameOpt = None,
    work_dir: WorkDirOpt = None,
    data_cache: DataCacheOpt = None,
    cpus: CpusOpt = None,
    memory: MemoryOpt = None,
    gpus: GpusOpt = None,
    gpu_type: GpuTypeOpt = None,
    pool: PoolOpt = "default",
    region: RegionOpt = None,
    label: LabelOpt = None,
    spot: SpotOpt = False,
    spot_notice_url: SpotNoticeUrlOpt = None,
    spot_notice_style: SpotNoticeStyleOpt = "auto",
    spot_poll: SpotPollOpt = 2.0,
    preempt_grace: PreemptGraceOpt = 30.0,
    max_log_bytes: MaxLogBytesOpt = "1Gi",
    isolation: IsolationOpt = "best-effort",
    job_network: JobNetworkOpt = True,
    job_pids_limit: JobPidsLimitOpt = 4096,
    docker_host: DockerHostOpt = None,
    docker_ulimit: DockerUlimitOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    allow_cwd: AllowCwdOpt = None,
    run_as: RunAsOpt = None,
    workdir_unpacked_limit: WorkdirUnpackedLimitOpt = "10Gi",
    workdir_file_limit: WorkdirFileLimitOpt = 100_000,
    executor: ExecutorOpt = "process",
    agents: AgentsOpt = 1,
    sim_shape: SimShapeOpt = None,
    sim_pools: SimPoolsOpt = None,
    sim_regions: SimRegionsOpt = None,
    sim_spot_fraction: SimSpotFractionOpt = None,
    sim_channels: SimChannelsOpt = 0,
    sim_ramp: SimRampOpt = 0.0,
    sim_default: SimDefaultOpt = "",
    k8s_namespace: K8sNamespaceOpt = "trainyard-jobs",
    k8s_node_name: K8sNodeNameOpt = None,
    k8s_default_image: K8sDefaultImageOpt = None,
    k8s_kubeconfig: K8sKubeconfigOpt = None,
    k8s_host_network: K8sHostNetworkOpt = False,
    k8s_work_claim: K8sWorkClaimOpt = None,
    k8s_data_cache_claim: K8sDataCacheClaimOpt = None,
    log_shipper: LogShipperOpt = "builtin",
    verbose: VerboseOpt = False,
) -> None:
    """Run a worker agent: leases jobs from the control plane and runs them as local processes
    (or, with --docker-host, jobs that name an image as containers). With --executor kubernetes, runs
    each job as a Pod on this node. With --executor sim, runs --agents simulated agents in this
    process against the real control plane (fleet simulation)."""
    # Every parameter but --verbose is a WorkerOptions field of the same name: one copy, not 50 lines.
    given = dict(locals())
    setup_logging(given.pop("verbose"))
    options = WorkerOptions(**given)
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
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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
