"""The archive's format (store/archive.py, pure): what is written reads back the same, the same lines
always make the same bytes and key (a prune redone after a crash rewrites one object), anything else
is refused with ValueError; and the retention setting's parsing."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trainyard.server.settings import Settings
from trainyard.store.archive import ARCHIVE_PREFIX, archive_key, decode_archive, encode_archive, fingerprint

_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
_json = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _line(job: dict[str, Any], children: dict[str, list[Any]]) -> dict[str, Any]:
    return {"v": 1, "job": job, **children}


_lines = st.lists(
    st.builds(
        _line,
        st.fixed_dictionaries(
            {"id": st.text(min_size=1, max_size=32), "status": st.sampled_from(["SUCCEEDED", "FAILED"])},
            optional={"spec": _json, "updated_at": st.floats(0, 2e9)},
        ),
        st.fixed_dictionaries({k: st.lists(_json, max_size=3) for k in ("attempts", "events", "log_chunks")}),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(_lines)
def test_lines_round_trip_and_the_same_lines_make_the_same_object(lines: list[dict[str, Any]]) -> None:
    data = encode_archive(lines)
    assert decode_archive(data) == lines
    assert encode_archive(lines) == data
    key = archive_key(data, 1_750_000_000.0)
    assert key == archive_key(encode_archive(lines), 1_750_000_000.0)
    assert key.startswith(f"{ARCHIVE_PREFIX}jobs/2025/06/15/") and key.endswith(".jsonl.gz")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_anything_else_is_refused_with_value_error(data: bytes) -> None:
    try:
        decode_archive(data)
    except ValueError:
        return
    assert data == b"" or gzip.decompress(data).strip() == b""  # nothing but empty lines in a gzip


def test_a_line_that_is_not_an_archived_job_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_archive(gzip.compress(b'{"not": "a job"}\n'))
    with pytest.raises(ValueError):
        decode_archive(gzip.compress(b"[1, 2]\n"))


def test_the_fingerprint_changes_with_the_status_the_update_time_and_each_kind_of_child() -> None:
    base = {"job": {"status": "SUCCEEDED", "updated_at": 1.0}, "attempts": [1], "events": [1, 2]}
    base |= {"log_chunks": [], "artifacts": []}
    fp = fingerprint(base)
    assert fingerprint({**base, "job": {"status": "PENDING", "updated_at": 1.0}}) != fp
    assert fingerprint({**base, "job": {"status": "SUCCEEDED", "updated_at": 2.0}}) != fp
    for kind in ("attempts", "events", "log_chunks", "artifacts"):
        assert fingerprint({**base, kind: [*base[kind], 9]}) != fp


@pytest.mark.parametrize(
    ("value", "seconds"), [("90d", 90 * 86400.0), ("12h", 43200.0), ("off", None), ("", None)]
)
def test_the_retention_setting(value: str, seconds: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_RETENTION", value)
    assert Settings().retention == seconds


@pytest.mark.parametrize("value", ["soon", "-3d", "0s"])
def test_a_bad_retention_setting_fails_at_start(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_RETENTION", value)
    with pytest.raises(ValidationError):
        Settings()


@settings(max_examples=100, deadline=None)
@given(_lines.filter(bool), st.integers(min_value=10), st.integers(1, 255))
def test_a_damaged_object_is_refused_with_value_error(
    lines: list[dict[str, Any]], at: int, flip: int
) -> None:
    data = bytearray(encode_archive(lines))
    data[at % len(data)] ^= flip
    try:
        got = decode_archive(bytes(data))
    except ValueError:
        return
    assert got == lines  # a flip in the gzip header's spare bytes changes nothing that is read
