"""`yard`: the Trainyard command line.

The Typer apps live in ``trainyard.cli.app``; each command module defines its commands there at module
level, and importing it registers them. Job commands talk to the control plane through
:class:`trainyard.client.Client`; the platform commands (`yard up`, `yard server`, `yard worker`) run
it on this machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainyard.cli.app import State, admin_app, app

# `yard --help` lists the commands in the order they were registered: keep this order.
# isort: off
from trainyard.cli import simulate  # noqa: F401  (simulate)
from trainyard.cli import jobs  # noqa: F401  (submit, get, ls, logs, cancel, restart, events, artifacts)
from trainyard.cli import sbatch  # noqa: F401  (sbatch)
from trainyard.cli import fleet  # noqa: F401  (workers, queues)
from trainyard.cli import platform  # noqa: F401  (up, server)
from trainyard.cli import worker  # noqa: F401  (worker)
from trainyard.cli import admin  # noqa: F401  (admin ...)
from trainyard.cli import secret  # noqa: F401  (secret ...)
from trainyard.cli import usage  # noqa: F401  (usage, admin prices ..., admin jobs allow-over-budget)

# isort: on


def main(argv: Sequence[str] | None = None) -> None:
    """The `yard` entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="yard")


__all__ = ["State", "admin_app", "app", "main"]
