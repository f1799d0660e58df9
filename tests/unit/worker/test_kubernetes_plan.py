"""The kubernetes executor without an API server: the Pods it makes, validated against Kubernetes'
schemas; how it reads a Pod's state; and how `yard worker --executor kubernetes` configures it.

tests/unit/worker/test_kubernetes_api.py drives the official client against a recorded-API server;
tests/integration/test_kubernetes_executor.py runs these Pods for real with `podman kube play`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from trainyard.cli.worker import WorkerOptions, _check_executor, worker_config
from trainyard.model.podlabels import label_value, lease_label
from trainyard.worker.config import WorkerConfig
from trainyard.worker.executors.base import ExitStatus, LaunchSpec, StartFailed
from trainyard.worker.executors.docker import worker_label
from trainyard.worker.executors.kubernetes import (
    KubernetesExecutor,
    KubernetesSettings,
    PodView,
    exit_status,
    infra_problem,
    plan_pod,
    plan_secret,
    pod_name,
    start_problem,
)
from trainyard.worker.executors.routing import executor_for

from .helpers import launch_spec

# The version deploy/kubernetes is validated for (tests/deploy/test_manifests.py).
KUBERNETES_VERSION = "1.33.0"

Obj = dict[str, Any]


def _settings(tmp_path: Path, **kw: Any) -> KubernetesSettings:
    return KubernetesSettings(
        **{"node_name": "node-1", "worker": "node-1-abcd1234", "host_roots": (tmp_path,), **kw}
    )


def _spec(tmp_path: Path, **changes: Any) -> LaunchSpec:
    spec = launch_spec(
        tmp_path, ["python", "train.py"], env={"TRAINYARD_TEAM": "nlp", "WANDB_API_KEY": "s3cret"}
    )
    return dataclasses.replace(spec, **{"lease_token": "tok", **changes})


def _variants(tmp_path: Path) -> dict[str, tuple[LaunchSpec, KubernetesSettings]]:
    """Every shape of Pod the executor makes."""
    s = _settings(tmp_path, default_image="trainyard:0.1.0")
    resume = tmp_path / "resume"
    resume.mkdir(exist_ok=True)
    shared = tmp_path / "shared" / "project"
    shared.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache" / "nlp"
    cache.mkdir(parents=True, exist_ok=True)
    base = _spec(tmp_path)
    inner_resume = base.attempt_dir / "resume"
    inner_resume.mkdir(exist_ok=True)
    return {
        "command-only": (base, s),
        "gpus-image-limits": (
            dataclasses.replace(
                base, image="pytorch:2", gpu_indices=(0, 3), cpu=7.5, memory=40 << 30, max_runtime_s=86400.5
            ),
            s,
        ),
        "fractional-cpu": (dataclasses.replace(base, cpu=0.25, memory=300 << 20), s),
        "resume-and-data-cache": (dataclasses.replace(base, resume_dir=resume, data_cache=cache), s),
        "shared-cwd": (dataclasses.replace(base, cwd=shared), s),
        "job-user": (dataclasses.replace(base, user=(1000, 1000)), s),
        "host-network": (base, dataclasses.replace(s, host_network=True, termination_grace_s=120.0)),
        "odd-job-id": (
            dataclasses.replace(base, job_id="Sweep_LR=3e-4/rank#2." + "x" * 80, attempt=12),
            s,
        ),
        "no-grace": (base, dataclasses.replace(s, termination_grace_s=0.0)),
        "claims": (
            dataclasses.replace(base, resume_dir=inner_resume, data_cache=cache),
            dataclasses.replace(
                s,
                volume_claims=((tmp_path / "jobs", "trainyard-work"), (tmp_path / "cache", "trainyard-data")),
            ),
        ),
        "team-secrets": (dataclasses.replace(base, secret_env=("WANDB_API_KEY", "HF-TOKEN.v2")), s),
    }


def test_every_pod_the_executor_makes_is_valid(tmp_path: Path) -> None:
    """kubernetes-validate --strict against the pinned version's schemas: unknown fields are errors."""
    errors = []
    for name, (spec, settings) in _variants(tmp_path).items():
        pod = plan_pod(spec, settings)
        try:
            kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


