"""The reconciler's evidence that a live worker no longer runs a RUNNING attempt (server/absent.py)."""

from __future__ import annotations

from trainyard.model.records import LiveAttempt
from trainyard.model.states import JobStatus
from trainyard.server.absent import ABSENT_BEATS, AbsentAttempts

HB = 1.0


def live(job_id: str = "j1", worker: str = "w1", status: JobStatus = JobStatus.RUNNING) -> LiveAttempt:
    return LiveAttempt(job_id, 1, worker, f"lt-{job_id}", status, 1.0, 1, ())


def beat(tracker: AbsentAttempts, at: float, *jobs: str, worker: str = "w1") -> None:
    tracker.heartbeat(worker, [(j, 1, f"lt-{j}") for j in jobs], at)


def test_an_attempt_listed_by_every_heartbeat_is_never_absent() -> None:
    t = AbsentAttempts()
    for i in range(20):
        beat(t, float(i), "j1")
        assert t.absent([live()], i + 0.5, HB) == []


def test_an_attempt_missing_from_consecutive_heartbeats_is_absent() -> None:
    t = AbsentAttempts()
    beat(t, 0.0, "j1")
    assert t.absent([live()], 0.5, HB) == []  # first seen RUNNING here
    for i in range(1, ABSENT_BEATS):
        beat(t, float(i))
        assert t.absent([live()], i + 0.5, HB) == []
    beat(t, float(ABSENT_BEATS))
    assert t.absent([live()], ABSENT_BEATS + 0.5, HB) == [live()]


def test_heartbeats_before_the_attempt_was_seen_running_do_not_count() -> None:
    """Beats without the attempt sent before the worker accepted it (a late assignment) are no
    evidence: only those received after the reconciler saw it RUNNING count."""
    t = AbsentAttempts()
    for i in range(10):
        beat(t, float(i))  # the worker does not have it yet
    assert t.absent([live()], 10.0, HB) == []  # now RUNNING: the worker accepted it meanwhile
    beat(t, 10.5)  # built before it accepted, arrived late: one such beat at most
    beat(t, 11.0, "j1")
    for i in range(12, 12 + ABSENT_BEATS - 1):
        beat(t, float(i))
        assert t.absent([live()], i + 0.5, HB) == []


def test_only_running_attempts_of_workers_heartbeating_here_are_judged() -> None:
    t = AbsentAttempts()
    scheduled = live("j2", status=JobStatus.SCHEDULED)
    elsewhere = live("j3", worker="w2")  # its worker's heartbeats reach another replica
    assert t.absent([scheduled, elsewhere], 0.0, HB) == []
    for i in range(1, 10):
        beat(t, float(i))
    assert t.absent([scheduled, elsewhere], 10.0, HB) == []


def test_reconcile_closes_through_the_guarded_transition() -> None:
    t = AbsentAttempts()
    attempts = [live("j1"), live("j2")]
    t.absent(attempts, 0.0, HB)
    for i in range(1, ABSENT_BEATS + 1):
        beat(t, float(i), "j2")
    closed: list[tuple[str, int, str, str]] = []

    def lose(job_id: str, attempt: int, token: str, reason: str) -> bool:
        closed.append((job_id, attempt, token, reason))
        return True

    assert t.reconcile(lambda: attempts, lose, ABSENT_BEATS + 0.5, HB) == ["j1"]
    ((job_id, attempt, token, reason),) = closed
    assert (job_id, attempt, token) == ("j1", 1, "lt-j1") and "stopped listing" in reason
    # A transition the store refuses (the attempt moved on meanwhile) closes nothing.
    assert t.reconcile(lambda: attempts, lambda *_: False, ABSENT_BEATS + 1.0, HB) == []
