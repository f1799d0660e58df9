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
import random
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

from common import free_port, named_children, pct, postgres_db, redis_server, s3_and_kafka, ts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PARTIAL: list[dict[str, Any]] = []
"""The running bench's results so far (printed when it is interrupted)."""
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


class External:
    """A process the bench did not spawn as a Proc (redis-server, moto, tansu): CPU and RSS only."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid
        self.last = 0.0

    def cpu(self) -> float:
        now = cpu_seconds(self.pid)
        if now == now:  # not NaN: still there
            self.last = now
        return self.last

    def rss(self) -> int:
        return rss_bytes(self.pid)


class PgBackends:
    """The PostgreSQL backends serving the bench's database (``postgres: USER DB ...``), together.
    A backend that exits keeps the CPU it was last seen with: connections closed between two samples
    are missed (the control plane's pools keep theirs open)."""

    name = "postgresql (backends)"

    def __init__(self, database: str) -> None:
        self.needle = f" {database} ".encode()
        self.seen: dict[int, float] = {}
        self.alive: set[int] = set()

    def _scan(self) -> None:
        self.alive = set()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                if cmd.startswith(b"postgres: ") and self.needle in cmd:
                    pid = int(d)
                    c = cpu_seconds(pid)
                    if c == c:
                        self.seen[pid] = c
                        self.alive.add(pid)

    def cpu(self) -> float:
        self._scan()
        return sum(self.seen.values())

    def rss(self) -> int:
        # Shared buffers are counted in every backend's RSS: the sum would say nothing.
        return 0


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
    if after.get(f"{name}_count", 0.0) < before.get(f"{name}_count", 0.0):
        before = {}  # the replica was restarted in between: its counters began again
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
    stream_behaviour: str = "duration=5s..15s,log_rate=1/s,line_bytes=100"
    """At 20/s, some 200 running besides the bulk."""
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
    kafka_s3: bool = False
    """Kafka (tansu, its log in S3) and S3 (moto) as `yard up --services` starts them; else the
    in-process bus and the local object store."""
    agent_cpus: float = 8.0
    spot_fraction: float = 0.0
    day_jobs: int = 0
    """A compressed day after the hold: this many jobs of mixed behaviour (see ``day_body``)."""
    day_wall_s: float = 1800.0
    """The day's wall-clock budget: submissions over its first 60 %, the rest to finish."""
    day_reclaims: int = 8
    """Spot reclaims in the day: each drains two spot agents at once (deadline 0s)."""
    push: list[int] = field(default_factory=list)
    """Running-job targets to push on to after the day, until something breaks."""
    idle_s: float = 10.0
    drain_timeout_s: float = 300.0
    expect: dict[str, str] = field(default_factory=dict)


def wait_drained(base: str, cfg: Config) -> None:
    """Until no job is active. A drain that still moves is waited for; one where no job has ended for
    ``drain_timeout_s`` or a job's longest run (with room for a retry), whichever is longer, is stuck."""
    from trainyard.worker.executors.sim import parse_sim

    longest = max(parse_sim(b).duration[1] for b in (cfg.behaviour, cfg.stream_behaviour))
    stall_s = max(cfg.drain_timeout_s, longest + 120.0)
    last_active, moved = -1, time.monotonic()
    while True:
        counts = jobs_by_status(base)
        active = sum(counts.get(s, 0) for s in ACTIVE)
        if active == 0:
            return
        if active != last_active:
            last_active, moved = active, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            raise RuntimeError(f"jobs never ended (none ended for {stall_s:.0f}s): {counts}")
        time.sleep(1.0)


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


def meter(procs: list[Any]) -> Meter:
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
        externals: list[Any] = []
        db_url = f"sqlite:///{home / 'trainyard.db'}"
        if cfg.postgres:
            db_url = env["TRAINYARD_DATABASE_URL"] = stack.enter_context(postgres_db("ty_fleet"))
            externals.append(PgBackends(db_url.rsplit("/", 1)[1]))
        if cfg.redis or cfg.kafka_s3:
            env["TRAINYARD_REDIS_URL"] = stack.enter_context(redis_server())
        if cfg.kafka_s3:
            if not cfg.postgres:
                raise SystemExit("--kafka-s3 runs on PostgreSQL (--postgres)")
            services, _ = stack.enter_context(
                s3_and_kafka(tmp / "services", db_url, env["TRAINYARD_REDIS_URL"])
            )
            env.update(services)
        externals.extend(External(name, pid) for name, pid in named_children().items())
        profile = tmp / "profile.json" if cfg.profile else None
        replicas: list[Replica] = []
        procs: list[Any] = []
        fleets: list[Proc] = []
        try:
            # One after the other: replicas sharing a home race to create its secrets (O_EXCL), and
            # the loser exits.
            for k in range(cfg.replicas):
                replicas.append(start_replica(home, env, f"replica-{k + 1}", profile if k == 0 else None))
                procs.append(replicas[-1].proc)
                wait_ready(replicas[-1])
            token = (home / "token").read_text().strip()
            bases = [r.url for r in replicas]
            # The replicas' own CPU with no agent at all (leader loops, polling), so that the idle
            # phase's CPU per heartbeat can be given net of it.
            c0, w0 = sum(r.proc.cpu() for r in replicas), time.monotonic()
            time.sleep(BASELINE_S)
            baseline_cores = (sum(r.proc.cpu() for r in replicas) - c0) / (time.monotonic() - w0)
            k = cfg.fleet_procs or max(1, -(-cfg.agents // 100))
            for f in range(k):
                n = cfg.agents // k + (f < cfg.agents % k)
                argv = [
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
                    "--cpus",
                    str(cfg.agent_cpus),
                    "--memory",
                    f"{int(cfg.agent_cpus * 4)}Gi",
                    "--sim-ramp",
                    str(cfg.ramp_s),
                    "--sim-channels",
                    str(cfg.channels),
                    "--preempt-grace",
                    "5",
                ]
                if cfg.spot_fraction > 0:
                    argv += ["--sim-spot-fraction", str(cfg.spot_fraction)]
                fleets.append(
                    Proc(
                        f"fleet-{f + 1}",
                        argv,
                        {**os.environ, "PYTHONUNBUFFERED": "1"},
                        tmp / f"fleet-{f + 1}.log",
                    )
                )
            procs.extend(fleets)
            procs.extend(externals)
            ctx = Ctx(
                cfg, replicas, fleets, procs, token, bases, profile, t_start, db_url, work, baseline_cores
            )
            return _measure(ctx)
        finally:
            for p in reversed(procs):
                if isinstance(p, Proc):
                    # A fleet stopping hands every running job back (checkpointed): give it time.
                    p.stop(timeout=300.0 if p in fleets else 60.0)
            if os.environ.get("FLEET_BENCH_KEEP"):
                keep = Path(os.environ["FLEET_BENCH_KEEP"])
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("objects", "services"))
            if profile is not None and profile.exists():
                print_profile(profile)


@dataclass
class Ctx:
    cfg: Config
    replicas: list[Replica]
    fleets: list[Proc]
    procs: list[Any]
    token: str
    bases: list[str]
    profile: Path | None
    t_start: float
    db_url: str
    work: Path
    baseline_cores: float = 0.0
    """The replicas' CPU (cores) before any agent started."""


BASELINE_S = 5.0


def _measure(ctx: Ctx) -> dict[str, Any]:
    from trainyard.worker.executors.sim import parse_sim

    cfg, replicas, fleets, procs, token, bases = (
        ctx.cfg,
        ctx.replicas,
        ctx.fleets,
        ctx.procs,
        ctx.token,
        ctx.bases,
    )
    t_start = ctx.t_start

    c = Poster(bases[0], token)
    out: dict[str, Any] = {"config": {k: v for k, v in cfg.__dict__.items() if k != "expect"}}
    PARTIAL.clear()
    PARTIAL.append(out)
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
        "cp_cores_without_agents": ctx.baseline_cores,
        "cp_cpu_ms_per_heartbeat_net": 1000 * (cp_idle - ctx.baseline_cores * (m1.at - m0.at)) / beats,
        "fleet_cpu_ms_per_heartbeat": 1000 * idle["fleet"] / beats,
        "cp_cores": cp_idle / (m1.at - m0.at),
        "fleet_cores": idle["fleet"] / (m1.at - m0.at),
    }
    say(
        f"idle: control plane {out['idle']['cp_cpu_ms_per_heartbeat']:.2f} ms CPU per heartbeat "
        f"({out['idle']['cp_cpu_ms_per_heartbeat_net']:.2f} ms beyond its "
        f"{ctx.baseline_cores:.3f} cores with no agents)"
    )

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
    submit_errors: list[float] = []
    sampler = Sampler(bases, procs)
    sampler.start()

    def probe_loop() -> None:
        p = Poster(bases[0], token)
        # Preemptible, as the stream's jobs: spot agents may take them too.
        body = job_body("duration=1s,log_rate=1/s", preemptible=True)
        nxt = time.monotonic()
        while not stop.is_set():
            during = reading.is_set()
            try:
                status, resp = p.request("POST", "/v1/jobs", body)
            except (OSError, http.client.HTTPException):
                status, resp = 0, b""  # the replica was killed: the next one goes through
                submit_errors.append(time.monotonic())
            if status == 201:
                probes.append(json.loads(resp)["id"])
                if during or reading.is_set():
                    probes_during_reads.add(probes[-1])
            nxt += cfg.probe_every_s
            stop.wait(max(0.0, nxt - time.monotonic()))
        p.close()

    def stream_loop() -> None:
        p = Poster(bases[0], token)
        body = job_body(cfg.stream_behaviour, preemptible=True)
        nxt = time.monotonic()
        while not stop.is_set():
            try:
                status, resp = p.request("POST", "/v1/jobs", body)
            except (OSError, http.client.HTTPException):
                status, resp = 0, b""
                submit_errors.append(time.monotonic())
            if status == 201:
                streamed.append(json.loads(resp)["id"])
            nxt += 1.0 / cfg.stream_rate
            stop.wait(max(0.0, nxt - time.monotonic()))
        p.close()

    helpers = [threading.Thread(target=probe_loop, daemon=True)]
    if cfg.stream_rate > 0:
        helpers.append(threading.Thread(target=stream_loop, daemon=True))
    followers = [
        Follower(bases[k % len(bases)], token, ids[(k * 7) % len(ids)], stop) for k in range(cfg.followers)
    ]
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
        "submit_errors": len(submit_errors),
        "submitted_during_hold": len(probes) + len(streamed),
        "live_log_bytes": live_log_bytes(scrapes0, scrapes1),
        "outbox_lag_max": sampler.lag_max("hold"),
    }
    out["scheduler_cycle"] = {
        r.proc.name: histogram_delta(a, b, "trainyard_scheduler_cycle_seconds")
        for r, a, b in zip(replicas, scrapes0, scrapes1, strict=True)
    }

    # 5. Every job ends.
    every = ids + probes + streamed
    t_drain = time.monotonic()
    wait_drained(bases[0], cfg)
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

    sampler.phase = "day"
    if cfg.day_jobs:
        out["day"] = day(ctx, sampler)
    sampler.phase = "push"
    if cfg.push:
        out["push"] = push(ctx, sampler)
    sampler.stop_.set()
    out["heartbeats_missed"] = sampler.missed_total()
    out["database"] = database_size(ctx.db_url)

    # 6. Exactly once, and as each job's behaviour says (the fleet says how many it started as it stops).
    for fleet in fleets:
        fleet.stop(timeout=300.0)
    out["exactly_once_db"] = sql_check(ctx.db_url, ctx.work)
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
    out["samples"] = sampler.rows
    c.close()
    return out


