"""The in-job helper: what a training script imports to cooperate with Trainyard.

Jobs import this module, so it uses only the standard library and does nothing at import time.
Every function also works outside the platform (a plain ``python train.py``), falling back to
``./checkpoints`` and ``./artifacts`` in the current directory.

Environment set by the agent::

    TRAINYARD_JOB_ID          the job's id
    TRAINYARD_ATTEMPT         1 for the first run, 2 after the first retry, ...
    TRAINYARD_CHECKPOINT_DIR  where to write checkpoints (persists across attempts)
    TRAINYARD_RESUME_FROM     set when resuming: a checkpoint directory, or one checkpoint
    TRAINYARD_ARTIFACT_DIR    files left here are uploaded when the job ends
    TRAINYARD_ARRAY_INDEX     an array's task: its index (TRAINYARD_ARRAY_JOB_ID: the array)
    TRAINYARD_DEPENDENCY_ARTIFACTS  a job with depends_on: its dependencies' artifacts, as a JSON
                              list of {job, name, url, sha256, size} (or, when long, a URL of that
                              list in TRAINYARD_DEPENDENCY_ARTIFACTS_URL); see dependency_artifacts()

Checkpoint format (the caller serializes; numpy users pass the bytes of an ``.npz``)::

    <dir>/ckpt-00000042          save_checkpoint(b"...", step=42): the bytes, as given
    <dir>/ckpt-00000042/<key>    save_checkpoint({"model": b"...", "optim": b"..."}, 42): one file a key
    <dir>/latest                 the name of the newest checkpoint written, plus a newline

Each checkpoint is written under a temporary name starting with ``.tmp-`` and renamed into place,
so a checkpoint name that exists is complete; a write killed halfway leaves at most a ``.tmp-``
entry, which readers ignore. ``latest`` is written the same way, after the checkpoint itself.

Metrics: ``log_metric`` appends ``{"name", "value", "step", "time"}`` lines to
``<artifact dir>/metrics.jsonl`` and prints ``TRAINYARD_METRIC {"name": ..., "value": ..., "step": ...}``
to stdout, which the platform parses out of the job's log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any

from trainyard import datacache

__all__ = [
    "METRIC_PREFIX",
    "array_index",
    "artifact_dir",
    "attempt",
    "checkpoint_dir",
    "dataset_dir",
    "dependency_artifacts",
    "install_preemption_handler",
    "job_id",
    "latest_checkpoint",
    "load_checkpoint",
    "log_metric",
    "mark_cached",
    "mark_complete",
    "preempted",
    "resume_from",
    "save_checkpoint",
]

METRIC_PREFIX = "TRAINYARD_METRIC "
LATEST_POINTER = "latest"
DEFAULT_KEEP = 3
_TMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


def _env(name: str) -> str | None:
    # An empty variable is treated as unset: agents and shells often export "" for "none".
    value = os.environ.get(name)
    return value if value else None


def job_id() -> str | None:
    """The platform's id for this job, or None when running outside Trainyard."""
    return _env("TRAINYARD_JOB_ID")


def attempt() -> int:
    """This attempt's number, 1-based; 1 outside the platform."""
    raw = _env("TRAINYARD_ATTEMPT")
    if raw is None:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"TRAINYARD_ATTEMPT is not an integer: {raw!r}") from None


def array_index() -> int | None:
    """This task's index when the job is a task of an array (``TRAINYARD_ARRAY_INDEX``), else None."""
    raw = _env("TRAINYARD_ARRAY_INDEX")
    return int(raw) if raw is not None and raw.isdigit() else None


