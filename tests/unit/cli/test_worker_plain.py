"""`yard worker`'s plain path (``trainyard.cli.worker_options.plain_options``) parses what it takes
exactly as Typer does, and leaves everything else to Typer: the agents `yard up` starts run on it."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from trainyard.cli import worker_options
from trainyard.cli.main import app
from trainyard.cli.platform import _local_worker_args
from trainyard.cli.worker import worker
from trainyard.cli.worker_options import _PLAIN, OPTION_ENVVARS, WorkerOptions, plain_options


def _command_params() -> dict[str, Any]:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    return {p.name: p for p in command.commands["worker"].params if p.name}


def _envvars(param: Any) -> set[str]:
    envvar = param.envvar
    return set() if envvar is None else {envvar} if isinstance(envvar, str) else set(envvar)


def test_every_option_envvar_is_known() -> None:
    # One missing here would let the plain path ignore a variable that Typer reads.
    declared = set().union(*(_envvars(p) for p in _command_params().values()))
    assert declared == OPTION_ENVVARS - {"_YARD_COMPLETE"}


def test_the_plain_flags_are_the_commands_own() -> None:
    params = _command_params()
    for name, flag in _PLAIN.items():
        assert name in params[flag.field].opts, name
        assert params[flag.field].multiple == flag.repeatable, name
        assert not getattr(params[flag.field], "exists", False), name


def test_the_options_defaults_are_the_commands() -> None:
    signature = inspect.signature(worker).parameters
    for f in fields(WorkerOptions):
        assert f.default == signature[f.name].default, f.name


def _typer_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[WorkerOptions, bool]:
    got: list[tuple[WorkerOptions, bool]] = []
    monkeypatch.setattr("trainyard.cli.worker.run", lambda options, verbose: got.append((options, verbose)))
    result = CliRunner().invoke(app, ["worker", *argv])
    assert result.exit_code == 0, result.output
    (parsed,) = got
    return parsed


PLAIN_ARGVS = [
    [],
    ["--server", "127.0.0.1:50051", "--home", "/tmp/h", "--name", "local-1"],
    _local_worker_args(2.0, "4Gi", 1, "t4", False, [Path("/data"), Path("/home")]),
    _local_worker_args(0.5, None, 0, None, False, []),
    ["--server=10.0.0.1:1,10.0.0.2:1", "--label", "rack=r1", "--label=zone=", "-v", "--pool", "gpu"],
    ["--name", "a", "--name", "b", "--cpus", "4", "--token-file", "t", "--work-dir", "wd", "--verbose"],
    ["--region", "eu", "--memory", "8Gi", "--gpu-type", "a100", "--gpus", "08", "--home", "rel/h"],
]


@pytest.mark.parametrize("argv", PLAIN_ARGVS)
def test_the_plain_path_parses_as_typer_does(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OPTION_ENVVARS:
        monkeypatch.delenv(var, raising=False)
    assert plain_options(argv, {}) == _typer_parse(argv, monkeypatch)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--spot"],
        ["--isolation", "off"],
        ["--cpus", "-1"],
        ["--cpus", "1e3"],
        ["--gpus", "1.5"],
        ["--name"],
        ["--name", "--pool"],
        ["--home", ""],
        ["--", "--name", "x"],
        ["extra"],
        ["-vv"],
        ["--nam", "x"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert plain_options(argv, {}) is None


def test_an_option_set_by_the_environment_is_left_to_typer() -> None:
    assert plain_options(["--name", "x"], {"TRAINYARD_ISOLATION": "off"}) is None
    assert plain_options(["--name", "x"], {"TRAINYARD_SERVER": "h:1"}) is None
    assert plain_options(["--name", "x"], {"_YARD_COMPLETE": "bash_source"}) is None
    # Given as a flag, the option beats its variable, in Typer too.
    assert plain_options(["--server", "a:1"], {"TRAINYARD_SERVER": "h:1"}) == (
        WorkerOptions(server="a:1"),
        False,
    )
    assert plain_options(["--name", "x"], {"TRAINYARD_HOME": "/h", "TRAINYARD_WORKER_TOKEN": "t"}) is not None


def test_main_runs_the_plain_path_and_leaves_the_rest_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[WorkerOptions, bool]] = []
    typer_ran: list[list[str]] = []
    monkeypatch.setattr(worker_options, "run", lambda options, verbose: ran.append((options, verbose)))
    monkeypatch.setattr("trainyard.cli.main.typer_main", typer_ran.append)
    for var in OPTION_ENVVARS:
        monkeypatch.delenv(var, raising=False)
    from trainyard.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["worker", "--name", "x", "-v"])
    assert done.value.code == 0
    assert ran == [(WorkerOptions(name="x"), True)]
    main(["worker", "--spot"])
    assert typer_ran == [["worker", "--spot"]]


def test_plain_path_errors_are_typers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    # The checks are the same code on both paths: `error: ...` and exit status 2.
    monkeypatch.setenv("TRAINYARD_WORKER_TOKEN", "wt")
    for var in OPTION_ENVVARS:
        monkeypatch.delenv(var, raising=False)
    from trainyard.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["worker", "--home", str(tmp_path), "--label", "novalue"])
    assert done.value.code == 2
    assert "error: --label 'novalue' must be K=V" in capsys.readouterr().err
    result = CliRunner().invoke(app, ["worker", "--home", str(tmp_path), "--label", "novalue"])
    assert result.exit_code == 2 and "error: --label 'novalue' must be K=V" in result.output
