"""`yard simulate`: run the real scheduler and a FIFO baseline over a workload and compare them, or
(``--autoscale``) one policy on the fixed fleet and on a fleet an autoscaler sizes."""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from trainyard.cli import output as out
from trainyard.cli.app import app
from trainyard.model.pricing import Prices, format_money
from trainyard.scheduler.autoscale import Autoscale, simulate_autoscaled
from trainyard.scheduler.core import decide
from trainyard.scheduler.fifo import decide_fifo
from trainyard.scheduler.simulate import GroupStats, Policy, SimConfig, SimResult
from trainyard.scheduler.simulate import simulate as run_simulation
from trainyard.scheduler.workload import TraceError, Workload, load_trace, synthetic


class Synthetic(StrEnum):
    target = "target"
    small = "small"


class PolicyChoice(StrEnum):
    both = "both"
    scheduler = "scheduler"
    fifo = "fifo"


POLICIES: dict[str, Policy] = {"scheduler": decide, "fifo": decide_fifo}

DEFAULT_PRICES = {"gpu_hour_default": "2.00", "cpu_hour": "0.04", "gib_hour": "0.005", "spot_discount": "60%"}
"""What a simulation charges without ``--prices``: a flat illustrative table (any GPU type $2 an
hour, $0.04 a core-hour, $0.005 a GiB-hour, spot 60 % off), not any cloud's list price. Give
``--prices`` the file ``yard admin prices set --file`` takes to cost a trace at your own prices."""


