"""When the agent reports STARTED (issue 14): a lone attempt at once, after its process was spawned;
the window that folds STARTED into FINISHED for runs over within milliseconds applies only while
other attempts are under way (a burst, where reports are what the control plane spends its time on)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from trainyard.proto.trainyard.v1 import worker_pb2 as pb

from .test_agent import _assignment, agent

pytestmark = pytest.mark.timeout(60)


def _phases(reports: list[pb.ReportRequest], job_id: str) -> list[int]:
    return [r.phase for r in reports if r.job_id == job_id]


def test_a_lone_attempt_reports_started_at_once_even_when_it_ends_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            for i in range(3):  # one after another: each alone on the agent
                svc.assign(_assignment(f"lone{i}", ["true"]))
                done = await svc.wait_finished(f"lone{i}")
                assert done.outcome == "succeeded"
                phases = _phases(svc.rec.reports, f"lone{i}")
                assert phases == [pb.ReportRequest.STARTED, pb.ReportRequest.FINISHED]

    asyncio.run(main())


def test_beside_a_running_attempt_each_attempt_is_still_reported_once_finished(tmp_path: Path) -> None:
    async def main() -> None:
        async with agent(tmp_path) as (svc, _, _):
            svc.assign(_assignment("long", ["sleep", "30"]))
            await svc.wait_for(lambda: _phases(svc.rec.reports, "long") == [pb.ReportRequest.STARTED])
            for i in range(5):
                svc.assign(_assignment(f"short{i}", ["true"]))
                done = await svc.wait_finished(f"short{i}")
                assert done.outcome == "succeeded"
                # At most STARTED then FINISHED (folded into FINISHED when over within the window).
                phases = _phases(svc.rec.reports, f"short{i}")
                assert (
                    phases[-1] == pb.ReportRequest.FINISHED and phases.count(pb.ReportRequest.FINISHED) == 1
                )
                assert phases in (
                    [pb.ReportRequest.FINISHED],
                    [pb.ReportRequest.STARTED, pb.ReportRequest.FINISHED],
                )

    asyncio.run(main())
