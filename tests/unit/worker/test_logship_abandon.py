"""A log sealer whose lease went stale stops: no retry loop left behind on a spool that is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from trainyard.worker.logship import LogSealer
from trainyard.worker.rpc import StaleLease
from trainyard.worker.spool import LogSpool

pytestmark = pytest.mark.timeout(30)


class _Rpc:
    def __init__(self) -> None:
        self.calls = 0

    async def get_urls(self, *args: Any) -> dict[str, Any]:
        self.calls += 1
        raise OSError("the spool's attempt is gone")


def test_an_abandoned_sealer_stops_and_finish_says_stale(tmp_path: Path) -> None:
    async def main() -> None:
        spool = LogSpool(tmp_path / "log", 1 << 20)
        rpc = _Rpc()
        sealer = LogSealer(
            rpc,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            spool,
            job_id="j",
            attempt=1,
            lease_token="t",
            seal_bytes=1 << 20,
            interval_s=0.05,
            max_chunk_bytes=1 << 20,
            on_stale=lambda: None,
        )
        spool.on_data = sealer.notify
        spool.write(1, b"hello\n")
        for _ in range(500):  # it retries while the lease is ours (waited for, not slept on)
            if rpc.calls >= 2:
                break
            await asyncio.sleep(0.02)
        assert rpc.calls >= 2
        sealer.abandon()
        await asyncio.sleep(0.2)
        calls = rpc.calls
        await asyncio.sleep(0.3)
        assert rpc.calls == calls
        with pytest.raises(StaleLease):
            await sealer.finish()
        assert rpc.calls == calls

    asyncio.run(main())
