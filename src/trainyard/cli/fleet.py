"""Fleet commands: `yard workers` and `yard queues`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import typer

from trainyard.cli import output as out
from trainyard.cli.app import OutputOpt, app, client_of, handle_errors
from trainyard.cli.output import Format, cell


def _used(
    alloc: Mapping[str, Any], cap: Mapping[str, Any], key: str, fmt: Callable[[Any], str] = cell
) -> str:
    return f"{fmt(alloc.get(key, 0))}/{fmt(cap.get(key))}"


@app.command(help="The workers: capacity, allocation, running jobs, heartbeat.")
@handle_errors
def workers(ctx: typer.Context, output: OutputOpt = Format.table) -> None:
    items = client_of(ctx).workers()
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
    data = client_of(ctx).queues()
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
