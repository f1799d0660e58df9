"""Dollar budgets and usage: `yard usage`, `yard admin prices set|show` and `yard admin jobs
allow-over-budget`. (`yard admin team set --budget` lives with the other team flags in admin.py.)"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard.cli import output as out
from trainyard.cli.app import OutputOpt, admin_jobs_app, app, client_of, handle_errors, prices_app
from trainyard.cli.output import Format
from trainyard.model.pricing import format_money

_LABELS = {"team": "TEAM", "user": "USER", "gpu-type": "GPU TYPE", "spot": "CAPACITY"}


def _money(micros: int) -> str:
    return format_money(micros)


@app.command("usage", help="GPU-hours, cost and what spot saved; each team's monthly budget.")
@handle_errors
def usage(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="this team (default: yours; admins: all)")] = None,
    by: Annotated[
        str | None, typer.Option(help="group by team, user, gpu-type, spot (comma-separated)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="30d, 12h, month (the default: this calendar month, UTC) or 2026-11-01")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON (same as -o json)")] = False,
    output: OutputOpt = Format.table,
) -> None:
    report = client_of(ctx).usage(team, by, since)
    if as_json:
        output = Format.json
    if output is not Format.table:
        out.print_data(report, output)
        return
    dims: list[str] = report["by"]
    rows = [
        [
            *(str(g[d]) for d in dims),
            g["gpu_hours"],
            _money(g["cost_micros"]),
            _money(g["spot_saved_micros"]),
            str(g["attempts"]),
        ]
        for g in report["groups"]
    ]
    total = report["total"]
    if dims and rows:
        rows.append(
            [
                "total",
                *([""] * (len(dims) - 1)),
                total["gpu_hours"],
                _money(total["cost_micros"]),
                _money(total["spot_saved_micros"]),
                str(total["attempts"]),
            ]
        )
    elif not dims:
        rows = [
            [
                total["gpu_hours"],
                _money(total["cost_micros"]),
                _money(total["spot_saved_micros"]),
                str(total["attempts"]),
            ]
        ]
    scope = f"team {report['team']}" if report["team"] else "all teams"
    title = f"usage of {scope} from {out.fmt_time(report['since'])} to {out.fmt_time(report['until'])}"
    out.print_table([*(_LABELS[d] for d in dims), "GPU-HOURS", "COST", "SPOT SAVED", "ATTEMPTS"], rows, title)
    for b in report["budgets"]:
        sys.stdout.write(
            f"budget of team {b['team']}: {_money(b['spent_micros'])} of "
            f"{_money(b['monthly_budget_micros'])} spent in {b['month']} ({b['percent']}%, {b['level']})\n"
        )
    if not report["prices_set"]:
        out.note("no prices are set, so everything costs $0: see `yard admin prices set`")


def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items or []:
        kind, sep, price = item.partition("=")
        if not sep or not kind.strip() or not price.strip():
            raise typer.BadParameter(f"{item!r} must be TYPE=DOLLARS, e.g. a100=2.48", param_hint=flag)
        found[kind.strip().lower()] = price.strip()
    return found


def read_prices_file(path: Path) -> dict[str, Any]:
    """A settings file: TOML (``.toml``) or JSON; its top level may hold the table under ``prices``."""
    try:
        text = path.read_text()
    except OSError as e:
        raise typer.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--file") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise typer.BadParameter(f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("prices"), dict):
        data = data["prices"]
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold a table of prices", param_hint="--file")
    return data


@prices_app.command("set", help="Set prices in dollars (admin): from a file, flags, or both (flags win).")
@handle_errors
def prices_set(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="a TOML or JSON settings file: the whole table")
    ] = None,
    gpu: Annotated[
        list[str] | None, typer.Option(help="per GPU-hour of a type, TYPE=DOLLARS (repeatable)")
    ] = None,
    gpu_default: Annotated[str | None, typer.Option(help="per GPU-hour of a type not listed")] = None,
    cpu: Annotated[str | None, typer.Option(help="per core-hour")] = None,
    gib: Annotated[str | None, typer.Option(help="per GiB-hour of memory")] = None,
    spot_discount: Annotated[str | None, typer.Option(help="share off on spot capacity: 0.6 or 60%")] = None,
    output: OutputOpt = Format.table,
) -> None:
    client = client_of(ctx)
    # Without a file, flags change only what they name: the rest stays as set.
    table: dict[str, Any] = read_prices_file(file) if file is not None else dict(client.prices()["prices"])
    by_type = dict(table.get("gpu_hour") or {})
    by_type.update(_pairs(gpu, "--gpu"))
    table["gpu_hour"] = by_type
    for key, value in (
        ("gpu_hour_default", gpu_default),
        ("cpu_hour", cpu),
        ("gib_hour", gib),
        ("spot_discount", spot_discount),
    ):
        if value is not None:
            table[key] = value
    _print_prices(client.set_prices(table), output)


@prices_app.command("show", help="Show the prices.")
@handle_errors
def prices_show(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    _print_prices(client_of(ctx).prices(), output)


def _print_prices(answer: dict[str, Any], output: Format) -> None:
    if output is not Format.table:
        out.print_data(answer, output)
        return
    p = answer["prices"]
    rows = [[f"gpu-hour ({kind})", f"${price}"] for kind, price in sorted(p["gpu_hour"].items())]
    rows += [
        ["gpu-hour (other types)", f"${p['gpu_hour_default']}"],
        ["core-hour", f"${p['cpu_hour']}"],
        ["GiB-hour", f"${p['gib_hour']}"],
        ["spot discount", f"{float(p['spot_discount']) * 100:g}%"],
    ]
    by = (
        f"set by {answer['updated_by']} at {out.fmt_time(answer['updated_at'])}"
        if answer["updated_at"]
        else "not set"
    )
    out.print_table(["RESOURCE", "ON DEMAND"], rows, title=f"prices ({by})")


@admin_jobs_app.command(
    "allow-over-budget",
    help="Let one job (an array: all its tasks) start although its team is over its monthly budget.",
)
@handle_errors
def allow_over_budget(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB_ID")]) -> None:
    answer = client_of(ctx).allow_over_budget(job_id)
    sys.stdout.write(
        f"{answer['job']} (team {answer['team']}) may start although the team is over its budget\n"
    )
