"""The agent's view of the data cache: one directory per team, and which datasets are complete.

Jobs of a team see only ``<cache>/<team>`` (as ``$TRAINYARD_DATA_CACHE``), read-write; other teams'
directories are not in their sandbox at all, so a team cannot read another's data nor poison it.
The agent reads each dataset's marker itself, as root, from directories jobs write: every read is
beneath the cache with no link followed out, bounded in size, and only a plain one-line URI counts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from trainyard.datacache import MARKER, MAX_REPORTED
from trainyard.worker.beneath import read_small

_TEAM_DIR = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MAX_URI_BYTES = 2048
SHARED = "_shared"
"""The directory of jobs that come without a team (an older control plane)."""


def team_dir_name(team: str) -> str:
    """The team's directory name: its name when that is a plain one (team names are checked at
    creation), else the shared fallback: a strange name never becomes a path."""
    return team if _TEAM_DIR.fullmatch(team) and team not in (".", "..") else SHARED


def team_cache_dir(cache: Path, team: str) -> Path:
    return cache / team_dir_name(team)


def _plain_uri(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        uri = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not uri or len(uri.encode()) > MAX_URI_BYTES or not uri.isprintable():
        return None
    return uri


def cached_uris(cache: Path) -> list[str]:
    """URIs of the complete datasets in every team's directory (a dataset without its marker is
    incomplete), by team and then directory name, at most MAX_REPORTED."""
    out: list[str] = []
    try:
        teams = sorted(e.name for e in os.scandir(cache) if e.is_dir(follow_symlinks=False))
    except OSError:
        return out
    for team in teams:
        try:
            datasets = sorted(e.name for e in os.scandir(cache / team) if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        for name in datasets:
            if len(out) >= MAX_REPORTED:
                return out
            uri = _plain_uri(read_small(cache, PurePosixPath(team, name, MARKER), MAX_URI_BYTES + 1))
            if uri is not None and uri not in out:
                out.append(uri)
    return out
