"""Trainyard benchmarks: print a table and write bench/results.json.

Each scenario starts the real platform (`yard up`, the control plane plus one agent process) from
this interpreter, on free loopback ports, in a temp home. Clients run in this process.

  submit_rate_{sqlite,postgres}  8 concurrent clients POSTing /v1/jobs (jobs/s; p50/p99 latency ms)
  dispatch_latency               submit → the worker reported the process started, idle worker (ms)
  trivial_e2e_rate               500 `true` jobs through one agent, submit to all SUCCEEDED (jobs/s),
                                 jobs not sandboxed (--isolation off): the platform's own overhead
  spawn_floor                    bare rate this machine starts and reaps `true` from Python (jobs/s)
  trivial_e2e_rate_sandboxed     the same with the default --isolation best-effort (bubblewrap and a
                                 cgroup per job), against spawn_floor_sandboxed: `true` started in
                                 the same bwrap sandbox from Python
  status_reads_{postgres,redis}  GET /v1/jobs/{id} from 16 concurrent clients (reads/s; latency ms)
  relay_throughput, event_latency_replicas: see bench/backends.py
  scheduler_cycle                one scheduling decision, 10k pending x 2k workers (ms): bench/scheduler.py
  leader_cycle                   the leader's whole cycle on SQLite at 10k running, 5k pending, 2k workers,
                                 its picture kept between cycles (ms; a full reread in the note):
                                 bench/leader_cycle.py
  heartbeat_cost                 control-plane CPU per heartbeat, 2,000 agents x 5 running (us; SQLite,
                                 Redis and the figures before in the note): bench/heartbeats.py
  simulated_day                  a target-scale day (100k jobs), scheduler vs FIFO (s): bench/simulate.py
  ui_latency                     worker's status report → browser DOM, p99 of 50 (ms): bench/ui_latency.py
  array_submit                   one POST of a 10,000-task array, accepted (ms; SQLite, and PostgreSQL
                                 in the note): bench/arrays.py
  fleet_scale                    200 simulated agents, 1,000 running jobs against `yard server`:
                                 control-plane CPU per job (ms), dispatch p50/p99 of probe jobs at that
                                 load (ms), exactly-once in the note: bench/fleet.py (--long: the
                                 production stack, two replicas, a compressed day, --push; README)
  log_search                     a search of 200,000 indexed log lines as one team's member (ms; SQLite
                                 FTS5, PostgreSQL in the note, with the indexing rate): bench/logsearch.py
  idle_footprint                 `yard up --workers 1` idle on the embedded defaults: RSS of the control
                                 plane and the agent together, first start on a new home (MB; the
                                 restart and PSS in the note): bench/footprint.py
  retention_flatness             the worst big/empty ratio of `yard ls`, GET /v1/jobs/{id}, submit, a
                                 scheduler cycle and /metrics' counts with 200,000 finished jobs of
                                 history, and the prune rate (x): bench/retention.py (--rows 10000000)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from common import free_port, pct, postgres_db, redis_server, ts

from trainyard.worker.sandbox import SandboxSpec, bwrap_argv

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@contextlib.contextmanager
def platform(
    database_url: str | None = None,
    workers: int = 1,
    env_extra: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[httpx.Client]:
    with tempfile.TemporaryDirectory(prefix="ty-bench-") as tmp:
        home = Path(tmp) / "home"
        port, grpc_port = free_port(), free_port()
        while {port, port + 1} & {grpc_port, grpc_port + 1}:  # `--replicas 2` takes the next ports too
            grpc_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
        if database_url:
            env["TRAINYARD_DATABASE_URL"] = database_url
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainyard",
                "up",
                "--home",
                str(home),
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--workers",
                str(workers),
                "--worker-cpus",
                "64",
                "--worker-memory",
                "256Gi",
                "--heartbeat-interval",
                "2",
                *args,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Press Ctrl-C"):
                break
        else:
            raise RuntimeError("yard up did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
        token = (home / "token").read_text().strip()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(client.get("/v1/workers").json()["workers"]) >= workers:
                break
            time.sleep(0.1)
        try:
            yield client
        finally:
            client.close()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


TRIVIAL = {"command": ["true"], "resources": {"cpu": 0.1, "memory": "16Mi"}}


class Poster:
    """A lean keep-alive HTTP client for the load generators: the clients share the machine's two
    cores with the platform, so they should spend as little of them as possible (httpx costs ~3x)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        u = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
        self.headers = {"Authorization": headers["authorization"], "Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def bench_status_reads(client: httpx.Client, clients: int = 16, seconds: float = 5.0) -> dict[str, Any]:
    """GET /v1/jobs/{id} from 16 concurrent keep-alive clients over 200 jobs (the UI/CLI polling load)."""
    ids = [
        client.post("/v1/jobs", json={"command": ["true"], "pool": "nowhere"}).json()["id"]
        for _ in range(200)
    ]
    # The scheduler gives these jobs their pending reason once (a job in a pool that no worker serves
    # wakes it about a second late): wait for that write before warming, so that the reads measure a
    # queue at rest, not the one cycle that lands among them and empties the status cache.
    settle = time.monotonic() + 10
    while (
        client.get(f"/v1/jobs/{ids[-1]}").json().get("pending_reason") is None and time.monotonic() < settle
    ):
        time.sleep(0.05)
    for job_id in ids:  # warm: the first read of each job fills the status cache where there is one
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    base_url, headers = str(client.base_url), dict(client.headers)
    lat: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def run(offset: int) -> None:
        mine = []
        c = Poster(base_url, headers)
        i = offset
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                status, text = c.get(f"/v1/jobs/{ids[i % len(ids)]}")
                mine.append(time.perf_counter() - t0)
                assert status == 200, text
                i += 7
        finally:
            c.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in lat]
    return {
        "value": len(lat) / wall,
        "unit": "reads/s",
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
        "n": len(lat),
    }


