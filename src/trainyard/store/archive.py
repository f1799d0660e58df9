"""Retention's half in the store: finished jobs chosen in small batches, their rows written out as
archive lines, then deleted in one transaction together with an ``archived_jobs`` index row each.

The order that makes a prune safe to interrupt anywhere is the caller's (``RetentionService``):
``select_batch`` (a read), then the archive object written and read back, then ``commit_batch``,
which deletes only rows that are still exactly as archived. A crash before the commit leaves every
row in place and the next prune archives them again (the object's key is its content's hash, so
the same batch overwrites the same object); a crash after it has nothing left to do.

The rest of this module is pure: the archive's format (gzip'd JSON lines, one per ``jobs`` row with
its attempts, events, log-chunk and artifact index rows) and the records read back from it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import orjson
import sqlalchemy as sa

from trainyard.model.records import ArtifactRecord, Event, Job, LogChunk
from trainyard.model.states import TERMINAL
from trainyard.store.db import Db
from trainyard.store.rows import attempt_record, event_record, job_record, replica_record
from trainyard.store.schema import archived_jobs, artifacts, job_attempts, job_events, jobs, log_chunks

ARCHIVE_PREFIX = "archive/"
ARCHIVE_VERSION = 1
TERMINAL_NAMES = [s.value for s in TERMINAL]

CHILD_TABLES: tuple[sa.Table, ...] = (job_attempts, job_events, log_chunks, artifacts)
"""Every table that holds a job's rows by ``job_id``: archived with the job and deleted before it
(the foreign keys point at ``jobs``). A new per-job table joins here, and prune keeps it."""

_KEY_NAMES = {
    "attempts": job_attempts,
    "events": job_events,
    "log_chunks": log_chunks,
    "artifacts": artifacts,
}


@dataclass(frozen=True)
class ArchivedRef:
    """An ``archived_jobs`` row: enough to apply visibility before reading the object."""

    id: str
    team: str
    user: str
    status: str
    finished_at: float | None
    archived_at: float
    object_key: str


@dataclass
class ArchiveBatch:
    """One batch of a prune: the jobs chosen and what their archive lines say."""

    cutoff: float
    units: list[str] = field(default_factory=list)
    """The listed jobs chosen (a gang's rank 0, an array's parent, or a plain job)."""
    lines: list[dict[str, Any]] = field(default_factory=list)
    """One line per ``jobs`` row of those units (ranks and tasks included), as archived."""
    skipped: list[str] = field(default_factory=list)
    """Candidates kept back: a row still live, or a job a waiting job depends on."""
    last: tuple[float, str] | None = None
    """Where the next batch of this prune starts (keyset on finished_at, id); None: no more."""

    @property
    def rows(self) -> int:
        return len(self.lines)

    def count(self, what: str) -> int:
        """How many child rows of one kind (attempts, events, log_chunks, artifacts) it holds."""
        return sum(len(line[what]) for line in self.lines)


# ---- the format (pure) ---------------------------------------------------------------------------
def _plain(row: sa.Row[Any]) -> dict[str, Any]:
    # Column names are SQLAlchemy's ``quoted_name`` (a str subclass), which orjson refuses as keys.
    return {str(k): v for k, v in row._mapping.items()}


def encode_archive(lines: Sequence[dict[str, Any]]) -> bytes:
    """The archive object: gzip'd JSON lines, byte-identical for identical lines (mtime 0), so a
    batch archived twice after a crash writes the same object under the same key."""
    body = b"".join(orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n" for line in lines)
    return gzip.compress(body, compresslevel=6, mtime=0)


def decode_archive(data: bytes) -> list[dict[str, Any]]:
    """The lines of an archive object (ValueError: not one)."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"not an archive object: {e}") from None
    out = []
    for raw in text.splitlines():
        if raw:
            line = orjson.loads(raw)
            if not isinstance(line, dict) or "job" not in line:
                raise ValueError("not an archive line")
            out.append(line)
    return out


