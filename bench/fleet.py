"""fleet_scale: the real control plane under a simulated fleet (`yard worker --executor sim`).

The control plane runs as `yard server` process(es), the fleet as one `yard worker --executor sim
--agents N` process, the load (submits, status reads, log followers) from this process: each is
accounted apart (CPU seconds from /proc/<pid>/stat, RSS), since they all share this machine.

Phases: the fleet registers; an idle phase (heartbeats only); a burst of submissions until every job
runs; a hold at that many running jobs, meanwhile a trickle of probe jobs (dispatch latency at that
load), status reads from concurrent clients and a few live log followers (and, in the long mode, a
steady stream of submissions and one kill of the leader replica); then every job ends and each is
checked: it ended exactly once, as its behaviour says, and the fleet started as many attempts as the
control plane recorded.

  python bench/fleet.py                 the short mode (`make bench`'s fleet_scale row): 200 agents,
                                        1,000 running jobs, SQLite, one replica; about two minutes
  python bench/fleet.py --long          the issue's target: 2,000 agents, 10,000 running for 10
                                        minutes, 20 submissions/s, 2,000 status reads/s, PostgreSQL
                                        (and Redis), two replicas, the leader killed once
  python bench/fleet.py --agents 500 --jobs 2500 --hold 60    any size in between
  --profile                             sample the (first) control plane's threads and print where
                                        its time goes

Every figure is one run on a shared 2-core VM whose speed drifts by tens of percent: compare runs
made together, and read the CPU shares, not only the latencies.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import free_port, pct, postgres_db, redis_server, ts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
ACTIVE = ["PENDING", "SCHEDULED", "RUNNING", "CANCELLING"]


# -- processes and their accounting ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (and its reaped children) included."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Proc:
    """A process of the bench: its output in a log file, its CPU read from /proc."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.cpu_before_restart = 0.0
        self._spawn()

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds since the bench started it, earlier incarnations (before a kill) included."""
        now = cpu_seconds(self.pid) if self.proc.poll() is None else 0.0
        return self.cpu_before_restart + now

    def rss(self) -> int:
        return rss_bytes(self.pid) if self.proc.poll() is None else 0

    def kill(self) -> None:
        self.cpu_before_restart += cpu_seconds(self.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self._spawn()

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Replica:
    proc: Proc
    port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


# -- HTTP -----------------------------------------------------------------------------------------


class Poster:
    """A lean keep-alive client (httpx costs ~3x the CPU; the load shares the machine)."""

    def __init__(self, base_url: str, token: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException, TimeoutError):
                self.conn.close()
                if attempt == 2:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def scrape(url: str) -> dict[str, float]:
    """Prometheus text: ``name{labels}`` → value."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, http.client.HTTPException):
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    """Mean, p50 and p99 (bucket upper bounds) of a histogram's observations between two scrapes."""
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
    buckets = []
    for key, value in after.items():
        m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if m:
            buckets.append((float(m.group(1)), value - before.get(key, 0.0)))
    buckets.sort()

    def q(frac: float) -> float:
        for le, n in buckets:
            if n >= frac * count:
                return le
        return float("inf")

    return {
        "n": count,
        "mean_ms": 1000 * total / count if count else float("nan"),
        "p50_ms": 1000 * q(0.5) if count else float("nan"),
        "p99_ms": 1000 * q(0.99) if count else float("nan"),
    }


# -- the control plane's own profile --------------------------------------------------------------

