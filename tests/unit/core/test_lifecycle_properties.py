"""Property-based: random sequences of submits, leases, reports, lost heartbeats, cancels and restarts
against the real store never break the lifecycle rules."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.model.states import ALLOWED, LIVE, TERMINAL, AttemptOutcome, JobStatus
from trainyard.store.sql import FinishReport, Placement, SqlStore

USER = User("u", "t", "user")
OUTCOMES = [o for o in AttemptOutcome if o is not AttemptOutcome.LOST]


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = SqlStore(f"sqlite:///{Path(self.dir.name) / 's.db'}")
        self.store.migrate()
        self.jobs: list[str] = []
        self.workers: list[str] = []
        self.tokens: list[
            tuple[str, int, str, str]
        ] = []  # every lease ever granted: (job, attempt, token, worker)
        self.seen: dict[str, JobStatus] = {}
        self.runs: dict[str, int] = {}  # restarts per job: a success is counted once per run
        self.successes: dict[tuple[str, int], int] = {}

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    @rule(retries=st.integers(1, 3))
    def submit(self, retries: int) -> None:
        spec = JobSpec(command=("true",), retry={"max_attempts": retries, "on": ["infra", "failed"]})  # type: ignore[arg-type]
        self.jobs.append(self.store.submit(USER, spec).job.id)

    @rule()
    def add_worker(self) -> None:
        w, _ = self.store.register_worker(
            name=f"w{len(self.workers)}",
            hostname="h",
            pool="default",
            region=None,
            cpu=4,
            memory=1 << 32,
            gpu=0,
            gpu_type=None,
            labels={},
            version=None,
        )
        self.workers.append(w.id)

    @precondition(lambda self: self.jobs and self.workers)
    @rule(j=st.integers(0, 1000), w=st.integers(0, 1000))
    def lease(self, j: int, w: int) -> None:
        job = self.store.get_job(self.jobs[j % len(self.jobs)])
        assert job is not None
        wid = self.workers[w % len(self.workers)]
        for lease in self.store.lease([Placement(job.id, wid, (), job.attempt)]):
            self.tokens.append((lease.job_id, lease.attempt, lease.lease_token, wid))

    @precondition(lambda self: self.tokens)
    @rule(i=st.integers(0, 1000))
    def start(self, i: int) -> None:
        job_id, attempt, token, wid = self.tokens[i % len(self.tokens)]
        self.store.report_started(job_id, attempt, token, wid)

    @precondition(lambda self: self.tokens)
    @rule(i=st.integers(0, 1000), outcome=st.sampled_from(OUTCOMES), code=st.integers(-9, 3))
    def finish(self, i: int, outcome: AttemptOutcome, code: int) -> None:
        job_id, attempt, token, wid = self.tokens[i % len(self.tokens)]
        before = self.store.get_job(job_id)
        res = self.store.report_finished(FinishReport(job_id, attempt, token, wid, outcome, code))
        if res.ok and res.status is JobStatus.SUCCEEDED and before is not None and before.status in LIVE:
            key = (job_id, self.runs.get(job_id, 0))
            self.successes[key] = self.successes.get(key, 0) + 1

    @precondition(lambda self: self.workers)
    @rule(w=st.integers(0, 1000))
    def heartbeats_lost(self, w: int) -> None:
        self.store.mark_worker_dead(self.workers[w % len(self.workers)])

    @precondition(lambda self: self.jobs)
    @rule(j=st.integers(0, 1000))
    def cancel(self, j: int) -> None:
        self.store.cancel(self.jobs[j % len(self.jobs)], "u")

    @precondition(lambda self: self.jobs)
    @rule(j=st.integers(0, 1000))
    def restart(self, j: int) -> None:
        job_id = self.jobs[j % len(self.jobs)]
        job = self.store.get_job(job_id)
        assert job is not None
        if job.status in TERMINAL:
            self.store.restart(job_id, "u")
            self.runs[job_id] = self.runs.get(job_id, 0) + 1
            self.seen[job_id] = JobStatus.PENDING

    @invariant()
    def rules_hold(self) -> None:
        for job_id in self.jobs:
            job = self.store.get_job(job_id)
            # Every accepted job still exists and is pending, live or terminal.
            assert job is not None
            assert job.status in {JobStatus.PENDING} | LIVE | TERMINAL
            # Never two live attempts of one job.
            live = [a for a in job.attempts if a.status in {s.value for s in LIVE}]
            assert len(live) <= 1
            if job.status in LIVE:
                assert live and live[0].number == job.attempt
            else:
                assert not live
            # Never a move out of a terminal state (a restart is the one, explicit, exit).
            prev = self.seen.get(job_id)
            if prev is not None and prev in TERMINAL:
                assert job.status is prev
            self.seen[job_id] = job.status
            # Every recorded transition is an allowed one.
            for e in self.store.job_events(job_id):
                if e.from_status and e.to_status and e.type != "restarted":
                    assert JobStatus(e.to_status) in ALLOWED[JobStatus(e.from_status)], e
        assert all(n == 1 for n in self.successes.values())


Lifecycle.TestCase.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
TestLifecycle = Lifecycle.TestCase
