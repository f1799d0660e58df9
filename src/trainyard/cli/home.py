"""The state directory and logging of the commands that run the platform on this machine, without Typer:
`yard worker`'s plain path (``trainyard.cli.worker_options``) runs the agent without importing it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def home_dir(home: Path | None) -> Path:
    """The state directory: `--home`, else $TRAINYARD_HOME, else ./.trainyard, made absolute."""
    return (home or Path(os.environ.get("TRAINYARD_HOME", ".trainyard"))).resolve()


def setup_logging(verbose: bool) -> None:
    """Log to stderr, at DEBUG with `--verbose`; the chatty libraries only from WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
