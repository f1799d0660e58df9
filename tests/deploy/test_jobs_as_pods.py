"""overlays/prod-fluentbit, checked offline: the pool that runs jobs as Pods, the claims its job Pods
mount, the Pod Security level they must meet, and the Fluent Bit configuration the control plane's
ingest reads the output of.

Rendered with `kubectl kustomize` (tests/deploy/test_manifests.py validates every object of every
overlay with kubernetes-validate). No cluster, kubelet or Fluent Bit runs here: what is checked is
that the pieces agree with each other and with the code (the agent's flags parse and configure the
executor, whose Pods pass the namespace's Pod Security level; Fluent Bit's object keys parse as the
ingest expects), not how a cluster runs them.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.pod_security import violations
from tests.unit.worker.helpers import launch_spec
from trainyard.cli.worker import WorkerOptions, _check_executor, worker_config
from trainyard.model.podlabels import label_value
from trainyard.server.services.fluentbit import ObjectKey, parse_key
from trainyard.worker.executors.kubernetes import KubernetesExecutor, plan_pod, plan_secret
from trainyard.worker.executors.routing import executor_for

from .test_manifests import KUBERNETES, _expand, _flags, _sample_env, _worker_command

Obj = dict[str, Any]
OVERLAY = "prod-fluentbit"


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: `make kubectl` installs it (Debian's kubernetes-client)")
    deploy = tmp_path_factory.mktemp("manifests") / "deploy"
    shutil.copytree(KUBERNETES.parent, deploy)
    for example in deploy.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    proc = subprocess.run(
        [kubectl, "kustomize", str(deploy / "kubernetes" / "overlays" / OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    return found


def _pods_pool(objects: list[Obj]) -> tuple[Obj, Obj]:
    ds = _one(objects, "DaemonSet", "trainyard-worker-pods")
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    return ds, agent


def _levels(objects: list[Obj]) -> dict[str, str]:
    return {
        o["metadata"]["name"]: o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for o in objects
        if o["kind"] == "Namespace"
    }


# ---- the pool and its claims ---------------------------------------------------------------------------


def test_the_claims_are_the_agents_directories_on_the_pools_nodes(objects: list[Obj]) -> None:
    """Each claim the agent names is bound (both ways) to a local volume of exactly the directory the
    agent has at that flag, on the nodes the pool's agents run on."""
    ds, agent = _pods_pool(objects)
    flags = _flags(agent)
    pool = ds["spec"]["template"]["spec"]["nodeSelector"]["trainyard.io/pool"]
    for dir_flag, claim_flag in (
        ("--work-dir", "--k8s-work-claim"),
        ("--data-cache", "--k8s-data-cache-claim"),
    ):
        claim = _one(objects, "PersistentVolumeClaim", flags[claim_flag])
        assert claim["metadata"]["namespace"] == "trainyard-jobs"
        pv = _one(objects, "PersistentVolume", claim["spec"]["volumeName"])
        assert pv["spec"]["claimRef"] == {"namespace": "trainyard-jobs", "name": claim["metadata"]["name"]}
        assert pv["spec"]["local"]["path"] == flags[dir_flag]
        assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
        (term,) = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [{"key": "trainyard.io/pool", "operator": "In", "values": [pool]}]
        assert claim["spec"]["accessModes"] == pv["spec"]["accessModes"]


