"""What the commands that run the platform on this machine share: `yard up`, `server`, `worker`,
`admin replay` and `admin migrate` (the state directory, settings, logging, database errors).

Only ``--home`` is declared here, for Typer; the rest is in ``trainyard.cli.home``, which the plain
command lines of `yard up`, `server` and `worker` use without importing Typer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainyard.cli.home import database_errors, home_dir, settings_for, setup_logging

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="state directory (default $TRAINYARD_HOME or ./.trainyard)")
]


__all__ = ["HomeOpt", "database_errors", "home_dir", "settings_for", "setup_logging"]
