"""Many simulated agents in one process: ``yard worker --executor sim --agents N``.

Each agent is the real agent (``Agent``): it registers under its own name and gets its own worker
credential, holds its own lease stream, heartbeats, reports, pushes logs and uploads checkpoints,
artifacts and log chunks through presigned URLs. Only the jobs' processes are simulated (the sim
executor). They all share one event loop, no thread of their own, and a few gRPC channels (each
agent's calls carry its own credential as metadata, so a channel needs no agent of its own); each has
its own HTTP client for the object-store uploads (one TLS context shared).

Agent ``i`` (0-based) of ``N`` is named ``<name>-0001`` .. ``<name>-N`` and works in
``<work dir>/<its name>``; it takes the ``i mod len``-th item of each list given (shapes, pools,
regions), so lists of the same length go together (the GPU shape in the GPU pool); with a spot
fraction ``f``, the agents for which ``floor((i + 1) * f)`` grows are spot (``f = 0.25``: every
fourth). With several control-plane replicas (``--server a:1,b:2``), channel ``k`` starts its list at
replica ``k mod n``, so the agents spread over the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import signal
import ssl
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from trainyard import aio
from trainyard.model.quantity import parse_memory
from trainyard.worker.agent import Agent, RegistrationRefused
from trainyard.worker.config import WorkerConfig
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink
from trainyard.worker.executors.sim import SimBehaviour, SimExecutor, SimHandle
from trainyard.worker.isolation import IsolationMode
from trainyard.worker.rpc import open_channel

log = logging.getLogger(__name__)

DEFAULT_CPUS = 8.0
DEFAULT_MEMORY = 32 << 30
AGENTS_PER_CHANNEL = 100
"""The default share of a gRPC channel (one HTTP/2 connection): see ``FleetSpec.channels``."""
ATTEMPTS_FILE = "sim-attempts.jsonl"
"""Written into the fleet's work directory as it stops: every attempt it started and how it ended."""
_SHAPE_RE = re.compile(r"^\s*([0-9.]+)\s*/\s*([0-9.]+[A-Za-z]*)\s*(?:/\s*(\d+)\s*(?:x\s*([\w.-]+))?)?\s*$")


@dataclass(frozen=True)
class Shape:
    """A simulated node's declared capacity."""

    cpus: float
    memory: int
    gpus: int = 0
    gpu_type: str | None = None


def parse_shape(text: str) -> Shape:
    """``CPUS/MEMORY[/GPUS[xTYPE]]``: ``8/32Gi``, ``16/64Gi/1``, ``96/1Ti/8xa100``; ValueError."""
    m = _SHAPE_RE.match(text)
    if m is None:
        raise ValueError(f"shape {text!r} must look like 8/32Gi or 96/1Ti/8xa100")
    cpus = float(m.group(1))
    memory = parse_memory(m.group(2))
    gpus = int(m.group(3) or 0)
    if cpus <= 0 or memory <= 0:
        raise ValueError(f"shape {text!r}: CPUs and memory must be positive")
    if m.group(4) and gpus == 0:
        raise ValueError(f"shape {text!r}: a GPU type needs GPUs")
    return Shape(cpus, memory, gpus, m.group(4) or None)


def agent_name(prefix: str, i: int, n: int) -> str:
    """``prefix-0001``: agent ``i`` (0-based) of ``n``, numbered from 1 with at least four digits."""
    return f"{prefix}-{i + 1:0{max(4, len(str(n)))}d}"


def is_spot(i: int, fraction: float) -> bool:
    """Agent ``i`` is spot: spread evenly, ``fraction`` of any run of agents."""
    return math.floor((i + 1) * fraction + 1e-9) > math.floor(i * fraction + 1e-9)


@dataclass(frozen=True)
class FleetSpec:
    """What ``yard worker --executor sim --agents N`` runs."""

    base: WorkerConfig
    """Every agent's settings: its ``name`` is the agents' prefix, its ``work_dir`` their parent.
    Declared CPUs, memory and GPUs apply to each agent unless ``shapes`` are given."""
    agents: int = 1
    shapes: tuple[Shape, ...] = ()
    pools: tuple[str, ...] = ()
    """Empty: every agent in ``base.pool``."""
    regions: tuple[str, ...] = ()
    """Empty: every agent in ``base.region``."""
    spot_fraction: float | None = None
    """None: ``base.labels`` decide (``--spot``: all spot)."""
    channels: int = 0
    """gRPC channels (connections) the agents share, round-robin; 0: one per AGENTS_PER_CHANNEL."""
    ramp_s: float = 0.0
    """Agents start spread evenly over this long (a fleet registering in one instant is a storm)."""
    behaviour: SimBehaviour = field(default_factory=SimBehaviour)
    """What a job without ``YARD_SIM`` does."""

    def channel_count(self) -> int:
        if self.channels > 0:
            return min(self.channels, self.agents)
        return max(1, math.ceil(self.agents / AGENTS_PER_CHANNEL))