def _dir_from_env(var: str, default: str) -> Path:
    path = Path(_env(var) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir() -> Path:
    """TRAINYARD_CHECKPOINT_DIR, else ./checkpoints; created if missing."""
    return _dir_from_env("TRAINYARD_CHECKPOINT_DIR", "checkpoints")


def artifact_dir() -> Path:
    """TRAINYARD_ARTIFACT_DIR, else ./artifacts; created if missing."""
    return _dir_from_env("TRAINYARD_ARTIFACT_DIR", "artifacts")


def resume_from() -> Path | None:
    """TRAINYARD_RESUME_FROM when it is set and exists, else None."""
    raw = _env("TRAINYARD_RESUME_FROM")
    if raw is None:
        return None
    path = Path(raw)
    return path if path.exists() else None


# --- the worker's data cache -----------------------------------------------------------------


def dataset_dir(uri: str) -> tuple[Path, bool]:
    """Where to keep ``uri``'s data on this worker, and whether it is already there (complete).

    Under the platform the directory is in the worker's data cache (``TRAINYARD_DATA_CACHE``), so
    it outlives this job and the scheduler sends later jobs reading ``uri`` here; elsewhere it is
    ``./data-cache``. Fill it, then call :func:`mark_cached`.
    """
    path = datacache.dataset_dir(_dir_from_env(datacache.ENV, "data-cache"), uri)
    path.mkdir(parents=True, exist_ok=True)
    return path, (path / datacache.MARKER).is_file()


def mark_cached(uri: str) -> None:
    """Declare ``uri``'s directory complete: the worker reports it from its next heartbeat on."""
    path, _ = dataset_dir(uri)
    _atomic_write_bytes(path / datacache.MARKER, uri.encode())


# --- preemption -------------------------------------------------------------------------------

_preempted = threading.Event()
_install_lock = threading.Lock()
_installed = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Only set the flag: the training loop decides when it is safe to checkpoint and exit.
    _preempted.set()


def install_preemption_handler() -> None:
    """Make SIGTERM set the flag ``preempted()`` reads instead of killing the process.

    The job should then save a checkpoint and exit (143, 128 + SIGTERM, by convention; the code does
    not matter: once the platform preempts an attempt, it is requeued whatever it exits with, unless
    the job called ``mark_complete()``). Calling this again does nothing.
    Must be called from the main thread, like any ``signal.signal``.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def preempted() -> bool:
    """True once SIGTERM has arrived after ``install_preemption_handler()``."""
    return _preempted.is_set()


COMPLETE_MARKER = ".trainyard-complete"
"""In the checkpoint directory: the job said its work is done (``mark_complete``)."""


def mark_complete() -> None:
    """Say that this attempt's work is done, so that it counts as finished even when the platform
    was stopping it for a preemption at the time (a SIGTERM that arrived as the last step ended).

    Without this, an attempt the platform decided to preempt ends PREEMPTED whatever it exits with,
    and the job is requeued to resume from its checkpoint: a handler that checkpoints and exits 0 is
    the common pattern, and its remaining work must not be dropped as a success.
    """
    directory = checkpoint_dir()
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(directory / COMPLETE_MARKER, b"complete\n")


# --- checkpoints ------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name) or name.startswith(_TMP_PREFIX) or name in (".", ".."):
        raise ValueError(f"invalid checkpoint {what}: {name!r}")


def _entry_name(name: str, step: int) -> str:
    return f"{name}-{step:08d}"


def _entry_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}-(\d{{8,}})$")


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened for this.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
    os.close(fd)
    try:
        _write_file(Path(tmp), data)
        os.replace(tmp, target)
    except BaseException:
        _remove(Path(tmp))
        raise


def _atomic_write_dir(target: Path, files: Mapping[str, bytes]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
    try:
        for key, data in files.items():
            _write_file(tmp / key, data)
        _fsync_dir(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # rename() cannot replace a non-empty directory, so the old one (same step, saved
            # again) is moved aside first; readers fall back to an older step meanwhile.
            if not target.exists():
                raise
            old = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=target.parent))
            os.replace(target, old / "old")
            os.replace(tmp, target)
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def _entries(directory: Path, name: str) -> list[tuple[int, Path]]:
    pattern = _entry_re(name)
    found: list[tuple[int, Path]] = []
    try:
        children = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return found
    for child in children:
        m = pattern.match(child.name)
        if m:
            found.append((int(m.group(1)), child))
    found.sort(key=lambda item: item[0])
    return found


def save_checkpoint(
    state: Mapping[str, bytes] | bytes,
    step: int,
    name: str = "ckpt",
    *,
    directory: Path | None = None,
    keep: int = DEFAULT_KEEP,
) -> Path:
    """Write a checkpoint atomically as ``<name>-<step:08d>`` and point ``latest`` at it.

    ``state`` is either the serialized bytes (one file) or a mapping of file name to bytes (a
    directory of files). Saving a step that exists replaces it. Afterwards only the ``keep``
    highest steps of ``name`` remain, plus the one just written if it is lower.
    Returns the checkpoint's path.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    _check_name(name, "name")
    target_dir = directory if directory is not None else checkpoint_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / _entry_name(name, step)

    if isinstance(state, bytes | bytearray | memoryview):
        _atomic_write_bytes(target, bytes(state))
    else:
        files: dict[str, bytes] = {}
        for key, data in state.items():
            _check_name(key, "key")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"checkpoint value for {key!r} must be bytes, got {type(data).__name__}")
            files[key] = bytes(data)
        _atomic_write_dir(target, files)
    _atomic_write_bytes(target_dir / LATEST_POINTER, (target.name + "\n").encode())
    _fsync_dir(target_dir)

    for entry_step, path in _entries(target_dir, name)[:-keep]:
        if entry_step != step:
            _remove(path)
    return target


def _latest_in(directory: Path, name: str) -> Path | None:
    pattern = _entry_re(name)
    if pattern.match(directory.name) and directory.parent != directory:
        # TRAINYARD_RESUME_FROM may name one checkpoint rather than the directory holding it.
        return directory
    if not directory.is_dir():
        return None
    try:
        pointed = (directory / LATEST_POINTER).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        pointed = ""
    if pointed and pattern.match(pointed) and (directory / pointed).exists():
        return directory / pointed
    entries = _entries(directory, name)
    return entries[-1][1] if entries else None


