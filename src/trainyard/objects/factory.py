"""Build the object store that a URL names: the one place that knows every implementation."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from trainyard.objects.base import ObjectStore
from trainyard.objects.local import LocalObjectStore


def open_object_store(
    url: str | None,
    *,
    home: Path,
    secret: bytes,
    public_url: str,
    endpoint: str | None = None,
    region: str | None = None,
) -> ObjectStore:
    """``None`` or ``file://DIR``: a local directory (``home/objects`` for None), served by the control
    plane at ``public_url``; ``s3://bucket/prefix``: an S3 bucket, keys under the prefix, reached at
    ``endpoint`` (AWS when None) in ``region``, with credentials from the standard AWS chain."""
    if url is None or url == "":
        return LocalObjectStore(home / "objects", secret, public_url)
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path:
            raise ValueError(f"object store {url!r}: file:// needs a directory")
        return LocalObjectStore(Path(path), secret, public_url)
    if url.startswith("s3://"):
        parts = urlsplit(url)
        if not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"object store {url!r}: expected s3://bucket or s3://bucket/prefix")
        # boto3 is imported only by deployments that use S3.
        from trainyard.objects.s3 import S3ObjectStore

        return S3ObjectStore(parts.netloc, parts.path.strip("/"), endpoint=endpoint, region=region)
    raise ValueError(f"object store {url!r}: expected file://DIR or s3://bucket/prefix")
