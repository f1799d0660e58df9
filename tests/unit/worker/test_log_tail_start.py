"""Where a follow's live push starts: plain data in, one offset out (``logship.tail_start``).

A follower reads the sealed chunks up to the control plane's index end, then the live push; the
push must start at or before that end (no gap), past nothing it cannot hold (the newest
``MAX_CATCH_UP_BYTES``), and never re-send what the chunks hold when nothing asks for it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trainyard.worker.logship import MAX_CATCH_UP_BYTES, tail_start

sizes = st.integers(min_value=0, max_value=4 * MAX_CATCH_UP_BYTES)


@given(sizes, sizes, sizes)
def test_the_start_lies_within_the_spool_and_the_catch_up_window(offset: int, sealed: int, size: int) -> None:
    sealed = min(sealed, size)  # the agent never seals what it has not spooled
    start = tail_start(offset, sealed, size)
    assert 0 <= start <= size
    assert size - start <= MAX_CATCH_UP_BYTES


@given(sizes, sizes)
def test_unasked_it_starts_at_the_first_unsealed_byte(sealed: int, size: int) -> None:
    sealed = min(sealed, size)
    start = tail_start(0, sealed, size)
    if size - sealed <= MAX_CATCH_UP_BYTES:
        # No gap after the chunks and no sealed byte pushed again.
        assert start == sealed
    else:
        assert start == size - MAX_CATCH_UP_BYTES


@given(st.binary(max_size=2000), st.data())
def test_chunks_then_the_push_make_the_log_byte_exact(log: bytes, data: st.DataObject) -> None:
    size = len(log)
    sealed = data.draw(st.integers(min_value=max(0, size - MAX_CATCH_UP_BYTES), max_value=size))
    start = tail_start(0, sealed, size)
    follower = bytearray(log[:sealed])  # what the sealed chunks give
    pushed = log[start:]
    assert start <= len(follower)
    follower += pushed[len(follower) - start :]  # the live tail ignores overlap
    assert bytes(follower) == log