def bench_submit(client: httpx.Client, total: int, clients: int = 8) -> dict[str, Any]:
    """Submits only: a job that cannot be placed (pool with no workers) keeps the scheduler out of it."""
    body = {"command": ["true"], "pool": "nowhere"}
    lat: list[float] = []
    lock = threading.Lock()
    per = total // clients
    base_url, headers = str(client.base_url), dict(client.headers)

    payload = json.dumps(body).encode()

    def run() -> None:
        mine = []
        c = Poster(base_url, headers)
        try:
            for _ in range(per):
                t0 = time.perf_counter()
                status, text = c.post("/v1/jobs", payload)
                mine.append(time.perf_counter() - t0)
                assert status == 201, text
        finally:
            c.close()
        with lock:
            lat.extend(mine)

    # Warm up connections and code paths.
    for _ in range(20):
        client.post("/v1/jobs", json=body)
    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in lat]
    return {
        "value": len(lat) / wall,
        "unit": "jobs/s",
        "p50": pct(ms, 50),
        "p99": pct(ms, 99),
        "n": len(lat),
        "latency_unit": "ms",
    }


def bench_dispatch(client: httpx.Client, n: int) -> dict[str, Any]:
    lat = []
    for _ in range(n):
        job = client.post("/v1/jobs", json=TRIVIAL).json()
        while True:
            j = client.get(f"/v1/jobs/{job['id']}").json()
            if j["attempts"] and j["attempts"][0]["started_at"]:
                lat.append((ts(j["attempts"][0]["started_at"]) - ts(j["created_at"])) * 1000)
                break
            time.sleep(0.005)
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] not in ("SUCCEEDED", "FAILED"):
            time.sleep(0.01)
    return {"value": statistics.median(lat), "unit": "ms", "p50": pct(lat, 50), "p99": pct(lat, 99), "n": n}


