"""Where a job runs: its own directory, or a submit directory the worker shares (``--allow-cwd``).

A job's ``cwd`` is a user's string. It becomes a directory the sandbox binds (writable for the job's
user where the file modes allow) and the root its ``artifacts`` are collected from, by an agent
that is root. So it is taken only when:

- it is relative: a directory inside the job's own working directory (its unpacked bundle);
- or it is absolute, normalized, inside one of the roots the worker's operator shares, resolved
  beneath that root by the kernel (no link leads out), and outside every protected directory.

Anything else is not used: the job runs in its own directory and its log says why. The control plane
refuses the plainly wrong ones (``/``, ``..``, system directories) at submit already.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from trainyard.worker.beneath import Escape, open_beneath, relative_parts
from trainyard.worker.executors.base import StartFailed


@dataclass(frozen=True)
class WorkingDir:
    """A job's working directory as a trusted root and a relative part beneath it."""

    root: Path
    rel: PurePosixPath = field(default_factory=PurePosixPath)
    shared: bool = False
    """In a shared root of the node rather than the job's own directory."""

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.rel.parts)


@dataclass(frozen=True)
class Choice:
    workdir: WorkingDir
    note: str = ""
    """Why the requested directory was not used (for the job's log); empty when it was."""


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def choose(
    requested: str,
    own: Path,
    *,
    allow: Sequence[Path],
    protected: Sequence[Path],
    has_bundle: bool,
) -> Choice:
    """The directory a job with ``cwd = requested`` runs in. ``own`` is its own work directory;
    raises StartFailed for a request that names something it must never get."""
    if not requested:
        return Choice(WorkingDir(own))
    if not requested.startswith("/"):
        return _inside_own(requested, own, has_bundle)
    if has_bundle:
        return Choice(WorkingDir(own), f"cwd {requested} is ignored: the job runs in its bundle")
    if "\x00" in requested or os.path.normpath(requested) != requested or requested == "/":
        raise StartFailed(f"working directory {requested!r} is not a plain absolute path")
    for root in allow:
        root_s = os.path.normpath(str(root))
        if root_s != "/" and _within(requested, root_s):
            return _inside_shared(requested, Path(root_s), own, protected)
    shared = ", ".join(str(r) for r in allow) or "none"
    return Choice(
        WorkingDir(own),
        f"cwd {requested} is not shared with this worker (shared: {shared}); "
        "the job runs in its own directory",
    )


def _inside_own(requested: str, own: Path, has_bundle: bool) -> Choice:
    try:
        parts = relative_parts(requested)
    except Escape as e:
        raise StartFailed(f"working directory {requested!r}: {e.strerror}") from e
    rel = PurePosixPath(*parts)
    if not has_bundle:
        # The job's own, still empty directory, which nothing else writes before the job starts.
        own.joinpath(*parts).mkdir(parents=True, exist_ok=True)
    try:
        os.close(open_beneath(own, rel, os.O_RDONLY | os.O_DIRECTORY))
    except Escape as e:
        raise StartFailed(f"working directory {requested!r} leads outside the job's directory") from e
    except OSError as e:
        raise StartFailed(f"working directory {requested!r} not found in the job's bundle") from e
    return Choice(WorkingDir(own, rel))


def _inside_shared(requested: str, root: Path, own: Path, protected: Sequence[Path]) -> Choice:
    try:
        root_real = Path(os.path.realpath(root))
        fd = open_beneath(root_real, requested[len(str(root)) :].lstrip("/"), os.O_RDONLY | os.O_DIRECTORY)
    except Escape as e:
        raise StartFailed(f"working directory {requested} leads outside the shared root {root}") from e
    except OSError as e:
        why = e.strerror or str(e)
        note = f"cwd {requested}: {why} on this worker; the job runs in its own directory"
        return Choice(WorkingDir(own), note)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    for p in protected:
        # A directory that holds a protected one is fine: the sandbox hides that one again.
        if _within(real, os.path.realpath(p)):
            raise StartFailed(f"working directory {requested} is inside the worker's protected directory {p}")
    if not _within(real, str(root_real)):
        raise StartFailed(f"working directory {requested} leads outside the shared root {root}")
    rel = PurePosixPath(os.path.relpath(real, root_real)) if real != str(root_real) else PurePosixPath()
    return Choice(WorkingDir(root_real, rel, shared=True))
