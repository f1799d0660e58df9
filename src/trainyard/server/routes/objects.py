"""Presigned object URLs of the local object store, served by the control plane itself.

Only a local store is served here; with S3 the presigned URLs point at the bucket itself. These
routes are not part of the documented API (``include_in_schema=False``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from trainyard.objects.base import ObjectNotFound, ObjectStore
from trainyard.objects.local import LocalObjectStore
from trainyard.server.errors import ApiError
from trainyard.server.routes.deps import ObjectsDep, SettingsDep

router = APIRouter()


def local_objects(objects: ObjectStore) -> LocalObjectStore:
    """The local object store, or 404: with S3, presigned URLs point at the bucket itself."""
    if not isinstance(objects, LocalObjectStore):
        raise ApiError(404, "not_found", "objects are not served by this control plane")
    return objects


@router.get("/objects/{key:path}", include_in_schema=False, response_model=None)
async def get_object(
    key: str, object_store: ObjectsDep, method: str = "", expires: str = "", sig: str = ""
) -> Response:
    """An object's bytes, for a URL presigned for GET."""
    objects = local_objects(object_store)
    why = objects.verify(key, "GET", expires, sig) if method == "GET" else "URL is not for GET"
    if why:
        raise ApiError(403, "forbidden", why)
    try:
        size = objects.size(key)
    except ObjectNotFound:
        raise ApiError(404, "not_found", "no such object") from None
    return StreamingResponse(
        _iterate_in_thread(objects.iter(key)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.put("/objects/{key:path}", include_in_schema=False, response_model=None)
async def put_object(
    key: str,
    request: Request,
    object_store: ObjectsDep,
    settings: SettingsDep,
    method: str = "",
    expires: str = "",
    sig: str = "",
    upload_id: str = "",
    part: int = 0,
) -> Response:
    """Store an object (or one part of a multipart upload), for a URL presigned for PUT."""
    objects = local_objects(object_store)
    limit = settings.object_limit
    if method != "PUT":
        raise ApiError(403, "forbidden", "URL is not for PUT")
    why = objects.verify(key, "PUT", expires, sig, upload_id=upload_id, part=part)
    if why:
        raise ApiError(403, "forbidden", why)
    if upload_id:
        # One part of a multipart upload: answered with its ETag, as S3 does.
        try:
            etag = await objects.put_part_stream(key, upload_id, part, request.stream(), limit)
        except ObjectNotFound:
            raise ApiError(404, "not_found", "no such multipart upload") from None
        return JSONResponse({"key": key, "part": part}, headers={"ETag": f'"{etag}"'})
    size = await objects.put_stream(key, request.stream(), limit)
    return JSONResponse({"key": key, "size": size})


async def _iterate_in_thread(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(next, it, b"")
        if not chunk:
            return
        yield chunk