_SAMPLER = r"""
import collections, os, sys, threading, time, atexit, json
_out = os.environ["FLEET_BENCH_PROFILE"]
_main = threading.main_thread().ident
_incl = collections.Counter(); _leaf = collections.Counter(); _n = collections.Counter()
_IDLE = {"select", "wait", "get", "_worker", "poll", "accept", "sleep", "run_forever", "run_until_complete"}
def _where(co): return f"{os.path.basename(co.co_filename)}:{co.co_name}"
def _sample():
    me = threading.get_ident()
    while True:
        time.sleep(0.005)
        for tid, frame in sys._current_frames().items():
            if tid == me: continue
            kind = "loop" if tid == _main else "threads"
            stack = []
            f = frame
            while f is not None and len(stack) < 60:
                stack.append(f.f_code); f = f.f_back
            leaf = stack[0]
            if leaf.co_name in _IDLE and "trainyard" not in leaf.co_filename:
                if not any("trainyard" in c.co_filename or "sqlalchemy" in c.co_filename for c in stack[:3]):
                    _n[kind + " idle"] += 1; continue
            _n[kind] += 1
            _leaf[(kind, _where(leaf))] += 1
            for where in {_where(c) for c in stack if "trainyard" in c.co_filename}:
                _incl[(kind, where)] += 1
def _dump():
    data = {"samples": dict(_n),
            "inclusive": [[k, w, n] for (k, w), n in _incl.most_common(120)],
            "leaf": [[k, w, n] for (k, w), n in _leaf.most_common(40)]}
    with open(_out, "w") as f: json.dump(data, f)
atexit.register(_dump)
threading.Thread(target=_sample, daemon=True, name="bench-sampler").start()
from trainyard.cli.main import main
sys.argv = ["yard", "server"]
main()
"""


def print_profile(path: Path, top: int = 25) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    samples = data["samples"]
    print(f"control plane samples every 5 ms: {samples}")
    for kind in ("loop", "threads"):
        busy = samples.get(kind, 0) or 1
        print(f"  {kind}: where the busy samples are (inclusive, trainyard frames)")
        shown = [(where, n) for k, where, n in data["inclusive"] if k == kind][:top]
        for where, n in shown:
            print(f"    {100 * n / busy:5.1f}%  {where}")
        print(f"  {kind}: innermost frames")
        for where, n in [(where, n) for k, where, n in data["leaf"] if k == kind][:12]:
            print(f"    {100 * n / busy:5.1f}%  {where}")
    return data


# -- the platform -----------------------------------------------------------------------------------


def start_replica(home: Path, env: dict[str, str], name: str, profile: Path | None) -> Replica:
    port, grpc_port = free_port(), free_port()
    full = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TRAINYARD_HOME": str(home),
        "TRAINYARD_PORT": str(port),
        "TRAINYARD_GRPC_PORT": str(grpc_port),
        **env,
    }
    if profile is not None:
        full["FLEET_BENCH_PROFILE"] = str(profile)
        argv = [sys.executable, "-c", _SAMPLER]
    else:
        argv = [sys.executable, "-m", "trainyard", "server"]
    return Replica(Proc(name, argv, full, home.parent / f"{name}.log"), port, grpc_port)


def wait_ready(r: Replica, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.proc.proc.poll() is not None:
            raise RuntimeError(f"{r.proc.name} exited:\n{r.proc.output()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{r.proc.name} did not get ready")


def leader(replicas: list[Replica]) -> Replica | None:
    for r in replicas:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError, KeyError):
            conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=2)
            conn.request("GET", "/healthz")
            if json.loads(conn.getresponse().read())["leader"]:
                return r
    return None


# -- the load -------------------------------------------------------------------------------------


@dataclass
class Config:
    agents: int = 200
    jobs: int = 1000
    hold_s: float = 30.0
    heartbeat_s: float = 5.0
    behaviour: str = "duration=50s..60s,log_rate=1/s,line_bytes=100,checkpoint_every=20s,fail=0.02"
    """What the bulk of the jobs do (YARD_SIM)."""
    probe_every_s: float = 1.0
    """A probe job (dispatch latency at load) this often during the hold."""
    stream_rate: float = 0.0
    """Jobs a second submitted during the hold besides the probes (the long mode's 20/s)."""
    stream_behaviour: str = "duration=20s..40s,log_rate=1/s,line_bytes=100"
    reads_target: float = 0.0
    """Status reads a second to aim at; 0: as many as ``read_clients`` manage."""
    read_clients: int = 16
    read_s: float = 10.0
    followers: int = 4
    postgres: bool = False
    redis: bool = False
    replicas: int = 1
    kill_leader: bool = False
    ramp_s: float = 0.0
    channels: int = 0
    submit_clients: int = 8
    fleet_procs: int = 0
    """Processes the simulated agents are spread over; 0: one per 100 agents. Within one process,
    lease messages reach the agents seconds late once their uploads run at hundreds a second (a
    fleet artifact, see the README): 100 agents a process keeps that out of the figures."""
    profile: bool = False
    idle_s: float = 10.0
    drain_timeout_s: float = 300.0
    expect: dict[str, str] = field(default_factory=dict)


