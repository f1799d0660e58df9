"""Files an attempt leaves: its artifacts, its checkpoint bundle; and the bundles it starts from."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from trainyard.model.quantity import format_memory
from trainyard.worker.beneath import (
    ANYONE,
    DIR_FLAGS,
    MAX_DEPTH,
    Escape,
    FoundFile,
    Reader,
    open_beneath,
    opened_file,
    relative_parts,
    walk_files,
)

if TYPE_CHECKING:
    # Imported where a bundle is packed or unpacked: an idle agent does neither (0.3 MB).
    import tarfile

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class UnsafeArchive(Exception):
    """A bundle that is not a tar.gz, would write outside its destination, or unpacks too large."""


@dataclass(frozen=True)
class UnpackLimits:
    """How much one bundle may unpack to: a 1 MiB gzip can hold a terabyte of zeros."""

    max_bytes: int | None = None
    max_files: int | None = None


def unpack_tar(archive: Path, dest: Path, limits: UnpackLimits | None = None) -> None:
    """Unpack a .tar.gz; members that escape ``dest`` (``../``, absolute paths, outward links) are
    refused, and so is a bundle past ``limits`` (checked on the headers, before a byte is written)."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tf:
            if limits is not None and (limits.max_bytes is not None or limits.max_files is not None):
                _check_limits(tf, limits)
            tf.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise UnsafeArchive(f"refused archive member: {e}") from e
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UnsafeArchive(f"cannot unpack archive: {e}") from e


def _check_limits(tf: tarfile.TarFile, limits: UnpackLimits) -> None:
    total = 0
    for count, member in enumerate(tf, start=1):
        total += max(0, member.size) if member.isreg() else 0
        if limits.max_files is not None and count > limits.max_files:
            raise UnsafeArchive(f"the bundle holds more than {limits.max_files} files")
        if limits.max_bytes is not None and total > limits.max_bytes:
            raise UnsafeArchive(f"the bundle unpacks to more than {format_memory(limits.max_bytes)}")


def has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def pack_dir(src: Path, archive: Path) -> None:
    """tar.gz the contents of ``src`` with names relative to it. Every entry is opened relative to
    its parent's descriptor without following links (links are stored as links), so a job that left
    a link behind, or swaps one in, cannot make the agent pack a host file."""
    import tarfile

    root = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with tarfile.open(archive, "w:gz") as tf:
        _pack(tf, root, PurePosixPath(), 0)


def _pack(tf: tarfile.TarFile, dir_fd: int, prefix: PurePosixPath, depth: int) -> None:
    import tarfile

    from trainyard.job import COMPLETE_MARKER  # the jobs' helpers: an idle agent needs no part of them

    try:
        with os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it)
        for name in names:
            if not prefix.parts and name == COMPLETE_MARKER:
                continue  # this attempt's own word, not state to resume from
            arcname = str(prefix / name)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            info = tarfile.TarInfo(arcname)
            info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode) and depth + 1 < MAX_DEPTH:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                try:
                    sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue
                _pack(tf, sub, prefix / name, depth + 1)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
                tf.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                try:
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                    fd = os.open(name, flags, dir_fd=dir_fd)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as f:
                    now = os.fstat(f.fileno())
                    if not stat.S_ISREG(now.st_mode):
                        continue
                    info.size = now.st_size
                    tf.addfile(info, _Exactly(f, now.st_size))
    finally:
        os.close(dir_fd)


class _Exactly(io.RawIOBase):
    """``size`` bytes of ``f``, zero-padded if it shrank meanwhile: the tar header is already out."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f, self._left = f, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._f.read(want) or b"\0" * want
        self._left -= len(data)
        return data


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    """The artifact's path: relative to the artifact dir, or to the working dir for ``artifact_paths``."""
    root: Path
    """The directory it was found under; the file is only ever opened beneath it."""
    rel: PurePosixPath
    size: int
    sha256: str
    source: str = ""
    """A link's target beneath ``root``, when the artifact is a link that stays inside."""

    def opened(self, reader: Reader = ANYONE) -> contextlib.AbstractContextManager[Path]:
        """A path naming this very file while the block runs (see ``beneath.opened_file``)."""
        return opened_file(self.root, self.rel, reader, source=self.source)


_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\ufdd0-\ufdef\ufffe\uffff]")
MAX_NAME_BYTES = 255
MAX_ARTIFACT_BYTES = 900
"""An artifact's name, which becomes part of an object key of at most 1024 bytes."""


def artifact_name_problem(name: str) -> str | None:
    """Why a file's name cannot be stored as an artifact (the control plane refuses the same), or None.
    Such a file is skipped with a note rather than failing the whole attempt's upload."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    bad = _UNSTORABLE.search(name)
    if bad is not None:
        return f"its name contains the character U+{ord(bad.group()):04X}"
    if size > MAX_ARTIFACT_BYTES or any(len(p.encode()) > MAX_NAME_BYTES for p in name.split("/")):
        return "its name is too long"
    return None


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def collect_artifacts(
    artifact_dir: Path,
    work_dir: Path,
    artifact_paths: Sequence[str],
    reader: Reader = ANYONE,
    *,
    work_rel: PurePosixPath = PurePosixPath(),
) -> list[ArtifactFile]:
    """Every regular file under ``artifact_dir`` and the ``artifact_paths`` (relative to the working
    directory ``work_dir/work_rel``; ``work_dir`` is the trusted root everything is opened beneath).

    Missing paths are skipped. Everything is opened beneath the directory it was named under: a link
    counts only while it stays inside (the artifact dir, or the working dir), so a job cannot upload
    the node's files; with ``reader``, only files the job's own user may read count. A name found
    twice is taken once, the artifact dir first.
    """
    found: dict[str, tuple[Path, FoundFile]] = {}
    # The job owns its artifact dir and could swap it for a link to "/".
    if not artifact_dir.is_symlink():
        for f in walk_files(artifact_dir, reader=reader):
            found.setdefault(str(f.rel), (artifact_dir, f))
    for entry in artifact_paths:
        try:
            parts = relative_parts(entry)
        except Escape:
            log.warning("ignoring artifact path %r: not inside the working directory", entry)
            continue
        if not parts:
            continue
        rel = work_rel.joinpath(*parts)
        try:
            fd = open_beneath(work_dir, rel, os.O_RDONLY | os.O_NONBLOCK)
        except Escape:
            log.warning("ignoring artifact path %r: it leads outside the working directory", entry)
            continue
        except OSError:
            continue
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            for f in walk_files(work_dir, rel, reader=reader):
                found.setdefault(str(f.rel.relative_to(work_rel)), (work_dir, f))
        elif stat.S_ISREG(st.st_mode) and reader.may(st, 4):
            found.setdefault(str(rel.relative_to(work_rel)), (work_dir, FoundFile(rel, st.st_size)))
    out: list[ArtifactFile] = []
    for name, (root, f) in found.items():
        try:
            with opened_file(root, f.rel, reader, source=f.source) as p:
                size, digest = sha256_file(p)
        except OSError as e:
            log.warning("skipping artifact %s: %s", name, e)
            continue
        out.append(ArtifactFile(name=name, root=root, rel=f.rel, size=size, sha256=digest, source=f.source))
    return out
