"""Files an attempt leaves: its artifacts, its checkpoint bundle; and the bundles it starts from."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class UnsafeArchive(Exception):
    """A bundle that is not a tar.gz or would write outside its destination."""


def unpack_tar(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz; members that escape ``dest`` (``../``, absolute paths, outward links) are refused."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(dest, filter="data")
    except tarfile.FilterError as e:
        raise UnsafeArchive(f"refused archive member: {e}") from e
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UnsafeArchive(f"cannot unpack archive: {e}") from e


def has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


def pack_dir(src: Path, archive: Path) -> None:
    """tar.gz the contents of ``src`` with names relative to it; links are stored, never followed."""
    with tarfile.open(archive, "w:gz") as tf:
        for child in sorted(src.iterdir()):
            tf.add(child, arcname=child.name)


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    """The artifact's path: relative to the artifact dir, or to the working dir for ``artifact_paths``."""
    path: Path
    size: int
    sha256: str


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def collect_artifacts(
    artifact_dir: Path, work_dir: Path, artifact_paths: Sequence[str]
) -> list[ArtifactFile]:
    """Every regular file under ``artifact_dir`` and the ``artifact_paths`` (relative to ``work_dir``).

    Missing paths are skipped. A symlink is followed only when it stays inside the directory it was
    found in (the artifact dir, or the working dir), so a job cannot upload the node's files.
    A name found twice is taken once, the artifact dir first.
    """
    found: dict[str, Path] = {}
    # The job owns its artifact dir and could swap it for a link to "/".
    if not artifact_dir.is_symlink():
        _walk(artifact_dir, artifact_dir, PurePosixPath(), found)
    work_real = work_dir.resolve()
    for entry in artifact_paths:
        rel = PurePosixPath(entry.strip("/"))
        if not rel.parts or rel.is_absolute() or ".." in rel.parts:
            log.warning("ignoring artifact path %r: not inside the working directory", entry)
            continue
        target = work_dir.joinpath(*rel.parts)
        try:
            real = target.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(work_real):
            log.warning("ignoring artifact path %r: it leads outside the working directory", entry)
            continue
        if real.is_dir():
            _walk(target, work_dir, rel, found)
        elif real.is_file():
            found.setdefault(str(rel), real)
    out: list[ArtifactFile] = []
    for name, path in found.items():
        try:
            size, digest = sha256_file(path)
        except OSError as e:
            log.warning("skipping artifact %s: %s", name, e)
            continue
        out.append(ArtifactFile(name=name, path=path, size=size, sha256=digest))
    return out


def _walk(top: Path, jail: Path, prefix: PurePosixPath, found: dict[str, Path]) -> None:
    try:
        jail_real = jail.resolve(strict=True)
    except (OSError, RuntimeError):
        return
    for dirpath, _dirnames, filenames in os.walk(top, followlinks=False):
        base = Path(dirpath)
        rel_dir = PurePosixPath(*base.relative_to(top).parts)
        for fname in filenames:
            p = base / fname
            try:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    real = p.resolve(strict=True)
                    if not real.is_relative_to(jail_real) or not real.is_file():
                        continue
                    p = real
                elif not stat.S_ISREG(st.st_mode):
                    continue
            except (OSError, RuntimeError):
                continue
            found.setdefault(str(prefix / rel_dir / fname), p)
