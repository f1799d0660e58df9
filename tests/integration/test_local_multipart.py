"""Large artifacts through the local object store: the agent uploads them in parts to the control
plane's /objects route, exactly as it does to S3."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, wait_status

PY = sys.executable
MiB = 1 << 20

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    with platform(tmp_path_factory.mktemp("multipart")) as p:
        yield p


def test_a_large_artifact_goes_up_in_parts(plat: tuple[ControlPlane, list[Agent]]) -> None:
    cp, _ = plat
    mib = 70
    code = (
        "import os, pathlib, struct\n"
        "arts = pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'])\n"
        "with open(arts / 'weights.bin', 'wb') as f:\n"
        f"    for i in range({mib}):\n"
        "        f.write(struct.pack('>Q', i) * 131072)\n"
    )
    expected = hashlib.sha256()
    for i in range(mib):
        expected.update(i.to_bytes(8, "big") * 131072)
    with cp.client() as c:
        r = c.post("/v1/jobs", json={"command": [PY, "-c", code]})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = wait_status(c, job_id, {"SUCCEEDED", "FAILED"}, 60)
        assert job["status"] == "SUCCEEDED", job
        (art,) = c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
    assert art["size"] == mib * MiB and art["sha256"] == expected.hexdigest()
    got = hashlib.sha256()
    with httpx.stream("GET", art["url"], timeout=60) as body:
        for chunk in body.iter_bytes(MiB):
            got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()
    objects = cp.settings.objects_dir
    assert (objects / "jobs" / job_id / "1" / "artifacts" / "weights.bin").stat().st_size == mib * MiB
    # Completion assembled the parts and cleared them away.
    uploads = objects / ".multipart"
    assert uploads.is_dir() and not list(uploads.iterdir())
