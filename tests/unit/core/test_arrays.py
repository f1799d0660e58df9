"""Job arrays and dependencies in the model: Slurm's index syntax, the JobSpec fields, task commands,
and when a dependency is met, waits or can never be met."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from trainyard.model import arrays
from trainyard.model.arrays import array_status, dependency_state, parse_indices
from trainyard.model.spec import JobSpec
from trainyard.model.states import ALLOWED, JobStatus


def errors(body: dict[str, object]) -> dict[str, str]:
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate({"command": ["x"], **body})
    return {".".join(map(str, x["loc"])): x["msg"] for x in e.value.errors()}


@pytest.mark.parametrize(
    ("text", "indices"),
    [
        ("0-4", [0, 1, 2, 3, 4]),
        ("7", [7]),
        ("1,3,5-9:2", [1, 3, 5, 7, 9]),
        (" 0-15:4 , 20 ", [0, 4, 8, 12, 20]),
        ("9,2,5", [2, 5, 9]),  # ascending, whatever the order written
        ("0-9999", list(range(10_000))),
    ],
)
def test_indices_in_slurm_syntax(text: str, indices: list[int]) -> None:
    assert parse_indices(text) == indices


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must look like"),
        ("a-b", "must look like"),
        ("1-", "must look like"),
        ("5-1", "run upwards"),
        ("0-9:0", "step of at least 1"),
        ("0-10000", "at most 10000 tasks"),
        ("0-5000,5001-10001", "at most 10000 tasks"),
        ("10000", "over the largest"),
        ("1-3,2", "named twice"),
        ("0-99999999", "at most 10000 tasks"),
        ("9990-10009", "over the largest"),
    ],
)
def test_bad_indices_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_indices(text)


@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(1, 7)), min_size=1, max_size=6)
)
def test_indices_are_the_union_of_the_ranges_when_disjoint(items: list[tuple[int, int, int]]) -> None:
    text = ",".join(f"{lo}-{lo + span}:{step}" for lo, span, step in items)
    wanted: list[int] = []
    for lo, span, step in items:
        wanted.extend(range(lo, lo + span + 1, step))
    if len(set(wanted)) != len(wanted):
        with pytest.raises(ValueError, match="named twice"):
            parse_indices(text)
    else:
        assert parse_indices(text) == sorted(wanted)


def test_array_flag_with_a_limit() -> None:
    assert arrays.parse_array_flag("0-199%16") == {"indices": "0-199", "parallelism": 16}
    assert arrays.parse_array_flag("1, 3") == {"indices": "1,3"}
    for bad in ("0-9%0", "0-9%x", "x%2"):
        with pytest.raises(ValueError):
            arrays.parse_array_flag(bad)


def test_task_ids_and_commands() -> None:
    assert arrays.task_id("j01abc", 7) == "j01abc-7"
    cmd = ["python", "train.py", "--trial", "{index}", "--out=run-{index}/x", "{other}", "{{index}}"]
    assert arrays.task_command(cmd, 12) == [
        "python",
        "train.py",
        "--trial",
        "12",
        "--out=run-12/x",
        "{other}",
        "{12}",
    ]


def test_the_jobspec_takes_an_array_and_dependencies() -> None:
    s = JobSpec.model_validate(
        {
            "command": ["python", "train.py", "--trial", "{index}"],
            "array": {"indices": "0-199", "parallelism": 16},
            "depends_on": [{"job": "j01abc"}, {"job": "j01def-3", "condition": "finished"}],
        }
    )
    assert s.array is not None and s.array.parallelism == 16 and len(s.array.task_indices()) == 200
    assert [(d.job, d.condition) for d in s.depends_on] == [("j01abc", "succeeded"), ("j01def-3", "finished")]
    assert JobSpec.model_validate(s.canonical()) == s
    # YAML may give a single index as a number; no parallelism means no cap, and is left out.
    one = JobSpec.model_validate({"command": ["x"], "array": {"indices": 5}})
    assert one.canonical()["array"] == {"indices": "5"}


def test_specs_without_the_new_fields_keep_their_fingerprint() -> None:
    # The canonical spec of a job that uses neither field is as it was before they existed.
    canonical = JobSpec.model_validate({"command": ["x"]}).canonical()
    assert "array" not in canonical and "depends_on" not in canonical


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"array": {"indices": "0-10000"}}, "array.indices", "at most 10000 tasks"),
        ({"array": {"indices": "3-1"}}, "array.indices", "run upwards"),
        ({"array": {"indices": "0-9", "parallelism": 0}}, "array.parallelism", "greater than or equal to 1"),
        ({"array": {"indices": "0-9", "bogus": 1}}, "array.bogus", "Extra inputs"),
        ({"array": {"indices": "0-9"}, "replicas": 2}, "", "replicas must be 1 with array"),
        ({"depends_on": [{"job": "12345"}]}, "depends_on.0.job", "is not a job id"),
        ({"depends_on": [{"job": "j01a", "condition": "afterok"}]}, "depends_on.0.condition", "succeeded"),
        ({"depends_on": [{"job": "j01a"}, {"job": "j01a", "condition": "failed"}]}, "depends_on", "twice"),
        ({"depends_on": [{"job": f"j0{i}"} for i in range(65)]}, "depends_on", "at most 64"),
    ],
)
def test_bad_arrays_and_dependencies_name_their_field(
    body: dict[str, object], field: str, message: str
) -> None:
    errs = errors(body)
    assert field in errs, errs
    assert message in errs[field], errs


# ---- dependencies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "counts", "state"),
    [
        ("succeeded", {"RUNNING": 1}, "waiting"),
        ("succeeded", {"SUCCEEDED": 1}, "met"),
        ("succeeded", {"FAILED": 1}, "never"),
        ("succeeded", {"CANCELLED": 1}, "never"),
        ("failed", {"PENDING": 1}, "waiting"),
        ("failed", {"FAILED": 1}, "met"),
        ("failed", {"TIMED_OUT": 1}, "met"),
        ("failed", {"CANCELLED": 1}, "met"),
        ("failed", {"SUCCEEDED": 1}, "never"),
        ("finished", {"SCHEDULED": 1}, "waiting"),
        ("finished", {"SUCCEEDED": 1}, "met"),
        ("finished", {"FAILED": 1}, "met"),
        # An array: every task must meet the condition; one that cannot ends the wait at once.
        ("succeeded", {"SUCCEEDED": 5, "RUNNING": 1}, "waiting"),
        ("succeeded", {"SUCCEEDED": 6}, "met"),
        ("succeeded", {"SUCCEEDED": 4, "FAILED": 1, "RUNNING": 1}, "never"),
        ("failed", {"FAILED": 5, "PENDING": 1}, "waiting"),
        ("failed", {"FAILED": 5, "CANCELLED": 1}, "met"),
        ("failed", {"FAILED": 5, "SUCCEEDED": 1}, "never"),
        ("finished", {"SUCCEEDED": 3, "FAILED": 3}, "met"),
        ("finished", {"SUCCEEDED": 3, "PREEMPTED": 1}, "waiting"),
    ],
)
def test_dependency_states(condition: arrays.Condition, counts: dict[str, int], state: str) -> None:
    assert dependency_state(condition, counts) == state


def test_never_reasons_say_how_the_job_ended() -> None:
    assert (
        arrays.never_reason("j01a", "failed", "SUCCEEDED", {"SUCCEEDED": 1})
        == "dependency never satisfied: job j01a ended SUCCEEDED"
    )
    assert (
        arrays.never_reason("j01a", "succeeded", "RUNNING", {"FAILED": 2, "RUNNING": 3})
        == "dependency never satisfied: job j01a has tasks that ended 2 FAILED"
    )
    assert arrays.waiting_reason("j01a", "RUNNING") == "waiting for job j01a (RUNNING)"


def test_a_pending_job_may_end_failed_when_its_dependency_never_can_be_met() -> None:
    assert JobStatus.FAILED in ALLOWED[JobStatus.PENDING]


@pytest.mark.parametrize(
    ("counts", "started", "cancelling", "status"),
    [
        ({"PENDING": 3}, False, False, JobStatus.PENDING),
        ({"PENDING": 2, "SCHEDULED": 1}, False, False, JobStatus.PENDING),
        ({"PENDING": 2, "RUNNING": 1}, True, False, JobStatus.RUNNING),
        ({"PENDING": 2, "SUCCEEDED": 1}, False, False, JobStatus.RUNNING),
        ({"SUCCEEDED": 3}, True, False, JobStatus.SUCCEEDED),
        ({"SUCCEEDED": 2, "FAILED": 1}, True, False, JobStatus.FAILED),
        ({"SUCCEEDED": 2, "TIMED_OUT": 1}, True, False, JobStatus.FAILED),
        ({"SUCCEEDED": 2, "CANCELLED": 1}, True, False, JobStatus.CANCELLED),
        ({"RUNNING": 1, "CANCELLED": 2}, True, True, JobStatus.CANCELLING),
        ({"FAILED": 1, "CANCELLED": 2}, True, True, JobStatus.CANCELLED),
        ({"SUCCEEDED": 3}, True, True, JobStatus.SUCCEEDED),
    ],
)
def test_an_arrays_status_follows_its_tasks(
    counts: dict[str, int], started: bool, cancelling: bool, status: JobStatus
) -> None:
    assert array_status(counts, started=started, cancelling=cancelling) is status
