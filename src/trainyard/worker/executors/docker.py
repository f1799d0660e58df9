"""The docker executor: an attempt whose job names an ``image`` runs as a container.

Everything goes through the Docker Engine API (the ``docker`` SDK), so any engine that speaks it
works: Docker itself, or Podman's ``podman system service``. The container gets the job's memory,
CPU and pids limits, exactly the job's GPUs, and its work, checkpoint and artifact directories
bind-mounted at the paths they have on the worker, so that ``TRAINYARD_*`` paths (and the
``trainyard.job`` helpers that read them) mean the same inside as outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.types  # type: ignore[import-untyped]
import docker.utils  # type: ignore[import-untyped]
import requests

from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink, StartFailed

log = logging.getLogger(__name__)

LABEL_WORKER = "trainyard.worker"
LABEL_JOB = "trainyard.job_id"
LABEL_ATTEMPT = "trainyard.attempt"

_SIGKILL_EXIT = 128 + signal.SIGKILL
"""A container's exit code when its init was SIGKILLed: by us, by its engine, or by the OOM killer."""

_ULIMIT_RE = re.compile(r"^([a-z]+)=(-?\d+)(?::(-?\d+))?$")


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


def parse_ulimit(text: str) -> Ulimit:
    """``nofile=1024:4096`` or ``nproc=512`` (soft = hard), as ``docker run --ulimit`` takes them."""
    m = _ULIMIT_RE.match(text.strip())
    if m is None:
        raise ValueError(f"ulimit {text!r} must be NAME=SOFT[:HARD], e.g. nofile=1024:4096")
    soft = int(m.group(2))
    hard = int(m.group(3)) if m.group(3) is not None else soft
    return Ulimit(m.group(1), soft, hard)


def worker_label(name: str, work_dir: Path) -> str:
    """This worker's value of the ``trainyard.worker`` label. The work directory is in it as in the
    process executor's cgroup names: two agents of one name on a node must not reap each other's
    containers, and a restarted agent finds its own again."""
    return f"{name}-{hashlib.sha256(str(work_dir).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class DockerSettings:
    host: str
    """The engine's API address: ``unix:///var/run/docker.sock``, Podman's socket, ``tcp://...``."""
    worker: str
    """This worker's label value (``worker_label``): which containers are ours to reap."""
    ulimits: tuple[Ulimit, ...] = ()
    """Set on every container; empty: the engine's defaults. Some engines' defaults exceed what
    their host allows (Podman asks for nofile=1048576 and fails where the hard limit is lower)."""
    pids_limit: int = 0
    """Processes and threads per container; 0: the engine's default."""
    network: bool = True
    """False: no container of this worker gets a network (``network_mode=none``)."""
    data_cache: Path | None = None
    """The data cache's root; each container gets its team's directory of it (``LaunchSpec``)."""
    user: str | None = None
    """Who the job runs as; None: the attempt's user (``LaunchSpec.user``: unprivileged when the agent
    is root), else the agent's uid:gid."""
    api_timeout_s: float = 60.0
    """Per API call; never applies to the log stream or to waiting for the exit."""


@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool = False


@dataclass(frozen=True)
class ContainerPlan:
    """What the container is created with, in our terms (the SDK's untyped ones only at the edge)."""

    image: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    working_dir: str
    user: str
    mounts: tuple[Mount, ...]
    memory: int = 0
    nano_cpus: int = 0
    pids_limit: int = 0
    gpu_ids: tuple[str, ...] = ()
    network_mode: str | None = None
    ulimits: tuple[Ulimit, ...] = field(default=())


