"""The kubernetes executor through the official client, against a RECORDED-API server.

No Kubernetes cluster, API server or kubelet can run here. `RecordedApi` below stands in for
kube-apiserver: a small local HTTP server that answers the calls the executor makes (create, get,
watch, log, delete, list by label) and, for each Pod created, replays a script of recorded API
responses: the Pod objects a real API server returns over a Pod's life (Pending, ContainerCreating,
Running, Succeeded, Failed with an exit code, OOMKilled, Evicted, a graceful delete, ...) and the
bytes of its log. The responses are written in the exact shapes of the Kubernetes API reference and
`kubectl get pod -o json` (watch events as newline-delimited JSON, the log as a chunked byte
stream, errors as `Status` objects); they were not captured from a live cluster. What this proves is
that the executor drives the real client correctly and maps what the API says to the outcomes the
process executor reports; not that a kubelet behaves as recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from kubernetes import client

from trainyard.model.podlabels import ANNOTATION_ATTEMPT, ANNOTATION_JOB, LABEL_WORKER, lease_label
from trainyard.worker.executors.base import ExitStatus, InfraFailure, LaunchSpec, StartFailed
from trainyard.worker.executors.kubernetes import (
    KubernetesExecutor,
    KubernetesHandle,
    KubernetesSettings,
    PodApi,
    plan_pod,
    plan_secret,
)
from trainyard.worker.spool import LogSpool

from .helpers import launch_spec

pytestmark = pytest.mark.timeout(60)

NAMESPACE = "trainyard-jobs"
NODE = "gpu-node-7"
WORKER = "gpu-node-7-1a2b3c4d"
IMAGE = "registry.example/ml/pytorch:2.3"

Obj = dict[str, Any]

# ---- recorded API responses ----------------------------------------------------------------------------
# The status stanzas below are the ones the API server returns for a single-container Pod with
# restartPolicy Never at each point of its life (container ids shortened).

CONTAINER_ID = "containerd://5f0c7b1e9d2a"
IMAGE_ID = "registry.example/ml/pytorch@sha256:9b2f0d4a7c1e"
T0 = "2025-05-12T09:14:03Z"
T1 = "2025-05-12T09:14:05Z"
T2 = "2025-05-12T09:14:41Z"


def _conditions(ready: bool, *, done: bool = False) -> list[Obj]:
    flag = "True" if ready else "False"
    out: list[Obj] = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": T0,
        },
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": T0},
        {
            "type": "Ready",
            "status": flag,
            "lastProbeTime": None,
            "lastTransitionTime": T1,
            **({} if ready else {"reason": "PodCompleted" if done else "ContainersNotReady"}),
        },
        {
            "type": "ContainersReady",
            "status": flag,
            "lastProbeTime": None,
            "lastTransitionTime": T1,
            **({} if ready else {"reason": "PodCompleted" if done else "ContainersNotReady"}),
        },
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": T0},
    ]
    return out


def _container(state: Obj, *, ready: bool = False, started: bool = False) -> Obj:
    return {
        "name": "job",
        "state": state,
        "lastState": {},
        "ready": ready,
        "restartCount": 0,
        "image": IMAGE,
        "imageID": IMAGE_ID if state.get("running") or state.get("terminated") else "",
        **({"containerID": CONTAINER_ID} if state.get("running") or state.get("terminated") else {}),
        "started": started,
    }


def creating() -> Obj:
    return {
        "phase": "Pending",
        "conditions": _conditions(False),
        "hostIP": "10.0.3.17",
        "startTime": T0,
        "containerStatuses": [_container({"waiting": {"reason": "ContainerCreating"}})],
        "qosClass": "Guaranteed",
    }


def running() -> Obj:
    return {
        "phase": "Running",
        "conditions": _conditions(True),
        "hostIP": "10.0.3.17",
        "podIP": "10.244.3.41",
        "podIPs": [{"ip": "10.244.3.41"}],
        "startTime": T0,
        "containerStatuses": [_container({"running": {"startedAt": T1}}, ready=True, started=True)],
        "qosClass": "Guaranteed",
    }


def terminated(code: int, reason: str, message: str = "") -> Obj:
    state: Obj = {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": T1,
            "finishedAt": T2,
            "containerID": CONTAINER_ID,
            **({"message": message} if message else {}),
        }
    }
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": _conditions(False, done=True),
        "hostIP": "10.0.3.17",
        "podIP": "10.244.3.41",
        "podIPs": [{"ip": "10.244.3.41"}],
        "startTime": T0,
        "containerStatuses": [_container(state)],
        "qosClass": "Guaranteed",
    }


EVICTION_MESSAGE = (
    "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 9764Mi. "
    "Container job was using 412Gi, request is 0, has larger consumption of ephemeral-storage. "
)


def evicted() -> Obj:
    """What the kubelet's eviction manager leaves on a Pod (node-pressure eviction, Kubernetes 1.26+)."""
    status = terminated(
        137, "ContainerStatusUnknown", "The container could not be located when the pod was terminated"
    )
    status["reason"] = "Evicted"
    status["message"] = EVICTION_MESSAGE
    status["conditions"].insert(
        0,
        {
            "type": "DisruptionTarget",
            "status": "True",
            "lastProbeTime": None,
            "lastTransitionTime": T2,
            "reason": "TerminationByKubelet",
            "message": EVICTION_MESSAGE,
        },
    )
    return status


def image_pull_failed() -> Obj:
    status = creating()
    status["containerStatuses"] = [
        _container(
            {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": f'rpc error: code = NotFound desc = failed to pull and unpack image "{IMAGE}": '
                    f'failed to resolve reference "{IMAGE}": {IMAGE}: not found',
                }
            }
        )
    ]
    return status


START_ERROR = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create "
    'failed: unable to start container process: exec: "trian.py": executable file not found in $PATH: unknown'
)


