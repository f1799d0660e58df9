"""Opening files a job chose, as root, without following the job out of its directory.

The agent runs as root and reads what jobs leave behind (artifacts, checkpoints, data-cache markers)
under directories the job could write. A path check followed by ``open(path)`` is a race the job can
win (swap a directory for a symlink in between), and a symlink the job planted leads anywhere on the
host. So every open here is relative to a directory file descriptor and resolved by the kernel:

- ``openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` (Linux 5.6+): links are followed only while
  they stay under the root, ``..`` never climbs above it, ``/proc/*/fd`` magic links are refused;
- elsewhere, a walk that opens one component at a time with ``O_NOFOLLOW``: no symlink is followed
  at all, which is stricter than needed and as safe.

Root bypasses file permissions, so a file that the kernel lets the agent open is not yet a file the
job could read. ``Reader`` replays the job user's permission checks (search on each directory, read
on the file) so that the agent never hands out bytes the job itself could not have read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

_SYS_OPENAT2 = 437  # the same number on every architecture with the generic syscall table and x86_64
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

MAX_DEPTH = 64
"""Deeper trees are not walked: a job can nest directories until PATH_MAX and past it."""


class Escape(OSError):
    """The path is not a plain relative path, or resolving it would leave its root."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EXDEV, message)


class _Openat2:
    """The raw system call, probed once; ``None`` where the kernel or libc lacks it."""

    def __init__(self) -> None:
        # ctypes only once a job's path is opened: an idle agent never does (0.3 MB).
        import ctypes

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        self._open_how = OpenHow
        self._syscall: Any = None
        self.available = False
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
        except (OSError, AttributeError):
            return
        fn.restype = ctypes.c_long
        self._syscall = fn
        probe = self.open(os.open("/", DIR_FLAGS), ".", os.O_RDONLY | os.O_DIRECTORY, close_dir=True)
        if probe is not None:
            os.close(probe)
            self.available = True

    def open(
        self, dir_fd: int, rel: str, flags: int, mode: int = 0, *, close_dir: bool = False
    ) -> int | None:
        """The new fd; None when the system call does not exist; raises OSError as open(2) would."""
        import ctypes

        if self._syscall is None:
            return None
        how = self._open_how(flags | os.O_CLOEXEC, mode, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
        try:
            for _ in range(8):  # EAGAIN: a rename raced the lookup; the kernel asks us to retry
                fd = int(self._syscall(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), 24))
                if fd >= 0:
                    return fd
                err = ctypes.get_errno()
                if err in (errno.ENOSYS, errno.EPERM) and not self.available:
                    return None  # no openat2, or a seccomp filter that forbids it
                if err != errno.EAGAIN:
                    raise OSError(err, f"{os.strerror(err)}: {rel}")
            raise OSError(errno.EAGAIN, f"{os.strerror(errno.EAGAIN)}: {rel}")
        finally:
            if close_dir:
                os.close(dir_fd)


_openat2: _Openat2 | None = None


def _kernel() -> _Openat2:
    global _openat2
    if _openat2 is None:
        _openat2 = _Openat2()
    return _openat2


def openat2_available() -> bool:
    return _kernel().available


def relative_parts(rel: str | PurePosixPath) -> tuple[str, ...]:
    """The components of a plain relative path; raises Escape for an absolute path, ``..``, NUL."""
    text = str(rel)
    if "\x00" in text:
        raise Escape("a path must not contain NUL bytes")
    if text.startswith("/"):
        raise Escape(f"{text!r} is not a relative path")
    parts = tuple(p for p in text.split("/") if p not in ("", "."))
    if ".." in parts:
        raise Escape(f"{text!r} climbs out of its directory")
    return parts


def open_beneath(root: int | Path, rel: str | PurePosixPath, flags: int = os.O_RDONLY, mode: int = 0) -> int:
    """Open ``rel`` under ``root`` (a directory fd, or a trusted path) without leaving it.

    Links inside the root are followed where openat2 exists and refused everywhere else. Raises
    Escape for a path that is not plainly relative or that would resolve outside, OSError otherwise.
    """
    parts = relative_parts(rel)
    root_fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW) if isinstance(root, Path) else root
    try:
        kernel = _kernel()
        if kernel.available:
            try:
                fd = kernel.open(root_fd, "/".join(parts) or ".", flags, mode)
            except OSError as e:
                if e.errno == errno.EXDEV:
                    raise Escape(f"{'/'.join(parts)!r} leads outside its directory") from e
                raise
            assert fd is not None
            return fd
        return _walk_open(root_fd, parts, flags, mode)
    finally:
        if isinstance(root, Path):
            os.close(root_fd)


def _walk_open(root_fd: int, parts: tuple[str, ...], flags: int, mode: int) -> int:
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=root_fd)
    cur = root_fd
    try:
        for name in parts[:-1]:
            nxt = os.open(name, DIR_FLAGS, dir_fd=cur)
            if cur != root_fd:
                os.close(cur)
            cur = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
    finally:
        if cur != root_fd:
            os.close(cur)


