"""The docker executor's container plan and the agent's choice of executor, without an engine.

tests/integration/test_docker_executor.py runs containers for real (through Podman).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from trainyard.worker.config import WorkerConfig
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, LogSink, StartFailed
from trainyard.worker.executors.docker import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_WORKER,
    DockerExecutor,
    DockerSettings,
    Mount,
    Ulimit,
    host_config_args,
    parse_ulimit,
    plan_container,
    worker_label,
)
from trainyard.worker.executors.process import ProcessExecutor
from trainyard.worker.executors.routing import ByImage, executor_for

from .helpers import launch_spec

SETTINGS = DockerSettings(host="unix:///run/docker.sock", worker="w-1234")


def _spec(tmp_path: Path, **changes: object) -> LaunchSpec:
    spec = launch_spec(tmp_path, ["python", "train.py"], gpus=(2, 5), env={"A": "1"})
    return dataclasses.replace(spec, **{"image": "pytorch:2", "memory": 1 << 30, "cpu": 1.5, **changes})  # type: ignore[arg-type]


def test_plan_has_the_jobs_limits_gpus_labels_and_directories(tmp_path: Path) -> None:
    spec = _spec(tmp_path, resume_dir=tmp_path / "resume", data_cache=tmp_path)  # the team's directory
    (tmp_path / "resume").mkdir()
    plan = plan_container(spec, dataclasses.replace(SETTINGS, pids_limit=4096))
    assert plan.image == "pytorch:2" and plan.argv == ("python", "train.py")
    assert (plan.memory, plan.nano_cpus, plan.pids_limit) == (1 << 30, 1_500_000_000, 4096)
    assert plan.gpu_ids == ("2", "5")
    assert plan.labels == {LABEL_WORKER: "w-1234", LABEL_JOB: "job1", LABEL_ATTEMPT: "1"}
    assert plan.user == f"{os.getuid()}:{os.getgid()}" and plan.working_dir == str(spec.cwd)
    assert plan_container(dataclasses.replace(spec, user=(65534, 65534)), SETTINGS).user == "65534:65534"
    assert plan.network_mode is None
    assert set(plan.mounts) == {
        Mount(spec.checkpoint_dir, spec.checkpoint_dir),
        Mount(spec.artifact_dir, spec.artifact_dir),
        Mount(spec.cwd, spec.cwd),
        Mount(tmp_path / "resume", tmp_path / "resume", read_only=True),
        Mount(tmp_path, tmp_path),
    }
    env = plan.env
    assert env["A"] == "1" and env["TRAINYARD_JOB_ID"] == "job1"
    assert env["TRAINYARD_ARTIFACT_DIR"] == str(spec.artifact_dir)
    assert env["TRAINYARD_CHECKPOINT_DIR"] == str(spec.checkpoint_dir)
    assert env["TRAINYARD_RESUME_FROM"] == str(tmp_path / "resume")
    # Inside, the two requested GPUs are devices 0 and 1.
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["NVIDIA_VISIBLE_DEVICES"] == "2,5"


def test_host_config_requests_exactly_the_jobs_gpus(tmp_path: Path) -> None:
    plan = plan_container(
        _spec(tmp_path), dataclasses.replace(SETTINGS, ulimits=(Ulimit("nofile", 1024, 2048),))
    )
    args = host_config_args(plan)
    [request] = args["device_requests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["2", "5"]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == 0  # not "all"
    assert args["mem_limit"] == args["memswap_limit"] == 1 << 30  # no swap past the limit
    assert args["nano_cpus"] == 1_500_000_000
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in args["ulimits"]] == [("nofile", 1024, 2048)]
    assert {(m["Source"], m["Target"], m["Type"]) for m in args["mounts"]} >= {
        (str(plan.mounts[0].source), str(plan.mounts[0].target), "bind")
    }


def test_cpu_job_sees_no_gpu_and_no_network_when_asked(tmp_path: Path) -> None:
    plan = plan_container(_spec(tmp_path, gpu_indices=(), network=False, memory=0, cpu=0.0), SETTINGS)
    assert plan.gpu_ids == () and host_config_args(plan)["device_requests"] is None
    # Where the NVIDIA runtime is the default, a CUDA image would otherwise see every GPU.
    assert plan.env["NVIDIA_VISIBLE_DEVICES"] == "void" and plan.env["CUDA_VISIBLE_DEVICES"] == ""
    assert plan.network_mode == "none"
    assert host_config_args(plan)["mem_limit"] is None and host_config_args(plan)["nano_cpus"] is None
    pool_rule = plan_container(_spec(tmp_path), dataclasses.replace(SETTINGS, network=False))
    assert pool_rule.network_mode == "none"


def test_submit_directory_is_mounted_read_only(tmp_path: Path) -> None:
    submit = tmp_path / "submit"
    submit.mkdir()
    plan = plan_container(_spec(tmp_path, cwd=submit), SETTINGS)
    assert Mount(submit, submit, read_only=True) in plan.mounts and plan.working_dir == str(submit)
    with pytest.raises(StartFailed, match="working directory not found"):
        plan_container(_spec(tmp_path, cwd=tmp_path / "gone"), SETTINGS)


def test_ulimits_parse_as_docker_run_takes_them() -> None:
    assert parse_ulimit("nofile=1024:4096") == Ulimit("nofile", 1024, 4096)
    assert parse_ulimit("nproc=512") == Ulimit("nproc", 512, 512)
    for bad in ("nofile", "nofile=a", "=1", "nofile=1:2:3"):
        with pytest.raises(ValueError, match="NAME=SOFT"):
            parse_ulimit(bad)


class _Recorder:
    def __init__(self, found: list[tuple[str, int]]) -> None:
        self.started: list[LaunchSpec] = []
        self.found = found

    async def start(self, spec: LaunchSpec, sink: LogSink) -> _Done:
        self.started.append(spec)
        return _Done()

    def reap_orphans(self, work_dir: Path) -> list[tuple[str, int]]:
        return list(self.found)


class _Done:
    pid = 1

    async def wait(self) -> ExitStatus:
        return ExitStatus(returncode=0)

    async def stop(self, grace_s: float) -> None:
        return None

    def kill(self) -> None:
        return None


class _Sink:
    def write(self, stream: int, data: bytes) -> None:
        return None


def test_jobs_with_an_image_go_to_the_container_executor(tmp_path: Path) -> None:
    processes, containers = _Recorder([("a", 1), ("b", 2)]), _Recorder([("b", 2), ("c", 1)])
    router = ByImage(processes, containers)
    plain = launch_spec(tmp_path, ["true"])
    boxed = dataclasses.replace(plain, image="pytorch:2")

    async def main() -> None:
        await router.start(plain, _Sink())
        await router.start(boxed, _Sink())

    asyncio.run(main())
    assert processes.started == [plain] and containers.started == [boxed]
    assert router.reap_orphans(tmp_path) == [("a", 1), ("b", 2), ("c", 1)]


def test_a_job_with_an_image_fails_to_start_on_a_worker_without_containers(tmp_path: Path) -> None:
    processes = _Recorder([])
    router = ByImage(processes, None)
    spec = dataclasses.replace(launch_spec(tmp_path, ["true"]), image="pytorch:2")
    with pytest.raises(StartFailed, match=r"runs in image pytorch:2, but this worker runs no containers"):
        asyncio.run(router.start(spec, _Sink()))
    assert processes.started == []  # not run as a process instead


def test_the_agent_gets_a_container_executor_only_with_a_docker_host(tmp_path: Path) -> None:
    cfg = WorkerConfig(server="x", token="t", name="w", work_dir=tmp_path, job_pids_limit=77)
    plain = executor_for(cfg)
    assert isinstance(plain.processes, ProcessExecutor) and plain.containers is None
    boxed = executor_for(
        dataclasses.replace(cfg, docker_host="unix:///tmp/engine.sock", docker_ulimits=("nofile=10:20",))
    )
    assert isinstance(boxed.containers, DockerExecutor)
    settings = boxed.containers.settings
    assert settings.host == "unix:///tmp/engine.sock" and settings.worker == worker_label("w", tmp_path)
    assert settings.ulimits == (Ulimit("nofile", 10, 20),) and settings.pids_limit == 77
    # Two agents of one name, on one engine, with different work directories: different labels.
    assert worker_label("w", tmp_path) != worker_label("w", tmp_path / "other")