def fleet_configs(spec: FleetSpec) -> list[WorkerConfig]:
    """One WorkerConfig per simulated agent (see the module's docstring for who gets what)."""
    base = spec.base
    out: list[WorkerConfig] = []
    for i in range(spec.agents):
        # One agent keeps the name and directory it was given.
        name = base.name if spec.agents == 1 else agent_name(base.name, i, spec.agents)
        if spec.shapes:
            shape = spec.shapes[i % len(spec.shapes)]
        else:
            gpus = base.gpus or 0
            shape = Shape(
                base.cpus if base.cpus is not None else DEFAULT_CPUS,
                base.memory if base.memory is not None else DEFAULT_MEMORY,
                gpus,
                base.gpu_type if gpus else None,
            )
        labels = dict(base.labels)
        if spec.spot_fraction is not None:
            labels.pop("spot", None)
            if is_spot(i, spec.spot_fraction):
                labels["spot"] = "true"
        out.append(
            replace(
                base,
                name=name,
                work_dir=base.work_dir if spec.agents == 1 else base.work_dir / name,
                data_cache_dir=None,
                cpus=shape.cpus,
                memory=shape.memory,
                gpus=shape.gpus,
                # Declared: with GPUs and no type, the agent would ask NVML for one.
                gpu_type=shape.gpu_type or ("sim" if shape.gpus else None),
                pool=spec.pools[i % len(spec.pools)] if spec.pools else base.pool,
                region=spec.regions[i % len(spec.regions)] if spec.regions else base.region,
                labels=labels,
                # Nothing to sandbox: a simulated job is no process.
                isolation=IsolationMode.OFF,
                spot_notice_url=None,
                docker_host=None,
            )
        )
    return out


def rotated(server: str, i: int) -> str:
    """A comma list of replicas, starting at the ``i``-th: gRPC's pick_first stays on the first one
    it reaches, so channel ``i`` of a fleet talks to replica ``i mod n`` and fails over to the next
    (a real fleet spreads the same way, each agent with its own list order or a load balancer)."""
    parts = [s.strip() for s in server.split(",") if s.strip()]
    if len(parts) <= 1 or ":///" in server or server.startswith(("ipv4:", "ipv6:", "unix:")):
        return server
    k = i % len(parts)
    return ",".join(parts[k:] + parts[:k])


_CHANNEL_OPTIONS = (
    # A channel of its own connection: otherwise gRPC shares one subchannel among every channel to the
    # same address, and the fleet's channels would all be one connection anyway.
    ("grpc.use_local_subchannel_pool", 1),
)


@dataclass
class AttemptRecord:
    """One attempt the fleet started, as the fleet saw it (not as the control plane recorded it)."""

    job_id: str
    attempt: int
    exit_code: int | None = None
    """None: still running when the fleet stopped (it never is after a clean stop)."""


class RecordingSimExecutor(SimExecutor):
    """The sim executor, keeping its own record of each attempt: the bench's exactly-once check
    compares it with the control plane's (an attempt run twice or never run shows up here)."""

    def __init__(self, default: SimBehaviour | None = None) -> None:
        super().__init__(default)
        self.records: list[AttemptRecord] = []

    async def start(self, spec: LaunchSpec, sink: LogSink) -> SimHandle:
        handle = await super().start(spec, sink)
        rec = AttemptRecord(spec.job_id, spec.attempt)
        self.records.append(rec)

        def ended(fut: asyncio.Future[ExitStatus]) -> None:
            if not fut.cancelled():
                rec.exit_code = fut.result().exit_code

        handle.job.exited.add_done_callback(ended)
        return handle

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps({"job_id": r.job_id, "attempt": r.attempt, "exit": r.exit_code}) + "\n")


