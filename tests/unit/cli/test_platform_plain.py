"""`yard up` and `yard server`'s plain command lines (``trainyard.cli.platform_run.plain_arguments``)
are parsed exactly as Typer parses them; everything else is left to Typer."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from trainyard.cli import platform, platform_run
from trainyard.cli.main import app
from trainyard.cli.platform_run import PLAIN, plain_arguments


def _params(command: str) -> dict[str, Any]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return {p.name: p for p in group.commands[command].params if p.name}


@pytest.mark.parametrize("command", ["up", "server"])
def test_the_plain_options_are_the_commands_own(command: str) -> None:
    params = _params(command)
    assert not [p for p in params.values() if p.envvar]  # else plain_arguments must look at them
    flags, switches = PLAIN[command]
    for name, flag in flags.items():
        assert name in params[flag.field].opts, name
        assert params[flag.field].multiple == flag.repeatable, name
    for name, (field, _) in switches.items():
        assert name in params[field].opts + params[field].secondary_opts, name


@pytest.mark.parametrize("command", ["up", "server"])
def test_the_defaults_are_the_commands(command: str) -> None:
    typer_side = inspect.signature(getattr(platform, command)).parameters
    plain_side = inspect.signature(getattr(platform_run, command)).parameters
    assert list(typer_side) == list(plain_side)
    for name, p in plain_side.items():
        assert p.default == typer_side[name].default, name


def _typer_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    got: list[dict[str, object]] = []
    monkeypatch.setattr(platform_run, argv[0], lambda **kw: got.append(kw))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    (parsed,) = got
    return parsed


def _plain_parse(argv: list[str]) -> dict[str, object]:
    given = plain_arguments(argv[0], argv[1:], {})
    assert given is not None, argv
    bound = inspect.signature(getattr(platform_run, argv[0])).bind(**given)
    bound.apply_defaults()
    return dict(bound.arguments)


PLAIN_ARGVS = [
    ["up"],
    ["up", "--home", "/tmp/h", "--port", "18080", "--grpc-port", "18081", "--workers", "1"],
    ["up", "--workers=0", "--worker-cpus", "2.5", "--worker-memory", "4Gi", "--worker-gpus", "1"],
    ["up", "--worker-gpu-type", "t4", "--services", "--replicas", "2", "--no-share-cwd", "-v"],
    ["up", "--allow-cwd", "/data", "--allow-cwd=/home", "--share-cwd", "--heartbeat-interval", "0.5"],
    ["up", "--cancel-grace", "3", "--host", "0.0.0.0", "--workers", "64", "--verbose"],
    ["server"],
    ["server", "--home", "h", "--host", "127.0.0.1", "--port", "1", "--grpc-port", "2", "-v"],
]


@pytest.mark.parametrize("argv", PLAIN_ARGVS)
def test_the_plain_path_parses_as_typer_does(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _plain_parse(argv) == _typer_parse(argv, monkeypatch)


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--help"],
        ["up", "--workers", "65"],
        ["up", "--replicas", "0"],
        ["up", "--port", "-1"],
        ["up", "--worker-cpus", "1e3"],
        ["up", "--home", ""],
        ["up", "--home"],
        ["up", "extra"],
        ["server", "--workers", "1"],
        ["server", "--help"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str]) -> None:
    assert plain_arguments(argv[0], argv[1:], {}) is None
    assert plain_arguments(argv[0], [], {"_YARD_COMPLETE": "bash_source"}) is None


def test_main_runs_the_plain_path_and_leaves_the_rest_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[dict[str, object]] = []
    typer_ran: list[list[str]] = []
    monkeypatch.setattr(platform_run, "up", lambda **kw: ran.append(kw))
    monkeypatch.setattr("trainyard.cli.main.typer_main", typer_ran.append)
    from trainyard.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["up", "--workers", "2", "--home", "h"])
    assert done.value.code == 0
    assert ran == [{"workers": 2, "home": Path("h")}]
    main(["up", "--help"])
    assert typer_ran == [["up", "--help"]]


def test_plain_path_errors_are_typers(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from trainyard.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["up", "--replicas", "2"])
    assert done.value.code == 2
    message = "error: --replicas needs --services (replicas share PostgreSQL, Redis and Kafka)\n"
    assert capsys.readouterr().err == message
    result = CliRunner().invoke(app, ["up", "--replicas", "2"])
    assert result.exit_code == 2 and result.stderr == message
