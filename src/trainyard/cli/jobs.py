"""Job commands: `yard submit`, `get`, `ls`, `logs`, `cancel`, `restart`, `events`, `artifacts`."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard.cli import logsearch
from trainyard.cli import output as out
from trainyard.cli.app import OutputOpt, app, client_of, handle_errors
from trainyard.cli.jobspec import SubmitFlags, load_spec_file, merge_spec
from trainyard.cli.output import EMPTY, Format, cell
from trainyard.client.sdk import TrainyardError, job_exit_code, new_idempotency_key, validate_spec
from trainyard.model import slurm
from trainyard.model.spec import cwd_problem
from trainyard.model.states import TERMINAL

# -- submit ------------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_interspersed_args": False},
    help="Submit a job: yard submit [OPTIONS] -- CMD ARGS...  Prints the job id. With --array, one "
    "task per index, each a job of its own: '{index}' in CMD ARGS is replaced by the task's index "
    "(yard submit --array 0-199%16 -- python train.py --trial '{index}'), and the task sees "
    "TRAINYARD_ARRAY_INDEX.",
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
    array: Annotated[
        str | None,
        typer.Option(
            "--array",
            help="A job array: one task per index, in Slurm's syntax (0-199, 1,3,5-9:2); %N runs at "
            "most N at once (0-199%16). '{index}' in the command becomes each task's index",
        ),
    ] = None,
    after_ok: Annotated[
        list[str] | None,
        typer.Option("--after-ok", metavar="ID", help="Start once job ID succeeded (repeatable)"),
    ] = None,
    after_not_ok: Annotated[
        list[str] | None,
        typer.Option("--after-not-ok", metavar="ID", help="Start once job ID failed (repeatable)"),
    ] = None,
    after_any: Annotated[
        list[str] | None,
        typer.Option("--after-any", metavar="ID", help="Start once job ID ended, however (repeatable)"),
    ] = None,
    kind: Annotated[str | None, typer.Option(help="train or eval")] = None,
    image: Annotated[str | None, typer.Option(help="Container image")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Repeat-safe submit: same key, same job")
    ] = None,
    output: Annotated[
        Format | None, typer.Option("-o", "--output", help="json or yaml: print the job, not just its id")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the JobSpec (YAML, or -o json) and submit nothing")
    ] = False,
) -> None:
    # Imported here so that `yard --help` lists submit before sbatch (commands list as registered).
    from trainyard.cli import sbatch

    script = sbatch.batch_script_arg(command or ())
    flags = SubmitFlags(
        command=() if script is not None else command or (),
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
        array=array,
        after_ok=after_ok or (),
        after_any=after_any or (),
        after_not_ok=after_not_ok or (),
    )
    spec, warnings = _submit_spec(file, script, flags, workdir is not None)
    if dry_run:
        sbatch.print_dry_run(spec, warnings, output)
        return
    sbatch.print_warnings(warnings)
    _send_spec(ctx, spec, workdir, idempotency_key, output)


def _submit_spec(
    file: Path | None, script: Path | None, flags: SubmitFlags, uploads_workdir: bool
) -> tuple[dict[str, Any], list[str]]:
    """The JobSpec the flags, a spec file and a Slurm script's directives make, with its warnings."""
    from trainyard.cli import sbatch

    base = load_spec_file(file) if file is not None else {}
    # `yard submit script.sh`: a Slurm batch script, its #SBATCH directives under these flags.
    warnings: list[str] = []
    if script is not None:
        base, warnings = sbatch.script_spec(
            sbatch.read_script(script), script_name=script.name, base=base, workdir=uploads_workdir
        )
    spec = merge_spec(base, flags)
    if script is not None:
        slurm.sync_env(spec)
    if not uploads_workdir and not spec.get("workdir") and "cwd" not in spec:
        # Slurm's convention: the job starts where it was submitted, when the worker shares that path.
        here = os.path.abspath(os.getcwd())
        if cwd_problem(here) is None:  # never a system directory: the job runs in its own one then
            spec["cwd"] = here
    return spec, warnings


def _send_spec(
    ctx: typer.Context,
    spec: dict[str, Any],
    workdir: Path | None,
    idempotency_key: str | None,
    output: Format | None,
) -> None:
    """Validate, upload the working directory, submit, and print the id (or the job)."""
    from trainyard.cli import sbatch

    # Checked before any upload, so a typo does not cost a 100 MiB transfer.
    validate_spec(spec)
    client = client_of(ctx)
    if workdir is not None:
        key = client.upload_workdir(workdir)
        out.note(f"uploaded workdir {workdir} as {key}")
        spec["workdir"] = key
    # A generated key makes the SDK's retry after a dropped connection safe: no duplicate job.
    job = sbatch.send(client, spec, idempotency_key or new_idempotency_key())
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


_LIVE = ("SCHEDULED", "RUNNING", "CANCELLING")


def _status_cell(job: Mapping[str, Any]) -> str:
    """The status, and for an array how far its tasks are: ``RUNNING (200 tasks: 40 done, 16 running)``."""
    status = cell(job.get("status"))
    array = job.get("array")
    if not isinstance(array, Mapping):
        return status
    counts = array.get("counts") or {}
    running = sum(int(counts.get(s, 0)) for s in _LIVE)
    return f"{status} ({array.get('tasks')} tasks: {array.get('done', 0)} done, {running} running)"


def _counts_text(array: Mapping[str, Any]) -> str:
    counts = array.get("counts") or {}
    parts = [f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -int(kv[1]))]
    return f"{array.get('tasks')}: {', '.join(parts) or 'none'}"


