"""Secret values are masked in a job's log, also when a value arrives split over several writes, and
so are their reversed, hex and base64 forms; a value split over lines is not (the documented limit)."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainyard.worker.masking import MIN_ENCODED, SecretMasker, masked_forms
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
    out = m.feed(STDOUT, b"hf_s3cr") + m.feed(STDERR, b"t-value\n") + m.feed(STDOUT, b"3t-value")
    assert out == b"t-value\n***"


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
    if any(form in data for form in masked_forms(SECRET.encode())):
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


# ---- reversed and encoded forms --------------------------------------------------------------------

# Its base64 holds "+" and "/" ("-" and "_" URL-safe) at every alignment: b">>>" is "Pj4+", b"???" "Pz8/".
B64_SECRET = "tok>>>???>>>???-s3cr3t"


def b64_core(prefix_len: int, value: bytes) -> tuple[int, int]:
    """The span of base64 characters that ``value``'s bits alone decide, after ``prefix_len`` bytes."""
    return -(-8 * prefix_len // 6), 8 * (prefix_len + len(value)) // 6


def test_reversed_and_hex_forms_are_masked() -> None:
    value = SECRET.encode()
    line = b"r=" + value[::-1] + b" h=" + value.hex().encode() + b" H=" + value.hex().upper().encode() + b"\n"
    assert feed_all(SecretMasker([SECRET]), [line]) == b"r=*** h=*** H=***\n"


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"usr", b"user:", b"Bearer x"])
@pytest.mark.parametrize("suffix", [b"", b"\n", b":x", b"trailing data"])
@pytest.mark.parametrize("alphabet", ["standard", "urlsafe"])
@pytest.mark.parametrize("padded", [True, False])
def test_base64_forms_are_masked_at_each_alignment(
    prefix: bytes, suffix: bytes, alphabet: str, padded: bool
) -> None:
    value = B64_SECRET.encode()
    encode = base64.urlsafe_b64encode if alphabet == "urlsafe" else base64.b64encode
    encoded = encode(prefix + value + suffix)
    if not padded:
        encoded = encoded.rstrip(b"=")
    first, end = b64_core(len(prefix), value)
    out = feed_all(SecretMasker([B64_SECRET]), [b"auth " + encoded + b"\n"])
    # Everything that only the value decides is masked; at most one mixed character shows at each end.
    assert out == b"auth " + encoded[:first] + b"***" + encoded[end:] + b"\n"


def test_the_alphabets_differ_for_this_secret() -> None:
    """The test above means something only if the two alphabets give different encodings."""
    value = B64_SECRET.encode()
    for k in range(3):
        std = base64.b64encode(bytes(k) + value)
        assert std != base64.urlsafe_b64encode(bytes(k) + value)
        first, end = b64_core(k, value)
        assert b"+" in std[first:end] and b"/" in std[first:end]


@given(
    prefix=st.binary(max_size=30),
    suffix=st.binary(max_size=30),
    form=st.sampled_from(["reversed", "hex", "HEX", "base64", "base64url"]),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_no_split_lets_an_encoded_form_through(
    prefix: bytes, suffix: bytes, form: str, cuts: list[int]
) -> None:
    value = SECRET.encode()
    if form == "reversed":
        data, hidden = prefix + value[::-1] + suffix, value[::-1]
    elif form in ("hex", "HEX"):
        h = value.hex().encode()
        hidden = h.upper() if form == "HEX" else h
        data = prefix + hidden + suffix
    else:
        encode = base64.urlsafe_b64encode if form == "base64url" else base64.b64encode
        data = encode(prefix + value + suffix)
        first, end = b64_core(len(prefix), value)
        hidden = data[first:end]
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    out = feed_all(SecretMasker([SECRET]), [data[a:b] for a, b in itertools.pairwise(bounds)])
    assert hidden not in out
    assert b"***" in out


def test_short_values_are_masked_only_as_given() -> None:
    short = "pa55wd"  # under MIN_ENCODED: its encodings are short enough to turn up in ordinary output
    assert len(short) < MIN_ENCODED <= len(SECRET)
    value = short.encode()
    line = b" ".join([value, value[::-1], value.hex().encode(), base64.b64encode(value)]) + b"\n"
    assert feed_all(SecretMasker([short]), [line]) == b"*** " + line.split(b" ", 1)[1]
    assert masked_forms(b"abc") == set()


def test_a_value_split_over_lines_is_not_masked() -> None:
    """The documented limit: once a job breaks a value up, nothing can tell its pieces from other output."""
    half = len(SECRET) // 2
    line = f"{SECRET[:half]}\n{SECRET[half:]}\n".encode()
    assert feed_all(SecretMasker([SECRET]), [line]) == line


def test_masking_a_large_stream_changes_nothing_without_secrets_in_it() -> None:
    """A training log of 4 MiB with three secrets configured and none printed comes out byte for
    byte (its speed is the bench's business, not a unit test's)."""
    line = b"epoch 3 step 1200 loss=0.41235 acc=0.9012 lr=0.0003 tok/s=48211 path=/data/shard-00042.tar\n"
    data = line * (4 * 1024 * 1024 // len(line))
    m = SecretMasker([SECRET, "sk-live-0123456789abcdef", "ghp_x9Y8z7W6v5U4t3S2r1Q0"])
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    out = b"".join(m.feed(STDOUT, c) for c in chunks) + m.flush(STDOUT)
    assert out == data
