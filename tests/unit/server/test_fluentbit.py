"""The Fluent Bit ingest, on RECORDS IN FLUENT BIT'S OUTPUT FORMAT (no Fluent Bit runs here).

Fluent Bit cannot be installed on this machine, so these tests write, into object storage, objects
exactly as deploy/kubernetes/fluent-bit/fluent-bit.conf makes Fluent Bit write them, and check what
the control plane takes in. The format, from Fluent Bit's documentation:

- the `s3` output stores "records ... in files in S3 as newline delimited JSON" (one JSON object a
  line), adds the record's time under `json_date_key` (set to `time`) in `json_date_format` iso8601
  (`2018-05-30T09:39:52.000681Z`), gzips the object with `compression gzip`, and names it by
  `s3_key_format` with `$TAG[n]` parts split on `s3_key_format_tag_delimiters`:
  https://docs.fluentbit.io/manual/pipeline/outputs/s3
- the `tail` input with `multiline.parser cri` parses each containerd log line with
  `^(?<time>.+?) (?<stream>stdout|stderr) (?<_p>F|P) (?<log>.*)$`, so a record has `stream`, `_p`
  (F full, P partial) and `log` without its newline:
  https://docs.fluentbit.io/manual/pipeline/inputs/tail and
  https://github.com/fluent/fluent-bit/blob/master/src/multiline/flb_ml_parser_cri.c
- the `kubernetes` filter adds a `kubernetes` map: `pod_name`, `namespace_name`, `pod_id`, `labels`,
  `annotations`, `host`, `container_name`, `docker_id`, `container_hash`, `container_image`:
  https://docs.fluentbit.io/manual/pipeline/filters/kubernetes

What this proves is that the ingest reads that format into the right attempt's log, refuses records
whose Pod is not the attempt's, and is idempotent; not that a real Fluent Bit writes byte for byte
what is below (field order and the time's digits may differ, which JSON parsing does not mind).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.server.plane import Plane
from trainyard.model.podlabels import label_value, lease_label
from trainyard.objects.factory import open_object_store
from trainyard.objects.local import LocalObjectStore
from trainyard.server.logtail import LogTails
from trainyard.server.services.fluentbit import (
    Attempt,
    FluentBitIngest,
    ObjectKey,
    parse_key,
    parse_records,
    record_bytes,
    render,
)
from trainyard.server.services.logs import LogService
from trainyard.store.sql import Lease

pytestmark = pytest.mark.anyio

PREFIX = "fluent-bit"
NAMESPACE = "trainyard-jobs"


def fb_record(
    log: str,
    *,
    job: str,
    attempt: int,
    lease: str,
    pod: str,
    stream: str = "stdout",
    partial: bool = False,
    namespace: str = NAMESPACE,
    t: str = "2025-05-12T09:14:05.104372Z",
) -> dict[str, Any]:
    """One record as Fluent Bit's s3 output writes it after tail (multiline cri) and kubernetes."""
    return {
        "time": t,
        "stream": stream,
        "_p": "P" if partial else "F",
        "log": log,
        "kubernetes": {
            "pod_name": pod,
            "namespace_name": namespace,
            "pod_id": "0b7d6a1c-0000-4e7a-9a51-3f5c2d1e8b90",
            "labels": {
                "app.kubernetes.io/component": "job",
                "app.kubernetes.io/managed-by": "trainyard-worker",
                "app.kubernetes.io/name": "trainyard",
                "app.kubernetes.io/part-of": "trainyard",
                "trainyard.io/attempt": str(attempt),
                "trainyard.io/job": label_value(job),
                "trainyard.io/lease": lease,
                "trainyard.io/team": "vision",
                "trainyard.io/worker": "gpu-node-7-1a2b3c4d",
            },
            "annotations": {"trainyard.io/attempt": str(attempt), "trainyard.io/job-id": job},
            "host": "gpu-node-7",
            "container_name": "job",
            "docker_id": "5f0c7b1e9d2a8c41f0e3b6a9d7c2e1f4b8a0d3c6e9f2a5b8c1d4e7f0a3b6c9d2",
            "container_hash": "registry.example/ml/pytorch@sha256:9b2f0d4a7c1e",
            "container_image": "registry.example/ml/pytorch:2.3",
        },
    }


def fb_object(records: list[dict[str, Any]]) -> bytes:
    """An object as the s3 output uploads it with `compression gzip`: newline-delimited JSON."""
    return gzip.compress(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))


