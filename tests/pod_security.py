"""The Pod Security Standards (baseline and restricted) as a pure check over a Pod manifest.

What the API server's PodSecurity admission enforces in a namespace labelled
`pod-security.kubernetes.io/enforce: <level>`, written from the standard's table
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, policy version latest, as of
Kubernetes 1.33). No API server runs here, so the tests check manifests with this instead; it covers
every control of the two levels, for Linux Pods. `privileged` allows everything.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

LEVELS = ("privileged", "baseline", "restricted")

BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)

Obj = Mapping[str, Any]


def _containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or ()


def _baseline(meta: Obj, spec: Obj) -> Iterator[str]:
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"host namespaces: {field}"
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        yield "HostProcess"
    for v in spec.get("volumes") or ():
        if "hostPath" in v:
            yield f"hostPath volume {v.get('name')}"
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            yield f"AppArmor annotation {key}={value}"
    contexts: list[tuple[str, Obj]] = [("pod", psc)]
    for c in _containers(spec):
        name = str(c.get("name"))
        sc = c.get("securityContext") or {}
        contexts.append((name, sc))
        if sc.get("privileged"):
            yield f"{name}: privileged"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            yield f"{name}: HostProcess"
        added = set((sc.get("capabilities") or {}).get("add") or ())
        if added - BASELINE_CAPABILITIES:
            yield f"{name}: capabilities added beyond baseline: {sorted(added - BASELINE_CAPABILITIES)}"
        for port in c.get("ports") or ():
            if port.get("hostPort"):
                yield f"{name}: hostPort {port['hostPort']}"
        if sc.get("procMount", "Default") != "Default":
            yield f"{name}: procMount {sc['procMount']}"
    for name, sc in contexts:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"{name}: seccomp Unconfined"
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            yield f"{name}: AppArmor Unconfined"
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            yield f"{name}: SELinux options {dict(se)}"
    for sysctl in psc.get("sysctls") or ():
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"sysctl {sysctl.get('name')}"


def _restricted(spec: Obj) -> Iterator[str]:
    psc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or ():
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            yield f"volume {v.get('name')} of type {sorted(kinds)}"
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    if psc.get("runAsUser") == 0:
        yield "pod: runAsUser 0"
    for c in _containers(spec):
        name = str(c.get("name"))
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation is not false"
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            yield f"{name}: runAsNonRoot is not true"
        if sc.get("runAsUser") == 0:
            yield f"{name}: runAsUser 0"
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not (seccomp in ("RuntimeDefault", "Localhost") or (seccomp is None and pod_seccomp)):
            yield f"{name}: seccompProfile is not RuntimeDefault or Localhost"
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or ()):
            yield f"{name}: capabilities do not drop ALL"
        if set(caps.get("add") or ()) - {"NET_BIND_SERVICE"}:
            yield f"{name}: capabilities added beyond NET_BIND_SERVICE"


def violations(pod: Obj, level: str) -> list[str]:
    """What keeps ``pod`` (a Pod, or a Pod template: ``metadata`` and ``spec``) out of a namespace
    that enforces ``level``; empty: it is admitted."""
    if level not in LEVELS:
        raise ValueError(f"not a Pod Security level: {level!r}")
    if level == "privileged":
        return []
    meta, spec = pod.get("metadata") or {}, pod["spec"]
    out = list(_baseline(meta, spec))
    if level == "restricted":
        out += _restricted(spec)
    return out
