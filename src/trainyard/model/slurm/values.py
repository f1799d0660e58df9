"""The values of sbatch's options: Slurm's time limits, sizes, GPU counts, ``--gres``, ``--array``
and ``--dependency`` read into Trainyard's terms, job names made JobSpec names, and Trainyard's own
memory and duration texts written back. Pure: no I/O."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_INT_RE = re.compile(r"\d+")
_MEM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)[Bb]?")
_MEM_UNIT = {"": 1024**2, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ARRAY_ITEM_RE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
MAX_ARRAY_TASKS = 100_000
_DEPENDENCY_CONDITIONS = {"afterok": "succeeded", "afternotok": "failed", "afterany": "finished"}

_TIME_ERROR = "time {!r} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"


def parse_time(text: str) -> float | None:
    """Seconds from a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or
    ``D-HH:MM:SS``; None for no limit (``0``, ``-1``, ``UNLIMITED``, ``INFINITE``). ValueError else."""
    t = text.strip()
    if t.lower() in ("unlimited", "infinite", "-1"):
        return None
    days = 0
    rest = t
    if "-" in t:
        d, _, rest = t.partition("-")
        if not _INT_RE.fullmatch(d) or not rest:
            raise ValueError(_TIME_ERROR.format(text))
        days = int(d)
    parts = rest.split(":")
    if not parts or len(parts) > 3 or not all(_INT_RE.fullmatch(p) for p in parts):
        raise ValueError(_TIME_ERROR.format(text))
    n = [int(p) for p in parts]
    if "-" in t:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = [*n, 0, 0][:3]
    elif len(n) == 1:  # MM
        hours, minutes, seconds = 0, n[0], 0
    elif len(n) == 2:  # MM:SS
        hours, minutes, seconds = 0, n[0], n[1]
    else:  # HH:MM:SS
        hours, minutes, seconds = n
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return float(total) if total > 0 else None


def parse_memory(text: str) -> int:
    """Bytes from a Slurm size: a number with an optional K, M, G or T (powers of 1024, as Slurm
    means them); no unit means megabytes (MiB). ValueError otherwise."""
    m = _MEM_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"memory {text!r} is not a Slurm size such as 4G, 500M or 4000 (MB)")
    return int(Fraction(m.group(1)) * _MEM_UNIT[m.group(2).lower()])


def positive_int(text: str, what: str) -> int:
    if not _INT_RE.fullmatch(text.strip()) or int(text) < 1:
        raise ValueError(f"{what} {text!r} must be a whole number of at least 1")
    return int(text)


def parse_gpus(text: str) -> tuple[int, str | None, list[str]]:
    """``[type:]N`` (``--gpus``, ``--gpus-per-node``, ``--gpus-per-task``) → (N, type, notes)."""
    notes: list[str] = []
    items = [i for i in text.split(",") if i]
    if not items:
        raise ValueError(f"GPU count {text!r} must look like 2 or a100:2")
    if len(items) > 1:
        notes.append(f"only the first of several GPU kinds ({text}) is used")
    head, _, count = items[0].rpartition(":")
    if not head and not _INT_RE.fullmatch(count):  # a bare type: one GPU of it
        head, count = count, "1"
    n = int(count) if _INT_RE.fullmatch(count) else -1
    if n < 0:
        raise ValueError(f"GPU count {text!r} must look like 2 or a100:2")
    if head.startswith("gpu:"):
        head = head[4:]
    return n, head.lower() or None, notes


def parse_gres(text: str) -> tuple[int, str | None, list[str]]:
    """``gpu[:type][:N]`` items of ``--gres`` → (GPUs, type, notes on the other resources)."""
    notes: list[str] = []
    gpus, gpu_type, seen = 0, None, False
    for item in (i.strip() for i in text.split(",")):
        if not item or item.lower() == "none":
            continue
        item = item.split("(", 1)[0]  # gpu:2(S:0-1): the socket binding is Slurm's business
        kind, *rest = item.replace("gres/", "", 1).split(":")
        if kind.lower() != "gpu":
            notes.append(f"the generic resource {item!r} is not supported and is ignored")
            continue
        if seen:
            notes.append(f"only the first GPU kind of {text!r} is used")
            continue
        seen = True
        if not rest:
            gpus = 1
        elif len(rest) == 1:
            if _INT_RE.fullmatch(rest[0]):
                gpus = int(rest[0])
            else:
                gpus, gpu_type = 1, rest[0].lower()
        elif len(rest) == 2 and _INT_RE.fullmatch(rest[1]):
            gpus, gpu_type = int(rest[1]), rest[0].lower()
        else:
            raise ValueError(f"--gres item {item!r} must look like gpu:2 or gpu:a100:2")
    return gpus, gpu_type, notes


def parse_array(text: str) -> dict[str, Any]:
    """``--array=0-99%8``, ``1,3,5-7``, ``0-15:4`` → ``{"indices": "0-99", "parallelism": 8}``
    (``parallelism`` only with ``%N``). ValueError for anything else."""
    t = text.strip()
    indices, sep, limit = t.partition("%")
    count = 0
    for item in indices.split(","):
        m = _ARRAY_ITEM_RE.fullmatch(item.strip())
        if not m:
            raise ValueError(f"array {text!r} must look like 0-99, 1,3,5, 0-15:4 or 0-99%8")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"array range {item!r} must run upwards with a step of at least 1")
        count += (hi - lo) // step + 1
    if count > MAX_ARRAY_TASKS:
        raise ValueError(f"array {text!r} has {count} tasks; at most {MAX_ARRAY_TASKS}")
    out: dict[str, Any] = {"indices": ",".join(i.strip() for i in indices.split(","))}
    if sep:
        out["parallelism"] = positive_int(limit, "array limit (%N)")
    return out


def array_task_ids(indices: str) -> list[int]:
    """Every index of an ``array.indices`` text, in order (``1,3,5-7`` → 1, 3, 5, 6, 7)."""
    ids: list[int] = []
    for item in indices.split(","):
        m = _ARRAY_ITEM_RE.fullmatch(item.strip())
        if not m:
            raise ValueError(f"array index {item!r} must look like 3, 0-99 or 0-15:4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        ids.extend(range(lo, hi + 1, step))
    return ids


def parse_dependency(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """``afterok:ID[:ID][,afterany:ID]`` → ``depends_on`` items and notes on what is not supported."""
    deps: list[dict[str, str]] = []
    notes: list[str] = []
    if "?" in text:
        notes.append(f"--dependency={text}: '?' (any one of) is not supported; all of them must be met")
    for item in re.split(r"[,?]", text):
        item = item.strip()
        if not item:
            continue
        kind, _, ids = item.partition(":")
        condition = _DEPENDENCY_CONDITIONS.get(kind.lower())
        if condition is None:
            notes.append(
                f"--dependency {kind!r} is not supported and is ignored "
                "(afterok, afternotok and afterany are)"
            )
            continue
        if not ids:
            notes.append(f"--dependency {item!r} names no job and is ignored")
            continue
        for job in ids.split(":"):
            if "+" in job:
                notes.append(f"--dependency {item!r}: the delay ({job}) is ignored")
                job = job.split("+", 1)[0]
            if job:
                deps.append({"job": job, "condition": condition})
    return deps, notes


def job_name(text: str) -> str:
    """A Slurm job name as a JobSpec name: letters, digits, '.', '_' and '-', at most 128."""
    name = _NAME_BAD.sub("-", text.strip()).lstrip("._-")[:128].rstrip("-")
    return name or "slurm-job"


def memory_text(n: int) -> str | int:
    """Bytes as a JobSpec memory: ``"4Gi"`` in the largest unit that divides them, else the number."""
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return n


def duration_text(seconds: float) -> str:
    """Seconds as a JobSpec duration: ``"1h30m"``."""
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"
