"""The worker agent's settings and the detection of this node's capacity."""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainyard.worker.isolation import DEFAULT_PIDS_LIMIT, IsolationMode

log = logging.getLogger(__name__)


def grpc_target(server: str) -> str:
    """The gRPC target for ``server``. A comma list of IP:port replicas becomes one ``ipv4:`` target:
    gRPC's pick_first then stays on one replica and moves to the next when that one fails, so a
    worker rides out the loss of the replica it talked to without a load balancer in front."""
    parts = [s.strip() for s in server.split(",") if s.strip()]
    if len(parts) <= 1 or ":///" in server or server.startswith(("ipv4:", "ipv6:", "unix:")):
        return server
    for part in parts:
        host = part.rsplit(":", 1)[0]
        if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", host):
            raise ValueError(
                f"--server {server!r}: a list of replicas must be IPv4 host:port pairs; "
                "for host names use a DNS name with several addresses (dns:///name:port)"
            )
    return "ipv4:" + ",".join(parts)


@dataclass(frozen=True)
class WorkerConfig:
    """Everything `yard worker` needs; the CLI builds one, tests build their own."""

    server: str
    """gRPC address of the control plane, e.g. ``127.0.0.1:50051``; several replicas as a comma list
    (``10.0.0.1:50051,10.0.0.2:50051``) or any gRPC target (``dns:///trainyard:50051``)."""
    token: str
    """Bootstrap worker token, exchanged by Register for this worker's own credential."""
    name: str
    """Stable worker name: re-registering with the same name keeps the worker id."""
    work_dir: Path
    """All local state: attempt directories (log spool, checkpoints, artifacts, unpacked workdirs)."""
    cpus: float | None = None
    """None: detect from the CPU affinity mask."""
    memory: int | None = None
    """Bytes; None: detect from /proc/meminfo."""
    gpus: int | None = None
    """None: detect via NVML (0 when pynvml or a driver is missing)."""
    gpu_type: str | None = None
    """None: derived from the NVML device name (``a100``, ``h100``), when there are GPUs."""
    pool: str = "default"
    region: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    data_cache_dir: Path | None = None
    """Datasets kept across jobs (``$TRAINYARD_DATA_CACHE`` for jobs); None: ``<work_dir>/data-cache``."""
    max_log_bytes: int = 1 << 30
    """Per-attempt cap on the log spool; past it a marker line is written and output is dropped."""
    tls_ca: Path | None = None
    """CA (PEM) that signed the control plane's gRPC certificate. With it or a client certificate
    the channel is TLS (no CA: the system's roots); with neither, plaintext."""
    tls_cert: Path | None = None
    """This worker's client certificate chain (PEM), for a control plane that requires mutual TLS."""
    tls_key: Path | None = None
    """The private key (PEM) of ``tls_cert``."""

    # Tunables. The defaults are the production values; tests shrink them.
    log_flush_s: float = 0.1
    """Longest a live log byte waits before it is pushed."""
    seal_bytes: int = 1 << 20
    """Unsealed bytes that trigger a log chunk upload."""
    seal_interval_s: float = 5.0
    """Longest unsealed bytes wait for an attempt's first chunk upload. Each periodic seal doubles
    the wait for the next, up to ``seal_interval_max_s``."""
    seal_interval_max_s: float = 60.0
    """Longest unsealed bytes wait for a chunk upload once an attempt has sealed a few. A chunk is a
    PUT and an index row: at 10,000 running jobs a 5 s cadence is 2,000 of each a second, nearly all
    for output nobody reads. Readers do not wait for it: a follower or a poller of a running attempt
    gets its unsealed bytes live (tail on demand), and the end of an attempt seals the rest."""
    seal_max_bytes: int = 8 << 20
    """Largest single chunk, so an outage's backlog is not gzipped in one piece."""
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    rpc_timeout_s: float = 15.0
    http_timeout_s: float = 120.0
    upload_attempts: int = 4
    """Tries per HTTP upload or download at the least, however short ``upload_retry_s`` is."""
    upload_retry_s: float = 1800.0
    """How long a failing upload or download keeps retrying, with backoff, before the attempt is
    reported as an infra failure: long enough to ride out a storage outage of minutes. The job's final
    report waits meanwhile, and files whose upload failed stay in the attempt's directory."""
    multipart_threshold: int = 64 << 20
    """Files at least this large are uploaded in parts through presigned part URLs."""
    multipart_part_size: int = 16 << 20
    """Bytes per part (at least 5 MiB; larger for files that would need more than 10,000 parts)."""
    shutdown_timeout_s: float = 30.0
    """On stop, how long to wait for final reports after the jobs were stopped."""
    keep_attempt_dirs: bool = False
    """Keep an attempt's directory after its final report was accepted (for debugging)."""
    cancel_grace_s: float | None = None
    """Override the control plane's cancel grace (SIGTERM to SIGKILL)."""
    preempt_grace_s: float = 30.0
    """SIGTERM to SIGKILL when a job is preempted (agent SIGTERM, spot notice, drain, the scheduler):
    the job's time to write a checkpoint. AWS gives two minutes of notice, GCP thirty seconds."""
    spot_notice_url: str | None = None
    """The cloud's interruption-notice endpoint to poll (None: do not watch), e.g.
    ``http://169.254.169.254/latest/meta-data/spot/instance-action`` (AWS) or
    ``http://metadata.google.internal/computeMetadata/v1/instance/preempted`` (GCP)."""
    spot_notice_style: str = "auto"
    """``aws``, ``gcp``, or ``auto`` (from the URL: ``computeMetadata`` or ``/preempted`` is GCP)."""
    spot_poll_s: float = 2.0
    """How often the notice endpoint is polled; AWS documents checking every five seconds."""
    isolation: IsolationMode = IsolationMode.OFF
    """``required``: refuse jobs the node cannot sandbox and limit; ``best-effort``: apply what the
    node offers and warn once about the rest; ``off``: plain process groups. `yard worker` defaults to
    best-effort; a config built in code (tests, embedding) opts in."""
    job_network: bool = True
    """False: no job on this worker (pool) gets a network but loopback (needs the sandbox)."""
    job_pids_limit: int = DEFAULT_PIDS_LIMIT
    """Processes and threads per job (its cgroup's pids limit); 0: unlimited."""
    protected_dirs: tuple[Path, ...] = ()
    """Hidden from sandboxed jobs besides the work directory: the platform home (database, tokens)."""
    docker_host: str | None = None
    """Docker Engine API address (``unix:///var/run/docker.sock``, or Podman's socket) for jobs that
    name an image; None: such jobs fail to start here."""
    docker_ulimits: tuple[str, ...] = ()
    """``NAME=SOFT[:HARD]`` ulimits for every container (``nofile=1024:4096``); none: the engine's."""
    executor: str = "process"
    """``process``: jobs run as local processes (with ``docker_host``, jobs that name an image as
    containers); ``kubernetes``: every job runs as a Pod on this node (``k8s_*`` below)."""
    k8s_namespace: str = "trainyard-jobs"
    """Where the kubernetes executor creates its Pods."""
    k8s_node_name: str | None = None
    """This agent's node (``NODE_NAME``): the kubernetes executor pins every Pod to it."""
    k8s_default_image: str | None = None
    """The image of jobs that name none (the agent's own image); None: such jobs fail to start."""
    k8s_kubeconfig: Path | None = None
    """None: the in-cluster configuration (the agent's service account)."""
    k8s_host_network: bool = False
    """Job Pods use the node's network (multi-node gangs on pools whose agents use it too)."""
    k8s_work_claim: str | None = None
    """The PersistentVolumeClaim (in ``k8s_namespace``) that holds the work directory's node path:
    job Pods mount their directories from it rather than as host paths (Pod Security)."""
    k8s_data_cache_claim: str | None = None
    """The same for the data cache."""
    log_shipper: str = "builtin"
    """``builtin``: the agent seals each attempt's log into chunks and uploads them; ``external``:
    Fluent Bit ships the job Pods' logs from the node (deploy/kubernetes/fluent-bit) and the control
    plane takes them in, so the agent seals nothing (its live tail still goes to the control plane)."""
    allow_cwd: tuple[Path, ...] = ()
    """Shared roots a job's ``cwd`` may name (``--allow-cwd /data``): a submit directory outside
    them is not used on this worker (the job runs in its own directory, and its log says why)."""
    run_as: str | None = None
    """``USER[:GROUP]`` sandboxed jobs run as when the agent is root; None: ``nobody``."""
    workdir_unpacked_limit: int | None = 10 << 30
    """Bytes a workdir bundle may unpack to (``TRAINYARD_WORKDIR_UNPACKED_LIMIT``); None: no limit."""
    workdir_file_limit: int | None = 100_000
    """Files a workdir bundle may hold (``TRAINYARD_WORKDIR_FILE_LIMIT``); None: no limit."""

    @property
    def data_cache(self) -> Path:
        return self.data_cache_dir or self.work_dir / "data-cache"