def test_claims_give_the_directories_without_host_paths(tmp_path: Path) -> None:
    """With claims of local volumes (Pod Security restricted), each directory is a subPath of the
    claim that holds its node path: the same path inside the Pod, no hostPath."""
    spec, settings = _variants(tmp_path)["claims"]
    pod = plan_pod(spec, settings)
    volumes = pod["spec"]["volumes"]
    assert volumes == [
        {"name": "claim-0", "persistentVolumeClaim": {"claimName": "trainyard-work"}},
        {"name": "claim-1", "persistentVolumeClaim": {"claimName": "trainyard-data"}},
    ]
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert mounts == [
        {"name": "claim-0", "mountPath": str(spec.checkpoint_dir), "subPath": "job1/1/checkpoints"},
        {"name": "claim-0", "mountPath": str(spec.artifact_dir), "subPath": "job1/1/artifacts"},
        {"name": "claim-0", "mountPath": str(spec.attempt_dir / "work"), "subPath": "job1/1/work"},
        {"name": "claim-0", "mountPath": str(spec.resume_dir), "subPath": "job1/1/resume", "readOnly": True},
        {"name": "claim-1", "mountPath": str(spec.data_cache), "subPath": "nlp"},
    ]


def test_team_secrets_come_from_the_attempts_secret(tmp_path: Path) -> None:
    """A lease's team secrets are not in the Pod's spec (whoever may read Pods reads it): they are in
    a Secret named as the Pod, each variable a secretKeyRef into it."""
    spec, settings = _variants(tmp_path)["team-secrets"]
    spec = dataclasses.replace(spec, env={**spec.env, "HF-TOKEN.v2": "hf_abc", "ODD NAME": "x"})
    spec = dataclasses.replace(spec, secret_env=(*spec.secret_env, "ODD NAME"))
    pod = plan_pod(spec, settings)
    secret = plan_secret(spec, settings)
    assert secret is not None
    name = pod["metadata"]["name"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": name, "key": "WANDB_API_KEY"}},
    }
    odd_key = env["ODD NAME"]["valueFrom"]["secretKeyRef"]["key"]
    assert re.fullmatch(r"[-._a-zA-Z0-9]+", odd_key)
    assert env["TRAINYARD_TEAM"] == {"name": "TRAINYARD_TEAM", "value": "nlp"}
    assert "s3cret" not in json.dumps(pod) and "hf_abc" not in json.dumps(pod)
    assert secret["metadata"]["name"] == name and secret["metadata"]["namespace"] == "trainyard-jobs"
    assert secret["metadata"]["labels"] == pod["metadata"]["labels"]
    assert secret["stringData"] == {"WANDB_API_KEY": "s3cret", "HF-TOKEN.v2": "hf_abc", odd_key: "x"}
    assert secret["immutable"] is True
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    # No secrets, no Secret.
    assert plan_secret(_variants(tmp_path)["command-only"][0], settings) is None


def test_the_validation_catches_mistakes(tmp_path: Path) -> None:
    pod = plan_pod(_spec(tmp_path), _settings(tmp_path, default_image="x:1"))
    pod["spec"]["containers"][0]["securityContext"]["dropCapabilities"] = ["ALL"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_names_and_labels_are_what_the_api_accepts(tmp_path: Path) -> None:
    for spec, settings in _variants(tmp_path).values():
        pod = plan_pod(spec, settings)
        name = pod["metadata"]["name"]
        # A DNS label (the Pod's host name), not only a DNS subdomain.
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        for key, value in pod["metadata"]["labels"].items():
            assert len(value) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value), (
                key
            )
        assert pod["metadata"]["annotations"]["trainyard.io/job-id"] == spec.job_id
    assert label_value("j-123") == "j-123"
    odd = label_value("Sweep_LR=3e-4/rank#2")
    assert odd.startswith("Sweep_LR-3e-4-rank-2-") and odd != label_value("Sweep_LR=3e-4/rank#3")
    assert label_value("") == ""
    # One Pod name per lease: a new lease of the same attempt number never meets an old Pod.
    spec = _spec(tmp_path)
    assert pod_name(spec, "w") != pod_name(dataclasses.replace(spec, lease_token="other"), "w")
    assert lease_label("tok") != "tok" and len(lease_label("tok")) == 32


