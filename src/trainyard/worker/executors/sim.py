"""The sim executor: a job's process, simulated, behind the same port as the process executor.

Everything around the job stays real (the agent's lease stream, heartbeats, reports, live log
push, sealed log chunks, checkpoint and artifact uploads through presigned URLs); only the process is
made up. A simulated job costs no process, thread or task: one timer on the event loop that wakes a
few times a second at most, so one agent process can hold thousands of running jobs. It is the
fleet simulator's executor (``yard worker --executor sim --agents N``), after Armada's fake executor.

A job says how it behaves in its environment, ``YARD_SIM`` (``TRAINYARD_`` names are reserved for
the platform by the JobSpec), or in its command, ``sim <behaviour>``; a job that says nothing gets
the fleet's default. The behaviour is a comma list of ``key=value``::

    duration=30s          how long the job runs (default 10s); a range 10s..5m draws one per job
    exit=0                its exit code when it ends by itself (0-255; default 0)
    fail=0.1              chance that an attempt exits 1 instead (drawn per attempt; default 0)
    log_rate=10/s         log lines a second (also /m, /h; default 1/s; 0: silent)
    line_bytes=80         bytes a log line (default 64, newline included)
    stderr=0.1            share of the lines written to stderr (default 0)
    checkpoint_every=10s  writes a checkpoint at this interval (default: never)
    checkpoint_bytes=4k   bytes a checkpoint (default 1k)
    artifact_bytes=1k     bytes of the artifact it leaves when it ends by itself (default 256; 0: none)
    oom_after=5s          killed by the OOM killer after this long (exit 137, reported as oom)
    on_term=checkpoint    on SIGTERM (stop, preempt): ``checkpoint`` writes a checkpoint and exits
                          143; ``ignore`` keeps running until the grace ends and it is killed (137)
    term_delay=0s         how long ``checkpoint`` takes after SIGTERM (past the grace: killed)

Durations are ``500ms``, ``30s``, ``2m``, ``1h`` or plain seconds; sizes ``512``, ``4k``, ``1Mi``.
An attempt that resumes from a checkpoint of an earlier one carries on from the progress saved there:
the job's total run time stays ``duration`` across preemptions, less what a kill lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import signal
from dataclasses import dataclass, fields, replace
from pathlib import Path

from trainyard.model.quantity import parse_duration, parse_memory
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink, StartFailed
from trainyard.worker.slots import OWNER_FILE, SLOTS_DIR, read_owner

log = logging.getLogger(__name__)

ENV = "YARD_SIM"
"""The job's environment variable that holds its simulated behaviour."""
COMMAND = "sim"
"""A command ``sim <behaviour>`` says the same as ``YARD_SIM``."""
CHECKPOINT_FILE = "sim-checkpoint.json"
ARTIFACT_FILE = "sim-result.json"
MIN_TICK_S = 0.25
"""The shortest wait between two wake-ups of one job: lines due meanwhile go out together."""
MAX_LINES_PER_TICK = 10_000
EXIT_TERMINATED = 128 + signal.SIGTERM
"""What a job that checkpoints on SIGTERM exits with (as a shell reports a SIGTERM death)."""


class SimSyntaxError(ValueError):
    """A behaviour that does not parse; the attempt fails to start with this message."""


