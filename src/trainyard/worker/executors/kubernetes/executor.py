"""The executor: one Pod per attempt, watched and its log followed on threads of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainyard.model.podlabels import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_JOB,
    LABEL_WORKER,
    label_value,
)
from trainyard.worker.beneath import chown_tree
from trainyard.worker.executors.base import ExitStatus, InfraFailure, LaunchSpec, LogSink, StartFailed
from trainyard.worker.executors.kubernetes.api import ApiError, PodApi, close_response, log_chunks
from trainyard.worker.executors.kubernetes.pod import NOBODY, KubernetesSettings, plan_pod, plan_secret
from trainyard.worker.executors.kubernetes.status import PodView, exit_status, infra_problem, start_problem

log = logging.getLogger(__name__)


STOP_MARGIN_S = 30.0
"""After a graceful delete, how long past the grace the kubelet may take before the Pod is forced."""
LOG_DRAIN_S = 10.0
"""After the Pod ended, how long its log stream may take to deliver its last bytes."""
LOG_RETRIES = 5
"""Times a broken log stream is followed again while the job runs."""
LOG_EOF_GRACE_S = 15.0
"""After the log stream ended, how long the Pod may take to be seen ended; past it the container is
taken to run on (the API server closed the stream) and its log is followed again."""

# ---- one Pod ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodEnd:
    pod: dict[str, Any]
    """The last state seen."""
    deleted: bool = False


class _PodWatcher:
    """Follows one Pod on threads of its own: its state (a watch), and from its start its log.

    Threads rather than the loop's default executor: both calls block for the job's whole run, and a
    handful of long jobs would otherwise take every worker thread the agent's short blocking calls need.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        api: PodApi,
        name: str,
        created: dict[str, Any],
        sink: LogSink,
        image: str,
        command: str,
    ) -> None:
        self._loop = loop
        self._api = api
        self.name = name
        self._last = created
        self._sink = sink
        self._image = image
        self._command = command
        self._sink_failed = False
        self._started = False
        self._over = threading.Event()
        self._log_thread: threading.Thread | None = None
        self._log_resp: Any = None
        self.started: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[PodEnd] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=f"pod {name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- to the event loop --

    def _post(self, fn: Callable[..., object], *args: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the agent is gone, nobody waits for this any more
            return False
        return True

    def _write(self, fd: int, data: bytes) -> None:
        try:
            self._sink.write(fd, data)
        except Exception:
            # A full disk must not end the job: it keeps running, unlogged.
            if not self._sink_failed:
                log.exception("cannot store output of Pod %s; dropping it", self.name)
            self._sink_failed = True

    @staticmethod
    def _resolve(fut: asyncio.Future[Any], value: object) -> None:
        if not fut.done():
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

    # -- the watch --

    def _run(self) -> None:
        try:
            end = self._watch()
        except Exception as e:  # whatever it was, the waiters must hear of it rather than wait for ever
            log.exception("watching Pod %s failed", self.name)
            self._over.set()
            self._drain_log()
            err = ApiError(f"cannot watch Pod {self.name}: {e!r}")
            self._post(self._resolve, self.started, StartFailed(str(err)))
            self._post(self._resolve, self.ended, err)
            return
        self._over.set()
        self._drain_log()
        # Posted after the log's last bytes, so that the sink has them all before the end is known.
        self._post(self._resolve, self.started, StartFailed(self._never_started(end)))
        self._post(self._resolve, self.ended, end)

    def _never_started(self, end: PodEnd) -> str:
        view = PodView.of(end.pod)
        problem = start_problem(view, self._image, self._command)
        if problem is not None:
            return problem
        return "the Pod was deleted before its container started" if end.deleted else "the Pod ended"

    def _seen(self, pod: dict[str, Any]) -> bool:
        """Take a state of the Pod; True once it has ended."""
        self._last = pod
        view = PodView.of(pod)
        if not self._started:
            if view.container_started:
                self._started = True
                self._follow_log()
                self._post(self._resolve, self.started, None)
            elif start_problem(view, self._image, self._command) is not None:
                return True
        return view.ended

    def _watch(self) -> PodEnd:
        rv = str((self._last.get("metadata") or {}).get("resourceVersion") or "") or None
        failures = 0
        while True:
            try:
                for kind, pod in self._api.watch(self.name, rv):
                    rv = str((pod.get("metadata") or {}).get("resourceVersion") or "") or rv
                    if kind == "DELETED":
                        self._last = pod
                        return PodEnd(pod, deleted=True)
                    if self._seen(pod):
                        return PodEnd(pod)
                failures = 0
            except ApiError as e:
                failures += 1
                if e.status != 410:
                    log.warning("watch of Pod %s broke (%s); watching it again", self.name, e)
                    time.sleep(min(5.0, 0.2 * 2**failures))
            # A watch that ended (its timeout) or broke: what is the Pod's state now?
            try:
                now = self._api.get(self.name)
            except ApiError as e:
                log.warning("cannot read Pod %s (%s); trying again", self.name, e)
                time.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
                continue
            if now is None:
                return PodEnd(self._last, deleted=True)
            rv = str((now.get("metadata") or {}).get("resourceVersion") or "") or None
            if self._seen(now):
                return PodEnd(now)

    # -- the log --

    def _follow_log(self) -> None:
        self._log_thread = threading.Thread(target=self._read_log, name=f"pod {self.name} log", daemon=True)
        self._log_thread.start()

    def _read_log(self) -> None:
        since: int | None = None
        for tries in range(LOG_RETRIES + 1):
            broke_at = time.monotonic()
            try:
                self._log_resp = self._api.follow_log(self.name, since)
                for chunk in log_chunks(self._log_resp):
                    # stdout and stderr come interleaved in one stream: see the module's docstring.
                    if not self._post(self._write, 2, chunk):
                        return
                # The stream ends when the container does; the Pod's end follows within seconds.
                broke_at = time.monotonic()
                if self._over.wait(LOG_EOF_GRACE_S):
                    return
                problem = "it ended while the Pod still runs"
            except Exception as e:
                broke_at = time.monotonic()
                problem = f"it broke: {e}"
            finally:
                if self._log_resp is not None:
                    close_response(self._log_resp)
                    self._log_resp = None
            if self._over.is_set() or tries == LOG_RETRIES:
                log.warning("log stream of Pod %s: %s", self.name, problem)
                return
            note = (
                f"[trainyard: the log stream of Pod {self.name}: {problem}; following it again: "
                "lines around this point may be missing or repeated]\n"
            )
            self._post(self._write, 2, note.encode())
            time.sleep(min(5.0, 0.5 * 2**tries))
            since = math.ceil(time.monotonic() - broke_at) + 1

    def _drain_log(self) -> None:
        thread = self._log_thread
        if thread is None:
            return
        thread.join(LOG_DRAIN_S)
        if thread.is_alive():
            log.warning("log stream of Pod %s did not end with the Pod; closing it", self.name)
            resp = self._log_resp
            if resp is not None:
                close_response(resp)
            thread.join(1.0)


class KubernetesHandle:
    def __init__(self, api: PodApi, watcher: _PodWatcher, spec: LaunchSpec, sink: LogSink) -> None:
        self._api = api
        self.pod = watcher.name
        self._watcher = watcher
        self._spec = spec
        self._sink = sink
        self._stopped = False
        """We stopped or killed it: its end is ours, not the platform's."""
        self._killed = False
        self._deleting = False
        """A delete was sent: the Pod goes by itself once it has ended."""
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[ExitStatus] = loop.create_future()
        self._finishing = loop.create_task(self._finish())

    @property
    def pid(self) -> int:
        """No process of this node's: the container runs under the kubelet."""
        return 0

    async def _finish(self) -> None:
        try:
            end = await asyncio.shield(self._watcher.ended)
        except asyncio.CancelledError:
            self._done.cancel()
            raise
        except Exception as e:
            with contextlib.suppress(ApiError):
                await asyncio.to_thread(self._api.delete, self.pod, 0)  # not left for the next agent
            self._done.set_exception(e)
            return
        result: ExitStatus | BaseException
        view = PodView.of(end.pod)
        problem = None if self._stopped else infra_problem(view, end.deleted)
        if problem is not None:
            with contextlib.suppress(Exception):
                self._sink.write(2, f"trainyard: {problem}\n".encode())
            result = InfraFailure(problem)
        else:
            if view.reason == "DeadlineExceeded" and not self._stopped:
                with contextlib.suppress(Exception):
                    self._sink.write(2, b"trainyard: the Pod ran past its activeDeadlineSeconds\n")
            result = exit_status(view, memory=self._spec.memory, killed=self._killed)
        if not (end.deleted or self._deleting or view.deleting):
            try:
                await asyncio.to_thread(self._api.delete, self.pod, 0)
            except ApiError as e:
                # The next agent start deletes it by its labels.
                log.warning("cannot delete Pod %s: %s", self.pod, e)
        if self._spec.secret_env:
            try:
                await asyncio.to_thread(self._api.delete_secret, self.pod)
            except ApiError as e:
                # Its owner, the Pod, is gone or going: the garbage collector deletes it.
                log.warning("cannot delete Secret %s: %s", self.pod, e)
        if isinstance(result, BaseException):
            self._done.set_exception(result)
        else:
            self._done.set_result(result)

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._done)

    async def stop(self, grace_s: float) -> None:
        """Delete the Pod with ``grace_s``: the kubelet sends the image's stop signal, then SIGKILL."""
        if self._watcher.ended.done():
            return
        self._stopped = True
        try:
            await asyncio.to_thread(self._api.delete, self.pod, math.ceil(max(0.0, grace_s)))
            self._deleting = True
            await asyncio.wait_for(asyncio.shield(self._watcher.ended), grace_s + STOP_MARGIN_S)
        except TimeoutError:
            log.warning("Pod %s did not stop within its grace; deleting it at once", self.pod)
            self._killed = True
            with contextlib.suppress(ApiError):
                await asyncio.to_thread(self._api.delete, self.pod, 0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._watcher.ended), STOP_MARGIN_S)
        except ApiError as e:
            log.warning("cannot delete Pod %s: %s", self.pod, e)
        except Exception:
            return  # wait() reports it

    def kill(self) -> None:
        self._stopped = self._killed = True
        # On a thread, since kill() must not block; the loop's default executor finishes it even when
        # the loop is shutting down.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().run_in_executor(None, self._delete_now)

    def _delete_now(self) -> None:
        try:
            self._api.delete(self.pod, 0)
            self._deleting = True
        except ApiError as e:
            log.warning("cannot delete Pod %s: %s", self.pod, e)


