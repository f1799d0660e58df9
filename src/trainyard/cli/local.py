"""What the commands that run the platform on this machine share: `yard up`, `server`, `worker`,
`admin replay` and `admin migrate` (the state directory, settings, logging, database errors).

Settings, SQLAlchemy and the server are imported only when such a command runs, so that `yard --help`
and the job commands start fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from trainyard.cli.home import home_dir, setup_logging

if TYPE_CHECKING:
    from trainyard.server.settings import Settings

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state directory (default $TRAINYARD_HOME or ./.trainyard)")
]


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
        typer.echo(f"error: TRAINYARD_DATABASE_URL is not a database URL: {e}", err=True)
        raise typer.Exit(1) from None
    except sa.exc.OperationalError as e:
        typer.echo(f"error: cannot reach the database: {e.orig}", err=True)
        raise typer.Exit(1) from None


__all__ = ["HomeOpt", "database_errors", "home_dir", "settings_for", "setup_logging"]
