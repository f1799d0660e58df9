"""Working-directory bundles for `yard submit --workdir`: a deterministic tar.gz of a source tree."""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from trainyard.model.quantity import parse_memory

DEFAULT_LIMIT_BYTES = 100 * 1024**2
IGNORE_FILE = ".trainyardignore"

EXCLUDED: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "node_modules",
    ".trainyard",
    ".ipynb_checkpoints",
    ".DS_Store",
)
"""Names never worth shipping to a worker: VCS metadata, environments, caches."""


class BundleError(Exception):
    """The directory cannot be bundled (too large, unreadable, not a directory)."""


def workdir_limit() -> int:
    """The size limit in bytes: ``TRAINYARD_WORKDIR_LIMIT`` (``200Mi``, ``1G``) or 100 MiB."""
    raw = os.environ.get("TRAINYARD_WORKDIR_LIMIT")
    if not raw:
        return DEFAULT_LIMIT_BYTES
    try:
        return parse_memory(raw)
    except ValueError as exc:
        raise BundleError(f"TRAINYARD_WORKDIR_LIMIT: {exc}") from None


def human_size(n: float) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            text = f"{n / size:.1f}"
            return f"{text.removesuffix('.0')} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    st: os.stat_result
    link: str | None = None


class _Ignore:
    """Built-in exclusions plus `.trainyardignore` patterns.

    A pattern without a slash matches any path component's name (like `.gitignore`); one with a
    slash matches the path from the bundle root. A trailing slash limits a pattern to directories.
    """

    def __init__(self, patterns: list[str]) -> None:
        self._names: list[tuple[str, bool]] = [(p, False) for p in EXCLUDED]
        self._paths: list[tuple[str, bool]] = []
        for raw in patterns:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            dir_only = line.endswith("/")
            pat = line.rstrip("/").lstrip("/")
            if not pat:
                continue
            if "/" in line.rstrip("/"):
                self._paths.append((pat, dir_only))
            else:
                self._names.append((pat, dir_only))

    def __call__(self, rel: str, is_dir: bool) -> bool:
        name = rel.rsplit("/", 1)[-1]
        for pat, dir_only in self._names:
            if (is_dir or not dir_only) and fnmatch.fnmatchcase(name, pat):
                return True
        return any(
            (is_dir or not dir_only) and fnmatch.fnmatchcase(rel, pat) for pat, dir_only in self._paths
        )


def _read_ignore(root: Path) -> list[str]:
    path = root / IGNORE_FILE
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def _collect(root: Path) -> list[_Entry]:
    ignore = _Ignore(_read_ignore(root))
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        kept_dirs: list[str] = []
        for name in sorted(dirnames):
            path = base / name
            rel = prefix + name
            if path.is_symlink():
                # os.walk lists a symlink to a directory among dirnames; it is bundled as a link.
                filenames.append(name)
                continue
            if ignore(rel, True):
                continue
            kept_dirs.append(name)
            entries.append(_Entry(rel, path, path.lstat()))
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            path = base / name
            rel = prefix + name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                if ignore(rel, path.is_dir()):
                    continue
                target = (base / os.readlink(path)).resolve()
                # A link out of the tree would ship nothing useful and may expose the submitter's files.
                if not _inside(root, target):
                    continue
                entries.append(_Entry(rel, path, st, os.path.relpath(target, base.resolve())))
            elif stat.S_ISREG(st.st_mode):
                if ignore(rel, False):
                    continue
                entries.append(_Entry(rel, path, st))
            # sockets, fifos and devices cannot be meaningfully shipped
    entries.sort(key=lambda e: e.rel)
    return entries


def _too_large(root: Path, files: list[_Entry], total: int, limit: int) -> BundleError:
    biggest = sorted(files, key=lambda e: (-e.st.st_size, e.rel))[:5]
    listed = ", ".join(f"{e.rel} ({human_size(e.st.st_size)})" for e in biggest)
    return BundleError(
        f"workdir {root} is {human_size(total)}, over the {human_size(limit)} limit; "
        f"largest files: {listed}; move data to object storage or add it to {IGNORE_FILE}"
    )


def make_bundle(directory: Path, limit_bytes: int | None = None) -> bytes:
    """A gzipped tar of ``directory`` with paths relative to it.

    The same tree always gives the same bytes (sorted entries, kept mtimes, owner 0, no gzip
    timestamp), so the server can deduplicate uploads by hash. ``limit_bytes`` bounds the total
    uncompressed size of the files; None reads ``TRAINYARD_WORKDIR_LIMIT``.
    """
    root = Path(directory).resolve()
    if not root.is_dir():
        raise BundleError(f"workdir {directory} is not a directory")
    limit = workdir_limit() if limit_bytes is None else limit_bytes
    entries = _collect(root)
    files = [e for e in entries if e.link is None and stat.S_ISREG(e.st.st_mode)]
    total = sum(e.st.st_size for e in files)
    if total > limit:
        raise _too_large(root, files, total, limit)

    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for e in entries:
            info = tarfile.TarInfo(e.rel)
            info.mtime = int(e.st.st_mtime)
            info.mode = stat.S_IMODE(e.st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                info.mode = 0o777
                tar.addfile(info)
            elif stat.S_ISDIR(e.st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = e.st.st_size
                with e.path.open("rb") as fh:
                    tar.addfile(info, fh)
    return buf.getvalue()
