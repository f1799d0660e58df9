"""What the commands that run the platform on this machine share: `yard up`, `server`, `worker`,
`admin replay` and `admin migrate` (the state directory, settings, logging, database errors).

Settings, SQLAlchemy and the server are imported only when such a command runs, so that `yard --help`
and the job commands start fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from trainyard.server.settings import Settings

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state directory (default $TRAINYARD_HOME or ./.trainyard)")
]


def home_dir(home: Path | None) -> Path:
    """The state directory: `--home`, else $TRAINYARD_HOME, else ./.trainyard, made absolute."""
    return (home or Path(os.environ.get("TRAINYARD_HOME", ".trainyard"))).resolve()


def settings_for(home: Path, **overrides: object) -> Settings:
    """The control plane's settings in `home`, with the options that were given (not None)."""
    from trainyard.server.settings import Settings

    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(home=home, **values)  # type: ignore[arg-type]


def setup_logging(verbose: bool) -> None:
    """Log to stderr, at DEBUG with `--verbose`; the chatty libraries only from WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "httpx", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be reached or named is a clear one-line error, not a traceback."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.ArgumentError as e:
        typer.echo(f"error: TRAINYARD_DATABASE_URL is not a database URL: {e}", err=True)
        raise typer.Exit(1) from None
    except sa.exc.OperationalError as e:
        typer.echo(f"error: cannot reach the database: {e.orig}", err=True)
        raise typer.Exit(1) from None
