"""Secrets kept in home are created once, whole, even when replicas sharing it start together."""

from __future__ import annotations

import multiprocessing
import stat
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from trainyard.server.settings import worker_bootstrap_token


def _token(home: str, start: Barrier, out: multiprocessing.Queue[str]) -> None:
    start.wait()
    out.put(worker_bootstrap_token(Path(home)))


def test_replicas_starting_together_agree_on_one_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINYARD_WORKER_TOKEN", raising=False)
    ctx = multiprocessing.get_context("fork")
    for round_ in range(10):
        home = tmp_path / str(round_)
        home.mkdir()
        start = ctx.Barrier(8)
        out: multiprocessing.Queue[str] = ctx.Queue()
        procs = [ctx.Process(target=_token, args=(str(home), start, out)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        tokens = {out.get(timeout=10) for _ in procs}
        on_disk = (home / "worker-token").read_text().strip()
        assert tokens == {on_disk} and on_disk.startswith("tyb_")
        assert stat.S_IMODE((home / "worker-token").stat().st_mode) == 0o600
        assert [p.name for p in home.iterdir()] == ["worker-token"]  # no temporary file left
