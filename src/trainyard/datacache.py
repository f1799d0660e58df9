"""The worker's local data cache: datasets that outlive the jobs that fetched them.

Standard library only: ``trainyard.job`` (imported by jobs, whatever their environment) uses it.

Jobs find the directory in ``$TRAINYARD_DATA_CACHE`` and keep each dataset in a subdirectory of
its own (``trainyard.job.dataset_dir(uri)``), which records the URI it holds in a ``.trainyard-uri``
file once complete. The agent lists those markers with every heartbeat, and the scheduler prefers a
worker that already holds a job's ``data.uris`` over one that would download them again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MARKER = ".trainyard-uri"
ENV = "TRAINYARD_DATA_CACHE"
MAX_REPORTED = 1000  # a worker caching more than this reports its first ones (by directory name)


def dataset_dir(cache: Path, uri: str) -> Path:
    """Where ``uri``'s data lives in the cache: one stable directory per URI."""
    return cache / hashlib.sha256(uri.encode()).hexdigest()[:32]


def cached_uris(cache: Path) -> list[str]:
    """URIs of the complete datasets in ``cache`` (a directory without its marker is incomplete)."""
    out: list[str] = []
    try:
        entries = sorted(os.scandir(cache), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        if len(out) >= MAX_REPORTED:
            break
        try:
            uri = (Path(entry.path) / MARKER).read_text().strip()
        except OSError:
            continue
        if uri:
            out.append(uri)
    return out
