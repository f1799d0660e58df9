"""Tail on demand, on the agent's side: live log bytes go out only for attempts someone follows.

The agent runs against the in-process WorkerService with ``follow_all`` off, so nothing asks for a
live tail unless the test sends a LogTail down the lease stream. What the agent pushes is recorded
message by message (offset, bytes), so a gap or a duplicate is visible, and compared with the
sealed chunks, the durable copy.
"""

from __future__ import annotations

import asyncio
import gzip
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker import WorkerConfig, run_agent
from trainyard.worker.logship import MAX_CATCH_UP_BYTES
from trainyard.worker.slots import find_slot

from .fake_control_plane import BOOTSTRAP, FakeWorkerService, ObjectStore, start_server
from .helpers import PY, wait_for_async

pytestmark = pytest.mark.timeout(90)


class Pushes(FakeWorkerService):
    """Records every LogData as it came; acknowledges the end of what it holds contiguously."""

    def __init__(self, objects: ObjectStore) -> None:
        super().__init__(objects)
        self.follow_all = False
        self.pushed: list[tuple[str, int, int, bytes]] = []  # (job, attempt, offset, data)
        self.drop_log_streams = False

    async def PushLogs(self, request_iterator: Any, context: Any) -> Any:
        held: dict[tuple[str, int], tuple[int, int]] = {}  # key -> (start, end) held contiguously
        async for d in request_iterator:
            self.pushed.append((d.job_id, d.attempt, d.offset, bytes(d.data)))
            self.rec.log_messages += 1
            key = (d.job_id, d.attempt)
            start, end = held.get(key, (d.offset, d.offset))
            if d.offset > end:
                start, end = d.offset, d.offset  # a new run (the tail restarted later)
            end = max(end, d.offset + len(d.data))
            held[key] = (start, end)
            self._note()
            if self.drop_log_streams:
                self.drop_log_streams = False
                return  # the stream ends before the ack: the agent must resend, not skip
            yield pb.LogAck(job_id=d.job_id, attempt=d.attempt, offset=end)

    def live(self, job_id: str) -> list[tuple[int, bytes]]:
        return [(o, d) for j, _, o, d in self.pushed if j == job_id]

    def live_bytes(self, job_id: str) -> int:
        return sum(len(d) for _, d in self.live(job_id))


def sealed_log(svc: FakeWorkerService, objects: ObjectStore, job_id: str) -> bytes:
    out = b""
    for s in sorted((s for s in svc.rec.seals if s.job_id == job_id), key=lambda s: s.seq):
        assert s.start_offset == len(out)
        out += gzip.decompress(objects.objects[s.object_key])
    return out


def sealed_end(svc: FakeWorkerService, job_id: str) -> int:
    return max((s.end_offset for s in svc.rec.seals if s.job_id == job_id), default=0)


def follower_view(svc: Pushes, objects: ObjectStore, job_id: str, sealed_at_subscribe: int) -> bytes:
    """What a follower assembles: the sealed chunks, then the live pushes, each byte once (a push
    may overlap what it holds, as after a resend; it never leaves a gap)."""
    view = bytearray(sealed_log(svc, objects, job_id)[:sealed_at_subscribe])
    for offset, data in svc.live(job_id):
        assert offset <= len(view), f"a gap: push at {offset}, follower holds {len(view)}"
        view += data[len(view) - offset :]
    return bytes(view)


@asynccontextmanager
async def agent(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[Pushes, ObjectStore]]:
    objects = ObjectStore()
    svc = Pushes(objects)
    server, port = await start_server(svc)
    base: dict[str, Any] = dict(
        server=f"127.0.0.1:{port}",
        token=BOOTSTRAP,
        name="test-worker",
        work_dir=tmp_path / "agent",
        cpus=4,
        memory=8 << 30,
        log_flush_s=0.05,
        seal_interval_s=0.3,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        rpc_timeout_s=5,
        upload_attempts=2,
        upload_retry_s=0.5,
    )
    base.update(kw)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(WorkerConfig(**base), stop))
    try:
        await svc.wait_for(lambda: svc.rec.lease_connects > 0 or task.done())
        if task.done():
            task.result()
        yield svc, objects
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.stop(0)
        objects.close()


def printer(lines: int, every_s: float) -> list[str]:
    code = textwrap.dedent(
        f"""
        import time
        for i in range({lines}):
            print(f"{{i:05d}} " + "x" * 60, flush=True)
            time.sleep({every_s})
        """
    )
    return [PY, "-c", code]


def expected(lines: int) -> bytes:
    return b"".join(f"{i:05d} {'x' * 60}\n".encode() for i in range(lines))


def assign(svc: FakeWorkerService, job_id: str, command: list[str]) -> None:
    env = {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": "1"}
    svc.assign(pb.Assignment(job_id=job_id, attempt=1, lease_token=f"lt-{job_id}", command=command, env=env))


def test_an_unfollowed_attempt_pushes_no_live_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, objects):
            assign(svc, "quiet", printer(40, 0.01))
            done = await svc.wait_finished("quiet")
            assert done.outcome == "succeeded", done.reason
            # The durable archive is complete and byte-exact; nothing went the live way.
            assert sealed_log(svc, objects, "quiet") == expected(40)
            assert svc.live_bytes("quiet") == 0 and svc.rec.log_messages == 0

    asyncio.run(main())