def fb_key(job: str, attempt: int, pod: str, name: str = "20250512091405-Xk3TqL9a") -> str:
    """The key s3_key_format /fluent-bit/$TAG[1]/$TAG[2]/$TAG[3]/%Y%m%d%H%M%S-$UUID.jsonl.gz gives a
    record tagged ty.<job label>.<attempt>.<pod> (the rewrite_tag filter's tag)."""
    return f"{PREFIX}/{label_value(job)}/{attempt}/{pod}/{name}.jsonl.gz"


def _objects(tmp_path: Path) -> LocalObjectStore:
    # The same directory the plane's own object store uses.
    store = open_object_store(None, home=tmp_path, secret=b"s" * 32, public_url="http://127.0.0.1:1")
    assert isinstance(store, LocalObjectStore)
    return store


async def _running(plane: Plane, **spec: Any) -> Lease:
    await plane.worker()
    await plane.submit(**spec)
    (lease,) = plane.schedule()
    await plane.start(lease)
    return lease


async def _log(plane: Plane, objects: LocalObjectStore, job_id: str, attempt: int) -> bytes:
    logs = LogService(plane.store, objects, LogTails())
    got = await logs.read_log(plane.job(job_id), attempt, 0)
    return got.data


# ---- pure ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("fluent-bit/j01/2/ty-j01-2-ab12cd34/20250512-x.jsonl.gz", ObjectKey("j01", 2, "ty-j01-2-ab12cd34")),
        ("fluent-bit/j01/0/pod/x.gz", None),  # attempts count from 1
        ("fluent-bit/j01/two/pod/x.gz", None),
        ("fluent-bit/j01/2/x.gz", None),  # a part missing
        ("fluent-bit/j01/2/pod/extra/x.gz", None),
        ("elsewhere/j01/2/pod/x.gz", None),
        ("fluent-bitx/j01/2/pod/x.gz", None),
    ],
)
def test_parse_key(key: str, expected: ObjectKey | None) -> None:
    assert parse_key(key, PREFIX) == expected


def test_record_bytes_restore_the_lines_the_job_wrote() -> None:
    assert record_bytes({"log": "epoch 1"}) == b"epoch 1\n"
    assert record_bytes({"log": "a very long li", "_p": "P"}) == b"a very long li"  # runs on
    assert record_bytes({"log": "ne\n"}) == b"ne\n"  # the docker parser keeps the newline
    assert record_bytes({"log": "x", "logtag": "P"}) == b"x"


def test_records_of_another_pod_or_lease_are_refused() -> None:
    key = ObjectKey("j01", 1, "ty-j01-1-aa")
    want = Attempt(NAMESPACE, "j01", 1, "lease-1")
    good = dict(job="j01", attempt=1, lease=lease_label("lease-1"), pod="ty-j01-1-aa")
    other_lease = {**good, "lease": lease_label("lease-2")}
    records = [
        fb_record("mine", **good),
        fb_record("stale lease", **other_lease),
        fb_record("other namespace", **good, namespace="default"),
        fb_record("other attempt", **{**good, "attempt": 2}),
        fb_record("other pod", **{**good, "pod": "ty-j01-1-bb"}),
        fb_record("other job", **{**good, "job": "j02"}),
        {"log": "no metadata"},
    ]
    out = render(records, key, want)
    assert out.data == b"mine\n" and out.taken == 1
    assert sum(out.refused.values()) == 6
    assert out.refused["its Pod was not made for the attempt's lease"] == 1


def test_parse_records_counts_what_is_not_a_record() -> None:
    data = gzip.compress(b'{"log":"a"}\nnot json\n[1]\n\n{"log":"b"}\n')
    records, bad = parse_records(data)
    assert [r["log"] for r in records] == ["a", "b"] and bad == 2


# ---- the ingest, on a control plane ---------------------------------------------------------------------


