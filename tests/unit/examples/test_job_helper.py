"""trainyard.job, the in-job helper, exercised in-process."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import trainyard.job as job

ENV_VARS = (
    "TRAINYARD_JOB_ID",
    "TRAINYARD_ATTEMPT",
    "TRAINYARD_CHECKPOINT_DIR",
    "TRAINYARD_ARTIFACT_DIR",
    "TRAINYARD_RESUME_FROM",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def ckpt_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "ckpts"
    monkeypatch.setenv("TRAINYARD_CHECKPOINT_DIR", str(d))
    return d


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_identity_defaults_outside_the_platform() -> None:
    assert job.job_id() is None
    assert job.attempt() == 1
    assert job.resume_from() is None


def test_identity_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINYARD_JOB_ID", "job_123")
    monkeypatch.setenv("TRAINYARD_ATTEMPT", "3")
    assert job.job_id() == "job_123"
    assert job.attempt() == 3
    monkeypatch.setenv("TRAINYARD_ATTEMPT", "three")
    with pytest.raises(ValueError, match="TRAINYARD_ATTEMPT"):
        job.attempt()
    monkeypatch.setenv("TRAINYARD_JOB_ID", "")
    assert job.job_id() is None


def test_dirs_default_to_cwd_and_are_created(tmp_path: Path) -> None:
    assert job.checkpoint_dir() == Path("checkpoints")
    assert job.artifact_dir() == Path("artifacts")
    assert (tmp_path / "checkpoints").is_dir()
    assert (tmp_path / "artifacts").is_dir()


def test_dirs_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINYARD_CHECKPOINT_DIR", str(tmp_path / "a" / "ck"))
    monkeypatch.setenv("TRAINYARD_ARTIFACT_DIR", str(tmp_path / "b" / "art"))
    assert job.checkpoint_dir() == tmp_path / "a" / "ck"
    assert job.artifact_dir() == tmp_path / "b" / "art"
    assert (tmp_path / "a" / "ck").is_dir()
    assert (tmp_path / "b" / "art").is_dir()


def test_resume_from_only_when_it_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINYARD_RESUME_FROM", str(tmp_path / "missing"))
    assert job.resume_from() is None
    (tmp_path / "there").mkdir()
    monkeypatch.setenv("TRAINYARD_RESUME_FROM", str(tmp_path / "there"))
    assert job.resume_from() == tmp_path / "there"


def test_save_bytes_writes_entry_and_latest(ckpt_dir: Path) -> None:
    path = job.save_checkpoint(b"state-1", step=1)
    assert path == ckpt_dir / "ckpt-00000001"
    assert path.read_bytes() == b"state-1"
    assert (ckpt_dir / "latest").read_text() == "ckpt-00000001\n"
    assert job.latest_checkpoint() == path
    assert job.load_checkpoint(path) == b"state-1"
    assert names(ckpt_dir) == ["ckpt-00000001", "latest"]


def test_retention_keeps_last_three(ckpt_dir: Path) -> None:
    for step in range(1, 7):
        job.save_checkpoint(f"s{step}".encode(), step=step)
    assert names(ckpt_dir) == ["ckpt-00000004", "ckpt-00000005", "ckpt-00000006", "latest"]
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000006"
    job.save_checkpoint(b"again", step=6)
    assert (ckpt_dir / "ckpt-00000006").read_bytes() == b"again"
    job.save_checkpoint(b"x", step=9, keep=1)
    assert names(ckpt_dir) == ["ckpt-00000009", "latest"]


def test_a_lower_step_just_written_is_kept_and_latest(ckpt_dir: Path) -> None:
    for step in (4, 5, 6):
        job.save_checkpoint(b"old", step=step)
    job.save_checkpoint(b"restarted", step=2)
    assert "ckpt-00000002" in names(ckpt_dir)
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000002"


def test_names_are_kept_apart(ckpt_dir: Path) -> None:
    for step in range(1, 5):
        job.save_checkpoint(b"m", step=step, name="model")
    job.save_checkpoint(b"c", step=1)
    assert names(ckpt_dir) == [
        "ckpt-00000001",
        "latest",
        "model-00000002",
        "model-00000003",
        "model-00000004",
    ]
    assert job.latest_checkpoint(name="model") == ckpt_dir / "model-00000004"
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000001"


def test_dict_checkpoint_is_a_directory_of_files(ckpt_dir: Path) -> None:
    path = job.save_checkpoint({"model.bin": b"w", "optim.bin": b"o"}, step=3)
    assert path.is_dir()
    assert job.load_checkpoint(path) == {"model.bin": b"w", "optim.bin": b"o"}
    path = job.save_checkpoint({"model.bin": b"w2"}, step=3)
    assert job.load_checkpoint(path) == {"model.bin": b"w2"}
    assert [n for n in names(ckpt_dir) if n.startswith(".tmp-")] == []


def test_invalid_arguments(ckpt_dir: Path) -> None:
    with pytest.raises(ValueError):
        job.save_checkpoint(b"x", step=-1)
    with pytest.raises(ValueError):
        job.save_checkpoint(b"x", step=1, name="../evil")
    with pytest.raises(ValueError):
        job.save_checkpoint({"a/b": b"x"}, step=1)
    with pytest.raises(TypeError):
        job.save_checkpoint({"a": "not bytes"}, step=1)  # type: ignore[dict-item]


def test_failed_write_leaves_previous_checkpoint_intact(
    ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job.save_checkpoint(b"good", step=1)

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(job.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        job.save_checkpoint(b"half", step=2)
    with pytest.raises(OSError, match="disk full"):
        job.save_checkpoint({"k": b"half"}, step=3)
    monkeypatch.undo()
    assert names(ckpt_dir) == ["ckpt-00000001", "latest"]
    assert job.latest_checkpoint(ckpt_dir) == ckpt_dir / "ckpt-00000001"


def test_latest_ignores_temp_entries_and_a_stale_pointer(ckpt_dir: Path) -> None:
    job.save_checkpoint(b"a", step=1)
    job.save_checkpoint(b"b", step=2)
    (ckpt_dir / ".tmp-abc123").write_bytes(b"partial")  # a writer killed mid-write
    (ckpt_dir / "ckpt-junk").write_bytes(b"?")
    (ckpt_dir / "latest").write_text("ckpt-00000099\n")  # points at nothing
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000002"
    (ckpt_dir / "latest").unlink()
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000002"


def test_latest_none_when_empty(ckpt_dir: Path, tmp_path: Path) -> None:
    assert job.latest_checkpoint() is None
    assert job.latest_checkpoint(tmp_path / "nowhere") is None


def test_resume_from_is_searched_first(
    ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job.save_checkpoint(b"own", step=9)
    resume = tmp_path / "prev"
    job.save_checkpoint(b"prev", step=7, directory=resume)
    monkeypatch.setenv("TRAINYARD_RESUME_FROM", str(resume))
    assert job.latest_checkpoint() == resume / "ckpt-00000007"
    # One checkpoint named directly.
    monkeypatch.setenv("TRAINYARD_RESUME_FROM", str(resume / "ckpt-00000007"))
    assert job.latest_checkpoint() == resume / "ckpt-00000007"
    # Nothing there: fall back to the job's own directory.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TRAINYARD_RESUME_FROM", str(empty))
    assert job.latest_checkpoint() == ckpt_dir / "ckpt-00000009"
    # An explicit search directory is the only place looked at.
    assert job.latest_checkpoint(resume) == resume / "ckpt-00000007"
    assert job.latest_checkpoint(empty) is None


def test_log_metric_writes_jsonl_and_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    job.log_metric("loss", 0.5, step=3)
    job.log_metric("accuracy", 1, step=None)
    job.log_metric("loss", float("nan"), step=4)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        'TRAINYARD_METRIC {"name": "loss", "value": 0.5, "step": 3}',
        'TRAINYARD_METRIC {"name": "accuracy", "value": 1.0, "step": null}',
        'TRAINYARD_METRIC {"name": "loss", "value": null, "step": 4}',
    ]
    lines = [json.loads(x) for x in (tmp_path / "artifacts" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["name"], r["value"], r["step"]) for r in lines] == [
        ("loss", 0.5, 3),
        ("accuracy", 1.0, None),
        ("loss", None, 4),
    ]
    assert all(set(r) == {"name", "value", "step", "time"} for r in lines)
    assert abs(lines[0]["time"] - time.time()) < 60
    with pytest.raises(ValueError):
        job.log_metric("", 1.0)


@pytest.fixture
def restore_sigterm() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)
    job._installed = False
    job._preempted.clear()


def test_preemption_flag_set_by_sigterm(restore_sigterm: None) -> None:
    assert not job.preempted()
    job.install_preemption_handler()
    job.install_preemption_handler()  # idempotent
    assert signal.getsignal(signal.SIGTERM) is job._on_sigterm
    os.kill(os.getpid(), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while not job.preempted() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.preempted()  # and we are still running
