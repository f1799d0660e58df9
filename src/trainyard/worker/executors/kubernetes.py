"""The kubernetes executor: each attempt runs as a Pod on the agent's own node.

The agent runs on every node of a pool as a DaemonSet (deploy/kubernetes/pools); started with
``--executor kubernetes`` it creates one Pod per attempt through the official Kubernetes client, pinned
to its node with ``nodeName`` (the Kubernetes scheduler is not involved: Trainyard's scheduler already
placed the attempt on this worker). The Pod is the job's process, as a local process or a container is
under the other executors:

- the job's image, or the agent's own (``--k8s-default-image``) for a job that names none; the job's
  command replaces the image's entrypoint, run in the job's working directory;
- the job's environment (``TRAINYARD_*``, its team secrets, the directories below), not the agent's;
  GPUs come from the device plugin (``nvidia.com/gpu`` requests and limits), which also decides
  ``NVIDIA_VISIBLE_DEVICES``: ``CUDA_VISIBLE_DEVICES`` is left unset for GPU jobs and empty for CPU
  jobs, as under the process executor;
- the attempt's checkpoint, artifact and work directories (and its team's data-cache directory) as
  ``hostPath`` volumes at the paths they have on the node, which are the agent's paths too (the
  DaemonSet mounts its work directory at its node path): ``TRAINYARD_CHECKPOINT_DIR`` and the rest
  mean the same inside the Pod, and the agent uploads what the job left there as for any attempt;
- the job's user (never root), no privilege escalation, no capabilities, the runtime's seccomp
  profile, no service account token and no service links;
- ``terminationGracePeriodSeconds`` from the preemption grace, and ``activeDeadlineSeconds`` as a
  backstop for the job's max runtime (the agent's own timer stops the job first, with its grace, and
  reports it as timed out; the deadline holds where the agent is gone);
- labels for the worker, job, attempt, team and lease (a hash of the lease token, never the token).

The Pod is watched (its phase and its container's state) and its container's log followed into the
attempt's log. Kubernetes' log API interleaves stdout and stderr in one stream, so the job's output
arrives as one stream: it is stored as stderr, which makes the report's stderr tail the tail of the
whole log (where a traceback ends). Its exit code, ``OOMKilled`` (reported as out of memory) and an
eviction (an infrastructure failure: ``InfraFailure``) become what the process executor reports.
Stop deletes the Pod with the stop's grace, kill with none; a Pod is deleted once it has ended, and
an agent that restarts deletes every Pod it finds with its worker label on its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from trainyard.model.podlabels import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_JOB,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_LEASE,
    LABEL_TEAM,
    LABEL_WORKER,
    label_value,
    lease_label,
)
from trainyard.model.podlabels import digest as _digest
from trainyard.worker.beneath import chown_tree
from trainyard.worker.executors.base import ExitStatus, InfraFailure, LaunchSpec, LogSink, StartFailed

log = logging.getLogger(__name__)

CONTAINER = "job"
NOBODY = (65534, 65534)
GPU_RESOURCE = "nvidia.com/gpu"

DEADLINE_MARGIN_S = 60
"""``activeDeadlineSeconds`` is the max runtime plus the stop grace plus this: the agent's own timeout
(which stops the job with its grace and reports it as timed out) always comes first."""
STOP_MARGIN_S = 30.0
"""After a graceful delete, how long past the grace the kubelet may take before the Pod is forced."""
LOG_DRAIN_S = 10.0
"""After the Pod ended, how long its log stream may take to deliver its last bytes."""
LOG_RETRIES = 5
"""Times a broken log stream is followed again while the job runs."""
LOG_EOF_GRACE_S = 15.0
"""After the log stream ended, how long the Pod may take to be seen ended; past it the container is
taken to run on (the API server closed the stream) and its log is followed again."""
WATCH_TIMEOUT_S = 300
"""A watch request's server-side timeout; the executor watches again from where it was."""

_SIGKILL_EXIT = 128 + signal.SIGKILL

# A container that could not start: its image, or its command, or its configuration.
_FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreCreateHookError",
    }
)
_START_ERRORS = frozenset({"StartError", "ContainerCannotRun"})
"""A terminated state with one of these reasons: the command never ran (containerd, Docker)."""
_NODE_ENDED = frozenset({"Shutdown", "Terminated", "NodeShutdown", "NodeLost", "UnexpectedAdmissionError"})
"""Pod reasons the kubelet gives a Pod it ended for the node's sake (graceful node shutdown, ...)."""