def plan_container(spec: LaunchSpec, settings: DockerSettings) -> ContainerPlan:
    """The container an attempt runs in; raises StartFailed for a spec that cannot be one."""
    if not spec.image:
        raise StartFailed("the job names no image")
    if not spec.command:
        raise StartFailed("empty command")
    env = dict(spec.env)
    env["TRAINYARD_CHECKPOINT_DIR"] = str(spec.checkpoint_dir)
    env["TRAINYARD_ARTIFACT_DIR"] = str(spec.artifact_dir)
    if spec.resume_dir is not None:
        env["TRAINYARD_RESUME_FROM"] = str(spec.resume_dir)
    else:
        env.pop("TRAINYARD_RESUME_FROM", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The engine's GPU hook shows the container only its requested GPUs, renumbered from 0: host
    # indices in CUDA_VISIBLE_DEVICES would name devices that are not there. Where the NVIDIA runtime is
    # the default one, CUDA images (NVIDIA_VISIBLE_DEVICES=all) would see every GPU of the node unless
    # a CPU job says "void".
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(spec.gpu_indices)))
    if spec.gpu_indices:
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_indices)
    else:
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    mounts = [Mount(spec.checkpoint_dir, spec.checkpoint_dir), Mount(spec.artifact_dir, spec.artifact_dir)]
    work = spec.attempt_dir / "work"
    if work.is_dir():
        mounts.append(Mount(work, work))
    if spec.cwd not in (work, spec.checkpoint_dir, spec.artifact_dir):
        # A submit directory on the worker (Slurm's convention): readable, as the process sandbox has it.
        if not spec.cwd.is_dir():
            raise StartFailed(f"working directory not found: {spec.cwd}")
        mounts.append(Mount(spec.cwd, spec.cwd, read_only=True))
    if spec.resume_dir is not None:
        mounts.append(Mount(spec.resume_dir, spec.resume_dir, read_only=True))
    if spec.data_cache is not None and spec.data_cache.is_dir():
        mounts.append(Mount(spec.data_cache, spec.data_cache))
    return ContainerPlan(
        image=spec.image,
        argv=spec.command,
        env=env,
        labels={
            LABEL_WORKER: settings.worker,
            LABEL_JOB: spec.job_id,
            LABEL_ATTEMPT: str(spec.attempt),
        },
        working_dir=str(spec.cwd),
        user=settings.user or ("{}:{}".format(*spec.user) if spec.user else f"{os.getuid()}:{os.getgid()}"),
        mounts=tuple(mounts),
        memory=max(0, spec.memory),
        nano_cpus=max(0, round(spec.cpu * 1e9)),
        pids_limit=max(0, settings.pids_limit),
        gpu_ids=tuple(str(i) for i in spec.gpu_indices),
        network_mode="none" if not (spec.network and settings.network) else None,
        ulimits=settings.ulimits,
    )


