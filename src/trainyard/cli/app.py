"""The `yard` Typer apps and what every command module shares.

Each command module (``jobs``, ``fleet``, ``secret``, ``admin``, ``platform``, ``worker``,
``simulate``) imports the apps from here and defines its commands at module level with
``@app.command()``; ``trainyard.cli.main`` imports those modules so that they register. This module
imports no command module, so the CLI has no import cycle.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

from trainyard.cli.formats import Format

if TYPE_CHECKING:
    import httpx

    from trainyard.client.sdk import Client

# The SDK, rich and YAML are imported by the commands that use them, not here: `yard worker` and
# `yard up` stay up for days, and these were 10 MB of each of their processes (bench/footprint.py).

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class State:
    """Per-invocation settings; tests pass one as ``obj=`` with a mock ``transport``."""

    url: str | None = None
    token: str | None = None
    transport: httpx.BaseTransport | None = None
    reconnect_delay: float = 1.0
    poll_interval: float = 1.0

    def client(self) -> Client:
        from trainyard.client.sdk import Client

        return Client(
            url=self.url,
            token=self.token,
            transport=self.transport,
            reconnect_delay=self.reconnect_delay,
            poll_interval=self.poll_interval,
        )


USUAL_ORDER = (
    *("simulate", "submit", "get", "ls", "tasks", "logs", "cancel", "restart", "events", "artifacts"),
    *("sbatch", "workers", "queues", "up", "server", "worker", "usage", "admin", "secret"),
    # `yard admin ...`
    *("create-user", "drain", "audit", "prune", "replay", "migrate", "token", "team", "prices", "jobs"),
)
"""How `yard --help` (and `yard admin --help`) list the commands: what a user reaches for first,
first. Fixed here, because registration order depends on which command module was imported first."""


class _UsualOrder(TyperGroup):
    # ctx is typer's click Context: typer 0.2x vendors click (typer._click), older ones use click
    # itself, so it is not named here.
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        known = {name: i for i, name in enumerate(USUAL_ORDER)}
        return sorted(names, key=lambda n: (known.get(n, len(known)), names.index(n)))


app = typer.Typer(
    cls=_UsualOrder,
    name="yard",
    help="Trainyard: submit and watch ML jobs, and run the platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
admin_app = typer.Typer(cls=_UsualOrder, help="Administration: users, database.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
secret_app = typer.Typer(
    help="Team secrets: given to jobs that name them, never shown again.", no_args_is_help=True
)
app.add_typer(secret_app, name="secret")
token_app = typer.Typer(help="API tokens: create with an expiry, list, revoke.", no_args_is_help=True)
admin_app.add_typer(token_app, name="token")
team_app = typer.Typer(help="Teams: fair-share weight, quotas and monthly budget.", no_args_is_help=True)
admin_app.add_typer(team_app, name="team")
prices_app = typer.Typer(
    help="Prices: per GPU-hour by type, per core-hour, per GiB-hour, the spot discount.", no_args_is_help=True
)
admin_app.add_typer(prices_app, name="prices")
admin_jobs_app = typer.Typer(
    help="Admin actions on one job: let it through its team's budget.", no_args_is_help=True
)
admin_app.add_typer(admin_jobs_app, name="jobs")

OutputOpt = Annotated[
    Format, typer.Option("-o", "--output", help="table, json or yaml", case_sensitive=False)
]


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Control plane URL, or replicas' URLs separated by commas, tried in turn when one is down"
            " (else TRAINYARD_URL, $TRAINYARD_HOME/url)",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="API token (else TRAINYARD_TOKEN, $TRAINYARD_HOME/token)")
    ] = None,
) -> None:
    state = ctx.ensure_object(State)
    if url:
        # Imported only when --url is given, so `yard worker` and `yard up` still do not load the SDK.
        from trainyard.client.endpoints import parse_urls

        try:
            parse_urls(url)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--url") from None
        state.url = url
    if token:
        state.token = token


def client_of(ctx: typer.Context) -> Client:
    """The SDK client for this invocation (`--url`, `--token`, or a test's transport)."""
    try:
        return ctx.ensure_object(State).client()
    except ValueError as exc:  # a bad URL list in TRAINYARD_URL or $TRAINYARD_HOME/url
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the SDK's errors into `error: ...` on stderr and exit status 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from trainyard.cli import output as out
        from trainyard.client.bundle import BundleError
        from trainyard.client.sdk import TrainyardError

        try:
            return fn(*args, **kwargs)
        except TrainyardError as exc:
            out.print_error(exc)
        except (BundleError, TimeoutError) as exc:
            out.print_error(str(exc))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # `yard logs ID | head` closes the pipe early; that is not an error.
            sys.stderr.close()
            raise typer.Exit(0) from None
        raise typer.Exit(1)

    return wrapper


__all__ = [
    "OutputOpt",
    "State",
    "admin_app",
    "admin_jobs_app",
    "app",
    "client_of",
    "handle_errors",
    "prices_app",
    "secret_app",
    "team_app",
    "token_app",
]
