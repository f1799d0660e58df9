"""Object storage in an S3 bucket (AWS, or anything that speaks S3: MinIO, moto, Ceph).

The control plane holds the credentials (the standard AWS chain: environment, profile, instance role)
and hands out presigned URLs, so workers and users move bytes without ever seeing them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions
from botocore.config import Config

from trainyard.objects.base import (
    MAX_KEY_BYTES,
    Method,
    ObjectNotFound,
    Part,
    StorageUnavailable,
    UploadNotFound,
    check_key,
    check_part_number,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef
else:
    S3Client = Any

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_BAD_PARTS = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML"})
_TRANSIENT = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"})


@contextlib.contextmanager
def _translated(key: str, upload_id: str = "") -> Iterator[None]:
    """botocore's errors as the port's: missing, bad request, or try again later."""
    try:
        yield
    except botocore.exceptions.ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchUpload":
            raise UploadNotFound(upload_id) from e
        if code in _MISSING:
            raise ObjectNotFound(key) from e
        if code in _BAD_PARTS:
            raise ValueError(f"{code}: {err.get('Message', '')}") from e
        if code in _TRANSIENT or status >= 500:
            raise StorageUnavailable(f"S3 answered {code or status}") from e
        raise
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as e:
        raise StorageUnavailable(f"S3 unreachable: {e}") from e


class S3ObjectStore:
    """Keys live under ``prefix`` in ``bucket``; streams above ``multipart_threshold`` go up in parts."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        client: S3Client | None = None,
        part_size: int = 16 << 20,
        multipart_threshold: int = 64 << 20,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 object store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.multipart_threshold = max(multipart_threshold, part_size)
        if client is None:
            config = Config(
                signature_version="s3v4",
                # A custom endpoint (MinIO, moto, a proxy) rarely has per-bucket DNS names.
                s3={"addressing_style": "path" if endpoint else "auto"},
                # boto3's default retries and 60 s connect timeout would hold a worker's RPC for minutes
                # in an outage; callers retry with their own backoff instead.
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=5,
                read_timeout=60,
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, region_name=region, config=config
            )
        self.client: S3Client = client

    def _key(self, key: str) -> str:
        # botocore percent-encodes the key in every request and presigned URL it builds.
        full = self.prefix + check_key(key)
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError(f"invalid object key {key!r}: over S3's {MAX_KEY_BYTES} bytes with the prefix")
        return full

    def put(self, key: str, data: bytes) -> None:
        with _translated(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        # One part is buffered at a time, so memory stays at part_size whatever the stream's length.
        full = self._key(key)
        buf = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[Part] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"object is over the {limit} byte limit")
                buf += chunk
                if upload_id is None and len(buf) <= self.multipart_threshold:
                    continue
                if upload_id is None:
                    upload_id = await asyncio.to_thread(self.create_multipart, key)
                while len(buf) >= self.part_size:
                    body = bytes(buf[: self.part_size])
                    del buf[: self.part_size]
                    parts.append(
                        await asyncio.to_thread(self._upload_part, full, upload_id, len(parts) + 1, body)
                    )
            if upload_id is None:
                await asyncio.to_thread(self.put, key, bytes(buf))
                return size
            if buf or not parts:
                parts.append(
                    await asyncio.to_thread(self._upload_part, full, upload_id, len(parts) + 1, bytes(buf))
                )
            await asyncio.to_thread(self.complete_multipart, key, upload_id, parts)
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.abort_multipart, key, upload_id)
            raise
        return size

    def _upload_part(self, full: str, upload_id: str, number: int, body: bytes) -> Part:
        with _translated(full, upload_id):
            resp = self.client.upload_part(
                Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body
            )
        return Part(number, resp["ETag"])

    def get(self, key: str) -> bytes:
        with _translated(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def iter(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with _translated(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        with _translated(key):
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list_keys(self, prefix: str, limit: int = 1000) -> list[str]:
        found: list[str] = []
        token: str | None = None
        with _translated(prefix):
            while len(found) < limit:
                kwargs: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Prefix": self.prefix + prefix,
                    "MaxKeys": min(1000, limit - len(found)),
                }
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                found += [str(o["Key"])[len(self.prefix) :] for o in page.get("Contents", ())]
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
        return found[:limit]

    def presign(self, key: str, method: Method, expires_s: float = 600) -> str:
        op = "get_object" if method == "GET" else "put_object"
        return self.client.generate_presigned_url(
            op, Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=max(1, int(expires_s))
        )

    # ---- multipart ------------------------------------------------------------------------------
    def create_multipart(self, key: str) -> str:
        with _translated(key):
            resp = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return resp["UploadId"]

    def presign_part(self, key: str, upload_id: str, number: int, expires_s: float = 600) -> str:
        check_part_number(number)
        return self.client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "UploadId": upload_id,
                "PartNumber": number,
            },
            ExpiresIn=max(1, int(expires_s)),
        )

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Part]) -> int:
        if not parts:
            raise ValueError("a multipart upload needs at least one part")
        for i, part in enumerate(parts):
            check_part_number(part.number)
            if i and part.number <= parts[i - 1].number:
                raise ValueError("parts must be listed in ascending order, each once")
        etags: list[CompletedPartTypeDef] = [
            {"PartNumber": p.number, "ETag": '"' + p.etag.strip('"') + '"'} for p in parts
        ]
        with _translated(key, upload_id):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": etags},
            )
        return self.size(key)

    def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(UploadNotFound), _translated(key, upload_id):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