# ---- the Pod ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesSettings:
    node_name: str
    """The agent's node (``NODE_NAME`` from the downward API): every Pod runs there."""
    worker: str
    """This worker's label value (``docker.worker_label``: its name and work directory): which Pods
    are this agent's to delete after a restart."""
    namespace: str = "trainyard-jobs"
    default_image: str = ""
    """The image of jobs that name none (the agent's own image); empty: such jobs fail to start."""
    host_roots: tuple[Path, ...] = ()
    """Directories whose paths are the same on the node as for the agent (its work directory, the
    data cache, ``--allow-cwd`` roots): a Pod mounts nothing from anywhere else."""
    volume_claims: tuple[tuple[Path, str], ...] = ()
    """(root, PersistentVolumeClaim): a root of ``host_roots`` that the jobs namespace has as a claim
    (bound to a ``local`` PersistentVolume of the same node path, deploy/kubernetes/pools/pods). A
    Pod mounts what lies under such a root from the claim (``subPath``), which Pod Security
    ``restricted`` admits; anything else as a ``hostPath``, which only ``privileged`` admits."""
    termination_grace_s: float = 30.0
    """The Pod's ``terminationGracePeriodSeconds``: the preemption grace (what an eviction or a node
    drain gives the job to checkpoint)."""
    network: bool = True
    """The pool's rule (``--no-job-network``): False refuses every job here, as a Pod cannot be
    given loopback only."""
    host_network: bool = False
    """Jobs use the node's network (for gangs: their MASTER_ADDR is a worker's host name)."""
    image_pull_policy: str = "IfNotPresent"
    kubeconfig: Path | None = None
    """None: the in-cluster configuration (the agent's service account), else ~/.kube/config."""
    api_timeout_s: float = 30.0
    """Per API call; never applies to a watch or to the log stream."""
    start_timeout_s: float = 900.0
    """How long a Pod may take to start its container (the image pull included)."""


_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


def pod_name(spec: LaunchSpec, worker: str) -> str:
    """``ty-<job>-<attempt>-<hash>``: a DNS label, unique per lease (the hash covers the lease)."""
    job = _NAME_CHARS.sub("-", spec.job_id.lower()).strip("-")[:40].strip("-") or "job"
    suffix = _digest(worker, spec.job_id, str(spec.attempt), spec.lease_token)[:8]
    return f"ty-{job}-{spec.attempt}-{suffix}"