@app.command(help="Show one job: status, resources, times, attempts.")
@handle_errors
def get(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="ID")], output: OutputOpt = Format.table
) -> None:
    job = client_of(ctx).get(job_id)
    if output is not Format.table:
        out.print_data(job, output)
        return
    spec = job.get("spec") or {}
    command = spec.get("command") or []
    pairs = [
        ("ID", cell(job.get("id"))),
        ("Name", cell(job.get("name"))),
        ("Status", cell(job.get("status")) + (" (archived)" if job.get("archived") else "")),
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
    array = job.get("array")
    if isinstance(array, Mapping):
        cap = array.get("parallelism")
        pairs.append(
            ("Array", f"indices {array.get('indices')}" + (f", at most {cap} at once" if cap else ""))
        )
        pairs.append(("Tasks", _counts_text(array)))
    elif job.get("array_id"):
        pairs.append(("Array", f"task {job.get('array_index')} of {job.get('array_id')}"))
    deps = spec.get("depends_on") or []
    if deps:
        pairs.append(("Depends on", ", ".join(f"{d.get('job')} ({d.get('condition')})" for d in deps)))
    if job.get("status") == "PENDING":
        pairs.append(("Pending", cell(job.get("pending_reason"))))
        position = job.get("queue_position")
        if position is not None:
            pairs.append(("Queue", f"#{position} in team {cell(job.get('team'))}'s queue"))
        eta = job.get("estimated_start_at")
        pairs.append(("Starts", f"{out.fmt_eta(eta)} (latest estimate)" if eta else "no estimate yet"))
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
    if isinstance(array, Mapping):
        shown, more = client_of(ctx).tasks(job_id, limit=TASKS_SHOWN)
        sys.stdout.write("\n")
        _print_tasks(shown, None)
        if more:
            out.note(f"the first {len(shown)} tasks; every one: yard tasks {job.get('id')}")


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
    client = client_of(ctx)
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
            _status_cell(j),
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


TASKS_SHOWN = 20


def _print_tasks(tasks: list[dict[str, Any]], metric: str | None) -> None:
    headers = [
        "INDEX",
        "ID",
        "STATUS",
        "ATTEMPTS",
        "EXIT",
        *(["BEST " + metric.upper()] if metric else []),
        "WHY",
    ]
    rows = []
    for t in tasks:
        why = t.get("pending_reason") if t.get("status") == "PENDING" else t.get("reason")
        best = [cell(t.get("best"))] if metric else []
        rows.append(
            [
                cell(t.get("index")),
                cell(t.get("id")),
                cell(t.get("status")),
                cell(t.get("attempt")),
                cell(t.get("exit_code")),
                *best,
                cell(why),
            ]
        )
    out.print_table(headers, rows)


@app.command(help="List an array's tasks by index (each is a job: yard get/logs TASK-ID).")
@handle_errors
def tasks(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Filter by status (repeatable)")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Show each task's best value of this metric (log_metric)")
    ] = None,
    best: Annotated[str, typer.Option(help="min or max: which value of --metric is best")] = "min",
    limit: Annotated[int, typer.Option(help="Tasks per page", min=1, max=1000)] = 100,
    all_pages: Annotated[bool, typer.Option("--all", "-A", help="Every task, following pages")] = False,
    output: OutputOpt = Format.table,
) -> None:
    client = client_of(ctx)
    statuses = [s.upper() for s in status or []]
    if best not in ("min", "max"):
        raise typer.BadParameter("--best must be min or max")
    if all_pages:
        listed = list(client.iter_tasks(job_id, statuses, limit=limit, metric=metric, best=best))
        more = None
    else:
        listed, more = client.tasks(job_id, statuses, limit, metric=metric, best=best)
    if output is not Format.table:
        out.print_data({"tasks": listed, "next_cursor": more}, output)
        return
    _print_tasks(listed, metric)
    if more:
        out.note(f"more tasks; use --all or a larger --limit (showing {len(listed)})")


# -- logs --------------------------------------------------------------------------------------


def _attempt_exit_code(job: Mapping[str, Any], number: int) -> int:
    for att in job.get("attempts") or []:
        if att.get("number") == number:
            outcome = att.get("outcome") or att.get("status")
            status = {"succeeded": "SUCCEEDED", "cancelled": "CANCELLED"}.get(str(outcome).lower(), "FAILED")
            return job_exit_code({"status": status, "exit_code": att.get("exit_code")})
    return job_exit_code(job)


@app.command(
    help="Print a job's output; -f follows it and exits with the job's exit code. "
    "yard logs search QUERY [--team T] [--since 1d] [--job ID] [--limit N] [--cursor C] [--json] "
    "searches the logs of the jobs you may see.",
    # `yard logs search ...` hands its own options on to cli/logsearch.py.
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@handle_errors
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines", min=0)] = None,
    attempt: Annotated[int | None, typer.Option(help="Attempt number (default: latest)", min=1)] = None,
) -> None:
    if job_id == logsearch.SEARCH_WORD and not (follow or tail is not None or attempt is not None):
        logsearch.run(ctx, ctx.args)
        return
    if ctx.args:
        ctx.fail(f"unexpected arguments: {' '.join(ctx.args)}")
    client = client_of(ctx)
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
    client = client_of(ctx)
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
    job = client_of(ctx).restart(job_id)
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
    client = client_of(ctx)
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
    client = client_of(ctx)
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