class KubernetesExecutor:
    """Runs every attempt as a Pod on this node through the Kubernetes API."""

    def __init__(self, settings: KubernetesSettings, api: PodApi | None = None) -> None:
        self.settings = settings
        self.api = api or PodApi(settings)

    async def start(self, spec: LaunchSpec, sink: LogSink) -> KubernetesHandle:
        manifest = plan_pod(spec, self.settings)
        secret = plan_secret(spec, self.settings)
        name = str(manifest["metadata"]["name"])
        await asyncio.to_thread(self._hand_over, spec)
        try:
            if secret is not None:
                # First: a container whose Secret is missing fails (CreateContainerConfigError).
                await asyncio.to_thread(self.api.create_secret, secret)
            created = await asyncio.to_thread(self.api.create, manifest)
        except ApiError as e:
            if secret is not None:
                with contextlib.suppress(ApiError):
                    await asyncio.to_thread(self.api.delete_secret, name)
            if e.status is None:
                raise StartFailed(f"cannot reach the Kubernetes API: {e}") from e
            raise StartFailed(f"cannot create Pod {name} in {self.settings.namespace}: {e}") from e
        if secret is not None:
            try:
                await asyncio.to_thread(self.api.own_secret, name, created)
            except ApiError as e:
                # Deleted with the Pod by the agent all the same, or by label after a restart.
                log.warning("cannot make Pod %s the owner of its Secret: %s", name, e)
        image = str(manifest["spec"]["containers"][0]["image"])
        watcher = _PodWatcher(
            asyncio.get_running_loop(), self.api, name, created, sink, image, spec.command[0]
        )
        watcher.start()
        try:
            await asyncio.wait_for(asyncio.shield(watcher.started), self.settings.start_timeout_s)
        except BaseException as e:
            with contextlib.suppress(ApiError):
                await asyncio.to_thread(self.api.delete, name, 0)
            if isinstance(e, TimeoutError):
                raise StartFailed(
                    f"Pod {name} did not start its container within {self.settings.start_timeout_s:g}s"
                ) from e
            if isinstance(e, ApiError):
                raise StartFailed(str(e)) from e
            raise
        return KubernetesHandle(self.api, watcher, spec, sink)

    def _hand_over(self, spec: LaunchSpec) -> None:
        """An agent that is root but isolates nothing (``--isolation off``) made the job's directories
        its own: the Pod's user (nobody) gets them, as a sandboxed job's user does."""
        if spec.user is not None or os.geteuid() != 0:
            return
        for d in (spec.checkpoint_dir, spec.artifact_dir, spec.attempt_dir / "work"):
            if d.is_dir():
                chown_tree(d, *NOBODY)

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        """Delete (at once) the Pods an earlier run of this worker left on its node; their attempts."""
        s = self.settings
        try:
            found = self.api.list(f"{LABEL_WORKER}={label_value(s.worker)}", f"spec.nodeName={s.node_name}")
        except ApiError as e:
            log.warning(
                "cannot list this worker's Pods in %s (%s): any an earlier run left keep running",
                s.namespace,
                e,
            )
            return []
        keys: list[tuple[str, int]] = []
        for pod in found:
            meta = pod.get("metadata") or {}
            name = str(meta.get("name") or "")
            notes = meta.get("annotations") or {}
            try:
                key: tuple[str, int] | None = (str(notes[ANNOTATION_JOB]), int(notes[ANNOTATION_ATTEMPT]))
            except (KeyError, ValueError, TypeError):
                key = None
            try:
                self.api.delete(name, 0)
            except ApiError as e:
                log.warning("cannot delete Pod %s left by an earlier run: %s", name, e)
                continue
            if key is not None:
                log.warning("deleted Pod %s left running by attempt %s/%d", name, *key)
                keys.append(key)
        self._reap_secrets()
        return keys

    def _reap_secrets(self) -> None:
        """Secrets an earlier run made for Pods it never created (it died in between), or whose
        owner reference it never set: the worker's label says they are this agent's."""
        try:
            found = self.api.list_secrets(f"{LABEL_WORKER}={label_value(self.settings.worker)}")
        except ApiError as e:
            log.warning("cannot list this worker's Secrets in %s: %s", self.settings.namespace, e)
            return
        for secret in found:
            name = str((secret.get("metadata") or {}).get("name") or "")
            try:
                self.api.delete_secret(name)
            except ApiError as e:
                log.warning("cannot delete Secret %s left by an earlier run: %s", name, e)