class Fleet:
    """The agents of a FleetSpec on one event loop."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self.configs = fleet_configs(spec)
        self.executor = RecordingSimExecutor(spec.behaviour)
        self.agents: list[Agent] = []
        self.refused = 0
        self.lag_max_s = 0.0

    def running(self) -> int:
        """Attempts the agents hold right now."""
        return sum(len(a.runners) for a in self.agents)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every agent until ``stop``; then each stops its jobs (preempted, with a checkpoint)."""
        spec = self.spec
        channels = [
            open_channel(replace(spec.base, server=rotated(spec.base.server, i)), _CHANNEL_OPTIONS)
            for i in range(spec.channel_count())
        ]
        # An HTTP client per agent, as each real agent has: one client shared by hundreds of agents'
        # uploads (a log chunk per running job every few seconds) delayed their lease streams by
        # tens of seconds (see the README's fleet simulation notes). They share one TLS context,
        # the costly part of a client.
        tls = ssl.create_default_context()
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=2)
        async with contextlib.AsyncExitStack() as clients:
            self.agents = []
            for i, cfg in enumerate(self.configs):
                http = await clients.enter_async_context(
                    httpx.AsyncClient(timeout=spec.base.http_timeout_s, limits=limits, verify=tls)
                )
                self.agents.append(
                    Agent(
                        cfg,
                        executor=self.executor,
                        channel=channels[i % len(channels)],
                        http=http,
                        sample_gpus=False,
                        http_connections=limits.max_connections,
                    )
                )
            log.info(
                "fleet: %d simulated agent(s) on %d gRPC channel(s), starting over %gs",
                len(self.agents),
                len(channels),
                spec.ramp_s,
            )
            reporter = asyncio.create_task(self._report_loop(stop))
            lag = asyncio.create_task(self._lag_loop())
            try:
                results = await asyncio.gather(
                    *(self._one(i, a, stop) for i, a in enumerate(self.agents)), return_exceptions=True
                )
            finally:
                reporter.cancel()
                lag.cancel()
                for ch in channels:
                    await ch.close(None)
        failed = [r for r in results if isinstance(r, BaseException)]
        for r in failed[:3]:
            log.error("a simulated agent failed: %r", r)
        if failed and len(failed) == len(results):
            raise failed[0]

    async def _one(self, i: int, agent: Agent, stop: asyncio.Event) -> None:
        if self.spec.ramp_s > 0 and i:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.spec.ramp_s * i / len(self.agents))
            if stop.is_set():
                return
        try:
            await agent.run(stop)
        except RegistrationRefused:
            self.refused += 1
            raise

    async def _lag_loop(self, tick_s: float = 0.1) -> None:
        """The event loop's lateness: every agent shares it, so it says whether the fleet keeps up."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(tick_s)
            self.lag_max_s = max(self.lag_max_s, time.perf_counter() - t0 - tick_s)

    async def _report_loop(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            log.info(
                "fleet: %d agent(s), %d attempt(s) running, %d started; event loop late by up to %.2fs",
                len(self.agents),
                self.running(),
                self.executor.started,
                self.lag_max_s,
            )
            self.lag_max_s = 0.0


async def run_fleet(spec: FleetSpec, stop: asyncio.Event | None = None) -> Fleet:
    """Run the fleet until ``stop`` (forever when None); returns it, its counters final."""
    fleet = Fleet(spec)
    await fleet.run(stop or asyncio.Event())
    return fleet


def main(spec: FleetSpec) -> None:
    """Run the fleet in the foreground: SIGTERM/SIGINT stops it cleanly (every agent hands its jobs
    back, checkpointed); a second one ends it at once."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent_log = logging.getLogger("trainyard.worker.agent")
    if spec.agents > 1 and agent_log.getEffectiveLevel() == logging.INFO:
        # Each agent's routine lines (registered, stopping) times a thousand agents say nothing; the
        # fleet's own lines count them. Warnings stay, and --verbose shows everything.
        agent_log.setLevel(logging.WARNING)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                task.cancel()
            else:
                log.info("%s: stopping %d simulated agent(s)", signal.Signals(signum).name, spec.agents)
                stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        t0 = time.monotonic()
        fleet = await run_fleet(spec, stop)
        record = spec.base.work_dir / ATTEMPTS_FILE
        with contextlib.suppress(OSError):
            spec.base.work_dir.mkdir(parents=True, exist_ok=True)
            fleet.executor.write(record)
        log.info(
            "fleet: stopped after %.0fs; %d attempt(s) started (each in %s)",
            time.monotonic() - t0,
            fleet.executor.started,
            record,
        )

    # uvloop where it is installed: simulated jobs start no processes, so nothing needs asyncio's own.
    with contextlib.suppress(asyncio.CancelledError):
        aio.run(_main())
