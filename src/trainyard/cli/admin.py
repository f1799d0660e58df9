"""Administration: `yard admin create-user`, `drain`, `audit`, `replay`, `migrate`, and the `token`
and `team` groups.

Most go through the API; `replay` and `migrate` work on this machine's store directly.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from trainyard.cli import output as out
from trainyard.cli.app import OutputOpt, admin_app, client_of, handle_errors, team_app, token_app
from trainyard.cli.local import HomeOpt, database_errors, home_dir
from trainyard.cli.output import Format, cell

# `yard admin --help` lists the commands in the order they are defined here.


@admin_app.command(
    "create-user", help="Create a user and print their API token (admins; team admins for their team)."
)
@handle_errors
def create_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name")],
    team: Annotated[str, typer.Option(help="The user's team")],
    role: Annotated[str, typer.Option(help="viewer, user, team-admin or admin")] = "user",
    tier: Annotated[
        str | None, typer.Option(help="submission limit tier, e.g. free, standard, enterprise")
    ] = None,
) -> None:
    token = client_of(ctx).create_user(name, team, role, tier)
    sys.stdout.write(f"{token}\n")


@admin_app.command(
    "drain",
    help="Drain a worker (id or name): no new work goes there; its running jobs are preempted "
    "(checkpointed and requeued, without using a retry) at the deadline, or at once without one.",
)
@handle_errors
def drain(
    ctx: typer.Context,
    worker: Annotated[str, typer.Argument(metavar="WORKER", help="worker id or name")],
    deadline: Annotated[
        str | None, typer.Option(help="how long running jobs may go on first, e.g. 10m")
    ] = None,
) -> None:
    w = client_of(ctx).drain_worker(worker, deadline)
    sys.stdout.write(f"{w['name']} ({w['id']}) draining; jobs preempted from {w['drain_deadline']}\n")


@admin_app.command("audit", help="Who cancelled, restarted, drained, changed teams, users, tokens, secrets.")
@handle_errors
def audit(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="only this user's actions")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. job.cancel, team.set, token.revoke")] = None,
    team: Annotated[str | None, typer.Option(help="only this team's")] = None,
    limit: Annotated[int, typer.Option(help="newest N")] = 50,
    output: OutputOpt = Format.table,
) -> None:
    entries = client_of(ctx).audit(actor, action, team, limit)
    if output is not Format.table:
        out.print_data({"entries": entries}, output)
        return
    rows = [[out.fmt_time(e["at"]), e["actor"], e["action"], e["target"], cell(e["team"])] for e in entries]
    out.print_table(["AT", "ACTOR", "ACTION", "TARGET", "TEAM"], rows)


_PRUNE_CALL_JOBS = 5000  # jobs per request: each answers well within the client's timeout


@admin_app.command(
    "prune",
    help="Archive finished jobs to object storage (archive/, gzip'd JSON lines) and delete them from "
    "the database: their attempts, events and log/artifact index go with them. `yard get ID` still "
    "shows an archived job. TRAINYARD_RETENTION makes the control plane do this by itself.",
)
@handle_errors
def prune(
    ctx: typer.Context,
    before: Annotated[
        str, typer.Option(help="jobs finished longer ago than this (90d) or before an ISO time")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would go; change nothing")] = False,
    batch: Annotated[int | None, typer.Option(help="jobs per archive object and transaction")] = None,
    output: OutputOpt = Format.table,
) -> None:
    client = client_of(ctx)
    keys = ("jobs", "rows", "attempts", "events", "log_chunks", "artifacts")
    total: dict[str, Any] = dict.fromkeys(keys, 0) | {"skipped": 0, "objects": []}
    while True:
        r = client.prune(before, dry_run=dry_run, batch=batch, max_jobs=_PRUNE_CALL_JOBS)
        for k in (*keys, "skipped"):
            total[k] += r[k]
        total["objects"] += r["objects"]
        total |= {"cutoff": r["cutoff"], "dry_run": dry_run, "more": r["more"]}
        # A dry run changes nothing, so asking again would count the same jobs again.
        if dry_run or not r["more"]:
            break
    if output is not Format.table:
        out.print_data(total, output)
        return
    verb = "would archive" if dry_run else "archived"
    sys.stdout.write(
        f"{verb} {total['jobs']} jobs finished before {total['cutoff']} ({total['rows']} job rows, "
        f"{total['attempts']} attempts, {total['events']} events, {total['log_chunks']} log chunks, "
        f"{total['artifacts']} artifacts) in {len(total['objects'])} archive objects; "
        f"{total['skipped']} kept back (still live, or a waiting job depends on them)\n"
    )
    if dry_run and total["more"]:
        sys.stdout.write(f"(counted the first {total['jobs']}; there are more)\n")


@admin_app.command("replay")
def replay(
    home: HomeOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to read the log to its end")] = 120.0,
) -> None:
    """Read the event log (Kafka) from the beginning into a fresh store and compare every job's
    history with the database's: exit 0 when they are equal (the log is complete), 1 otherwise."""
    from trainyard.bus.base import BusUnavailable
    from trainyard.bus.replay import replay as replay_log
    from trainyard.server.settings import Settings
    from trainyard.store.sql import SqlStore

    settings = Settings(home=home_dir(home))
    if not settings.kafka_bootstrap:
        typer.echo("error: set TRAINYARD_KAFKA_BOOTSTRAP: the event log lives in Kafka", err=True)
        raise typer.Exit(2)
    with database_errors():
        store = SqlStore(settings.db_url)
        try:
            report = replay_log(settings.kafka_bootstrap, store, timeout)
        except BusUnavailable as e:
            typer.echo(f"error: cannot read the event log: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            store.close()
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@admin_app.command("migrate")
def migrate(home: HomeOpt = None) -> None:
    """Apply database migrations (TRAINYARD_DATABASE_URL, else SQLite in home); safe to repeat."""
    import sqlalchemy as sa

    from trainyard.server.settings import Settings
    from trainyard.store.sql import SqlStore

    settings = Settings(home=home_dir(home))
    settings.home.mkdir(parents=True, exist_ok=True)
    store = SqlStore(settings.db_url)
    try:
        store.migrate()
    except sa.exc.OperationalError as e:
        typer.echo(f"error: cannot reach the database: {e.orig}", err=True)
        raise typer.Exit(1) from None
    finally:
        store.close()
    typer.echo(f"database at {store.engine.url.render_as_string(hide_password=True)} is up to date")


# -- tokens ------------------------------------------------------------------------------------


@token_app.command("create", help="Create an API token and print it (shown this once).")
@handle_errors
def token_create(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="whose token (default: yours)")] = None,
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 30d or 12h (default: none)")] = None,
    description: Annotated[str | None, typer.Option(help="what it is for")] = None,
) -> None:
    t = client_of(ctx).create_token(user, expires, description)
    sys.stderr.write(f"{t['id']} for {t['user']}, expires {t['expires_at'] or 'never'}\n")
    sys.stdout.write(f"{t['token']}\n")


