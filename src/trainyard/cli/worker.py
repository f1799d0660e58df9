"""`yard worker`: run a worker agent on this machine.

The command only declares its options for Typer and collects them into :class:`WorkerOptions`;
``trainyard.cli.worker_options`` (no Typer) checks them in the order a user meets the errors
(:func:`worker_config`), builds the agent's :class:`WorkerConfig` and runs it. The agent, the docker
SDK and the job-user lookup are imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli.app import app
from trainyard.cli.local import HomeOpt
from trainyard.cli.worker_options import WorkerOptions, _check_executor, fleet_spec, run, worker_config

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
    verbose = given.pop("verbose")
    run(WorkerOptions(**given), verbose)


__all__ = ["WorkerOptions", "_check_executor", "fleet_spec", "worker", "worker_config"]