class EngineError(Exception):
    """The engine refused a call or could not be reached; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def gone(self) -> bool:
        """The container no longer exists: Docker answers 404, Podman sometimes 500 "no such container"."""
        return self.status == 404 or "no such container" in str(self).lower()


@dataclass(frozen=True)
class ContainerExit:
    code: int
    oom_killed: bool
    removed: bool = False
    """Gone before its exit could be read: killed by whoever removed it."""


_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


def _engine_error(e: BaseException) -> EngineError:
    if isinstance(e, docker.errors.APIError):
        status = cast(int | None, e.status_code)
        explanation = e.explanation
        text = explanation.decode(errors="replace") if isinstance(explanation, bytes) else explanation
        return EngineError(str(text or e), status)
    return EngineError(str(e))


def host_config_args(plan: ContainerPlan) -> dict[str, Any]:
    """The container's HostConfig, as the SDK's ``create_host_config`` takes it."""
    return dict(
        mounts=[
            docker.types.Mount(str(m.target), str(m.source), type="bind", read_only=m.read_only)
            for m in plan.mounts
        ],
        mem_limit=plan.memory or None,
        # The same as the memory limit: no swap, so that a job over its limit is OOM-killed (as in
        # its cgroup under the process executor) rather than slowed down.
        memswap_limit=plan.memory or None,
        nano_cpus=plan.nano_cpus or None,
        pids_limit=plan.pids_limit or None,
        device_requests=[
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(plan.gpu_ids), capabilities=[["gpu"]])
        ]
        if plan.gpu_ids
        else None,
        network_mode=plan.network_mode,
        ulimits=[docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in plan.ulimits] or None,
    )


class Engine:
    """The few Engine API calls the executor makes, typed. Every method blocks: call it from a thread."""

    def __init__(self, host: str, timeout_s: float) -> None:
        self.host = host
        self._timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._podman: bool | None = None

    def _api(self) -> Any:
        # Made on first use, not at agent start: the client asks the engine for its API version when
        # made, and an engine that is down then must only fail the jobs that need it, later.
        with self._lock:
            if self._client is None:
                try:
                    self._client = docker.APIClient(
                        base_url=self.host, version="auto", timeout=self._timeout_s, max_pool_size=64
                    )
                except _ENGINE_ERRORS as e:
                    raise _engine_error(e) from e
            return self._client

    def _call(self, method: str, *args: object, **kwargs: object) -> Any:
        api = self._api()
        try:
            return getattr(api, method)(*args, **kwargs)
        except _ENGINE_ERRORS as e:
            raise _engine_error(e) from e

    def ping(self) -> None:
        self._call("ping")

    def is_podman(self) -> bool:
        if self._podman is None:
            components = self._call("version").get("Components") or []
            self._podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
        return self._podman

    def has_image(self, image: str) -> bool:
        try:
            self._call("inspect_image", image)
        except EngineError as e:
            if e.status == 404:
                return False
            raise
        return True

    def pull(self, image: str) -> None:
        repo, tag = docker.utils.parse_repository_tag(image)  # a digest is a "tag" here too
        # A failed pull still answers 200: the engine says what went wrong inside the progress stream.
        for message in self._call("pull", repo, tag=tag or "latest", stream=True, decode=True):
            if isinstance(message, dict) and message.get("error"):
                raise EngineError(str(message["error"]), 404)

    def create(self, plan: ContainerPlan) -> str:
        host_config = self._call("create_host_config", **host_config_args(plan))
        created = self._call(
            "create_container",
            plan.image,
            # The job's argv is what runs, as under the process executor: it replaces the image's
            # entrypoint (Kubernetes' `command`), no shell in between.
            entrypoint=list(plan.argv),
            command=[],
            environment=dict(plan.env),
            labels=dict(plan.labels),
            working_dir=plan.working_dir,
            user=plan.user,
            host_config=host_config,
            # Not the agent's ~/.docker proxies: the job's environment is the spec's.
            use_config_proxy=False,
        )
        return str(created["Id"])

    def attach(self, cid: str) -> Iterator[tuple[bytes | None, bytes | None]]:
        """The container's output from its start, stdout and stderr apart, until it exits."""
        stream = self._call("attach", cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        return cast(Iterator[tuple[bytes | None, bytes | None]], stream)

    def start(self, cid: str) -> None:
        self._call("start", cid)

    def inspect(self, cid: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("inspect_container", cid))

    def wait_exit(self, cid: str) -> ContainerExit:
        # No timeout: this returns when the job ends, however long it runs.
        result = self._call("wait", cid, timeout=None)
        try:
            state = self.inspect(cid).get("State") or {}
        except EngineError as e:
            if not e.gone:
                raise
            # Removed by someone else while it ran (Podman's wait then says 0): it did not end by itself.
            return ContainerExit(code=_SIGKILL_EXIT, oom_killed=False, removed=True)
        code = state.get("ExitCode")
        if not isinstance(code, int):
            code = int(result.get("StatusCode", -1))
        return ContainerExit(code=code, oom_killed=bool(state.get("OOMKilled")))

    def kill(self, cid: str, sig: str | int) -> None:
        try:
            self._call("kill", cid, signal=sig)
        except EngineError as e:
            # 404: gone; 409 (Docker) or 500 (Podman): not running any more. Either way it is stopped.
            log.debug("kill %s %s: %s", cid[:12], sig, e)

    def remove(self, cid: str) -> None:
        try:
            self._call("remove_container", cid, force=True, v=True)
        except EngineError as e:
            if not e.gone:
                raise

    def labelled(self, label: str, value: str) -> list[tuple[str, dict[str, str]]]:
        """(id, labels) of every container, running or not, that carries ``label=value``."""
        found = self._call("containers", all=True, filters={"label": f"{label}={value}"})
        return [(str(c["Id"]), {str(k): str(v) for k, v in (c.get("Labels") or {}).items()}) for c in found]


def _describe_start_error(spec: LaunchSpec, e: EngineError) -> str:
    text = str(e)
    lowered = text.lower()
    # Only when the error names the command: a missing mount source also says "no such file".
    named = spec.command[0] in text
    if "executable file not found" in lowered or (named and "no such file or directory" in lowered):
        return f"command not found in image {spec.image}: {spec.command[0]} ({text})"
    if named and "permission denied" in lowered:
        return f"command not executable in image {spec.image}: {spec.command[0]} ({text})"
    return f"cannot start container of image {spec.image}: {text}"


def _close(stream: object) -> None:
    """Give the attach stream's connection back (the SDK's stream has ``close``)."""
    close = getattr(stream, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


class _Watcher:
    """Follows one container on a thread of its own: its output, then its exit.

    A thread per container rather than the loop's default executor: the log stream blocks for the
    job's whole run, and a handful of long jobs would otherwise take every worker thread the agent's
    short blocking calls (artifact hashing, unpacking) need.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Engine,
        cid: str,
        stream: Iterator[tuple[bytes | None, bytes | None]],
        sink: LogSink,
    ) -> None:
        self._loop = loop
        self._engine = engine
        self._cid = cid
        self._stream = stream
        self._sink = sink
        self._sink_failed = False
        self.exited: asyncio.Future[ContainerExit] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"container {cid[:12]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _write(self, fd: int, data: bytes) -> None:
        try:
            self._sink.write(fd, data)
        except Exception:
            # A full disk must not end the job: it keeps running, unlogged.
            if not self._sink_failed:
                log.exception("cannot store output of container %s; dropping it", self._cid[:12])
            self._sink_failed = True

    def _post(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the agent is gone, nobody waits for this any more
            return False
        return True

    def _run(self) -> None:
        try:
            # Callbacks run in the order posted, so every chunk is in the sink before the exit is known.
            for out, err in self._stream:
                if out and not self._post(self._write, 1, out):
                    return
                if err and not self._post(self._write, 2, err):
                    return
        except Exception:
            # The stream broke (the engine restarted?): the container may still run; its exit says.
            log.warning("log stream of container %s broke", self._cid[:12], exc_info=True)
        finally:
            _close(self._stream)
        try:
            result = self._engine.wait_exit(self._cid)
        except EngineError as e:
            if e.gone:
                result = ContainerExit(code=_SIGKILL_EXIT, oom_killed=False, removed=True)
            else:
                self._post(self._fail, e)
                return
        except Exception as e:
            # Whatever it was, the handle's waiter must hear of it rather than wait for ever.
            self._post(self._fail, EngineError(f"cannot read the exit of container {self._cid[:12]}: {e!r}"))
            return
        self._post(self._set, result)

    def _set(self, result: ContainerExit) -> None:
        if not self.exited.done():
            self.exited.set_result(result)

    def _fail(self, e: BaseException) -> None:
        if not self.exited.done():
            self.exited.set_exception(e)


class DockerHandle:
    def __init__(
        self, engine: Engine, cid: str, spec: LaunchSpec, watcher: _Watcher, stop_signal: str, pid: int
    ) -> None:
        self._engine = engine
        self.container_id = cid
        self._spec = spec
        self._watcher = watcher
        self._stop_signal = stop_signal
        self._pid = pid
        self._stopped = False
        """We stopped or killed it: a SIGKILL exit is ours, not the OOM killer's."""
        self._killed = False
        self._done: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self._finishing = asyncio.get_running_loop().create_task(self._finish())

    @property
    def pid(self) -> int:
        """The container's init process as the host sees it (0 when the engine did not say)."""
        return self._pid

    async def _finish(self) -> None:
        try:
            result = await asyncio.shield(self._watcher.exited)
        except asyncio.CancelledError:
            self._done.cancel()
            raise
        except Exception as e:
            # Not left behind for the next agent start to find.
            with contextlib.suppress(EngineError):
                await asyncio.to_thread(self._engine.remove, self.container_id)
            self._done.set_exception(e)
            return
        status = self._status(result)
        try:
            await asyncio.to_thread(self._engine.remove, self.container_id)
        except EngineError as e:
            # The next agent start removes it by its labels.
            log.warning("cannot remove container %s: %s", self.container_id[:12], e)
        self._done.set_result(status)

    def _status(self, result: ContainerExit) -> ExitStatus:
        code = result.code
        # 128 + N is how the engine reports a job killed by signal N: report the signal, as the process
        # executor does for a process (the exit code, 128 + N, is the same either way).
        status = ExitStatus(signal=code - 128) if 128 < code <= 128 + 64 else ExitStatus(returncode=code)
        if self._killed and status.signal is None:
            # kill() raced the job's own end, or the engine lost the code when the container went.
            status = ExitStatus(signal=signal.SIGKILL)
        limit = self._spec.memory
        # Podman's OOMKilled reads false even when the OOM killer struck; a SIGKILL that we did not
        # send, to a container with a memory limit, is the OOM killer's.
        oom = result.oom_killed or (
            code == _SIGKILL_EXIT and limit > 0 and not self._stopped and not result.removed
        )
        if oom:
            status = ExitStatus(
                returncode=status.returncode, signal=status.signal, oom=True, memory_limit=max(0, limit)
            )
        return status

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._done)

    async def stop(self, grace_s: float) -> None:
        """The engine's stop, done here so that the grace may be fractional and no thread blocks
        through it: the image's stop signal, then SIGKILL after ``grace_s``."""
        if self._watcher.exited.done():
            return
        self._stopped = True
        await asyncio.to_thread(self._engine.kill, self.container_id, self._stop_signal)
        try:
            await asyncio.wait_for(asyncio.shield(self._watcher.exited), grace_s)
        except TimeoutError:
            await asyncio.to_thread(self._engine.kill, self.container_id, "SIGKILL")
            await asyncio.shield(self._watcher.exited)
        except EngineError:
            return  # wait() reports it

    def kill(self) -> None:
        self._stopped = self._killed = True
        # On a thread, since kill() must not block; the loop's default executor finishes it even when
        # the loop is shutting down.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, self._kill_and_remove)

    def _kill_and_remove(self) -> None:
        # SIGKILL first, so that the exit is recorded as a kill before the container is gone (a forced
        # removal alone may end the engine's wait with status 0); removed here too, in case the agent
        # is on its way out and nothing else will.
        try:
            self._engine.kill(self.container_id, "SIGKILL")
            self._engine.remove(self.container_id)
        except EngineError as e:
            log.warning("cannot kill container %s: %s", self.container_id[:12], e)


class DockerExecutor:
    """Runs attempts as containers of their job's image through the Docker Engine API."""

    def __init__(self, settings: DockerSettings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or Engine(settings.host, settings.api_timeout_s)

    async def start(self, spec: LaunchSpec, sink: LogSink) -> DockerHandle:
        plan = plan_container(spec, self.settings)
        cid = await asyncio.to_thread(self._create, spec, plan)
        try:
            stream, stop_signal, pid = await asyncio.to_thread(self._attach_and_start, spec, cid)
        except BaseException:
            with contextlib.suppress(EngineError):
                await asyncio.to_thread(self.engine.remove, cid)
            raise
        watcher = _Watcher(asyncio.get_running_loop(), self.engine, cid, stream, sink)
        watcher.start()
        return DockerHandle(self.engine, cid, spec, watcher, stop_signal, pid)

    def _create(self, spec: LaunchSpec, plan: ContainerPlan) -> str:
        engine = self.engine
        try:
            if spec.gpu_indices and engine.is_podman():
                # Podman's Docker API accepts DeviceRequests and ignores them (containers/podman#22645):
                # the job would run, and fail or crawl, without the GPUs it was given.
                raise StartFailed(
                    f"the container engine at {engine.host} is Podman, whose Docker API ignores GPU "
                    "device requests: GPU jobs with an image need a Docker engine"
                )
            if not engine.has_image(spec.image):
                log.info("pulling image %s for %s/%d", spec.image, spec.job_id, spec.attempt)
                try:
                    engine.pull(spec.image)
                except EngineError as e:
                    raise StartFailed(f"cannot pull image {spec.image}: {e}") from e
            return engine.create(plan)
        except EngineError as e:
            if e.status is None:
                raise StartFailed(f"cannot reach the container engine at {engine.host}: {e}") from e
            raise StartFailed(f"cannot create a container of image {spec.image}: {e}") from e

    def _attach_and_start(
        self, spec: LaunchSpec, cid: str
    ) -> tuple[Iterator[tuple[bytes | None, bytes | None]], str, int]:
        try:
            # Attached before it starts: not a byte of its output is missed, however fast it exits.
            stream = self.engine.attach(cid)
        except EngineError as e:  # Podman creates the container's process on attach
            raise StartFailed(_describe_start_error(spec, e)) from e
        try:
            self.engine.start(cid)
        except EngineError as e:
            _close(stream)
            raise StartFailed(_describe_start_error(spec, e)) from e
        try:
            info = self.engine.inspect(cid)
        except EngineError:
            info = {}
        stop_signal = str((info.get("Config") or {}).get("StopSignal") or "SIGTERM")
        pid = int((info.get("State") or {}).get("Pid") or 0)
        return stream, stop_signal, pid

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        """Remove (killing them) the containers an earlier run of this worker left; their attempts."""
        try:
            found = self.engine.labelled(LABEL_WORKER, self.settings.worker)
        except EngineError as e:
            log.warning(
                "cannot list this worker's containers at %s (%s): any an earlier run left keep running",
                self.settings.host,
                e,
            )
            return []
        keys: list[tuple[str, int]] = []
        for cid, labels in found:
            try:
                key = (labels[LABEL_JOB], int(labels[LABEL_ATTEMPT]))
            except (KeyError, ValueError):
                key = None
            try:
                self.engine.remove(cid)
            except EngineError as e:
                log.warning("cannot remove container %s left by an earlier run: %s", cid[:12], e)
                continue
            if key is not None:
                log.warning("removed container %s left running by attempt %s/%d", cid[:12], *key)
                keys.append(key)
        return keys
