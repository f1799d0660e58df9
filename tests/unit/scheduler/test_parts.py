"""The scheduler's parts on their own: the undo log, best fit, claims, the backfill rule, team costs.

``decide`` is tested whole in ``test_core`` (tables), ``test_properties`` (hypothesis) and
``test_decide_equivalence`` (frozen digests); these pin down the rules each module owns, so a change
to one shows up next to it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.unit.scheduler.helpers import NOW, gpu_node, job, node, team
from trainyard.scheduler.capacity import OCTAVE_OFFSET, OCTAVE_SLOTS, Fleet, cpu_octave
from trainyard.scheduler.reasons import clock, expected_start
from trainyard.scheduler.reservations import WorkerReservation
from trainyard.scheduler.snapshot import GIB, ResourceVector, SchedulerConfig, Worker
from trainyard.scheduler.teams import TeamLedger, TeamState, quota_block
from trainyard.scheduler.undo import UndoLog


def fleet_of(*workers: Worker) -> Fleet:
    fleet = Fleet(workers, SchedulerConfig(), NOW, UndoLog())
    fleet.index_all()
    return fleet


def test_undo_log_records_only_while_an_attempt_is_open_and_undoes_latest_first() -> None:
    log = UndoLog()
    done: list[str] = []
    log.record(lambda: done.append("outside"))
    log.begin()
    log.record(lambda: done.append("first"))
    log.record(lambda: done.append("second"))
    log.rollback()
    assert done == ["second", "first"]
    assert log.entries is None
    log.begin()
    log.record(lambda: done.append("kept"))
    log.commit()
    log.rollback()
    assert done == ["second", "first"]


def test_cpu_octave_and_bucket_keys() -> None:
    assert [cpu_octave(c) for c in (0.5, 1, 3, 4, 96)] == [-1, 0, 1, 2, 6]
    fleet = fleet_of(gpu_node("g", gpu=8, cpu=32))
    host = fleet.workers["g"]
    assert host.bucket_key == 8 * OCTAVE_SLOTS + cpu_octave(32) + OCTAVE_OFFSET
    assert fleet.groups[0].buckets.keys == [host.bucket_key]


def test_best_fit_keeps_the_big_worker_whole_and_allocate_rebuckets() -> None:
    fleet = fleet_of(gpu_node("big", gpu=8), gpu_node("small", gpu=2))
    one = job("one", gpu=1, gpu_type="a100")
    groups = fleet.groups
    host = fleet.best_fit(one, groups)
    assert host is not None and host.worker.id == "small"
    assert fleet.allocate(host, one) == (0,)
    assert host.free_gpus == [1]
    assert host.bucket_key == 1 * OCTAVE_SLOTS + cpu_octave(31) + OCTAVE_OFFSET
    eight = job("eight", gpu=8, gpu_type="a100")
    found = fleet.best_fit(eight, groups)
    assert found is not None and found.worker.id == "big"


def test_cached_data_outweighs_best_fit() -> None:
    fleet = fleet_of(node("plain", cpu=4), node("cached", cpu=32, cached=frozenset({"s3://d"})))
    reader = job("reader", cpu=2, uris=("s3://d",))
    host = fleet.best_fit(reader, fleet.groups)
    assert host is not None and host.worker.id == "cached"


def test_claim_takes_free_capacity_first_then_draining_and_rolls_back() -> None:
    fleet = fleet_of(node("w", cpu=8, mem=32 * GIB))
    host = fleet.workers["w"]
    host.free_cpu, host.draining_cpu = 2.0, 6.0
    fleet.undo.begin()
    fleet.claim(host, job("claimant", cpu=4))
    assert (host.free_cpu, host.draining_cpu) == (0.0, 4.0)
    assert len(host.added_holds) == 1
    fleet.undo.rollback()
    assert (host.free_cpu, host.draining_cpu, host.added_holds) == (2.0, 6.0, [])


def test_a_reservation_admits_its_own_job_short_jobs_and_what_fits_in_its_spare() -> None:
    reservation = WorkerReservation("reserved", start_at=NOW + 3600, spare=[2.0, 8.0 * GIB, 0.0])
    assert reservation.admits(job("reserved", cpu=64), NOW)
    assert reservation.admits(job("short", cpu=64, runtime=1800), NOW)  # ends before the start
    assert reservation.admits(job("small", cpu=2, mem=GIB, runtime=7200), NOW)
    assert not reservation.admits(job("large", cpu=4, runtime=7200), NOW)
    reservation.overlap("short", NOW + 1800, 64, GIB, 0)  # gone by the start: spare unchanged
    reservation.overlap("small", NOW + 7200, 2, GIB, 0)
    assert reservation.spare == [0.0, 7.0 * GIB, 0.0]
    assert not reservation.admits(job("another", cpu=1, runtime=7200), NOW)


def test_team_cost_is_share_plus_weighted_history_over_fair_share() -> None:
    state = TeamState("vision", team("vision"), [4.0, 0.0, 2.0], {}, history_share=0.1, fair_share=0.5)
    ledger = TeamLedger({"vision": state}, ResourceVector(16, 64 * GIB, 8), 0.5, UndoLog())
    assert ledger.share(state.usage) == 0.25
    assert ledger.cost(state) == (0.25 + 0.5 * 0.1) / 0.5
    state.leaving = [0.0, 0.0, 2.0]  # preempted this cycle: gone for fair share already
    assert ledger.cost(state) == (0.25 + 0.5 * 0.1) / 0.5  # cpu is now the dominant share
    state.leaving = [4.0, 0.0, 2.0]
    assert ledger.cost(state) == (0.5 * 0.1) / 0.5


def test_quota_block_says_never_before_in_use() -> None:
    state = TeamState("vision", team("vision", gpu=4), [0.0, 0.0, 3.0], {}, 0.0, 1.0)
    assert quota_block(state, job("big", gpu=8)) == (
        "never-fits",
        "needs 8 GPU, more than team vision's GPU quota of 4",
    )
    assert quota_block(state, job("two", gpu=2)) == ("quota", "team vision at GPU quota 3/4")
    assert quota_block(state, job("one", gpu=1)) is None


_T0 = datetime(2025, 3, 4, 13, 0, tzinfo=UTC).timestamp()  # a Tuesday, 13:00 UTC


@pytest.mark.parametrize(
    ("offset_s", "text"),
    [
        (-600, "any moment"),
        (0, "any moment"),
        (1, "by 13:01 UTC"),  # rounded up: a latest start
        (60, "by 13:01 UTC"),
        (3 * 3600 + 5 * 60, "by 16:05 UTC"),
        (10 * 3600 + 59 * 60, "by 23:59 UTC"),
        (10 * 3600 + 59 * 60 + 1, "by Mar 5 00:00 UTC"),  # rounded up into tomorrow (UTC): dated
        (86397, "by Mar 5 13:00 UTC"),  # was "now+86397s"
        (30 * 86400, "by Apr 3 13:00 UTC"),
    ],
)
def test_reason_times_are_clock_times_that_stay_true_when_read_later(offset_s: float, text: str) -> None:
    assert expected_start(_T0 + offset_s, _T0) == text


def test_a_reason_time_does_not_move_as_the_cycles_go_by() -> None:
    """Reasons are written only when their text changes: the same start reads the same all day."""
    start = _T0 + 2 * 3600 + 30
    assert {clock(start, _T0 + k * 600) for k in range(12)} == {"15:01 UTC"}
    assert clock(start, _T0 - 14 * 3600) == "Mar 4 15:01 UTC"  # written the day before
