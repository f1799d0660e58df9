"""The pipeline's second step as a job runs it: `trainyard.job.dependency_artifacts()` fetches what
the platform handed it (presigned URLs; here file:// URLs), checks each SHA-256, and `eval_tiny`
without --model evaluates every model.npz of its dependencies."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2].parent
TRAIN = REPO / "examples" / "train_tiny.py"
EVAL = REPO / "examples" / "eval_tiny.py"


def entry(job: str, path: Path, name: str | None = None, sha: str | None = None) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "job": job,
        "name": name or path.name,
        "url": path.as_uri(),
        "sha256": sha or hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    import trainyard.job as tj

    monkeypatch.chdir(tmp_path)
    for var in ("TRAINYARD_DEPENDENCY_ARTIFACTS", "TRAINYARD_DEPENDENCY_ARTIFACTS_URL"):
        monkeypatch.delenv(var, raising=False)
    return tj


def test_dependency_artifacts_fetch_check_and_place_each_file(
    helper: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "out").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "out" / "m.json").write_text("{}")
    items = [entry("j01train", src / "model.pt"), entry("j01sweep-3", src / "out" / "m.json", "out/m.json")]
    assert helper.dependency_artifacts() == []  # none handed: nothing to do, outside the platform too
    monkeypatch.setenv("TRAINYARD_DEPENDENCY_ARTIFACTS", json.dumps(items))
    got = helper.dependency_artifacts()
    assert got == [Path("dependencies/j01train/model.pt"), Path("dependencies/j01sweep-3/out/m.json")]
    assert got[0].read_bytes() == b"weights"
    assert helper.dependency_artifacts(tmp_path / "d", job="j01sweep") == [
        tmp_path / "d/j01sweep-3/out/m.json"
    ]
    # Already there with the right digest: not fetched again (the source may be gone by then).
    (src / "model.pt").unlink()
    assert helper.dependency_artifacts(job="j01train") == [Path("dependencies/j01train/model.pt")]


def test_a_long_list_comes_from_a_manifest_url(
    helper: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("a")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([entry("j01a", tmp_path / "a.txt")]))
    monkeypatch.setenv("TRAINYARD_DEPENDENCY_ARTIFACTS_URL", manifest.as_uri())
    assert [p.read_text() for p in helper.dependency_artifacts()] == ["a"]


@pytest.mark.parametrize(
    ("item", "error"),
    [
        ({"name": "../escape"}, "not a plain relative path"),
        ({"name": "/etc/passwd"}, "not a plain relative path"),
        ({"job": "../x"}, "is not one the platform gives"),
        ({"sha256": "0" * 64}, "do not match their sha256"),
    ],
)
def test_what_does_not_check_out_is_refused(
    helper: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, item: dict[str, str], error: str
) -> None:
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv(
        "TRAINYARD_DEPENDENCY_ARTIFACTS", json.dumps([{**entry("j01a", tmp_path / "f"), **item}])
    )
    with pytest.raises((ValueError, OSError), match=error):
        helper.dependency_artifacts(tmp_path / "d")
    assert not [p for p in tmp_path.glob("d/**/*") if p.is_file()]  # nothing half-written is left


def test_eval_tiny_evaluates_every_model_of_its_dependencies(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    items = []
    for seed in (0, 1):
        art = tmp_path / f"art{seed}"
        env_train = {
            **env,
            "TRAINYARD_ARTIFACT_DIR": str(art),
            "TRAINYARD_CHECKPOINT_DIR": str(tmp_path / f"ck{seed}"),
        }
        done = subprocess.run(
            [sys.executable, str(TRAIN), "--epochs", "2", "--seed", str(seed)],
            env=env_train,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        items.append(entry(f"j01sweep-{seed}", art / "model.npz"))
        items.append(entry(f"j01sweep-{seed}", art / "metrics.json"))
    out = tmp_path / "eval-art"
    run = subprocess.run(
        [sys.executable, str(EVAL)],
        env={**env, "TRAINYARD_DEPENDENCY_ARTIFACTS": json.dumps(items), "TRAINYARD_ARTIFACT_DIR": str(out)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("j01")] == ["j01sweep-0", "j01sweep-1"]
    summary = json.loads((out / "eval.json").read_text())
    assert len(summary["models"]) == 2 and f"best: {summary['best']['job']}" in run.stdout
    # Nothing handed on and no --model: a clear error, exit 2.
    alone = subprocess.run([sys.executable, str(EVAL)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert alone.returncode == 2 and "no --model" in alone.stderr
