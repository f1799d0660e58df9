"""A job's files in object storage: its artifacts (with short-lived download URLs) and the
working-directory bundles jobs start from."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainyard.model.records import ArtifactRecord
from trainyard.objects.base import ObjectStore, check_key
from trainyard.server.bundles import check_bundle
from trainyard.server.services.blocking import off_loop

if TYPE_CHECKING:
    from trainyard.store.ports import FilesStore


class BundleInvalid(ValueError):
    """The upload is not a bundle at all (empty, or not gzip-compressed)."""


@dataclass(frozen=True)
class StoredBundle:
    """An uploaded workdir bundle: its object key, digest and size."""

    key: str
    sha256: str
    size: int


class FileService:
    """Artifacts and workdir bundles: records in the store, bytes in object storage."""

    def __init__(
        self,
        store: FilesStore,
        objects: ObjectStore,
        *,
        url_ttl: float,
        unpacked_limit: int,
        file_limit: int,
    ) -> None:
        self.store = store
        self.objects = objects
        self.url_ttl = url_ttl
        self.unpacked_limit = unpacked_limit
        self.file_limit = file_limit
        self.archived_artifacts: Callable[[str, int | None], list[ArtifactRecord]] | None = None
        """An archived job's artifacts, read from its archive (set by the composition root)."""

    def presign_get(self, key: str) -> str:
        """A short-lived download URL of an object."""
        return self.objects.presign(key, "GET", self.url_ttl)

    # ---- artifacts -------------------------------------------------------------------------------
    def _artifacts(self, job_id: str, attempt: int | None) -> list[ArtifactRecord]:
        """The artifact index of a job, or of an archived job from its archive (retention deletes
        the index rows and keeps the objects)."""
        arts = self.store.artifacts(job_id, attempt)
        if not arts and self.archived_artifacts is not None:
            return self.archived_artifacts(job_id, attempt)
        return arts

    async def artifacts(self, job_id: str, attempt: int | None) -> list[ArtifactRecord]:
        """An attempt's artifacts; without ``attempt``, those of the latest attempt that has any."""
        arts = await off_loop(self._artifacts, job_id, attempt)
        if attempt is None and arts:
            latest = max(a.attempt for a in arts)
            arts = [a for a in arts if a.attempt == latest]
        return arts

    async def artifact(self, job_id: str, path: str, attempt: int | None) -> ArtifactRecord | None:
        """The artifact at ``path``: of ``attempt``, or of the latest attempt that has it."""
        arts = [a for a in await off_loop(self._artifacts, job_id, attempt) if a.path == path]
        return max(arts, key=lambda a: a.attempt) if arts else None

    # ---- workdir bundles -------------------------------------------------------------------------
    def bundle_exists(self, team: str, key: str) -> bool:
        """Whether ``key`` names an uploaded bundle of ``team``."""
        if not key.startswith(f"bundles/{team}/"):
            return False
        try:
            return self.objects.exists(check_key(key))
        except ValueError:
            return False

    async def store_bundle(self, team: str, chunks: AsyncIterator[bytes]) -> StoredBundle:
        """Keep an uploaded tar.gz as ``bundles/<team>/<sha256>.tar.gz`` (stored once per content).

        BundleInvalid when it is empty or not gzip; ``BundleRefused`` when it would unpack past the
        limits (read through its headers: a gzip bomb is refused at its first oversized member,
        before its data is inflated; the worker checks again on unpacking)."""
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as tmp:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                tmp.write(chunk)
            if size == 0:
                raise BundleInvalid("the bundle is empty")
            tmp.seek(0)
            head = tmp.read(2)
            if head != b"\x1f\x8b":
                raise BundleInvalid("the bundle must be a gzip-compressed tar archive")
            tmp.seek(0)
            await asyncio.to_thread(check_bundle, tmp, self.unpacked_limit, self.file_limit)
            tmp.seek(0)
            key = f"bundles/{team}/{digest.hexdigest()}.tar.gz"
            if not self.objects.exists(key):
                await asyncio.to_thread(self.objects.put, key, tmp.read())
        return StoredBundle(key, digest.hexdigest(), size)
