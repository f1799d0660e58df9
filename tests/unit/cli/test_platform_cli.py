"""The platform commands' option handling, without starting a platform: `yard worker` builds its
WorkerConfig (the agent is replaced), `yard up` refuses bad replica setups, and `yard --help` lists the
commands in their usual order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from trainyard.cli.main import app
from trainyard.cli.platform import _local_worker_args
from trainyard.model.quantity import parse_memory
from trainyard.worker.config import WorkerConfig
from trainyard.worker.isolation import IsolationMode


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[WorkerConfig]:
    """The configs `yard worker` would start its agent with (the agent itself never runs)."""
    configs: list[WorkerConfig] = []
    monkeypatch.setattr("trainyard.worker.agent.main", configs.append)
    for var in ("TRAINYARD_SERVER", "TRAINYARD_ISOLATION", "TRAINYARD_RUN_AS", "TRAINYARD_ALLOW_CWD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TRAINYARD_WORKER_TOKEN", "wt")
    return configs


def worker(*args: str) -> Result:
    return CliRunner().invoke(app, ["worker", *args])


def test_worker_defaults(started: list[WorkerConfig], tmp_path: Path) -> None:
    res = worker("--home", str(tmp_path), "--name", "w1")
    assert res.exit_code == 0, res.output
    (cfg,) = started
    assert (cfg.server, cfg.token, cfg.name) == ("127.0.0.1:50051", "wt", "w1")
    assert cfg.work_dir == tmp_path / "workers" / "w1"
    assert cfg.protected_dirs == (tmp_path,)
    assert (cfg.pool, cfg.labels, cfg.memory, cfg.data_cache_dir) == ("default", {}, None, None)
    assert (cfg.max_log_bytes, cfg.preempt_grace_s) == (1 << 30, 30.0)
    assert (cfg.spot_notice_url, cfg.spot_notice_style, cfg.spot_poll_s) == (None, "auto", 2.0)
    assert (cfg.isolation, cfg.job_network, cfg.job_pids_limit) == (IsolationMode("best-effort"), True, 4096)
    assert (cfg.docker_host, cfg.docker_ulimits, cfg.allow_cwd, cfg.run_as) == (None, (), (), None)
    assert (cfg.workdir_unpacked_limit, cfg.workdir_file_limit) == (parse_memory("10Gi"), 100_000)


def test_worker_passes_every_option_on(started: list[WorkerConfig], tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    res = worker(
        *("--server", "10.0.0.1:50051,10.0.0.2:50051", "--home", str(tmp_path), "--name", "w2"),
        *("--work-dir", str(tmp_path / "wd"), "--data-cache", str(tmp_path / "dc")),
        *("--cpus", "4", "--memory", "8Gi", "--gpus", "2", "--gpu-type", "a100", "--pool", "gpu"),
        *("--region", "eu", "--label", "rack=r1", "--label", "zone=", "--spot"),
        *("--spot-notice-url", "http://notice", "--spot-notice-style", "gcp", "--spot-poll", "0.5"),
        *("--preempt-grace", "5", "--max-log-bytes", "1Mi", "--isolation", "off", "--no-job-network"),
        *("--job-pids-limit", "0", "--docker-host", "unix:///d.sock", "--allow-cwd", "/data/./x"),
        *("--allow-cwd", "/home", "--workdir-unpacked-limit", "1Gi", "--workdir-file-limit", "7"),
    )
    assert res.exit_code == 0, res.output
    (cfg,) = started
    assert (cfg.server, cfg.name, cfg.token) == ("10.0.0.1:50051,10.0.0.2:50051", "w2", "wt")
    assert (cfg.work_dir, cfg.data_cache_dir) == (tmp_path / "wd", tmp_path / "dc")
    assert (cfg.cpus, cfg.memory, cfg.gpus, cfg.gpu_type, cfg.pool, cfg.region) == (
        4.0,
        8 << 30,
        2,
        "a100",
        "gpu",
        "eu",
    )
    assert cfg.labels == {"rack": "r1", "zone": "", "spot": "true"}
    assert (cfg.spot_notice_url, cfg.spot_notice_style, cfg.spot_poll_s) == ("http://notice", "gcp", 0.5)
    assert (cfg.preempt_grace_s, cfg.max_log_bytes) == (5.0, 1 << 20)
    assert (cfg.isolation, cfg.job_network, cfg.job_pids_limit) == (IsolationMode("off"), False, 0)
    assert cfg.docker_host == "unix:///d.sock"
    assert cfg.allow_cwd == (Path("/data/x"), Path("/home"))
    assert (cfg.workdir_unpacked_limit, cfg.workdir_file_limit) == (1 << 30, 7)


def test_worker_token_from_a_file(
    started: list[WorkerConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINYARD_WORKER_TOKEN")
    (tmp_path / "tok").write_text("secret\n")
    assert worker("--home", str(tmp_path), "--token-file", str(tmp_path / "tok")).exit_code == 0
    assert started[0].token == "secret"


def test_worker_without_a_token_exits_1(
    started: list[WorkerConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINYARD_WORKER_TOKEN")
    res = worker("--home", str(tmp_path))
    assert res.exit_code == 1 and not started
    assert res.stderr.startswith("error: no worker token: set TRAINYARD_WORKER_TOKEN or --token-file (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "novalue"], "error: --label 'novalue' must be K=V\n"),
        (["--label", "=v"], "error: --label '=v' must be K=V\n"),
        (["--memory", "lots"], "error: --memory: "),
        (["--max-log-bytes", "x"], "error: --max-log-bytes: "),
        (["--spot-notice-style", "azure"], "error: --spot-notice-style must be aws, gcp or auto\n"),
        (["--isolation", "strict"], "error: --isolation must be required, best-effort or off\n"),
        (["--workdir-unpacked-limit", "x"], "error: --workdir-unpacked-limit: "),
        (["--run-as", ":g"], "error: --run-as needs a user name or uid\n"),
        (["--allow-cwd", "/"], "error: --allow-cwd /: must be an absolute directory other than /\n"),
        (["--allow-cwd", "rel"], "error: --allow-cwd rel: must be an absolute directory other than /\n"),
        (["--docker-ulimit", "nofile"], "error: --docker-ulimit: "),
    ],
)
def test_worker_refuses_bad_options_with_exit_2(
    started: list[WorkerConfig], tmp_path: Path, args: list[str], message: str
) -> None:
    res = worker("--home", str(tmp_path), *args)
    assert res.exit_code == 2 and not started, res.output
    assert res.stderr.startswith(message), res.stderr


def test_worker_needs_both_halves_of_a_client_certificate(
    started: list[WorkerConfig], tmp_path: Path
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    res = worker("--home", str(tmp_path), "--tls-cert", str(cert))
    assert res.exit_code == 2 and not started
    assert res.stderr == "error: a client certificate needs both --tls-cert and --tls-key\n"


def test_worker_the_first_bad_option_is_the_one_reported(started: list[WorkerConfig], tmp_path: Path) -> None:
    res = worker("--home", str(tmp_path), "--isolation", "x", "--label", "y", "--memory", "z")
    assert res.exit_code == 2
    assert res.stderr == "error: --label 'y' must be K=V\n"


def test_up_replicas_need_services_and_apart_ports() -> None:
    res = CliRunner().invoke(app, ["up", "--replicas", "2"])
    assert res.exit_code == 2
    assert res.stderr == "error: --replicas needs --services (replicas share PostgreSQL, Redis and Kafka)\n"
    res = CliRunner().invoke(
        app, ["up", "--services", "--replicas", "2", "--port", "5000", "--grpc-port", "5001"]
    )
    assert res.exit_code == 2
    assert res.stderr == "error: replicas take REST ports 5000.. and gRPC ports 5001..; they overlap\n"


def test_up_worker_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = _local_worker_args(2.0, "4Gi", 1, "t4", False, [Path("/data")])
    assert args == [
        *("--cpus", "2.0", "--memory", "4Gi", "--gpus", "1", "--gpu-type", "t4"),
        *("--allow-cwd", "/data"),
    ]
    monkeypatch.setattr("trainyard.cli.platform_run._shareable", lambda path: True)
    assert _local_worker_args(None, None, None, None, True, []) == ["--allow-cwd", str(tmp_path.resolve())]


def test_help_order_does_not_depend_on_which_command_module_was_imported_first() -> None:
    # Tests (and programs) import command modules directly: registration order then differs.
    code = (
        "import trainyard.cli.usage, trainyard.cli.worker, trainyard.cli.admin\n"
        "from typer.testing import CliRunner\n"
        "from trainyard.cli.main import app\n"
        "out = CliRunner().invoke(app, ['--help']).stdout.split('Commands:\\n')[1]\n"
        "print(' '.join(line.split()[0] for line in out.splitlines() if line.strip()))\n"
    )
    got = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert got[:3] == ["simulate", "submit", "get"] and got.index("worker") > got.index("server")


def test_help_lists_the_commands_in_their_usual_order() -> None:
    # Command modules register on import: an import reordered in cli/main.py would reorder `yard --help`.
    res = CliRunner().invoke(app, ["--help"])
    listed = [line.split()[0] for line in res.stdout.split("Commands:\n")[1].splitlines() if line.strip()]
    assert listed == [
        *("simulate", "submit", "get", "ls", "tasks", "logs", "cancel", "restart", "events", "artifacts"),
        *("sbatch", "workers", "queues", "up", "server", "worker", "usage", "admin", "secret"),
    ]
    res = CliRunner().invoke(app, ["admin", "--help"])
    listed = [line.split()[0] for line in res.stdout.split("Commands:\n")[1].splitlines() if line.strip()]
    assert listed == [
        *("create-user", "drain", "audit", "prune", "replay", "migrate", "token", "team", "prices", "jobs"),
    ]
