"""Job arrays and dependencies as data: Slurm's index syntax, task ids, and when a dependency is met.
Pure: no I/O.

An array is one parent job plus one task per index. Each task is a job of its own (scheduled,
retried, preempted and logged alone) with the id ``<parent>-<index>``, as a gang's member rows are
``<id>-<rank>``; the parent is bookkeeping: it never runs, and its status follows its tasks.

Indices are written as Slurm writes them: ``0-199``, ``1,3,5-9:2`` (a step), at most
``MAX_ARRAY_TASKS`` tasks and each index at most ``MAX_ARRAY_INDEX`` (a task's id must fit the
32 characters of a job id).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from trainyard.model.states import TERMINAL, JobStatus

MAX_ARRAY_TASKS = 10_000
"""The most tasks one array may have."""
MAX_ARRAY_INDEX = 9_999
"""The largest index: a task's id is ``<parent>-<index>``, and a job id has at most 32 characters."""
INDEX_PLACEHOLDER = "{index}"
"""Replaced by the task's index in each argument of an array's command."""

_ITEM_RE = re.compile(r"(\d{1,9})(?:-(\d{1,9})(?::(\d{1,9}))?)?")

Condition = Literal["succeeded", "failed", "finished"]
"""When a dependency is met: its job ended SUCCEEDED; ended otherwise (FAILED, TIMED_OUT,
CANCELLED: Slurm's ``afternotok``); or ended in any way (``afterany``)."""


def parse_indices(text: str) -> list[int]:
    """Every index of an ``indices`` text, ascending (``1,3,5-9:2`` → 1, 3, 5, 7, 9).

    ValueError with a sentence for anything else: a malformed item, a range running downwards, a
    step below 1, an index named twice, more than ``MAX_ARRAY_TASKS`` tasks or an index above
    ``MAX_ARRAY_INDEX``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("indices must look like 0-199, 1,3,5 or 0-15:4")
    ranges: list[range] = []
    count = 0
    for raw in text.split(","):
        item = raw.strip()
        m = _ITEM_RE.fullmatch(item)
        if not m:
            raise ValueError(f"array index {item!r} must look like 3, 0-199 or 0-15:4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"array range {item!r} must run upwards with a step of at least 1")
        count += (hi - lo) // step + 1
        if count > MAX_ARRAY_TASKS:  # checked before a huge range is spelled out
            raise ValueError(f"an array has at most {MAX_ARRAY_TASKS} tasks; {text.strip()!r} has more")
        if hi > MAX_ARRAY_INDEX:
            raise ValueError(f"array index {hi} is over the largest, {MAX_ARRAY_INDEX}")
        ranges.append(range(lo, hi + 1, step))
    seen: set[int] = set()
    for r in ranges:
        for i in r:
            if i in seen:
                raise ValueError(f"array index {i} is named twice in {text.strip()!r}")
            seen.add(i)
    return sorted(seen)


def normalize_indices(text: str) -> str:
    """The ``indices`` text as stored: items without spaces (``0-9, 12`` → ``0-9,12``)."""
    return ",".join(item.strip() for item in text.split(","))


def parse_array_flag(text: str) -> dict[str, object]:
    """``yard submit --array`` and ``#SBATCH --array``: ``0-199%16`` → ``{"indices": "0-199",
    "parallelism": 16}`` (``parallelism`` only with ``%N``). ValueError for anything else."""
    indices, sep, limit = text.strip().partition("%")
    parse_indices(indices)
    out: dict[str, object] = {"indices": normalize_indices(indices)}
    if sep:
        if not limit.strip().isdigit() or int(limit) < 1:
            raise ValueError(f"array limit (%N) {limit!r} must be a whole number of at least 1")
        out["parallelism"] = int(limit)
    return out


def task_id(parent: str, index: int) -> str:
    """Task ``index``'s job id in array ``parent``."""
    return f"{parent}-{index}"


def task_command(command: Sequence[str], index: int) -> list[str]:
    """An array's command for one task: ``{index}`` replaced by the index in every argument (nothing
    else is touched: other braces stay as they are)."""
    text = str(index)
    return [a.replace(INDEX_PLACEHOLDER, text) if INDEX_PLACEHOLDER in a else a for a in command]


# ---- dependencies --------------------------------------------------------------------------------

FAILED_ENDS = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED})
"""Endings that meet a ``failed`` dependency (and never a ``succeeded`` one)."""


def dependency_state(condition: Condition, counts: Mapping[str, int]) -> Literal["met", "waiting", "never"]:
    """Whether a dependency is met, may still be, or never can be, from its job's status counts: one
    status for a plain job, one count per status over the tasks of an array (every task must meet
    the condition).

    ``succeeded``: every task SUCCEEDED; never once one ended otherwise. ``failed``: every task
    ended FAILED, TIMED_OUT or CANCELLED; never once one SUCCEEDED. ``finished``: every task ended."""
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if JobStatus(s) in TERMINAL)
    succeeded = counts.get(JobStatus.SUCCEEDED.value, 0)
    if condition == "succeeded":
        if ended > succeeded:
            return "never"
        return "met" if total and succeeded == total else "waiting"
    if condition == "failed":
        if succeeded:
            return "never"
        return "met" if total and ended == total else "waiting"
    return "met" if total and ended == total else "waiting"


def never_reason(job: str, condition: Condition, status: str, counts: Mapping[str, int]) -> str:
    """The reason a job ends with when its dependency on ``job`` can never be met (Slurm's
    DependencyNeverSatisfied): ``dependency never satisfied: job X ended SUCCEEDED``."""
    head = f"dependency never satisfied: job {job}"
    if JobStatus(status) in TERMINAL:
        return f"{head} ended {status}"
    # An array still running: some of its tasks already ended the wrong way.
    wrong = ("SUCCEEDED",) if condition == "failed" else ("FAILED", "TIMED_OUT", "CANCELLED")
    parts = [f"{counts[s]} {s}" for s in wrong if counts.get(s)]
    return f"{head} has tasks that ended {', '.join(parts)}"


def waiting_reason(job: str, status: str) -> str:
    """A dependent job's pending reason: ``waiting for job X (RUNNING)``."""
    return f"waiting for job {job} ({status})"


def array_status(counts: Mapping[str, int], *, started: bool, cancelling: bool) -> JobStatus:
    """An array's status from its tasks' status counts: PENDING until one of them has run, RUNNING
    (CANCELLING once cancelled) while any has not ended, then SUCCEEDED if every one succeeded,
    else CANCELLED when it was cancelled or its only other endings are cancellations, else FAILED."""
    total = sum(counts.values())
    ended = sum(n for s, n in counts.items() if JobStatus(s) in TERMINAL)
    if ended < total or not total:
        if cancelling:
            return JobStatus.CANCELLING
        return JobStatus.RUNNING if started or ended else JobStatus.PENDING
    if counts.get(JobStatus.SUCCEEDED.value, 0) == total:
        return JobStatus.SUCCEEDED
    failed = counts.get(JobStatus.FAILED.value, 0) + counts.get(JobStatus.TIMED_OUT.value, 0)
    return JobStatus.CANCELLED if cancelling or not failed else JobStatus.FAILED