def _status(reason: str, message: str, code: int) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


# ---- the server ------------------------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    authorization: str = ""


@dataclass
class Step:
    """One recorded response of a Pod's script: a new status (a MODIFIED watch event), log bytes, the
    end of the log, or the Pod's deletion by someone else; ``after`` seconds after the previous one."""

    status: Obj | None = None
    log: bytes = b""
    end_log: bool = False
    cut_log: bool = False
    """The API server drops the open log streams; the container runs on."""
    delete: bool = False
    """Deleted by someone else: at once, or (``grace``) as `kubectl delete pod` does."""
    grace: bool = False
    after: float = 0.05
    job: Callable[[Obj], None] | None = None
    """What the job does meanwhile, given its Pod (writes a checkpoint into a hostPath volume)."""


@dataclass
class _Pod:
    obj: Obj
    log: bytearray = field(default_factory=bytearray)
    log_times: list[tuple[float, int]] = field(default_factory=list)
    """(when, offset) of each write: what ``sinceSeconds`` starts from."""
    log_done: bool = False
    log_cuts: int = 0
    """Times the API server dropped the log streams open (a restart, a proxy timeout)."""

    def write(self, data: bytes) -> None:
        self.log_times.append((time.monotonic(), len(self.log)))
        self.log += data

    started: bool = False


