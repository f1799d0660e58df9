"""JobSpec validation: clear, field-level errors for bad input; normalisation for good input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from trainyard.model import retry
from trainyard.model.quantity import format_duration, parse_duration, parse_memory
from trainyard.model.spec import JobSpec, Retry
from trainyard.model.states import AttemptOutcome, JobStatus


def errors(body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(body)
    return {".".join(map(str, x["loc"])): x["msg"] for x in e.value.errors()}


def test_design_example_parses() -> None:
    s = JobSpec.model_validate(
        {
            "name": "resnet50-cifar",
            "kind": "train",
            "command": ["python", "train.py", "--epochs", "3"],
            "image": None,
            "workdir": None,
            "env": {"LR": "0.1"},
            "resources": {"cpu": 4, "memory": "16Gi", "gpu": 1, "gpu_type": "a100"},
            "pool": "gpu",
            "team": "vision",
            "priority": "normal",
            "max_runtime": "24h",
            "retry": {"max_attempts": 3, "backoff": "30s", "on": ["infra", "exit:137"]},
            "replicas": 1,
            "preemptible": True,
            "data": {"region": "us-east-1", "uris": ["s3://datasets/cifar"]},
            "artifacts": ["outputs/"],
        }
    )
    assert s.resources.memory == 16 << 30 and s.max_runtime == 86400 and s.retry.backoff == 30
    assert JobSpec.model_validate(s.canonical()) == s
    assert s.canonical()["resources"]["memory"] == "16Gi" and s.canonical()["max_runtime"] == "24h"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": []}, "command"),
        ({"command": ["x"], "resources": {"memory": "lots"}}, "resources.memory"),
        ({"command": ["x"], "resources": {"cpu": -1}}, "resources.cpu"),
        ({"command": ["x"], "resources": {"cpu": 1e9}}, "resources.cpu"),
        ({"command": ["x"], "resources": {"gpu": 1000}}, "resources.gpu"),
        ({"command": ["x"], "priority": "asap"}, "priority"),
        ({"command": ["x"], "bogus": 1}, "bogus"),
        ({"command": ["x"], "max_runtime": "48h"}, "max_runtime"),
        ({"command": ["x"], "max_runtime": "soon"}, "max_runtime"),
        ({"command": ["x"], "env": {"TRAINYARD_JOB_ID": "x"}}, "env"),
        ({"command": ["x"], "artifacts": ["../etc"]}, "artifacts"),
        ({"command": ["x"], "retry": {"on": ["sometimes"]}}, "retry.on"),
        ({}, "command"),
    ],
)
def test_bad_specs_name_the_field(body: dict[str, object], field: str) -> None:
    assert field in errors(body)


def test_quantities() -> None:
    assert (
        parse_memory("512Mi") == 512 << 20 and parse_memory("2G") == 2_000_000_000 and parse_memory(10) == 10
    )
    assert parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    for bad in ("lots", "-1Gi", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    with pytest.raises(ValueError):
        parse_duration("1h30")


@given(st.integers(0, 10**7))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_retry_policy() -> None:
    p = Retry(max_attempts=3, on=("infra", "exit:137"))
    assert retry.decide(p, AttemptOutcome.LOST, None, 1).retry
    assert retry.decide(p, AttemptOutcome.FAILED, 137, 2).retry
    assert not retry.decide(p, AttemptOutcome.FAILED, 1, 1).retry
    assert not retry.decide(p, AttemptOutcome.LOST, None, 3).retry
    assert retry.decide(p, AttemptOutcome.TIMED_OUT, None, 1).final_status is JobStatus.TIMED_OUT
    assert not retry.decide(p, AttemptOutcome.SUCCEEDED, 0, 1).retry
    backoff = Retry(max_attempts=5, backoff=10, max_backoff=25, on=("failed",))
    delays = [retry.decide(backoff, AttemptOutcome.FAILED, 1, n).delay_s for n in (1, 2, 3, 4)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and all(12.5 <= d <= 25 for d in delays[2:])
