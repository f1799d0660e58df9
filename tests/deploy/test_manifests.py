"""The Kubernetes manifests (deploy/kubernetes), checked offline: no cluster or API server runs here.

Every overlay is rendered with `kubectl kustomize` (`make kubectl` installs Debian's kubernetes-client;
without kubectl these tests fail, they do not skip). Every object is validated, strictly (unknown
fields are errors), against the schemas of a pinned Kubernetes version with kubernetes-validate, and
every custom resource against tests/deploy/crd_schemas (hand-written from the published CRDs; see the
README there). Then the properties a deployment relies on are asserted: replicas, probes, resources,
where the secret key comes from, image tags, that every reference resolves, that the worker flags are
ones `yard worker` accepts, that the NetworkPolicies keep jobs from the backends, and that every metric
the alerts and dashboards query is one the control plane exports.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if (p / "kustomization.yaml").is_file())

# The Kubernetes version the objects are validated for (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.33.0"

Obj = dict[str, Any]

POD_OWNERS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "ReplicaSet"}
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
# What every cluster creates by itself in each namespace.
IMPLICIT = {("ConfigMap", "kube-root-ca.crt")}


def test_every_overlay_is_listed() -> None:
    assert OVERLAYS == ["dev", "prod", "prod-fluentbit", "prod-keda"]


# ---- rendering -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: `make kubectl` installs it (Debian's kubernetes-client)")
    return path


@pytest.fixture(scope="session")
def deploy_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ with each secrets/X.env written from X.env.example: the real ones are not in git (and a
    developer's own are not read here)."""
    dst = tmp_path_factory.mktemp("manifests") / "deploy"
    shutil.copytree(DEPLOY, dst)
    for example in dst.rglob("*.env.example"):
        example.with_suffix("").write_text(example.read_text())
    return dst


