"""Bundles and artifacts: safe unpacking, checkpoint packing, artifact collection."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from trainyard.worker.files import UnsafeArchive, collect_artifacts, pack_dir, unpack_tar


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def test_unpack_a_bundle(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "b.tar.gz", [(_file("train.py"), b"print(1)\n"), (_file("pkg/mod.py"), b"x = 1\n")]
    )
    dest = tmp_path / "work"
    unpack_tar(archive, dest)
    assert (dest / "train.py").read_bytes() == b"print(1)\n"
    assert (dest / "pkg/mod.py").read_bytes() == b"x = 1\n"


@pytest.mark.parametrize(
    "member",
    [
        (_file("../evil.txt"), b"pwned"),
        (_file("ok/../../evil.txt"), b"pwned"),
        (_link("escape", "../../"), None),
    ],
    ids=["dotdot", "nested-dotdot", "symlink-out"],
)
def test_unpack_refuses_members_that_escape(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    archive = _tar(tmp_path / "b.tar.gz", [(_file("fine.txt"), b"ok"), member])
    dest = tmp_path / "a" / "work"
    with pytest.raises(UnsafeArchive):
        unpack_tar(archive, dest)
    assert not (tmp_path / "a" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_unpack_keeps_absolute_names_inside(tmp_path: Path) -> None:
    target = tmp_path / "evil-abs.txt"
    archive = _tar(tmp_path / "b.tar.gz", [(_file(str(target)), b"pwned")])
    dest = tmp_path / "work"
    unpack_tar(archive, dest)
    assert not target.exists()
    assert (dest / str(target).lstrip("/")).read_bytes() == b"pwned"


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "b.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(UnsafeArchive):
        unpack_tar(bad, tmp_path / "work")


def test_pack_dir_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"\x00\x01weights")
    (src / "sub/opt.pt").write_bytes(b"opt")
    pack_dir(src, tmp_path / "c.tar.gz")
    unpack_tar(tmp_path / "c.tar.gz", tmp_path / "out")
    assert (tmp_path / "out/model.pt").read_bytes() == b"\x00\x01weights"
    assert (tmp_path / "out/sub/opt.pt").read_bytes() == b"opt"


def test_collect_artifacts(tmp_path: Path) -> None:
    arts, work, outside = tmp_path / "artifacts", tmp_path / "work", tmp_path / "outside"
    for d in (arts / "plots", work / "outputs/deep", outside):
        d.mkdir(parents=True)
    (arts / "metrics.json").write_bytes(b'{"acc": 0.9}')
    (arts / "plots/loss.png").write_bytes(b"\x89PNG")
    (work / "outputs/model.pt").write_bytes(b"w" * 3_000_000)
    (work / "outputs/deep/x.txt").write_bytes(b"x")
    (work / "summary.txt").write_bytes(b"done")
    (work / "notes.txt").write_bytes(b"not requested")
    (outside / "secret").write_bytes(b"node secret")
    os.symlink(outside / "secret", work / "outputs/leak")  # leads out of the working dir
    os.symlink(outside, work / "outputs/leakdir")
    os.symlink(outside / "secret", arts / "leak")
    os.symlink(work / "summary.txt", work / "outputs/summary-link")  # stays inside: taken
    os.symlink(outside, work / "linked-out")

    found = collect_artifacts(
        arts, work, ["outputs/", "summary.txt", "missing/file", "linked-out", "../outside"]
    )
    by_name = {a.name: a for a in found}
    assert set(by_name) == {
        "metrics.json",
        "plots/loss.png",
        "outputs/model.pt",
        "outputs/deep/x.txt",
        "outputs/summary-link",
        "summary.txt",
    }
    model = by_name["outputs/model.pt"]
    assert model.size == 3_000_000
    assert model.sha256 == hashlib.sha256(b"w" * 3_000_000).hexdigest()
    assert by_name["metrics.json"].sha256 == hashlib.sha256(b'{"acc": 0.9}').hexdigest()
    assert by_name["outputs/summary-link"].size == 4


def test_collect_artifacts_ignores_a_swapped_artifact_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside, tmp_path / "artifacts")
    (tmp_path / "work").mkdir()
    assert collect_artifacts(tmp_path / "artifacts", tmp_path / "work", []) == []


def test_collect_artifacts_with_nothing(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    assert collect_artifacts(tmp_path / "artifacts", tmp_path / "work", ["outputs"]) == []
