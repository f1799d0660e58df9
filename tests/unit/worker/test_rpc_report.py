"""The final report must never leave an attempt RUNNING: retries through transient failures, a
minimal INFRA report in place of a refused one, and URL refusals that end an attempt cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker import run_agent
from trainyard.worker.rpc import FALLBACK_REASON_CHARS, FALLBACK_STDERR_BYTES, ControlPlane, fallback_report
from trainyard.worker.transfer import TransferError

from .fake_control_plane import BOOTSTRAP, FakeWorkerService, ObjectStore, start_server
from .helpers import PY
from .test_agent import _assignment, _config

pytestmark = pytest.mark.timeout(60)

Decide = Callable[[pb.ReportRequest], "tuple[grpc.StatusCode, str] | None"]


class Scripted(FakeWorkerService):
    """The fake control plane, with reports and URL requests failing as a test scripts them."""

    def __init__(self, objects: ObjectStore) -> None:
        super().__init__(objects)
        self.next_errors: list[grpc.StatusCode] = []
        """The next Report or ReportBatch calls fail with these, one each, whatever they carry."""
        self.decide: Decide = lambda _: None
        """Per report: an error to answer it with (a batch holding it fails whole, as the real one does)."""
        self.refused_names: set[str] = set()
        self.calls = 0
        self.refusals: list[pb.ReportRequest] = []

    async def _gate(self, reports: list[pb.ReportRequest], context: Any) -> None:
        self.calls += 1
        if self.next_errors:
            await context.abort(self.next_errors.pop(0), "scripted failure")
        for r in reports:
            verdict = self.decide(r)
            if verdict is not None:
                self.refusals.append(r)
                self._note()
                await context.abort(*verdict)

    async def Report(self, request: pb.ReportRequest, context: Any) -> pb.ReportResponse:
        await self._gate([request], context)
        return await super().Report(request, context)

    async def ReportBatch(self, request: pb.ReportBatchRequest, context: Any) -> pb.ReportBatchResponse:
        if not self.batching:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "an older control plane")
        await self._gate(list(request.reports), context)
        self.rec.batches.append(len(request.reports))
        return pb.ReportBatchResponse(
            results=[await FakeWorkerService.Report(self, r, context) for r in request.reports]
        )

    async def GetUrls(self, request: pb.UrlRequest, context: Any) -> pb.UrlResponse:
        for name in request.names:
            if name in self.refused_names:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the artifact name {name!r} is refused"
                )
        return await super().GetUrls(request, context)


@asynccontextmanager
async def control_plane(**kw: Any) -> AsyncIterator[tuple[Scripted, ControlPlane]]:
    objects = ObjectStore()
    svc = Scripted(objects)
    server, port = await start_server(svc)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    cp = ControlPlane(
        channel,
        bootstrap_token=BOOTSTRAP,
        rpc_timeout_s=5,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        **kw,
    )
    await cp.register(pb.RegisterRequest(name="w", capacity=pb.Capacity(cpu=1, memory=1)))
    try:
        yield svc, cp
    finally:
        await channel.close(grace=None)
        await server.stop(0)
        objects.close()


def finished(job_id: str = "j1", outcome: str = "succeeded", **kw: Any) -> pb.ReportRequest:
    base: dict[str, Any] = dict(
        job_id=job_id,
        attempt=1,
        lease_token=f"lt-{job_id}",
        phase=pb.ReportRequest.FINISHED,
        outcome=outcome,
        artifacts=[pb.Artifact(path="my model.bin", size=3, sha256="0" * 64, object_key="k")],
        checkpoint_key="ck",
        stderr_tail=b"x" * 5000 + b"the end",
        log_bytes=1234,
        exit_code=3,
        has_exit_code=True,
        at=1.5,
    )
    base.update(kw)
    return pb.ReportRequest(**base)


def with_artifacts(code: grpc.StatusCode, details: str = "refused") -> Decide:
    return lambda r: (code, details) if len(r.artifacts) else None


def test_transient_failures_are_retried_and_the_report_goes_through() -> None:
    async def main() -> None:
        async with control_plane(report_give_up_s=60) as (svc, cp):
            svc.next_errors = [
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ]
            resp = await cp.report_final(finished())
            assert resp.result == pb.ReportResponse.OK
            assert svc.calls == 6
            (got,) = svc.rec.reports
            assert got.outcome == "succeeded" and [a.path for a in got.artifacts] == ["my model.bin"]

    asyncio.run(main())


def test_a_refused_report_is_replaced_by_a_minimal_infra_report() -> None:
    async def main() -> None:
        async with control_plane() as (svc, cp):
            svc.decide = with_artifacts(grpc.StatusCode.INVALID_ARGUMENT, "the artifact name is refused")
            resp = await cp.report_final(finished(reason="exit 3"))
            assert resp.result == pb.ReportResponse.OK
            assert len(svc.refusals) == 1  # refused at once: another try would be refused the same way
            (got,) = svc.rec.reports
            assert got.phase == pb.ReportRequest.FINISHED and got.outcome == "infra"
            assert (got.job_id, got.attempt, got.lease_token) == ("j1", 1, "lt-j1")
            assert "refused the final report" in got.reason
            assert "INVALID_ARGUMENT: the artifact name is refused" in got.reason
            assert "the attempt's own outcome: succeeded (exit 3)" in got.reason
            assert not got.artifacts and not got.checkpoint_key
            assert got.stderr_tail == (b"x" * 5000 + b"the end")[-FALLBACK_STDERR_BYTES:]
            assert got.has_exit_code and got.exit_code == 3 and got.log_bytes == 1234 and got.at == 1.5

    asyncio.run(main())


def test_a_report_that_keeps_failing_is_given_up_on_after_the_window() -> None:
    async def main() -> None:
        async with control_plane(report_give_up_s=0.2) as (svc, cp):
            svc.decide = with_artifacts(grpc.StatusCode.INTERNAL, "a server error on this report")
            resp = await cp.report_final(finished())
            assert resp.result == pb.ReportResponse.OK
            assert len(svc.refusals) >= 2  # retried with backoff first
            (got,) = svc.rec.reports
            assert got.outcome == "infra" and "INTERNAL: a server error on this report" in got.reason

    asyncio.run(main())


def test_an_outage_is_waited_out_however_long_it_lasts() -> None:
    async def main() -> None:
        async with control_plane(report_give_up_s=0.01) as (svc, cp):
            svc.next_errors = [grpc.StatusCode.UNAVAILABLE] * 12  # well past the window
            resp = await cp.report_final(finished())
            assert resp.result == pb.ReportResponse.OK
            (got,) = svc.rec.reports
            assert got.outcome == "succeeded" and len(got.artifacts) == 1  # the report itself, not a fallback

    asyncio.run(main())


def test_a_started_report_is_never_given_up_on() -> None:
    async def main() -> None:
        async with control_plane(report_give_up_s=0.01) as (svc, cp):
            svc.next_errors = [grpc.StatusCode.INTERNAL] * 8
            started = pb.ReportRequest(
                job_id="j1", attempt=1, lease_token="lt", phase=pb.ReportRequest.STARTED
            )
            assert (await cp.report(started)).result == pb.ReportResponse.OK

    asyncio.run(main())


def test_when_the_fallback_is_refused_too_the_attempt_is_let_go() -> None:
    async def main() -> None:
        async with control_plane() as (svc, cp):
            svc.decide = lambda r: (grpc.StatusCode.FAILED_PRECONDITION, "no")
            resp = await cp.report_final(finished())
            assert (
                resp.result == pb.ReportResponse.RESULT_UNSPECIFIED and "FAILED_PRECONDITION" in resp.message
            )
            assert [r.outcome for r in svc.refusals] == ["succeeded", "infra"]
            assert svc.rec.reports == []

    asyncio.run(main())


def test_one_refused_report_does_not_fail_the_others_in_its_batch() -> None:
    async def main() -> None:
        async with control_plane() as (svc, cp):
            svc.decide = lambda r: (
                (grpc.StatusCode.INVALID_ARGUMENT, "bad") if r.job_id == "bad" and r.artifacts else None
            )
            jobs = ["a", "b", "bad", "c", "d"]
            results = await asyncio.gather(*(cp.report_final(finished(j)) for j in jobs))
            assert all(r.result == pb.ReportResponse.OK for r in results)
            assert len(svc.refusals) >= 2  # in the batch, then alone
            outcomes = {r.job_id: r.outcome for r in svc.rec.reports}
            assert outcomes == {
                "a": "succeeded",
                "b": "succeeded",
                "bad": "infra",
                "c": "succeeded",
                "d": "succeeded",
            }

    asyncio.run(main())


def test_the_fallback_keeps_what_the_platform_decided_and_cuts_the_rest_short() -> None:
    for outcome in ("preempted", "cancelled", "timed_out", "start_failed", "infra"):
        assert fallback_report(finished(outcome=outcome), "why").outcome == outcome
    for outcome in ("succeeded", "failed"):
        assert fallback_report(finished(outcome=outcome), "why").outcome == "infra"
    long = fallback_report(finished(reason="r\x00" * 5000), "INVALID_ARGUMENT: " + "n" * 5000)
    assert len(long.reason) <= FALLBACK_REASON_CHARS and "\x00" not in long.reason
    no_exit = fallback_report(finished(has_exit_code=False, exit_code=0), "why")
    assert not no_exit.has_exit_code


def test_a_refused_or_unencodable_url_request_is_a_transfer_error() -> None:
    async def main() -> None:
        async with control_plane() as (svc, cp):
            svc.refused_names = {"bad"}
            urls = await cp.get_urls("j1", 1, "lt", pb.UrlRequest.ARTIFACT, ["café.txt", "my model.bin"])
            assert set(urls) == {"café.txt", "my model.bin"}
            with pytest.raises(TransferError, match="INVALID_ARGUMENT"):
                await cp.get_urls("j1", 1, "lt", pb.UrlRequest.ARTIFACT, ["ok", "bad"])
            with pytest.raises(TransferError, match="UTF-8"):
                await cp.get_urls("j1", 1, "lt", pb.UrlRequest.ARTIFACT, ["not-utf8-\udcff"])

    asyncio.run(main())


# ---- the agent: no refusal leaves an attempt running -------------------------------------------------


@asynccontextmanager
async def agent(tmp_path: Path) -> AsyncIterator[Scripted]:
    objects = ObjectStore()
    svc = Scripted(objects)
    server, port = await start_server(svc)
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(_config(tmp_path, port), stop))
    try:
        await svc.wait_for(lambda: svc.rec.lease_connects > 0 or task.done())
        if task.done():
            task.result()
        yield svc
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await server.stop(0)
        objects.close()


def _writes_artifact(name: str) -> list[str]:
    code = f"import os, pathlib; pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'], {name!r}).write_text('x')"
    return [PY, "-c", code]


async def _let_go(svc: Scripted, job_id: str) -> None:
    """Wait until two heartbeats in a row no longer list the attempt."""

    def gone() -> bool:
        beats = svc.rec.heartbeats[-2:]
        return len(beats) == 2 and all(job_id not in {r.job_id for r in b.running} for b in beats)

    await svc.wait_for(gone)


def test_agent_ends_an_attempt_whose_artifact_name_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as svc:
            svc.refused_names = {"bad name.txt"}
            svc.assign(_assignment("n1", _writes_artifact("bad name.txt")))
            done = await svc.wait_finished("n1")
            assert done.outcome == "infra" and not done.artifacts
            assert "artifact upload failed" in done.reason and "INVALID_ARGUMENT" in done.reason
            await _let_go(svc, "n1")

    asyncio.run(main())


def test_agent_falls_back_when_its_report_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as svc:
            svc.decide = with_artifacts(grpc.StatusCode.INVALID_ARGUMENT, "refused for the test")
            svc.assign(_assignment("n2", _writes_artifact("café.txt")))
            done = await svc.wait_finished("n2")
            assert done.outcome == "infra" and not done.artifacts
            assert "refused the final report" in done.reason and "refused for the test" in done.reason
            await _let_go(svc, "n2")

    asyncio.run(main())


def test_agent_lets_go_of_an_attempt_whose_every_report_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as svc:
            svc.decide = lambda r: (
                (grpc.StatusCode.INVALID_ARGUMENT, "no")
                if r.job_id == "n3" and r.phase == r.FINISHED
                else None
            )
            svc.assign(_assignment("n3", _writes_artifact("a.txt")))
            await svc.wait_for(lambda: len(svc.refusals) >= 2)
            # Nothing got through; the agent stops listing the attempt, so the control plane's
            # reconciler finds it lost, and the agent goes on with other work.
            await _let_go(svc, "n3")
            assert svc.finished("n3") is None
            svc.assign(_assignment("n4", ["true"]))
            assert (await svc.wait_finished("n4")).outcome == "succeeded"

    asyncio.run(main())
