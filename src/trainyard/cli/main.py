"""`yard`: the Trainyard command line.

The Typer apps live in ``trainyard.cli.app``; each command module defines its commands there at module
level, and importing it registers them. Job commands talk to the control plane through
:class:`trainyard.client.Client`; the platform commands (`yard up`, `yard server`, `yard worker`) run
it on this machine.

The command modules are imported when the apps are first used: ``main`` imports every one, except
for the platform commands, which register only their own. Those processes stay up (an agent, the
control plane), and every command's imports (the SDK, rich, YAML, the simulator) were 10 MB of each
(bench/footprint.py). ``from trainyard.cli.main import app`` still gives the app with every command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainyard.cli.app import State, admin_app, app

# `yard --help` lists the commands in the order they were registered: keep this order.
COMMAND_MODULES = (
    "simulate",  # simulate
    "jobs",  # submit, get, ls, logs, cancel, restart, events, artifacts
    "sbatch",  # sbatch
    "fleet",  # workers, queues
    "platform",  # up, server
    "worker",  # worker
    "admin",  # admin ...
    "secret",  # secret ...
    "usage",  # usage, admin prices ..., admin jobs allow-over-budget
)
PLATFORM_COMMANDS = {"up": "platform", "server": "platform", "worker": "worker"}


def _register(modules: Iterable[str]) -> None:
    for name in modules:
        importlib.import_module(f"trainyard.cli.{name}")


def __getattr__(name: str) -> object:
    if name in ("State", "admin_app", "app"):
        _register(COMMAND_MODULES)
        from trainyard.cli import app as apps

        return getattr(apps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """The `yard` entry point."""
    args = list(argv) if argv is not None else sys.argv[1:]
    if args and args[0] in PLATFORM_COMMANDS:
        # httpx's package imports its command-line client (click, rich, pygments: 3-4 MB) whenever
        # those are installed, as typer's rich is; a None entry makes that import fail, and httpx
        # goes without its CLI, which nothing here runs.
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
        # Likewise uvicorn's package imports its --reload supervisor, and that imports watchfiles
        # (1 MB of native code) whenever it is installed; uvicorn falls back to its stat reloader,
        # and no platform process reloads.
        sys.modules.setdefault("watchfiles", None)  # type: ignore[arg-type]
    # These processes stay up: their plain command lines (every agent and replica `yard up` starts,
    # and `yard up` as most people type it) run without Typer (trainyard.cli.plain).
    if args and args[0] == "worker":
        from trainyard.cli.worker_options import main as worker_main

        worker_main(args[1:])
        return
    if args and args[0] in ("up", "server"):
        from trainyard.cli.platform_run import main as platform_main

        platform_main(args[0], args[1:])
        return
    typer_main(args)


def typer_main(args: list[str]) -> None:
    """`yard ARGS` through the Typer app, with only the command modules that ARGS needs."""
    _register([PLATFORM_COMMANDS[args[0]]] if args and args[0] in PLATFORM_COMMANDS else COMMAND_MODULES)
    from trainyard.cli.app import app

    app(args=args, prog_name="yard")


__all__ = ["State", "admin_app", "app", "main", "typer_main"]
