"""The object-store port: a few primitive operations plus presigned URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Literal, Protocol

Method = Literal["GET", "PUT"]
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,1023}$")


class ObjectNotFound(KeyError):
    pass


def check_key(key: str) -> str:
    """Keys are relative paths without '..' or empty parts; anything else is refused."""
    if not _KEY_RE.match(key) or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


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
