"""A job's files: its artifacts (listed with short-lived download URLs, or one by its path), the
metric series it logged, and the working-directory bundles jobs start from."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from trainyard.server.bundles import BundleRefused
from trainyard.server.errors import ApiError
from trainyard.server.responses import AUTHED, WORKDIR_BODY, errors
from trainyard.server.routes.deps import FilesDep, JobsDep, LogsDep, UserDep
from trainyard.server.routes.params import MAX_ATTEMPT
from trainyard.server.services.files import BundleInvalid
from trainyard.server.views import artifact_json

router = APIRouter()


@router.get("/v1/jobs/{job_id}/artifacts", tags=["artifacts"], responses=errors(*AUTHED, 404))
async def list_artifacts(
    job_id: str,
    user: UserDep,
    jobs: JobsDep,
    files: FilesDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
) -> dict[str, Any]:
    """An attempt's artifacts (default: the latest attempt that has any): ``name`` (also given as
    ``path``), size, sha256, attempt and a short-lived download URL."""
    await jobs.visible_job(user, job_id)
    arts = await files.artifacts(job_id, attempt)
    return {"artifacts": [artifact_json(a, files.presign_get(a.object_key)) for a in arts]}


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
    jobs: JobsDep,
    files: FilesDep,
    attempt: Annotated[int | None, Query(ge=1, le=MAX_ATTEMPT)] = None,
) -> Response:
    """One artifact's bytes, by a redirect to a short-lived download URL (of ``attempt``, default:
    the latest attempt that has it)."""
    await jobs.visible_job(user, job_id)
    art = await files.artifact(job_id, path, attempt)
    if art is None:
        raise ApiError(404, "not_found", f"job {job_id} has no artifact {path!r}")
    return RedirectResponse(files.presign_get(art.object_key), status_code=307)


@router.get(
    "/v1/jobs/{job_id}/metrics",
    tags=["metrics"],
    summary="Scalar series the job logged",
    responses=errors(*AUTHED, 404),
)
async def job_metrics(job_id: str, user: UserDep, jobs: JobsDep, logs: LogsDep) -> dict[str, Any]:
    """The series the job's latest attempt logged with ``trainyard.job`` (loss, accuracy, ...), each
    a list of ``{step, value}``."""
    job = await jobs.visible_job(user, job_id)
    return {"job_id": job.id, "attempt": job.attempt, "series": await logs.metric_series(job)}


@router.post(
    "/v1/workdirs",
    status_code=201,
    tags=["jobs"],
    summary="Upload a working-directory bundle (tar.gz); needs the right to submit jobs",
    responses=errors(*AUTHED, 403, 413),
    openapi_extra=WORKDIR_BODY,
)
async def upload_workdir(request: Request, user: UserDep, files: FilesDep) -> dict[str, Any]:
    """Keep a tar.gz of a working directory for your team's jobs (``yard submit --workdir``); a
    JobSpec names it by the returned ``workdir`` key. What it would unpack to is checked first."""
    if not user.can_submit:  # a bundle is only ever the input of a job
        raise ApiError(403, "forbidden", "viewers cannot upload workdir bundles (they cannot submit jobs)")
    try:
        stored = await files.store_bundle(user.team, request.stream())
    except BundleInvalid as e:
        raise ApiError(422, "invalid_request", str(e)) from None
    except BundleRefused as e:
        code = "payload_too_large" if e.status == 413 else "invalid_request"
        raise ApiError(e.status, code, e.message, [{"field": "body", "message": e.message}]) from None
    return {"workdir": stored.key, "sha256": stored.sha256, "size": stored.size}
