"""Retention: finished jobs archived to object storage and pruned from the database, in small batches.

Each batch is: read the jobs and their rows (``ArchiveRepo.select_batch``), write them as one gzip'd
JSON-lines object under ``archive/`` and read it back, and only then delete the rows and index them
as archived in one transaction (``ArchiveRepo.commit_batch``). Batches are small so that a prune
never holds SQLite's one write lock for long; the leader runs one pass every
``retention_interval`` when ``TRAINYARD_RETENTION`` is set, and admins run ``yard admin prune``.

An archived job stays readable by id: ``archived_job`` finds its index row (the team, for the
visibility rule), then reads it from the object. Log chunk and artifact objects stay where they
are; the archive keeps their index rows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainyard.model.records import ArtifactRecord, Event, Job, LogChunk
from trainyard.objects.base import ObjectNotFound, ObjectStore
from trainyard.server.services.blocking import off_loop
from trainyard.store.archive import (
    ArchivedRef,
    archive_key,
    artifacts_from_archive,
    chunks_from_archive,
    decode_archive,
    encode_archive,
    events_from_archive,
    job_from_archive,
)

if TYPE_CHECKING:
    from trainyard.store.ports import RetentionStore

log = logging.getLogger("trainyard.retention")

DEFAULT_BATCH = 200
"""Jobs per batch: one batch's delete is a few milliseconds of SQLite's write lock."""
MAX_BATCH = 5000
_OBJECTS_CACHED = 8  # archive objects kept decoded: a page of reads of one batch's jobs costs one GET


class ArchiveWriteFailed(RuntimeError):
    """The archive object did not read back as written: nothing was deleted."""


@dataclass
class PruneReport:
    """What a prune did (or, dry, would do)."""

    cutoff: float
    dry_run: bool
    jobs: int = 0
    """Listed jobs archived (a gang or an array counts once)."""
    rows: int = 0
    """``jobs`` rows archived (with ranks and tasks)."""
    attempts: int = 0
    events: int = 0
    log_chunks: int = 0
    artifacts: int = 0
    outbox: int = 0
    """Outbox rows the bus had before the cutoff, deleted (nothing but the replay check reads them)."""
    skipped: int = 0
    """Finished jobs kept back: a task or rank still live, a waiting job depends on them, or they
    changed while being archived."""
    objects: list[str] = field(default_factory=list)
    more: bool = False
    """Stopped at ``max_jobs`` with more to prune."""

    def as_json(self, iso: Callable[[float | None], str | None]) -> dict[str, Any]:
        return {
            "cutoff": iso(self.cutoff),
            "dry_run": self.dry_run,
            "jobs": self.jobs,
            "rows": self.rows,
            "attempts": self.attempts,
            "events": self.events,
            "log_chunks": self.log_chunks,
            "artifacts": self.artifacts,
            "outbox": self.outbox,
            "skipped": self.skipped,
            "objects": self.objects,
            "more": self.more,
        }


class RetentionService:
    """Archive-then-delete of finished jobs, and reads of archived ones."""

    def __init__(
        self,
        store: RetentionStore,
        objects: ObjectStore,
        *,
        retention_s: float | None,
        batch: int = DEFAULT_BATCH,
        max_jobs_per_pass: int = 20_000,
    ) -> None:
        self.store = store
        self.objects = objects
        self.retention_s = retention_s
        self.batch = batch
        self.max_jobs_per_pass = max_jobs_per_pass
        self.before_commit: Callable[[str], None] | None = None
        """Called between the object's write and the delete (tests crash a prune there)."""
        self._decoded: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    # ---- pruning ---------------------------------------------------------------------------------
    def prune(
        self, cutoff: float, *, dry_run: bool = False, batch: int | None = None, max_jobs: int | None = None
    ) -> PruneReport:
        """Archive and delete the jobs that finished before ``cutoff``, ``batch`` at a time, up to
        ``max_jobs`` (blocking). Dry: count what would go, change nothing."""
        report = PruneReport(cutoff=cutoff, dry_run=dry_run)
        self._prune_jobs(report, batch, max_jobs)
        self._prune_outbox(report)
        return report

    def _prune_outbox(self, report: PruneReport) -> None:
        if report.dry_run:
            report.outbox = self.store.outbox_sent_before(report.cutoff)
            return
        while n := self.store.outbox_prune_sent(report.cutoff):
            report.outbox += n

    def _prune_jobs(self, report: PruneReport, batch: int | None, max_jobs: int | None) -> None:
        cutoff, dry_run = report.cutoff, report.dry_run
        size = max(1, min(batch or self.batch, MAX_BATCH))
        cap = max_jobs if max_jobs is not None else self.max_jobs_per_pass
        after: tuple[float, str] | None = None
        while report.jobs < cap:
            b = self.store.archive.select_batch(cutoff, min(size, cap - report.jobs), after)
            report.skipped += len(b.skipped)
            kept = b.units
            if b.lines and not dry_run:
                kept = self._archive(b, report)
                report.skipped += len(b.units) - len(kept)
            kept_set, units = set(kept), set(b.units)
            lines = [line for line in b.lines if _unit_of(line, units) in kept_set]
            report.jobs += len(kept)
            report.rows += len(lines)
            for name in ("attempts", "events", "log_chunks", "artifacts"):
                setattr(report, name, getattr(report, name) + sum(len(x[name]) for x in lines))
            if b.last is None:
                return
            after = b.last
        report.more = True

    def _archive(self, b: Any, report: PruneReport) -> list[str]:
        """Write the batch's object, check it reads back the same, then delete what it holds."""
        data = encode_archive(b.lines)
        key = archive_key(data, self.store.clock())
        self.objects.put(key, data)
        back = self.objects.get(key)
        if hashlib.sha256(back).digest() != hashlib.sha256(data).digest() or len(decode_archive(back)) != len(
            b.lines
        ):
            raise ArchiveWriteFailed(f"archive object {key} did not read back as written; nothing deleted")
        if self.before_commit is not None:
            self.before_commit(key)
        kept = self.store.archive.commit_batch(b, key)
        if kept:
            report.objects.append(key)
            # After the commit: its own transactions. A crash just before leaves the archived
            # jobs' lines searchable by their own team only, as they were.
            units = set(kept)
            self.store.delete_log_index([x["job"]["id"] for x in b.lines if _unit_of(x, units) in units])
        log.info("archived %d jobs (%d rows) to %s", len(kept), len(b.lines), key)
        return kept

    def prune_due(self) -> PruneReport | None:
        """The leader's pass: prune what is older than the retention setting (None: retention off)."""
        if self.retention_s is None:
            return None
        report = self.prune(self.store.clock() - self.retention_s)
        if report.jobs:
            log.info("retention archived %d jobs finished before %.0f", report.jobs, report.cutoff)
        return report

    async def prune_async(
        self, cutoff: float, *, dry_run: bool, batch: int | None, max_jobs: int | None
    ) -> PruneReport:
        return await off_loop(lambda: self.prune(cutoff, dry_run=dry_run, batch=batch, max_jobs=max_jobs))

    # ---- reading archived jobs -------------------------------------------------------------------
    def archived_ref(self, job_id: str) -> ArchivedRef | None:
        """The index row of an archived job (blocking)."""
        return self.store.archive.archived(job_id)

    def _lines(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            if key in self._decoded:
                self._decoded.move_to_end(key)
                return self._decoded[key]
        lines = decode_archive(self.objects.get(key))
        with self._lock:
            self._decoded[key] = lines
            while len(self._decoded) > _OBJECTS_CACHED:
                self._decoded.popitem(last=False)
        return lines

    def archived_job(self, ref: ArchivedRef) -> Job | None:
        """The archived job as its archive object holds it (None: the object is gone)."""
        try:
            return job_from_archive(self._lines(ref.object_key), ref.id)
        except ObjectNotFound:
            log.warning("archive object %s of job %s is missing", ref.object_key, ref.id)
            return None

    def archived_events(self, job_id: str, after_id: int = 0) -> list[Event]:
        """An archived job's events after ``after_id`` (empty for a job not archived)."""
        ref = self.archived_ref(job_id)
        if ref is None:
            return []
        try:
            return events_from_archive(self._lines(ref.object_key), job_id, after_id)
        except ObjectNotFound:
            return []

    def archived_chunks(self, job_id: str, attempt: int) -> list[LogChunk]:
        """An archived attempt's log chunks (empty for a job not archived)."""
        ref = self.archived_ref(job_id)
        if ref is None:
            return []
        try:
            return chunks_from_archive(self._lines(ref.object_key), job_id, attempt)
        except ObjectNotFound:
            return []

    def archived_artifacts(self, job_id: str, attempt: int | None) -> list[ArtifactRecord]:
        """An archived job's artifacts (empty for a job not archived)."""
        ref = self.archived_ref(job_id)
        if ref is None:
            return []
        try:
            return artifacts_from_archive(self._lines(ref.object_key), job_id, attempt)
        except ObjectNotFound:
            return []


def _unit_of(line: dict[str, Any], units: set[str]) -> str:
    job = line["job"]
    for k in ("gang_id", "array_id"):
        if job.get(k) in units:
            return str(job[k])
    return str(job["id"])