def submit_many(base: str, token: str, bodies: list[bytes], clients: int) -> tuple[list[str], list[float]]:
    """POST every body from ``clients`` threads; returns the ids in order and the latencies (ms)."""
    ids: list[str] = [""] * len(bodies)
    lat: list[float] = []
    lock = threading.Lock()
    nxt = iter(range(len(bodies)))

    def run() -> None:
        c = Poster(base, token)
        mine = []
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    break
                t0 = time.perf_counter()
                status, body = c.request("POST", "/v1/jobs", bodies[i])
                mine.append(1000 * (time.perf_counter() - t0))
                if status != 201:
                    raise RuntimeError(f"submit: {status} {body[:300]!r}")
                ids[i] = json.loads(body)["id"]
        finally:
            c.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids, lat


def job_body(sim: str, **extra: Any) -> bytes:
    return json.dumps(
        {
            "command": ["python", "train.py"],
            "env": {"YARD_SIM": sim},
            "resources": {"cpu": 1, "memory": "1Gi"},
            "retry": {"max_attempts": 1},
            **extra,
        }
    ).encode()


def jobs_by_status(url: str) -> dict[str, float]:
    m = scrape(url)
    out = {}
    for key, v in m.items():
        mm = re.fullmatch(r'trainyard_jobs\{status="([A-Z_]+)"\}', key)
        if mm:
            out[mm.group(1)] = v
    return out


class Reader(threading.Thread):
    """Status reads (GET /v1/jobs/{id}) over the given ids until ``stop``, optionally paced."""

    def __init__(
        self, bases: list[str], token: str, ids: list[str], k: int, pace_s: float, stop: threading.Event
    ):
        super().__init__(daemon=True)
        self.c = Poster(bases[k % len(bases)], token)
        self.ids, self.k, self.pace_s, self.stop_ = ids, k, pace_s, stop
        self.lat: list[float] = []
        self.errors = 0

    def run(self) -> None:
        i = self.k
        nxt = time.perf_counter()
        while not self.stop_.is_set():
            if self.pace_s:
                nxt += self.pace_s
                delay = nxt - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            try:
                status, _ = self.c.request("GET", f"/v1/jobs/{self.ids[i % len(self.ids)]}")
            except Exception:
                status = 0
            self.lat.append(1000 * (time.perf_counter() - t0))
            if status != 200:
                self.errors += 1
            i += 7
        self.c.close()