def archive_key(data: bytes, at: float) -> str:
    """Where an archive object goes: by the day it was written, named by its content's hash."""
    day = time.strftime("%Y/%m/%d", time.gmtime(at))
    return f"{ARCHIVE_PREFIX}jobs/{day}/{hashlib.sha256(data).hexdigest()[:32]}.jsonl.gz"


def fingerprint(line: dict[str, Any]) -> tuple[Any, ...]:
    """What must not have changed between the archive's read and the delete: the row's status and
    last update, and how many child rows of each kind it has."""
    job = line["job"]
    return (job["status"], job["updated_at"], *(len(line[k]) for k in _KEY_NAMES))


def _ns(d: dict[str, Any]) -> Any:
    return SimpleNamespace(**d)


def job_from_archive(lines: Iterable[dict[str, Any]], job_id: str) -> Job | None:
    """The job ``job_id`` as an archive object holds it (with its attempts, a gang's ranks, an
    array's task counts), marked archived; None when the object does not hold it."""
    by_id = {line["job"]["id"]: line for line in lines}
    line = by_id.get(job_id)
    if line is None:
        return None
    row = line["job"]
    atts = [attempt_record(_ns(a)) for a in sorted(line["attempts"], key=lambda a: a["number"])]
    replicas = None
    if row.get("gang_id") == row["id"]:
        members = sorted(
            (
                m["job"]
                for m in by_id.values()
                if m["job"].get("gang_id") == job_id and m["job"]["id"] != job_id
            ),
            key=lambda m: m["replica_rank"],
        )
        replicas = [replica_record(_ns(m)) for m in members]
    counts: dict[str, int] | None = None
    if row.get("array_tasks") is not None:
        counts = {}
        for m in by_id.values():
            if m["job"].get("array_id") == job_id and m["job"]["id"] != job_id:
                counts[m["job"]["status"]] = counts.get(m["job"]["status"], 0) + 1
    job = job_record(cast(Any, _ns(row)), atts, replicas, counts)
    return dataclasses.replace(job, archived=True)


def events_from_archive(lines: Iterable[dict[str, Any]], job_id: str, after_id: int = 0) -> list[Event]:
    """The job's events in an archive object after event ``after_id``, oldest first."""
    for line in lines:
        if line["job"]["id"] == job_id:
            rows = sorted((e for e in line["events"] if e["id"] > after_id), key=lambda e: e["id"])
            return [event_record(_ns(e)) for e in rows]
    return []


def chunks_from_archive(lines: Iterable[dict[str, Any]], job_id: str, attempt: int) -> list[LogChunk]:
    """An archived attempt's log chunks in byte order (their objects stay where they were)."""
    for line in lines:
        if line["job"]["id"] == job_id:
            rows = sorted(
                (c for c in line["log_chunks"] if c["attempt"] == attempt), key=lambda c: c["start_offset"]
            )
            return [
                LogChunk(
                    c["job_id"],
                    c["attempt"],
                    c["seq"],
                    c["start_offset"],
                    c["end_offset"],
                    c["object_key"],
                    c["stored_size"],
                )
                for c in rows
            ]
    return []


def artifacts_from_archive(
    lines: Iterable[dict[str, Any]], job_id: str, attempt: int | None
) -> list[ArtifactRecord]:
    """An archived job's artifacts (one attempt's, if given), by attempt and path; their objects
    stay where they were."""
    for line in lines:
        if line["job"]["id"] == job_id:
            rows = [a for a in line["artifacts"] if attempt is None or a["attempt"] == attempt]
            return [
                ArtifactRecord(
                    a["job_id"],
                    a["attempt"],
                    a["path"],
                    a["size"],
                    a["sha256"],
                    a["object_key"],
                    a["created_at"],
                )
                for a in sorted(rows, key=lambda a: (a["attempt"], a["path"]))
            ]
    return []


