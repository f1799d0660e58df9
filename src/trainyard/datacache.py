"""The worker's local data cache: datasets that outlive the jobs that fetched them.

Standard library only: ``trainyard.job`` (imported by jobs, whatever their environment) uses it.

Jobs find the directory in ``$TRAINYARD_DATA_CACHE`` and keep each dataset in a subdirectory of
its own (``trainyard.job.dataset_dir(uri)``), which records the URI it holds in a ``.trainyard-uri``
file once complete. The agent lists those markers with every heartbeat (``trainyard.worker.cache_scan``,
which also keeps one directory per team), and the scheduler prefers a
worker that already holds a job's ``data.uris`` over one that would download them again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MARKER = ".trainyard-uri"
ENV = "TRAINYARD_DATA_CACHE"
MAX_REPORTED = 1000  # a worker caching more than this reports its first ones (by directory name)


def dataset_dir(cache: Path, uri: str) -> Path:
    """Where ``uri``'s data lives in the cache: one stable directory per URI."""
    return cache / hashlib.sha256(uri.encode()).hexdigest()[:32]
