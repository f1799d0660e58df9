"""The object-store port: a few primitive operations plus presigned URLs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Literal, NamedTuple, Protocol

# Re-exported: the stores and their callers import these from here.
from trainyard.model.multipart import MAX_PARTS as MAX_PARTS
from trainyard.model.multipart import MIN_PART_SIZE as MIN_PART_SIZE

Method = Literal["GET", "PUT"]

MAX_KEY_BYTES = 1024
"""S3's longest key, in UTF-8 bytes. The local store keeps to it too, so a key that works in one
backend works in every one."""
MAX_NAME_BYTES = 255
"""The longest component of a key, in UTF-8 bytes: what Linux and most filesystems take for one name
(NAME_MAX), so that the local store can keep every key S3 would."""
_NONCHARACTERS = "".join(
    [chr(c) for c in range(0xFDD0, 0xFDF0)]
    + [chr(plane | low) for plane in range(0, 0x110000, 0x10000) for low in (0xFFFE, 0xFFFF)]
)
_UNSAFE_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\\\\" + _NONCHARACTERS + "]")
"""Characters no key may hold: C0 and C1 controls (NUL, newline, escape...) and DEL, which break
logs, headers, databases and S3's XML listings; the backslash, a path separator to Windows and to
browsers' URL parsers; Unicode's noncharacters, which XML cannot carry either."""


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


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an object key, or None when it can.

    A key is a relative path of '/'-separated UTF-8 names: any name a filesystem allows (spaces,
    accents, emoji, '#', '?', '%', '+', quotes) except what is unsafe somewhere a key goes (a disk
    path, an S3 key, a URL, a database row, a log line): empty, '.' or '..' components, a leading '/'
    or '.', control characters, backslashes, noncharacters and lone surrogates (not UTF-8 at all).
    At most MAX_KEY_BYTES in all and MAX_NAME_BYTES a component."""
    if not isinstance(key, str) or not key:
        return "it is empty"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8 (a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"it is {size} bytes long, over {MAX_KEY_BYTES}"
    bad = _UNSAFE_CHAR.search(key)
    if bad is not None:
        what = "a backslash" if bad.group() == "\\" else f"the character U+{ord(bad.group()):04X}"
        return f"it contains {what}"
    if key.startswith("."):
        return "it starts with a dot"  # the local store keeps its own files there
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return f"it has {'an empty' if not part else f'a {part!r}'} component"
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            return f"a component is over {MAX_NAME_BYTES} bytes long"
    return None


def check_key(key: str) -> str:
    """``key`` when it is a safe object key (see ``key_problem``); ValueError saying why otherwise."""
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"invalid object key {key!r}: {problem}")
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

    def list_keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Up to ``limit`` keys that start with ``prefix`` (a checked key, or one ending in '/'), in
        ascending order: what another writer (Fluent Bit) left in the store."""
        ...

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
