"""A job's Pod and its Secret, planned from the attempt's launch spec (pure: no API calls)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from trainyard.worker.executors.base import LaunchSpec, StartFailed

log = logging.getLogger(__name__)


CONTAINER = "job"
NOBODY = (65534, 65534)
GPU_RESOURCE = "nvidia.com/gpu"

DEADLINE_MARGIN_S = 60
"""``activeDeadlineSeconds`` is the max runtime plus the stop grace plus this: the agent's own timeout
(which stops the job with its grace and reports it as timed out) always comes first."""

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
