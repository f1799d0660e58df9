"""The log search index on every store backend (SQLite FTS5, PostgreSQL tsvector): the queue of
sealed chunks, phrase search, scoping to the caller's team, paging, hostile queries, deletion."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard.model.logsearch import BadQuery, IndexedLine, line_matches, query_words
from trainyard.store.logsearch import LogQuery, QueuedChunk, enqueue_chunk
from trainyard.store.sql import SqlStore


def queue(store: SqlStore, job_id: str, seq: int, attempt: int = 1) -> QueuedChunk:
    with store.db.tx() as conn:
        enqueue_chunk(conn, job_id, attempt, seq, store.clock())
    return next(
        c for c in store.pending_log_chunks(1000) if (c.job_id, c.attempt, c.seq) == (job_id, attempt, seq)
    )


def index(store: SqlStore, job_id: str, team: str, lines: list[str], seq: int = 0, start: int = 0) -> None:
    offsets, pos = [], start
    for ln in lines:
        offsets.append(pos)
        pos += len(ln.encode()) + 1
    chunk = queue(store, job_id, seq)
    assert store.index_log_chunk(
        chunk, team, [IndexedLine(o, t) for o, t in zip(offsets, lines, strict=True)]
    )


def search(store: SqlStore, q: str, visible: str | None = "vision", **kw: object) -> list[str]:
    hits = store.search_logs(LogQuery(words=query_words(q), visible_team=visible, **kw))  # type: ignore[arg-type]
    return [h.line for h in hits]


OOM = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_a_phrase_matches_its_words_in_order_any_case(store: SqlStore) -> None:
    index(store, "jv1", "vision", ["epoch 1 loss 0.3", OOM, "memory out of CUDA", "cuda: OUT of Memory!"])
    assert search(store, "CUDA out of memory") == ["cuda: OUT of Memory!", OOM]
    assert search(store, "memory") == ["cuda: OUT of Memory!", "memory out of CUDA", OOM]
    assert search(store, "of memory tried") == [OOM]  # punctuation only separates words
    assert search(store, "memory of") == []
    assert search(store, "allocate 2") == [OOM]


def test_queued_chunks_are_taken_once_and_survive_a_new_store(store: SqlStore) -> None:
    chunk = queue(store, "jq", 0)
    assert store.log_index_queue_length() == 1
    # Another store on the same database (a restarted or second control plane) sees the same queue.
    other = SqlStore(store.url)
    try:
        assert other.pending_log_chunks(10) == [chunk]
        assert other.index_log_chunk(chunk, "vision", [IndexedLine(0, "resumed after restart")])
    finally:
        other.close()
    # The race's loser changes nothing.
    assert not store.index_log_chunk(chunk, "vision", [IndexedLine(0, "indexed twice")])
    assert store.log_index_queue_length() == 0
    assert search(store, "resumed after") == ["resumed after restart"]
    assert search(store, "indexed twice") == []


def test_a_later_indexing_replaces_the_part_of_a_line_seen_before(store: SqlStore) -> None:
    first = queue(store, "jp", 1)
    store.index_log_chunk(first, "vision", [IndexedLine(100, "CUDA out of")])
    second = queue(store, "jp", 0)
    store.index_log_chunk(
        second, "vision", [IndexedLine(90, "before"), IndexedLine(100, "CUDA out of memory")]
    )
    assert search(store, "CUDA out of") == ["CUDA out of memory"]


def test_a_caller_sees_only_their_teams_lines(store: SqlStore) -> None:
    index(store, "jv", "vision", [OOM])
    index(store, "jn", "nlp", [OOM + " (nlp)"])
    assert search(store, "CUDA out of memory", "vision") == [OOM]
    assert search(store, "CUDA out of memory", "nlp") == [OOM + " (nlp)"]
    # Another team by name, or another team's job by id, gives nothing; an admin (None) sees all.
    assert search(store, "CUDA out of memory", "vision", team="nlp") == []
    assert search(store, "CUDA out of memory", "vision", job_id="jn") == []
    assert search(store, "CUDA out of memory", None, team="nlp") == [OOM + " (nlp)"]
    assert len(search(store, "CUDA out of memory", None)) == 2


def test_pages_newest_first_with_since_and_job(store: SqlStore) -> None:
    t0 = store.clock()
    for i in range(7):
        index(store, f"j{i % 2}", "vision", [f"step {i} nan loss"], seq=i, start=100 * i)
    hits = store.search_logs(LogQuery(words=["nan", "loss"], visible_team="vision", limit=3))
    assert [h.line for h in hits] == ["step 6 nan loss", "step 5 nan loss", "step 4 nan loss"]
    rest = store.search_logs(LogQuery(words=["nan", "loss"], visible_team="vision", before_id=hits[-1].id))
    assert [h.line for h in rest] == [f"step {i} nan loss" for i in (3, 2, 1, 0)]
    assert search(store, "nan loss", job_id="j1") == ["step 5 nan loss", "step 3 nan loss", "step 1 nan loss"]
    assert search(store, "nan loss", since=t0 + 3600) == []
    assert len(search(store, "nan loss", since=t0 - 1)) == 7
    h = hits[0]
    assert (h.job_id, h.attempt, h.team, h.offset) == ("j0", 1, "vision", 600)


def test_delete_log_index_removes_a_jobs_lines_and_queue(store: SqlStore) -> None:
    index(store, "ja", "vision", ["keep me not", "nor me"])
    index(store, "jb", "vision", ["keep me"], seq=1)
    queue(store, "ja", 5)
    assert store.delete_log_index(["ja", "ja", "jz"]) == 2
    assert search(store, "keep me") == ["keep me"]
    assert [c.job_id for c in store.pending_log_chunks(10)] == []


_WORDS = [
    "cuda",
    "out",
    "of",
    "memory",
    "AND",
    "OR",
    "NOT",
    "NEAR",
    '"',
    "*",
    "-",
    "(",
    ")",
    ":",
    "^",
    "é",
    "x_y",
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6).map(" ".join))
def test_hostile_queries_search_their_words(store: SqlStore, q: str) -> None:
    lines = [OOM, "NOT a NEAR miss (AND OR)", "x_y: é-accent ^ *"]
    if not search_ready(store):
        index(store, "jh", "vision", lines)
    try:
        words = query_words(q)
    except BadQuery:
        return
    assert sorted(search(store, q)) == sorted(ln for ln in lines if line_matches(words, ln))


def search_ready(store: SqlStore) -> bool:
    return bool(store.search_logs(LogQuery(words=["near", "miss"], visible_team="vision")))


@pytest.mark.parametrize("q", ["memory", "CUDA out"])
def test_since_and_limit_bound_the_result(store: SqlStore, q: str) -> None:
    index(store, "jl", "vision", [OOM] * 5)
    assert len(store.search_logs(LogQuery(words=query_words(q), visible_team="vision", limit=2))) == 2