class RecordedApi:
    """A stand-in for kube-apiserver that replays recorded responses (see the module's docstring)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.pods: dict[str, _Pod] = {}
        self.secrets: dict[str, Obj] = {}
        self.events: list[tuple[int, str, Obj]] = []
        """(resourceVersion, type, object) of every change, as a watch streams them."""
        self.scripts: list[list[Step]] = []
        """What each created Pod goes through, in order of creation."""
        self.expire_next_watch = False
        self.rv = 100
        self.cond = threading.Condition()
        self.closing = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def _serve(self, method: str) -> None:
                # A client that closed a stream (a watch it stopped, a log it no longer reads) is fine.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    api._handle(self, method)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Every connection is closed after its response (no idle keep-alive handlers), and closing the
        # server joins the handlers: a test leaves no thread behind.
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def client(self) -> Any:
        conf = client.Configuration()
        conf.host = self.url
        return client.ApiClient(conf)

    # -- state changes, under the lock --

    def _change(self, name: str, kind: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def add_pod(self, manifest: Obj, status: Obj | None = None) -> Obj:
        """A Pod that exists already (left by an earlier agent, or someone else's)."""
        with self.cond:
            return self._create(copy.deepcopy(manifest), status or running())

    def _create(self, obj: Obj, status: Obj) -> Obj:
        meta = obj["metadata"]
        meta.update(
            uid=f"0b7d6a1c-{len(self.pods):04d}-4e7a-9a51-3f5c2d1e8b90",
            creationTimestamp=T0,
            namespace=NAMESPACE,
        )
        obj["status"] = status
        pod = _Pod(obj)
        pod.started = "running" in str(status) or "terminated" in str(status)
        self.pods[meta["name"]] = pod
        self._change(meta["name"], "ADDED", obj)
        return copy.deepcopy(obj)

    def _set_status(self, name: str, status: Obj) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        pod.obj["status"] = copy.deepcopy(status)
        states = [c["state"] for c in status.get("containerStatuses", [])]
        pod.started = pod.started or any("running" in s or "terminated" in s for s in states)
        self._change(name, "MODIFIED", pod.obj)

    def _remove(self, name: str) -> None:
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        pod.log_done = True
        pod.obj["metadata"].setdefault("deletionTimestamp", T2)
        pod.obj["metadata"].setdefault("deletionGracePeriodSeconds", 0)
        self._change(name, "DELETED", pod.obj)

    def _play(self, name: str, steps: list[Step]) -> None:
        for step in steps:
            time.sleep(step.after)
            with self.cond:
                pod = self.pods.get(name)
                if pod is None or self.closing:
                    return
                if step.job is not None:
                    step.job(copy.deepcopy(pod.obj))
                if step.status is not None:
                    self._set_status(name, step.status)
                if step.log:
                    pod.write(step.log)
                    self.cond.notify_all()
                if step.cut_log:
                    pod.log_cuts += 1
                    self.cond.notify_all()
                if step.end_log:
                    pod.log_done = True
                    self.cond.notify_all()
                if step.delete and step.grace:
                    pod.obj["metadata"]["deletionTimestamp"] = T2
                    pod.obj["metadata"]["deletionGracePeriodSeconds"] = 30
                    self._change(name, "MODIFIED", pod.obj)
                    threading.Thread(target=self._graceful_delete, args=(name, 30), daemon=True).start()
                elif step.delete:
                    self._remove(name)

    def _graceful_delete(self, name: str, grace: int) -> None:
        """What the kubelet does with a Pod deleted with a grace: its container gets SIGTERM and ends
        (143), the Pod turns Failed, and the API server removes it."""
        time.sleep(0.05)
        with self.cond:
            if name not in self.pods:
                return
            self._set_status(name, terminated(143, "Error"))
            self.pods[name].write(b"got SIGTERM, saving a checkpoint\n")
            self.pods[name].log_done = True
            self.cond.notify_all()
        time.sleep(0.05)
        with self.cond:
            self._remove(name)

    # -- HTTP --

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        query = dict(parse_qsl(url.query))
        body = None
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(h.rfile.read(length))
        with self.cond:
            self.calls.append(Call(method, url.path, query, body, h.headers.get("Authorization") or ""))
        parts = url.path.strip("/").split("/")
        if parts[:4] == ["api", "v1", "namespaces", NAMESPACE] and parts[4:5] == ["secrets"]:
            return self._secrets(h, method, parts[5] if len(parts) > 5 else None, query, body)
        if parts[:4] != ["api", "v1", "namespaces", NAMESPACE] or len(parts) < 5 or parts[4] != "pods":
            return self._json(h, 404, _status("NotFound", f"the server could not find {url.path}", 404))
        name = parts[5] if len(parts) > 5 else None
        sub = parts[6] if len(parts) > 6 else None
        if method == "POST" and name is None:
            return self._post(h, body)
        if method == "GET" and name is None:
            if query.get("watch", "").lower() == "true":
                return self._watch(h, query)
            return self._list(h, query)
        assert name is not None
        if method == "GET" and sub == "log":
            return self._log(h, name, query)
        if method == "GET" and sub is None:
            with self.cond:
                pod = self.pods.get(name)
                obj = copy.deepcopy(pod.obj) if pod else None
            if obj is None:
                return self._json(h, 404, _status("NotFound", f'pods "{name}" not found', 404))
            return self._json(h, 200, obj)
        if method == "DELETE" and sub is None:
            return self._delete(h, name, query)
        return self._json(h, 405, _status("MethodNotAllowed", "not recorded", 405))

    def _json(self, h: BaseHTTPRequestHandler, code: int, obj: Obj) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(data)

    def _start_chunks(self, h: BaseHTTPRequestHandler, content_type: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()

    @staticmethod
    def _chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    def _post(self, h: BaseHTTPRequestHandler, body: Obj) -> None:
        name = body["metadata"]["name"]
        with self.cond:
            if name in self.pods:
                return self._json(h, 409, _status("AlreadyExists", f'pods "{name}" already exists', 409))
            created = self._create(copy.deepcopy(body), {"phase": "Pending", "qosClass": "Guaranteed"})
            script = self.scripts.pop(0) if self.scripts else []
        self._json(h, 201, created)
        threading.Thread(target=self._play, args=(name, script), daemon=True).start()

    @staticmethod
    def _matches(obj: Obj, query: dict[str, str]) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for term in filter(None, query.get("labelSelector", "").split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        for term in filter(None, query.get("fieldSelector", "").split(",")):
            k, _, v = term.partition("=")
            value = obj["metadata"]["name"] if k == "metadata.name" else obj["spec"].get("nodeName")
            if value != v:
                return False
        return True

    def _list(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self.cond:
            items = [copy.deepcopy(p.obj) for p in self.pods.values() if self._matches(p.obj, query)]
            rv = str(self.rv)
        self._json(
            h,
            200,
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items},
        )

    def _watch(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 300)
        self._start_chunks(h, "application/json")
        with self.cond:
            expire = self.expire_next_watch
            self.expire_next_watch = False
        try:
            if expire:
                # The API server no longer has the history from this resourceVersion (a compaction).
                gone = _status("Expired", f"too old resource version: {since} ({self.rv})", 410)
                self._chunk(h, json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return
            while True:
                with self.cond:
                    batch = [(rv, k, o) for rv, k, o in self.events if rv > since and self._matches(o, query)]
                    if not batch:
                        if self.closing or not self.cond.wait(max(0.0, deadline - time.monotonic())):
                            return
                        continue
                for rv, kind, obj in batch:
                    since = rv
                    self._chunk(h, json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        finally:
            self._chunk(h, b"")

    def _log(self, h: BaseHTTPRequestHandler, name: str, query: dict[str, str]) -> None:
        with self.cond:
            pod = self.pods.get(name)
            if pod is None:
                return self._json(h, 404, _status("NotFound", f'pods "{name}" not found', 404))
            if not pod.started:
                message = f'container "job" in pod "{name}" is waiting to start: ContainerCreating'
                return self._json(h, 400, _status("BadRequest", message, 400))
        follow = query.get("follow", "").lower() == "true"
        assert query.get("container") == "job"
        self._start_chunks(h, "text/plain")
        with self.cond:
            cuts = pod.log_cuts
            sent = 0
            if "sinceSeconds" in query:
                since = time.monotonic() - int(query["sinceSeconds"])
                sent = next((off for t, off in pod.log_times if t >= since), len(pod.log))
        try:
            while True:
                with self.cond:
                    data = bytes(pod.log[sent:])
                    done = pod.log_done or not follow
                    if not data and not done:
                        self.cond.wait(1.0)
                        if self.closing or pod.log_cuts != cuts:
                            return
                        continue
                if data:
                    self._chunk(h, data)
                    sent += len(data)
                elif done:
                    return
        finally:
            self._chunk(h, b"")

    def _delete(self, h: BaseHTTPRequestHandler, name: str, query: dict[str, str]) -> None:
        grace = int(query.get("gracePeriodSeconds", "30"))
        with self.cond:
            pod = self.pods.get(name)
            if pod is None:
                return self._json(h, 404, _status("NotFound", f'pods "{name}" not found', 404))
            phase = pod.obj["status"].get("phase")
            if grace == 0 or phase in ("Succeeded", "Failed"):
                obj = copy.deepcopy(pod.obj)
                self._remove(name)
                return self._json(h, 200, obj)
            pod.obj["metadata"]["deletionTimestamp"] = T2
            pod.obj["metadata"]["deletionGracePeriodSeconds"] = grace
            self._change(name, "MODIFIED", pod.obj)
            obj = copy.deepcopy(pod.obj)
        self._json(h, 200, obj)
        threading.Thread(target=self._graceful_delete, args=(name, grace), daemon=True).start()

    def _secrets(
        self, h: BaseHTTPRequestHandler, method: str, name: str | None, query: dict[str, str], body: Any
    ) -> None:
        """Secrets: create (201), merge-patch (200), delete (200; 404 when gone), list by label."""
        with self.cond:
            if method == "POST" and name is None:
                name = body["metadata"]["name"]
                if name in self.secrets:
                    return self._json(
                        h, 409, _status("AlreadyExists", f'secrets "{name}" already exists', 409)
                    )
                obj = copy.deepcopy(body)
                obj["metadata"].update(uid=f"5e1c-{len(self.secrets):04d}", namespace=NAMESPACE)
                # The API server keeps stringData as data (base64); it never returns stringData.
                obj["data"] = {
                    k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()
                }
                self.secrets[name] = obj
                return self._json(h, 201, obj)
            if method == "GET" and name is None:
                items = [copy.deepcopy(o) for o in self.secrets.values() if self._matches_labels(o, query)]
                return self._json(
                    h, 200, {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items}
                )
            obj = self.secrets.get(name or "")
            if obj is None:
                return self._json(h, 404, _status("NotFound", f'secrets "{name}" not found', 404))
            if method == "PATCH":
                assert h.headers.get("Content-Type") == "application/merge-patch+json"
                obj["metadata"].update(body["metadata"])
                return self._json(h, 200, copy.deepcopy(obj))
            if method == "DELETE":
                del self.secrets[name or ""]
                return self._json(
                    h, 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
                )
        return self._json(h, 405, _status("MethodNotAllowed", "not recorded", 405))

    @staticmethod
    def _matches_labels(obj: Obj, query: dict[str, str]) -> bool:
        labels = obj["metadata"].get("labels") or {}
        for term in filter(None, query.get("labelSelector", "").split(",")):
            k, _, v = term.partition("=")
            if labels.get(k) != v:
                return False
        return True

    # -- what the executor asked --

    def requests(self, method: str, suffix: str = "") -> list[Call]:
        with self.cond:
            return [c for c in self.calls if c.method == method and c.path.endswith(suffix)]


@pytest.fixture
def api() -> Iterator[RecordedApi]:
    before = set(threading.enumerate())
    server = RecordedApi()
    try:
        yield server
    finally:
        server.close()
    # Neither the server nor the executor leaves a thread running (the executor's watch and log
    # threads end with their Pod). The agent's gRPC poller stays: it is the process's.
    _wait_until(lambda: not _ours(before), timeout=10, what=lambda: _ours(before))


def _ours(before: set[threading.Thread]) -> set[str]:
    """The executor's watch and log threads, and the server's, started since ``before`` and alive."""
    names = {t.name for t in set(threading.enumerate()) - before}
    return {n for n in names if n.startswith("pod ") or "process_request" in n or "serve_forever" in n}


def _settings(tmp_path: Path, **kw: Any) -> KubernetesSettings:
    base: dict[str, Any] = dict(
        node_name=NODE,
        worker=WORKER,
        namespace=NAMESPACE,
        default_image="trainyard:0.1.0",
        host_roots=(tmp_path,),
        termination_grace_s=30.0,
        api_timeout_s=5.0,
        start_timeout_s=10.0,
    )
    base.update(kw)
    return KubernetesSettings(**base)


def _executor(api: RecordedApi, tmp_path: Path, **kw: Any) -> KubernetesExecutor:
    settings = _settings(tmp_path, **kw)
    return KubernetesExecutor(settings, PodApi(settings, api.client()))


def _spec(tmp_path: Path, **changes: Any) -> LaunchSpec:
    spec = launch_spec(
        tmp_path, ["python", "train.py", "--epochs", "3"], gpus=(2, 5), env={"TRAINYARD_TEAM": "vision"}
    )
    base: dict[str, Any] = dict(
        image=IMAGE,
        cpu=4.0,
        memory=16 << 30,
        user=(65534, 65534),
        lease_token="lease-7f3a",
        max_runtime_s=3600.0,
    )
    base.update(changes)
    return dataclasses.replace(spec, **base)


async def _run(executor: KubernetesExecutor, spec: LaunchSpec) -> tuple[KubernetesHandle, LogSpool]:
    spool = LogSpool(spec.attempt_dir / "log", 1 << 20)
    return await executor.start(spec, spool), spool


def _log(spool: LogSpool) -> bytes:
    return spool.read(0, spool.size)


def _started() -> list[Step]:
    return [Step(status=creating()), Step(status=running())]


# ---- tests ---------------------------------------------------------------------------------------------


def test_create_sends_the_exact_manifest_and_a_job_that_succeeds(api: RecordedApi, tmp_path: Path) -> None:
    api.scripts.append(
        [
            *_started(),
            Step(log=b"epoch 1/3\n"),
            Step(log=b"warning: slow disk\nepoch 2/3\n"),
            Step(log=b"epoch 3/3\n", end_log=True),
            Step(status=terminated(0, "Completed")),
        ]
    )
    spec = _spec(tmp_path)
    executor = _executor(api, tmp_path)

    async def main() -> tuple[ExitStatus, bytes, bytes, str]:
        handle, spool = await _run(executor, spec)
        status = await asyncio.wait_for(handle.wait(), 20)
        return status, _log(spool), spool.stderr_tail, handle.pod

    status, log, tail, name = asyncio.run(main())
    assert status == ExitStatus(returncode=0) and status.ok

    (post,) = api.requests("POST")
    assert post.path == f"/api/v1/namespaces/{NAMESPACE}/pods"
    ckpt, arts, work = spec.checkpoint_dir, spec.artifact_dir, spec.attempt_dir / "work"
    assert post.body == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "trainyard",
                "app.kubernetes.io/component": "job",
                "app.kubernetes.io/part-of": "trainyard",
                "app.kubernetes.io/managed-by": "trainyard-worker",
                "trainyard.io/worker": WORKER,
                "trainyard.io/job": "job1",
                "trainyard.io/attempt": "1",
                "trainyard.io/team": "vision",
                "trainyard.io/lease": lease_label("lease-7f3a"),
            },
            "annotations": {"trainyard.io/job-id": "job1", "trainyard.io/attempt": "1"},
        },
        "spec": {
            "nodeName": NODE,
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
            "activeDeadlineSeconds": 3600 + 30 + 60,
            "securityContext": {
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "job",
                    "image": IMAGE,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "train.py", "--epochs", "3"],
                    "workingDir": str(work),
                    "env": [
                        {"name": "TRAINYARD_JOB_ID", "value": "job1"},
                        {"name": "TRAINYARD_ATTEMPT", "value": "1"},
                        {"name": "TRAINYARD_TEAM", "value": "vision"},
                        {"name": "TRAINYARD_CHECKPOINT_DIR", "value": str(ckpt)},
                        {"name": "TRAINYARD_ARTIFACT_DIR", "value": str(arts)},
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                    ],
                    "resources": {
                        "requests": {"cpu": "4", "memory": str(16 << 30), "nvidia.com/gpu": "2"},
                        "limits": {"cpu": "4", "memory": str(16 << 30), "nvidia.com/gpu": "2"},
                    },
                    "securityContext": {
                        "runAsUser": 65534,
                        "runAsGroup": 65534,
                        "runAsNonRoot": True,
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [
                        {"name": "checkpoints", "mountPath": str(ckpt)},
                        {"name": "artifacts", "mountPath": str(arts)},
                        {"name": "work", "mountPath": str(work)},
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": [
                {"name": "checkpoints", "hostPath": {"path": str(ckpt), "type": "Directory"}},
                {"name": "artifacts", "hostPath": {"path": str(arts), "type": "Directory"}},
                {"name": "work", "hostPath": {"path": str(work), "type": "Directory"}},
            ],
        },
    }
    assert post.body == plan_pod(spec, executor.settings)

    # Watched by name, from the resourceVersion the create returned; its log followed; deleted once over.
    watches = api.requests("GET", "/pods")
    assert watches and all(w.query["fieldSelector"] == f"metadata.name={name}" for w in watches)
    assert watches[0].query["resourceVersion"] == "101"
    (follow,) = api.requests("GET", "/log")
    assert follow.query == {"container": "job", "follow": "True"}
    (delete,) = api.requests("DELETE")
    assert delete.path.endswith(f"/pods/{name}") and delete.query["gracePeriodSeconds"] == "0"

    # Kubernetes' log API interleaves stdout and stderr: one stream, stored as stderr.
    assert log == b"epoch 1/3\nwarning: slow disk\nepoch 2/3\nepoch 3/3\n"
    assert tail == log


def test_team_secrets_go_in_a_secret_the_pod_owns(api: RecordedApi, tmp_path: Path) -> None:
    """The lease's team secrets: a Secret first (the container needs it to start), then the Pod,
    which refers to it and becomes its owner (the garbage collector deletes it with the Pod); the
    agent deletes it with its Pod too. No secret value is ever in the Pod."""
    api.scripts.append(
        [*_started(), Step(log=b"ok\n", end_log=True), Step(status=terminated(0, "Completed"))]
    )
    spec = _spec(tmp_path)
    spec = dataclasses.replace(spec, env={**spec.env, "HF_TOKEN": "hf_s3cret"}, secret_env=("HF_TOKEN",))
    executor = _executor(api, tmp_path)

    async def main() -> tuple[ExitStatus, str]:
        handle, _spool = await _run(executor, spec)
        return await asyncio.wait_for(handle.wait(), 20), handle.pod

    status, name = asyncio.run(main())
    assert status.ok
    writes = [
        (c.method, "secrets" if "/secrets" in c.path else "pods") for c in api.calls if c.method != "GET"
    ]
    assert writes == [
        ("POST", "secrets"),
        ("POST", "pods"),
        ("PATCH", "secrets"),
        ("DELETE", "pods"),
        ("DELETE", "secrets"),
    ]
    (create,) = api.requests("POST", "/secrets")
    assert create.body == plan_secret(spec, executor.settings)
    assert create.body["stringData"] == {"HF_TOKEN": "hf_s3cret"}
    (post,) = api.requests("POST", "/pods")
    assert "hf_s3cret" not in json.dumps(post.body)
    env = post.body["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "HF_TOKEN"}}} in env
    (patch,) = api.requests("PATCH", f"/secrets/{name}")
    (owner,) = patch.body["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": name,
        "uid": "0b7d6a1c-0000-4e7a-9a51-3f5c2d1e8b90",
    }
    assert api.requests("DELETE", f"/secrets/{name}") and api.secrets == {}


def test_a_refused_pod_leaves_no_secret(api: RecordedApi, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec = dataclasses.replace(spec, env={**spec.env, "HF_TOKEN": "hf_s3cret"}, secret_env=("HF_TOKEN",))
    executor = _executor(api, tmp_path)
    api.add_pod(plan_pod(spec, executor.settings))  # the name is taken: 409

    async def main() -> None:
        with pytest.raises(StartFailed, match="already exists"):
            await _run(executor, spec)

    asyncio.run(main())
    assert api.secrets == {}


def test_secrets_of_an_earlier_run_are_deleted_by_label(api: RecordedApi, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec = dataclasses.replace(spec, env={**spec.env, "HF_TOKEN": "x" * 8}, secret_env=("HF_TOKEN",))
    executor = _executor(api, tmp_path)
    mine = plan_secret(spec, executor.settings)
    other = plan_secret(spec, dataclasses.replace(executor.settings, worker="another-node-9f8e"))
    assert mine is not None and other is not None
    other["metadata"]["name"] = "ty-other"
    for secret in (mine, other):
        executor.api.create_secret(secret)
    executor.reap_orphans(tmp_path)
    assert list(api.secrets) == ["ty-other"]


def test_output_is_live_while_the_pod_runs(api: RecordedApi, tmp_path: Path) -> None:
    api.scripts.append(
        [
            *_started(),
            Step(log=b"first\n"),
            Step(log=b"second\n", after=2.0, end_log=True),
            Step(status=terminated(0, "Completed")),
        ]
    )

    async def main() -> None:
        handle, spool = await _run(_executor(api, tmp_path), _spec(tmp_path))
        deadline = time.monotonic() + 5
        while _log(spool) != b"first\n":
            assert time.monotonic() < deadline, _log(spool)
            await asyncio.sleep(0.02)
        status = await asyncio.wait_for(handle.wait(), 20)
        assert status.ok and _log(spool) == b"first\nsecond\n"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (terminated(3, "Error"), ExitStatus(returncode=3)),
        (terminated(137, "OOMKilled"), ExitStatus(signal=9, oom=True, memory_limit=16 << 30)),
        (terminated(139, "Error"), ExitStatus(signal=11)),
        (terminated(1, "OOMKilled"), ExitStatus(returncode=1, oom=True, memory_limit=16 << 30)),
    ],
    ids=["exit-3", "oom-killed", "segfault", "oom-child"],
)
def test_exit_codes_and_oom(api: RecordedApi, tmp_path: Path, final: Obj, expected: ExitStatus) -> None:
    api.scripts.append([*_started(), Step(log=b"Traceback ...\n", end_log=True), Step(status=final)])

    async def main() -> ExitStatus:
        handle, _ = await _run(_executor(api, tmp_path), _spec(tmp_path))
        return await asyncio.wait_for(handle.wait(), 20)

    status = asyncio.run(main())
    assert status == expected
    if expected.oom:
        assert status.describe().startswith("oom: out of memory, the job exceeded its memory limit of 16Gi")
    assert len(api.requests("DELETE")) == 1


def test_an_evicted_pod_is_an_infrastructure_failure(api: RecordedApi, tmp_path: Path) -> None:
    api.scripts.append([*_started(), Step(log=b"step 100\n", end_log=True), Step(status=evicted())])

    async def main() -> tuple[BaseException | None, bytes]:
        handle, spool = await _run(_executor(api, tmp_path), _spec(tmp_path))
        try:
            await asyncio.wait_for(handle.wait(), 20)
        except InfraFailure as e:
            return e, _log(spool)
        return None, _log(spool)

    error, log = asyncio.run(main())
    assert isinstance(error, InfraFailure)
    assert str(error).startswith(
        "the Pod was evicted from its node: The node was low on resource: ephemeral-storage"
    )
    assert log.startswith(b"step 100\ntrainyard: the Pod was evicted from its node")
    assert len(api.requests("DELETE")) == 1


@pytest.mark.parametrize("grace", [False, True], ids=["at-once", "with-grace"])
def test_a_pod_deleted_by_someone_else_is_an_infrastructure_failure(
    api: RecordedApi, tmp_path: Path, grace: bool
) -> None:
    api.scripts.append([*_started(), Step(delete=True, grace=grace)])

    async def main() -> None:
        handle, _ = await _run(_executor(api, tmp_path), _spec(tmp_path))
        with pytest.raises(InfraFailure, match="deleted by someone other than the agent"):
            await asyncio.wait_for(handle.wait(), 20)

    asyncio.run(main())
    assert api.requests("DELETE") == []  # gone already: nothing to delete


def test_stop_deletes_the_pod_with_the_grace_and_reports_its_exit(api: RecordedApi, tmp_path: Path) -> None:
    api.scripts.append([*_started(), Step(log=b"training\n")])

    async def main() -> tuple[ExitStatus, bytes]:
        handle, spool = await _run(_executor(api, tmp_path), _spec(tmp_path))
        await handle.stop(2.5)
        status = await asyncio.wait_for(handle.wait(), 20)
        return status, _log(spool)

    status, log = asyncio.run(main())
    (delete,) = api.requests("DELETE")
    assert delete.query["gracePeriodSeconds"] == "3"  # whole seconds, rounded up
    assert status == ExitStatus(signal=15)  # 143: SIGTERM, as the process executor reports it
    assert log == b"training\ngot SIGTERM, saving a checkpoint\n"
    _wait_until(lambda: api.pods == {})  # the API server removes it once the kubelet is done


def test_kill_deletes_the_pod_at_once(api: RecordedApi, tmp_path: Path) -> None:
    api.scripts.append(_started())

    async def main() -> ExitStatus:
        handle, _ = await _run(_executor(api, tmp_path), _spec(tmp_path))
        handle.kill()
        return await asyncio.wait_for(handle.wait(), 20)

    status = asyncio.run(main())
    (delete,) = api.requests("DELETE")
    assert delete.query["gracePeriodSeconds"] == "0"
    assert status == ExitStatus(signal=9)
    assert api.pods == {}


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [Step(status=image_pull_failed())],
            f"cannot pull image {IMAGE}: ErrImagePull: rpc error: code = NotFound",
        ),
        (
            [Step(status=terminated(128, "StartError", START_ERROR))],
            f"command not found in image {IMAGE}: python",
        ),
        (
            [
                Step(
                    status={
                        "phase": "Failed",
                        "reason": "OutOfnvidia.com/gpu",
                        "message": "Pod was rejected: Node didn't have enough resource: nvidia.com/gpu, requested: 2, used: 7, capacity: 8",
                    }
                )
            ],
            "the kubelet refused the Pod: OutOfnvidia.com/gpu: Pod was rejected",
        ),
    ],
    ids=["image-pull", "command-not-found", "kubelet-admission"],
)
def test_start_failures(api: RecordedApi, tmp_path: Path, steps: list[Step], message: str) -> None:
    api.scripts.append([Step(status=creating()), *steps])

    async def main() -> None:
        with pytest.raises(StartFailed) as e:
            await _run(_executor(api, tmp_path), _spec(tmp_path))
        assert str(e.value).startswith(message), str(e.value)

    asyncio.run(main())
    assert len(api.requests("DELETE")) == 1 and api.pods == {}


def test_a_refused_create_fails_the_start(api: RecordedApi, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    api.add_pod(plan_pod(spec, _settings(tmp_path)))  # the same lease's Pod exists already

    async def main() -> None:
        with pytest.raises(
            StartFailed,
            match=r"cannot create Pod ty-job1-1-\w+ in trainyard-jobs: 409 pods .* already exists",
        ):
            await _run(_executor(api, tmp_path), spec)

    asyncio.run(main())


def test_an_api_server_that_is_down_fails_the_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, api_timeout_s=2.0)
    conf = client.Configuration()
    conf.host = "http://127.0.0.1:9"  # discard: nothing listens
    conf.retries = False
    executor = KubernetesExecutor(settings, PodApi(settings, client.ApiClient(conf)))

    async def main() -> None:
        with pytest.raises(StartFailed, match="cannot reach the Kubernetes API"):
            await executor.start(_spec(tmp_path), LogSpool(tmp_path / "log", 1024))

    asyncio.run(main())


def test_an_expired_watch_is_resumed_from_a_fresh_read(
    api: RecordedApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.expire_next_watch = True
    api.scripts.append(
        [*_started(), Step(log=b"ok\n", end_log=True), Step(status=terminated(0, "Completed"))]
    )

    async def main() -> ExitStatus:
        handle, _ = await _run(_executor(api, tmp_path), _spec(tmp_path))
        return await asyncio.wait_for(handle.wait(), 20)

    assert asyncio.run(main()).ok
    name = api.requests("POST")[0].body["metadata"]["name"]
    assert api.requests("GET", f"/pods/{name}")  # read again after the 410
    assert "broke" not in caplog.text  # a 410 is expected, not a fault


def test_orphans_are_deleted_by_label_on_this_node(api: RecordedApi, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ours = [plan_pod(_spec(tmp_path, lease_token=f"l{i}", attempt=i), settings) for i in (1, 2)]
    elsewhere = plan_pod(
        _spec(tmp_path, lease_token="x"), dataclasses.replace(settings, node_name="other-node")
    )
    someone_elses = plan_pod(
        _spec(tmp_path, lease_token="y"), dataclasses.replace(settings, worker="other-worker")
    )
    for m in (*ours, elsewhere, someone_elses):
        api.add_pod(m)

    keys = _executor(api, tmp_path).reap_orphans(tmp_path)

    assert sorted(keys) == [("job1", 1), ("job1", 2)]
    (listing,) = [c for c in api.requests("GET", "/pods") if "labelSelector" in c.query]
    assert listing.query == {
        "labelSelector": f"{LABEL_WORKER}={WORKER}",
        "fieldSelector": f"spec.nodeName={NODE}",
    }
    deleted = {c.path.rsplit("/", 1)[1]: c.query["gracePeriodSeconds"] for c in api.requests("DELETE")}
    assert deleted == {m["metadata"]["name"]: "0" for m in ours}
    assert set(api.pods) == {elsewhere["metadata"]["name"], someone_elses["metadata"]["name"]}
    assert ours[0]["metadata"]["annotations"] == {ANNOTATION_JOB: "job1", ANNOTATION_ATTEMPT: "1"}


def test_orphans_survive_an_api_that_is_down(tmp_path: Path) -> None:
    settings = _settings(tmp_path, api_timeout_s=1.0)
    conf = client.Configuration()
    conf.host = "http://127.0.0.1:9"
    conf.retries = False
    assert KubernetesExecutor(settings, PodApi(settings, client.ApiClient(conf))).reap_orphans(tmp_path) == []


def _wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what()
        time.sleep(0.02)


# ---- the agent, with the executor chosen from its settings ----------------------------------------------


def _kubeconfig(api: RecordedApi, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "recorded", "cluster": {"server": api.url}}],
        "users": [{"name": "agent", "user": {"token": "agent-sa-token"}}],
        "contexts": [{"name": "recorded", "context": {"cluster": "recorded", "user": "agent"}}],
        "current-context": "recorded",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _env(pod: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def _agent_kw(api: RecordedApi, tmp_path: Path) -> dict[str, Any]:
    return dict(
        executor="kubernetes",
        k8s_node_name=NODE,
        k8s_default_image="trainyard:0.1.0",
        k8s_kubeconfig=_kubeconfig(api, tmp_path),
    )


def test_the_agent_runs_a_job_as_a_pod(api: RecordedApi, tmp_path: Path) -> None:
    from .test_agent import _assignment, _sealed_log, agent

    def job(pod: Obj) -> None:
        Path(_env(pod)["TRAINYARD_ARTIFACT_DIR"], "metrics.json").write_text('{"acc": 1}')

    api.scripts.append(
        [
            *_started(),
            Step(job=job, log=b"hello from the pod\n", end_log=True),
            Step(status=terminated(0, "Completed")),
        ]
    )

    async def main() -> None:
        async with agent(tmp_path, **_agent_kw(api, tmp_path)) as (svc, objects, _cfg):
            svc.assign(_assignment("j1", ["python", "train.py"], gpu_indices=[0], team="vision"))
            done = await svc.wait_finished("j1")
            assert done.outcome == "succeeded", done.reason
            assert done.has_exit_code and done.exit_code == 0
            assert _sealed_log(svc, objects, "j1") == b"hello from the pod\n"
            (art,) = done.artifacts
            assert art.path == "metrics.json" and objects.objects[art.object_key] == b'{"acc": 1}'

    asyncio.run(main())
    # The agent looked for orphans of an earlier run first, through the kubeconfig's credentials.
    first = api.calls[0]
    assert first.method == "GET" and first.query["labelSelector"].startswith(f"{LABEL_WORKER}=test-worker-")
    assert all(c.authorization == "Bearer agent-sa-token" for c in api.calls)
    (post,) = api.requests("POST")
    pod = post.body
    assert pod["spec"]["nodeName"] == NODE and pod["spec"]["containers"][0]["image"] == "trainyard:0.1.0"
    assert pod["metadata"]["labels"]["trainyard.io/lease"] == lease_label("lt-j1")
    assert "lt-j1" not in json.dumps(pod)  # the lease token itself is never in the Pod
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert "CUDA_VISIBLE_DEVICES" not in _env(pod)  # the device plugin's business


def test_an_agent_with_an_external_log_shipper_seals_no_log(api: RecordedApi, tmp_path: Path) -> None:
    """--log-shipper external (Fluent Bit ships the Pod's log from the node): the agent uploads no log
    chunk, while the live tail and the report (exit code, stderr tail) are as with the built-in one."""
    from .test_agent import _assignment, agent

    api.scripts.append(
        [*_started(), Step(log=b"to fluent bit\n", end_log=True), Step(status=terminated(3, "Error"))]
    )

    async def main() -> None:
        kw = {**_agent_kw(api, tmp_path), "log_shipper": "external"}
        async with agent(tmp_path, **kw) as (svc, _objects, _cfg):
            svc.assign(_assignment("j1", ["python", "train.py"]))
            done = await svc.wait_finished("j1")
            assert done.outcome == "failed" and done.exit_code == 3
            assert b"to fluent bit" in done.stderr_tail
            assert svc.rec.seals == []
            assert bytes(svc.rec.logs[("j1", 1)]) == b"to fluent bit\n"

    asyncio.run(main())


def test_the_agent_reports_an_eviction_as_infra_and_keeps_the_checkpoint(
    api: RecordedApi, tmp_path: Path
) -> None:
    from .test_agent import _assignment, agent

    def job(pod: Obj) -> None:
        Path(_env(pod)["TRAINYARD_CHECKPOINT_DIR"], "step-100.pt").write_bytes(b"weights")

    api.scripts.append([*_started(), Step(job=job, log=b"step 100\n", end_log=True), Step(status=evicted())])

    async def main() -> None:
        async with agent(tmp_path, **_agent_kw(api, tmp_path)) as (svc, _objects, _cfg):
            svc.assign(_assignment("j1", ["python", "train.py"]))
            done = await svc.wait_finished("j1")
            assert done.outcome == "infra"
            assert done.reason.startswith("the Pod was evicted from its node: The node was low on resource")
            assert not done.has_exit_code
            assert done.checkpoint_key  # uploaded: the retry resumes from it
            assert b"trainyard: the Pod was evicted" in done.stderr_tail

    asyncio.run(main())


def test_the_agent_preempts_with_its_grace_and_deletes_a_stale_leases_pod(
    api: RecordedApi, tmp_path: Path
) -> None:
    from trainyard.proto.trainyard.v1 import worker_pb2 as pb

    from .test_agent import _assignment, agent

    api.scripts += [[*_started(), Step(log=b"ready\n")], [*_started(), Step(log=b"ready\n")]]

    async def main() -> None:
        kw = {**_agent_kw(api, tmp_path), "preempt_grace_s": 7.0}
        async with agent(tmp_path, **kw) as (svc, _, _):
            svc.assign(_assignment("j4", ["python", "train.py"]))
            svc.assign(_assignment("j5", ["python", "train.py"]))
            await svc.wait_for(lambda: all(svc.rec.logs[(j, 1)] == b"ready\n" for j in ("j4", "j5")))
            svc.heartbeat_commands = [
                pb.Command(kind=pb.Command.PREEMPT, job_id="j4", attempt=1, reason="spot reclaim"),
                pb.Command(kind=pb.Command.KILL_STALE, job_id="j5", attempt=1, lease_token="lt-j5"),
            ]
            done = await svc.wait_finished("j4", timeout=10)
            assert (done.outcome, done.reason, done.exit_code) == ("preempted", "spot reclaim", 143)
            await svc.wait_for(lambda: api.pods == {})
            assert svc.finished("j5") is None  # a stale lease says nothing more

    asyncio.run(main())
    pods = {c.body["metadata"]["annotations"]["trainyard.io/job-id"]: c.body for c in api.requests("POST")}
    assert pods["j4"]["spec"]["terminationGracePeriodSeconds"] == 7
    grace = {c.path.rsplit("/", 1)[1]: c.query["gracePeriodSeconds"] for c in api.requests("DELETE")}
    assert grace[pods["j4"]["metadata"]["name"]] == "7"  # preempted with the preemption grace
    assert grace[pods["j5"]["metadata"]["name"]] == "0"  # a stale lease's Pod: at once


def test_a_log_stream_cut_while_the_pod_runs_is_followed_again(
    api: RecordedApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainyard.worker.executors.kubernetes import executor as kubernetes

    monkeypatch.setattr(kubernetes, "LOG_EOF_GRACE_S", 0.3)
    api.scripts.append(
        [
            *_started(),
            Step(log=b"before\n", after=1.5),
            Step(cut_log=True),
            Step(log=b"after\n", after=2.0),
            Step(end_log=True),
            Step(status=terminated(0, "Completed")),
        ]
    )

    async def main() -> bytes:
        handle, spool = await _run(_executor(api, tmp_path), _spec(tmp_path))
        assert (await asyncio.wait_for(handle.wait(), 20)).ok
        return _log(spool)

    log = asyncio.run(main())
    first, note, rest = log.split(b"\n", 2)
    assert first == b"before"
    assert note.startswith(b"[trainyard: the log stream of Pod ty-job1-1-") and b"following it again" in note
    # Followed again from shortly before the cut (sinceSeconds, whole seconds with a second to spare):
    # nothing is lost, and only what came within that second may come twice.
    assert rest in (b"after\n", b"before\nafter\n")
    follows = api.requests("GET", "/log")
    assert len(follows) == 2 and "sinceSeconds" in follows[1].query