def _agent_config(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The pool's agent's configuration, from its args and environment as `yard worker` parses them."""
    _, agent = _pods_pool(objects)
    env = _sample_env(agent)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "home"))
    command = _worker_command().commands["worker"]
    args = [_expand(a, env) for a in agent["args"]]
    with command.make_context("worker", args[1:]) as ctx:
        params = ctx.params
    names = {f.name for f in dataclasses.fields(WorkerOptions)}
    options = WorkerOptions(**{k: v for k, v in params.items() if k in names})
    _check_executor(options)
    return worker_config(options)


def test_the_pools_job_pods_meet_the_jobs_namespaces_level(
    objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Pods the pool's agent would make, from its own flags, against the Pod Security level the
    overlay gives trainyard-jobs (restricted): admitted. Its node paths are moved under tmp_path
    (nothing here writes to /var/lib); which claim holds which directory is the agent's own."""
    cfg = _agent_config(objects, tmp_path, monkeypatch)
    assert (cfg.executor, cfg.log_shipper, cfg.k8s_namespace) == ("kubernetes", "external", "trainyard-jobs")
    executor = executor_for(cfg)
    assert isinstance(executor, KubernetesExecutor)
    node = tmp_path / "node"

    def moved(p: Path) -> Path:
        return node / p.relative_to("/")

    s = executor.settings
    settings = dataclasses.replace(
        s,
        host_roots=tuple(moved(r) for r in s.host_roots),
        volume_claims=tuple((moved(r), c) for r, c in s.volume_claims),
    )
    assert {c for _, c in settings.volume_claims} == {"trainyard-work-pods", "trainyard-data-cache-pods"}
    spec = launch_spec(moved(cfg.work_dir), ["python", "train.py"], env={"HF_TOKEN": "x" * 12})
    cache = moved(cfg.data_cache) / "vision"
    cache.mkdir(parents=True)
    spec = dataclasses.replace(
        spec, data_cache=cache, secret_env=("HF_TOKEN",), lease_token="t", gpu_indices=(0,)
    )
    level = _levels(objects)["trainyard-jobs"]
    assert level == "restricted"
    pod = plan_pod(spec, settings)
    assert violations(pod, level) == []
    assert not any("hostPath" in v for v in pod["spec"]["volumes"])
    secret = plan_secret(spec, settings)
    assert secret is not None and secret["metadata"]["namespace"] == "trainyard-jobs"


# ---- Fluent Bit ----------------------------------------------------------------------------------------


def _sections(conf: str) -> list[tuple[str, dict[str, str]]]:
    """fluent-bit.conf's classic format: [SECTION] then `Key value` lines; # comments."""
    out: list[tuple[str, dict[str, str]]] = []
    for raw in conf.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            out.append((line.strip("[]").upper(), {}))
            continue
        key, _, value = line.partition(" ")
        out[-1][1][key.lower()] = value.strip()
    return out


def _section(sections: list[tuple[str, dict[str, str]]], kind: str, name: str) -> dict[str, str]:
    (found,) = [s for k, s in sections if k == kind and s["name"] == name]
    return found


def test_fluent_bit_writes_where_and_what_the_ingest_reads(objects: list[Obj]) -> None:
    ds = _one(objects, "DaemonSet", "trainyard-fluent-bit")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (cm,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("trainyard-fluent-bit")
    ]
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    sections = _sections(cm["data"]["fluent-bit.conf"])

    def expand(text: str) -> str:
        return re.sub(r"\$\{([A-Z0-9_]+)\}", lambda m: env[m.group(1)], text)

    # Only the job containers of trainyard-jobs are tailed, and only job Pods get through.
    tail = _section(sections, "INPUT", "tail")
    assert expand(tail["path"]) == "/var/log/containers/*_trainyard-jobs_job-*.log"
    assert tail["multiline.parser"] == "cri, docker"
    kube = _section(sections, "FILTER", "kubernetes")
    assert (kube["labels"], kube["annotations"]) == ("On", "On")
    # The object key: the store's own bucket, under its prefix, the ingest's prefix.
    out = _section(sections, "OUTPUT", "s3")
    config = _one(objects, "ConfigMap", "trainyard-config")["data"]
    bucket, _, store_prefix = config["TRAINYARD_OBJECT_STORE"].removeprefix("s3://").partition("/")
    assert expand(out["bucket"]) == bucket and expand(out["region"]) == config["TRAINYARD_S3_REGION"]
    assert (out["compression"], out["json_date_key"], out["json_date_format"]) == ("gzip", "time", "iso8601")
    assert out["s3_key_format_tag_delimiters"] == "."
    rewrite = _section(sections, "FILTER", "rewrite_tag")
    rule = rewrite["rule"].split()
    assert (
        rule[2]
        == "ty.$kubernetes['labels']['trainyard.io/job'].$kubernetes['labels']['trainyard.io/attempt'].$kubernetes['pod_name']"
    )
    # A key as Fluent Bit makes it (tag ty.<job>.<attempt>.<pod>, $TAG[n] its parts, the leading
    # slash the bucket's path separator), read back by the ingest with the control plane's prefix.
    job, pod = "j01jd3c0y5b8t9n4e2x7q6w1r0z", "ty-j01jd3c0y5b8t9n4e2x7q6w1r0z-2-ab12cd34"
    tag = ["ty", label_value(job), "2", pod]
    key = expand(out["s3_key_format"])
    for i, part in enumerate(tag):
        key = key.replace(f"$TAG[{i}]", part)
    key = key.replace("%Y%m%d%H%M%S", "20250512091405").replace("$UUID", "Xk3TqL9a").lstrip("/")
    assert key.startswith(f"{store_prefix}/")
    relative = key.removeprefix(f"{store_prefix}/")
    assert parse_key(relative, config["TRAINYARD_FLUENT_BIT_PREFIX"]) == ObjectKey(job, 2, pod)


def test_fluent_bit_reads_host_paths_only_where_they_are_admitted(objects: list[Obj]) -> None:
    """Fluent Bit runs next to the agents (trainyard-workers, privileged); its own Pod still meets
    baseline but for the host paths it must read, and its role only reads job Pods."""
    ds = _one(objects, "DaemonSet", "trainyard-fluent-bit")
    assert ds["metadata"]["namespace"] == "trainyard-workers"
    assert _levels(objects)["trainyard-workers"] == "privileged"
    found = violations(ds["spec"]["template"], "baseline")
    assert found == ["hostPath volume varlog", "hostPath volume state"]
    varlog = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "varlog")
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    assert any(m["name"] == "varlog" and m["readOnly"] for m in container["volumeMounts"])
    assert varlog["hostPath"]["path"] == "/var/log"
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"trainyard.io/pool": "pods"}
