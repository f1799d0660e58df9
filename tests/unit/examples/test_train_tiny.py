"""The example jobs, run as a job would run them: subprocesses with the platform's environment."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
TRAIN = REPO / "examples" / "train_tiny.py"
EVAL = REPO / "examples" / "eval_tiny.py"
TIMEOUT = 60


def job_env(ckpt: Path | None, art: Path | None, resume: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    if ckpt is not None:
        env["TRAINYARD_CHECKPOINT_DIR"] = str(ckpt)
    if art is not None:
        env["TRAINYARD_ARTIFACT_DIR"] = str(art)
    if resume is not None:
        env["TRAINYARD_RESUME_FROM"] = str(resume)
    return env


def run(script: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@dataclass
class Trained:
    ckpt: Path
    art: Path
    out: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One uninterrupted 5-epoch run with seed 0, shared by the tests that only read its results."""
    base = tmp_path_factory.mktemp("full")
    ckpt, art = base / "ckpt", base / "art"
    proc = run(TRAIN, "--epochs", "5", "--seed", "0", env=job_env(ckpt, art), cwd=base)
    assert proc.returncode == 0, proc.stderr
    return Trained(ckpt, art, proc.stdout)


def epoch_lines(out: str) -> list[tuple[int, float, float]]:
    rows = []
    for line in out.splitlines():
        if line.startswith("epoch "):
            _, progress, loss, acc = line.split()
            rows.append(
                (
                    int(progress.split("/")[0]),
                    float(loss.removeprefix("loss=")),
                    float(acc.removeprefix("acc=")),
                )
            )
    return rows


def test_train_writes_checkpoints_and_artifacts(trained: Trained) -> None:
    assert sorted(p.name for p in trained.ckpt.iterdir()) == [
        ".trainyard-complete",  # it finished every epoch: trainyard.job.mark_complete()
        "ckpt-00000003",
        "ckpt-00000004",
        "ckpt-00000005",
        "latest",
    ]
    assert (trained.ckpt / "latest").read_text() == "ckpt-00000005\n"
    with np.load(trained.art / "model.npz") as z:
        assert z["w"].shape == (2, 3)
        assert z["b"].shape == (3,)
    metrics = json.loads((trained.art / "metrics.json").read_text())
    assert metrics["epochs"] == 5
    assert metrics["seed"] == 0
    assert metrics["resumed_from"] is None
    assert {"final_loss", "accuracy", "duration_s"} <= set(metrics)
    jsonl = [json.loads(x) for x in (trained.art / "metrics.jsonl").read_text().splitlines()]
    assert [(r["name"], r["step"]) for r in jsonl] == [
        (n, e) for e in range(1, 6) for n in ("loss", "accuracy")
    ]
    printed = [
        json.loads(line.removeprefix("TRAINYARD_METRIC "))
        for line in trained.out.splitlines()
        if line.startswith("TRAINYARD_METRIC ")
    ]
    assert printed == [{k: r[k] for k in ("name", "value", "step")} for r in jsonl]


