"""Object storage in a local directory, with HMAC-signed URLs served by the control plane.

The control plane serves ``/objects/{key}`` and verifies the signature, so workers and users get
the same presigned-URL flow as with S3 and never need a path on the server's disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

from trainyard.objects.base import Method, ObjectNotFound, check_key


class LocalObjectStore:
    def __init__(self, root: Path, secret: bytes, public_url: str, clock: object = time.time) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self._clock = clock

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put_stream(self, key: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(f"object is over the {limit} byte limit")
                    f.write(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def iter(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    # ---- signed URLs ---------------------------------------------------------------------------
    def _sign(self, key: str, method: str, expires: int) -> str:
        msg = f"{method}\n{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def presign(self, key: str, method: Method, expires_s: float = 600) -> str:
        check_key(key)
        expires = int(self._clock() + expires_s)  # type: ignore[operator]
        query = urlencode({"method": method, "expires": expires, "sig": self._sign(key, method, expires)})
        return f"{self.public_url}/objects/{quote(key)}?{query}"

    def verify(self, key: str, method: str, expires: str, sig: str) -> str | None:
        """None when the URL is valid for this request, else why it is not."""
        try:
            check_key(key)
            exp = int(expires)
        except ValueError:
            return "malformed signed URL"
        if not hmac.compare_digest(self._sign(key, method, exp), sig):
            return "signature does not match"
        if exp < self._clock():  # type: ignore[operator]
            return "signed URL has expired"
        return None
