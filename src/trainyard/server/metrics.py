"""Prometheus metrics of one control plane (own registry: several can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


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


class Metrics:
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
        self.heartbeats_missed = Counter(
            "trainyard_worker_heartbeats_missed", "Workers declared dead after missing heartbeats", registry=r
        )
        self.http_requests = Counter(
            "trainyard_http_requests", "REST requests", ["method", "code"], registry=r
        )

    def add_queue_collector(self, read: Callable[[], dict[str, object]]) -> None:
        self.registry.register(_QueueCollector(read))
