"""`yard logs search QUERY`: full-text search of the log lines you may see.

``yard logs ID`` is a command taking a job id, so ``search`` (never a job id: ids start with ``j``)
is routed here by that command (``cli/jobs.py``) with the rest of its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from trainyard.cli import output as out
from trainyard.cli.app import client_of, handle_errors

SEARCH_WORD = "search"
"""``yard logs search ...``: the first argument of `yard logs` that means a search."""

search_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


def _line(hit: dict[str, Any]) -> str:
    return f"{hit['job_id']}/{hit['attempt']} {hit['time']} @{hit['offset']}: {hit['line']}"


@search_app.command(
    help="Search the logs of the jobs you may see for QUERY's words as a phrase (case-insensitive), "
    "newest first. Lines are searchable a few seconds after the worker seals them."
)
@handle_errors
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY")],
    team: Annotated[
        str | None, typer.Option(help="Only this team's jobs (yours unless you are an admin)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only lines sealed within this long, e.g. 1d or 2h")
    ] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's lines")] = None,
    limit: Annotated[int, typer.Option(help="At most N lines", min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page's next_cursor")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON page")] = False,
) -> None:
    page = client_of(ctx).search_logs(query, team=team, since=since, job=job, limit=limit, cursor=cursor)
    if as_json:
        out.print_json(page)
        return
    for hit in page["hits"]:
        typer.echo(_line(hit))
    if page.get("next_cursor"):
        out.note(f"more lines: --cursor {page['next_cursor']}")


def run(ctx: typer.Context, args: Sequence[str]) -> None:
    """Run `yard logs search` with ``args`` (what followed ``search``) in the caller's context."""
    command = typer.main.get_command(search_app)
    command.main(args=list(args), prog_name="yard logs search", obj=ctx.obj, standalone_mode=True)
