"""`yard simulate` end to end through typer: tables, JSON, the plot (and without matplotlib), traces and
their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainyard.cli.main import app

runner = CliRunner()

TRACE = "\n".join(
    [
        '{"type": "worker", "id": "g1", "cpu": 32, "memory": "256Gi", "gpu": 1, "gpu_type": "a100", "pool": "gpu"}',
        '{"type": "worker", "id": "c1", "cpu": 8, "memory": "32Gi", "pool": "cpu"}',
        '{"type": "team", "name": "a", "weight": 2}',
        '{"id": "j1", "submit": 0, "team": "a", "gpu": 1, "pool": "gpu", "runtime": "10m"}',
        '{"id": "j2", "submit": 5, "team": "b", "gpu": 1, "pool": "gpu", "runtime": "10m"}',
        '{"id": "j3", "submit": 6, "team": "b", "cpu": 2, "pool": "cpu", "runtime": "10m"}',
    ]
)


def test_synthetic_small_prints_both_policies_per_team_and_priority() -> None:
    result = runner.invoke(app, ["simulate", "--synthetic", "small", "--cycle-s", "60"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "synthetic-small" in out
    for word in ("Per team", "Per priority", "scheduler", "fifo", "GPU UTIL", "JAIN", "vision", "urgent"):
        assert word in out, word
    assert "WAIT P50 (scheduler / fifo)" in out


def test_json_output_parses_and_carries_both_results() -> None:
    result = runner.invoke(
        app, ["simulate", "--synthetic", "small", "--seed", "2", "--cycle-s", "60", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["workload"] == "synthetic-small" and data["seed"] == 2
    assert set(data["results"]) == {"scheduler", "fifo"}
    sched = data["results"]["scheduler"]
    assert 0 < sched["gpu_utilization"] <= 1
    assert {t["name"] for t in sched["teams"]} >= {"vision", "nlp"}
    assert len(sched["series"]["t"]) == len(sched["series"]["queue_depth"]) > 100
    assert sched["wall_s"] > 0


def test_a_trace_with_one_policy_and_a_plot(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE)
    png = tmp_path / "out.png"
    result = runner.invoke(app, ["simulate", str(trace), "--policy", "fifo", "--plot", str(png), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    fifo = data["results"]["fifo"]
    assert set(data["results"]) == {"fifo"}
    # FIFO: j2 waits for j1 to end at 600, and the CPU job j3 (submitted at 6) waits behind j2.
    b = next(t for t in fifo["teams"] if t["name"] == "b")
    assert (b["wait_p50_s"], b["wait_p99_s"]) == (594, 595)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_with_both_policies(tmp_path: Path) -> None:
    png = tmp_path / "both.png"
    result = runner.invoke(app, ["simulate", "--synthetic", "small", "--cycle-s", "120", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000


def test_a_bad_trace_names_its_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(TRACE + '\n{"id": "j4", "submit": 0, "team": "a"}\n')
    result = runner.invoke(app, ["simulate", str(trace)])
    assert result.exit_code == 2
    assert "line 7: missing runtime" in result.stderr


def test_a_workload_is_required_and_only_one() -> None:
    assert runner.invoke(app, ["simulate"]).exit_code == 2
    assert runner.invoke(app, ["simulate", "x.jsonl", "--synthetic", "small"]).exit_code == 2


def test_plot_without_matplotlib_says_which_extra_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # matplotlib is the `plot` extra: a lean install has none. None in sys.modules fails its import.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "day.png"
    result = runner.invoke(app, ["simulate", "--synthetic", "small", "--plot", str(png)])
    assert result.exit_code == 2
    assert result.stderr == "error: --plot needs matplotlib: pip install 'trainyard[plot]'\n"
    assert result.stdout == "" and not png.exists()  # refused before the simulation, not after it


def test_without_plot_matplotlib_is_not_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = runner.invoke(app, ["simulate", "--synthetic", "small", "--policy", "fifo", "--json"])
    assert result.exit_code == 0, result.output


def test_autoscale_reports_the_fixed_and_the_autoscaled_fleet_side_by_side(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(TRACE)
    result = runner.invoke(app, ["simulate", str(trace), "--autoscale", "--scale-after-min", "1"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Fixed fleet vs autoscaled (scheduler): add after 1.0m of demand, boot 5.0m" in out
    assert "WORKER-H" in out and "WORKERS STARTED" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("fixed ", "autoscaled "))] == [
        "fixed",
        "autoscaled",
    ]

    result = runner.invoke(app, ["simulate", str(trace), "--autoscale", "--policy", "fifo", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["results"]) == {"fifo", "fifo+autoscale"}
    assert data["autoscale"] == {"scale_after_s": 300.0, "boot_s": 300.0, "idle_s": 1800.0}
    fixed, scaled = data["results"]["fifo"], data["results"]["fifo+autoscale"]
    assert fixed["workers_started"] == 0 and scaled["workers_started"] == 2  # one GPU, one CPU worker
    assert scaled["overall"]["wait_p50_s"] > fixed["overall"]["wait_p50_s"]
    # Ten-minute jobs on a fleet that idles between them: the boot delay costs more than it saves.
    assert fixed["worker_hours"] == pytest.approx(2 * fixed["end_s"] / 3600)
    assert 0 < scaled["worker_hours"] < 2 * scaled["end_s"] / 3600