def _beneath(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _quantity_cpu(cpu: float) -> str:
    milli = max(1, round(cpu * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def _claim_of(path: Path, claims: tuple[tuple[Path, str], ...]) -> tuple[Path, str] | None:
    """The claim whose root holds ``path`` (the deepest root, if several do)."""
    found = [(root, name) for root, name in claims if path == root or root in path.parents]
    return max(found, key=lambda c: len(c[0].parts)) if found else None


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def secret_name(spec: LaunchSpec, settings: KubernetesSettings) -> str:
    """The attempt's Secret: named as its Pod, which owns it."""
    return pod_name(spec, settings.worker)


def secret_key(name: str) -> str:
    """A variable's key in the Secret (a Secret's keys have a narrower alphabet than names)."""
    return name if len(name) <= 253 and _SECRET_KEY.fullmatch(name) else "v-" + _digest(name)[:32]


def _secret_names(spec: LaunchSpec) -> list[str]:
    return [k for k in spec.secret_env if k in spec.env]


def _env_entry(name: str, value: str, spec: LaunchSpec, settings: KubernetesSettings) -> dict[str, Any]:
    if name in spec.secret_env and name in spec.env:
        # Not in the Pod's spec, which whoever may read Pods reads: from the attempt's Secret.
        ref = {"name": secret_name(spec, settings), "key": secret_key(name)}
        return {"name": name, "valueFrom": {"secretKeyRef": ref}}
    return {"name": name, "value": value}


def plan_secret(spec: LaunchSpec, settings: KubernetesSettings) -> dict[str, Any] | None:
    """The Secret holding the attempt's team secrets (None: the job has none). Created before its
    Pod, then owned by it (``ownerReferences``), so that it goes when the Pod goes."""
    names = _secret_names(spec)
    if not names:
        return None
    pod = plan_pod(spec, settings)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(spec, settings),
            "namespace": settings.namespace,
            "labels": dict(pod["metadata"]["labels"]),
            "annotations": dict(pod["metadata"]["annotations"]),
        },
        "type": "Opaque",
        "immutable": True,
        "stringData": {secret_key(k): spec.env[k] for k in names},
    }


def _launchable(spec: LaunchSpec, settings: KubernetesSettings) -> tuple[str, int, int]:
    """The image and the (uid, gid) an attempt runs as; StartFailed for a spec no Pod can run."""
    if not spec.command:
        raise StartFailed("empty command")
    image = spec.image or settings.default_image
    if not image:
        raise StartFailed(
            "the job names no image, and this worker has no image for such jobs (--k8s-default-image)"
        )
    if not (spec.network and settings.network):
        raise StartFailed(
            "the job may not use the network (network: false, or a --no-job-network pool), and a "
            "Kubernetes Pod cannot be given loopback only: run it on a worker with the process executor"
        )
    uid, gid = spec.user or NOBODY
    if uid == 0 or gid == 0:
        raise StartFailed("jobs never run as root")
    return image, uid, gid


def _pod_env(spec: LaunchSpec) -> dict[str, str]:
    """The job's environment as its container sees it: the agent's directories, and GPUs as the
    device plugin numbers them."""
    env = dict(spec.env)
    env["TRAINYARD_CHECKPOINT_DIR"] = str(spec.checkpoint_dir)
    env["TRAINYARD_ARTIFACT_DIR"] = str(spec.artifact_dir)
    if spec.resume_dir is not None:
        env["TRAINYARD_RESUME_FROM"] = str(spec.resume_dir)
    else:
        env.pop("TRAINYARD_RESUME_FROM", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if spec.gpu_indices:
        # The device plugin gives the container its GPUs, numbered from 0: host indices would name
        # devices that are not there, and the plugin's own variables say which ones it chose.
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.pop("NVIDIA_VISIBLE_DEVICES", None)
    else:
        # A CUDA image says NVIDIA_VISIBLE_DEVICES=all: where the NVIDIA runtime is the default one,
        # a CPU job would see every GPU of the node.
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return env


def _pod_volumes(
    spec: LaunchSpec, settings: KubernetesSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Pod's volumes and the container's mounts of them: the attempt's own directories, an
    allowed ``cwd``, the checkpoint it resumes from and the data cache."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    mounted: list[Path] = []

    def shared(path: Path) -> None:
        if not _beneath(path, settings.host_roots):
            raise StartFailed(
                f"{path} is not under a directory this worker shares with its node "
                f"({', '.join(map(str, settings.host_roots)) or 'none'}): a Pod cannot mount it"
            )

    claimed: dict[str, str] = {}
    """claim name -> its volume's name, one volume per claim however many directories it gives."""

    def mount(name: str, path: Path, read_only: bool = False) -> None:
        shared(path)
        entry: dict[str, Any] = {"name": name, "mountPath": str(path)}
        claim = _claim_of(path, settings.volume_claims)
        if claim is None:
            volumes.append({"name": name, "hostPath": {"path": str(path), "type": "Directory"}})
        else:
            root, claim_name = claim
            if claim_name not in claimed:
                claimed[claim_name] = f"claim-{len(claimed)}"
                volumes.append(
                    {"name": claimed[claim_name], "persistentVolumeClaim": {"claimName": claim_name}}
                )
            entry["name"] = claimed[claim_name]
            # Made by the agent from its own directories (never a job's string), and the kubelet
            # refuses a subPath that leaves the volume or runs through a symlink out of it.
            entry["subPath"] = str(path.relative_to(root))
        if read_only:
            entry["readOnly"] = True
        mounts.append(entry)
        mounted.append(path)

    mount("checkpoints", spec.checkpoint_dir)
    mount("artifacts", spec.artifact_dir)
    work = spec.attempt_dir / "work"
    if work.is_dir():
        mount("work", work)
    if not _beneath(spec.cwd, tuple(mounted)):
        # A submit directory on the worker (Slurm's convention): readable, as the process sandbox has it.
        shared(spec.cwd)
        if not spec.cwd.is_dir():
            raise StartFailed(f"working directory not found: {spec.cwd}")
        mount("cwd", spec.cwd, read_only=True)
    if spec.resume_dir is not None:
        mount("resume", spec.resume_dir, read_only=True)
    if spec.data_cache is not None and spec.data_cache.is_dir():
        mount("data-cache", spec.data_cache)
    return volumes, mounts


def _pod_resources(spec: LaunchSpec) -> dict[str, str]:
    """Requests, equal to limits: the scheduler placed the attempt on exactly these."""
    resources: dict[str, str] = {}
    if spec.cpu > 0:
        resources["cpu"] = _quantity_cpu(spec.cpu)
    if spec.memory > 0:
        resources["memory"] = str(spec.memory)
    if spec.gpu_indices:
        resources[GPU_RESOURCE] = str(len(spec.gpu_indices))
    return resources


def _pod_labels(spec: LaunchSpec, settings: KubernetesSettings) -> dict[str, str]:
    """Labels that find an attempt's Pod again after an agent restart, and fence a stale lease's."""
    team = spec.env.get("TRAINYARD_TEAM", "")
    return {
        "app.kubernetes.io/name": "trainyard",
        "app.kubernetes.io/component": "job",
        "app.kubernetes.io/part-of": "trainyard",
        "app.kubernetes.io/managed-by": "trainyard-worker",
        LABEL_WORKER: label_value(settings.worker),
        LABEL_JOB: label_value(spec.job_id),
        LABEL_ATTEMPT: str(spec.attempt),
        LABEL_TEAM: label_value(team),
        LABEL_LEASE: lease_label(spec.lease_token),
    }


def plan_pod(spec: LaunchSpec, settings: KubernetesSettings) -> dict[str, Any]:
    """The Pod an attempt runs as, as the API takes it; StartFailed for a spec that cannot be one."""
    image, uid, gid = _launchable(spec, settings)
    env = _pod_env(spec)
    volumes, mounts = _pod_volumes(spec, settings)
    resources = _pod_resources(spec)
    labels = _pod_labels(spec, settings)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        # The job's argv is what runs, as under the process executor: it replaces the image's
        # entrypoint, no shell in between.
        "command": list(spec.command),
        "workingDir": str(spec.cwd),
        "env": [_env_entry(k, v, spec, settings) for k, v in env.items()],
        "resources": {"requests": dict(resources), "limits": dict(resources)} if resources else {},
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        # Why it failed, when it says so itself: the end of its log.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "nodeName": settings.node_name,
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": max(0, math.ceil(settings.termination_grace_s)),
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": gid,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.max_runtime_s > 0:
        pod_spec["activeDeadlineSeconds"] = (
            math.ceil(spec.max_runtime_s) + math.ceil(settings.termination_grace_s) + DEADLINE_MARGIN_S
        )
    if settings.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec, settings.worker),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_JOB: spec.job_id, ANNOTATION_ATTEMPT: str(spec.attempt)},
        },
        "spec": pod_spec,
    }


