"""Workdir bundles: what goes in, what stays out, and the size limit."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from trainyard.client.bundle import DEFAULT_LIMIT_BYTES, BundleError, make_bundle, workdir_limit


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    write(root, "train.py", b"print('hi')\n")
    write(root, "pkg/model.py")
    write(root, "pkg/__pycache__/model.cpython-311.pyc")
    write(root, "pkg/stale.pyc")
    write(root, ".git/HEAD")
    write(root, ".venv/bin/python")
    write(root, "venv/lib/x.py")
    write(root, "node_modules/a/index.js")
    write(root, ".trainyard/token", b"secret")
    write(root, ".mypy_cache/x")
    write(root, "nb/.ipynb_checkpoints/a.ipynb")
    write(root, ".DS_Store")
    write(root, ".env.example")
    return root


def test_default_excludes(tree: Path) -> None:
    names = set(members(make_bundle(tree, DEFAULT_LIMIT_BYTES)))
    assert names == {"train.py", "pkg", "pkg/model.py", "nb", ".env.example"}


def test_paths_relative_and_owner_normalized(tree: Path) -> None:
    info = members(make_bundle(tree, DEFAULT_LIMIT_BYTES))["train.py"]
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    assert info.mtime == int((tree / "train.py").stat().st_mtime)


def test_executable_bit_kept(tree: Path) -> None:
    script = write(tree, "run.sh", b"#!/bin/sh\n")
    script.chmod(0o755)
    assert members(make_bundle(tree, DEFAULT_LIMIT_BYTES))["run.sh"].mode & 0o111


def test_deterministic(tree: Path) -> None:
    assert make_bundle(tree, DEFAULT_LIMIT_BYTES) == make_bundle(tree, DEFAULT_LIMIT_BYTES)


def test_ignore_file(tree: Path) -> None:
    write(tree, "data/big.bin")
    write(tree, "logs/run.log")
    write(tree, "src/keep.log")
    write(tree, "src/data/keep.txt")
    (tree / ".trainyardignore").write_text("# comment\n\n/data/\n*.log\nnb\n")
    names = set(members(make_bundle(tree, DEFAULT_LIMIT_BYTES)))
    assert "data/big.bin" not in names and "data" not in names
    assert "logs/run.log" not in names and "src/keep.log" not in names
    assert "nb" not in names
    assert "src/data/keep.txt" in names  # an anchored pattern only matches at the root
    assert ".trainyardignore" in names


def test_symlinks_inside_kept_outside_skipped(tree: Path, tmp_path: Path) -> None:
    secret = write(tmp_path, "outside/secret.txt", b"do not ship")
    (tree / "to_secret").symlink_to(secret)
    (tree / "to_outside_dir").symlink_to(secret.parent, target_is_directory=True)
    (tree / "latest.py").symlink_to("train.py")
    (tree / "pkg_link").symlink_to(tree / "pkg", target_is_directory=True)
    (tree / "sneaky").symlink_to("pkg/../../outside/secret.txt")
    found = members(make_bundle(tree, DEFAULT_LIMIT_BYTES))
    assert "to_secret" not in found
    assert "to_outside_dir" not in found
    assert "sneaky" not in found
    assert found["latest.py"].issym() and found["latest.py"].linkname == "train.py"
    assert found["pkg_link"].issym() and found["pkg_link"].linkname == "pkg"  # absolute made relative
    assert not any(n.startswith("pkg_link/") for n in found)


def test_limit_error_names_size_limit_and_biggest(tree: Path) -> None:
    write(tree, "data/big.bin", b"\0" * (3 * 1024 * 1024))
    write(tree, "data/medium.bin", b"\0" * (1024 * 1024 + 512 * 1024))
    with pytest.raises(BundleError) as info:
        make_bundle(tree, 2 * 1024 * 1024)
    msg = str(info.value)
    assert msg.startswith(f"workdir {tree.resolve()} is 4.5 MiB, over the 2 MiB limit; largest files: ")
    assert "data/big.bin (3 MiB), data/medium.bin (1.5 MiB), train.py (12 B)" in msg
    assert msg.endswith("move data to object storage or add it to .trainyardignore")


def test_ignored_files_do_not_count_against_limit(tree: Path) -> None:
    write(tree, "data/big.bin", b"\0" * (3 * 1024 * 1024))
    (tree / ".trainyardignore").write_text("data/\n")
    assert "train.py" in members(make_bundle(tree, 1024 * 1024))


def test_limit_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert workdir_limit() == 100 * 1024 * 1024
    monkeypatch.setenv("TRAINYARD_WORKDIR_LIMIT", "200Mi")
    assert workdir_limit() == 200 * 1024 * 1024
    monkeypatch.setenv("TRAINYARD_WORKDIR_LIMIT", "lots")
    with pytest.raises(BundleError, match="TRAINYARD_WORKDIR_LIMIT"):
        workdir_limit()


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a directory"):
        make_bundle(tmp_path / "missing", DEFAULT_LIMIT_BYTES)


def test_unpacks_cleanly(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(make_bundle(tree, DEFAULT_LIMIT_BYTES)), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    assert (out / "train.py").read_bytes() == b"print('hi')\n"
    assert os.listdir(out / "pkg") == ["model.py"]