# ---- the store's half (I/O) ----------------------------------------------------------------------
class ArchiveRepo:
    """Choosing, archiving and deleting finished jobs; the index of archived ones."""

    def __init__(self, db: Db) -> None:
        self._db = db

    def select_batch(self, cutoff: float, limit: int, after: tuple[float, str] | None = None) -> ArchiveBatch:
        """Up to ``limit`` listed jobs that finished before ``cutoff`` (after ``after`` in
        (finished_at, id) order), with their rows as archive lines. Kept back: a unit with a row
        still live (an array's running task, a gang's rank still stopping) and a job that a job
        still waiting for its dependencies names."""
        batch = ArchiveBatch(cutoff=cutoff)
        q = (
            sa.select(jobs.c.id, jobs.c.finished_at, jobs.c.gang_id, jobs.c.array_tasks)
            .where(
                jobs.c.finished_at < cutoff,
                jobs.c.status.in_(TERMINAL_NAMES),
                jobs.c.replica_rank == 0,
                jobs.c.array_index.is_(None),
            )
            .order_by(jobs.c.finished_at, jobs.c.id)
            .limit(limit)
        )
        if after is not None:
            # A row-value comparison: one range seek on ix_jobs_finished_at (finished_at, id),
            # where the OR of the two columns spelled out scans (8 s a batch at 1M rows on SQLite).
            q = q.where(
                sa.tuple_(jobs.c.finished_at, jobs.c.id)
                > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            )
        with self._db.read() as conn:
            candidates = conn.execute(q).all()
            if not candidates:
                return batch
            batch.last = (candidates[-1].finished_at, candidates[-1].id) if len(candidates) == limit else None
            protected = _depended_on(conn)
            ids = [c.id for c in candidates]
            rows = _unit_rows(conn, candidates)
            by_unit: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
            for r in rows:
                unit = (
                    r["gang_id"]
                    if r["gang_id"] in by_unit
                    else r["array_id"]
                    if r["array_id"] in by_unit
                    else r["id"]
                )
                by_unit.setdefault(unit, []).append(r)
            chosen: list[dict[str, Any]] = []
            for unit in ids:
                members = by_unit[unit]
                if any(m["status"] not in TERMINAL_NAMES for m in members) or any(
                    m["id"] in protected for m in members
                ):
                    batch.skipped.append(unit)
                    continue
                batch.units.append(unit)
                chosen.extend(members)
            children = _children(conn, [m["id"] for m in chosen])
        for m in chosen:
            batch.lines.append(
                {"v": ARCHIVE_VERSION, "job": m, **{k: children[k].get(m["id"], []) for k in _KEY_NAMES}}
            )
        return batch

    def commit_batch(self, batch: ArchiveBatch, object_key: str) -> list[str]:
        """Delete the batch's rows and index them as archived in ``object_key``, in one transaction;
        a unit any of whose rows changed since the batch was read stays (it is archived again by a
        later prune). Returns the units archived. (The log search index, which has transactions of
        its own, is the caller's to clear: ``delete_log_index``.)"""
        now = self._db.clock()
        by_unit: dict[str, list[dict[str, Any]]] = {}
        units = set(batch.units)
        for line in batch.lines:
            job = line["job"]
            unit = (
                job["gang_id"]
                if job["gang_id"] in units
                else job["array_id"]
                if job["array_id"] in units
                else job["id"]
            )
            by_unit.setdefault(unit, []).append(line)
        with self._db.tx() as conn:
            now_lines = {
                line["job"]["id"]: fingerprint(line)
                for line in _lines_now(conn, [line["job"]["id"] for line in batch.lines])
            }
            kept = [
                u
                for u in batch.units
                if all(now_lines.get(line["job"]["id"]) == fingerprint(line) for line in by_unit.get(u, []))
            ]
            ids = [line["job"]["id"] for u in kept for line in by_unit[u]]
            if not ids:
                return []
            conn.execute(
                archived_jobs.insert(),
                [
                    {
                        "id": line["job"]["id"],
                        "team": line["job"]["team"],
                        "user_name": line["job"]["user_name"],
                        "status": line["job"]["status"],
                        "finished_at": line["job"]["finished_at"],
                        "archived_at": now,
                        "object_key": object_key,
                    }
                    for u in kept
                    for line in by_unit[u]
                ],
            )
            for part in _parts(ids):
                for table in CHILD_TABLES:
                    conn.execute(table.delete().where(table.c.job_id.in_(part)))
            heads = set(kept)
            # A gang's ranks and an array's tasks go before the row they name.
            for part in (*_parts([i for i in ids if i not in heads]), *_parts(kept)):
                conn.execute(jobs.delete().where(jobs.c.id.in_(part)))
        self._db.changed(ids)  # a cached view of a live job must not outlive its row
        return kept

    def archived(self, job_id: str) -> ArchivedRef | None:
        """The index row of an archived job, if it was archived."""
        with self._db.read() as conn:
            r = conn.execute(sa.select(archived_jobs).where(archived_jobs.c.id == job_id)).first()
        if r is None:
            return None
        return ArchivedRef(r.id, r.team, r.user_name, r.status, r.finished_at, r.archived_at, r.object_key)