def test_the_pod_runs_the_job_as_its_user_with_nothing_more(tmp_path: Path) -> None:
    spec, settings = _variants(tmp_path)["job-user"]
    pod = plan_pod(spec, settings)
    ps = pod["spec"]
    (c,) = ps["containers"]
    assert ps["securityContext"]["runAsUser"] == c["securityContext"]["runAsUser"] == 1000
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ps["automountServiceAccountToken"] is False and ps["enableServiceLinks"] is False
    assert ps["restartPolicy"] == "Never" and ps["nodeName"] == "node-1"
    assert "hostNetwork" not in ps and "activeDeadlineSeconds" not in ps
    # Without a user (an agent that isolates nothing): nobody, never the agent's root.
    assert plan_pod(_spec(tmp_path), settings)["spec"]["securityContext"]["runAsUser"] == 65534
    with pytest.raises(StartFailed, match="never run as root"):
        plan_pod(dataclasses.replace(spec, user=(0, 0)), settings)


def test_environment_resources_volumes_and_deadline(tmp_path: Path) -> None:
    variants = _variants(tmp_path)
    spec, settings = variants["gpus-image-limits"]
    pod = plan_pod(spec, settings)
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["WANDB_API_KEY"] == "s3cret"  # the team secrets the lease carries
    assert "CUDA_VISIBLE_DEVICES" not in env and "NVIDIA_VISIBLE_DEVICES" not in env
    assert c["resources"]["limits"] == {"cpu": "7500m", "memory": str(40 << 30), "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"] == c["resources"]["limits"]
    assert pod["spec"]["activeDeadlineSeconds"] == 86401 + 30 + 60
    assert c["image"] == "pytorch:2"

    cpu_only = plan_pod(*variants["fractional-cpu"])
    (c,) = cpu_only["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert (env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"]) == ("", "void")
    assert c["resources"]["limits"] == {"cpu": "250m", "memory": str(300 << 20)}
    assert c["image"] == "trainyard:0.1.0"  # the agent's image, for a command-only job
    assert plan_pod(*variants["command-only"])["spec"]["containers"][0]["resources"] == {}

    spec, settings = variants["resume-and-data-cache"]
    (c,) = plan_pod(spec, settings)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TRAINYARD_RESUME_FROM"] == str(spec.resume_dir)
    mounts = {m["name"]: (m["mountPath"], m.get("readOnly", False)) for m in c["volumeMounts"]}
    assert mounts == {
        "checkpoints": (str(spec.checkpoint_dir), False),
        "artifacts": (str(spec.artifact_dir), False),
        "work": (str(spec.cwd), False),
        "resume": (str(spec.resume_dir), True),
        "data-cache": (str(spec.data_cache), False),
    }

    spec, settings = variants["shared-cwd"]
    pod = plan_pod(spec, settings)
    (c,) = pod["spec"]["containers"]
    assert c["workingDir"] == str(spec.cwd)
    assert {"name": "cwd", "mountPath": str(spec.cwd), "readOnly": True} in c["volumeMounts"]
    # Same paths inside as on the node: every volume is a hostPath of the path it is mounted at.
    for v in pod["spec"]["volumes"]:
        (m,) = [m for m in c["volumeMounts"] if m["name"] == v["name"]]
        assert v["hostPath"] == {"path": m["mountPath"], "type": "Directory"}

    host = plan_pod(*variants["host-network"])["spec"]
    assert (host["hostNetwork"], host["dnsPolicy"], host["terminationGracePeriodSeconds"]) == (
        True,
        "ClusterFirstWithHostNet",
        120,
    )


def test_what_cannot_be_a_pod_fails_to_start(tmp_path: Path) -> None:
    spec, settings = _spec(tmp_path), _settings(tmp_path)
    with pytest.raises(StartFailed, match="no image for such jobs"):
        plan_pod(spec, settings)
    settings = dataclasses.replace(settings, default_image="trainyard:0.1.0")
    with pytest.raises(StartFailed, match="cannot be given loopback only"):
        plan_pod(dataclasses.replace(spec, network=False), settings)
    with pytest.raises(StartFailed, match="cannot be given loopback only"):
        plan_pod(spec, dataclasses.replace(settings, network=False))
    with pytest.raises(StartFailed, match="empty command"):
        plan_pod(dataclasses.replace(spec, command=()), settings)
    elsewhere = Path("/srv/data")
    with pytest.raises(StartFailed, match="not under a directory this worker shares with its node"):
        plan_pod(dataclasses.replace(spec, cwd=elsewhere), settings)
    with pytest.raises(StartFailed, match="working directory not found"):
        plan_pod(dataclasses.replace(spec, cwd=tmp_path / "missing"), settings)


