"""What the commands that run the platform on this machine share, without Typer (their plain command
lines run without it, ``trainyard.cli.plain``): the state directory, settings, logging, database
errors. Settings and SQLAlchemy are imported only when such a command runs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard.server.settings import Settings


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


def settings_for(home: Path, **overrides: object) -> Settings:
    """The control plane's settings in `home`, with the options that were given (not None)."""
    from trainyard.server.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(home=home, **values)  # type: ignore[arg-type]


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be reached or named is a clear one-line error, not a traceback."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.ArgumentError as e:
        print(f"error: TRAINYARD_DATABASE_URL is not a database URL: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except sa.exc.OperationalError as e:
        print(f"error: cannot reach the database: {e.orig}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
