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

The package: ``pod`` plans the Pod and its Secret (pure, no API calls), ``status`` reads what the API
says about a Pod, ``api`` makes the calls through the official client, and ``executor`` runs each
attempt with them.
"""

from __future__ import annotations

from trainyard.worker.executors.kubernetes.api import ApiError, PodApi, log_chunks
from trainyard.worker.executors.kubernetes.executor import KubernetesExecutor, KubernetesHandle, PodEnd
from trainyard.worker.executors.kubernetes.pod import (
    CONTAINER,
    GPU_RESOURCE,
    KubernetesSettings,
    plan_pod,
    plan_secret,
    pod_name,
    secret_key,
    secret_name,
)
from trainyard.worker.executors.kubernetes.status import (
    PodView,
    Terminated,
    exit_status,
    infra_problem,
    start_problem,
)

__all__ = [
    "CONTAINER",
    "GPU_RESOURCE",
    "ApiError",
    "KubernetesExecutor",
    "KubernetesHandle",
    "KubernetesSettings",
    "PodApi",
    "PodEnd",
    "PodView",
    "Terminated",
    "exit_status",
    "infra_problem",
    "log_chunks",
    "plan_pod",
    "plan_secret",
    "pod_name",
    "secret_key",
    "secret_name",
    "start_problem",
]
