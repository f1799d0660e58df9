"""The agent's uploader against S3 (moto's server behind a TCP proxy), without the rest of the agent:
parts that meet an outage are retried with fresh URLs, and an outage longer than the retry window
fails the upload cleanly, leaving the file in place."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.s3_server import REGION, S3Server, s3_server
from trainyard.objects.base import MIN_PART_SIZE, Part
from trainyard.objects.s3 import S3ObjectStore
from trainyard.worker.rpc import Backoff
from trainyard.worker.transfer import TransferError, Transfers

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


class StoreTarget:
    """What the control plane does for an agent's upload, done here directly on the store."""

    def __init__(self, store: S3ObjectStore, key: str) -> None:
        self.store = store
        self.key = key
        self.signed: list[int] = []
        self.aborted: list[str] = []

    async def sign(self) -> str:
        return self.store.presign(self.key, "PUT", 60)

    async def start_multipart(self, size: int, part_size: int) -> tuple[str, dict[int, str]]:
        upload_id = await asyncio.to_thread(self.store.create_multipart, self.key)
        return upload_id, {}

    async def sign_parts(self, upload_id: str, numbers: Sequence[int]) -> dict[int, str]:
        self.signed += numbers
        return {n: self.store.presign_part(self.key, upload_id, n, 60) for n in numbers}

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> int:
        done = [Part(n, e) for n, e in parts]
        return await asyncio.to_thread(self.store.complete_multipart, self.key, upload_id, done)

    async def abort_multipart(self, upload_id: str) -> None:
        self.aborted.append(upload_id)
        await asyncio.to_thread(self.store.abort_multipart, self.key, upload_id)


def _file(path: Path, parts: int) -> str:
    with path.open("wb") as f:
        for i in range(parts):
            f.write(bytes([i + 1]) * MIN_PART_SIZE)
        f.write(b"and a short tail")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _transfers(client: httpx.AsyncClient, retry_for_s: float) -> Transfers:
    return Transfers(
        client,
        attempts=2,
        backoff=lambda: Backoff(0.05, 0.3),
        retry_for_s=retry_for_s,
        multipart_threshold=MIN_PART_SIZE,
        part_size=MIN_PART_SIZE,
        part_concurrency=1,  # one part at a time, so the outage begins between two parts
    )


def test_parts_ride_out_an_outage_with_fresh_urls(s3: S3Server, tmp_path: Path) -> None:
    store = S3ObjectStore(s3.create_bucket(), endpoint=s3.endpoint, region=REGION)
    target = StoreTarget(store, "jobs/j/1/artifacts/model.bin")
    path = tmp_path / "model.bin"
    digest = _file(path, 3)
    assert s3.proxy is not None
    proxy = s3.proxy
    cut = threading.Event()

    async def after_response(r: httpx.Response) -> None:
        # The first part is in: S3 goes away for a second and a half, in the middle of the upload.
        if "partNumber=1" in str(r.request.url) and not cut.is_set():
            cut.set()
            proxy.close()
            threading.Timer(1.5, proxy.open).start()

    async def main() -> None:
        async with httpx.AsyncClient(event_hooks={"response": [after_response]}) as client:
            await _transfers(client, 30).put_file(None, path, target=target)

    asyncio.run(main())
    assert cut.is_set()
    assert hashlib.sha256(store.get(target.key)).hexdigest() == digest
    assert target.signed.count(2) > 2, target.signed  # part 2 got a fresh URL for each retry
    assert not target.aborted


def test_an_outage_past_the_retry_window_fails_and_keeps_the_file(s3: S3Server, tmp_path: Path) -> None:
    store = S3ObjectStore(s3.create_bucket(), endpoint=s3.endpoint, region=REGION)
    target = StoreTarget(store, "jobs/j/1/artifacts/model.bin")
    path = tmp_path / "model.bin"
    digest = _file(path, 2)

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            upload = _transfers(client, 1.0)
            upload_id, _ = await target.start_multipart(path.stat().st_size, MIN_PART_SIZE)
            with s3.outage(), pytest.raises(TransferError, match="gave up after"):
                await upload.put_file(None, path, target=_NoStart(target, upload_id))

    asyncio.run(main())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert target.aborted  # given up, it tried to drop the parts (S3 was still away, so in vain)
    assert not store.exists(target.key)


class _NoStart:
    """A target whose upload was begun before the outage, so that its parts meet the outage."""

    def __init__(self, inner: StoreTarget, upload_id: str) -> None:
        self.inner = inner
        self.upload_id = upload_id

    async def sign(self) -> str:
        return await self.inner.sign()

    async def start_multipart(self, size: int, part_size: int) -> tuple[str, dict[int, str]]:
        return self.upload_id, {}

    async def sign_parts(self, upload_id: str, numbers: Sequence[int]) -> dict[int, str]:
        return await self.inner.sign_parts(upload_id, numbers)

    async def complete_multipart(self, upload_id: str, parts: Sequence[tuple[int, str]]) -> int:
        return await self.inner.complete_multipart(upload_id, parts)

    async def abort_multipart(self, upload_id: str) -> None:
        await self.inner.abort_multipart(upload_id)