# -- the long mode's phases and measures ------------------------------------------------------------


def live_log_bytes(before: list[dict[str, float]], after: list[dict[str, float]]) -> float | None:
    """Log bytes the control plane's replicas took on their live path (PushLogs) between two scrapes:
    ``trainyard_log_live_bytes_total`` where the control plane exports it, else None."""
    name = "trainyard_log_live_bytes_total"
    if not any(name in a for a in after):
        return None
    total = 0.0
    for a, b in zip(before, after, strict=True):
        x, y = a.get(name, 0.0), b.get(name, 0.0)
        total += y - x if y >= x else y
    return total


class Sampler(threading.Thread):
    """Every 5 s: jobs by status, the outbox's backlog (events committed, not yet in Kafka: the bus's
    lag), workers declared dead, each process's RSS; tagged with the phase."""

    def __init__(self, bases: list[str], procs: list[Any], every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.bases, self.procs, self.every_s = bases, procs, every_s
        self.phase = "hold"
        self.rows: list[dict[str, Any]] = []
        self.stop_ = threading.Event()
        self.missed: dict[str, float] = {}

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_.wait(self.every_s):
            scrapes = {b: scrape(b) for b in self.bases}
            lags = [m["trainyard_outbox_lag"] for m in scrapes.values() if "trainyard_outbox_lag" in m]
            by_status: dict[str, float] = {}
            for key, v in next((m for m in scrapes.values() if m), {}).items():
                mm = re.fullmatch(r'trainyard_jobs\{status="([A-Z_]+)"\}', key)
                if mm:
                    by_status[mm.group(1)] = v
            for b, m in scrapes.items():
                n = m.get("trainyard_worker_heartbeats_missed_total")
                if n is not None:
                    self.missed[b] = max(self.missed.get(b, 0.0), n)
            self.rows.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "phase": self.phase,
                    "running": by_status.get("RUNNING", 0),
                    "pending": by_status.get("PENDING", 0),
                    "outbox_lag": max(lags) if lags else None,
                    "rss_mb": {p.name: round(p.rss() / 2**20) for p in self.procs if p.rss()},
                }
            )

    def lag_max(self, phase: str) -> float | None:
        lags = [r["outbox_lag"] for r in self.rows if r["phase"] == phase and r["outbox_lag"] is not None]
        return max(lags) if lags else None

    def missed_total(self) -> float:
        return sum(self.missed.values())

    def rss_peak_mb(self, phase: str) -> dict[str, int]:
        peak: dict[str, int] = {}
        for r in self.rows:
            if r["phase"] == phase:
                for k, v in r["rss_mb"].items():
                    peak[k] = max(peak.get(k, 0), v)
        return peak


