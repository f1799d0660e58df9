"""Attempt directories, reused.

Each attempt needs a directory with ``checkpoints/``, ``artifacts/`` and ``work/`` (plus its log
spool). Making and removing those costs five mkdir and five rmdir calls, which on ext4 are a job's
most expensive file-system work (mkdir allocates a directory block: 0.1-0.2 ms each, measured here),
more than spawning a short job. Most attempts leave their directories empty, so a finished attempt's
directory goes back to a pool once it is checked empty, and the next attempt takes it as it is.

Which attempt holds a slot is written into the slot's ``pgid`` file, ``"<pgid> <job_id> <attempt>"``
(pgid 0 until the process started): an agent that restarts after a crash learns from these files
which attempts were running on this node, and which process groups to kill.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

SLOTS_DIR = "slots"
OWNER_FILE = "pgid"
SUBDIRS = ("checkpoints", "artifacts", "work")
LOG_FILE = "log"
_EXPECTED = frozenset({*SUBDIRS, OWNER_FILE, LOG_FILE})
MAX_FREE = 64


_RECORD = 120  # bytes: the owner record is overwritten in place at this fixed width


def _put_record(slot: Path, text: str) -> None:
    # In place, never truncated: freeing and allocating the file's block on every attempt costs as
    # much as the mkdir this module saves (ext4 with discard), an overwrite costs a write.
    data = text.encode()
    fd = os.open(slot / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if len(data) < _RECORD:
            os.pwrite(fd, data.ljust(_RECORD) + b"\n", 0)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data + b"\n", 0)
    finally:
        os.close(fd)


def write_owner(slot: Path, pgid: int, job_id: str, attempt: int) -> None:
    _put_record(slot, f"{pgid} {job_id} {attempt}")


def clear_owner(slot: Path) -> None:
    _put_record(slot, "")


def read_owner(path: Path) -> tuple[int, str, int] | None:
    """(pgid, job_id, attempt) from an owner file; None for a free slot or an unreadable file."""
    try:
        parts = path.read_text().split()
        if len(parts) != 3:
            return None
        return int(parts[0]), parts[1], int(parts[2])
    except (OSError, ValueError):
        return None


def find_slot(work_dir: Path, job_id: str, attempt: int) -> Path | None:
    """The directory an attempt runs in on this node, if it holds one (for people and tests)."""
    for owner_file in (work_dir / SLOTS_DIR).glob(f"*/{OWNER_FILE}"):
        held = read_owner(owner_file)
        if held is not None and held[1:] == (job_id, attempt):
            return owner_file.parent
    return None


class AttemptSlots:
    """The agent's pool of attempt directories under ``work_dir/slots``. Event-loop bound."""

    def __init__(self, work_dir: Path) -> None:
        self.root = work_dir / SLOTS_DIR
        self._free: list[Path] = []
        self._count = 0

    def reset(self) -> None:
        """At start-up, once the previous run's orphans are reaped: begin with no slots."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._free.clear()

    def acquire(self, job_id: str, attempt: int) -> Path:
        if self._free:
            slot = self._free.pop()
        else:
            self._count += 1
            slot = self.root / f"s{os.getpid()}-{self._count}"
            slot.mkdir(parents=True)
            for sub in SUBDIRS:
                (slot / sub).mkdir()
        write_owner(slot, 0, job_id, attempt)
        return slot

    def release(self, slot: Path, *, log_written: bool = True) -> bool:
        """Back to the pool if the attempt left nothing behind (True); else the caller removes it.
        ``log_written``: the spool file has bytes to drop (else it is left alone, as cheap as that)."""
        try:
            names = os.listdir(slot)
            clean = (
                _EXPECTED.issuperset(names)
                and all(not os.listdir(slot / sub) for sub in SUBDIRS)
                and len(self._free) < MAX_FREE
            )
        except OSError:
            clean = False
        if not clean:
            return False
        if log_written:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(slot / LOG_FILE, 0)
        clear_owner(slot)
        self._free.append(slot)
        return True