@dataclass(frozen=True)
class NodeCapacity:
    cpus: float
    memory: int
    gpus: int
    gpu_type: str | None


def detect_capacity(cfg: WorkerConfig) -> NodeCapacity:
    """Fill in what the config leaves unset; declared values always win (GPUs without hardware too)."""
    cpus = cfg.cpus if cfg.cpus is not None else detect_cpus()
    memory = cfg.memory if cfg.memory is not None else detect_memory()
    gpus, gpu_type = cfg.gpus, cfg.gpu_type
    if gpus is None or (gpu_type is None and gpus > 0):
        found, name = detect_gpus()
        if gpus is None:
            gpus = found
        if gpu_type is None and gpus > 0 and name is not None:
            gpu_type = gpu_type_from_name(name)
    return NodeCapacity(cpus=cpus, memory=memory, gpus=gpus, gpu_type=gpu_type)


def detect_cpus() -> float:
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(os.cpu_count() or 1)


def detect_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def detect_gpus() -> tuple[int, str | None]:
    """Count GPUs and name the first; (0, None) when NVML is not installed or finds no driver."""
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        return 0, None
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError has many subclasses; any of them means "no usable GPUs"
        log.info("NVML unavailable, assuming no GPUs: %s", e)
        return 0, None
    try:
        count = int(nvml.nvmlDeviceGetCount())
        name: str | None = None
        if count:
            raw = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(0))
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
        return count, name
    except Exception as e:
        log.warning("NVML query failed, assuming no GPUs: %s", e)
        return 0, None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


_VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro"}


def gpu_type_from_name(name: str) -> str | None:
    """``NVIDIA A100-SXM4-80GB`` → ``a100``, ``NVIDIA GeForce RTX 4090`` → ``rtx4090``."""
    words = [w for w in re.split(r"[\s\-_]+", name.lower()) if w and w not in _VENDOR_WORDS]
    label = ""
    for w in words:
        label += re.sub(r"[^a-z0-9]", "", w)
        if any(c.isdigit() for c in label):
            break
    label = label[:32]
    return label or None