def latest_checkpoint(search: Path | None = None, name: str = "ckpt") -> Path | None:
    """The newest complete checkpoint, or None.

    With ``search`` given, looks only there. Otherwise looks in ``resume_from()`` first (which
    may be a checkpoint directory or one checkpoint), then in ``checkpoint_dir()``. Within a
    directory, ``latest`` wins when it names a checkpoint that exists; else the highest step.
    """
    if search is not None:
        return _latest_in(Path(search), name)
    resume = resume_from()
    if resume is not None:
        found = _latest_in(resume, name)
        if found is not None:
            return found
    return _latest_in(checkpoint_dir(), name)


def load_checkpoint(path: Path) -> bytes | dict[str, bytes]:
    """Read back what ``save_checkpoint`` wrote: the bytes, or the mapping of key to bytes."""
    path = Path(path)
    if path.is_dir():
        return {child.name: child.read_bytes() for child in sorted(path.iterdir()) if child.is_file()}
    return path.read_bytes()


# --- metrics ----------------------------------------------------------------------------------

_metric_lock = threading.Lock()


def log_metric(name: str, value: float, step: int | None = None) -> None:
    """Record a scalar: a line in ``metrics.jsonl`` and a ``TRAINYARD_METRIC`` line on stdout.

    NaN and infinities are recorded as null, since strict JSON has no spelling for them.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("metric name must be a non-empty string")
    number = float(value)
    clean: float | None = number if math.isfinite(number) else None
    step_value = None if step is None else int(step)
    record = {"name": name, "value": clean, "step": step_value, "time": time.time()}
    line = json.dumps(record, allow_nan=False)
    printed = json.dumps({"name": name, "value": clean, "step": step_value}, allow_nan=False)
    path = artifact_dir() / "metrics.jsonl"
    with _metric_lock:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        # Flushed so the line reaches the log (and the platform's parser) while the job runs.
        sys.stdout.write(METRIC_PREFIX + printed + "\n")
        sys.stdout.flush()


# --- dependencies -----------------------------------------------------------------------------

DEPENDENCIES_DIR = "dependencies"
_DOWNLOAD_TIMEOUT_S = 120.0


def _dependency_list() -> list[dict[str, Any]]:
    """The artifacts the platform handed this job: in the environment, or in a manifest at a URL."""
    raw = _env("TRAINYARD_DEPENDENCY_ARTIFACTS")
    if raw is None:
        url = _env("TRAINYARD_DEPENDENCY_ARTIFACTS_URL")
        if url is None:
            return []
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            raw = resp.read().decode()
    items = json.loads(raw)
    if not isinstance(items, list):
        raise ValueError("the dependency artifact list is not a list")
    return [i for i in items if isinstance(i, dict)]


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"artifact name {name!r} is not a plain relative path")
    return path


def _download(url: str, target: Path, sha256: str) -> None:
    """Fetch ``url`` into ``target`` (atomically), checking its SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise OSError(f"{target.name}: downloaded bytes do not match their sha256")
        os.replace(tmp, target)
    except BaseException:
        _remove(Path(tmp))
        raise


def dependency_artifacts(dest: str | os.PathLike[str] | None = None, *, job: str | None = None) -> list[Path]:
    """Download the artifacts of the jobs this one depends on (its spec's ``depends_on``; an array:
    each of its tasks) into ``dest/<job id>/<name>``, each checked against its SHA-256; returns their
    paths, in the order the platform listed them. ``job``: only that dependency's (or that array's
    tasks': ids ``<job>-<index>``). ``dest`` defaults to ``./dependencies``, or, when the job's
    directory is not writable (a shared, read-only ``cwd``), ``trainyard-dependencies-<job id>`` in
    ``$TMPDIR``, ``$HOME`` or ``/tmp``.

    The platform hands a dependent job short-lived presigned URLs (an hour): call this when the job
    starts. A file already there with the right SHA-256 is not fetched again (a retried attempt).
    Outside the platform, or without dependencies, it returns an empty list."""
    items = _dependency_list()
    if not items:
        return []
    root = Path(dest) if dest is not None else _default_dependencies_dir()
    paths: list[Path] = []
    for item in items:
        owner, name = str(item.get("job", "")), str(item.get("name", ""))
        if job is not None and owner != job and not owner.startswith(f"{job}-"):
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", owner):
            raise ValueError(f"dependency job id {owner!r} is not one the platform gives")
        target = root / owner / _safe_relative(name)
        sha = str(item.get("sha256") or "")
        if not (target.is_file() and sha and _sha256_of(target) == sha):
            _download(str(item["url"]), target, sha)
        paths.append(target)
    return paths


def _default_dependencies_dir() -> Path:
    """``./dependencies`` when the job may write where it runs; else a directory of its own in the
    first writable of ``$TMPDIR``, ``$HOME`` (the job's own directory in the sandbox) and ``/tmp``."""
    if os.access(".", os.W_OK):
        return Path(DEPENDENCIES_DIR)
    for base in (_env("TMPDIR"), _env("HOME"), "/tmp", "/var/tmp"):
        if base and os.path.isdir(base) and os.access(base, os.W_OK):
            return Path(base) / f"trainyard-dependencies-{job_id() or 'local'}"
    raise OSError("no writable directory for the dependencies' artifacts: pass dependency_artifacts(dest)")


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
