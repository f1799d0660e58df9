"""Fluent Bit's log objects, taken in as the log chunks of the attempts they belong to.

On nodes whose agents run with ``--log-shipper external`` (deploy/kubernetes/fluent-bit), Fluent Bit
tails the job Pods' container logs, adds the Pods' labels (its ``kubernetes`` filter) and writes them
to object storage with its ``s3`` output, as gzipped newline-delimited JSON records, one object per
upload, under the key layout its ``s3_key_format`` gives::

    <prefix>/<job label>/<attempt>/<pod name>/<upload time>-<uuid>.jsonl.gz

The leader lists that prefix now and then (``FluentBitIngest.ingest_once``). Each object becomes one
gzipped log chunk of its attempt (``jobs/<job>/<attempt>/logs/fb-<hash of the object key>.log.gz``),
appended after the attempt's last chunk and recorded in the log-chunk index, where the log reader, the
live views and the log search index (which queues every recorded chunk) find it as any other chunk.
Then the object is deleted. A chunk's key is a function of the object's, so a pass that died between
recording and deleting does not record it twice.

The key only says where to look. No record is taken on the key's word, or on a label alone: a record
counts only if it comes from the jobs namespace and its Pod carries the attempt's job and attempt
labels and the hash of the attempt's own lease token (``model/podlabels.py``), which only the agent
that held the lease could have put there; any other record is dropped and counted. The job's team
secrets are masked, as given, as the agent masks them in its own spool.

Pure parts (``parse_key``, ``parse_records``, ``refusal``, ``render``) take and return plain data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from trainyard.model.podlabels import (
    ANNOTATION_JOB,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_LEASE,
    label_value,
    lease_label,
)
from trainyard.model.records import LogChunk
from trainyard.objects.base import ObjectNotFound, ObjectStore, key_problem

if TYPE_CHECKING:
    from trainyard.store.ports import FluentbitStore

log = logging.getLogger("trainyard.server")

MASK = b"***"
MIN_MASKED = 4
"""Shorter secret values are not masked (as in the agent's masker: "1" would wreck the log)."""
MAX_OBJECT_BYTES = 64 << 20
"""An object larger than this (packed or unpacked) is refused: Fluent Bit's ``total_file_size`` in
deploy/kubernetes/fluent-bit is 8M."""


# ---- pure ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectKey:
    """What a Fluent Bit object's key says: whose output it claims to hold."""

    job: str
    """The job's label value (the job id itself, for every id Trainyard makes)."""
    attempt: int
    pod: str


def parse_key(key: str, prefix: str) -> ObjectKey | None:
    """The parts of ``<prefix>/<job>/<attempt>/<pod>/<name>``; None for any other key."""
    head = prefix.strip("/") + "/"
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split("/")
    if len(parts) != 4 or not all(parts):
        return None
    job, attempt, pod, _name = parts
    if not attempt.isdigit() or len(attempt) > 9 or int(attempt) < 1:
        return None
    return ObjectKey(job, int(attempt), pod)


def parse_records(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of one object (gzipped or not): JSON objects, one a line; and how many lines were
    not one."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data)
    records: list[dict[str, Any]] = []
    bad = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad += 1
    return records, bad


def _gunzip(data: bytes) -> bytes:
    # Bounded: a small gzip can unpack to gigabytes.
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(data, MAX_OBJECT_BYTES + 1)
    if len(out) > MAX_OBJECT_BYTES or d.unconsumed_tail:
        raise ValueError(f"the object unpacks to more than {MAX_OBJECT_BYTES} bytes")
    return out


@dataclass(frozen=True)
class Attempt:
    """What a record must match to be this attempt's output."""

    namespace: str
    job_id: str
    attempt: int
    lease_token: str


def refusal(record: Mapping[str, Any], key: ObjectKey, want: Attempt) -> str | None:
    """Why ``record`` is not ``want``'s output (None: it is)."""
    meta = record.get("kubernetes")
    if not isinstance(meta, Mapping):
        return "no kubernetes metadata"
    if meta.get("namespace_name") != want.namespace:
        return f"namespace {meta.get('namespace_name')!r} is not {want.namespace!r}"
    if meta.get("pod_name") != key.pod:
        return "its Pod is not the one its object key names"
    labels = meta.get("labels")
    if not isinstance(labels, Mapping):
        return "its Pod's labels are missing"
    if labels.get(LABEL_JOB) != label_value(want.job_id):
        return "its Pod's job label is not the job's"
    if labels.get(LABEL_ATTEMPT) != str(want.attempt):
        return "its Pod's attempt label is not the attempt's"
    if not want.lease_token or labels.get(LABEL_LEASE) != lease_label(want.lease_token):
        return "its Pod was not made for the attempt's lease"
    notes = meta.get("annotations")
    if isinstance(notes, Mapping) and ANNOTATION_JOB in notes and notes[ANNOTATION_JOB] != want.job_id:
        return "its Pod's job annotation is not the job's"
    if not isinstance(record.get("log"), str):
        return "no log text"
    return None


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The output a record holds, as the job wrote it. The ``cri`` parsers strip the line's newline
    and mark a line the runtime split as partial (``_p`` P from the multiline parser the DaemonSet's
    tail input uses, ``logtag`` P from the classic one): it runs on into the next record. The
    ``docker`` parser keeps the newline in ``log``."""
    text = str(record["log"])
    if record.get("_p") == "P" or record.get("logtag") == "P" or text.endswith("\n"):
        return text.encode()
    return text.encode() + b"\n"


def mask(data: bytes, secrets: Iterable[str]) -> bytes:
    for value in sorted(
        {s.encode() for s in secrets if len(s.encode()) >= MIN_MASKED}, key=len, reverse=True
    ):
        data = data.replace(value, MASK)
    return data


@dataclass(frozen=True)
class Rendered:
    data: bytes
    taken: int
    refused: dict[str, int]


def render(
    records: Sequence[Mapping[str, Any]], key: ObjectKey, want: Attempt, secrets: Iterable[str] = ()
) -> Rendered:
    """An object's records as the attempt's log bytes, in their order; refused records counted by why."""
    out = bytearray()
    refused: dict[str, int] = {}
    taken = 0
    for r in records:
        why = refusal(r, key, want)
        if why is not None:
            refused[why] = refused.get(why, 0) + 1
            continue
        out += record_bytes(r)
        taken += 1
    return Rendered(mask(bytes(out), secrets), taken, refused)


def chunk_key(job_id: str, attempt: int, object_key: str) -> str:
    """The log chunk an object becomes: named after the object, so recording it twice is a no-op."""
    h = hashlib.sha256(object_key.encode()).hexdigest()[:32]
    return f"jobs/{job_id}/{attempt}/logs/fb-{h}.log.gz"


# ---- the ingest -----------------------------------------------------------------------------------------


class SecretValues(Protocol):
    def secret_values(self, team: str, names: list[str]) -> dict[str, str]: ...


@dataclass
class IngestStats:
    objects: int = 0
    """Objects taken in (recorded as a chunk) in this pass."""
    records: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    """Records dropped, by why."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Objects not taken in, by why (they stay where they are and are not read again by this process)."""


class FluentBitIngest:
    """Takes in what Fluent Bit wrote under ``prefix`` (see the module's docstring). Blocking: run off
    the event loop, on the leader only."""

    def __init__(
        self,
        store: FluentbitStore,
        objects: ObjectStore,
        secrets: SecretValues,
        *,
        prefix: str,
        namespace: str = "trainyard-jobs",
        batch: int = 500,
    ) -> None:
        problem = key_problem(prefix.strip("/"))
        if problem is not None:
            raise ValueError(f"Fluent Bit prefix {prefix!r}: {problem}")
        self.store = store
        self.objects = objects
        self.secrets = secrets
        self.prefix = prefix.strip("/")
        self.namespace = namespace
        self.batch = batch
        self._skipped: set[str] = set()

    def ingest_once(self) -> IngestStats:
        stats = IngestStats()
        for key in self.objects.list_keys(self.prefix + "/", limit=self.batch + len(self._skipped)):
            if key in self._skipped:
                continue
            why = self._ingest(key, stats)
            if why is not None:
                stats.skipped[why] = stats.skipped.get(why, 0) + 1
                self._skipped.add(key)
                log.warning("Fluent Bit object %s not taken in: %s", key, why)
        if stats.refused:
            log.warning("Fluent Bit records dropped: %s", stats.refused)
        return stats

    def _ingest(self, key: str, stats: IngestStats) -> str | None:
        parsed = parse_key(key, self.prefix)
        if parsed is None:
            return "not a key of the layout <prefix>/<job>/<attempt>/<pod>/<name>"
        job = self.store.get_job(parsed.job)
        if job is None:
            return "no such job"
        attempt = next((a for a in job.attempts if a.number == parsed.attempt), None)
        if attempt is None or not attempt.lease_token:
            return "no such attempt"
        target = chunk_key(job.id, attempt.number, key)
        chunks = self.store.log_chunks(job.id, attempt.number)
        if any(c.object_key == target for c in chunks):
            self.objects.delete(key)  # recorded by an earlier pass that died before the delete
            return None
        try:
            if self.objects.size(key) > MAX_OBJECT_BYTES:
                return f"larger than {MAX_OBJECT_BYTES} bytes"
            records, bad = parse_records(self.objects.get(key))
        except ObjectNotFound:
            return None  # deleted meanwhile (another leader's pass)
        except (ValueError, OSError, EOFError, zlib.error) as e:
            return f"unreadable: {e}"
        want = Attempt(self.namespace, job.id, attempt.number, attempt.lease_token)
        names = [str(n) for n in (job.spec.get("secrets") or ())]
        secrets = self.secrets.secret_values(job.team, names).values() if names else ()
        out = render(records, parsed, want, secrets)
        for why, n in out.refused.items():
            stats.refused[why] = stats.refused.get(why, 0) + n
        if bad:
            stats.refused["not a JSON object"] = stats.refused.get("not a JSON object", 0) + bad
        if out.data:
            start = max((c.end_offset for c in chunks), default=0)
            packed = gzip.compress(out.data, compresslevel=6)
            self.objects.put(target, packed)
            seq = max((c.seq for c in chunks), default=-1) + 1
            chunk = LogChunk(job.id, attempt.number, seq, start, start + len(out.data), target, len(packed))
            if not self.store.add_log_chunk(chunk, attempt.lease_token):
                return "the attempt's lease changed"
            if not any(c.object_key == target for c in self.store.log_chunks(job.id, attempt.number)):
                # Another pass took this sequence number first: try again on the next pass.
                self.objects.delete(target)
                return None
            stats.objects += 1
            stats.records += out.taken
        self.objects.delete(key)
        return None