def test_loss_decreases(trained: Trained) -> None:
    rows = epoch_lines(trained.out)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    losses = [r[1] for r in rows]
    assert losses[-1] < losses[0]
    assert all(b <= a for a, b in itertools.pairwise(losses))
    assert rows[-1][2] > 0.8
    assert f"epoch 5/5 loss={losses[-1]:.6f}" in trained.out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_then_resumed_is_bit_identical(
    trained: Trained, tmp_path: Path, sig: signal.Signals
) -> None:
    ckpt1, art1 = tmp_path / "ckpt1", tmp_path / "art1"
    # The pause after each epoch is a quiet window, after epoch 2's checkpoint, to signal in; on a very
    # slow machine the signal may land a checkpoint later, which the resume must handle just as well.
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "--epochs", "5", "--seed", "0", "--sleep", "1"],
        env=job_env(ckpt1, art1),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch 2/5"):
                break
        else:
            pytest.fail(f"no epoch 2 line: {seen}")
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    latest = (ckpt1 / "latest").read_text()
    stopped_at = int(latest.strip().removeprefix("ckpt-"))
    assert 2 <= stopped_at < 5, latest
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert f"preempted at epoch {stopped_at}/5" in rest
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (art1 / "model.npz").exists()

    if sig == signal.SIGTERM:
        # A new attempt elsewhere, pointed at the old checkpoints.
        ckpt2, art2 = tmp_path / "ckpt2", tmp_path / "art2"
        env = job_env(ckpt2, art2, resume=ckpt1)
    else:
        # A retry on the same checkpoint directory.
        ckpt2, art2 = ckpt1, tmp_path / "art2"
        env = job_env(ckpt2, art2)
    resumed = run(TRAIN, "--epochs", "5", "--seed", "0", env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from epoch {stopped_at}" in resumed.stdout
    assert [r[0] for r in epoch_lines(resumed.stdout)] == list(range(stopped_at + 1, 6))
    assert epoch_lines(resumed.stdout) == epoch_lines(trained.out)[stopped_at:]
    assert (art2 / "model.npz").read_bytes() == (trained.art / "model.npz").read_bytes()
    assert (ckpt2 / "ckpt-00000005").read_bytes() == (trained.ckpt / "ckpt-00000005").read_bytes()
    assert json.loads((art2 / "metrics.json").read_text())["resumed_from"] == stopped_at


def test_checkpoint_from_other_settings_is_refused(trained: Trained, tmp_path: Path) -> None:
    proc = run(
        TRAIN,
        "--epochs",
        "6",
        "--seed",
        "1",
        env=job_env(tmp_path / "c", tmp_path / "a", trained.ckpt),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "was written with" in proc.stderr


def test_standalone_uses_cwd_defaults(tmp_path: Path) -> None:
    env = job_env(None, None)
    first = run(TRAIN, "--epochs", "1", "--samples", "200", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "checkpoints" / "ckpt-00000001").is_file()
    assert (tmp_path / "artifacts" / "model.npz").is_file()
    assert (tmp_path / "artifacts" / "metrics.json").is_file()
    second = run(TRAIN, "--epochs", "2", "--samples", "200", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed from epoch 1" in second.stdout
    assert "epoch 2/2" in second.stdout


def test_eval_on_trained_model(trained: Trained, tmp_path: Path) -> None:
    art = tmp_path / "art"
    proc = run(EVAL, "--model", str(trained.art / "model.npz"), env=job_env(None, art), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((art / "eval.json").read_text())
    assert result["accuracy"] > 0.8
    assert result["seed"] == 0
    assert f"accuracy={result['accuracy']:.4f}" in proc.stdout
    assert "loss=" in proc.stdout


def test_eval_rejects_missing_or_invalid_model(tmp_path: Path) -> None:
    env = job_env(None, tmp_path / "art")
    missing = run(EVAL, "--model", str(tmp_path / "nope.npz"), env=env, cwd=tmp_path)
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    invalid = run(EVAL, "--model", str(bad), env=env, cwd=tmp_path)
    assert invalid.returncode == 2
    assert "eval_tiny: error" in invalid.stderr
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, w=np.zeros((5, 5)), b=np.zeros(5))
    shaped = run(EVAL, "--model", str(wrong), env=env, cwd=tmp_path)
    assert shaped.returncode == 2
    assert "shape" in shaped.stderr
    assert not (tmp_path / "art" / "eval.json").exists()


def test_job_yaml_is_a_valid_jobspec() -> None:
    yaml = pytest.importorskip("yaml")
    spec_mod = pytest.importorskip("trainyard.model.spec")
    spec = spec_mod.JobSpec.model_validate(yaml.safe_load((REPO / "examples" / "job.yaml").read_text()))
    assert spec.command[:2] == ("python", "examples/train_tiny.py")
    assert spec.resources.cpu == 1
    assert spec.resources.memory == 512 * 1024**2
    assert spec.resources.gpu == 0
    assert spec.max_runtime == 600
    assert spec.retry.max_attempts >= 2
    assert spec.artifacts
