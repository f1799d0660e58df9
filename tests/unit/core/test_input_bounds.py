"""Inputs the API fuzzer found answered 500 (tests/integration/test_api_fuzz.py): now ValueErrors
that the API turns into 422."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainyard.model.quantity import parse_duration, parse_memory
from trainyard.model.team import TeamUpdate


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "9" * 400, [1], {"a": 1}, None, 4e9])
def test_parse_duration_refuses_non_text_and_unbounded_values(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_parse_duration_still_reads_durations() -> None:
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration(" 90 ") == 90.0
    assert parse_duration(2.5) == 2.5


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_parse_memory_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        parse_memory(value)


@pytest.mark.parametrize(
    "body",
    [
        {"gpu_quota": 7022856746248932385882112},
        {"cpu_quota": float("inf")},
        {"memory_quota": 2**64},
        {"gpu_type_quotas": {"a100": 2**40}},
    ],
)
def test_team_quotas_must_fit_their_columns(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TeamUpdate.model_validate(body)
