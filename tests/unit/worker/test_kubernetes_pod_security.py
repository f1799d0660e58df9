"""Every job Pod the kubernetes executor makes meets the Pod Security level of its namespace.

No API server runs here, so PodSecurity admission is checked with tests/pod_security.py, a pure
checker written from the standard (its own table-driven test is below). The namespace's level is
read from deploy/kubernetes/base/namespaces.yaml: the test fails if the manifests and the executor
drift apart again (job Pods once mounted hostPath volumes into a namespace enforcing `baseline`,
which refuses them).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pod_security import violations
from trainyard.worker.executors.kubernetes import KubernetesSettings, plan_pod

from .test_kubernetes_plan import _variants

REPO = Path(__file__).resolve().parents[3]
Obj = dict[str, Any]


def _namespace_levels() -> dict[str, str]:
    docs = yaml.safe_load_all((REPO / "deploy/kubernetes/base/namespaces.yaml").read_text())
    return {
        d["metadata"]["name"]: d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for d in docs
        if d and d["kind"] == "Namespace"
    }


def _with_claims(settings: KubernetesSettings, root: Path) -> KubernetesSettings:
    """The configuration of the pools that run jobs as Pods (deploy/kubernetes/pools/pods): the work
    directory and the data cache from claims of local volumes."""
    return dataclasses.replace(settings, volume_claims=((root, "trainyard-work"),))


def test_the_jobs_namespace_is_restricted() -> None:
    levels = _namespace_levels()
    assert levels["trainyard-jobs"] == "restricted"
    assert levels["trainyard-workers"] == "privileged"  # the agents' sandbox; hostPath stays there


def test_every_job_pod_meets_its_namespaces_level(tmp_path: Path) -> None:
    levels = _namespace_levels()
    failures = []
    for name, (spec, settings) in _variants(tmp_path).items():
        if name in ("shared-cwd", "host-network"):
            continue  # a --allow-cwd root is a host path, --k8s-host-network the host's: see below
        pod = plan_pod(spec, _with_claims(settings, tmp_path))
        level = levels[pod["metadata"]["namespace"]]
        failures += [f"{name}: {v}" for v in violations(pod, level)]
    assert not failures, "\n".join(failures)


def test_host_paths_are_what_keeps_a_pod_out(tmp_path: Path) -> None:
    """Without claims (or for a --allow-cwd root) the executor mounts host paths, and with
    --k8s-host-network it uses the node's network: such Pods are for a namespace that enforces
    `privileged` only, and the checker says why."""
    variants = _variants(tmp_path)
    spec, settings = variants["command-only"]
    bare = plan_pod(spec, settings)
    assert [v for v in violations(bare, "baseline") if v.startswith("hostPath")] == [
        "hostPath volume checkpoints",
        "hostPath volume artifacts",
        "hostPath volume work",
    ]
    assert violations(bare, "privileged") == []
    spec, settings = variants["shared-cwd"]
    shared = plan_pod(spec, _with_claims(settings, tmp_path / "jobs"))
    assert violations(shared, "restricted") == ["hostPath volume cwd", "volume cwd of type ['hostPath']"]
    # Gangs across nodes (--k8s-host-network) need a namespace of their own that enforces privileged.
    spec, settings = variants["host-network"]
    hostnet = plan_pod(spec, _with_claims(settings, tmp_path))
    assert violations(hostnet, "baseline") == ["host namespaces: hostNetwork"]


# ---- the checker ---------------------------------------------------------------------------------------


def _restricted_pod() -> Obj:
    return {
        "metadata": {"name": "p"},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}],
        },
    }


def _set(path: str, value: Any) -> Any:
    def change(pod: Obj) -> None:
        *parents, last = path.split(".")
        node: Any = pod
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        node[last] = value

    return change


# (change, baseline admits it, restricted admits it)
CASES: list[tuple[str, Any, bool, bool]] = [
    ("as is", lambda pod: None, True, True),
    ("hostNetwork", _set("spec.hostNetwork", True), False, False),
    ("hostPID", _set("spec.hostPID", True), False, False),
    ("hostIPC", _set("spec.hostIPC", True), False, False),
    ("hostPath", _set("spec.volumes", [{"name": "h", "hostPath": {"path": "/"}}]), False, False),
    ("privileged", _set("spec.containers.0.securityContext.privileged", True), False, False),
    ("SYS_ADMIN", _set("spec.containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]), False, False),
    ("CHOWN", _set("spec.containers.0.securityContext.capabilities.add", ["CHOWN"]), True, False),
    (
        "NET_BIND",
        _set("spec.containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"]),
        True,
        True,
    ),
    ("hostPort", _set("spec.containers.0.ports", [{"containerPort": 80, "hostPort": 80}]), False, False),
    ("procMount", _set("spec.containers.0.securityContext.procMount", "Unmasked"), False, False),
    ("seccomp off", _set("spec.securityContext.seccompProfile", {"type": "Unconfined"}), False, False),
    ("no seccomp", _set("spec.securityContext.seccompProfile", {}), True, False),
    ("SELinux user", _set("spec.securityContext.seLinuxOptions", {"user": "root"}), False, False),
    (
        "unsafe sysctl",
        _set("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
        False,
        False,
    ),
    (
        "safe sysctl",
        _set("spec.securityContext.sysctls", [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
        True,
        True,
    ),
    ("escalation", _set("spec.containers.0.securityContext.allowPrivilegeEscalation", True), True, False),
    ("root allowed", _set("spec.securityContext.runAsNonRoot", False), True, False),
    ("uid 0", _set("spec.containers.0.securityContext.runAsUser", 0), True, False),
    ("caps kept", _set("spec.containers.0.securityContext.capabilities", {}), True, False),
    ("nfs volume", _set("spec.volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}]), True, False),
    ("emptyDir", _set("spec.volumes", [{"name": "e", "emptyDir": {}}]), True, True),
    (
        "AppArmor off",
        _set("metadata.annotations", {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
        False,
        False,
    ),
]


@pytest.mark.parametrize(("what", "change", "baseline", "restricted"), CASES, ids=[c[0] for c in CASES])
def test_the_checker(what: str, change: Any, baseline: bool, restricted: bool) -> None:
    pod = copy.deepcopy(_restricted_pod())
    change(pod)
    assert (violations(pod, "baseline") == []) is baseline, violations(pod, "baseline")
    assert (violations(pod, "restricted") == []) is restricted, violations(pod, "restricted")
    assert violations(pod, "privileged") == []