def day_body(i: int) -> tuple[bytes, str]:
    """Job ``i`` of the compressed day and the status it must end in: mostly short jobs (seconds to a
    minute), a third long preemptible ones that checkpoint (minutes; spot capacity takes them, urgent
    jobs preempt them), failing ones, urgent ones, and 1 % gangs of 2-4 replicas."""
    r = random.Random(i).random()
    if r < 0.01:
        k = 2 + i % 3
        return job_body("duration=20s..60s,log_rate=0.2/s", replicas=k, preemptible=True), "SUCCEEDED"
    if r < 0.04:
        return job_body("duration=2s..20s,exit=2,log_rate=1/s"), "FAILED"
    if r < 0.06:
        return job_body("duration=5s..30s,log_rate=0.5/s", priority="urgent"), "SUCCEEDED"
    if r < 0.36:
        behaviour = "duration=1m..4m,checkpoint_every=15s,log_rate=0.1/s,line_bytes=100"
        return job_body(behaviour, priority="low", preemptible=True), "SUCCEEDED"
    return job_body("duration=3s..60s,log_rate=0.2/s,line_bytes=100", preemptible=True), "SUCCEEDED"


def day(ctx: Ctx, sampler: Sampler) -> dict[str, Any]:
    """A compressed day: ``day_jobs`` jobs submitted at an even rate over the first 60 % of
    ``day_wall_s`` from 8 clients, spot agents reclaimed now and then (drained with no deadline:
    their jobs checkpoint and are requeued), until every one of them has ended or the wall is up."""
    cfg, say = ctx.cfg, print
    n = cfg.day_jobs
    submit_s = 0.6 * cfg.day_wall_s
    rate = n / submit_s
    bodies = [day_body(i) for i in range(n)]
    ids: list[str] = [""] * n
    errors: list[str] = []
    m0 = meter(ctx.procs)
    t0 = time.monotonic()
    lock = threading.Lock()
    nxt = iter(range(n))
    scr0 = [scrape(b) for b in ctx.bases]

    def submitter(k: int) -> None:
        c = Poster(ctx.bases[k % len(ctx.bases)], ctx.token)
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                break
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status, body = c.request("POST", "/v1/jobs", bodies[i][0])
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, str(e).encode()
            if status == 201:
                ids[i] = json.loads(body)["id"]
            else:
                errors.append(f"{status} {body[:200]!r}")
        c.close()

    threads = [threading.Thread(target=submitter, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    # Spot reclaims, spread over the submissions.
    admin = Poster(ctx.bases[0], ctx.token)
    reclaimed: list[str] = []
    for r in range(cfg.day_reclaims):
        at = t0 + submit_s * (r + 1) / (cfg.day_reclaims + 1)
        while time.monotonic() < at:
            time.sleep(min(1.0, at - time.monotonic()))
        with contextlib.suppress(RuntimeError, OSError, http.client.HTTPException):
            workers = admin.get_json("/v1/workers")["workers"]
            spot = [
                w
                for w in workers
                if w["status"] == "ALIVE" and w.get("labels", {}).get("spot") == "true" and w.get("running")
            ]
            for w in spot[:2]:
                status, _ = admin.request("POST", f"/v1/admin/workers/{w['id']}/drain", b'{"deadline": "0s"}')
                if status == 200:
                    reclaimed.append(w["name"])
    for t in threads:
        t.join()
    t_submitted = time.monotonic()
    say(
        f"day: {n} submitted in {t_submitted - t0:.0f}s ({len(errors)} errors), "
        f"{len(reclaimed)} spot agents reclaimed"
    )
    submitted = [i for i in ids if i]
    final_sql = _final_counter(ctx.db_url)
    deadline = t0 + cfg.day_wall_s
    while True:
        ended = final_sql(submitted)
        if ended >= len(submitted) or time.monotonic() > deadline:
            break
        time.sleep(5.0)
    t_end = time.monotonic()
    m1 = meter(ctx.procs)
    scr1 = [scrape(b) for b in ctx.bases]
    spent_ = spent(m0, m1)
    wall = t_end - t0
    outcomes = _statuses(ctx.db_url, submitted)
    want = {ids[i]: bodies[i][1] for i in range(n) if ids[i]}
    wrong = [
        f"{j}: {outcomes.get(j)} not {w}"
        for j, w in want.items()
        if outcomes.get(j) in FINAL and outcomes[j] != w
    ]
    res = {
        "jobs": n,
        "submitted": len(submitted),
        "submit_errors": len(errors),
        "submit_error_sample": errors[:3],
        "rate_aimed": rate,
        "submit_s": t_submitted - t0,
        "wall_s": wall,
        "all_ended": ended >= len(submitted),
        "ended": ended,
        "outcomes": dict(collections.Counter(outcomes.values())),
        "wrong_outcome": len(wrong),
        "unfinished": len(submitted) - ended,
        "wrong_sample": wrong[:10],
        "spot_reclaimed": reclaimed,
        "cpu_s": spent_,
        "cores": {k: v / wall for k, v in spent_.items()},
        "cpu_ms_per_job": {k: 1000 * v / max(1, len(submitted)) for k, v in spent_.items()},
        "rss_mb_peak": sampler.rss_peak_mb("day"),
        "outbox_lag_max": sampler.lag_max("day"),
        "live_log_bytes": live_log_bytes(scr0, scr1),
        "scheduler_cycle": {
            r.proc.name: histogram_delta(a, b, "trainyard_scheduler_cycle_seconds")
            for r, a, b in zip(ctx.replicas, scr0, scr1, strict=True)
        },
        "preemptions": {
            k: sum(b.get(k, 0.0) - a.get(k, 0.0) for a, b in zip(scr0, scr1, strict=True))
            for k in {k for m in scr1 for k in m if k.startswith("trainyard_preemptions_total")}
        },
    }
    say(
        f"day: {res['ended']}/{len(submitted)} ended in {wall:.0f}s; outcomes {res['outcomes']}; "
        f"{len(wrong)} not as their behaviour says"
    )
    admin.close()
    return res


def _engine(db_url: str) -> Any:
    import sqlalchemy as sa

    from trainyard.store.sql import normalize_url

    return sa.create_engine(normalize_url(db_url), poolclass=sa.pool.NullPool)


def _final_counter(db_url: str) -> Any:
    import sqlalchemy as sa

    eng = _engine(db_url)

    def count(ids: list[str]) -> int:
        n = 0
        with eng.connect() as c:
            for k in range(0, len(ids), 5000):
                chunk = ids[k : k + 5000]
                n += c.execute(
                    sa.text("SELECT count(*) FROM jobs WHERE status IN :f AND id IN :ids").bindparams(
                        sa.bindparam("f", expanding=True), sa.bindparam("ids", expanding=True)
                    ),
                    {"f": sorted(FINAL), "ids": chunk},
                ).scalar_one()
        return n

    return count


def _statuses(db_url: str, ids: list[str]) -> dict[str, str]:
    import sqlalchemy as sa

    out: dict[str, str] = {}
    eng = _engine(db_url)
    with eng.connect() as c:
        for k in range(0, len(ids), 5000):
            rows = c.execute(
                sa.text("SELECT id, status FROM jobs WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"ids": ids[k : k + 5000]},
            )
            out.update({r[0]: r[1] for r in rows})
    eng.dispose()
    return out


def push(ctx: Ctx, sampler: Sampler) -> dict[str, Any]:
    """Push on to each running target in turn (long jobs, submitted from 8 clients) and stop at the
    first that breaks: a process exits, workers are declared dead, submissions fail, or the target
    is not all running within its time."""
    cfg, say = ctx.cfg, print
    levels: list[dict[str, Any]] = []
    behaviour = "duration=2h,log_rate=1/m,line_bytes=100"
    for target in cfg.push:
        running = jobs_by_status(ctx.bases[0]).get("RUNNING", 0)
        want = max(0, int(target - running))
        missed0 = sampler.missed_total()
        m0 = meter(ctx.procs)
        scr0 = [scrape(b) for b in ctx.bases]
        t0 = time.monotonic()
        broke = None
        try:
            submit_many(ctx.bases[0], ctx.token, [job_body(behaviour)] * want, 8)
        except (RuntimeError, OSError, http.client.HTTPException) as e:
            broke = f"submissions failed: {e}"
        limit = 120 + target / 50
        reached = 0.0
        while broke is None:
            counts = jobs_by_status(ctx.bases[0])
            reached = counts.get("RUNNING", 0)
            dead = [p.name for p in ctx.procs if isinstance(p, Proc) and p.proc.poll() is not None]
            if dead:
                broke = f"{', '.join(dead)} exited"
            elif sampler.missed_total() > missed0:
                n_dead = sampler.missed_total() - missed0
                broke = f"{n_dead:.0f} live agents declared dead (heartbeats not handled in time)"
            elif (
                reached >= 0.98 * target
                and counts.get("PENDING", 0) + counts.get("SCHEDULED", 0) < 0.02 * target
            ):
                break
            elif time.monotonic() - t0 > limit:
                broke = f"not all running after {limit:.0f}s: {counts}"
            time.sleep(2.0)
        m1 = meter(ctx.procs)
        level = {
            "target": target,
            "reached": reached,
            "seconds": time.monotonic() - t0,
            "broke": broke,
            "cores": {k: v / (m1.at - m0.at) for k, v in spent(m0, m1).items()},
            "rss_mb": {k: v / 2**20 for k, v in m1.rss.items()},
            "scheduler_cycle": {
                r.proc.name: histogram_delta(a, scrape(r.url), "trainyard_scheduler_cycle_seconds")
                for r, a in zip(ctx.replicas, scr0, strict=True)
            },
            "outbox_lag_now": sampler.rows[-1]["outbox_lag"] if sampler.rows else None,
        }
        levels.append(level)
        say(f"push to {target}: {reached:.0f} running after {level['seconds']:.0f}s; broke: {broke}")
        if broke:
            break
    return {"levels": levels, "first_break": next((x["broke"] for x in levels if x["broke"]), None)}


def database_size(db_url: str) -> dict[str, Any]:
    """The database's size, its rows, and the size scaled to 100,000 jobs."""
    import sqlalchemy as sa

    eng = _engine(db_url)
    out: dict[str, Any] = {}
    with eng.connect() as c:
        for table in ("jobs", "job_attempts", "job_events", "outbox", "log_chunks", "audit_log"):
            with contextlib.suppress(sa.exc.DBAPIError):
                out[f"{table}_rows"] = c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
        if eng.dialect.name == "postgresql":
            size = c.execute(sa.text("SELECT pg_database_size(current_database())")).scalar_one()
        else:
            size = Path(db_url.removeprefix("sqlite:///")).stat().st_size
    eng.dispose()
    out["bytes"] = size
    jobs = out.get("jobs_rows") or 0
    out["mb_per_100k_jobs"] = size / 2**20 * 100_000 / jobs if jobs else None
    return out


def sql_check(db_url: str, work: Path) -> dict[str, Any]:
    """Exactly-once over every job in the database, against the fleet's own records of what it ran
    (``sim-attempts.jsonl`` of each fleet process): each job that ended has exactly one terminal
    event, attempts numbered without gaps, at most one that succeeded; each attempt the control plane
    saw start was started by the fleet exactly once, and the fleet started none it did not record."""
    import sqlalchemy as sa

    eng = _engine(db_url)
    with eng.connect() as c:
        status = dict(c.execute(sa.text("SELECT id, status FROM jobs")).all())
        attempts = c.execute(
            sa.text("SELECT job_id, number, outcome, started_at, exit_code, reason FROM job_attempts")
        ).all()
        terminal = dict(
            c.execute(
                sa.text(
                    "SELECT job_id, count(*) FROM job_events WHERE to_status IN :f GROUP BY job_id"
                ).bindparams(sa.bindparam("f", expanding=True)),
                {"f": sorted(FINAL)},
            ).all()
        )
    eng.dispose()
    by_job: dict[str, list[Any]] = collections.defaultdict(list)
    for a in attempts:
        by_job[a[0]].append(a)
    ran: collections.Counter[tuple[str, int]] = collections.Counter()
    exits: dict[tuple[str, int], int | None] = {}
    files = sorted(work.glob("*/sim-attempts.jsonl"))
    for f in files:
        for line in f.read_text().splitlines():
            r = json.loads(line)
            ran[(r["job_id"], r["attempt"])] += 1
            exits[(r["job_id"], r["attempt"])] = r["exit"]
    started_db = {(a[0], a[1]) for a in attempts if a[3] is not None}
    all_db = {(a[0], a[1]) for a in attempts}
    unseen = (set(ran) & all_db) - started_db
    last_run: dict[str, int] = {}
    for j, n in ran:
        last_run[j] = max(n, last_run.get(j, 0))
    bad_terminal = [j for j, st in status.items() if (terminal.get(j, 0) != 1) if st in FINAL] + [
        j for j, st in status.items() if st not in FINAL and terminal.get(j, 0)
    ]
    gaps = [j for j, att in by_job.items() if sorted(a[1] for a in att) != list(range(1, len(att) + 1))]
    doubled = [j for j, att in by_job.items() if sum(a[2] == "succeeded" for a in att) > 1]
    exit_mismatch = [
        k
        for k, a in (((a[0], a[1]), a) for a in attempts)
        if a[4] is not None and k in exits and exits[k] is not None and exits[k] != a[4]
    ]
    res = {
        "jobs": len(status),
        "by_status": dict(collections.Counter(status.values())),
        "attempts": len(attempts),
        "lost_attempts": sum(a[2] == "lost" for a in attempts),
        "preempted_attempts": sum(a[2] == "preempted" for a in attempts),
        "fleet_files": len(files),
        "fleet_started": sum(ran.values()),
        "run_twice_by_fleet": sum(n > 1 for n in ran.values()),
        "started_in_db_not_by_fleet": len(started_db - set(ran)),
        "run_by_fleet_unknown_to_db": len(set(ran) - all_db),
        "run_by_fleet_not_marked_started": len(unseen),
        # The work ran twice, though the control plane recorded one start: an attempt it never saw
        # start (its lease given up first) that the fleet ran anyway, and another attempt after it.
        "ran_again_after_unseen_start": len({j for j, n in unseen if last_run[j] > n}),
        "terminal_events_wrong": len(bad_terminal),
        "attempt_gaps": len(gaps),
        "succeeded_twice": len(doubled),
        "exit_code_mismatch": len(exit_mismatch),
        "samples": (bad_terminal + gaps)[:10],
        "succeeded_twice_sample": {
            j: [f"#{a[1]} {a[2]} ({a[5]})" for a in sorted(by_job[j], key=lambda a: a[1])]
            for j in doubled[:5]
        },
        "lost_reasons": dict(collections.Counter(str(a[5])[:60] for a in attempts if a[2] == "lost")),
    }
    res["exactly_once"] = bool(files) and not (
        res["run_twice_by_fleet"]
        or res["started_in_db_not_by_fleet"]
        or res["run_by_fleet_unknown_to_db"]
        or res["terminal_events_wrong"]
        or res["attempt_gaps"]
        or res["succeeded_twice"]
    )
    return res


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
    if not res["exactly_once_db"]["exactly_once"]:
        once += ", not against the fleet's records"
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


def _fmt(x: Any, spec: str = ".0f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def print_table(res: dict[str, Any]) -> None:
    """The figures the issue asks for, one row each (the JSON has everything)."""
    cfg, hold, idle = res["config"], res["hold"], res["idle"]
    rows: list[tuple[str, str]] = []
    rows.append(
        (
            "agents / jobs running at the end of the hold",
            f"{cfg['agents']} / {hold['running_at_end']:.0f} (the burst: {cfg['jobs']}, the rest streamed)",
        )
    )
    for name in sorted(k for k in hold["cores"] if k not in ("fleet",)):
        rows.append(
            (
                f"hold: {name}",
                f"{hold['cores'][name]:.2f} cores, RSS {_fmt(res['rss_mb_peak_seen'].get(name))} MB",
            )
        )
    rows.append(
        (
            "hold: fleet processes together",
            f"{hold['cores']['fleet']:.2f} cores, RSS {_fmt(hold['rss_mb'].get('fleet'))} MB",
        )
    )
    total = sum(v for k, v in hold["cores"].items() if k != "fleet" and not k.startswith("fleet-"))
    total += hold["cores"]["fleet"]
    rows.append(
        (
            "hold: agents' share of the CPU used",
            f"{100 * hold['cores']['fleet'] / total:.0f} % of {total:.2f} cores",
        )
    )
    rows.append(
        (
            "CPU per heartbeat (idle fleet)",
            f"control plane {idle['cp_cpu_ms_per_heartbeat']:.2f} ms, fleet "
            f"{idle['fleet_cpu_ms_per_heartbeat']:.2f} ms; control plane net of its CPU with no agents "
            f"({idle.get('cp_cores_without_agents', 0.0):.3f} cores) "
            f"{idle.get('cp_cpu_ms_per_heartbeat_net', float('nan')):.2f} ms",
        )
    )
    rows.append(("control-plane CPU per job (burst + hold + drain)", f"{res['cp_cpu_ms_per_job']:.1f} ms"))
    rows.append(("fleet CPU per job", f"{res['fleet_cpu_ms_per_job']:.1f} ms"))
    d = res["dispatch_at_load_all"]
    rows.append(
        (
            "dispatch at hold, p50 / p99 (probe jobs)",
            f"{_fmt(d['p50_ms'])} / {_fmt(d['p99_ms'])} ms (n={d['n']})",
        )
    )
    for name, cyc in res["scheduler_cycle"].items():
        if cyc["n"]:
            rows.append(
                (
                    f"scheduler cycle at hold ({name})",
                    f"mean {_fmt(cyc['mean_ms'])} ms, p50 ≤ {_fmt(cyc['p50_ms'])}, p99 ≤ "
                    f"{_fmt(cyc['p99_ms'])} ms (n={cyc['n']:.0f})",
                )
            )
    sr = res["status_reads"]
    rows.append(
        (
            "status reads",
            f"{sr['rate']:.0f}/s of {sr['target']:.0f} aimed, p50 {sr['p50_ms']:.1f} ms, p99 "
            f"{sr['p99_ms']:.1f} ms, {sr['errors']} errors",
        )
    )
    lb = hold.get("live_log_bytes")
    out_bytes = res["check"]["log_bytes"]
    rows.append(
        (
            "log bytes through the control plane's live path (hold)",
            f"{_fmt(lb)} (the jobs wrote {out_bytes} in all)"
            if lb is not None
            else f"no trainyard_log_live_bytes_total; every byte of the {out_bytes} the jobs wrote is "
            f"pushed live",
        )
    )
    fol = [f for f in hold["followers"] if f["first_byte_s"] is not None]
    rows.append(
        (
            "live followers with bytes / first byte p50",
            f"{len(fol)} of {len(hold['followers'])} / "
            f"{_fmt(pct([f['first_byte_s'] for f in fol], 50), '.2f')} s",
        )
    )
    k = hold.get("leader_kill") or {}
    if k:
        rows.append(
            (
                "leader killed",
                f"{k['replica']}; the other led after {k['new_leader_after_s']:.1f} s; "
                f"{hold.get('submit_errors', 0)} submissions failed meanwhile",
            )
        )
    rows.append(("Kafka lag (outbox backlog) max, hold", _fmt(hold.get("outbox_lag_max"))))
    if "day" in res:
        day_ = res["day"]
        rows.append(
            (
                "day: jobs ended / submitted / wall",
                f"{day_['ended']} / {day_['submitted']} / {day_['wall_s']:.0f} s (budget "
                f"{cfg['day_wall_s']:.0f} s)",
            )
        )
        rows.append(
            (
                "day: outcomes",
                f"{day_['outcomes']}; {day_['wrong_outcome']} ended otherwise than their behaviour says, "
                f"{day_['unfinished']} unfinished at the wall",
            )
        )
        cpj = day_["cpu_ms_per_job"]
        rows.append(
            (
                "day: CPU ms per job",
                ", ".join(f"{n} {v:.1f}" for n, v in cpj.items() if not n.startswith("fleet-")),
            )
        )
        rows.append(
            (
                "day: Kafka lag max / preemptions / spot reclaimed",
                f"{_fmt(day_['outbox_lag_max'])} / {day_['preemptions']} / "
                f"{len(day_['spot_reclaimed'])} agents; "
                f"{res['exactly_once_db']['preempted_attempts']} attempts preempted in the whole run",
            )
        )
    db = res["database"]
    rows.append(
        (
            "database size per 100k jobs",
            f"{_fmt(db.get('mb_per_100k_jobs'))} MB ({db['bytes'] / 2**20:.0f} MB for "
            f"{db.get('jobs_rows')} jobs, {db.get('job_events_rows')} events)",
        )
    )
    eo = res["exactly_once_db"]
    rows.append(
        (
            "exactly-once (DB vs the fleet's records)",
            f"{'ok' if eo['exactly_once'] else 'NO'}: {eo['jobs']} jobs, {eo['attempts']} attempts, "
            f"fleet started {eo['fleet_started']}; twice {eo['run_twice_by_fleet']}, lost "
            f"{eo['lost_attempts']}, unknown {eo['run_by_fleet_unknown_to_db']}, terminal wrong "
            f"{eo['terminal_events_wrong']}",
        )
    )
    rows.append(("heartbeats missed (live agents declared dead)", _fmt(res.get("heartbeats_missed"))))
    if "push" in res:
        for lv in res["push"]["levels"]:
            rows.append(
                (
                    f"push to {lv['target']}",
                    f"{lv['reached']:.0f} running after {lv['seconds']:.0f} s; broke: {lv['broke']}",
                )
            )
    rows.append(("wall", f"{res['wall_s']:.0f} s"))
    width = max(len(a) for a, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | --- |")
    for a, b in rows:
        print(f"| {a.ljust(width)} | {b} |")


def fleet_scale() -> dict[str, Any]:
    """The short mode, for `make bench`."""
    return summary_row(run(Config()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--long", action="store_true", help="the issue's target scale (long)")
    ap.add_argument("--agents", type=int)
    ap.add_argument("--jobs", "--running", type=int, help="jobs of the burst: the running count held")
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
    ap.add_argument("--followers", type=int, help="live log followers during the hold")
    ap.add_argument("--read-seconds", type=float, help="how long the status readers run in the hold")
    ap.add_argument("--kafka-s3", action="store_true", help="Kafka (tansu) and S3 (moto) (needs --postgres)")
    ap.add_argument("--kill-leader", action="store_true", help="SIGKILL the leader replica once mid-hold")
    ap.add_argument(
        "--day-jobs", type=int, help="a compressed day of this many jobs after the hold (0: none)"
    )
    ap.add_argument("--day-wall", type=float, help="the day's wall-clock budget in seconds (default 1800)")
    ap.add_argument("--spot-fraction", type=float, help="share of the agents that are spot")
    ap.add_argument("--agent-cpus", type=float, help="CPUs each simulated agent declares (default 8)")
    ap.add_argument("--idle", type=float, help="seconds of the idle (heartbeats only) phase")
    ap.add_argument(
        "--push",
        nargs="?",
        const="20000,50000",
        help="after the day, push on to these running counts (default 20000,50000) until something breaks",
    )
    ap.add_argument("--profile", action="store_true", help="sample the control plane's threads")
    ap.add_argument("--json", type=Path, help="write the full result here")
    args = ap.parse_args()
    cfg = Config()
    if args.long:
        # Sized for this 2-core machine; `--agents 2000 --running 10000` is the figure.
        hold = args.hold if args.hold is not None else 600.0
        cfg = Config(
            agents=500,
            jobs=2500,
            hold_s=hold,
            heartbeat_s=10.0,
            # The bulk runs through the hold and ends soon after it.
            behaviour=f"duration={hold + 60:.0f}s..{hold + 120:.0f}s,log_rate=1/s,line_bytes=100,"
            "checkpoint_every=5m,fail=0.02",
            stream_rate=20.0,
            reads_target=2000.0,
            read_clients=32,
            read_s=60.0,
            followers=24,
            postgres=True,
            redis=True,
            kafka_s3=True,
            replicas=2,
            kill_leader=True,
            ramp_s=60.0,
            idle_s=30.0,
            drain_timeout_s=1800.0,
            spot_fraction=0.25,
            day_jobs=100_000,
            day_wall_s=1800.0,
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
        ("followers", "followers"),
        ("read_seconds", "read_s"),
        ("day_jobs", "day_jobs"),
        ("day_wall", "day_wall_s"),
        ("spot_fraction", "spot_fraction"),
        ("agent_cpus", "agent_cpus"),
        ("idle", "idle_s"),
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, attr, value)
    cfg.postgres = cfg.postgres or args.postgres
    cfg.redis = cfg.redis or args.redis
    cfg.kafka_s3 = cfg.kafka_s3 or args.kafka_s3
    cfg.kill_leader = cfg.kill_leader or args.kill_leader
    if args.push:
        cfg.push = [int(x) for x in args.push.split(",")]
    cfg.profile = args.profile
    os.environ.setdefault("FLEET_BENCH_VERBOSE", "1")

    def interrupted(signum: int, frame: object) -> None:
        # The control plane and the fleet run in sessions of their own: unwind, so they are stopped.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        res = run(cfg)
    except KeyboardInterrupt:
        # Stopped (a timeout's SIGTERM): what was measured so far still says something.
        if PARTIAL:
            text = json.dumps(PARTIAL[0], indent=2, default=str)
            if args.json:
                args.json.write_text(text + "\n")
            print(text)
        raise
    text = json.dumps(res, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