@dataclass(frozen=True)
class Reader:
    """Whose permissions a read is checked against (the job's uid and gid); ``None`` ids: anyone's."""

    uid: int | None = None
    gid: int | None = None

    @property
    def checks(self) -> bool:
        return self.uid is not None and self.uid != 0

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether the job user has ``want`` (R_OK / X_OK bits, 4 and 1) on the file ``st``."""
        if not self.checks:
            return True
        if st.st_uid == self.uid:
            bits = (st.st_mode >> 6) & 7
        elif st.st_gid == self.gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return bits & want == want


ANYONE = Reader()


@dataclass(frozen=True)
class FoundFile:
    """A regular file under a walked root: its name there and its size when it was found."""

    rel: PurePosixPath
    size: int
    source: str = ""
    """What to open under the root when ``rel`` is a link (its target, resolved beneath the root)."""


def walk_files(root: Path, rel: str | PurePosixPath = "", reader: Reader = ANYONE) -> Iterator[FoundFile]:
    """Every regular file under ``root/rel`` that ``reader`` may read, names relative to ``root``.

    Directories are entered without following links; a symlinked file counts where openat2 shows it
    stays under ``root`` (the same rule a job-side ``cp -r`` inside the sandbox would see).
    """
    base = PurePosixPath(*relative_parts(rel))
    try:
        root_fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return
    try:
        try:
            top = open_beneath(root_fd, base, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        yield from _walk(root_fd, top, base, reader, 0)
    finally:
        os.close(root_fd)


def _walk(
    root_fd: int, dir_fd: int, prefix: PurePosixPath, reader: Reader, depth: int
) -> Iterator[FoundFile]:
    try:
        if not reader.may(os.fstat(dir_fd), 5):
            return
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = prefix / entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= MAX_DEPTH:
                    continue
                try:
                    sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue
                yield from _walk(root_fd, sub, rel, reader, depth + 1)
            elif stat.S_ISREG(st.st_mode):
                if reader.may(st, 4):
                    yield FoundFile(rel, st.st_size)
            elif stat.S_ISLNK(st.st_mode) and openat2_available():
                try:
                    source = _link_source(root_fd, dir_fd, prefix, entry.name)
                    fd = _open_source(root_fd, source)
                except OSError:
                    continue
                try:
                    target = os.fstat(fd)
                finally:
                    os.close(fd)
                if stat.S_ISREG(target.st_mode) and reader.may(target, 4):
                    yield FoundFile(rel, target.st_size, source)
    finally:
        os.close(dir_fd)


def _link_source(root_fd: int, dir_fd: int, prefix: PurePosixPath, name: str) -> str:
    """What the link ``prefix/name`` points to, as a path relative to the root (possibly with
    ``..``, which the kernel keeps beneath it). A job sees its directories at the same absolute paths
    as the host, so an absolute link into the root is taken as relative to it."""
    target = os.readlink(name, dir_fd=dir_fd)
    if target.startswith("/"):
        root_real = os.readlink(f"/proc/self/fd/{root_fd}")
        if not (target + "/").startswith(root_real.rstrip("/") + "/"):
            raise Escape(f"{prefix / name} links outside its directory")
        combined = target[len(root_real) :].lstrip("/") or "."
    else:
        combined = str(prefix / target)
    return combined


def _open_source(root_fd: int, source: str) -> int:
    if "\x00" in source:
        raise Escape("a path must not contain NUL bytes")
    try:
        fd = _kernel().open(root_fd, source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise Escape(f"{source!r} leads outside its directory") from e
        raise
    if fd is None:
        raise Escape("links are followed only where openat2 exists")
    return fd


@contextlib.contextmanager
def opened_file(
    root: Path, rel: str | PurePosixPath, reader: Reader = ANYONE, *, source: str = ""
) -> Iterator[Path]:
    """A path that names exactly the regular file ``rel`` (or a found link's ``source``) under
    ``root`` while the block runs.

    The file is opened beneath its root once; the path handed out is its ``/proc/self/fd`` entry,
    which reopens that very inode, so code that wants a path (uploads) cannot be raced onto another.
    """
    if source:
        root_fd = os.open(root, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            fd = _open_source(root_fd, source)
        finally:
            os.close(root_fd)
    else:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file: {rel}")
        if not reader.may(st, 4):
            raise PermissionError(errno.EACCES, f"the job's user may not read {rel}")
        os.set_blocking(fd, True)
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def read_small(root: Path, rel: str | PurePosixPath, limit: int) -> bytes | None:
    """The first bytes of a regular file under ``root`` (at most ``limit``), or None when it cannot
    be read safely: missing, a link out, a FIFO or device (whose read could block forever)."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def chown_tree(top: Path, uid: int, gid: int) -> None:
    """Give a tree the agent made (an unpacked bundle, a new directory) to the job user; links are
    changed themselves, never followed."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