class Follower(threading.Thread):
    """Follows one job's log live (GET .../logs?follow=true) and counts the bytes."""

    def __init__(self, base: str, token: str, job_id: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.token, self.job_id, self.stop_ = base, token, job_id, stop
        self.bytes = 0
        self.first_byte_s: float | None = None

    def run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        t0 = time.perf_counter()
        try:
            conn.request(
                "GET",
                f"/v1/jobs/{self.job_id}/logs?follow=true",
                headers={"Authorization": f"Bearer {self.token}", "Accept": "text/plain"},
            )
            resp = conn.getresponse()
            while not self.stop_.is_set():
                try:
                    chunk = resp.read1(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                if self.first_byte_s is None:
                    self.first_byte_s = time.perf_counter() - t0
                self.bytes += len(chunk)
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()


@dataclass
class Meter:
    """CPU and RSS of the bench's processes at one instant."""

    at: float
    cpu: dict[str, float]
    rss: dict[str, int]


def meter(procs: list[Proc]) -> Meter:
    """Every process's CPU and RSS, and ``fleet``: the fleet processes' together."""
    me = os.getpid()
    cpu = {p.name: p.cpu() for p in procs}
    cpu["load (this process)"] = cpu_seconds(me)
    rss = {p.name: p.rss() for p in procs}
    rss["load (this process)"] = rss_bytes(me)
    fleets = [p.name for p in procs if p.name.startswith("fleet-")]
    cpu["fleet"] = sum(cpu[n] for n in fleets)
    rss["fleet"] = sum(rss[n] for n in fleets)
    return Meter(time.monotonic(), cpu, rss)


def spent(a: Meter, b: Meter) -> dict[str, float]:
    return {k: b.cpu[k] - a.cpu.get(k, 0.0) for k in b.cpu}


def run(cfg: Config) -> dict[str, Any]:
    t_start = time.monotonic()
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ty-fleet-")))
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ty-fleet-work-", dir=shm)))
        home = tmp / "home"
        home.mkdir()
        env = {"TRAINYARD_HEARTBEAT_INTERVAL": str(cfg.heartbeat_s)}
        if cfg.postgres:
            env["TRAINYARD_DATABASE_URL"] = stack.enter_context(postgres_db("ty_fleet"))
        if cfg.redis:
            env["TRAINYARD_REDIS_URL"] = stack.enter_context(redis_server())
        profile = tmp / "profile.json" if cfg.profile else None
        replicas = [
            start_replica(home, env, f"replica-{k + 1}", profile if k == 0 else None)
            for k in range(cfg.replicas)
        ]
        procs = [r.proc for r in replicas]
        try:
            for r in replicas:
                wait_ready(r)
            token = (home / "token").read_text().strip()
            bases = [r.url for r in replicas]
            fleets = []
            k = cfg.fleet_procs or max(1, -(-cfg.agents // 100))
            for f in range(k):
                n = cfg.agents // k + (f < cfg.agents % k)
                fleets.append(
                    Proc(
                        f"fleet-{f + 1}",
                        [
                            sys.executable,
                            "-m",
                            "trainyard",
                            "worker",
                            "--server",
                            ",".join(r.grpc for r in replicas),
                            "--home",
                            str(home),
                            "--name",
                            f"sim{f + 1}",
                            "--work-dir",
                            str(work / f"sim{f + 1}"),
                            "--executor",
                            "sim",
                            "--agents",
                            str(n),
                            "--sim-ramp",
                            str(cfg.ramp_s),
                            "--sim-channels",
                            str(cfg.channels),
                            "--preempt-grace",
                            "5",
                        ],
                        {**os.environ, "PYTHONUNBUFFERED": "1"},
                        tmp / f"fleet-{f + 1}.log",
                    )
                )
            procs.extend(fleets)
            return _measure(cfg, replicas, fleets, procs, token, bases, profile, t_start)
        finally:
            for p in reversed(procs):
                p.stop()
            if os.environ.get("FLEET_BENCH_KEEP"):
                keep = Path(os.environ["FLEET_BENCH_KEEP"])
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("objects"))
            if profile is not None and profile.exists():
                print_profile(profile)


def _measure(
    cfg: Config,
    replicas: list[Replica],
    fleets: list[Proc],
    procs: list[Proc],
    token: str,
    bases: list[str],
    profile: Path | None,
    t_start: float,
) -> dict[str, Any]:
    from trainyard.worker.executors.sim import parse_sim

    c = Poster(bases[0], token)
    out: dict[str, Any] = {"config": {k: v for k, v in cfg.__dict__.items() if k != "expect"}}
    say = print if sys.stdout.isatty() or os.environ.get("FLEET_BENCH_VERBOSE") else (lambda *a, **k: None)

    # 1. The fleet registers.
    t0 = time.monotonic()
    while True:
        for fleet in fleets:
            if fleet.proc.poll() is not None:
                raise RuntimeError(f"{fleet.name} exited:\n{fleet.output()[-3000:]}")
        alive = sum(w["status"] == "ALIVE" for w in c.get_json("/v1/workers")["workers"])
        if alive >= cfg.agents:
            break
        if time.monotonic() - t0 > 120 + cfg.ramp_s:
            raise RuntimeError(f"only {alive} of {cfg.agents} agents registered")
        time.sleep(0.25)
    out["register_s"] = time.monotonic() - t0
    say(f"{cfg.agents} agents registered in {out['register_s']:.1f}s")

    # 2. Idle: heartbeats only.
    time.sleep(min(3.0, cfg.heartbeat_s))
    m0 = meter(procs)
    time.sleep(cfg.idle_s)
    m1 = meter(procs)
    idle = spent(m0, m1)
    beats = cfg.agents * (m1.at - m0.at) / cfg.heartbeat_s
    cp_idle = sum(idle[r.proc.name] for r in replicas)
    out["idle"] = {
        "seconds": m1.at - m0.at,
        "cpu_s": idle,
        "heartbeats": beats,
        "cp_cpu_ms_per_heartbeat": 1000 * cp_idle / beats,
        "fleet_cpu_ms_per_heartbeat": 1000 * idle["fleet"] / beats,
        "cp_cores": cp_idle / (m1.at - m0.at),
        "fleet_cores": idle["fleet"] / (m1.at - m0.at),
    }
    say(f"idle: control plane {out['idle']['cp_cpu_ms_per_heartbeat']:.2f} ms CPU per heartbeat")

    # 3. The burst: every job submitted, then until each runs.
    bulk = parse_sim(cfg.behaviour)
    m2 = meter(procs)
    t_submit = time.monotonic()
    ids, submit_lat = submit_many(bases[0], token, [job_body(cfg.behaviour)] * cfg.jobs, cfg.submit_clients)
    m_submitted = meter(procs)
    out["submit"] = {
        "cpu_s": spent(m2, m_submitted),
        "jobs": cfg.jobs,
        "seconds": time.monotonic() - t_submit,
        "rate": cfg.jobs / (time.monotonic() - t_submit),
        "p50_ms": pct(submit_lat, 50),
        "p99_ms": pct(submit_lat, 99),
    }
    say(f"submitted {cfg.jobs} in {out['submit']['seconds']:.1f}s")
    while True:
        counts = jobs_by_status(bases[0])
        running = counts.get("RUNNING", 0)
        if running >= cfg.jobs * 0.98 and counts.get("PENDING", 0) + counts.get("SCHEDULED", 0) == 0:
            out["burst_to_running_s"] = time.monotonic() - t_submit
            say(f"{running:.0f} running {out['burst_to_running_s']:.1f}s after the first submit")
            break
        if time.monotonic() - t_submit > 300 or not any(counts.get(s, 0) for s in ACTIVE):
            # Broken: the burst never all ran at once (too slow, or over before the last submit).
            # What was measured so far still says where.
            out["burst_to_running_s"] = None
            out["burst_broke"] = counts
            say(f"the burst never got all running: {counts}")
            break
        time.sleep(0.5)

    # 4. The hold.
    stop = threading.Event()
    m3 = meter(procs)
    scrapes0 = [scrape(b) for b in bases]
    probes: list[str] = []
    probes_during_reads: set[str] = set()
    reading = threading.Event()
    streamed: list[str] = []

    def probe_loop() -> None:
        p = Poster(bases[0], token)
        body = job_body("duration=1s,log_rate=1/s")
        nxt = time.monotonic()
        while not stop.is_set():
            during = reading.is_set()
            status, resp = p.request("POST", "/v1/jobs", body)
            if status == 201:
                probes.append(json.loads(resp)["id"])
                if during or reading.is_set():
                    probes_during_reads.add(probes[-1])
            nxt += cfg.probe_every_s
            stop.wait(max(0.0, nxt - time.monotonic()))
        p.close()

    def stream_loop() -> None:
        p = Poster(bases[0], token)
        body = job_body(cfg.stream_behaviour)
        nxt = time.monotonic()
        while not stop.is_set():
            status, resp = p.request("POST", "/v1/jobs", body)
            if status == 201:
                streamed.append(json.loads(resp)["id"])
            nxt += 1.0 / cfg.stream_rate
            stop.wait(max(0.0, nxt - time.monotonic()))
        p.close()

    helpers = [threading.Thread(target=probe_loop, daemon=True)]
    if cfg.stream_rate > 0:
        helpers.append(threading.Thread(target=stream_loop, daemon=True))
    followers = [Follower(bases[k % len(bases)], token, ids[k * 7], stop) for k in range(cfg.followers)]
    for t in [*helpers, *followers]:
        t.start()
    killed: dict[str, Any] = {}
    hold_end = time.monotonic() + cfg.hold_s
    # Status reads in the middle of the hold.
    time.sleep(min(5.0, cfg.hold_s / 4))
    read_stop = threading.Event()
    pace = cfg.read_clients / cfg.reads_target if cfg.reads_target else 0.0
    readers = [Reader(bases, token, ids, k, pace, read_stop) for k in range(cfg.read_clients)]
    mr0 = meter(procs)
    reading.set()
    for t in readers:
        t.start()
    time.sleep(cfg.read_s)
    read_stop.set()
    for t in readers:
        t.join()
    reading.clear()
    mr1 = meter(procs)
    reads = [x for t in readers for x in t.lat]
    out["status_reads"] = {
        "clients": cfg.read_clients,
        "rate": len(reads) / (mr1.at - mr0.at),
        "target": cfg.reads_target,
        "p50_ms": pct(reads, 50),
        "p99_ms": pct(reads, 99),
        "n": len(reads),
        "errors": sum(t.errors for t in readers),
        "cpu_s": spent(mr0, mr1),
    }
    say(f"status reads: {out['status_reads']['rate']:.0f}/s, p99 {out['status_reads']['p99_ms']:.1f} ms")
    if cfg.kill_leader and len(replicas) > 1:
        victim = leader(replicas)
        if victim is not None:
            t_kill = time.monotonic()
            victim.proc.kill()
            others = [r for r in replicas if r is not victim]
            while leader(others) is None and time.monotonic() - t_kill < 60:
                time.sleep(0.2)
            killed = {"replica": victim.proc.name, "new_leader_after_s": time.monotonic() - t_kill}
            time.sleep(3)
            victim.proc.restart()
            wait_ready(victim)
            say(
                f"killed the leader {victim.proc.name}; "
                f"a new one led after {killed['new_leader_after_s']:.1f}s"
            )
    time.sleep(max(0.0, hold_end - time.monotonic()))
    counts_hold = jobs_by_status(bases[0])
    stop.set()
    for t in [*helpers, *followers]:
        t.join(10)
    m4 = meter(procs)
    scrapes1 = [scrape(b) for b in bases]
    hold = spent(m3, m4)
    hold_s = m4.at - m3.at
    out["hold"] = {
        "seconds": hold_s,
        "running_at_end": counts_hold.get("RUNNING", 0),
        "cpu_s": hold,
        "cores": {k: v / hold_s for k, v in hold.items()},
        "rss_mb": {k: v / 2**20 for k, v in m4.rss.items()},
        "heartbeats": cfg.agents * hold_s / cfg.heartbeat_s,
        "followers": [{"bytes": f.bytes, "first_byte_s": f.first_byte_s} for f in followers],
        "leader_kill": killed,
    }
    out["scheduler_cycle"] = {
        r.proc.name: histogram_delta(a, b, "trainyard_scheduler_cycle_seconds")
        for r, a, b in zip(replicas, scrapes0, scrapes1, strict=True)
    }

    # 5. Every job ends.
    every = ids + probes + streamed
    t_drain = time.monotonic()
    while True:
        counts = jobs_by_status(bases[0])
        active = sum(counts.get(s, 0) for s in ACTIVE)
        if active == 0:
            break
        if time.monotonic() - t_drain > cfg.drain_timeout_s:
            raise RuntimeError(f"jobs never ended: {counts}")
        time.sleep(1.0)
    m5 = meter(procs)
    out["drain_s"] = time.monotonic() - t_drain
    whole = spent(m2, m5)
    jobs_total = len(every)
    out["jobs_total"] = jobs_total
    out["cpu_s"] = whole
    cp_whole = sum(whole[r.proc.name] for r in replicas)
    cp_idle_rate = cp_idle / (m1.at - m0.at)
    out["cp_cpu_ms_per_job"] = 1000 * cp_whole / jobs_total
    out["cp_cpu_ms_per_job_net_of_idle"] = 1000 * (cp_whole - cp_idle_rate * (m5.at - m2.at)) / jobs_total
    out["fleet_cpu_ms_per_job"] = 1000 * whole["fleet"] / jobs_total
    out["rss_mb_peak_seen"] = {k: max(m.rss.get(k, 0) for m in (m1, m3, m4)) / 2**20 for k in m4.rss}

    # 6. Exactly once, and as each job's behaviour says (the fleet says how many it started as it stops).
    for fleet in fleets:
        fleet.stop()
    out["check"] = check(bases[0], token, ids, probes, probes_during_reads, streamed, bulk, fleets)
    out["dispatch_at_load"] = out["check"].pop("probe_dispatch")
    out["dispatch_at_load_all"] = out["check"].pop("probe_dispatch_all")
    out["dispatch_at_load_during_reads"] = out["check"].pop("probe_dispatch_during_reads")
    # The two halves of a dispatch: the control plane's (submit to lease: the scheduler) and the
    # agent's (lease to the job started: the lease stream, the attempt's setup, the STARTED report),
    # which on a simulated fleet includes the fleet process's own load.
    out["submit_to_lease_at_load"] = out["check"].pop("probe_submit_to_lease")
    out["lease_to_start_at_load"] = out["check"].pop("probe_lease_to_start")
    out["wall_s"] = time.monotonic() - t_start
    c.close()
    return out


def check(
    base: str,
    token: str,
    bulk_ids: list[str],
    probes: list[str],
    probes_during_reads: set[str],
    streamed: list[str],
    bulk: Any,
    fleets: list[Proc],
) -> dict[str, Any]:
    """Every job once, in the state its behaviour says; attempts without gaps; one terminal event each;
    the attempts the fleet started equal those the control plane recorded."""
    every = [*bulk_ids, *probes, *streamed]
    jobs: dict[str, Any] = {}
    terminal_events: dict[str, int] = {}
    lock = threading.Lock()
    it = iter(every)

    def work() -> None:
        c = Poster(base, token)
        while True:
            with lock:
                job_id = next(it, None)
            if job_id is None:
                break
            job = c.get_json(f"/v1/jobs/{job_id}")
            events = c.get_json(f"/v1/jobs/{job_id}/events")["events"]
            with lock:
                jobs[job_id] = job
                terminal_events[job_id] = sum(e["to_status"] in FINAL for e in events)
        c.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wrong: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()
    attempts = 0
    requeued = 0
    doubled = 0
    lost = 0
    log_bytes = 0
    for job_id in every:
        job = jobs[job_id]
        att = job["attempts"]
        attempts += len(att)
        outcomes[job["status"]] += 1
        requeued += len(att) > 1
        lost += sum(a["outcome"] == "lost" for a in att)
        doubled += sum(a["outcome"] == "succeeded" for a in att) > 1
        log_bytes += sum(a.get("log_bytes") or 0 for a in att)
        if job_id in set(bulk_ids):
            want = "FAILED" if bulk.fails(job_id, len(att)) else "SUCCEEDED"
        else:
            want = "SUCCEEDED"
        if job["status"] != want:
            wrong.append(
                f"{job_id}: {job['status']}, not {want} ({att[-1]['reason'] if att else 'no attempt'})"
            )
        if [a["number"] for a in att] != list(range(1, len(att) + 1)):
            wrong.append(f"{job_id}: attempts {[a['number'] for a in att]}")
        if terminal_events[job_id] != 1:
            wrong.append(f"{job_id}: {terminal_events[job_id]} terminal events")
    found = [re.findall(r"fleet: stopped after \d+s; (\d+) attempt\(s\) started", f.output()) for f in fleets]
    started_by_fleet = sum(int(m[-1]) for m in found) if all(found) else None
    dispatch: list[float] = []
    dispatch_reads: list[float] = []
    leased: list[float] = []
    started: list[float] = []
    for job_id in probes:
        att = jobs[job_id]["attempts"]
        if att and att[0]["started_at"]:
            ms = 1000 * (ts(att[0]["started_at"]) - ts(jobs[job_id]["created_at"]))
            (dispatch_reads if job_id in probes_during_reads else dispatch).append(ms)
        if att and att[0]["scheduled_at"]:
            leased.append(1000 * (ts(att[0]["scheduled_at"]) - ts(jobs[job_id]["created_at"])))
            if att[0]["started_at"]:
                started.append(1000 * (ts(att[0]["started_at"]) - ts(att[0]["scheduled_at"])))
    return {
        "jobs": len(every),
        "outcomes": dict(outcomes),
        "attempts": attempts,
        "requeued_jobs": requeued,
        "lost_attempts": lost,
        "doubled": doubled,
        "wrong": wrong[:20],
        "wrong_count": len(wrong),
        "exactly_once": not wrong and not doubled,
        "log_bytes": log_bytes,
        "fleet_started_attempts": started_by_fleet,
        "probe_dispatch": _dist(dispatch),
        "probe_dispatch_all": _dist(dispatch + dispatch_reads),
        "probe_dispatch_during_reads": _dist(dispatch_reads),
        "probe_submit_to_lease": _dist(leased),
        "probe_lease_to_start": _dist(started),
    }


def _dist(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50_ms": pct(xs, 50),
        "p99_ms": pct(xs, 99),
        "max_ms": max(xs) if xs else float("nan"),
    }


def summary_row(res: dict[str, Any]) -> dict[str, Any]:
    """The `fleet_scale` row of bench/results.json."""
    cp = [k for k in res["hold"]["cores"] if k.startswith("replica-")]
    cycle = next(iter(res["scheduler_cycle"].values()))
    chk = res["check"]
    once = "ok" if chk["exactly_once"] else f"{chk['wrong_count']} wrong"
    note = (
        f"{res['config']['agents']} agents, {res['hold']['running_at_end']:.0f} running; "
        f"cp {sum(res['hold']['cores'][k] for k in cp):.2f} cores at hold, "
        f"{res['idle']['cp_cpu_ms_per_heartbeat']:.2f} ms/heartbeat; "
        f"lease p50 {res['submit_to_lease_at_load']['p50_ms']:.0f} ms; "
        f"cycle p50 {cycle['p50_ms']:.0f} ms; reads p99 {res['status_reads']['p99_ms']:.0f} ms; "
        f"exactly-once {once}"
    )
    return {
        "value": res["cp_cpu_ms_per_job"],
        "unit": "ms/job",
        "p50": res["dispatch_at_load_all"]["p50_ms"],
        "p99": res["dispatch_at_load_all"]["p99_ms"],
        "n": res["jobs_total"],
        "note": note,
        "latency_unit": "ms (dispatch of probe jobs at load)",
        "detail": res,
    }


def fleet_scale() -> dict[str, Any]:
    """The short mode, for `make bench`."""
    return summary_row(run(Config()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="the issue's target scale (long)")
    ap.add_argument("--agents", type=int)
    ap.add_argument("--jobs", type=int)
    ap.add_argument("--hold", type=float, help="seconds to hold at that many running jobs")
    ap.add_argument("--heartbeat", type=float, help="the control plane's heartbeat interval (s)")
    ap.add_argument("--behaviour", help="YARD_SIM of the bulk of the jobs")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--redis", action="store_true")
    ap.add_argument("--replicas", type=int)
    ap.add_argument("--channels", type=int, help="gRPC channels of the fleet (0: one per 100 agents)")
    ap.add_argument("--ramp", type=float, help="seconds over which the agents start")
    ap.add_argument("--fleet-procs", type=int, help="processes the simulated agents are spread over")
    ap.add_argument("--reads", type=float, help="status reads a second to aim at (0: as fast as possible)")
    ap.add_argument("--read-clients", type=int)
    ap.add_argument("--stream-rate", type=float, help="jobs a second submitted during the hold")
    ap.add_argument("--profile", action="store_true", help="sample the control plane's threads")
    ap.add_argument("--json", type=Path, help="write the full result here")
    args = ap.parse_args()
    cfg = Config()
    if args.long:
        cfg = Config(
            agents=2000,
            jobs=10_000,
            hold_s=600.0,
            heartbeat_s=10.0,
            behaviour="duration=13m..15m,log_rate=1/s,line_bytes=100,checkpoint_every=5m,fail=0.02",
            stream_rate=20.0,
            reads_target=2000.0,
            read_clients=32,
            read_s=60.0,
            followers=24,
            postgres=True,
            redis=True,
            replicas=2,
            kill_leader=True,
            ramp_s=60.0,
            idle_s=30.0,
            drain_timeout_s=1800.0,
        )
    for name, attr in (
        ("agents", "agents"),
        ("jobs", "jobs"),
        ("hold", "hold_s"),
        ("heartbeat", "heartbeat_s"),
        ("behaviour", "behaviour"),
        ("replicas", "replicas"),
        ("channels", "channels"),
        ("ramp", "ramp_s"),
        ("fleet_procs", "fleet_procs"),
        ("reads", "reads_target"),
        ("read_clients", "read_clients"),
        ("stream_rate", "stream_rate"),
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, attr, value)
    cfg.postgres = cfg.postgres or args.postgres
    cfg.redis = cfg.redis or args.redis
    cfg.profile = args.profile
    os.environ.setdefault("FLEET_BENCH_VERBOSE", "1")

    def interrupted(signum: int, frame: object) -> None:
        # The control plane and the fleet run in sessions of their own: unwind, so they are stopped.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    res = run(cfg)
    text = json.dumps(res, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
