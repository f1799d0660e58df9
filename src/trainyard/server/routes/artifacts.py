"""A job's files: its artifacts (listed with short-lived download URLs, or one by its path), the
metric series it logged, and the working-directory bundles jobs start from."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from trainyard.server.bundles import BundleRefused, check_bundle
from trainyard.server.errors import ApiError
from trainyard.server.responses import AUTHED, WORKDIR_BODY, errors
from trainyard.server.routes.deps import PlatformDep, UserDep
from trainyard.server.routes.params import MAX_ATTEMPT
from trainyard.server.views import artifact_json

router = APIRouter()


@router.get("/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=errors(*AUTHED, 404))
async def list_artifacts(
    job_id: str,
    user: UserDep,
    p: PlatformDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
) -> dict[str, Any]:
    await p.visible_job(user, job_id)
    arts = await p.db(p.store.artifacts, job_id, attempt)
    if attempt is None and arts:
        latest = max(a.attempt for a in arts)
        arts = [a for a in arts if a.attempt == latest]
    return {"artifacts": [artifact_json(a, p.presign_get(a.object_key)) for a in arts]}


@router.get(
    "/v1/jobs/{job_id}/artifacts/{path:path}",
    tags=["artifacts"],
    response_model=None,
    status_code=307,
    responses={307: {"description": "redirect to a short-lived download URL"}, **errors(*AUTHED, 404)},
)
async def get_artifact(
    job_id: str,
    path: str,
    user: UserDep,
    p: PlatformDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
) -> Response:
    await p.visible_job(user, job_id)
    arts = [a for a in await p.db(p.store.artifacts, job_id, attempt) if a.path == path]
    if not arts:
        raise ApiError(404, "not_found", f"job {job_id} has no artifact {path!r}")
    art = max(arts, key=lambda a: a.attempt)
    return RedirectResponse(p.presign_get(art.object_key), status_code=307)


@router.get(
    "/v1/jobs/{job_id}/metrics",
    tags=["metrics"],
    summary="Scalar series the job logged",
    responses=errors(*AUTHED, 404),
)
async def job_metrics(job_id: str, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    job = await p.visible_job(user, job_id)
    series: dict[str, list[dict[str, Any]]] = {}
    if job.attempt > 0:
        sl = await p.read_log(job, None, 0)
        for line in sl.data.splitlines():
            if not line.startswith(b"TRAINYARD_METRIC "):
                continue
            try:
                m = json.loads(line[len(b"TRAINYARD_METRIC ") :])
                series.setdefault(str(m["name"]), []).append(
                    {"step": m.get("step"), "value": float(m["value"])}
                )
            except (ValueError, KeyError, TypeError):
                continue
    return {"job_id": job.id, "attempt": job.attempt, "series": series}


@router.post(
    "/v1/workdirs",
    status_code=201,
    tags=["jobs"],
    summary="Upload a working-directory bundle (tar.gz); needs the right to submit jobs",
    responses=errors(*AUTHED, 403, 413),
    openapi_extra=WORKDIR_BODY,
)
async def upload_workdir(request: Request, user: UserDep, p: PlatformDep) -> dict[str, Any]:
    if not user.can_submit:  # a bundle is only ever the input of a job
        raise ApiError(403, "forbidden", "viewers cannot upload workdir bundles (they cannot submit jobs)")
    s = p.settings
    digest = hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=8 << 20) as tmp:
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
            tmp.write(chunk)
        if size == 0:
            raise ApiError(422, "invalid_request", "the bundle is empty")
        tmp.seek(0)
        head = tmp.read(2)
        if head != b"\x1f\x8b":
            raise ApiError(422, "invalid_request", "the bundle must be a gzip-compressed tar archive")
        tmp.seek(0)
        # What it unpacks to, read through its headers (a gzip bomb is refused at its first
        # oversized member, before its data is inflated); the worker checks again on unpacking.
        try:
            await asyncio.to_thread(check_bundle, tmp, s.workdir_unpacked_limit, s.workdir_file_limit)
        except BundleRefused as e:
            code = "payload_too_large" if e.status == 413 else "invalid_request"
            raise ApiError(e.status, code, e.message, [{"field": "body", "message": e.message}]) from None
        tmp.seek(0)
        key = f"bundles/{user.team}/{digest.hexdigest()}.tar.gz"
        if not p.objects.exists(key):
            await asyncio.to_thread(p.objects.put, key, tmp.read())
    return {"workdir": key, "sha256": digest.hexdigest(), "size": size}
