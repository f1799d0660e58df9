"""The leader's queue board: positions renumbered over the jobs still waiting, and a JSON round trip
that every replica reads back the same."""

from __future__ import annotations

from trainyard.server.queueboard import QueueBoard, waiting_positions


def test_positions_count_only_jobs_still_waiting_per_team() -> None:
    cycle = {"a1": 1, "a2": 2, "a3": 3, "b1": 1, "b2": 2}
    teams = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b"}
    # a1 and b1 were placed by the cycle: the others move up.
    assert waiting_positions(cycle, teams, {"a2", "a3", "b2"}) == {"a2": 1, "a3": 2, "b2": 1}


def test_a_waiting_job_the_cycle_did_not_order_has_no_position() -> None:
    assert waiting_positions({"a1": 1}, {"a1": "a", "new": "a"}, {"a1", "new"}) == {"a1": 1}


def test_board_round_trips_through_json() -> None:
    board = QueueBoard({"j1": 1, "j2": 2}, {"j1": 1000.4, "j2": None}, as_of=5.0, estimated_at=4.0)
    back = QueueBoard.from_json(board.to_json())
    assert back.positions == board.positions
    assert back.starts == {"j1": 1000.0, "j2": None}
    assert back.lookup("j1") == {"queue_position": 1, "estimated_start_at": 1000.0}
    assert back.lookup("gone") == {"queue_position": None, "estimated_start_at": None}
    assert (back.as_of, back.estimated_at) == (5.0, 4.0)