@token_app.command("list", help="List tokens (ids and states, never the tokens).")
@handle_errors
def token_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="only this user's")] = None,
    output: OutputOpt = Format.table,
) -> None:
    tokens = client_of(ctx).tokens(user)
    if output is not Format.table:
        out.print_data({"tokens": tokens}, output)
        return
    rows = [
        [
            t["id"],
            t["user"],
            t["state"],
            out.fmt_time(t["created_at"]),
            out.fmt_time(t["expires_at"]) if t["expires_at"] else "never",
            cell(t["description"]),
        ]
        for t in tokens
    ]
    out.print_table(["ID", "USER", "STATE", "CREATED", "EXPIRES", "DESCRIPTION"], rows)


@token_app.command("revoke", help="Revoke a token by id: it stops working within seconds.")
@handle_errors
def token_revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    t = client_of(ctx).revoke_token(token_id)
    sys.stdout.write(f"{t['id']} ({t['user']}) revoked at {t['revoked_at']}\n")


# -- teams -------------------------------------------------------------------------------------


@team_app.command(
    "set", help="Create or change a team: weight, concurrent quotas, monthly budget (admin only)."
)
@handle_errors
def team_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Team name")],
    weight: Annotated[float | None, typer.Option(help="fair-share weight (default 1)")] = None,
    gpu_quota: Annotated[int | None, typer.Option(help="concurrent GPUs, any type")] = None,
    cpu_quota: Annotated[float | None, typer.Option(help="concurrent CPUs")] = None,
    memory_quota: Annotated[str | None, typer.Option(help="concurrent memory, e.g. 512Gi")] = None,
    gpu_type_quota: Annotated[
        list[str] | None, typer.Option(help="concurrent GPUs of one type, TYPE=N (repeatable)")
    ] = None,
    clear_quotas: Annotated[bool, typer.Option("--clear-quotas", help="remove every quota first")] = False,
    budget: Annotated[
        str | None,
        typer.Option(help="dollars a calendar month (UTC), e.g. 5000/month; none lifts the budget"),
    ] = None,
    output: OutputOpt = Format.table,
) -> None:
    changes: dict[str, Any] = {}
    if budget is not None:
        changes["monthly_budget"] = None if budget.strip().lower() == "none" else budget
    if clear_quotas:
        changes.update(cpu_quota=None, memory_quota=None, gpu_quota=None, gpu_type_quotas=None)
    if weight is not None:
        changes["weight"] = weight
    if gpu_quota is not None:
        changes["gpu_quota"] = gpu_quota
    if cpu_quota is not None:
        changes["cpu_quota"] = cpu_quota
    if memory_quota is not None:
        changes["memory_quota"] = memory_quota
    if gpu_type_quota:
        by_type = {}
        for item in gpu_type_quota:
            kind, sep, n = item.partition("=")
            if not sep or not kind or not n.isdigit():
                raise typer.BadParameter(
                    f"{item!r} must be TYPE=N, e.g. a100=8", param_hint="--gpu-type-quota"
                )
            by_type[kind] = int(n)
        changes["gpu_type_quotas"] = by_type
    team = client_of(ctx).set_team(name, **changes)
    _print_teams([team], output)


@team_app.command("ls", help="List teams with their weight and quotas.")
@handle_errors
def team_ls(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    _print_teams(client_of(ctx).teams(), output)


def _print_teams(teams: list[dict[str, Any]], output: Format) -> None:
    if output is not Format.table:
        out.print_data({"teams": teams}, output)
        return

    def limit(v: Any, mem: bool = False) -> str:
        if v is None:
            return "-"
        return out.fmt_bytes(int(v)) if mem else f"{v:g}"

    rows = [
        [
            t["name"],
            f"{t['weight']:g}",
            limit(t["quotas"]["gpu"]),
            ",".join(f"{k}={v}" for k, v in sorted(t["quotas"]["gpu_by_type"].items())) or "-",
            limit(t["quotas"]["cpu"]),
            limit(t["quotas"]["memory"], mem=True),
            "-" if t.get("monthly_budget") is None else f"${t['monthly_budget']}/month",
        ]
        for t in teams
    ]
    out.print_table(["TEAM", "WEIGHT", "GPU QUOTA", "BY TYPE", "CPU QUOTA", "MEMORY QUOTA", "BUDGET"], rows)
