"""Team secrets: `yard secret set`, `ls` and `rm`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trainyard.cli import output as out
from trainyard.cli.app import OutputOpt, client_of, handle_errors, secret_app
from trainyard.cli.output import Format


@secret_app.command(
    "set",
    help="Store a team secret; the value is read from stdin (or prompted for, hidden). "
    "Jobs get it as the environment variable NAME when their spec says secrets: [NAME].",
)
@handle_errors
def secret_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="secret (and environment variable) name, e.g. HF_TOKEN")],
    team: Annotated[str | None, typer.Option(help="whose secret (default: your team)")] = None,
) -> None:
    value = typer.prompt(f"value of {name}", hide_input=True) if sys.stdin.isatty() else sys.stdin.read()
    value = value.removesuffix("\n")  # `echo value | yard secret set` must not store the newline
    s = client_of(ctx).set_secret(name, value, team)
    sys.stdout.write(f"secret {s['name']} of team {s['team']} set\n")


@secret_app.command("ls", help="List a team's secrets (names and dates only).")
@handle_errors
def secret_ls(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="whose secrets (default: your team)")] = None,
    output: OutputOpt = Format.table,
) -> None:
    items = client_of(ctx).secrets(team)
    if output is not Format.table:
        out.print_data({"secrets": items}, output)
        return
    rows = [[x["name"], x["team"], out.fmt_time(x["updated_at"]), x["updated_by"]] for x in items]
    out.print_table(["NAME", "TEAM", "UPDATED", "BY"], rows)


@secret_app.command("rm", help="Delete a team secret.")
@handle_errors
def secret_rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument()],
    team: Annotated[str | None, typer.Option(help="whose secret (default: your team)")] = None,
) -> None:
    client_of(ctx).delete_secret(name, team)
    sys.stdout.write(f"secret {name} deleted\n")
