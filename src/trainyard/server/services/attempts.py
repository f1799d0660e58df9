"""What workers report of their attempts: started, finished (through group commit, so a burst of
reports is one transaction), sealed log chunks, and the lease-token check of every upload."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainyard.model.records import LogChunk
from trainyard.server.group_commit import GroupCommit
from trainyard.server.hub import Kick
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.dispatch import Dispatcher
from trainyard.server.services.logs import LogService
from trainyard.store import FinishReport, ReportResult

if TYPE_CHECKING:
    from trainyard.store.ports import AttemptsStore


class AttemptService:
    """Guarded attempt transitions on workers' word: a report with a stale lease token changes
    nothing and is answered STALE (``ReportResult.ok`` false)."""

    def __init__(
        self,
        store: AttemptsStore,
        writes: GroupCommit,
        logs: LogService,
        dispatcher: Dispatcher,
        *,
        kick_scheduler: Kick,
        kick_relay: Kick,
        seal_writes: GroupCommit | None = None,
    ) -> None:
        self.store = store
        self.writes = writes
        # Seals get a group commit of their own. Every running attempt seals about once a minute,
        # and a burst of attempts that started together seals together: thousands of chunks queued
        # in one lane put a STARTED report seconds behind them (the fleet bench's dispatch p99 of
        # ~6 s at 2,000 running). Seals only insert rows of their own, so their transactions run
        # beside the reports' without lock conflicts; on SQLite both lanes queue on its write lock.
        self.seal_writes = seal_writes or writes
        self.logs = logs
        self.dispatcher = dispatcher
        self.kick_scheduler = kick_scheduler
        self.kick_relay = kick_relay

    async def started(self, job_id: str, attempt: int, lease_token: str, worker_id: str) -> ReportResult:
        """The worker started the attempt's process: SCHEDULED → RUNNING."""
        store = self.store
        res = await self.writes.run(
            lambda conn: store.report_started_in(conn, job_id, attempt, lease_token, worker_id)
        )
        if res.ok:
            self.kick_relay.set()
        return res

    async def finished(self, report: FinishReport) -> ReportResult:
        """The attempt ended: its outcome decides the job's next state (retry, requeue, or final);
        a gang rank's end stops the ranks that must stop with it."""
        store = self.store
        res = await self.writes.run(lambda conn: store.report_finished_in(conn, report))
        if res.ok:
            self.logs.mark_ended(report.job_id, report.attempt)
            self.kick_scheduler.set()
            if res.gang_id is not None:
                await self.dispatcher.push_gang_stops(res.gang_id)
            self.kick_relay.set()
        return res

    async def token_ok(self, job_id: str, attempt: int, lease_token: str) -> bool:
        """Whether ``lease_token`` is the attempt's current one (uploads of stale attempts are refused)."""
        return await off_loop(self.store.attempt_token_ok, job_id, attempt, lease_token)

    async def seal_log_chunk(self, chunk: LogChunk, lease_token: str) -> bool:
        """Index a log chunk the worker uploaded; False when the lease token is stale.

        Seals go through group commit (one transaction, one thread hop for all that arrive
        together) instead of a transaction each, in a lane apart from the reports'."""
        store = self.store
        return await self.seal_writes.run(lambda conn: store.add_log_chunk_in(conn, chunk, lease_token))
