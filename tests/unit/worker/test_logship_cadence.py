"""A log sealer's cadence grows with each periodic seal, from ``interval_s`` up to
``interval_max_s``: a long attempt seals a chunk a minute rather than every few seconds, and every
byte still reaches storage, in order."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
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
        self.sealed_at: list[float] = []
        self.ranges: list[tuple[int, int]] = []

    async def get_urls(self, job_id: str, attempt: int, token: str, purpose: int, names: list[str]) -> Any:
        return {n: pb.SignedUrl(name=n, url=f"http://s/{n}", object_key=f"k/{n}") for n in names}

    async def seal(self, req: pb.SealLogChunkRequest) -> None:
        self.sealed_at.append(time.monotonic())
        self.ranges.append((req.start_offset, req.end_offset))


class _Transfers:
    def __init__(self) -> None:
        self.put: list[bytes] = []
        self.delay = 0.0

    async def put_bytes(self, url: str, data: bytes, content_type: str, *, sign: Any) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.put.append(data)


def _make(
    spool: LogSpool,
    rpc: _Rpc,
    transfers: _Transfers,
    *,
    job_id: str = "j",
    interval_s: float = 3600.0,
    interval_max_s: float | None = None,
    max_chunk_bytes: int = 1 << 20,
) -> LogSealer:
    return LogSealer(
        rpc,  # type: ignore[arg-type]
        transfers,  # type: ignore[arg-type]
        spool,
        job_id=job_id,
        attempt=1,
        lease_token="t",
        seal_bytes=1 << 20,
        interval_s=interval_s,
        interval_max_s=interval_max_s,
        max_chunk_bytes=max_chunk_bytes,
        on_stale=lambda: None,
    )


def _run(
    tmp_path: Path,
    interval: float,
    interval_max: float | None,
    seconds: float,
    *,
    rpc: _Rpc | None = None,
    transfers: _Transfers | None = None,
) -> tuple[_Rpc, bytes, bytes, LogSealer]:
    rpc = rpc or _Rpc()
    transfers = transfers or _Transfers()
    spool = LogSpool(tmp_path / "log", 1 << 20)
    sealer = _make(spool, rpc, transfers, interval_s=interval, interval_max_s=interval_max)
    written = bytearray()

    async def main() -> None:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            line = f"line {i}\n".encode()
            spool.write(1, line)
            written.extend(line)
            sealer.notify()
            i += 1
            await asyncio.sleep(0.01)
        await sealer.finish()

    asyncio.run(main())
    stored = b"".join(gzip.decompress(d) for d in transfers.put)
    return rpc, bytes(written), stored, sealer


def test_each_periodic_seal_doubles_the_wait_up_to_the_cap(tmp_path: Path) -> None:
    rpc, written, stored, sealer = _run(tmp_path, 0.05, 0.2, 1.5)
    assert sealer._interval_s == 0.2
    assert stored == written
    periodic = rpc.sealed_at[:-1]  # the last is finish()'s
    gaps = [b - a for a, b in itertools.pairwise(periodic)]
    # Writes come every 10 ms, so a chunk's first byte is at most that after the last seal: each gap
    # is at least the wait then in force, less how early it may come (up to half while the cadence
    # grows and at its first full wait, a fifth after), less that. A loaded machine only makes gaps
    # longer.
    waits = [0.1, 0.2] + [0.2] * len(gaps)
    early = [logship.SEAL_SPREAD] * 2 + [logship.SEAL_JITTER] * len(gaps)
    for gap, wait, share in zip(gaps, waits, early, strict=False):
        assert gap >= wait * (1 - share) - 0.02, (gaps, waits)
    # 1.5 s at a fixed 50 ms would be about 30 chunks; growing to 200 ms it is at most about 12.
    assert len(rpc.sealed_at) <= 12
    assert [s for s, _ in rpc.ranges] == [0] + [e for _, e in rpc.ranges[:-1]]


def test_without_a_cap_the_cadence_stays_fixed(tmp_path: Path) -> None:
    rpc, written, stored, sealer = _run(tmp_path, 0.1, None, 0.5)
    assert stored == written
    assert len(rpc.sealed_at) >= 3  # periodic seals happened, and none changed the wait
    assert sealer._interval_s == 0.1


def test_a_seal_takes_what_is_there_and_leaves_what_arrives_during_its_uploads(tmp_path: Path) -> None:
    # Uploads as slow as a loaded store (40 ms) under a line every 10 ms: a seal that chased the
    # bytes arriving meanwhile made a one-line chunk per upload, about 25 a second.
    rpc, transfers = _Rpc(), _Transfers()
    transfers.delay = 0.04
    rpc2, written, stored, _ = _run(tmp_path, 0.1, None, 1.0, rpc=rpc, transfers=transfers)
    assert stored == written
    # Fixed 100 ms for 1 s: about ten periodic seals of one chunk each, and finish()'s.
    assert len(rpc2.sealed_at) <= 13, len(rpc2.sealed_at)


def test_finish_ends_when_the_spool_holds_less_than_it_counted(tmp_path: Path) -> None:
    rpc, transfers = _Rpc(), _Transfers()
    spool = LogSpool(tmp_path / "log", 1 << 20)
    sealer = _make(spool, rpc, transfers, max_chunk_bytes=4)
    spool.write(1, b"0123456789")
    with open(spool.path, "r+b") as f:
        f.truncate(6)  # its directory being cleaned away under it

    asyncio.run(asyncio.wait_for(sealer.finish(), 5))
    assert sealer.sealed == 6
    assert [r for r in rpc.ranges] == [(0, 4), (4, 6)]


def test_attempts_that_start_together_do_not_seal_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twenty attempts with output from the same instant: each waits its own share of the interval,
    # up to half less at this first full wait, rather than all sealing on the same tick.
    drawn: list[tuple[float, float, float]] = []
    uniform = logship.random.uniform

    def recording(a: float, b: float) -> float:
        x = uniform(a, b)
        drawn.append((a, b, x))
        return x

    monkeypatch.setattr(logship.random, "uniform", recording)
    rpc, transfers = _Rpc(), _Transfers()
    spools = [LogSpool(tmp_path / f"log{i}", 1 << 20) for i in range(20)]
    sealers = [_make(spool, rpc, transfers, job_id=f"j{i}", interval_s=0.5) for i, spool in enumerate(spools)]

    async def main() -> float:
        t0 = time.monotonic()
        for spool, sealer in zip(spools, sealers, strict=True):
            spool.write(1, b"x\n")
            sealer.notify()
        await asyncio.sleep(0.8)
        return t0

    t0 = asyncio.run(main())
    assert len(drawn) >= 20
    assert all((a, b) == (1 - logship.SEAL_SPREAD, 1) and a <= x <= b for a, b, x in drawn[:20])
    assert len({x for _, _, x in drawn}) == len(drawn)
    times = [t - t0 for t in rpc.sealed_at]
    assert len(times) == 20
    assert all(t >= 0.5 * (1 - logship.SEAL_SPREAD) - 0.02 for t in times), times


def test_waits_spread_wide_until_the_first_full_one_then_narrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 ms doubling to 200 ms: the waits of 50, 100 and the first of 200 ms come up to half early,
    # the later ones up to a fifth, so a burst's phases part early and then hold a steady cadence.
    lows: list[float] = []
    uniform = logship.random.uniform

    def recording(a: float, b: float) -> float:
        lows.append(a)
        return uniform(a, b)

    monkeypatch.setattr(logship.random, "uniform", recording)
    _run(tmp_path, 0.05, 0.2, 1.2)
    assert len(lows) >= 5, lows
    assert lows[:3] == [1 - logship.SEAL_SPREAD] * 3
    assert set(lows[3:]) == {1 - logship.SEAL_JITTER}
