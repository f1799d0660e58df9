"""A log sealer asks for its chunks' upload URLs ahead (1, 2, 4, then 8 at a time), uses each URL for
its own chunk only, and asks again once those it holds are old."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker import logship
from trainyard.worker.logship import LogSealer
from trainyard.worker.spool import LogSpool

pytestmark = pytest.mark.timeout(30)


class _Rpc:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.sealed: list[tuple[int, str]] = []

    async def get_urls(self, job_id: str, attempt: int, token: str, purpose: int, names: list[str]) -> Any:
        assert purpose == pb.UrlRequest.LOG_CHUNK
        self.asked.append(list(names))
        return {
            n: pb.SignedUrl(name=n, url=f"http://s/{n}?sig={len(self.asked)}", object_key=f"k/{n}")
            for n in names
        }

    async def seal(self, req: pb.SealLogChunkRequest) -> None:
        self.sealed.append((req.seq, req.object_key))


class _Transfers:
    def __init__(self) -> None:
        self.put: list[tuple[str, bytes]] = []

    async def put_bytes(self, url: str, data: bytes, content_type: str, *, sign: Any) -> None:
        self.put.append((url, data))


def _sealer(tmp_path: Path, rpc: _Rpc, transfers: _Transfers) -> tuple[LogSealer, LogSpool]:
    spool = LogSpool(tmp_path / "log", 1 << 20)
    sealer = LogSealer(
        rpc,  # type: ignore[arg-type]
        transfers,  # type: ignore[arg-type]
        spool,
        job_id="j",
        attempt=1,
        lease_token="t",
        seal_bytes=1 << 20,
        interval_s=3600.0,
        max_chunk_bytes=1,  # a chunk per byte: many chunks from one seal
        on_stale=lambda: None,
    )
    return sealer, spool


def test_urls_are_asked_for_ahead_and_each_used_for_its_own_chunk(tmp_path: Path) -> None:
    rpc, transfers = _Rpc(), _Transfers()
    sealer, spool = _sealer(tmp_path, rpc, transfers)

    async def main() -> None:
        spool.write(1, b"0123456789")
        await sealer.seal_available()

    asyncio.run(main())
    assert rpc.asked == [["0"], ["1", "2"], ["3", "4", "5", "6"], [str(i) for i in range(7, 15)]]
    assert [u.split("?")[0] for u, _ in transfers.put] == [f"http://s/{i}" for i in range(10)]
    assert [seq for seq, _ in rpc.sealed] == list(range(10))
    assert [key for _, key in rpc.sealed] == [f"k/{i}" for i in range(10)]
    assert b"".join(d for _, d in transfers.put) != b""  # gzip of each byte, one chunk each


def test_urls_held_too_long_are_asked_for_again(tmp_path: Path) -> None:
    rpc, transfers = _Rpc(), _Transfers()
    sealer, spool = _sealer(tmp_path, rpc, transfers)

    async def main() -> None:
        spool.write(1, b"ab")
        await sealer.seal_available()  # asks for 0, then 1 and 2
        sealer._urls_at -= logship.URL_REUSE_S + 1  # as if they came a minute ago
        spool.write(1, b"c")
        await sealer.seal_available()  # chunk 2's URL is held, but old: asked for again

    asyncio.run(main())
    assert rpc.asked == [["0"], ["1", "2"], ["2", "3", "4", "5"]]
    assert transfers.put[-1][0] == "http://s/2?sig=3"