async def test_fluent_bit_objects_become_the_attempts_log(plane: Plane, tmp_path: Path) -> None:
    lease = await _running(plane)
    objects = _objects(tmp_path)
    pod = f"ty-{lease.job_id}-1-ab12cd34"
    me = dict(job=lease.job_id, attempt=lease.attempt, lease=lease_label(lease.lease_token), pod=pod)
    first = fb_object(
        [
            fb_record("epoch 1/3", **me),
            fb_record("warning: slow disk", **me, stream="stderr"),
            fb_record("a line the runtime spl", **me, partial=True),
            fb_record("it", **me),
        ]
    )
    second = fb_object([fb_record("epoch 2/3", **me, t="2025-05-12T09:14:41.000681Z")])
    objects.put(fb_key(lease.job_id, 1, pod, "20250512091405-Xk3TqL9a"), first)
    objects.put(fb_key(lease.job_id, 1, pod, "20250512091441-Pq7RtY2b"), second)
    ingest = FluentBitIngest(plane.store, objects, plane.tenancy, prefix=PREFIX, namespace=NAMESPACE)

    stats = ingest.ingest_once()

    assert (stats.objects, stats.records, stats.refused, stats.skipped) == (2, 5, {}, {})
    assert await _log(plane, objects, lease.job_id, 1) == (
        b"epoch 1/3\nwarning: slow disk\na line the runtime split\nepoch 2/3\n"
    )
    chunks = plane.store.log_chunks(lease.job_id, 1)
    assert [(c.seq, c.start_offset) for c in chunks] == [(0, 0), (1, chunks[0].end_offset)]
    assert objects.list_keys(PREFIX + "/") == []  # taken in, then deleted
    # Queued for the log search index as every recorded chunk is (store/logsearch.py).
    queued = {(q.job_id, q.attempt, q.seq) for q in plane.store.pending_log_chunks(10)}
    assert queued == {(lease.job_id, 1, 0), (lease.job_id, 1, 1)}

    # Idempotent by object key: the same object again (a pass that died before its delete) adds nothing.
    objects.put(fb_key(lease.job_id, 1, pod, "20250512091405-Xk3TqL9a"), first)
    again = ingest.ingest_once()
    assert again.objects == 0 and len(plane.store.log_chunks(lease.job_id, 1)) == 2
    assert objects.list_keys(PREFIX + "/") == []


async def test_a_record_naming_another_teams_job_is_not_taken(plane: Plane, tmp_path: Path) -> None:
    """A key (or a label) alone never picks the job: a Pod that did not hold the attempt's lease
    writes nothing into its log, whatever its labels and its object's key say."""
    lease = await _running(plane)
    objects = _objects(tmp_path)
    pod = f"ty-{lease.job_id}-1-ab12cd34"
    forged = dict(job=lease.job_id, attempt=1, lease=lease_label("a guessed token"), pod=pod)
    objects.put(fb_key(lease.job_id, 1, pod), fb_object([fb_record("injected", **forged)]))
    ingest = FluentBitIngest(plane.store, objects, plane.tenancy, prefix=PREFIX, namespace=NAMESPACE)

    stats = ingest.ingest_once()

    assert stats.objects == 0 and stats.refused == {"its Pod was not made for the attempt's lease": 1}
    assert plane.store.log_chunks(lease.job_id, 1) == []
    assert await _log(plane, objects, lease.job_id, 1) == b""


async def test_unknown_jobs_and_odd_keys_are_left_and_read_once(plane: Plane, tmp_path: Path) -> None:
    objects = _objects(tmp_path)
    junk = {
        f"{PREFIX}/nosuchjob/1/pod/x.jsonl.gz": fb_object([]),
        f"{PREFIX}/stray.txt": b"hello",
    }
    for k, v in junk.items():
        objects.put(k, v)
    ingest = FluentBitIngest(plane.store, objects, plane.tenancy, prefix=PREFIX, namespace=NAMESPACE)

    stats = ingest.ingest_once()
    assert sum(stats.skipped.values()) == 2 and stats.skipped["no such job"] == 1
    assert ingest.ingest_once().skipped == {}  # not read again by this process
    assert objects.list_keys(PREFIX + "/") == sorted(junk)  # kept for whoever looks into it


async def test_secrets_are_masked(plane: Plane, tmp_path: Path) -> None:
    await plane.tenancy.put_secret("vision", "HF_TOKEN", "hf_s3cr3tvalue", "alice")
    lease = await _running(plane, secrets=["HF_TOKEN"])
    objects = _objects(tmp_path)
    pod = f"ty-{lease.job_id}-1-ab12cd34"
    me = dict(job=lease.job_id, attempt=1, lease=lease_label(lease.lease_token), pod=pod)
    objects.put(fb_key(lease.job_id, 1, pod), fb_object([fb_record("token=hf_s3cr3tvalue ok", **me)]))
    FluentBitIngest(plane.store, objects, plane.tenancy, prefix=PREFIX, namespace=NAMESPACE).ingest_once()
    assert await _log(plane, objects, lease.job_id, 1) == b"token=*** ok\n"


async def test_a_gzip_bomb_is_refused(plane: Plane, tmp_path: Path) -> None:
    lease = await _running(plane)
    objects = _objects(tmp_path)
    pod = f"ty-{lease.job_id}-1-ab12cd34"
    objects.put(fb_key(lease.job_id, 1, pod), gzip.compress(b"\n" * (65 << 20)))
    stats = FluentBitIngest(plane.store, objects, plane.tenancy, prefix=PREFIX).ingest_once()
    assert list(stats.skipped) == ["unreadable: the object unpacks to more than 67108864 bytes"]
    assert plane.store.log_chunks(lease.job_id, 1) == []
