"""The Kubernetes API calls the executor makes, through the official client, with its errors as ApiError."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast

from trainyard.worker.executors.kubernetes.pod import CONTAINER, KubernetesSettings

WATCH_TIMEOUT_S = 300
"""A watch request's server-side timeout; the executor watches again from where it was."""

# ---- the API ----------------------------------------------------------------------------------------


class ApiError(Exception):
    """The API server refused a call or could not be reached; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _api_error(e: BaseException) -> ApiError:
    status = getattr(e, "status", None)
    if isinstance(status, int):
        message = str(getattr(e, "reason", "") or "")
        body = getattr(e, "body", None)
        try:
            parsed = json.loads(body) if body else None
        except (ValueError, TypeError):
            parsed = None
        if isinstance(parsed, dict) and parsed.get("message"):
            message = str(parsed["message"])
        return ApiError(f"{status} {message}".strip(), status)
    return ApiError(f"{type(e).__name__}: {e}")


def close_response(resp: object) -> None:
    for method in ("close", "release_conn"):
        fn = getattr(resp, method, None)
        if callable(fn):
            with contextlib.suppress(Exception):
                fn()


class PodApi:
    """The few API calls the executor makes, through the official client, on plain dicts (the Pod
    as sent is exactly the manifest). Every method blocks: call it from a thread."""

    def __init__(self, settings: KubernetesSettings, api_client: Any = None) -> None:
        self.namespace = settings.namespace
        self._settings = settings
        self._client = api_client
        self._core: Any = None
        self._lock = threading.Lock()

    def _api(self) -> Any:
        # Made on first use: configuration errors fail the jobs (and say why), not the agent's start.
        with self._lock:
            if self._core is None:
                try:
                    from kubernetes import client

                    if self._client is None:
                        self._client = client.ApiClient(_configuration(self._settings))
                    self._core = client.CoreV1Api(self._client)
                except Exception as e:
                    raise ApiError(f"cannot configure the Kubernetes client: {e}") from e
            return self._core

    def _call(self, method: str, *args: object, **kwargs: object) -> Any:
        api = self._api()
        try:
            return getattr(api, method)(*args, **kwargs)
        except Exception as e:
            raise _api_error(e) from e

    def _json(self, method: str, *args: object, **kwargs: object) -> dict[str, Any]:
        resp = self._call(
            method, *args, _preload_content=False, _request_timeout=self._settings.api_timeout_s, **kwargs
        )
        try:
            return cast(dict[str, Any], json.loads(resp.data))
        except ValueError as e:
            raise ApiError(f"the API server answered {method} with something that is not JSON: {e}") from e
        finally:
            close_response(resp)

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("create_namespaced_pod", self.namespace, dict(manifest))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._json("read_namespaced_pod", name, self.namespace)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, name: str, grace_s: int) -> None:
        """Delete with ``grace_s`` (0: at once); a Pod already gone is fine."""
        try:
            self._json("delete_namespaced_pod", name, self.namespace, grace_period_seconds=max(0, grace_s))
        except ApiError as e:
            if e.status != 404:
                raise

    def create_secret(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return self._json("create_namespaced_secret", self.namespace, dict(manifest))

    def own_secret(self, name: str, pod: Mapping[str, Any]) -> None:
        """Make the Pod the Secret's owner: the garbage collector deletes it with the Pod."""
        meta = pod.get("metadata") or {}
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": str(meta.get("name")),
            "uid": str(meta.get("uid")),
        }
        self._json(
            "patch_namespaced_secret",
            name,
            self.namespace,
            {"metadata": {"ownerReferences": [owner]}},
            _content_type="application/merge-patch+json",
        )

    def delete_secret(self, name: str) -> None:
        """Delete a Secret; one already gone (its Pod's garbage collection) is fine."""
        try:
            self._json("delete_namespaced_secret", name, self.namespace)
        except ApiError as e:
            if e.status != 404:
                raise

    def list_secrets(self, label_selector: str) -> list[dict[str, Any]]:
        found = self._json("list_namespaced_secret", self.namespace, label_selector=label_selector)
        return [cast(dict[str, Any], p) for p in found.get("items") or ()]

    def list(self, label_selector: str, field_selector: str = "") -> list[dict[str, Any]]:
        kwargs: dict[str, object] = {"label_selector": label_selector}
        if field_selector:
            kwargs["field_selector"] = field_selector
        found = self._json("list_namespaced_pod", self.namespace, **kwargs)
        return [cast(dict[str, Any], p) for p in found.get("items") or ()]

    def watch(self, name: str, resource_version: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, pod) of each change to the Pod, from ``resource_version``, until the server ends the
        watch (after ``WATCH_TIMEOUT_S``); raises ApiError (410: too old, list again)."""
        from kubernetes import watch

        api = self._api()
        w = watch.Watch()
        kwargs: dict[str, object] = {
            "field_selector": f"metadata.name={name}",
            "timeout_seconds": WATCH_TIMEOUT_S,
            "_request_timeout": WATCH_TIMEOUT_S + self._settings.api_timeout_s,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in w.stream(api.list_namespaced_pod, self.namespace, **kwargs):
                obj = event.get("raw_object")
                kind = str(event.get("type", ""))
                if kind in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict):
                    yield kind, obj
        except ApiError:
            raise
        except Exception as e:
            raise _api_error(e) from e
        finally:
            w.stop()

    def follow_log(self, name: str, since_seconds: int | None = None) -> Any:
        """The container's log, followed: a streamed HTTP response (``log_chunks`` reads it)."""
        kwargs: dict[str, object] = {"container": CONTAINER, "follow": True, "_preload_content": False}
        if since_seconds is not None:
            kwargs["since_seconds"] = max(1, since_seconds)
        return self._call("read_namespaced_pod_log", name, self.namespace, **kwargs)


def log_chunks(resp: Any) -> Iterator[bytes]:
    """The bytes of a streamed response as they arrive (chunk by chunk, or whatever is there)."""
    if getattr(resp, "chunked", False):
        for chunk in resp.stream(None, decode_content=True):
            if chunk:
                yield bytes(chunk)
        return
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return
        yield bytes(chunk)


def _configuration(settings: KubernetesSettings) -> Any:
    from kubernetes import client, config

    conf = client.Configuration()
    if settings.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        # The agent's service account (its token is projected readable by root only).
        config.load_incluster_config(client_configuration=conf)
    else:
        path = str(settings.kubeconfig) if settings.kubeconfig is not None else None
        config.load_kube_config(config_file=path, client_configuration=conf)
    return conf
