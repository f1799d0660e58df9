"""UI latency: a worker's status report → the new status painted in a browser's jobs table (ms).

`yard up` with no local agents; this process plays the worker over the real gRPC protocol (Register,
the Lease stream, Heartbeat, Report), so the clock starts the instant the report leaves the worker.
Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) keeps the jobs page open; a
MutationObserver stamps the wall-clock time each status first appears in a row. Both clocks are this
machine's. Each job gives two transitions reported by the worker (SCHEDULED → RUNNING on STARTED,
RUNNING → SUCCEEDED on FINISHED); 25 jobs, 50 transitions.

`--running N` first brings N other jobs to RUNNING on background fake workers (pool `bulk`, 1,000
attempts each, heartbeating every 5 s, as a fleet at scale would) and keeps them running while the
page is measured: the issue's "with 10k jobs running".

The path measured: gRPC report → group commit → outbox relay → in-process bus → SSE /v1/events →
the page's event handler → DOM.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
HEARTBEAT_S = 0.5

# Records, per job row, when each status first showed (epoch ms, the same clock as time.time()).
OBSERVER = """() => {
  window.__t = {};
  const note = () => {
    const now = performance.timeOrigin + performance.now();
    for (const tr of document.querySelectorAll('tr[data-job]')) {
      const s = tr.querySelector('td.status').textContent;
      const seen = (window.__t[tr.dataset.job] ||= {});
      if (!(s in seen)) seen[s] = now;
    }
  };
  new MutationObserver(note).observe(document.querySelector('[data-testid=jobs-body]'),
    {childList: true, subtree: true, characterData: true});
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


@contextlib.contextmanager
def _yard_up(heartbeat_s: float = HEARTBEAT_S) -> Iterator[tuple[Path, str, int, str]]:
    """(home, http base url, gRPC port, the `?token=` link yard up printed)."""
    with tempfile.TemporaryDirectory(prefix="ty-bench-ui-") as tmp:
        home = Path(tmp) / "home"
        port, grpc_port = _free_port(), _free_port()
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "trainyard", "up", "--home", str(home), "--port", str(port)),
                *("--grpc-port", str(grpc_port), "--workers", "0", "--heartbeat-interval", str(heartbeat_s)),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        link = ""
        for line in proc.stdout:
            m = re.search(r"web UI\s+(\S+)", line)
            if m:
                link = m.group(1)
            if line.startswith("Press Ctrl-C"):
                break
        else:
            raise RuntimeError("yard up did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
        try:
            yield home, f"http://127.0.0.1:{port}", grpc_port, link
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


class FakeWorker:
    """Just enough of an agent: registers, keeps the lease stream open, heartbeats the attempts it
    holds and sends the reports the benchmark asks for."""

    def __init__(
        self,
        grpc_port: int,
        bootstrap_token: str,
        *,
        name: str = "bench-ui",
        pool: str = "default",
        cpu: int = 64,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        from trainyard.proto.trainyard.v1 import worker_pb2 as pb
        from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pbg

        self.pb = pb
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self.stub = pbg.WorkerServiceStub(self.channel)
        reg = self.stub.Register(
            pb.RegisterRequest(
                name=name,
                hostname=name,
                capacity=pb.Capacity(cpu=cpu, memory=64 << 30, gpu=0),
                pool=pool,
            ),
            metadata=(("authorization", f"Bearer {bootstrap_token}"),),
        )
        self.id = reg.worker_id
        self.md = (("authorization", f"Bearer {reg.worker_token}"),)
        self.assignments: queue.Queue[Any] = queue.Queue()
        self.held: dict[str, Any] = {}
        self.stop = threading.Event()
        self.heartbeat_s = heartbeat_s
        self._stream = self.stub.Lease(pb.LeaseRequest(worker_id=self.id), metadata=self.md)
        threading.Thread(target=self._lease, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def _lease(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for msg in self._stream:
                if msg.HasField("assignment"):
                    self.assignments.put(msg.assignment)

    def _beat(self) -> None:
        pb = self.pb
        while not self.stop.wait(self.heartbeat_s):
            running = [
                pb.RunningAttempt(job_id=a.job_id, attempt=a.attempt, lease_token=a.lease_token)
                for a in list(self.held.values())
            ]
            with contextlib.suppress(grpc.RpcError):
                self.stub.Heartbeat(pb.HeartbeatRequest(worker_id=self.id, running=running), metadata=self.md)

    def take(self, job_id: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            a = self.assignments.get(timeout=max(0.01, deadline - time.monotonic()))
            self.held[a.job_id] = a
            if a.job_id == job_id:
                return a

    def started(self, a: Any) -> float:
        pb = self.pb
        t0 = time.time()
        self.stub.Report(
            pb.ReportRequest(
                worker_id=self.id,
                job_id=a.job_id,
                attempt=a.attempt,
                lease_token=a.lease_token,
                phase=pb.ReportRequest.STARTED,
                at=t0,
            ),
            metadata=self.md,
        )
        return t0

    def finished(self, a: Any) -> float:
        pb = self.pb
        t0 = time.time()
        self.stub.Report(
            pb.ReportRequest(
                worker_id=self.id,
                job_id=a.job_id,
                attempt=a.attempt,
                lease_token=a.lease_token,
                phase=pb.ReportRequest.FINISHED,
                outcome="succeeded",
                exit_code=0,
                has_exit_code=True,
                at=t0,
            ),
            metadata=self.md,
        )
        self.held.pop(a.job_id, None)
        return t0

    def close(self) -> None:
        self.stop.set()
        self._stream.cancel()
        self.channel.close()


class BulkWorker(FakeWorker):
    """A background worker of pool ``bulk``: reports every attempt it is given as started, and holds
    it (listed in its heartbeats) until the benchmark ends."""

    def __init__(self, grpc_port: int, bootstrap_token: str, name: str) -> None:
        super().__init__(grpc_port, bootstrap_token, name=name, pool="bulk", cpu=128, heartbeat_s=5.0)
        threading.Thread(target=self._start_all, daemon=True).start()

    def _start_all(self) -> None:
        while not self.stop.is_set():
            try:
                got = [self.assignments.get(timeout=0.5)]
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while True:
                    got.append(self.assignments.get_nowait())
            # Held (listed in heartbeats) before they are reported one by one: a lease no heartbeat
            # mentions for a while is requeued by the control plane as never delivered.
            for a in got:
                self.held[a.job_id] = a
            for a in got:
                with contextlib.suppress(grpc.RpcError):
                    self.started(a)


def _bring_running(api: httpx.Client, url: str, grpc_port: int, bootstrap: str, n: int) -> list[BulkWorker]:
    """``n`` jobs RUNNING on background workers (1,000 each: 0.1 CPU of 128, 32Mi of 64Gi),
    submitted from 8 threads."""
    workers = [BulkWorker(grpc_port, bootstrap, f"bulk-{i}") for i in range((n + 999) // 1000)]
    body = {"command": ["sleep", "1d"], "resources": {"cpu": 0.1, "memory": "32Mi"}, "pool": "bulk"}
    headers = dict(api.headers)

    def submit(count: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            for _ in range(count):
                c.post("/v1/jobs", json=body).raise_for_status()

    threads = [threading.Thread(target=submit, args=(n // 8 + (i < n % 8),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 600
    while True:
        teams = api.get("/v1/queues").json()["teams"]
        total = sum(int(t["running"]) for t in teams)
        if total >= n or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    if total < n:
        raise RuntimeError(f"only {total} of {n} background jobs reached RUNNING")
    return workers


def ui_latency(jobs: int = 25, running: int = 0) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    lat: list[float] = []
    # At scale an agent beats every few seconds; the measured worker keeps the usual 0.5 s.
    with _yard_up(5.0 if running else HEARTBEAT_S) as (home, url, grpc_port, link), sync_playwright() as pw:
        token = (home / "token").read_text().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        bootstrap = (home / "worker-token").read_text().strip()
        bulk = _bring_running(api, url, grpc_port, bootstrap, running) if running else []
        worker = FakeWorker(grpc_port, bootstrap)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(link)
            page.wait_for_selector("[data-testid=jobs-body]")
            page.wait_for_selector("#live:not([hidden])")
            page.evaluate(OBSERVER)

            def shown(job_id: str, status: str) -> float:
                handle = page.wait_for_function(
                    f"() => window.__t[{job_id!r}] && window.__t[{job_id!r}][{status!r}]", timeout=10_000
                )
                return float(handle.json_value()) / 1000

            for _ in range(jobs):
                body: dict[str, Any] = {"command": ["true"], "resources": {"cpu": 0.1}}
                if running:
                    body["pool"] = "default"  # not the bulk workers'
                job_id = api.post("/v1/jobs", json=body).json()["id"]
                a = worker.take(job_id)
                shown(job_id, "SCHEDULED")  # the row is on the page before the clock starts
                t0 = worker.started(a)
                lat.append((shown(job_id, "RUNNING") - t0) * 1000)
                t0 = worker.finished(a)
                lat.append((shown(job_id, "SUCCEEDED") - t0) * 1000)
        finally:
            browser.close()
            worker.close()
            for w in bulk:
                w.close()
            api.close()
    p50, p99 = _pct(lat, 50), _pct(lat, 99)
    return {
        "value": p99,
        "unit": "ms",
        "p50": p50,
        "p99": p99,
        "n": len(lat),
        "max": max(lat),
        "running": running,
        "note": f"report→DOM, headless Chromium; p50 {p50:.0f} ms, max {max(lat):.0f} ms"
        + (f", {running:,} other jobs running" if running else ""),
    }


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=25, help="measured jobs (two transitions each)")
    ap.add_argument("--running", type=int, default=0, help="other jobs kept RUNNING meanwhile")
    args = ap.parse_args()
    r = ui_latency(args.jobs, args.running)
    print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()})
