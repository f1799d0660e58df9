"""Log search's pure part: which lines a chunk gives the index, and what a query searches for."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from trainyard.model.logsearch import (
    MAX_QUERY_WORDS,
    BadQuery,
    IndexedLine,
    chunk_lines,
    decode_cursor,
    encode_cursor,
    fts5_phrase,
    line_matches,
    log_lines,
    query_words,
)

_LINE = st.text(alphabet=st.sampled_from("ab c\r.é"), max_size=12)


@given(
    lines=st.lists(_LINE, min_size=1, max_size=30),
    trailing_newline=st.booleans(),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_chunks_indexed_in_any_order_give_every_line_once(
    lines: list[str], trailing_newline: bool, cuts: list[int], order: object
) -> None:
    log = "\n".join(lines).encode() + (b"\n" if trailing_newline else b"")
    bounds = sorted({c for c in cuts if c < len(log)} | {0, len(log)})
    chunks = [(a, log[a:b]) for a, b in itertools.pairwise(bounds)]
    # A line crossing two chunk boundaries would need a chunk without a newline: longer than a chunk.
    assume(all(b"\n" in data for _, data in chunks[:-1]))
    index: dict[int, str] = {}
    positions = list(range(len(chunks)))
    order.shuffle(positions)  # type: ignore[attr-defined]
    for i in positions:
        start, data = chunks[i]
        prev = chunks[i - 1][1] if i > 0 else None
        nxt = chunks[i + 1][1] if i + 1 < len(chunks) else None
        for line in chunk_lines(start, data, prev, nxt):
            index[line.offset] = line.text
    assert index == {ln.offset: ln.text for ln in log_lines(log)}


def test_lines_carry_their_byte_offsets_and_skip_blank_ones() -> None:
    log = b"a\n\n  \nCUDA out of memory\r\nlast"
    assert log_lines(log) == [
        IndexedLine(0, "a"),
        IndexedLine(6, "CUDA out of memory"),
        IndexedLine(26, "last"),
    ]
    # The second chunk starts inside "CUDA out of memory": the line is given whole, at its own offset.
    assert chunk_lines(10, log[10:], log[:10], None) == [
        IndexedLine(6, "CUDA out of memory"),
        IndexedLine(26, "last"),
    ]
    # Without the chunk before, the part is all that is known.
    assert chunk_lines(10, log[10:], None, None)[0] == IndexedLine(10, " out of memory")


@given(st.text(max_size=200))
def test_any_query_is_words_or_refused(q: str) -> None:
    try:
        words = query_words(q)
    except BadQuery:
        return
    assert 1 <= len(words) <= MAX_QUERY_WORDS
    phrase = fts5_phrase(words)
    # One quoted FTS5 string: no quote inside can end it early and no operator survives.
    assert phrase.count('"') == 2 and all(w.isalnum() for w in words)


@pytest.mark.parametrize("q", ['"', "", "   ", "-*()", "_", "'"])
def test_queries_without_words_are_refused(q: str) -> None:
    with pytest.raises(BadQuery):
        query_words(q)


def test_operators_are_plain_words() -> None:
    assert query_words('"CUDA out of memory" AND NEAR(x*)') == [
        "cuda",
        "out",
        "of",
        "memory",
        "and",
        "near",
        "x",
    ]
    assert line_matches(["cuda", "out", "of", "memory"], "RuntimeError: CUDA out of memory. Tried")
    assert not line_matches(["cuda", "memory"], "CUDA out of memory")
    with pytest.raises(BadQuery):
        query_words("w " * (MAX_QUERY_WORDS + 1))


@given(st.integers(min_value=1, max_value=2**62))
def test_cursor_round_trip(n: int) -> None:
    assert decode_cursor(encode_cursor(n)) == n


@pytest.mark.parametrize("bad", ["", "l0", "1", "l-1", "lx", "l" + "9" * 30, "l1 "])
def test_foreign_cursors_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(bad)