def test_a_follow_mid_run_pushes_from_the_first_unsealed_byte_and_stop_ends_it(tmp_path: Path) -> None:
    lines = 150

    async def main() -> None:
        async with agent(tmp_path) as (svc, objects):
            assign(svc, "j", printer(lines, 0.02))
            await svc.wait_for(lambda: sealed_end(svc, "j") > 0)
            assert svc.live_bytes("j") == 0
            ends = sorted({0, *(s.end_offset for s in svc.rec.seals if s.job_id == "j")})
            svc.tail("j", ttl_s=60)
            await svc.wait_for(lambda: svc.live_bytes("j") > 0)
            first = svc.live("j")[0][0]
            # The push starts where the sealed chunks end, as far as the agent knows them sealed:
            # a seal whose answer is still on its way may be pushed once more, never more.
            seal_ends = {0, *(s.end_offset for s in svc.rec.seals if s.job_id == "j")}
            assert first in seal_ends and first >= ends[-2 if len(ends) > 1 else -1]
            svc.tail("j", stop=True)
            await asyncio.sleep(1.0)  # a push already in flight may still land
            stopped_at = svc.live_bytes("j")
            done = await svc.wait_finished("j")
            assert done.outcome == "succeeded", done.reason
            assert svc.live_bytes("j") == stopped_at, "pushes went on after the stop"
            log = sealed_log(svc, objects, "j")
            assert log == expected(lines)
            # Sealed chunks up to the push's start plus the pushes: the job's output, byte-exact.
            view = follower_view(svc, objects, "j", first)
            assert log.startswith(view) and len(view) > first

    asyncio.run(main())


def test_a_follower_to_the_end_sees_every_byte_once_across_stream_reconnects(tmp_path: Path) -> None:
    lines = 200

    async def main() -> None:
        async with agent(tmp_path) as (svc, objects):
            svc.tail("k", ttl_s=60)  # before the assignment: the agent keeps it for the attempt
            assign(svc, "k", printer(lines, 0.01))
            await svc.wait_for(lambda: svc.live_bytes("k") > 500)
            svc.drop_log_streams = True  # the log stream breaks before an ack
            await svc.wait_for(lambda: svc.live_bytes("k") > 2000)
            svc.drop_lease_streams()  # and the lease stream reconnects: the follow goes on
            await svc.wait_for(lambda: svc.rec.lease_connects >= 2)
            svc.tail("k", ttl_s=60)  # the follower's periodic ask, on the new stream
            done = await svc.wait_finished("k")
            assert done.outcome == "succeeded", done.reason
            await svc.wait_for(lambda: follower_view(svc, objects, "k", 0) == expected(lines))
            assert sealed_log(svc, objects, "k") == expected(lines)

    asyncio.run(main())


def test_a_follow_lapses_without_a_renewal(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _):
            assign(svc, "t", printer(400, 0.01))
            svc.tail("t", ttl_s=0.5)
            await svc.wait_for(lambda: svc.live_bytes("t") > 0)
            await asyncio.sleep(2.0)  # well past the ttl: a push in flight lands meanwhile
            lapsed_at = svc.live_bytes("t")
            await svc.wait_finished("t")
            assert svc.live_bytes("t") == lapsed_at
            assert lapsed_at < len(expected(400))

    asyncio.run(main())


def test_a_follow_without_a_sealer_catches_up_on_the_newest_bytes_only(tmp_path: Path) -> None:
    # With an external shipper (Fluent Bit) nothing is sealed by the agent: a follow pushes at
    # most the newest MAX_CATCH_UP_BYTES of what was printed before it, then everything new.
    big = 6 << 20
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.stdout.buffer.write(b"a" * {big}); sys.stdout.flush()
        print("ready", flush=True)
        time.sleep(600)
        """
    )

    async def main() -> None:
        async with agent(tmp_path, log_shipper="external") as (svc, _):
            assign(svc, "x", [PY, "-c", code])
            total = big + len(b"ready\n")

            def spooled() -> bool:
                slot = find_slot(tmp_path / "agent", "x", 1)
                return slot is not None and (slot / "log").exists() and (slot / "log").stat().st_size == total

            await wait_for_async(spooled, 30)
            svc.tail("x", ttl_s=60)
            await svc.wait_for(lambda: b"ready" in b"".join(d for _, d in svc.live("x")))
            assert not svc.rec.seals
            first = svc.live("x")[0][0]
            assert first == total - MAX_CATCH_UP_BYTES
            assert svc.live_bytes("x") == MAX_CATCH_UP_BYTES
            svc.command(pb.Command(kind=pb.Command.CANCEL, job_id="x", attempt=1, lease_token="lt-x"))
            await svc.wait_finished("x", timeout=30)

    asyncio.run(main())