# ---- reading a Pod's state -----------------------------------------------------------------------------


def _pod(phase: str, state: Obj | None = None, **status: Any) -> Obj:
    containers = [{"name": "job", "state": state}] if state is not None else []
    return {"status": {"phase": phase, "containerStatuses": containers, **status}}


def _ended(code: int, reason: str = "Error", **kw: Any) -> Obj:
    return {"terminated": {"exitCode": code, "reason": reason, **kw}}


@pytest.mark.parametrize(
    ("pod", "killed", "expected"),
    [
        (_pod("Succeeded", _ended(0, "Completed")), False, ExitStatus(returncode=0)),
        (_pod("Failed", _ended(2)), False, ExitStatus(returncode=2)),
        (_pod("Failed", _ended(143)), False, ExitStatus(signal=15)),
        (
            _pod("Failed", _ended(137, "OOMKilled")),
            False,
            ExitStatus(signal=9, oom=True, memory_limit=1 << 30),
        ),
        (_pod("Failed", _ended(1, signal=6)), False, ExitStatus(signal=6)),
        (_pod("Failed", _ended(0, "Completed")), True, ExitStatus(signal=9)),
        (_pod("Running", {"running": {}}), True, ExitStatus(signal=9)),
        (_pod("Failed", _ended(255)), False, ExitStatus(returncode=255)),
    ],
)
def test_exit_status(pod: Obj, killed: bool, expected: ExitStatus) -> None:
    assert exit_status(PodView.of(pod), memory=1 << 30, killed=killed) == expected


@pytest.mark.parametrize(
    ("pod", "deleted", "problem"),
    [
        (_pod("Succeeded", _ended(0)), False, None),
        (_pod("Failed", _ended(137, "OOMKilled")), False, None),
        (
            _pod("Failed", _ended(137), reason="Evicted", message="low on memory"),
            False,
            "the Pod was evicted from its node: low on memory",
        ),
        (
            _pod(
                "Failed",
                _ended(143),
                conditions=[
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "EvictionByEvictionAPI",
                        "message": "Eviction API: evicting",
                    }
                ],
            ),
            False,
            "the Pod was disrupted (EvictionByEvictionAPI): Eviction API: evicting",
        ),
        (
            _pod(
                "Failed",
                _ended(143),
                reason="Terminated",
                message="Pod was terminated in response to imminent node shutdown.",
            ),
            False,
            "the Pod was ended by its node (Terminated): Pod was terminated in response to imminent node shutdown.",
        ),
        (
            _pod("Running", {"running": {}}),
            True,
            "the Pod was deleted by someone other than the agent while the job ran",
        ),
        (_pod("Failed", _ended(137), reason="DeadlineExceeded"), False, None),
        (
            {**_pod("Failed", _ended(143)), "metadata": {"deletionTimestamp": "2025-05-12T09:14:41Z"}},
            False,
            "the Pod was deleted by someone other than the agent while the job ran",
        ),
        (
            _pod("Failed", None, reason="UnexpectedAdmissionError", message="x"),
            False,
            "the Pod was ended by its node (UnexpectedAdmissionError): x",
        ),
    ],
)
def test_infrastructure_problems(pod: Obj, deleted: bool, problem: str | None) -> None:
    assert infra_problem(PodView.of(pod), deleted) == problem


def test_start_problems() -> None:
    def problem(pod: Obj) -> str | None:
        return start_problem(PodView.of(pod), "img:1", "train")

    assert problem(_pod("Pending")) is None
    assert problem(_pod("Pending", {"waiting": {"reason": "ContainerCreating"}})) is None
    assert problem(_pod("Running", {"running": {}})) is None
    assert problem(_pod("Succeeded", _ended(0, "Completed"))) is None  # started, and already over
    assert problem(_pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off"}})) == (
        "cannot pull image img:1: ImagePullBackOff: Back-off"
    )
    assert problem(
        _pod("Pending", {"waiting": {"reason": "CreateContainerConfigError", "message": "m"}})
    ) == ("cannot start container of image img:1: CreateContainerConfigError: m")
    denied = _ended(128, "StartError", message='exec: "train": permission denied')
    assert (
        problem(_pod("Failed", denied))
        == f"command not executable in image img:1: train ({denied['terminated']['message']})"
    )
    assert (
        problem(_pod("Failed", None, reason="OutOfcpu", message="no"))
        == "the kubelet refused the Pod: OutOfcpu: no"
    )