# ---- what the API says about a Pod ------------------------------------------------------------------


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str = ""
    message: str = ""
    signal: int = 0


@dataclass(frozen=True)
class PodView:
    """The few facts of a Pod object the executor acts on."""

    phase: str = ""
    reason: str = ""
    message: str = ""
    waiting: tuple[str, str] | None = None
    running: bool = False
    terminated: Terminated | None = None
    disruption: tuple[str, str] | None = None
    """The ``DisruptionTarget`` condition's reason and message: evicted, preempted, drained."""
    deleting: bool = False
    """Someone asked for the Pod's deletion (``metadata.deletionTimestamp``)."""

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        status = pod.get("status") or {}
        state: Mapping[str, Any] = {}
        for c in status.get("containerStatuses") or ():
            if c.get("name") == CONTAINER:
                state = c.get("state") or {}
        waiting = state.get("waiting")
        term = state.get("terminated")
        disruption = None
        for cond in status.get("conditions") or ():
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                disruption = (str(cond.get("reason") or ""), str(cond.get("message") or ""))
        return cls(
            phase=str(status.get("phase") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            waiting=(str(waiting.get("reason") or ""), str(waiting.get("message") or ""))
            if isinstance(waiting, Mapping)
            else None,
            running=isinstance(state.get("running"), Mapping),
            terminated=Terminated(
                exit_code=int(term.get("exitCode", -1)),
                reason=str(term.get("reason") or ""),
                message=str(term.get("message") or ""),
                signal=int(term.get("signal") or 0),
            )
            if isinstance(term, Mapping)
            else None,
            disruption=disruption,
            deleting=bool((pod.get("metadata") or {}).get("deletionTimestamp")),
        )

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def container_started(self) -> bool:
        return self.running or (self.terminated is not None and self.terminated.reason not in _START_ERRORS)


def start_problem(view: PodView, image: str, command: str) -> str | None:
    """Why the Pod's container cannot start, or None while it may still."""
    if view.container_started:
        return None
    if view.waiting is not None and view.waiting[0] in _FATAL_WAITING:
        reason, message = view.waiting
        if "Image" in reason:
            return f"cannot pull image {image}: {reason}: {message}".rstrip(": ")
        return f"cannot start container of image {image}: {reason}: {message}".rstrip(": ")
    if view.terminated is not None:  # a start error: the command never ran
        text = view.terminated.message or view.terminated.reason
        lowered = text.lower()
        if "executable file not found" in lowered or "no such file or directory" in lowered:
            return f"command not found in image {image}: {command} ({text})"
        if "permission denied" in lowered:
            return f"command not executable in image {image}: {command} ({text})"
        return f"cannot start container of image {image}: {text}"
    if view.ended:
        # Refused by the kubelet before any container ran (OutOfcpu, OutOfnvidia.com/gpu, NodeAffinity).
        return f"the kubelet refused the Pod: {view.reason or view.phase}: {view.message}".rstrip(": ")
    return None


def infra_problem(view: PodView, deleted: bool) -> str | None:
    """Why a Pod that the agent did not stop ended for the platform's sake, not the job's; None: it
    ended by itself (its exit status says how)."""
    if view.reason == "Evicted":
        return f"the Pod was evicted from its node: {view.message}".rstrip(": ")
    if view.disruption is not None:
        reason, message = view.disruption
        return f"the Pod was disrupted ({reason}): {message}".rstrip(": ")
    if view.reason in _NODE_ENDED:
        return f"the Pod was ended by its node ({view.reason}): {view.message}".rstrip(": ")
    if deleted or view.deleting:
        # Gone, or its container stopped (SIGTERM) because someone else deleted it: not the job's end.
        return "the Pod was deleted by someone other than the agent while the job ran"
    if view.phase == "Failed" and view.terminated is None and view.reason != "DeadlineExceeded":
        return f"the Pod failed without an exit status: {view.reason}: {view.message}".rstrip(": ")
    return None


def exit_status(view: PodView, *, memory: int, killed: bool) -> ExitStatus:
    """The container's end as the process executor reports a process's."""
    term = view.terminated
    if term is None:
        # Gone before its container's end was recorded: killed (by us, or by the node).
        return ExitStatus(signal=signal.SIGKILL)
    code = term.exit_code
    if term.signal:
        status = ExitStatus(signal=term.signal)
    elif 128 < code <= 128 + 64:
        # 128 + N: killed by signal N, as the runtime reports it (the exit code stays the same).
        status = ExitStatus(signal=code - 128)
    else:
        status = ExitStatus(returncode=code)
    if killed and status.signal is None:
        status = ExitStatus(signal=signal.SIGKILL)
    if term.reason == "OOMKilled":
        status = ExitStatus(
            returncode=status.returncode, signal=status.signal, oom=True, memory_limit=max(0, memory)
        )
    return status


# ---- the API ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """The API server refused a call or could not be reached; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _api_error(e: BaseException) -> ApiError:
    status = getattr(e, "status", None)
    if isinstance(status, int):
        message = str(getattr(e, "reason", "") or "")
        body = getattr(e, "body", None)
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, TypeError):
            parsed = None
        if isinstance(parsed, dict) and parsed.get("message"):
            message = str(parsed["message"])
        return ApiError(f"{status} {message}".strip(), status)
    return ApiError(f"{type(e).__name__}: {e}")


