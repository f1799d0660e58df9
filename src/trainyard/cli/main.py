"""`yard`: the Trainyard command line.

Job commands talk to the control plane through :class:`trainyard.client.Client`; the platform
commands (`yard up`, `yard server`, `yard worker`) are registered from ``trainyard.cli.platform``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import httpx
import typer

from trainyard.cli import output as out
from trainyard.cli.jobspec import SubmitFlags, load_spec_file, merge_spec
from trainyard.cli.output import EMPTY, Format, cell
from trainyard.cli.simulate import simulate
from trainyard.client.bundle import BundleError
from trainyard.client.sdk import (
    Client,
    TrainyardError,
    job_exit_code,
    new_idempotency_key,
    validate_spec,
)
from trainyard.model.spec import cwd_problem
from trainyard.model.states import TERMINAL

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
        return Client(
            url=self.url,
            token=self.token,
            transport=self.transport,
            reconnect_delay=self.reconnect_delay,
            poll_interval=self.poll_interval,
        )


app = typer.Typer(
    name="yard",
    help="Trainyard: submit and watch ML jobs, and run the platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
admin_app = typer.Typer(help="Administration: users, database.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.command("simulate")(simulate)
secret_app = typer.Typer(
    help="Team secrets: given to jobs that name them, never shown again.", no_args_is_help=True
)
app.add_typer(secret_app, name="secret")

OutputOpt = Annotated[
    Format, typer.Option("-o", "--output", help="table, json or yaml", case_sensitive=False)
]


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Control plane URL (else TRAINYARD_URL, $TRAINYARD_HOME/url)")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="API token (else TRAINYARD_TOKEN, $TRAINYARD_HOME/token)")
    ] = None,
) -> None:
    state = ctx.ensure_object(State)
    if url:
        state.url = url
    if token:
        state.token = token


def _state(ctx: typer.Context) -> State:
    return ctx.ensure_object(State)


def _client(ctx: typer.Context) -> Client:
    return _state(ctx).client()


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn the SDK's errors into `error: ...` on stderr and exit status 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
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


# -- submit ------------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Submit a job: yard submit [OPTIONS] -- CMD ARGS...  Prints the job id.",
)
@handle_errors
def submit(
    ctx: typer.Context,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- CMD ARGS", help="The command; may carry its own options"),
    ] = None,
    file: Annotated[Path | None, typer.Option("-f", "--file", help="JobSpec YAML; flags override it")] = None,
    name: Annotated[str | None, typer.Option(help="Job name")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPU cores, e.g. 0.5 or 4")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory, e.g. 512Mi or 16Gi")] = None,
    gpu: Annotated[int | None, typer.Option(help="Whole GPUs")] = None,
    gpu_type: Annotated[str | None, typer.Option("--gpu-type", help="e.g. a100")] = None,
    pool: Annotated[str | None, typer.Option(help="Worker pool")] = None,
    team: Annotated[str | None, typer.Option(help="Team to charge (default: yours)")] = None,
    priority: Annotated[str | None, typer.Option(help="low, normal, high or urgent")] = None,
    max_runtime: Annotated[str | None, typer.Option("--max-runtime", help="e.g. 30m, 2h (max 24h)")] = None,
    retries: Annotated[
        int | None, typer.Option(help="Retry failures and infrastructure errors N times", min=0, max=99)
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable)")] = None,
    artifacts: Annotated[
        list[str] | None, typer.Option("--artifacts", help="Path to keep when the job ends (repeatable)")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Upload this directory and run the job in a copy of it")
    ] = None,
    replicas: Annotated[
        int | None, typer.Option(help="Gang size: N ranks start together across workers, or none")
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="A team secret the job gets as this env variable (repeatable)"),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="train or eval")] = None,
    image: Annotated[str | None, typer.Option(help="Container image")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Repeat-safe submit: same key, same job")
    ] = None,
    output: Annotated[
        Format | None, typer.Option("-o", "--output", help="json or yaml: print the job, not just its id")
    ] = None,
) -> None:
    base = load_spec_file(file) if file is not None else {}
    flags = SubmitFlags(
        command=command or (),
        name=name,
        kind=kind,
        image=image,
        cpu=cpu,
        memory=memory,
        gpu=gpu,
        gpu_type=gpu_type,
        pool=pool,
        team=team,
        priority=priority,
        max_runtime=max_runtime,
        retries=retries,
        env=env or (),
        artifacts=artifacts or (),
        secrets=secret or (),
        replicas=replicas,
    )
    spec = merge_spec(base, flags)
    if workdir is None and not spec.get("workdir") and "cwd" not in spec:
        # Slurm's convention: the job starts where it was submitted, when the worker shares that path.
        here = os.path.abspath(os.getcwd())
        if cwd_problem(here) is None:  # never a system directory: the job runs in its own one then
            spec["cwd"] = here
    # Checked before any upload, so a typo does not cost a 100 MiB transfer.
    validate_spec(spec)
    client = _client(ctx)
    if workdir is not None:
        key = client.upload_workdir(workdir)
        out.note(f"uploaded workdir {workdir} as {key}")
        spec["workdir"] = key
    # A generated key makes the SDK's retry after a dropped connection safe: no duplicate job.
    job = client.submit(spec, idempotency_key=idempotency_key or new_idempotency_key())
    if output is None or output is Format.table:
        sys.stdout.write(f"{job['id']}\n")
    else:
        out.print_data(job, output)


# -- get / ls ----------------------------------------------------------------------------------


def _resources(spec: Mapping[str, Any]) -> str:
    res = spec.get("resources") or {}
    text = f"cpu={res.get('cpu', EMPTY)} memory={res.get('memory', EMPTY)} gpu={res.get('gpu', 0)}"
    if res.get("gpu_type"):
        text += f" ({res['gpu_type']})"
    return text


def _attempt_count(job: Mapping[str, Any]) -> int:
    n = job.get("attempt")
    return n if isinstance(n, int) else len(job.get("attempts") or [])


@app.command(help="Show one job: status, resources, times, attempts.")
@handle_errors
def get(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")], output: OutputOpt = Format.table
) -> None:
    job = _client(ctx).get(job_id)
    if output is not Format.table:
        out.print_data(job, output)
        return
    spec = job.get("spec") or {}
    command = spec.get("command") or []
    pairs = [
        ("ID", cell(job.get("id"))),
        ("Name", cell(job.get("name"))),
        ("Status", cell(job.get("status"))),
        ("User/Team", f"{cell(job.get('user'))} / {cell(job.get('team'))}"),
        ("Priority", cell(job.get("priority"))),
        ("Pool", cell(job.get("pool"))),
        ("Resources", _resources(spec)),
        ("Command", " ".join(str(c) for c in command) or EMPTY),
        ("Created", out.fmt_time(job.get("created_at"))),
        ("Started", out.fmt_time(job.get("started_at"))),
        ("Finished", out.fmt_time(job.get("finished_at"))),
        ("Runtime", out.fmt_duration(job.get("started_at"), job.get("finished_at"))),
        ("Attempt", cell(job.get("attempt"))),
        ("Worker", cell(job.get("worker_id"))),
        ("Exit code", cell(job.get("exit_code"))),
        ("Reason", cell(job.get("reason"))),
    ]
    if job.get("status") == "PENDING":
        pairs.append(("Pending", cell(job.get("pending_reason"))))
        position = job.get("queue_position")
        if position is not None:
            pairs.append(("Queue", f"#{position} in team {cell(job.get('team'))}'s queue"))
        eta = job.get("estimated_start_at")
        pairs.append(("Starts by", f"{out.fmt_time(eta)} (latest estimate)" if eta else "no estimate yet"))
    out.print_fields(pairs)
    attempts = job.get("attempts") or []
    if attempts:
        sys.stdout.write("\n")
        rows = [
            [
                cell(a.get("number")),
                cell(a.get("worker_id")),
                cell(a.get("status") or a.get("outcome")),
                out.fmt_time(a.get("started_at")),
                out.fmt_time(a.get("finished_at")),
                cell(a.get("exit_code")),
                cell(a.get("reason")),
            ]
            for a in attempts
        ]
        out.print_table(["ATTEMPT", "WORKER", "STATUS", "STARTED", "FINISHED", "EXIT", "REASON"], rows)


@app.command("ls", help="List jobs, newest first.")
@handle_errors
def ls(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Filter by status (repeatable)")
    ] = None,
    user: Annotated[str | None, typer.Option(help="Filter by user")] = None,
    team: Annotated[str | None, typer.Option(help="Filter by team")] = None,
    name: Annotated[str | None, typer.Option(help="Filter by name")] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page", min=1, max=1000)] = 50,
    all_pages: Annotated[
        bool, typer.Option("--all", "-A", help="Every matching job, following pages")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    client = _client(ctx)
    statuses = [s.upper() for s in status or []]
    next_cursor: str | None
    if all_pages:
        jobs = list(client.iter_jobs(statuses, user, team, name, page_size=limit))
        next_cursor = None
    else:
        jobs, next_cursor = client.list(statuses, user, team, name, limit)
    if output is not Format.table:
        out.print_data({"jobs": jobs, "next_cursor": next_cursor}, output)
        return
    rows = [
        [
            cell(j.get("id")),
            cell(j.get("name")),
            cell(j.get("status")),
            cell(j.get("user")),
            cell(j.get("team")),
            out.fmt_age(j.get("created_at")),
            str(_attempt_count(j)),
            cell(j.get("exit_code")),
        ]
        for j in jobs
    ]
    out.print_table(["ID", "NAME", "STATUS", "USER", "TEAM", "AGE", "ATTEMPTS", "EXIT"], rows)
    if next_cursor:
        out.note(f"more jobs match; use --all or a larger --limit (showing {len(jobs)})")


# -- logs --------------------------------------------------------------------------------------


def _attempt_exit_code(job: Mapping[str, Any], number: int) -> int:
    for att in job.get("attempts") or []:
        if att.get("number") == number:
            outcome = att.get("outcome") or att.get("status")
            status = {"succeeded": "SUCCEEDED", "cancelled": "CANCELLED"}.get(str(outcome).lower(), "FAILED")
            return job_exit_code({"status": status, "exit_code": att.get("exit_code")})
    return job_exit_code(job)


@app.command(help="Print a job's output; -f follows it and exits with the job's exit code.")
@handle_errors
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines", min=0)] = None,
    attempt: Annotated[int | None, typer.Option(help="Attempt number (default: latest)", min=1)] = None,
) -> None:
    client = _client(ctx)
    sink = typer.get_binary_stream("stdout")
    if not follow:
        sink.write(client.logs(job_id, attempt=attempt, tail=tail))
        sink.flush()
        return

    def moved_on(number: int) -> None:
        sink.flush()
        out.note(f"--- attempt {number} ---")

    for chunk in client.follow_logs(job_id, attempt=attempt, tail=tail, on_attempt=moved_on):
        sink.write(chunk)
        sink.flush()
    job = client.get(job_id)
    if attempt is not None:
        raise typer.Exit(_attempt_exit_code(job, attempt))
    if job.get("status") in TERMINAL:
        raise typer.Exit(job_exit_code(job))


# -- cancel / restart / events -----------------------------------------------------------------


@app.command(help="Cancel jobs; a finished job stays as it was.")
@handle_errors
def cancel(ctx: typer.Context, job_ids: Annotated[list[str], typer.Argument(metavar="ID...")]) -> None:
    client = _client(ctx)
    failed = False
    for job_id in job_ids:
        try:
            job = client.cancel(job_id)
        except TrainyardError as exc:
            # One unknown id should not stop the rest of a batch cancel.
            out.print_error(f"{job_id}: {exc.message}", exc.details)
            failed = True
            continue
        sys.stdout.write(f"{job.get('id', job_id)}  {job.get('status', EMPTY)}\n")
    if failed:
        raise typer.Exit(1)


@app.command(help="Run a finished job again as a new attempt; prints its id.")
@handle_errors
def restart(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    job = _client(ctx).restart(job_id)
    sys.stdout.write(f"{job.get('id', job_id)}\n")


def _event_row(ev: Mapping[str, Any]) -> list[str]:
    data = ev.get("data") or {}
    extra = " ".join(f"{k}={v}" for k, v in data.items()) if isinstance(data, dict) else str(data)
    return [
        out.fmt_time(ev.get("at")),
        cell(ev.get("type")),
        cell(ev.get("from_status")),
        cell(ev.get("to_status")),
        cell(ev.get("attempt")),
        extra or EMPTY,
    ]


@app.command(
    help="A job's state history (-f streams new events until the job ends); "
    "`yard events tail` prints the live event stream of every job you may see."
)
@handle_errors
def events(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID|tail")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
    output: OutputOpt = Format.table,
) -> None:
    client = _client(ctx)
    columns = ["TIME", "TYPE", "FROM", "TO", "ATTEMPT", "DATA"]
    if job_id == "tail":  # job ids start with "j": no job is called tail
        for ev in client.all_events():
            if output is Format.table:
                sys.stdout.write("  ".join([ev["job_id"], *_event_row(ev)]) + "\n")
            else:
                sys.stdout.write(json.dumps(ev) + "\n")
            sys.stdout.flush()
        return
    if not follow:
        evs = client.events(job_id)
        if output is not Format.table:
            out.print_data({"events": evs}, output)
        else:
            out.print_table(columns, [_event_row(e) for e in evs])
        return
    for ev in client.follow_events(job_id):
        if output is Format.table:
            sys.stdout.write("  ".join(_event_row(ev)) + "\n")
        else:
            sys.stdout.write(json.dumps(ev) + "\n")
        sys.stdout.flush()


# -- artifacts ---------------------------------------------------------------------------------


@app.command(help="List a job's artifacts, or download and verify them with --download DIR.")
@handle_errors
def artifacts(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    attempt: Annotated[int | None, typer.Option(help="Attempt number (default: the server's choice)")] = None,
    download: Annotated[Path | None, typer.Option(help="Download into this directory")] = None,
    output: OutputOpt = Format.table,
) -> None:
    client = _client(ctx)
    if download is not None:
        for path in client.download_artifacts(job_id, download, attempt=attempt):
            sys.stdout.write(f"{path}  verified sha256\n")
        return
    items = client.artifacts(job_id, attempt=attempt)
    if output is not Format.table:
        out.print_data({"artifacts": items}, output)
        return
    rows = [
        [cell(a.get("path")), out.fmt_bytes(a.get("size")), cell(a.get("sha256")), cell(a.get("attempt"))]
        for a in items
    ]
    out.print_table(["PATH", "SIZE", "SHA256", "ATTEMPT"], rows)
    if not items:
        out.note(f"job {job_id} has no artifacts")


# -- fleet -------------------------------------------------------------------------------------


def _used(
    alloc: Mapping[str, Any], cap: Mapping[str, Any], key: str, fmt: Callable[[Any], str] = cell
) -> str:
    return f"{fmt(alloc.get(key, 0))}/{fmt(cap.get(key))}"


@app.command(help="The workers: capacity, allocation, running jobs, heartbeat.")
@handle_errors
def workers(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    items = _client(ctx).workers()
    if output is not Format.table:
        out.print_data({"workers": items}, output)
        return
    rows = []
    for w in items:
        cap, alloc = w.get("capacity") or {}, w.get("allocated") or {}
        gpu = _used(alloc, cap, "gpu")
        if cap.get("gpu_type"):
            gpu += f" {cap['gpu_type']}"
        rows.append(
            [
                cell(w.get("name") or w.get("id")),
                cell(w.get("pool")),
                cell(w.get("region")),
                cell(w.get("status")),
                _used(alloc, cap, "cpu"),
                _used(alloc, cap, "memory", out.fmt_bytes),
                gpu,
                cell(w.get("running")),
                out.fmt_age(w.get("last_heartbeat")),
            ]
        )
    out.print_table(
        ["NAME", "POOL", "REGION", "STATUS", "CPU", "MEMORY", "GPU", "RUNNING", "HEARTBEAT"], rows
    )


@app.command(help="Queue depth per pool and use per team.")
@handle_errors
def queues(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    data = _client(ctx).queues()
    if output is not Format.table:
        out.print_data(data, output)
        return
    pools = data.get("pools") or []
    teams = data.get("teams") or []
    out.print_table(
        ["POOL", "PENDING", "RUNNING"],
        [[cell(p.get("pool") or "default"), cell(p.get("pending")), cell(p.get("running"))] for p in pools],
    )
    sys.stdout.write("\n")
    out.print_table(
        ["TEAM", "PENDING", "RUNNING", "CPU", "MEMORY", "GPU"],
        [
            [
                cell(t.get("team")),
                cell(t.get("pending")),
                cell(t.get("running")),
                cell(t.get("cpu")),
                out.fmt_bytes(t.get("memory")),
                cell(t.get("gpu")),
            ]
            for t in teams
        ],
    )


# -- admin -------------------------------------------------------------------------------------


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
    token = _client(ctx).create_user(name, team, role, tier)
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
    w = _client(ctx).drain_worker(worker, deadline)
    sys.stdout.write(f"{w['name']} ({w['id']}) draining; jobs preempted from {w['drain_deadline']}\n")


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
    s = _client(ctx).set_secret(name, value, team)
    sys.stdout.write(f"secret {s['name']} of team {s['team']} set\n")


@secret_app.command("ls", help="List a team's secrets (names and dates only).")
@handle_errors
def secret_ls(
    ctx: typer.Context,
    team: Annotated[str | None, typer.Option(help="whose secrets (default: your team)")] = None,
    output: OutputOpt = Format.table,
) -> None:
    items = _client(ctx).secrets(team)
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
    _client(ctx).delete_secret(name, team)
    sys.stdout.write(f"secret {name} deleted\n")


token_app = typer.Typer(help="API tokens: create with an expiry, list, revoke.", no_args_is_help=True)
admin_app.add_typer(token_app, name="token")


@token_app.command("create", help="Create an API token and print it (shown this once).")
@handle_errors
def token_create(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Argument(help="whose token (default: yours)")] = None,
    expires: Annotated[str | None, typer.Option(help="lifetime, e.g. 30d or 12h (default: none)")] = None,
    description: Annotated[str | None, typer.Option(help="what it is for")] = None,
) -> None:
    t = _client(ctx).create_token(user, expires, description)
    sys.stderr.write(f"{t['id']} for {t['user']}, expires {t['expires_at'] or 'never'}\n")
    sys.stdout.write(f"{t['token']}\n")


@token_app.command("list", help="List tokens (ids and states, never the tokens).")
@handle_errors
def token_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option(help="only this user's")] = None,
    output: OutputOpt = Format.table,
) -> None:
    tokens = _client(ctx).tokens(user)
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
    t = _client(ctx).revoke_token(token_id)
    sys.stdout.write(f"{t['id']} ({t['user']}) revoked at {t['revoked_at']}\n")


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
    entries = _client(ctx).audit(actor, action, team, limit)
    if output is not Format.table:
        out.print_data({"entries": entries}, output)
        return
    rows = [[out.fmt_time(e["at"]), e["actor"], e["action"], e["target"], cell(e["team"])] for e in entries]
    out.print_table(["AT", "ACTOR", "ACTION", "TARGET", "TEAM"], rows)


team_app = typer.Typer(help="Teams: fair-share weight and quotas.", no_args_is_help=True)
admin_app.add_typer(team_app, name="team")


@team_app.command("set", help="Create or change a team: weight and concurrent quotas (admin only).")
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
    output: OutputOpt = Format.table,
) -> None:
    changes: dict[str, Any] = {}
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
    team = _client(ctx).set_team(name, **changes)
    _print_teams([team], output)


@team_app.command("ls", help="List teams with their weight and quotas.")
@handle_errors
def team_ls(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    _print_teams(_client(ctx).teams(), output)


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
        ]
        for t in teams
    ]
    out.print_table(["TEAM", "WEIGHT", "GPU QUOTA", "BY TYPE", "CPU QUOTA", "MEMORY QUOTA"], rows)


def _register_platform() -> None:
    # Imported here, after `app` and `admin_app` exist, so platform.py may import them from this module.
    from trainyard.cli import platform

    platform.register(app)


_register_platform()


def main(argv: Sequence[str] | None = None) -> None:
    """The `yard` entry point."""
    app(args=list(argv) if argv is not None else None, prog_name="yard")


__all__ = ["State", "admin_app", "app", "main"]