# ---- configuration -------------------------------------------------------------------------------------


def _options(**kw: object) -> WorkerOptions:
    values: dict[str, object] = {
        f.name: None for f in dataclasses.fields(WorkerOptions) if f.default is dataclasses.MISSING
    }
    values.update(
        server="127.0.0.1:1",
        pool="default",
        spot=False,
        spot_notice_style="auto",
        spot_poll=2.0,
        preempt_grace=45.0,
        max_log_bytes="1Gi",
        isolation="best-effort",
        job_network=True,
        job_pids_limit=4096,
        workdir_unpacked_limit="10Gi",
        workdir_file_limit=100_000,
    )
    values.update(kw)
    return WorkerOptions(**values)  # type: ignore[arg-type]


def test_the_kubernetes_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check_executor(_options(executor="kubernetes", k8s_node_name="node-1"))
    _check_executor(_options(executor="kubernetes", k8s_node_name="node-1", log_shipper="external"))
    for kw, message in (
        ({"executor": "kubernetes"}, "--executor kubernetes needs --k8s-node-name"),
        (
            {"executor": "kubernetes", "k8s_node_name": "n", "docker_host": "unix:///x"},
            "--docker-host and --executor kubernetes",
        ),
        (
            {"executor": "kubernetes", "k8s_node_name": "n", "k8s_namespace": "Jobs!"},
            "not a Kubernetes namespace name",
        ),
        (
            {"executor": "kubernetes", "k8s_node_name": "n", "k8s_kubeconfig": tmp_path / "none"},
            "no such file",
        ),
        ({"k8s_default_image": "x:1"}, "--k8s-default-image needs --executor kubernetes"),
        ({"k8s_namespace": "jobs"}, "--k8s-namespace needs --executor kubernetes"),
        ({"k8s_host_network": True}, "--k8s-host-network needs --executor kubernetes"),
        ({"executor": "docker"}, "--executor must be process, kubernetes or sim"),
        ({"log_shipper": "external"}, "--log-shipper external needs --executor kubernetes"),
        (
            {"executor": "kubernetes", "k8s_node_name": "n", "log_shipper": "fluentd"},
            "--log-shipper must be builtin or external",
        ),
    ):
        with pytest.raises(SystemExit) as e:
            _check_executor(_options(**kw))
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    # NODE_NAME may be set on any node: alone, it asks for nothing.
    _check_executor(_options(k8s_node_name="node-1"))


def test_the_agent_gets_the_kubernetes_executor(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    o = _options(
        executor="kubernetes",
        k8s_node_name="node-1",
        k8s_default_image="trainyard:0.1.0",
        k8s_namespace="ml-jobs",
        k8s_host_network=True,
        token_file=token,
        name="node-1",
        work_dir=tmp_path / "work",
        data_cache=tmp_path / "cache",
        allow_cwd=[tmp_path],
        job_network=True,
    )
    cfg = worker_config(o)
    assert (cfg.executor, cfg.k8s_node_name, cfg.k8s_namespace) == ("kubernetes", "node-1", "ml-jobs")
    assert cfg.log_shipper == "builtin"
    assert worker_config(dataclasses.replace(o, log_shipper="external")).log_shipper == "external"
    executor = executor_for(cfg)
    assert isinstance(executor, KubernetesExecutor)
    s = executor.settings
    assert s == KubernetesSettings(
        node_name="node-1",
        worker=worker_label("node-1", cfg.work_dir),
        namespace="ml-jobs",
        default_image="trainyard:0.1.0",
        host_roots=(cfg.work_dir, cfg.data_cache, tmp_path.resolve()),
        termination_grace_s=45.0,
        network=True,
        host_network=True,
    )
    # Every other agent keeps its executor.
    assert worker_config(_options(token_file=token, name="w", work_dir=tmp_path)).executor == "process"
    assert not isinstance(
        executor_for(WorkerConfig(server="x", token="t", name="w", work_dir=tmp_path)), KubernetesExecutor
    )
