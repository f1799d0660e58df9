"""The object-store port: a few primitive operations plus presigned URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Literal, NamedTuple, Protocol

Method = Literal["GET", "PUT"]
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,1023}$")

MIN_PART_SIZE = 5 << 20
"""S3's smallest part (all but the last); the local store enforces it too, so it never drifts."""
MAX_PARTS = 10_000
"""S3's largest part number."""


class ObjectNotFound(KeyError):
    pass


class UploadNotFound(ObjectNotFound):
    """No multipart upload with this id for this key (never started, completed or aborted)."""


class StorageUnavailable(OSError):
    """Object storage cannot be reached or answered a server error: another try later may work.

    An OSError, as a local disk's failures are, so that readers which already survive an unreadable
    object (the log reader falls back to the live tail) survive an S3 outage the same way."""


class Part(NamedTuple):
    """One uploaded part of a multipart upload, as its complete call lists it."""

    number: int
    etag: str


def check_key(key: str) -> str:
    """Keys are relative paths without '..' or empty parts; anything else is refused."""
    if not _KEY_RE.match(key) or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def check_part_number(number: int) -> int:
    if not 1 <= number <= MAX_PARTS:
        raise ValueError(f"part number {number} is not within 1..{MAX_PARTS}")
    return number


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Store a stream; raises ValueError past ``limit`` bytes (nothing is kept). Returns the size."""
        ...

    def get(self, key: str) -> bytes: ...

    def iter(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def presign(self, key: str, method: Method, expires_s: float = 600) -> str:
        """A URL that allows exactly ``method`` on exactly ``key`` until it expires."""
        ...

    # ---- multipart: large objects uploaded in parts through presigned URLs ----------------------
    def create_multipart(self, key: str) -> str:
        """Begin a multipart upload of ``key``; returns its upload id. Nothing is visible until complete."""
        ...

    def presign_part(self, key: str, upload_id: str, number: int, expires_s: float = 600) -> str:
        """A URL that allows one PUT of part ``number`` of this upload until it expires. The response
        carries the part's ETag header, which ``complete_multipart`` needs."""
        ...

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Part]) -> int:
        """Assemble the listed parts (ascending numbers) into ``key``; returns its size.

        Raises UploadNotFound for an unknown upload, ValueError for a part list that does not match
        what was uploaded (a missing part, a wrong ETag, a non-last part under MIN_PART_SIZE)."""
        ...

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; an unknown upload is not an error."""
        ...
