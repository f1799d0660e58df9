"""The autoscaling signal on a real control plane and agent: jobs that fit no worker show up in
``trainyard_pool_pending_demand`` on /metrics and in ``GET /v1/pools/demand`` (for any user), per pool
and GPU type; a job held only by its team's quota does not; and all of it drops to 0 once the jobs are
cancelled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import ControlPlane, platform, wait_for, wait_status

GI = 1 << 30


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    agent = ("--cpus", "2", "--memory", "4Gi", "--gpus", "2", "--gpu-type", "a100")
    with platform(tmp_path, agents=1, agent_args=agent) as (plane, _):
        yield plane


def submit(c: httpx.Client, resources: dict[str, Any], **spec: object) -> str:
    r = c.post("/v1/jobs", json={"command": ["true"], "resources": resources, **spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def gauge(c: httpx.Client) -> dict[tuple[str, str, str], float]:
    """(pool, gpu_type, resource) -> value, from /metrics."""
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("trainyard_pool_pending_demand{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[(labels["pool"], labels["gpu_type"], labels["resource"])] = float(line.rsplit(" ", 1)[1])
    return out


def test_demand_that_fits_no_worker_until_it_is_cancelled(cp: ControlPlane) -> None:
    with cp.client() as admin:
        r = admin.put("/v1/admin/teams/capped", json={"cpu_quota": 1})
        assert r.status_code == 200, r.text
        r = admin.post("/v1/admin/users", json={"name": "vic", "team": "capped", "role": "viewer"})
        viewer = r.json()["token"]
        r = admin.post("/v1/admin/users", json={"name": "cap", "team": "capped", "role": "user"})
        capped = r.json()["token"]
        runs = submit(admin, {"cpu": 1, "memory": "64Mi", "gpu": 1, "gpu_type": "a100"})
        waiting = [
            submit(admin, {"cpu": 16, "memory": "1Gi"}),  # more cores than the worker has
            submit(admin, {"cpu": 1, "memory": "1Gi", "gpu": 8, "gpu_type": "a100"}),  # more GPUs
            submit(admin, {"cpu": 4, "memory": "2Gi", "gpu": 8, "gpu_type": "a100"}, pool="a100-burst"),
        ]
        with cp.client(capped) as cc:
            held = submit(cc, {"cpu": 2, "memory": "64Mi"})  # more than team capped may ever use
        assert wait_status(admin, runs, {"SUCCEEDED"}, 30)

        expected = {
            ("default", "none", "cpu"): 16.0,
            ("default", "none", "memory"): float(GI),
            ("default", "none", "gpu"): 0.0,
            ("default", "a100", "cpu"): 1.0,
            ("default", "a100", "memory"): float(GI),
            ("default", "a100", "gpu"): 8.0,
            ("a100-burst", "a100", "cpu"): 4.0,
            ("a100-burst", "a100", "memory"): float(2 * GI),
            ("a100-burst", "a100", "gpu"): 8.0,
        }
        wait_for(lambda: gauge(admin) == expected, 15, 0.1, f"the demand gauge to read {expected}")
        with cp.client(viewer) as vc:
            r = vc.get("/v1/pools/demand")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["computed_at"] is not None
        pools = {(p["pool"], p["gpu_type"]): p for p in body["pools"]}
        assert set(pools) == {("a100-burst", "a100"), ("default", "a100"), ("default", "none")}
        burst = pools[("a100-burst", "a100")]
        assert burst["pending_jobs"] == 1
        assert burst["demand"] == {"gpu": 8, "cpu": 4.0, "memory": 2 * GI}
        assert burst["largest_job"] == {"cpu": 4.0, "memory": 2 * GI, "gpu": 8, "replicas": 1}
        assert pools[("default", "none")]["pending_jobs"] == 1  # not the job held by its quota
        # The reasons are written after the cycle that computed them: wait for it, not for a moment.
        reason = wait_for(lambda: admin.get(f"/v1/jobs/{held}").json()["pending_reason"], 15, 0.1, "a reason")
        assert "quota" in reason
        assert httpx.get(f"{cp.url}/v1/pools/demand").status_code == 401

        for job in [*waiting, held]:
            assert admin.delete(f"/v1/jobs/{job}").status_code in (200, 202)
        wait_for(
            lambda: gauge(admin) == dict.fromkeys(expected, 0.0), 15, 0.1, "the demand gauge to drop to 0"
        )
        pools = {(p["pool"], p["gpu_type"]): p for p in admin.get("/v1/pools/demand").json()["pools"]}
        assert all(p["pending_jobs"] == 0 and p["largest_job"] is None for p in pools.values())