def bench_trivial(client: httpx.Client, n: int, clients: int = 4) -> dict[str, Any]:
    """Submitted by a few concurrent clients; the clock runs from the first submit to the last finish."""
    base_url, headers = str(client.base_url), dict(client.headers)

    payload = json.dumps(TRIVIAL).encode()

    def run(count: int) -> None:
        c = Poster(base_url, headers)
        try:
            for _ in range(count):
                status, text = c.post("/v1/jobs", payload)
                assert status == 201, text
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(n // clients + (i < n % clients),)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.perf_counter() - t0
    unfinished = {"status": ["PENDING", "SCHEDULED", "RUNNING", "CANCELLING"], "limit": 1}
    while client.get("/v1/jobs", params=unfinished).json()["jobs"]:
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    failed = len(client.get("/v1/jobs", params={"status": "FAILED", "limit": 1000}).json()["jobs"])
    return {
        "value": n / wall,
        "unit": "jobs/s",
        "n": n,
        "submit_seconds": submitted,
        "wall_seconds": wall,
        "failed": failed,
    }


def bench_floor(n: int, sandboxed: bool = False) -> dict[str, Any]:
    argv = ["true"]
    with tempfile.TemporaryDirectory() as tmp:
        if sandboxed:
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise SystemExit("bwrap is missing: `make sandbox` installs it")
            dirs = [Path(tmp) / d for d in ("checkpoints", "artifacts", "work")]
            for d in dirs:
                d.mkdir()
            # The sandbox jobs get: as root, bwrap drops them to nobody through setpriv.
            run_as = (65534, 65534) if os.geteuid() == 0 else None
            spec = SandboxSpec(command=("true",), cwd=dirs[2], writable=dirs, run_as=run_as)
            argv = bwrap_argv(bwrap, dataclasses.replace(spec, setpriv=shutil.which("setpriv") or "setpriv"))
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                subprocess.run(argv, check=True)
            rates.append(n / (time.perf_counter() - t0))
    return {"value": statistics.median(rates), "unit": "jobs/s", "n": n, "runs": 3}


def trivial_against_floor(name: str, floor: dict[str, Any], n: int, sandboxed: bool) -> dict[str, Any]:
    env = None if sandboxed else {"TRAINYARD_ISOLATION": "off"}
    with platform(env_extra=env) as c:
        trivial = bench_trivial(c, n)
    # This shared VM's speed drifts by tens of percent within minutes: compare with the floor
    # measured on both sides of the run, not only minutes before it.
    after = bench_floor(500, sandboxed)["value"]
    base = (floor["value"] + after) / 2
    trivial["baseline"] = {"name": floor["name"], "value": base, "before": floor["value"], "after": after}
    trivial["ratio_to_floor"] = trivial["value"] / base
    return {"name": name, **trivial}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submits", type=int, default=2000)
    ap.add_argument("--dispatch", type=int, default=50)
    ap.add_argument("--trivial", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = ap.parse_args()
    if args.quick:
        args.submits, args.dispatch, args.trivial = 400, 10, 100
    only = {s for s in args.only.split(",") if s}

    def wanted(*names: str) -> bool:
        return not only or bool(only & set(names))

    results: list[dict[str, Any]] = []
    floor: dict[str, Any] | None = None
    if wanted("spawn_floor", "trivial_e2e_rate"):
        floor = {"name": "spawn_floor", **bench_floor(500)}
        results.append(floor)
    if wanted("submit_rate_sqlite"):
        with platform() as c:
            results.append({"name": "submit_rate_sqlite", **bench_submit(c, args.submits)})
    if wanted("submit_rate_postgres"):
        with postgres_db() as url, platform(url) as c:
            results.append({"name": "submit_rate_postgres", **bench_submit(c, args.submits)})
    if wanted("dispatch_latency"):
        with platform() as c:
            results.append({"name": "dispatch_latency", **bench_dispatch(c, args.dispatch)})
    if wanted("trivial_e2e_rate") and floor is not None:
        results.append(trivial_against_floor("trivial_e2e_rate", floor, args.trivial, sandboxed=False))
    if wanted("spawn_floor_sandboxed", "trivial_e2e_rate_sandboxed"):
        sandbox_floor = {"name": "spawn_floor_sandboxed", **bench_floor(500, sandboxed=True)}
        results.append(sandbox_floor)
        if wanted("trivial_e2e_rate_sandboxed"):
            results.append(
                trivial_against_floor(
                    "trivial_e2e_rate_sandboxed", sandbox_floor, args.trivial, sandboxed=True
                )
            )
    if wanted("status_reads_postgres"):
        with postgres_db() as url, platform(url) as c:
            results.append({"name": "status_reads_postgres", **bench_status_reads(c)})
    if wanted("status_reads_redis"):
        with (
            redis_server() as rurl,
            postgres_db() as url,
            platform(url, env_extra={"TRAINYARD_REDIS_URL": rurl}) as c,
        ):
            results.append({"name": "status_reads_redis", **bench_status_reads(c)})
    from arrays import array_submit
    from backends import event_latency_replicas, relay_throughput
    from fleet import fleet_scale
    from footprint import idle_footprint
    from heartbeats import heartbeat_cost
    from leader_cycle import leader_cycle
    from logsearch import log_search
    from retention import retention_flatness
    from scheduler import scheduler_cycle
    from simulate import simulated_day
    from ui_latency import ui_latency

    for extra in (
        relay_throughput,
        event_latency_replicas,
        scheduler_cycle,
        leader_cycle,
        heartbeat_cost,
        simulated_day,
        ui_latency,
        array_submit,
        fleet_scale,
        log_search,
        retention_flatness,
        idle_footprint,
    ):
        if wanted(extra.__name__):
            results.append({"name": extra.__name__, **extra()})

    out = HERE / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'metric':<30}{'value':>12}  {'unit':<8}{'p50':>10}{'p99':>10}{'n':>7}  note")
    for r in results:
        note = r.get("note", "")
        if r["name"].startswith("trivial_e2e_rate"):
            note = f"{100 * r['ratio_to_floor']:.0f}% of {r['baseline']['name']}; failed={r['failed']}"
        if r["name"].startswith(("submit_rate", "status_reads")):
            note = "latency in ms"
        p50 = f"{r['p50']:.1f}" if "p50" in r else "-"
        p99 = f"{r['p99']:.1f}" if "p99" in r else "-"
        print(f"{r['name']:<30}{r['value']:>12.1f}  {r['unit']:<8}{p50:>10}{p99:>10}{r['n']:>7}  {note}")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
