"""A real control plane and agent with S3 object storage (moto's server behind a TCP proxy).

The agent holds no storage credentials: it moves every byte through presigned URLs. The proxy lets
a test take S3 away and bring it back, as an outage would.
"""

from __future__ import annotations

import hashlib
import io
import struct
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, shared_dir, wait_for, wait_status
from tests.s3_server import AWS_VARS, REGION, S3Server, s3_server
from trainyard.worker.slots import find_slot

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
PREFIX = "ty"
MiB = 1 << 20

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    return s3.create_bucket()


@pytest.fixture(scope="module")
def plat(
    tmp_path_factory: pytest.TempPathFactory, s3: S3Server, bucket: str
) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    with platform(
        tmp_path_factory.mktemp("s3-plat"),
        agents=1,
        agent_env=AWS_VARS,
        object_store=f"s3://{bucket}/{PREFIX}",
        s3_endpoint=s3.endpoint,
        s3_region=REGION,
        # moto serves S3 from this process, beside the control plane: while it takes in a 200 MiB
        # upload, the control plane's thread waits up to ~2 s for the GIL (measured), longer than
        # the harness's 0.3 s heartbeats allow (three missed declare a worker dead).
        heartbeat_interval=1.5,
    ) as p:
        yield p


@pytest.fixture
def c(plat: tuple[ControlPlane, list[Agent]]) -> Iterator[httpx.Client]:
    with plat[0].client() as client:
        yield client


def _pattern(mib: int) -> str:
    """Job code writing ``mib`` MiB whose every MiB differs, so a lost or reordered part shows."""
    return f"for i in range({mib}):\n        f.write(struct.pack('>Q', i) * 131072)\n"


def _pattern_sha256(mib: int) -> str:
    h = hashlib.sha256()
    for i in range(mib):
        h.update(struct.pack(">Q", i) * 131072)
    return h.hexdigest()


