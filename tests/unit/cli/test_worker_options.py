"""`yard worker` copies its parameters into WorkerOptions by name: the two must list the same options."""

from __future__ import annotations

import inspect
from dataclasses import fields

from typer.testing import CliRunner

from trainyard.cli.main import app
from trainyard.cli.worker import WorkerOptions, worker


def test_every_parameter_but_verbose_is_an_option_field() -> None:
    parameters = set(inspect.signature(worker).parameters) - {"verbose"}
    assert parameters == {f.name for f in fields(WorkerOptions)}


def test_the_options_reach_the_checks() -> None:
    # --agents without --executor sim is refused by the checks that read WorkerOptions.
    result = CliRunner().invoke(app, ["worker", "--agents", "3"])
    assert result.exit_code == 2
    assert "--agents needs --executor sim" in result.output
