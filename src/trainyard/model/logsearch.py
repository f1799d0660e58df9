"""Log search, the pure part: what a query searches for, which lines a sealed chunk holds, and the
cursor of a page of hits. No I/O; the store (``store/logsearch.py``) and the indexer
(``server/services/logsearch.py``) use these.

A query is a phrase: its words, case-insensitive, adjacent and in order (``CUDA out of memory``
finds ``RuntimeError: CUDA out of memory. Tried to allocate``). Words are runs of letters and digits;
everything else (quotes, ``AND``'s meaning, ``*``, ``-``) is only a separator, so no input is ever a
syntax error for SQLite FTS5 or PostgreSQL's tsquery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUERY_WORDS = 32
"""More words than this in one query are refused: a phrase that long finds nothing a shorter one would not."""
MAX_LINE_CHARS = 2000
"""A longer line is indexed (and shown) up to this many characters."""

_WORD = re.compile(r"[^\W_]+")


class BadQuery(ValueError):
    """The query has no word to search for, or too many."""


def query_words(q: str) -> list[str]:
    """The words of a query, lower-cased (BadQuery: none, or more than ``MAX_QUERY_WORDS``)."""
    words = _WORD.findall(q.lower())
    if not words:
        raise BadQuery("q must contain a word (letters or digits) to search for")
    if len(words) > MAX_QUERY_WORDS:
        raise BadQuery(f"q may have at most {MAX_QUERY_WORDS} words")
    return words


def fts5_phrase(words: list[str]) -> str:
    """The FTS5 MATCH expression for a phrase of ``words`` (which hold no quote: see ``_WORD``)."""
    return '"' + " ".join(words) + '"'


def line_matches(words: list[str], line: str) -> bool:
    """Whether ``line`` holds the phrase: the reference both backends are tested against."""
    have = _WORD.findall(line.lower())
    n = len(words)
    return any(have[i : i + n] == words for i in range(len(have) - n + 1))


@dataclass(frozen=True)
class IndexedLine:
    """One line of an attempt's log: its byte offset in the log, and its text (capped)."""

    offset: int
    text: str


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE_CHARS]


def chunk_lines(start: int, data: bytes, prev: bytes | None, nxt: bytes | None) -> list[IndexedLine]:
    """The lines to index for the chunk holding bytes ``[start, start + len(data))`` of a log.

    Chunks are cut at any byte, so a line may start in one chunk and end in another. ``prev`` is the
    chunk that ends at ``start`` (None: not sealed yet, or ``start`` is 0), ``nxt`` the one that
    starts where this one ends (None: not sealed yet). Each line is keyed by the offset where it
    starts; a line crossing into this chunk is given here too, whole as far as the neighbours
    known now allow, so indexing the chunks in any order, each once its neighbours are there, gives
    every line of the log once (the last indexing of an offset replaces the earlier ones). Blank
    lines are left out. A line longer than a whole neighbouring chunk is indexed from that chunk only.
    """
    out: list[IndexedLine] = []
    pos = 0
    if prev is not None and prev and not prev.endswith(b"\n"):
        # The first bytes finish the previous chunk's last line.
        cut = prev.rfind(b"\n") + 1
        nl = data.find(b"\n")
        head = data if nl < 0 else data[:nl]
        if nl < 0 and nxt is not None:
            head += nxt.split(b"\n", 1)[0]
        if (prev[cut:] + head).strip():
            out.append(IndexedLine(start - (len(prev) - cut), _text(prev[cut:] + head)))
        if nl < 0:
            return out
        pos = nl + 1
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            raw = data[pos:]
            if nxt is not None:
                raw += nxt.split(b"\n", 1)[0]
            end = len(data)
        else:
            raw = data[pos:nl]
            end = nl + 1
        if raw.strip():
            out.append(IndexedLine(start + pos, _text(raw)))
        pos = end
    return out


def log_lines(log: bytes) -> list[IndexedLine]:
    """Every non-blank line of a whole log (the reference ``chunk_lines`` is tested against)."""
    return chunk_lines(0, log, None, None)


def encode_cursor(last_id: int) -> str:
    """The cursor of the page after the hit with index id ``last_id``."""
    return f"l{last_id}"


def decode_cursor(cursor: str) -> int:
    """The index id a cursor continues below (ValueError: not a cursor this API gave out)."""
    if not re.fullmatch(r"l[1-9][0-9]{0,18}", cursor):
        raise ValueError("cursor is not one this API gave out")
    return int(cursor[1:])
