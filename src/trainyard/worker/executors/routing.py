"""The agent's executor: jobs that name an image run as containers, the others as local processes; or,
on Kubernetes (``--executor kubernetes``), every job as a Pod on the agent's node."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from trainyard.worker.executors.base import Executor, LaunchSpec, LogSink, RunHandle, StartFailed
from trainyard.worker.executors.process import ProcessExecutor
from trainyard.worker.isolation import isolation_for

if TYPE_CHECKING:
    from trainyard.worker.config import WorkerConfig
    from trainyard.worker.executors.kubernetes import KubernetesExecutor


class ByImage:
    """Sends each attempt to the process executor, or to the container one when its job has an image."""

    def __init__(self, processes: Executor, containers: Executor | None) -> None:
        self.processes = processes
        self.containers = containers

    async def start(self, spec: LaunchSpec, sink: LogSink) -> RunHandle:
        if not spec.image:
            return await self.processes.start(spec, sink)
        if self.containers is None:
            # Not run as a process instead: its command may exist only in the image, and its
            # dependencies surely do.
            raise StartFailed(
                f"the job runs in image {spec.image}, but this worker runs no containers "
                "(start it with --docker-host)"
            )
        return await self.containers.start(spec, sink)

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        found = self.processes.reap_orphans(work_dir)
        if self.containers is not None:
            found += self.containers.reap_orphans(work_dir)
        return list(dict.fromkeys(found))


def executor_for(cfg: WorkerConfig) -> ByImage | KubernetesExecutor:
    """The agent's executor from its settings."""
    if cfg.executor == "kubernetes":
        return kubernetes_executor(cfg)
    containers: Executor | None = None
    if cfg.docker_host:
        # Imported only here: the docker SDK (and requests) cost a worker without containers nothing.
        from trainyard.worker.executors.docker import (
            DockerExecutor,
            DockerSettings,
            parse_ulimit,
            worker_label,
        )

        containers = DockerExecutor(
            DockerSettings(
                host=cfg.docker_host,
                worker=worker_label(cfg.name, cfg.work_dir),
                ulimits=tuple(parse_ulimit(u) for u in cfg.docker_ulimits),
                pids_limit=cfg.job_pids_limit,
                network=cfg.job_network,
                data_cache=cfg.data_cache,
            )
        )
    return ByImage(ProcessExecutor(isolation_for(cfg)), containers)


def kubernetes_executor(cfg: WorkerConfig) -> KubernetesExecutor:
    """Every attempt as a Pod on this node (the client is imported only here, and only used when the
    first job starts)."""
    from trainyard.worker.executors.docker import worker_label
    from trainyard.worker.executors.kubernetes import KubernetesExecutor, KubernetesSettings

    if not cfg.k8s_node_name:
        raise ValueError("the kubernetes executor needs this agent's node name (NODE_NAME)")
    return KubernetesExecutor(
        KubernetesSettings(
            node_name=cfg.k8s_node_name,
            worker=worker_label(cfg.name, cfg.work_dir),
            namespace=cfg.k8s_namespace,
            default_image=cfg.k8s_default_image or "",
            # Mounted into the agent's Pod at their node paths (deploy/kubernetes/pools): the only
            # directories a job Pod may mount.
            host_roots=(cfg.work_dir, cfg.data_cache, *cfg.allow_cwd),
            volume_claims=tuple(
                (root, claim)
                for root, claim in (
                    (cfg.work_dir, cfg.k8s_work_claim),
                    (cfg.data_cache, cfg.k8s_data_cache_claim),
                )
                if claim
            ),
            termination_grace_s=cfg.preempt_grace_s,
            network=cfg.job_network,
            host_network=cfg.k8s_host_network,
            kubeconfig=cfg.k8s_kubeconfig,
        )
    )
