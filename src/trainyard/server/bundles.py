"""Workdir bundles (``POST /v1/workdirs``): what a tar.gz would unpack to, checked before it is kept.

A bundle is small on the wire (``TRAINYARD_WORKDIR_LIMIT``) but may unpack to far more: 1 MiB of
gzip holds 1 GiB of zeros. The upload is read once as a stream (``tarfile`` mode ``r|gz``): each
member's header states its size, so a member past the limit is refused as soon as its header is
read, before its data is decompressed, and nothing is ever written out. The worker checks the same
limits again when it unpacks (it does not trust what the control plane stored).
"""

from __future__ import annotations

import tarfile
import zlib
from typing import IO

from trainyard.model.quantity import human_memory


class BundleRefused(Exception):
    """Why a bundle is refused: ``status`` 413 (over a limit) or 422 (not a tar.gz archive)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_bundle(f: IO[bytes], max_bytes: int, max_files: int) -> tuple[int, int]:
    """Read the tar.gz in ``f`` (from its current position) through to its end without unpacking
    it: the members and total size it would unpack to, or BundleRefused. Blocking: run it in a
    thread."""
    files = total = 0
    try:
        with tarfile.open(fileobj=f, mode="r|gz") as tar:
            for member in tar:
                files += 1
                if files > max_files:
                    raise BundleRefused(
                        413,
                        f"the bundle holds more than {max_files} files "
                        "(TRAINYARD_WORKDIR_FILE_LIMIT on the control plane)",
                    )
                total += max(member.size, 0)
                if total > max_bytes:
                    raise BundleRefused(
                        413,
                        f"the bundle unpacks to more than {human_memory(max_bytes)} "
                        "(TRAINYARD_WORKDIR_UNPACKED_LIMIT on the control plane)",
                    )
    except (tarfile.TarError, zlib.error, EOFError, OSError, ValueError) as e:
        # OSError: gzip's "Not a gzipped file"; EOFError: a truncated stream; ValueError: a bad
        # number in a header.
        raise BundleRefused(422, f"the bundle is not a valid tar.gz archive ({type(e).__name__})") from None
    return files, total
