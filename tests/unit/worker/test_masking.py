"""Secret values are masked in a job's log, also when a value arrives split over several writes."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from trainyard.worker.masking import SecretMasker
from trainyard.worker.spool import STDERR, STDOUT, LogSpool

SECRET = "hf_s3cr3t-value"


def feed_all(m: SecretMasker, chunks: list[bytes], stream: int = STDOUT) -> bytes:
    return b"".join(m.feed(stream, c) for c in chunks) + m.flush(stream)


def test_a_whole_value_is_masked() -> None:
    m = SecretMasker([SECRET])
    assert feed_all(m, [f"token={SECRET}\n".encode()]) == b"token=***\n"


def test_a_value_split_across_writes_is_masked() -> None:
    m = SecretMasker([SECRET])
    assert feed_all(m, [b"token=hf_s3", b"cr3t-va", b"lue and more\n"]) == b"token=*** and more\n"


def test_only_a_possible_start_of_a_secret_is_held_back() -> None:
    m = SecretMasker([SECRET])
    assert m.feed(STDOUT, b"progress 10%\n") == b"progress 10%\n"
    assert m.feed(STDOUT, b"value: hf_") == b"value: "  # could be the secret: held
    assert m.feed(STDOUT, b"other\n") == b"hf_other\n"  # was not


def test_streams_are_masked_apart() -> None:
    m = SecretMasker([SECRET])
    out = m.feed(STDOUT, b"hf_s3cr") + m.feed(STDERR, b"t-value") + m.feed(STDOUT, b"3t-value")
    assert out == b"t-value***"


def test_longest_secret_wins_and_short_values_are_not_masked() -> None:
    m = SecretMasker(["abcd", "abcdefgh", "x"])
    assert feed_all(m, [b"abcdefgh abcd x\n"]) == b"*** *** x\n"


@given(
    prefix=st.binary(max_size=40),
    suffix=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=6),
)
def test_no_split_lets_the_value_through(prefix: bytes, suffix: bytes, cuts: list[int]) -> None:
    data = prefix + SECRET.encode() + suffix
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    out = feed_all(SecretMasker([SECRET]), chunks)
    assert SECRET.encode() not in out
    assert b"***" in out


@given(st.lists(st.binary(max_size=30), max_size=8))
def test_output_without_secrets_passes_unchanged(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    if SECRET.encode() in data:
        return
    assert feed_all(SecretMasker([SECRET]), chunks) == data


def test_the_spool_masks_and_flushes_at_close(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "log", 1 << 20, masker=SecretMasker([SECRET]))
    spool.write(STDOUT, b"a hf_s3cr3t")
    spool.write(STDERR, f"{SECRET}\n".encode())
    spool.write(STDOUT, b"-valu")  # ends on a possible start: flushed by close
    spool.close()
    assert (tmp_path / "log").read_bytes() == b"a ***\nhf_s3cr3t-valu"
    assert spool.stderr_tail == b"***\n"
