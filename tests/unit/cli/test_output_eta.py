"""How `yard` shows an estimated start: a duration when near, a clock time when far, never seconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from trainyard.cli.output import fmt_eta

NOW = datetime(2025, 3, 4, 13, 0, 20, tzinfo=UTC)  # a Tuesday
BERLIN = timezone(timedelta(hours=1))  # 14:00:20 local


def at(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (at(-3600), "any moment"),
        (at(0), "any moment"),
        (at(59), "any moment"),
        (at(60), "in 1 min"),
        (at(61), "in 2 min"),  # rounded up: the estimate is a latest start
        (at(3 * 60), "in 3 min"),
        (at(59 * 60 + 30), "in 1 h"),
        (at(2 * 3600 + 5 * 60), "in 2 h 5 min"),
        (at(3 * 3600 - 1), "in 3 h"),
        (at(3 * 3600), "at 17:01"),  # further: a local clock time, to the minute rounded up
        (at(9 * 3600 + 59 * 60 - 20), "at 23:59"),
        (at(9 * 3600 + 59 * 60), "tomorrow at 00:00"),
        (at(86397), "tomorrow at 14:01"),  # the "now+86397s" of issue 16
        (at(2 * 86400 - 20), "on Thu 6 Mar at 14:00"),
        (at(300 * 86400 - 20), "on Mon 29 Dec at 14:00"),
        (at(330 * 86400 - 20), "on Wed 28 Jan 2026 at 14:00"),
        ("2025-03-04T13:10:20", "in 10 min"),  # no offset: UTC, as the API writes
        ("soon", "soon"),  # not a time: the server's text as it is
        (None, "-"),
    ],
)
def test_fmt_eta(value: str | None, text: str) -> None:
    assert fmt_eta(value, now=NOW, tz=BERLIN) == text