@pytest.fixture(scope="session")
def render(kubectl: str, deploy_copy: Path) -> Callable[[str], list[Obj]]:
    cache: dict[str, list[Obj]] = {}

    def get(overlay: str) -> list[Obj]:
        if overlay not in cache:
            proc = subprocess.run(
                [kubectl, "kustomize", str(deploy_copy / "kubernetes" / "overlays" / overlay)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{proc.stderr}"
            cache[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return cache[overlay]

    return get


@pytest.fixture(scope="session", params=OVERLAYS)
def objects(request: pytest.FixtureRequest, render: Callable[[str], list[Obj]]) -> list[Obj]:
    return render(request.param)


def _find(objs: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"]["name"] == name
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"{kind} {namespace}/{name}: {len(found)} found"
    return found[0]


def _pod_specs(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(owner, pod spec) for every object that makes Pods."""
    for o in objs:
        if o["kind"] in POD_OWNERS:
            yield o, o["spec"]["template"]["spec"]


def _containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _workers(objs: list[Obj]) -> list[tuple[Obj, Obj]]:
    return [
        (o, s)
        for o, s in _pod_specs(objs)
        if o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


def _server(objs: list[Obj]) -> Obj:
    return _find(objs, "Deployment", "trainyard-server", "trainyard")


def _id(o: Obj) -> str:
    return f"{o['kind']} {o['metadata'].get('namespace', '-')}/{o['metadata']['name']}"


# ---- schemas -------------------------------------------------------------------------------------------


def test_renders_objects(objects: list[Obj]) -> None:
    ids = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids)), "an object is rendered twice"
    kinds = {o["kind"] for o in objects}
    for kind in ("Namespace", "Deployment", "DaemonSet", "Service", "ConfigMap", "Secret", "NetworkPolicy"):
        assert kind in kinds


def _crd_schema(api_version: str, kind: str) -> Obj:
    group, _, version = api_version.rpartition("/")
    return yaml.safe_load((CRD_SCHEMAS / f"{kind.lower()}-{group}-{version}.yaml").read_text())


def test_every_object_is_valid(objects: list[Obj]) -> None:
    """Kubernetes' own kinds against the pinned version's schemas, strictly (kubernetes-validate
    --strict); custom resources against their CRDs' schemas. A kind with neither fails."""
    errors = []
    for o in objects:
        if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS:
            schema = _crd_schema(o["apiVersion"], o["kind"])
            validator = jsonschema.Draft202012Validator(schema)
            errors += [f"{_id(o)}: {e.json_path}: {e.message}" for e in validator.iter_errors(o)]
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{_id(o)}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{_id(o)}: {e.message}")
    assert not errors, "\n".join(errors)


def test_crd_schemas_are_sound() -> None:
    for path in sorted(CRD_SCHEMAS.glob("*.yaml")):
        jsonschema.Draft202012Validator.check_schema(yaml.safe_load(path.read_text()))


def test_crd_schemas_catch_mistakes(render: Callable[[str], list[Obj]]) -> None:
    """The custom resources' schemas are closed: a misspelt field is an error, as it is for the
    built-in kinds."""
    objs = render("prod-keda")
    for kind in ("ServiceMonitor", "PrometheusRule", "ScaledObject"):
        o = next(o for o in objs if o["kind"] == kind)
        bad = json.loads(json.dumps(o))
        bad["spec"]["selecter"] = {}
        errors = list(jsonschema.Draft202012Validator(_crd_schema(o["apiVersion"], kind)).iter_errors(bad))
        assert errors, kind
    deployment = json.loads(json.dumps(_server(objs)))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# ---- the control plane ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overlay", "replicas"), [("dev", 1), ("prod", 3), ("prod-fluentbit", 3), ("prod-keda", 3)]
)
def test_replicas(render: Callable[[str], list[Obj]], overlay: str, replicas: int) -> None:
    assert _server(render(overlay))["spec"]["replicas"] == replicas


def test_probes(objects: list[Obj]) -> None:
    deployment = _server(objects)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = _env_sources(objects, deployment, container)
    assert ports["http"] == int(config["TRAINYARD_PORT"])
    assert ports["grpc"] == int(config["TRAINYARD_GRPC_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Listening on every address, or the probes (and the Services) could not reach it.
    assert config["TRAINYARD_HOST"] == config["TRAINYARD_GRPC_HOST"] == "0.0.0.0"


def test_control_plane_spreads_and_has_a_disruption_budget(objects: list[Obj]) -> None:
    deployment = _server(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    affinity = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        t["podAffinityTerm"] for t in affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    terms += affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname" and _selects(t["labelSelector"], pod_labels)
        for t in terms
    )
    if deployment["spec"]["replicas"] > 1:
        required = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
        assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in required)
    pdb = _find(objects, "PodDisruptionBudget", "trainyard-server", "trainyard")
    assert _selects(pdb["spec"]["selector"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_control_plane_meets_the_restricted_pod_security_standard(objects: list[Obj]) -> None:
    """Namespace trainyard enforces `restricted`: a Pod that does not meet it is never created."""
    namespace = _find(objects, "Namespace", "trainyard")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for owner, spec in _pod_specs(objects):
        if owner["metadata"]["namespace"] != "trainyard":
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert not spec.get("hostNetwork") and not spec.get("hostPID")
        assert not any("hostPath" in v for v in spec.get("volumes", []))
        for c in _containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] is True
            assert not sc.get("privileged")


def test_the_secret_key_comes_from_a_secret(objects: list[Obj]) -> None:
    """Every replica reads TRAINYARD_SECRET_KEY from the same Secret (a key per replica would make
    team secrets unreadable on the others)."""
    deployment = _server(objects)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (entry,) = [e for e in container["env"] if e["name"] == "TRAINYARD_SECRET_KEY"]
    ref = entry["valueFrom"]["secretKeyRef"]
    secret = _find(objects, "Secret", ref["name"], "trainyard")
    assert ref["key"] in secret["data"]
    assert not ref.get("optional")
    (token,) = [e for e in container["env"] if e["name"] == "TRAINYARD_WORKER_TOKEN"]
    assert "secretKeyRef" in token["valueFrom"]
    # Nothing secret sits in the ConfigMap.
    config = _find_prefix(objects, "ConfigMap", "trainyard-config", "trainyard")
    assert not {k for k in config["data"] if re.search("SECRET|TOKEN|PASSWORD|DATABASE_URL|REDIS_URL", k)}


def test_prod_takes_its_backends_from_a_secret(render: Callable[[str], list[Obj]]) -> None:
    objs = render("prod")
    deployment = _server(objs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _env_sources(objs, deployment, container)
    for name in ("TRAINYARD_DATABASE_URL", "TRAINYARD_REDIS_URL"):
        assert name in env, name
    (backends,) = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    secret = _find(objs, "Secret", backends, "trainyard")
    assert {"TRAINYARD_DATABASE_URL", "TRAINYARD_REDIS_URL"} <= set(secret["data"])
    config = _find_prefix(objs, "ConfigMap", "trainyard-config", "trainyard")["data"]
    assert config["TRAINYARD_OBJECT_STORE"].startswith("s3://")
    assert config["TRAINYARD_KAFKA_BOOTSTRAP"]


def test_dev_runs_on_the_embedded_defaults(render: Callable[[str], list[Obj]]) -> None:
    objs = render("dev")
    deployment = _server(objs)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = _env_sources(objs, deployment, container)
    assert not {"TRAINYARD_DATABASE_URL", "TRAINYARD_REDIS_URL", "TRAINYARD_KAFKA_BOOTSTRAP"} & set(env)
    # SQLite in a volume that outlives the Pod, and never two replicas on it.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (home,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "home"]
    assert set(home) == {"name", "persistentVolumeClaim"}


# ---- every Pod -----------------------------------------------------------------------------------------


def test_every_container_has_resources(objects: list[Obj]) -> None:
    for owner, spec in _pod_specs(objects):
        for c in _containers(spec):
            r = c.get("resources", {})
            assert {"cpu", "memory"} <= set(r.get("requests", {})), f"{_id(owner)} {c['name']}: requests"
            assert "memory" in r.get("limits", {}), f"{_id(owner)} {c['name']}: memory limit"
            for extended in ("nvidia.com/gpu",):
                if extended in r.get("requests", {}) or extended in r.get("limits", {}):
                    assert r["requests"][extended] == r["limits"][extended]


def _trainyard_image(image: str) -> bool:
    return image.rpartition("/")[2].split(":")[0] == "trainyard"


def test_images_are_pinned_to_the_release(objects: list[Obj]) -> None:
    """No `latest` and no untagged images; Trainyard's own tag is this package's version (others,
    Fluent Bit's, a release of theirs)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for owner, spec in _pod_specs(objects):
        for c in _containers(spec):
            image = c["image"]
            if "@sha256:" in image:
                continue
            _, sep, tag = image.rpartition(":")
            assert sep and "/" not in tag, f"{_id(owner)}: {image} has no tag"
            assert tag != "latest", f"{_id(owner)}: {image}"
            if _trainyard_image(image):
                assert tag == version, f"{_id(owner)}: {image} is not {version}"
            else:
                assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{_id(owner)}: {image} is not a release"


def test_no_service_links(objects: list[Obj]) -> None:
    """Kubernetes would set TRAINYARD_PORT=tcp://... for the Service named trainyard, in the very
    variable Trainyard reads its port from."""
    for owner, spec in _pod_specs(objects):
        assert spec.get("enableServiceLinks") is False, _id(owner)


def test_host_network_pods_still_resolve_cluster_names(objects: list[Obj]) -> None:
    for owner, spec in _pod_specs(objects):
        if spec.get("hostNetwork"):
            assert spec["dnsPolicy"] == "ClusterFirstWithHostNet", _id(owner)


def test_every_reference_resolves(objects: list[Obj]) -> None:
    """ConfigMaps, Secrets (and their keys), volume claims and service accounts named by a Pod exist in
    its namespace; `$(VAR)` in args names a variable the container defines (the kubelet would pass an
    unknown one on literally)."""
    have = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    missing = []

    def need(kind: str, ns: str, name: str, key: str | None = None) -> None:
        if (kind, name) in IMPLICIT:
            return
        o = have.get((kind, ns, name))
        if o is None:
            missing.append(f"{kind} {ns}/{name}")
        elif key is not None and key not in (o.get("data") or {}):
            missing.append(f"{kind} {ns}/{name} key {key}")

    for owner, spec in _pod_specs(objects):
        ns = owner["metadata"]["namespace"]
        need("ServiceAccount", ns, spec.get("serviceAccountName", "default"))
        for v in spec.get("volumes", []):
            if "configMap" in v:
                need("ConfigMap", ns, v["configMap"]["name"])
            if "secret" in v:
                need("Secret", ns, v["secret"]["secretName"])
            if "persistentVolumeClaim" in v:
                need("PersistentVolumeClaim", ns, v["persistentVolumeClaim"]["claimName"])
            for source in v.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    need("ConfigMap", ns, source["configMap"]["name"])
        for c in _containers(spec):
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}, _id(owner)
            for e in c.get("envFrom", []):
                if "configMapRef" in e:
                    need("ConfigMap", ns, e["configMapRef"]["name"])
                if "secretRef" in e:
                    need("Secret", ns, e["secretRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    need("Secret", ns, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
                if "configMapKeyRef" in ref:
                    need("ConfigMap", ns, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
            defined = {e["name"] for e in c.get("env", [])}
            for arg in [*c.get("command", []), *c.get("args", [])]:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    assert var in defined, f"{_id(owner)}: $({var}) in {arg!r} is not defined"
    for o in objects:
        if o["kind"] == "RoleBinding":
            need("Role", o["metadata"]["namespace"], o["roleRef"]["name"])
            for s in o["subjects"]:
                need("ServiceAccount", s["namespace"], s["name"])
    assert not missing, missing


def test_services_reach_their_pods(objects: list[Obj]) -> None:
    pods = list(_pod_specs(objects))
    for svc in (o for o in objects if o["kind"] == "Service"):
        ns = svc["metadata"]["namespace"]
        targets = [
            (owner, spec)
            for owner, spec in pods
            if owner["metadata"]["namespace"] == ns
            and _selects(
                {"matchLabels": svc["spec"]["selector"]}, owner["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert targets, f"{_id(svc)} selects no Pods"
        for owner, spec in targets:
            names = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
            for port in svc["spec"]["ports"]:
                assert port["targetPort"] in names, f"{_id(svc)} port {port['name']} -> {_id(owner)}"


# ---- settings and flags --------------------------------------------------------------------------------


def _known_trainyard_variables() -> set[str]:
    """The TRAINYARD_* names the code reads: the control plane's settings, `yard worker`'s options,
    and the few read directly from the environment."""
    import typer

    from trainyard.cli.main import app
    from trainyard.server.settings import Settings

    names = {f"TRAINYARD_{field.upper()}" for field in Settings.model_fields}
    worker = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    for param in worker.params:
        envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
        names |= {e for e in envvars if e}
    # Read with os.environ: the worker token (server and worker), the state directory (CLI), uvloop.
    names |= {"TRAINYARD_WORKER_TOKEN", "TRAINYARD_HOME", "TRAINYARD_UVLOOP"}
    return names


def _manifest_variables(objects: list[Obj]) -> dict[str, str]:
    """Every environment variable name the manifests set, with where."""
    found: dict[str, str] = {}
    for o in objects:
        if o["kind"] in ("ConfigMap", "Secret") and o["metadata"]["name"] != "trainyard-grafana-dashboard":
            found |= {k: _id(o) for k in (o.get("data") or {})}
    for owner, spec in _pod_specs(objects):
        for c in _containers(spec):
            found |= {e["name"]: _id(owner) for e in c.get("env", [])}
    return found


def test_trainyard_variables_are_real_settings(objects: list[Obj]) -> None:
    known = _known_trainyard_variables()
    unknown = {k: where for k, where in _manifest_variables(objects).items() if k.startswith("TRAINYARD_")}
    unknown = {k: where for k, where in unknown.items() if k not in known}
    assert not unknown, f"not a Trainyard setting: {unknown}"


def test_secret_examples_name_real_settings() -> None:
    known = _known_trainyard_variables()
    for example in sorted(KUBERNETES.rglob("*.env.example")):
        for line in example.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key = line.split("=", 1)[0]
                assert key in known or key.startswith("AWS_"), f"{example.name}: {key}"


def _worker_command() -> Any:
    import typer

    from trainyard.cli.main import app

    return typer.main.get_command(app)


def _expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)


def _sample_env(container: Obj) -> dict[str, str]:
    """What the kubelet would put in the container's environment, with plausible node values."""
    samples = {"spec.nodeName": "node-1", "requests.cpu": "14", "requests.memory": "57344"}
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = samples[e["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in e["valueFrom"]:
            env[e["name"]] = samples[e["valueFrom"]["resourceFieldRef"]["resource"]]
        else:
            env[e["name"]] = "from-a-secret"
    return env


def test_yard_accepts_the_arguments(objects: list[Obj]) -> None:
    """Each container's args parse as a `yard` command line: every flag exists and every value has
    its type (the options are parsed, the command is not run)."""
    group = _worker_command()
    for owner, spec in _pod_specs(objects):
        for c in spec["containers"]:
            if not _trainyard_image(c["image"]):
                continue
            args = [_expand(a, _sample_env(c)) for a in c["args"]]
            assert args[0] in ("server", "worker"), _id(owner)
            command = group.commands[args[0]]
            with command.make_context(args[0], args[1:]) as ctx:
                assert ctx.params is not None


def _flags(container: Obj) -> dict[str, str]:
    out = {}
    for arg in container["args"][1:]:
        key, _, value = arg.partition("=")
        out[key] = value if value or "=" in arg else "true"
    return out


def test_worker_pools(objects: list[Obj]) -> None:
    """A DaemonSet (or, autoscaled, a Deployment) per node pool: its node selector and its agent's
    flags agree, GPU pools tolerate the GPU taint and take the GPUs they declare, spot pools tolerate
    spot taints, the spool and the data cache are on the node's disk, and the job sandbox can work."""
    workers = _workers(objects)
    assert workers
    assert any(o["kind"] == "DaemonSet" for o, _ in workers)
    for owner, spec in workers:
        name = _id(owner)
        (agent,) = spec["containers"]
        assert agent["args"][0] == "worker"
        flags = _flags(agent)
        env = {e["name"]: e.get("value") for e in agent["env"]}
        selector = spec.get("nodeSelector", {})
        pool = flags["--pool"]
        assert owner["spec"]["template"]["metadata"]["labels"]["trainyard.io/pool"] == pool, name
        if selector:
            assert selector["trainyard.io/pool"] == pool, name
            if "--region" in flags:
                assert selector["topology.kubernetes.io/region"] == flags["--region"], name
        tolerations = spec.get("tolerations", [])
        gpus = int(flags.get("--gpus", "0"))
        if gpus:
            assert selector["trainyard.io/gpu-type"] == flags["--gpu-type"], name
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), name
            assert int(agent["resources"]["limits"]["nvidia.com/gpu"]) == gpus, name
        if "--spot" in flags:
            assert selector["trainyard.io/capacity-type"] == "spot", name
            assert {"trainyard.io/spot", "cloud.google.com/gke-spot"} <= {t["key"] for t in tolerations}, name
        # Attempt directories and the data cache on the node's disk, at the paths the agent is given.
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in agent["volumeMounts"]}
        for flag in ("--work-dir", "--data-cache"):
            assert mounts[flags[flag]]["hostPath"]["path"] == flags[flag], f"{name} {flag}"
        assert env.get("TRAINYARD_RUN_AS") not in ("root", "0"), name
        assert env["TRAINYARD_SERVER"].startswith("dns:///trainyard-grpc.trainyard.svc"), name
        labels = owner["spec"]["template"]["metadata"]["labels"]
        if flags.get("--executor") == "kubernetes":
            # Jobs run as Pods of their own (Pod Security restricted in trainyard-jobs), not in this
            # container: no sandbox, no privilege; the node's capacity is declared, not reserved.
            assert agent["securityContext"]["privileged"] is False, name
            assert agent["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert env["TRAINYARD_ISOLATION"] == "off", name
            assert not flags["--cpus"].startswith("$("), name
            assert "nvidia.com/gpu" not in agent["resources"]["limits"], name
            assert labels["trainyard.io/kubernetes-api"] == "true", name
            assert {"--k8s-work-claim", "--k8s-data-cache-claim"} <= set(flags), name
        else:
            # The sandbox: bubblewrap, setpriv and per-job cgroups need a privileged container (see the
            # comment in pools/template/daemonset.yaml), and jobs are refused rather than run without it.
            assert agent["securityContext"]["privileged"] is True, name
            assert env["TRAINYARD_ISOLATION"] == "required", name
            # Declared capacity is what the Pod reserved.
            assert flags["--cpus"] == "$(AGENT_CPUS)" and flags["--memory"] == "$(AGENT_MEMORY_MI)Mi", name
            # Jobs share this Pod's network: no way to the Kubernetes API.
            assert "trainyard.io/kubernetes-api" not in labels, name
        assert agent["resources"]["limits"]["memory"] == agent["resources"]["requests"]["memory"], name
        assert "cpu" not in agent["resources"]["limits"], name
        # The agent outlives the preemption grace it gives its jobs.
        assert spec["terminationGracePeriodSeconds"] > float(env["TRAINYARD_PREEMPT_GRACE"]) + 30, name


def test_no_node_runs_two_agents(objects: list[Obj]) -> None:
    """Two pools' node selectors always disagree on some label, so no node matches both."""
    selectors = [(_id(o), s.get("nodeSelector", {})) for o, s in _workers(objects)]
    for i, (a, sa) in enumerate(selectors):
        for b, sb in selectors[i + 1 :]:
            assert any(k in sb and sb[k] != v for k, v in sa.items()), f"{a} and {b} can share a node"


def test_workers_hold_no_backend_credentials(objects: list[Obj]) -> None:
    """Workers speak gRPC and presigned URLs only: no database, Redis, Kafka or S3 settings, no secret
    key. Their one secret is the worker token."""
    for owner, spec in _workers(objects):
        (agent,) = spec["containers"]
        assert not agent.get("envFrom"), _id(owner)
        secrets = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in agent["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert secrets == {"trainyard-agent-token"}, _id(owner)
        assert not [e for e in agent["env"] if re.search("DATABASE|REDIS|KAFKA|S3|AWS|SECRET_KEY", e["name"])]


def test_jobs_cannot_read_the_service_account_token(objects: list[Obj]) -> None:
    """Jobs run inside the agent's container as nobody: the token is mounted for root only."""
    for owner, spec in _workers(objects):
        assert spec["automountServiceAccountToken"] is False
        (projected,) = [v["projected"] for v in spec["volumes"] if "projected" in v]
        assert projected["defaultMode"] == 0o400, _id(owner)


def test_agents_manage_pods_only_in_the_jobs_namespace(objects: list[Obj]) -> None:
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    roles = [o for o in objects if o["kind"] == "Role"]
    assert roles
    for role in roles:
        assert role["metadata"]["namespace"] == "trainyard-jobs"
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""]
            assert set(rule["resources"]) <= {"pods", "pods/log", "events", "secrets"}
            assert "*" not in rule["verbs"]
    # Fluent Bit's kubernetes filter reads the job Pods, and nothing else.
    for role in roles:
        if role["metadata"]["name"] == "trainyard-fluent-bit":
            assert role["rules"] == [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ]
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["metadata"]["namespace"] == "trainyard-jobs"
        fluent_bit = binding["roleRef"]["name"] == "trainyard-fluent-bit"
        account = "trainyard-fluent-bit" if fluent_bit else "trainyard-worker"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "trainyard-workers"}
        ]
    for owner, spec in _workers(objects):
        assert spec["serviceAccountName"] == "trainyard-worker", _id(owner)


# ---- network policies ----------------------------------------------------------------------------------

# PostgreSQL, Redis, Kafka at private addresses (in the cluster or in the VPC), and the metadata endpoint.
BACKENDS = [
    ("10.0.12.7", 5432),
    ("172.20.3.4", 6379),
    ("192.168.5.6", 9092),
    ("100.64.1.2", 5432),
    ("169.254.169.254", 80),
    ("fd00::12", 5432),
]
S3 = ("52.216.8.1", 443)  # a public S3 address: presigned URLs must work


def _port_allowed(rule: Obj, port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(p.get("port") == port for p in ports)


def _egress_to_ip(policies: list[Obj], ip: str, port: int) -> list[str]:
    """The policies whose egress rules let a Pod reach ip:port through an ipBlock."""
    addr = ipaddress.ip_address(ip)
    allowing = []
    for p in policies:
        for rule in p["spec"].get("egress", []):
            if not _port_allowed(rule, port):
                continue
            if not rule.get("to"):
                allowing.append(p["metadata"]["name"])
                continue
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block is None:
                    continue
                net = ipaddress.ip_network(block["cidr"])
                excepted = any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
                if addr.version == net.version and addr in net and not excepted:
                    allowing.append(p["metadata"]["name"])
    return allowing


@pytest.mark.parametrize("namespace", ["trainyard-jobs", "trainyard-workers"])
def test_jobs_cannot_reach_the_backends(objects: list[Obj], namespace: str) -> None:
    """Job Pods (trainyard-jobs) and the agents that run jobs in their own Pod (trainyard-workers, on
    the Pod network) reach PostgreSQL, Redis, Kafka and the metadata endpoint through no rule, and
    object storage's public endpoints through one."""
    policies = [
        o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["namespace"] == namespace
    ]
    assert any(p["spec"]["podSelector"] == {} and "Egress" in p["spec"]["policyTypes"] for p in policies)
    for ip, port in BACKENDS:
        assert not _egress_to_ip(policies, ip, port), f"{namespace} reaches {ip}:{port}"
    assert _egress_to_ip(policies, *S3), f"{namespace} cannot reach object storage"
    # Rules that name Pods instead of addresses: DNS, the namespace's own Pods, the control plane.
    for p in policies:
        for rule in p["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    if ipaddress.ip_network(peer["ipBlock"]["cidr"]).num_addresses == 1:
                        assert {x["port"] for x in rule["ports"]} == {53}
                    continue
                target = (
                    peer.get("namespaceSelector", {})
                    .get("matchLabels", {})
                    .get("kubernetes.io/metadata.name")
                )
                ports = {x["port"] for x in rule.get("ports", [])}
                if target is None:
                    assert "namespaceSelector" not in peer  # this namespace's own Pods (gangs)
                elif target == "kube-system":
                    assert ports == {53}
                else:
                    assert (target, ports) == ("trainyard", {8080, 50051}), f"{namespace}: {peer}"
    # Nothing comes in to the agents; job Pods take connections from each other only.
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            assert rule["from"] == [{"podSelector": {}}], p["metadata"]["name"]


# ---- monitoring ----------------------------------------------------------------------------------------

# Exported by others: kube-state-metrics (in the ScaledObject's query) and Prometheus itself.
FOREIGN_METRICS = {"kube_deployment_status_replicas_available", "up"}


def _exposition() -> str:
    """One control plane's exposition, every metric family touched once."""
    from prometheus_client import generate_latest

    from trainyard.scheduler.demand import PoolDemand
    from trainyard.server.metrics import Metrics

    m = Metrics()
    m.add_queue_collector(
        lambda: {"by_status": {"PENDING": 1}, "pending_by_pool": {"gpu": 1}, "outbox_lag": 0}
    )
    m.add_demand_collector(lambda: [PoolDemand("a100-burst", "a100", 1, 8.0, 1 << 30, 8)])
    m.gpu_utilization.record("w1", "node-1", {0: 0.5})
    return generate_latest(m.registry).decode()


def _exported_series() -> set[str]:
    """The series names one control plane exposes."""
    series = set()
    for line in _exposition().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":  # named with or without _total, by prometheus_client's version
                series |= {name.removesuffix("_total") + "_total"}
            elif kind == "histogram":
                series |= {name + s for s in ("_bucket", "_count", "_sum")}
            else:
                series.add(name)
    return series


def _queried_metrics(expr: str) -> set[str]:
    # Series names: identifiers followed by a selector, a range or an operator, not label names or
    # functions (which are followed by "(" or "=").
    names = set(
        re.findall(
            r"\b([a-z_][a-z0-9_]*)\s*(?=[{\[)]|\s*$|\s*[-+*/><=!]=?\s*[\d(]|\s+(?:and|or|unless)\b)", expr
        )
    )
    functions = {
        "sum",
        "max",
        "min",
        "rate",
        "increase",
        "histogram_quantile",
        "absent",
        "vector",
        "clamp_min",
        "avg",
    }
    return {n for n in names if n not in functions and (n.startswith(("trainyard_", "kube_")) or n == "up")}


def _queries(objects: list[Obj]) -> dict[str, str]:
    out = {}
    for o in objects:
        if o["kind"] == "PrometheusRule":
            for group in o["spec"]["groups"]:
                for rule in group["rules"]:
                    out[f"rule {rule.get('alert') or rule.get('record')}"] = rule["expr"]
        if o["kind"] == "ScaledObject":
            for i, trigger in enumerate(o["spec"]["triggers"]):
                out[f"{_id(o)} trigger {i}"] = trigger["metadata"]["query"]
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "trainyard-grafana-dashboard":
            for data in o["data"].values():
                for panel in json.loads(data)["panels"]:
                    for target in panel.get("targets", []):
                        out[f"panel {panel['title']}"] = target["expr"]
    return out


def test_queries_use_exported_metrics(render: Callable[[str], list[Obj]]) -> None:
    """Every metric the alerts, the dashboard and the ScaledObject query is one the control plane
    exports (or another named exporter's): a renamed metric would silence an alert for good."""
    queries = _queries(render("prod-keda"))
    assert {"rule TrainyardJobFailureRateHigh", "rule TrainyardWorkersLost"} <= set(queries)
    exported = _exported_series() | FOREIGN_METRICS
    used = set()
    for where, expr in queries.items():
        names = _queried_metrics(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= exported, f"{where}: {names - exported} not exported"
        used |= names
    assert "trainyard_pool_pending_demand" in used


def test_the_scaled_object_queries_labels_the_demand_gauge_has() -> None:
    """The ScaledObject's selector names the gauge's labels and a resource it exports (in GPUs)."""
    samples = [
        dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].split("}", 1)[0]))
        for line in _exposition().splitlines()
        if line.startswith("trainyard_pool_pending_demand{")
    ]
    assert {s["resource"] for s in samples} == {"gpu", "cpu", "memory"}
    assert all(set(s) == {"pool", "gpu_type", "resource"} for s in samples)
    gpu = [line for line in _exposition().splitlines() if 'resource="gpu"' in line]
    assert gpu and gpu[0].endswith(" 8.0")


def test_alerts_cover_the_issue(render: Callable[[str], list[Obj]]) -> None:
    """Job failure rate, wait time, lost workers, outbox lag (issue 15)."""
    (rule,) = [o for o in render("prod") if o["kind"] == "PrometheusRule"]
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    for metric in (
        "trainyard_jobs_finished_total",
        "trainyard_job_wait_seconds_bucket",
        "trainyard_worker_heartbeats_missed_total",
        "trainyard_outbox_lag",
    ):
        assert metric in exprs
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["severity"] in ("info", "warning", "critical")
            assert r["annotations"]["summary"] and r["annotations"]["description"]
            assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


def test_service_monitor_scrapes_the_control_plane(render: Callable[[str], list[Obj]]) -> None:
    objs = render("prod")
    (monitor,) = [o for o in objs if o["kind"] == "ServiceMonitor"]
    services = [
        o
        for o in objs
        if o["kind"] == "Service"
        and o["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
        and _selects(monitor["spec"]["selector"], o["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in services] == ["trainyard"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}


def test_dashboard_is_the_one_in_the_repository(render: Callable[[str], list[Obj]]) -> None:
    dashboard = _find(render("prod"), "ConfigMap", "trainyard-grafana-dashboard", "trainyard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["trainyard.json"]) == json.loads(
        (DEPLOY / "grafana" / "trainyard.json").read_text()
    )


def test_scaled_object(render: Callable[[str], list[Obj]]) -> None:
    """The KEDA example scales an agent Deployment on the pending demand of that pool and shape, never
    scales it down by itself (an HPA would delete busy agents), and keeps the CRD's CEL rule."""
    objs = render("prod-keda")
    (so,) = [o for o in objs if o["kind"] == "ScaledObject"]
    spec = so["spec"]
    # The published CRD's x-kubernetes-validations rule.
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    ref = spec["scaleTargetRef"]
    target = _find(objs, ref["kind"], ref["name"], so["metadata"]["namespace"])
    assert "replicas" not in target["spec"]
    (agent,) = target["spec"]["template"]["spec"]["containers"]
    flags = _flags(agent)
    (trigger,) = spec["triggers"]
    query = trigger["metadata"]["query"]
    labels = dict(
        re.findall(r'(\w+)="([^"]*)"', query.split("trainyard_pool_pending_demand{", 1)[1].split("}", 1)[0])
    )
    assert labels == {"pool": flags["--pool"], "gpu_type": flags["--gpu-type"], "resource": "gpu"}
    assert int(trigger["metadata"]["threshold"]) == int(flags["--gpus"])
    assert f'deployment="{ref["name"]}"' in query
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["selectPolicy"]
        == "Disabled"
    )


# ---- secrets in git ------------------------------------------------------------------------------------


def test_production_secrets_stay_out_of_git() -> None:
    secrets = KUBERNETES / "overlays" / "prod" / "secrets"
    assert "*.env" in (secrets / ".gitignore").read_text().split()
    generated = yaml.safe_load((secrets / "kustomization.yaml").read_text())["secretGenerator"]
    for gen in generated:
        assert (secrets / (gen["env"] + ".example")).is_file(), gen["env"]
    if (REPO / ".git").exists():
        tracked = subprocess.run(
            ["git", "ls-files", str(secrets)], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        assert not [t for t in tracked if t.endswith(".env")], tracked


def test_placeholders_fail_loudly() -> None:
    """An example copied unedited stops the control plane at start (the secret key is not 64 hex
    characters) instead of running with a made-up key per replica."""
    from trainyard.server.settings import Settings, secret_key

    example = (KUBERNETES / "overlays" / "prod" / "secrets" / "secret-key.env.example").read_text()
    (value,) = [
        line.split("=", 1)[1] for line in example.splitlines() if line.startswith("TRAINYARD_SECRET_KEY=")
    ]
    with pytest.raises(ValueError, match="64 hex"):
        secret_key(Settings(secret_key=value))


# ---- helpers -------------------------------------------------------------------------------------------


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _find_prefix(objs: list[Obj], kind: str, prefix: str, namespace: str) -> Obj:
    """A generated object, whose name has a content hash appended."""
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and o["metadata"].get("namespace") == namespace
        and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind} {namespace}/{prefix}*: {len(found)} found"
    return found[0]


def _env_sources(objs: list[Obj], owner: Obj, container: Obj) -> dict[str, str]:
    """The container's environment as Kubernetes assembles it: envFrom in order, then env. Values from
    Secrets are decoded; other valueFrom entries are left as ''."""
    import base64

    ns = owner["metadata"]["namespace"]
    env: dict[str, str] = {}
    for e in container.get("envFrom", []):
        if "configMapRef" in e:
            env |= _find(objs, "ConfigMap", e["configMapRef"]["name"], ns)["data"]
        if "secretRef" in e:
            data = _find(objs, "Secret", e["secretRef"]["name"], ns).get("data") or {}
            env |= {k: base64.b64decode(v).decode() for k, v in data.items()}
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "")
    return env
