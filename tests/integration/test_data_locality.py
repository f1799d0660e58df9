"""Data already in place: a job that fills the worker's data cache makes the worker report the
dataset, and later jobs reading it are placed there rather than on an equally free worker."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import ControlPlane, platform, wait_for, wait_status

CACHE_IT = (
    "import sys, trainyard.job as tj\n"
    "path, ready = tj.dataset_dir(sys.argv[1])\n"
    "(path / 'shard-0').write_text('data')\n"
    "tj.mark_cached(sys.argv[1])\n"
)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    # One CPU each: two concurrent one-CPU jobs land on different workers.
    with platform(tmp_path_factory.mktemp("locality"), agents=2, agent_args=("--cpus", "1")) as (cp, _):
        yield cp


def submit(c: httpx.Client, command: list[str], **spec: object) -> str:
    body = {"command": command, "resources": {"cpu": 1, "memory": "64Mi"}, **spec}
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_jobs_go_where_their_data_is_cached(cp: ControlPlane) -> None:
    uris = ("s3://datasets/imagenet", "s3://datasets/c4")
    with cp.client() as c:
        # Both fillers hold their worker (the sleep) until both run: one dataset per worker.
        fillers = [
            submit(c, [sys.executable, "-c", CACHE_IT + "import time; time.sleep(1.5)", uri]) for uri in uris
        ]
        holders = [wait_status(c, j, {"SUCCEEDED"}, 30)["worker_id"] for j in fillers]
        assert holders[0] != holders[1], holders

        def cached() -> dict[str, list[str]] | None:
            workers = {w["id"]: w["cached_uris"] for w in c.get("/v1/workers").json()["workers"]}
            return workers if all(workers[h] == [u] for h, u in zip(holders, uris, strict=True)) else None

        wait_for(cached, 15)
        # Either dataset, asked for in either order: always its holder.
        for uri, holder in [
            *zip(uris, holders, strict=True),
            *zip(reversed(uris), reversed(holders), strict=True),
        ]:
            job = submit(c, ["true"], data={"uris": [uri]})
            assert wait_status(c, job, {"SUCCEEDED"}, 30)["worker_id"] == holder, uri


def cross_region_count(c: httpx.Client) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("trainyard_cross_region_placements_total "):
            return float(line.split()[1])
    raise AssertionError("trainyard_cross_region_placements_total is not exported")


def test_data_region_is_a_soft_preference_counted_when_missed_or_a_hard_one(cp: ControlPlane) -> None:
    with cp.client() as c:
        before = cross_region_count(c)
        # No worker is in eu-west-1: the job runs elsewhere, and the miss is counted.
        soft = submit(c, ["true"], data={"region": "eu-west-1"})
        assert wait_status(c, soft, {"SUCCEEDED"}, 30)
        assert cross_region_count(c) == before + 1
        hard = submit(c, ["true"], data={"region": "eu-west-1", "require_region": True})
        reason = wait_for(lambda: c.get(f"/v1/jobs/{hard}").json()["pending_reason"], 15)
        assert "eu-west-1" in reason, reason
        c.delete(f"/v1/jobs/{hard}")
        assert wait_status(c, hard, {"CANCELLED"}, 10)
        assert cross_region_count(c) == before + 1