def _close(resp: object) -> None:
    for method in ("close", "release_conn"):
        fn = getattr(resp, method, None)
        if callable(fn):
            with contextlib.suppress(Exception):
                fn()


class PodApi:
    """The few API calls the executor makes, through the official client, on plain dicts (the Pod
    as sent is exactly the manifest). Every method blocks: call it from a thread."""

    def __init__(self, settings: KubernetesSettings, api_client: Any = None) -> None:
        self.namespace = settings.namespace
        self._settings = settings
        self._client = api_client
        self._core: Any = None
        self._lock = threading.Lock()

    def _api(self) -> Any:
        # Made on first use: configuration errors fail the jobs (and say why), not the agent's start.
        with self._lock:
            if self._core is None:
                try:
                    from kubernetes import client

                    if self._client is None:
                        self._client = client.ApiClient(_configuration(self._settings))
                    self._core = client.CoreV1Api(self._client)
                except Exception as e:
                    raise ApiError(f"cannot configure the Kubernetes client: {e}") from e
            return self._core

    def _call(self, method: str, *args: object, **kwargs: object) -> Any:
        api = self._api()
        try:
            return getattr(api, method)(*args, **kwargs)
        except Exception as e:
            raise _api_error(e) from e

    def _json(self, method: str, *args: object, **kwargs: object) -> dict[str, Any]:
        resp = self._call(
            method, *args, _preload_content=False, _request_timeout=self._settings.api_timeout_s, **kwargs
        )
        try:
            return cast(dict[str, Any], json.loads(resp.data))
        except ValueError as e:
            raise ApiError(f"the API server answered {method} with something that is not JSON: {e}") from e
        finally:
            _close(resp)

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("create_namespaced_pod", self.namespace, dict(manifest))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._json("read_namespaced_pod", name, self.namespace)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, name: str, grace_s: int) -> None:
        """Delete with ``grace_s`` (0: at once); a Pod already gone is fine."""
        try:
            self._json("delete_namespaced_pod", name, self.namespace, grace_period_seconds=max(0, grace_s))
        except ApiError as e:
            if e.status != 404:
                raise

    def create_secret(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("create_namespaced_secret", self.namespace, dict(manifest))

    def own_secret(self, name: str, pod: Mapping[str, Any]) -> None:
        """Make the Pod the Secret's owner: the garbage collector deletes it with the Pod."""
        meta = pod.get("metadata") or {}
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": str(meta.get("name")),
            "uid": str(meta.get("uid")),
        }
        self._json(
            "patch_namespaced_secret",
            name,
            self.namespace,
            {"metadata": {"ownerReferences": [owner]}},
            _content_type="application/merge-patch+json",
        )

    def delete_secret(self, name: str) -> None:
        """Delete a Secret; one already gone (its Pod's garbage collection) is fine."""
        try:
            self._json("delete_namespaced_secret", name, self.namespace)
        except ApiError as e:
            if e.status != 404:
                raise

    def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        found = self._json("list_namespaced_secret", self.namespace, label_selector=label_selector)
        return [cast(dict[str, Any], p) for p in found.get("items") or ()]

    def list(self, label_selector: str, field_selector: str = "") -> list[dict[str, Any]]:
        kwargs: dict[str, object] = {"label_selector": label_selector}
        if field_selector:
            kwargs["field_selector"] = field_selector
        found = self._json("list_namespaced_pod", self.namespace, **kwargs)
        return [cast(dict[str, Any], p) for p in found.get("items") or ()]

    def watch(self, name: str, resource_version: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, pod) of each change to the Pod, from ``resource_version``, until the server ends the
        watch (after ``WATCH_TIMEOUT_S``); raises ApiError (410: too old, list again)."""
        from kubernetes import watch

        api = self._api()
        w = watch.Watch()
        kwargs: dict[str, object] = {
            "field_selector": f"metadata.name={name}",
            "timeout_seconds": WATCH_TIMEOUT_S,
            "_request_timeout": WATCH_TIMEOUT_S + self._settings.api_timeout_s,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in w.stream(api.list_namespaced_pod, self.namespace, **kwargs):
                obj = event.get("raw_object")
                kind = str(event.get("type", ""))
                if kind in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict):
                    yield kind, obj
        except ApiError:
            raise
        except Exception as e:
            raise _api_error(e) from e
        finally:
            w.stop()

    def follow_log(self, name: str, since_seconds: int | None = None) -> Any:
        """The container's log, followed: a streamed HTTP response (``log_chunks`` reads it)."""
        kwargs: dict[str, object] = {"container": CONTAINER, "follow": True, "_preload_content": False}
        if since_seconds is not None:
            kwargs["since_seconds"] = max(1, since_seconds)
        return self._call("read_namespaced_pod_log", name, self.namespace, **kwargs)


def log_chunks(resp: Any) -> Iterator[bytes]:
    """The bytes of a streamed response as they arrive (chunk by chunk, or whatever is there)."""
    if getattr(resp, "chunked", False):
        for chunk in resp.stream(None, decode_content=True):
            if chunk:
                yield bytes(chunk)
        return
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        yield bytes(chunk)


def _configuration(settings: KubernetesSettings) -> Any:
    from kubernetes import client, config

    conf = client.Configuration()
    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        # The agent's service account (its token is projected readable by root only).
        config.load_incluster_config(client_configuration=conf)
    else:
        path = str(settings.kubeconfig) if settings.kubeconfig is not None else None
        config.load_kube_config(config_file=path, client_configuration=conf)
    return conf


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
                    _close(self._log_resp)
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
                _close(resp)
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
