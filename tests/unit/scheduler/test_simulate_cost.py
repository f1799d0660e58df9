"""The simulator's cost per team: each attempt at its worker's GPU type and spot, for its running
time within the run, preempted work (spot reclaims) and work still running at the end included."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from typer.testing import CliRunner

from trainyard.cli.main import app
from trainyard.model.pricing import MICROS, Cost, Prices
from trainyard.scheduler.core import decide
from trainyard.scheduler.simulate import SimConfig, simulate
from trainyard.scheduler.snapshot import GIB, Worker
from trainyard.scheduler.workload import JobArrival, SpotReclaim, Workload

PRICES = Prices(gpu_hour={"a100": 2 * MICROS}, gpu_hour_default=MICROS, cpu_hour=0, gib_hour=0)
HOUR = 3600.0


def run(workload: Workload, prices: Prices | None = PRICES) -> dict[str, Cost]:
    r = simulate(workload, decide, config=SimConfig(cycle_s=1.0, prices=prices))
    return {g.name: g.cost for g in (*r.teams, r.overall)}


def test_each_team_pays_its_gpu_hours_at_the_workers_gpu_type() -> None:
    wl = Workload(
        "two teams",
        jobs=(
            JobArrival("a", 0.0, "vision", HOUR, gpu=2, memory=GIB),
            JobArrival("b", 0.0, "nlp", 2 * HOUR, gpu=1, memory=GIB),
        ),
        workers=(Worker("w1", cpu=16, memory=64 * GIB, gpu=4, gpu_type="a100"),),
    )
    cost = run(wl)
    assert cost["vision"] == Cost(4 * MICROS, 4 * MICROS, 2 * 3_600_000)
    assert cost["nlp"] == Cost(4 * MICROS, 4 * MICROS, 2 * 3_600_000)
    assert cost["all"].micros == 8 * MICROS
    assert run(wl, None)["all"] == Cost()  # no prices, no costs


def test_spot_is_discounted_and_reclaimed_work_is_paid_for() -> None:
    spot = Prices(gpu_hour={"a100": 2 * MICROS}, spot_discount=Fraction(1, 2))
    wl = Workload(
        "spot",
        jobs=(JobArrival("a", 0.0, "vision", 2 * HOUR, gpu=1, preemptible=True, memory=GIB),),
        workers=(
            Worker("s1", cpu=8, memory=32 * GIB, gpu=1, gpu_type="a100", spot=True),
            Worker("d1", cpu=8, memory=32 * GIB, gpu=1, gpu_type="a100"),
        ),
        # The spot worker is reclaimed an hour in: that hour is paid (at 50 % off); the job restarts
        # on demand and runs its two hours there (no checkpoint: its work is lost).
        reclaims=(SpotReclaim("s1", HOUR, 10 * HOUR),),
    )
    cost = run(wl, spot)["vision"]
    # About an hour on spot (saving half of its $2) and two on demand ($4).
    assert MICROS * 0.99 <= cost.saved_micros <= MICROS * 1.1
    assert cost.on_demand_micros >= 6 * MICROS
    assert cost.micros == cost.on_demand_micros - cost.saved_micros


TRACE = "\n".join(
    [
        '{"type": "worker", "id": "g1", "cpu": 32, "memory": "256Gi", "gpu": 1, "gpu_type": "a100"}',
        '{"id": "j1", "submit": 0, "team": "a", "gpu": 1, "runtime": "60m", "memory": "1Gi", "cpu": 1}',
        '{"id": "j2", "submit": 0, "team": "b", "gpu": 1, "runtime": "30m", "memory": "1Gi", "cpu": 1}',
    ]
)


def test_yard_simulate_prints_the_cost_per_team_at_the_prices_given(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text(TRACE)
    prices = tmp_path / "prices.toml"
    prices.write_text('cpu_hour = "0"\n[gpu_hour]\na100 = "3.00"\n')
    result = CliRunner().invoke(
        app, ["simulate", str(trace), "--policy", "scheduler", "--prices", str(prices)]
    )
    assert result.exit_code == 0, result.output
    table = result.stdout[result.stdout.index("Cost per team at your prices") :]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    # An hour and half an hour of one A100 at $3 (whole dollars, rounded down).
    assert rows["a"][2] == "$3" and rows["b"][2] == "$1" and rows["all"][2] == "$4"
    bad = tmp_path / "bad.json"
    bad.write_text('{"cpu_hour": "-1"}')
    assert CliRunner().invoke(app, ["simulate", str(trace), "--prices", str(bad)]).exit_code == 2