@dataclass(frozen=True)
class SimBehaviour:
    """A simulated job, from ``YARD_SIM`` (see the module's docstring for the grammar)."""

    duration: tuple[float, float] = (10.0, 10.0)
    """Seconds, as a range: a job draws its own from it (the same for each of its attempts)."""
    exit: int = 0
    fail: float = 0.0
    log_rate: float = 1.0
    """Lines a second."""
    line_bytes: int = 64
    stderr: float = 0.0
    checkpoint_every: float | None = None
    checkpoint_bytes: int = 1024
    artifact_bytes: int = 256
    oom_after: float | None = None
    on_term: str = "checkpoint"
    term_delay: float = 0.0

    def duration_for(self, job_id: str) -> float:
        """The job's run time: drawn from the range with the job id as the seed."""
        low, high = self.duration
        if high <= low:
            return low
        return random.Random(_seed(job_id)).uniform(low, high)

    def fails(self, job_id: str, attempt: int) -> bool:
        return self.fail > 0 and random.Random(_seed(f"{job_id}/{attempt}/fail")).random() < self.fail


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _duration(key: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise SimSyntaxError(f"{key}: {e}") from e


def _size(key: str, value: str) -> int:
    try:
        n = parse_memory(value)
    except ValueError as e:
        raise SimSyntaxError(f"{key}: {value!r} is not a size such as 512, 4k or 1Mi") from e
    if n > 64 << 20:
        raise SimSyntaxError(f"{key}: at most 64Mi")
    return n


def _ratio(key: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError as e:
        raise SimSyntaxError(f"{key}: {value!r} is not a number between 0 and 1") from e
    if not 0.0 <= x <= 1.0:
        raise SimSyntaxError(f"{key}: {value!r} is not a number between 0 and 1")
    return x


_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def _rate(key: str, value: str) -> float:
    count, _, per = value.partition("/")
    try:
        n = float(count)
    except ValueError as e:
        raise SimSyntaxError(f"{key}: {value!r} must look like 10/s, 5/m or 0") from e
    if per and per not in _PER:
        raise SimSyntaxError(f"{key}: {value!r} must look like 10/s, 5/m or 0")
    if not 0 <= n <= 1e6:
        raise SimSyntaxError(f"{key}: {value!r} must be between 0 and 1000000 lines a second")
    return n / _PER[per or "s"]


def parse_sim(text: str, base: SimBehaviour | None = None) -> SimBehaviour:
    """A behaviour from ``key=value,...``; keys not given keep ``base``'s values (the defaults).

    Raises SimSyntaxError naming the key for anything it does not understand."""
    b = base or SimBehaviour()
    changes: dict[str, object] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise SimSyntaxError(f"{item!r} must be key=value")
        if key in changes:
            raise SimSyntaxError(f"{key} is given twice")
        if key == "duration":
            low_s, dots, high_s = value.partition("..")
            low = _duration(key, low_s)
            high = _duration(key, high_s) if dots else low
            if high < low:
                raise SimSyntaxError(f"duration: the range {value!r} ends before it starts")
            changes[key] = (low, high)
        elif key == "exit":
            try:
                code = int(value)
            except ValueError as e:
                raise SimSyntaxError(f"exit: {value!r} is not an exit code (0-255)") from e
            if not 0 <= code <= 255:
                raise SimSyntaxError(f"exit: {value!r} is not an exit code (0-255)")
            changes[key] = code
        elif key in ("fail", "stderr"):
            changes[key] = _ratio(key, value)
        elif key == "log_rate":
            changes[key] = _rate(key, value)
        elif key in ("line_bytes", "checkpoint_bytes", "artifact_bytes"):
            size = _size(key, value)
            if key == "line_bytes" and size < 1:
                raise SimSyntaxError("line_bytes: at least 1")
            changes[key] = size
        elif key in ("checkpoint_every", "oom_after"):
            seconds = _duration(key, value)
            if key == "checkpoint_every" and seconds < MIN_TICK_S:
                raise SimSyntaxError(f"checkpoint_every: at least {MIN_TICK_S}s")
            changes[key] = seconds
        elif key == "term_delay":
            changes[key] = _duration(key, value)
        elif key == "on_term":
            if value not in ("checkpoint", "ignore"):
                raise SimSyntaxError(f"on_term: {value!r} must be checkpoint or ignore")
            changes[key] = value
        else:
            known = ", ".join(f.name for f in fields(SimBehaviour))
            raise SimSyntaxError(f"unknown key {key!r} (known: {known})")
    return replace(b, **changes)  # type: ignore[arg-type]


def behaviour_of(spec: LaunchSpec, default: SimBehaviour) -> SimBehaviour:
    """The attempt's behaviour: ``YARD_SIM`` in its environment, else a ``sim ...`` command, else the
    default. SimSyntaxError for one that does not parse."""
    text = spec.env.get(ENV)
    if text is None and spec.command and spec.command[0] == COMMAND:
        text = ",".join(spec.command[1:])
    return default if text is None else parse_sim(text, default)


# -- one simulated job ---------------------------------------------------------------------------


def _padded(text: str, size: int) -> bytes:
    """``text`` (one line) padded or cut to ``size`` bytes, newline included."""
    data = text.encode()
    if size <= 1:
        return b"\n"[:size]
    if len(data) >= size - 1:
        return data[: size - 1] + b"\n"
    return data + b"." * (size - 1 - len(data)) + b"\n"


def _record(obj: object, size: int) -> bytes:
    """``obj`` as one JSON line, then a padding line up to ``size`` bytes when there is room."""
    data = json.dumps(obj).encode() + b"\n"
    room = size - len(data)
    return data + (b"#" * (room - 1) + b"\n" if room >= 2 else b"")


def _write_atomic(path: Path, data: bytes) -> None:
    """As ``trainyard.job`` saves checkpoints: a temporary name, then a rename into place."""
    tmp = path.with_name(f".tmp-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def resumed_progress(resume_dir: Path | None) -> float:
    """Seconds of work an earlier attempt's checkpoint holds (0 without a readable one)."""
    if resume_dir is None:
        return 0.0
    try:
        raw = (resume_dir / CHECKPOINT_FILE).read_bytes()[:4096]
        progress = float(json.loads(raw.split(b"\n", 1)[0])["progress"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return max(0.0, progress)


class SimJob:
    """One attempt's simulated process: a state machine on event-loop timers (no task, no thread)."""

    def __init__(self, spec: LaunchSpec, sink: LogSink, b: SimBehaviour) -> None:
        self._loop = asyncio.get_running_loop()
        self.spec = spec
        self.b = b
        self._sink = sink
        self.exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self.total_s = b.duration_for(spec.job_id)
        self.resumed_from = min(resumed_progress(spec.resume_dir), self.total_s)
        self.failing = b.fails(spec.job_id, spec.attempt)
        self.checkpoints = 0
        self._started = self._loop.time()
        self._lines = 0
        self._rng = random.Random(_seed(f"{spec.job_id}/{spec.attempt}/lines"))
        self._next_checkpoint = b.checkpoint_every
        self._timer: asyncio.TimerHandle | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._terminating = False
        if self.resumed_from > 0:
            self._out(2, f"sim: resumed from checkpoint at {self.resumed_from:.3f}s of {self.total_s:.3f}s")
        self._tick()

    # -- time ----------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self._loop.time() - self._started

    @property
    def progress(self) -> float:
        """Seconds of the job's work done, earlier attempts' included."""
        return min(self.total_s, self.resumed_from + self._elapsed())

    def _end_in(self) -> float:
        """Seconds of this attempt until it ends by itself."""
        return max(0.0, self.total_s - self.resumed_from)

    # -- output --------------------------------------------------------------------------------

    def _out(self, stream: int, text: str) -> None:
        try:
            self._sink.write(stream, (text + "\n").encode())
        except Exception:
            log.exception("sim %s/%d: cannot store output", self.spec.job_id, self.spec.attempt)

    def _emit_lines(self, upto_s: float) -> None:
        rate = self.b.log_rate
        if rate <= 0:
            return
        due = min(int(upto_s * rate) - self._lines, MAX_LINES_PER_TICK)
        if due <= 0:
            return
        out: dict[int, list[bytes]] = {1: [], 2: []}
        for _ in range(due):
            self._lines += 1
            stream = 2 if self.b.stderr > 0 and self._rng.random() < self.b.stderr else 1
            step = self._lines
            text = f"sim step={step} t={self.resumed_from + step / rate:.2f}s loss={1.0 / (1 + step):.5f}"
            out[stream].append(_padded(text, self.b.line_bytes))
        for stream in (1, 2):
            if out[stream]:
                try:
                    self._sink.write(stream, b"".join(out[stream]))
                except Exception:
                    log.exception("sim %s/%d: cannot store output", self.spec.job_id, self.spec.attempt)

    def _write_checkpoint(self) -> None:
        record = {
            "job": self.spec.job_id,
            "attempt": self.spec.attempt,
            "progress": round(self.progress, 6),
            "n": self.checkpoints + 1,
        }
        try:
            self.spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(
                self.spec.checkpoint_dir / CHECKPOINT_FILE,
                _record(record, self.b.checkpoint_bytes),
            )
        except OSError as e:
            self._out(2, f"sim: cannot write checkpoint: {e}")
            return
        self.checkpoints += 1

    def _write_artifact(self, code: int) -> None:
        if self.b.artifact_bytes <= 0:
            return
        record = {"job": self.spec.job_id, "attempt": self.spec.attempt, "exit": code, "lines": self._lines}
        try:
            self.spec.artifact_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.spec.artifact_dir / ARTIFACT_FILE, _record(record, self.b.artifact_bytes))
        except OSError as e:
            self._out(2, f"sim: cannot write artifact: {e}")

    # -- the state machine ---------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.exited.done():
            return
        t = self._elapsed()
        end = self._end_in()
        oom = self.b.oom_after
        if oom is not None and oom <= t and oom < end:
            self._emit_lines(oom)
            self._exit(ExitStatus(signal=signal.SIGKILL, oom=True, memory_limit=self.spec.memory))
            return
        if t >= end:
            self._emit_lines(end)
            code = 1 if self.failing and self.b.exit == 0 else self.b.exit
            self._write_artifact(code)
            self._out(1 if code == 0 else 2, f"sim: done after {self.progress:.3f}s, exit {code}")
            self._exit(ExitStatus(returncode=code))
            return
        self._emit_lines(t)
        every = self.b.checkpoint_every
        if every is not None and self._next_checkpoint is not None and t >= self._next_checkpoint:
            self._write_checkpoint()
            while self._next_checkpoint <= t:
                self._next_checkpoint += every
        wake = [end]
        if oom is not None:
            wake.append(oom)
        if self._next_checkpoint is not None:
            wake.append(self._next_checkpoint)
        if self.b.log_rate > 0:
            wake.append(max((self._lines + 1) / self.b.log_rate, t + MIN_TICK_S))
        at = max(min(wake), t + 0.001)
        self._timer = self._loop.call_at(self._started + at, self._tick)

    def _exit(self, status: ExitStatus) -> None:
        for timer in (self._timer, self._kill_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._kill_timer = None
        if not self.exited.done():
            self.exited.set_result(status)

    def terminate(self, grace_s: float) -> None:
        """SIGTERM: checkpoint and exit 143 after ``term_delay``, or keep going (``ignore``); in both
        cases killed once ``grace_s`` is over."""
        if self.exited.done() or self._terminating:
            return
        self._terminating = True
        self._kill_timer = self._loop.call_later(max(0.0, grace_s), self.kill)
        if self.b.on_term == "ignore":
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.b.term_delay < grace_s:
            self._timer = self._loop.call_later(self.b.term_delay, self._checkpoint_and_exit)

    def _checkpoint_and_exit(self) -> None:
        self._timer = None
        if self.exited.done():
            return
        self._emit_lines(self._elapsed())
        self._write_checkpoint()
        self._out(2, f"sim: SIGTERM, checkpointed at {self.progress:.3f}s")
        self._exit(ExitStatus(returncode=EXIT_TERMINATED))

    def kill(self) -> None:
        """SIGKILL: over at once, nothing more written."""
        self._exit(ExitStatus(signal=signal.SIGKILL))


class SimHandle:
    """The RunHandle of a simulated attempt."""

    def __init__(self, job: SimJob) -> None:
        self.job = job

    @property
    def pid(self) -> int:
        return 0  # no process: nothing to signal

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self.job.exited)

    async def stop(self, grace_s: float) -> None:
        self.job.terminate(grace_s)
        await asyncio.shield(self.job.exited)

    def kill(self) -> None:
        self.job.kill()


class SimExecutor:
    """Runs every attempt as a simulated process (see the module's docstring)."""

    def __init__(self, default: SimBehaviour | None = None) -> None:
        self.default = default or SimBehaviour()
        self.started = 0
        """Attempts started by this executor (the fleet's own count, for the bench)."""

    async def start(self, spec: LaunchSpec, sink: LogSink) -> SimHandle:
        try:
            b = behaviour_of(spec, self.default)
        except SimSyntaxError as e:
            raise StartFailed(f"{ENV}: {e}") from e
        self.started += 1
        return SimHandle(SimJob(spec, sink, b))

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        """A simulated job dies with its agent: nothing to kill, but the attempts that held a slot
        under an earlier run are reported as such (the agent reports them as infra failures)."""
        found: list[tuple[str, int]] = []
        for owner_file in sorted((work_dir / SLOTS_DIR).glob(f"*/{OWNER_FILE}")):
            held = read_owner(owner_file)
            if held is not None:
                found.append((held[1], held[2]))
        return found
