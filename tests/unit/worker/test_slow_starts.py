"""An attempt whose STARTED answer comes late after its lease arrived is logged with the time each
phase took; a burst of them makes one line per interval, counting the others."""

from __future__ import annotations

import logging

import pytest

from trainyard.worker.attempt import SLOW_START_LOG_EVERY_S, SLOW_START_S, SlowStarts


def _marks(at: float, report_s: float) -> list[tuple[str, float]]:
    return [("lease", at), ("setup", at + 0.01), ("prepare", at + 0.02), ("report", at + 0.02 + report_s)]


def test_a_quick_start_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "trainyard.worker.attempt"):
        assert not SlowStarts().note(("j", 1), _marks(0.0, SLOW_START_S - 0.1))
    assert caplog.records == []


def test_a_slow_start_names_the_phase_that_took_the_time(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "trainyard.worker.attempt"):
        assert SlowStarts().note(("j", 2), _marks(0.0, 3.9))
    (record,) = caplog.records
    assert record.getMessage() == (
        "attempt j/2: started 3.9s after its lease arrived (setup 0.01s, prepare 0.01s, report 3.90s);"
        " 0 more slow starts since the last such line"
    )


def test_a_burst_of_slow_starts_makes_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    starts = SlowStarts()
    with caplog.at_level(logging.WARNING, "trainyard.worker.attempt"):
        made = [starts.note((f"j{i}", 1), _marks(i * 0.01, 2.0)) for i in range(500)]
        later = starts.note(("late", 1), _marks(SLOW_START_LOG_EVERY_S + 5.0, 2.0))
    assert made.count(True) == 1 and made[0] and later
    assert len(caplog.records) == 2
    assert caplog.records[1].getMessage().endswith("; 499 more slow starts since the last such line")
