"""Prometheus metrics of one control plane (own registry: several can live in one test process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainyard.scheduler.demand import PoolDemand


class _QueueCollector(Collector):
    def __init__(self, read: Callable[[], dict[str, object]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self._read()
        jobs = GaugeMetricFamily("trainyard_jobs", "Jobs by status", labels=["status"])
        for status, n in snap.get("by_status", {}).items():  # type: ignore[attr-defined]
            jobs.add_metric([status], n)
        yield jobs
        pending = GaugeMetricFamily("trainyard_pending_jobs", "Pending jobs per pool", labels=["pool"])
        for pool, n in snap.get("pending_by_pool", {}).items():  # type: ignore[attr-defined]
            pending.add_metric([pool], n)
        yield pending
        lag = GaugeMetricFamily("trainyard_outbox_lag", "Committed events not yet published")
        lag.add_metric([], snap.get("outbox_lag", 0))  # type: ignore[arg-type]
        yield lag


PENDING_DEMAND_HELP = (
    "Resources pending jobs ask for that the leader's last scheduling cycle could not place for lack of "
    "capacity (gpu: GPUs, cpu: cores, memory: bytes; every replica of a gang), per pool (a job naming "
    "none counts under default) and GPU type (none: CPU-only jobs; any: GPU jobs naming no type). "
    "Counts jobs waiting for capacity or a reservation and jobs no registered worker can fit; not jobs "
    "held by their team's quota, jobs capacity is being preempted or drained for, array tasks over "
    "their array's parallelism, or jobs waiting for dependencies. Every replica exports the leader's figures"
)


class _DemandCollector(Collector):
    """``trainyard_pool_pending_demand{pool, gpu_type, resource}`` from the rows ``read`` returns."""

    def __init__(self, read: Callable[[], Iterable[PoolDemand]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "trainyard_pool_pending_demand", PENDING_DEMAND_HELP, labels=["pool", "gpu_type", "resource"]
        )
        for row in self._read():
            for resource, value in row.resources().items():
                fam.add_metric([row.pool, row.gpu_type, resource], value)
        yield fam


GPU_SAMPLE_TTL_S = 60.0


class _GpuCollector(Collector):
    """``trainyard_gpu_utilization_ratio{worker, name, gpu}`` from the latest heartbeat of each worker.

    A custom collector rather than a Gauge: a worker that stops sending heartbeats (dead, drained,
    scaled away) drops out after GPU_SAMPLE_TTL_S instead of showing its last value forever.
    """

    def __init__(self, ttl_s: float = GPU_SAMPLE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()  # heartbeats arrive on the event loop, scrapes on a thread
        self._samples: dict[str, tuple[str, dict[int, float], float]] = {}

    def record(self, worker_id: str, name: str, utilization: Mapping[int, float]) -> None:
        now = time.monotonic()
        with self._lock:
            if utilization:
                self._samples[worker_id] = (name, dict(utilization), now)
            else:
                self._samples.pop(worker_id, None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            "trainyard_gpu_utilization_ratio",
            "GPU utilization (0..1) reported by the worker via NVML",
            labels=["worker", "name", "gpu"],
        )
        horizon = time.monotonic() - self.ttl_s
        with self._lock:
            self._samples = {w: v for w, v in self._samples.items() if v[2] >= horizon}
            samples = list(self._samples.items())
        for worker_id, (name, util, _) in samples:
            for index, ratio in sorted(util.items()):
                # The heartbeat carries float32 (0.37 arrives as 0.3700000047...); NVML reports whole
                # percents, so four decimals lose nothing and keep the exposition readable.
                fam.add_metric([worker_id, name, str(index)], round(min(1.0, max(0.0, ratio)), 4))
        yield fam


class Metrics:
    """The control plane's Prometheus metrics, in a registry of its own (one per platform)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.submitted = Counter("trainyard_jobs_submitted", "Jobs accepted", registry=r)
        self.finished = Counter("trainyard_jobs_finished", "Jobs that ended", ["status"], registry=r)
        self.wait = Histogram(
            "trainyard_job_wait_seconds",
            "Time from entering PENDING to being leased",
            ["pool", "priority"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.cycle = Histogram("trainyard_scheduler_cycle_seconds", "Scheduler cycle duration", registry=r)
        self.preemptions = Counter(
            "trainyard_preemptions", "Running jobs the scheduler told to stop", ["reason"], registry=r
        )
        self.cross_region = Counter(
            "trainyard_cross_region_placements",
            "Jobs placed outside their data.region (a soft preference the scheduler could not meet)",
            registry=r,
        )
        self.heartbeats_missed = Counter(
            "trainyard_worker_heartbeats_missed", "Workers declared dead after missing heartbeats", registry=r
        )
        self.liveness_held = Counter(
            "trainyard_worker_liveness_held",
            "Reconciler sweeps that held many silent workers' declaration (a mass silence)",
            registry=r,
        )
        self.http_requests = Counter(
            "trainyard_http_requests", "REST requests", ["method", "code"], registry=r
        )
        self.log_live_bytes = Counter(
            "trainyard_log_live_bytes",
            "Live log bytes received from workers on PushLogs (only followed attempts push them)",
            registry=r,
        )
        self.log_lines_indexed = Counter(
            "trainyard_log_lines_indexed", "Log lines the log search indexer stored", registry=r
        )
        self.log_index_backlog = Gauge(
            "trainyard_log_index_backlog",
            "Sealed log chunks waiting for the log search indexer (after its last step; leader only)",
            registry=r,
        )
        self.gpu_utilization = _GpuCollector()
        r.register(self.gpu_utilization)

    def add_queue_collector(self, read: Callable[[], dict[str, object]]) -> None:
        """Export the queue gauges that ``read`` returns (called at every scrape)."""
        self.registry.register(_QueueCollector(read))

    def add_demand_collector(self, read: Callable[[], Iterable[PoolDemand]]) -> None:
        """Export ``trainyard_pool_pending_demand`` from the rows ``read`` returns (at every scrape)."""
        self.registry.register(_DemandCollector(read))