def _bundle(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            body = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _keys(s3: S3Server, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    listing = s3.client(direct=True).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {str(o["Key"]): dict(o) for o in listing.get("Contents", [])}


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _stream_sha256(url: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with httpx.stream("GET", url, timeout=60) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes(MiB):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def test_logs_artifacts_bundle_and_a_200mb_artifact_land_in_the_bucket(
    c: httpx.Client, plat: tuple[ControlPlane, list[Agent]], s3: S3Server, bucket: str
) -> None:
    agent = plat[1][0]
    environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes().split(b"\0")
    secrets = (b"AWS_ACCESS_KEY_ID=", b"AWS_SECRET_ACCESS_KEY=", b"AWS_SESSION_TOKEN=")
    assert not [v for v in environ if v.startswith(secrets)], "the agent must hold no storage credentials"
    big_mib = 200
    job_py = textwrap.dedent(
        """
        import os, pathlib, struct
        arts = pathlib.Path(os.environ["TRAINYARD_ARTIFACT_DIR"])
        (arts / "metrics.json").write_text('{"acc": 0.9}')
        with open(arts / "big.bin", "wb") as f:
            PATTERN
        for i in range(3):
            print(f"line {i} from the bundle", flush=True)
        """
    ).replace("PATTERN", _pattern(big_mib))
    up = c.post(
        "/v1/workdirs", content=_bundle({"job.py": job_py}), headers={"Content-Type": "application/gzip"}
    )
    assert up.status_code == 201, up.text
    bundle_key = up.json()["workdir"]
    assert f"{PREFIX}/{bundle_key}" in _keys(s3, bucket, f"{PREFIX}/bundles/")

    hwm_before = _status_kib(agent.proc.pid, "VmHWM")
    r = c.post("/v1/jobs", json={"command": [PY, "job.py"], "workdir": bundle_key})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_status(c, job_id, DONE, 90)
    assert job["status"] == "SUCCEEDED", job
    hwm_after = _status_kib(agent.proc.pid, "VmHWM")
    print(f"agent VmHWM: {hwm_before / 1024:.1f} MiB before the job, {hwm_after / 1024:.1f} MiB after")
    # Were the 200 MiB file ever read whole, the peak would grow by at least that much.
    assert hwm_after - hwm_before < 48 * 1024, (hwm_before, hwm_after)

    stored = _keys(s3, bucket, f"{PREFIX}/jobs/{job_id}/1/")
    logs = [k for k in stored if "/logs/" in k]
    assert logs, stored
    data = c.get(f"/v1/jobs/{job_id}/logs").content
    assert data == b"".join(f"line {i} from the bundle\n".encode() for i in range(3))

    big = stored[f"{PREFIX}/jobs/{job_id}/1/artifacts/big.bin"]
    assert big["Size"] == big_mib * MiB
    assert str(big["ETag"]).strip('"').endswith(f"-{-(-big_mib // 16)}")  # went up in 16 MiB parts
    arts = {a["path"]: a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert set(arts) == {"metrics.json", "big.bin"}
    expected = _pattern_sha256(big_mib)
    assert arts["big.bin"]["sha256"] == expected and arts["big.bin"]["size"] == big_mib * MiB
    assert arts["big.bin"]["url"].startswith(s3.endpoint + "/")
    assert _stream_sha256(arts["big.bin"]["url"]) == (big_mib * MiB, expected)

    redirect = c.get(f"/v1/jobs/{job_id}/artifacts/metrics.json")
    assert redirect.status_code == 307 and redirect.headers["location"].startswith(s3.endpoint + "/")
    assert c.get(f"/v1/jobs/{job_id}/artifacts/metrics.json", follow_redirects=True).json() == {"acc": 0.9}


def test_a_failed_jobs_checkpoint_lands_in_the_bucket(c: httpx.Client, s3: S3Server, bucket: str) -> None:
    code = (
        "import os, pathlib, sys\n"
        "pathlib.Path(os.environ['TRAINYARD_CHECKPOINT_DIR'], 'step.txt').write_text('42')\n"
        "sys.exit(3)\n"
    )
    r = c.post("/v1/jobs", json={"command": [PY, "-c", code]})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert wait_status(c, job_id, DONE)["status"] == "FAILED"
    key = f"{PREFIX}/jobs/{job_id}/1/checkpoint/checkpoint.tar.gz"
    body = s3.client(direct=True).get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        member = tar.extractfile("step.txt")
        assert member is not None and member.read() == b"42"


def test_nothing_is_lost_when_s3_is_unreachable_while_jobs_finish(
    c: httpx.Client, plat: tuple[ControlPlane, list[Agent]], s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Two jobs end during an outage: one with log output to seal, one (silent) with artifacts to
    upload, a large one in parts. An attempt seals its log before it uploads its artifacts, so one
    job could not have both wait on S3 at once."""
    cp, (agent,) = plat
    go = tmp_path / "go"
    mib = 70  # past the multipart threshold: starting, signing and completing the upload wait too
    wait_go = f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.05)\n"
    talker = "import os, time\nprint('before the outage', flush=True)\n" + wait_go
    talker += "for i in range(200):\n    print(f'during the outage {i}', flush=True)\n"
    silent = "import os, pathlib, struct, time\n" + wait_go
    silent += "arts = pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'])\n"
    silent += "(arts / 'small.txt').write_text('small artifact')\n"
    silent += "with open(arts / 'large.bin', 'wb') as f:\n    " + _pattern(mib)
    ids = []
    for code in (talker, silent):
        # The jobs run sandboxed (a private /tmp): the go file is seen through their cwd.
        r = c.post("/v1/jobs", json={"command": [PY, "-c", code], "cwd": str(shared_dir(tmp_path))})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    logs_id, arts_id = ids
    wait_for(lambda: b"before the outage" in c.get(f"/v1/jobs/{logs_id}/logs").content, 30, 0.1, "output")
    wait_status(c, arts_id, {"RUNNING"})
    work_dir = cp.home / "workers" / agent.name
    arts_dir = find_slot(work_dir, arts_id, 1)
    assert arts_dir is not None

    with s3.outage():
        go.touch()
        wait_for(lambda: "upload failed" in agent.output(), 30, 0.1, "a failed log upload")
        wait_for(lambda: "upload of large.bin (start) failed" in agent.output(), 30, 0.1, "a failed part")
        time.sleep(1)  # a few more tries, over connections that are refused
        # The final reports wait for the uploads; the bytes wait on disk.
        assert {c.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"RUNNING"}
        assert (arts_dir / "artifacts" / "large.bin").stat().st_size == mib * MiB
        assert not _keys(s3, bucket, f"{PREFIX}/jobs/{arts_id}/1/artifacts/")

    for i in ids:
        job = wait_status(c, i, DONE, 60)
        assert job["status"] == "SUCCEEDED", job
    expected_log = b"before the outage\n" + b"".join(f"during the outage {i}\n".encode() for i in range(200))
    assert c.get(f"/v1/jobs/{logs_id}/logs").content == expected_log
    assert any("/logs/" in k for k in _keys(s3, bucket, f"{PREFIX}/jobs/{logs_id}/1/"))
    arts = {a["path"]: a for a in c.get(f"/v1/jobs/{arts_id}/artifacts").json()["artifacts"]}
    assert set(arts) == {"small.txt", "large.bin"}
    assert httpx.get(arts["small.txt"]["url"]).content == b"small artifact"
    assert _stream_sha256(arts["large.bin"]["url"]) == (mib * MiB, _pattern_sha256(mib))
    assert arts["large.bin"]["sha256"] == _pattern_sha256(mib)
    wait_for(
        lambda: find_slot(work_dir, arts_id, 1) is None,
        10,
        0.1,
        "the attempt to give its directory up once all is stored",
    )