_PART = 500  # ids per IN list: well under SQLite's and PostgreSQL's bound-parameter limits


def _parts(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _PART):
        yield ids[i : i + _PART]


def _depended_on(conn: sa.Connection) -> set[str]:
    """Every job id that a job waiting for its dependencies names (those stay: the waiting job's
    release reads them)."""
    out: set[str] = set()
    for (spec,) in conn.execute(
        sa.select(jobs.c.spec).where(
            jobs.c.awaiting_dependencies == sa.true(),
            jobs.c.status == "PENDING",
            jobs.c.array_index.is_(None),
        )
    ):
        for dep in (spec or {}).get("depends_on") or []:
            if isinstance(dep, dict) and dep.get("job"):
                out.add(str(dep["job"]))
    return out


def _unit_rows(conn: sa.Connection, heads: Sequence[sa.Row[Any]]) -> list[dict[str, Any]]:
    """The rows of these listed jobs with their gang ranks and array tasks. A rank or task is
    ``<id>-<n>``: a range of the primary key, where ``gang_id IN``/``array_id IN`` would scan the
    table once the planner's statistics say nearly every row has neither."""
    ids = [h.id for h in heads]
    out: list[dict[str, Any]] = []
    for part in _parts(ids):
        out.extend(_plain(r) for r in conn.execute(sa.select(jobs).where(jobs.c.id.in_(part))))
    for h in heads:
        if h.gang_id == h.id or h.array_tasks is not None:
            rows = conn.execute(sa.select(jobs).where(jobs.c.id > f"{h.id}-", jobs.c.id < f"{h.id}."))
            out.extend(_plain(r) for r in rows if h.id in (r.gang_id, r.array_id))
    return out


def _children(conn: sa.Connection, ids: Sequence[str]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each kind of child row of these jobs, by job id."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {k: {} for k in _KEY_NAMES}
    for part in _parts(ids):
        for name, table in _KEY_NAMES.items():
            for r in conn.execute(sa.select(table).where(table.c.job_id.in_(part))):
                out[name].setdefault(r.job_id, []).append(_plain(r))
    return out


def _lines_now(conn: sa.Connection, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The rows' fingerprints' inputs as they are in this transaction (counts stand in for rows)."""
    lines: dict[str, dict[str, Any]] = {}
    for part in _parts(ids):
        for r in conn.execute(
            sa.select(jobs.c.id, jobs.c.status, jobs.c.updated_at).where(jobs.c.id.in_(part))
        ):
            lines[r.id] = {
                "job": {"id": r.id, "status": r.status, "updated_at": r.updated_at},
                **{k: [] for k in _KEY_NAMES},
            }
        for name, table in _KEY_NAMES.items():
            for job_id, n in conn.execute(
                sa.select(table.c.job_id, sa.func.count())
                .where(table.c.job_id.in_(part))
                .group_by(table.c.job_id)
            ):
                if job_id in lines:
                    lines[job_id][name] = [None] * int(n)
    return list(lines.values())
