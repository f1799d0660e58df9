"""deploy/Containerfile, checked without building it (a build takes minutes: `make image` builds it
and `make image-smoke` runs it; the README records what they gave)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPILERS = {"gcc", "g++", "cc", "clang", "make", "build-essential", "python3-dev", "libc6-dev", "cpp"}


def _stages() -> list[list[tuple[str, str]]]:
    """The Containerfile's instructions, per stage: (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_multi_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    # The final stage takes the built environment from an earlier stage, not the source.
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies)


def test_no_compilers_in_the_final_stage() -> None:
    for stage in _stages():
        for instruction, args in stage:
            if instruction == "RUN" and "apt-get install" in args:
                assert not set(re.split(r"[\s&;|]+", args)) & COMPILERS, args
    final = " ".join(args for _, args in _stages()[-1])
    assert "pip uninstall" not in final and "pip install" not in final


def test_runs_as_a_user_and_has_the_entry_points() -> None:
    final = dict(_stages()[-1])
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert final["ENTRYPOINT"] == '["/usr/bin/tini", "--", "yard"]'
    assert final["CMD"] == '["server"]'
    # The uid the manifests run the control plane as.
    server = (DEPLOY / "kubernetes" / "base" / "server.yaml").read_text()
    assert f"runAsUser: {user}" in server


def test_sandbox_tools_are_installed() -> None:
    final = " ".join(args for instruction, args in _stages()[-1] if instruction == "RUN")
    for package in ("bubblewrap", "tini", "python3"):
        assert re.search(rf"\b{package}\b", final), package


def test_build_context_is_the_package_only() -> None:
    lines = (DEPLOY / "containerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    # Everything is left out, then what `pip install .` needs is let back in.
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/"} <= set(patterns)


def test_make_image_tags_the_release() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run(
        ["make", "-n", "image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    assert f"-t localhost/trainyard:{version} ." in out
    assert "-f deploy/Containerfile --ignorefile deploy/containerignore" in out


@pytest.mark.parametrize("script", ["base.sh", "smoke.sh"])
def test_scripts_parse(script: str) -> None:
    sh = shutil.which("sh")
    assert sh is not None
    subprocess.run([sh, "-n", str(DEPLOY / "image" / script)], check=True)
