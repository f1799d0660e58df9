"""Object storage in a local directory, with HMAC-signed URLs served by the control plane.

The control plane serves ``/objects/{key}`` and verifies the signature, so workers and users get
the same presigned-URL flow as with S3 and never need a path on the server's disk.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

from trainyard.objects.base import (
    MIN_PART_SIZE,
    Method,
    ObjectNotFound,
    Part,
    UploadNotFound,
    check_key,
    check_part_number,
)

_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_ETAG_RE = re.compile(r"^[0-9a-f]{32}$")


class LocalObjectStore:
    def __init__(self, root: Path, secret: bytes, public_url: str, clock: object = time.time) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self._clock = clock

    def _path(self, key: str) -> Path:
        # A checked key is a relative path of plain names, so it stays under the root. On disk each
        # name is the key's own UTF-8 bytes, whatever the filesystem encoding Python assumes.
        return self.root / os.fsdecode(check_key(key).encode("utf-8"))

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

    def list_keys(self, prefix: str, limit: int = 1000) -> list[str]:
        # Only the directory the prefix names is walked; names starting with a dot (temporary files,
        # multipart parts) are never keys.
        head, _, _ = prefix.rpartition("/")
        top = self._path(head) if head else self.root
        if not top.is_dir():
            return []
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = os.fsencode(str(rel / name) if str(rel) != "." else name).decode("utf-8")
                if key.startswith(prefix):
                    found.append(key)
        return sorted(found)[: max(0, limit)]

    # ---- multipart ------------------------------------------------------------------------------
    # Parts live under <root>/.multipart/<upload id>/: no key can start with a dot, so they never
    # collide with objects. A part is stored as "<number>.<md5>" so a retried or concurrent upload of
    # the same part never overwrites the bytes another ETag promised.
    def _upload_dir(self, key: str, upload_id: str) -> Path:
        """The upload's directory; UploadNotFound unless it exists and belongs to ``key``."""
        check_key(key)
        if not _UPLOAD_ID_RE.match(upload_id):
            raise UploadNotFound(upload_id)
        d = self.root / ".multipart" / upload_id
        try:
            owner = (d / "key").read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise UploadNotFound(upload_id) from None
        if owner != key:
            raise UploadNotFound(upload_id)
        return d

    def create_multipart(self, key: str) -> str:
        check_key(key)
        upload_id = secrets.token_hex(16)
        d = self.root / ".multipart" / upload_id
        d.mkdir(parents=True)
        (d / "key").write_text(key, encoding="utf-8")
        return upload_id

    async def put_part_stream(
        self, key: str, upload_id: str, number: int, chunks: AsyncIterator[bytes], limit: int
    ) -> str:
        """Store one part from a stream (the control plane's side of a part URL); returns its ETag."""
        check_part_number(number)
        d = self._upload_dir(key, upload_id)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(f"part is over the {limit} byte limit")
                    md5.update(chunk)
                    f.write(chunk)
            etag = md5.hexdigest()
            os.replace(tmp, d / f"{number:05d}.{etag}")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return etag

    def presign_part(self, key: str, upload_id: str, number: int, expires_s: float = 600) -> str:
        check_key(key)
        check_part_number(number)
        expires = int(self._clock() + expires_s)  # type: ignore[operator]
        sig = self._sign(key, "PUT", expires, upload_id, number)
        query = urlencode(
            {"method": "PUT", "expires": expires, "upload_id": upload_id, "part": number, "sig": sig}
        )
        return f"{self.public_url}/objects/{quote(key)}?{query}"

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[Part]) -> int:
        d = self._upload_dir(key, upload_id)
        if not parts:
            raise ValueError("a multipart upload needs at least one part")
        files: list[Path] = []
        for i, (number, etag) in enumerate(parts):
            check_part_number(number)
            if i and number <= parts[i - 1].number:
                raise ValueError("parts must be listed in ascending order, each once")
            tag = etag.strip('"')
            path = d / f"{number:05d}.{tag}"
            if not _ETAG_RE.match(tag) or not path.is_file():
                raise ValueError(f"part {number} with ETag {etag} was not uploaded")
            if i < len(parts) - 1 and path.stat().st_size < MIN_PART_SIZE:
                raise ValueError(f"part {number} is smaller than {MIN_PART_SIZE} bytes and not the last")
            files.append(path)
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for path in files:
                    with path.open("rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                size = out.tell()
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        shutil.rmtree(d, ignore_errors=True)
        return size

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            d = self._upload_dir(key, upload_id)
        except UploadNotFound:
            return
        shutil.rmtree(d, ignore_errors=True)

    # ---- signed URLs ---------------------------------------------------------------------------
    def _sign(self, key: str, method: str, expires: int, upload_id: str = "", part: int = 0) -> str:
        msg = f"{method}\n{key}\n{expires}"
        if upload_id:
            # A part URL signs its upload and part number too, so it can neither be replayed for
            # another part nor used as a whole-object PUT.
            msg += f"\n{upload_id}\n{part}"
        return hmac.new(self._secret, msg.encode(), hashlib.sha256).hexdigest()

    def presign(self, key: str, method: Method, expires_s: float = 600) -> str:
        check_key(key)
        expires = int(self._clock() + expires_s)  # type: ignore[operator]
        query = urlencode({"method": method, "expires": expires, "sig": self._sign(key, method, expires)})
        return f"{self.public_url}/objects/{quote(key)}?{query}"

    def verify(
        self, key: str, method: str, expires: str, sig: str, *, upload_id: str = "", part: int = 0
    ) -> str | None:
        """None when the URL is valid for this request, else why it is not."""
        try:
            check_key(key)
            exp = int(expires)
        except ValueError:
            return "malformed signed URL"
        if not hmac.compare_digest(self._sign(key, method, exp, upload_id, part), sig):
            return "signature does not match"
        if exp < self._clock():  # type: ignore[operator]
            return "signed URL has expired"
        return None