@app.command("simulate")
def simulate(
    trace: Annotated[
        Path | None,
        typer.Argument(help="JSONL trace of workers, teams, reclaims and jobs", show_default=False),
    ] = None,
    synthetic_kind: Annotated[
        Synthetic | None,
        typer.Option(
            "--synthetic", help="generated workload: target (100k jobs/day) or small", case_sensitive=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the synthetic workload")] = 0,
    policy: Annotated[
        PolicyChoice, typer.Option(help="both, scheduler or fifo", case_sensitive=False)
    ] = PolicyChoice.both,
    cycle_s: Annotated[
        float, typer.Option("--cycle-s", help="least simulated seconds between scheduler cycles", min=0.001)
    ] = SimConfig().cycle_s,
    plot: Annotated[
        Path | None, typer.Option(help="write queue depth and team GPU share over time to this PNG")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
    prices_file: Annotated[
        Path | None,
        typer.Option(
            "--prices", help="cost the run at these prices (TOML or JSON, as `yard admin prices set --file`)"
        ),
    ] = None,
    autoscale: Annotated[
        bool,
        typer.Option(
            "--autoscale",
            help="compare the fixed fleet with one an autoscaler sizes from the pending-demand signal "
            "(the scheduler's policy, or --policy fifo)",
        ),
    ] = False,
    scale_after_min: Annotated[
        float, typer.Option("--scale-after-min", help="--autoscale: minutes of demand before adding", min=0)
    ] = Autoscale().scale_after_s / 60,
    boot_min: Annotated[
        float,
        typer.Option("--boot-min", help="--autoscale: minutes a new worker takes to boot", min=0),
    ] = Autoscale().boot_s / 60,
    idle_min: Annotated[
        float, typer.Option("--idle-min", help="--autoscale: minutes idle before a worker is removed", min=0)
    ] = Autoscale().idle_s / 60,
) -> None:
    """Drive the scheduler with a discrete-event clock over a workload; compare with FIFO, or with
    --autoscale the fixed fleet with an autoscaled one (wait time against worker-hours)."""
    if (trace is None) == (synthetic_kind is None):
        out.print_error("give either a TRACE file or --synthetic target|small")
        raise typer.Exit(2)
    if plot is not None:
        require_matplotlib()  # before the run, not after an hour of it
    try:
        if trace is not None:
            workload = load_trace(str(trace))
        else:
            workload = synthetic("target" if synthetic_kind is Synthetic.target else "small", seed=seed)
    except (OSError, TraceError) as e:
        out.print_error(str(e))
        raise typer.Exit(2) from None
    # The workload's objects live for the whole run: spare the cyclic collector rescanning them.
    gc.collect()
    gc.freeze()
    scaler = Autoscale(scale_after_min * 60, boot_min * 60, idle_min * 60) if autoscale else None
    try:
        # Imported here: importing cli.usage registers `yard usage`, which would move it up `yard --help`.
        from trainyard.cli.usage import read_prices_file

        prices = Prices.from_settings(read_prices_file(prices_file) if prices_file else DEFAULT_PRICES)
    except ValueError as e:
        out.print_error(f"{prices_file}: {e}")
        raise typer.Exit(2) from None
    config = SimConfig(cycle_s=cycle_s, prices=prices)
    try:
        results, walls = run_policies(workload, policy, config, scaler, quiet=as_json)
    finally:
        gc.unfreeze()
    if plot is not None:
        write_plot(results, plot)
    if as_json:
        data = to_json(workload, seed, cycle_s, results, walls)
        if scaler is not None:
            data["autoscale"] = dataclasses.asdict(scaler)
        sys.stdout.write(json.dumps(data) + "\n")
        return
    print_report(workload, results, walls)
    print_costs(results, "your prices" if prices_file else "illustrative prices (--prices to set yours)")
    if scaler is not None:
        print_autoscale(results, scaler)
    if plot is not None:
        out.note(f"wrote {plot}")


def run_policies(
    workload: Workload, policy: PolicyChoice, config: SimConfig, scaler: Autoscale | None, *, quiet: bool
) -> tuple[list[SimResult], dict[str, float]]:
    """Each policy on the fixed fleet; with ``scaler``, one policy on the fixed fleet and autoscaled."""
    if scaler is None:
        names = ["scheduler", "fifo"] if policy is PolicyChoice.both else [policy.value]
    else:
        base = "fifo" if policy is PolicyChoice.fifo else "scheduler"
        names = [base, f"{base}+autoscale"]
    results: list[SimResult] = []
    walls: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        fn = POLICIES[name.removesuffix("+autoscale")]
        if name.endswith("+autoscale") and scaler is not None:
            r = simulate_autoscaled(workload, fn, scaler, name=name, config=config, timer=time.perf_counter)
        else:
            r = run_simulation(workload, fn, name=name, config=config, timer=time.perf_counter)
        results.append(r)
        walls[name] = time.perf_counter() - t0
        if not quiet:
            out.note(f"{name}: simulated {r.end_s / 3600:.1f} h in {walls[name]:.1f} s")
    return results, walls


def print_autoscale(results: list[SimResult], scaler: Autoscale) -> None:
    """The fixed fleet next to the autoscaled one: waits against worker-hours."""
    sys.stdout.write("\n")
    out.print_table(
        ["FLEET", "WAIT P50", "WAIT P95", "NEVER STARTED", "WORKER-H", "GPU UTIL", "WORKERS STARTED"],
        [
            [
                "autoscaled" if r.policy.endswith("+autoscale") else "fixed",
                _dur(r.overall.wait_p50_s),
                _dur(r.overall.wait_p95_s),
                str(r.overall.never_started),
                f"{r.worker_hours:.0f}",
                f"{r.gpu_utilization:.1%}",
                str(r.workers_started) if r.policy.endswith("+autoscale") else "-",
            ]
            for r in results
        ],
        title=(
            f"Fixed fleet vs autoscaled ({results[0].policy}): add after {_dur(scaler.scale_after_s)} of "
            f"demand, boot {_dur(scaler.boot_s)}, remove after {_dur(scaler.idle_s)} idle"
        ),
    )


def to_json(
    workload: Workload, seed: int, cycle_s: float, results: list[SimResult], walls: dict[str, float]
) -> dict[str, Any]:
    return {
        "workload": workload.name,
        "jobs": len(workload.jobs),
        "workers": len(workload.workers),
        "seed": seed,
        "cycle_s": cycle_s,
        "results": {r.policy: {**dataclasses.asdict(r), "wall_s": walls[r.policy]} for r in results},
    }


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _rows(results: list[SimResult], attr: str, names: list[str], weights: bool) -> list[list[str]]:
    def find(r: SimResult, name: str) -> GroupStats:
        groups: tuple[GroupStats, ...] = getattr(r, attr)
        return next(g for g in (*groups, r.overall) if g.name == name)

    rows = []
    for name in [*names, "all"]:
        gs = [find(r, name) for r in results]
        row = [name]
        if weights:
            row.append(f"{gs[0].weight:g}" if gs[0].weight is not None else "")
        row += [
            str(gs[0].jobs),
            " / ".join(_dur(g.wait_p50_s) for g in gs),
            " / ".join(_dur(g.wait_p95_s) for g in gs),
            " / ".join(_dur(g.wait_p99_s) for g in gs),
            " / ".join(str(g.never_started) for g in gs),
            " / ".join(f"{g.gpu_share:.1%}" for g in gs),
            " / ".join(str(g.preemptions) for g in gs),
            " / ".join(f"{g.gpu_hours_lost:.0f}" for g in gs),
        ]
        rows.append(row)
    return rows


def print_report(workload: Workload, results: list[SimResult], walls: dict[str, float]) -> None:
    label = " / ".join(r.policy for r in results)
    gpus = sum(w.gpu for w in workload.workers)
    out.print_table(
        [
            "POLICY",
            "GPU UTIL",
            "JAIN (WINDOWS)",
            "MEAN RUNNING",
            "MAX QUEUE",
            "PREEMPTIONS",
            "GPU-H LOST",
            "CYCLES",
            "WALL",
        ],
        [
            [
                r.policy,
                f"{r.gpu_utilization:.1%}",
                f"{r.jain_index:.3f} ({r.jain_windows})" if r.jain_index is not None else "- (0)",
                f"{r.mean_running:.0f}",
                str(r.max_queue_depth),
                ", ".join(f"{k} {v}" for k, v in r.preemptions_by_reason.items()) or "0",
                f"{r.overall.gpu_hours_lost:.0f}",
                str(r.cycles),
                f"{walls[r.policy]:.1f}s (policy {r.policy_s:.1f}s)",
            ]
            for r in results
        ],
        title=(
            f"{workload.name}: {len(workload.jobs)} jobs, {len(workload.workers)} workers ({gpus} GPUs), "
            f"{len(workload.reclaims)} spot reclaims, {results[0].end_s / 3600:.1f} h simulated"
        ),
    )
    cols = [
        "JOBS",
        f"WAIT P50 ({label})",
        "P95",
        "P99",
        "NEVER STARTED",
        "GPU SHARE",
        "PREEMPTED",
        "GPU-H LOST",
    ]
    teams = [g.name for g in results[0].teams]
    sys.stdout.write("\n")
    out.print_table(["TEAM", "WEIGHT", *cols], _rows(results, "teams", teams, True), title="Per team")
    prios = [g.name for g in results[0].priorities]
    sys.stdout.write("\n")
    out.print_table(["PRIORITY", *cols], _rows(results, "priorities", prios, False), title="Per priority")


def print_costs(results: list[SimResult], prices: str) -> None:
    """What each team's attempts cost in the run (preempted work included), per policy."""
    label = " / ".join(r.policy for r in results)
    names = [g.name for g in results[0].teams]
    rows = []
    for name in [*names, "all"]:
        gs = [next(g for g in (*r.teams, r.overall) if g.name == name) for r in results]
        rows.append(
            [
                name,
                " / ".join(f"{g.gpu_hours:.0f}" for g in gs),
                " / ".join(format_money(g.cost.micros, cents=False) for g in gs),
                " / ".join(format_money(g.cost.saved_micros, cents=False) for g in gs),
            ]
        )
    sys.stdout.write("\n")
    out.print_table(
        ["TEAM", f"GPU-H ({label})", "COST", "SPOT SAVED"], rows, title=f"Cost per team at {prices}"
    )


def require_matplotlib() -> None:
    """`--plot` needs matplotlib, which only the `plot` extra installs: say so, and exit 2."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.print_error("--plot needs matplotlib: pip install 'trainyard[plot]'")
        raise typer.Exit(2) from None


def write_plot(results: list[SimResult], path: Path) -> None:
    """Queue depth of every policy on one axis, then each policy's GPU share per team, stacked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1 + len(results), 1, figsize=(11, 3.2 * (1 + len(results))), sharex=True)
    ax0 = axes[0]
    for r in results:
        ax0.plot([t / 3600 for t in r.series.t], r.series.queue_depth, label=r.policy)
    ax0.set_ylabel("pending jobs")
    ax0.set_title("Queue depth")
    ax0.legend(loc="upper left")
    for ax, r in zip(axes[1:], results, strict=True):
        hours = [t / 3600 for t in r.series.t]
        teams = sorted(r.series.share)
        ax.stackplot(hours, *[r.series.share[n] for n in teams], labels=teams)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of GPUs")
        jain = f"{r.jain_index:.3f}" if r.jain_index is not None else "-"
        ax.set_title(f"{r.policy}: GPU share by team (utilization {r.gpu_utilization:.1%}, Jain {jain})")
        ax.legend(loc="upper left", fontsize="small", ncol=len(teams))
    axes[-1].set_xlabel("simulated hours")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
