"""Issue 12, finding 6: an artifact named `café.txt` or `my model.bin` left its job RUNNING for up to
24 h (the URL request and the fallback report were both refused, the attempt crashed in the agent).

Now any UTF-8 name a filesystem allows works end to end, on the local store and on S3; what is
unsafe is skipped with a note in the job's log (the rest still uploads), and a refused report ends
the attempt (infra, retried by policy) instead of leaving it RUNNING. What the agent cannot report at
all, the reconciler finds lost.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, wait_status
from tests.s3_server import AWS_VARS, REGION, s3_server
from trainyard.client.sdk import Client
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.server import worker_service

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
NAMES = ["café.txt", "my model.bin", "a#b?c%d.txt", "日本語/データ.csv", "emoji-🚀.txt"]
MORE_NAMES = ["quo\"te's + plus & semi;colon=eq.txt", "%2e%2e/%2F%5C.txt", "deep/er/.hidden"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def local_plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    # A 1 s heartbeat (TTL 3 s): one test asserts the worker is never declared dead while its
    # attempts are found lost, and a loaded CI machine can delay a 0.3 s beat past its 0.9 s TTL.
    with platform(tmp_path_factory.mktemp("names-local"), agents=1, heartbeat_interval=1.0) as p:
        yield p


@pytest.fixture(scope="module")
def s3_plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    with s3_server(tmp_path_factory.mktemp("names-s3")) as s3:
        bucket = s3.create_bucket()
        with platform(
            tmp_path_factory.mktemp("names-s3-plat"),
            agents=1,
            agent_env=AWS_VARS,  # the worker moves bytes through presigned URLs only
            object_store=f"s3://{bucket}/pre fix",
            s3_endpoint=s3.endpoint,
            s3_region=REGION,
            heartbeat_interval=1.0,  # moto shares this process's GIL with the control plane
        ) as p:
            yield p


def content(name: str) -> bytes:
    return name.encode() + b"\x00" + bytes(range(256))


def writer(names: list[str], exit_code: int = 0) -> list[str]:
    """A job that writes each artifact (its name, a NUL and every byte value) and exits."""
    code = (
        "import json, os, pathlib, sys\n"
        "root = pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'])\n"
        f"for name in json.loads({json.dumps(names)!r}):\n"
        "    p = root / name\n"
        "    p.parent.mkdir(parents=True, exist_ok=True)\n"
        "    p.write_bytes(name.encode() + b'\\x00' + bytes(range(256)))\n"
        f"sys.exit({exit_code})\n"
    )
    return [PY, "-c", code]


def submit(c: httpx.Client, command: list[str], **spec: Any) -> str:
    r = c.post("/v1/jobs", json={"command": command, **spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_any_utf8_artifact_name_works_end_to_end(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    cp, _ = request.getfixturevalue(f"{backend}_plat")
    names = NAMES + MORE_NAMES
    with cp.client() as c:
        job_id = submit(c, writer(names))
        job = wait_status(c, job_id, DONE, 90)
        assert job["status"] == "SUCCEEDED", job
        listing = c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
        arts = {a["name"]: a for a in listing}
        assert set(arts) == set(names)
        for name, art in arts.items():
            data = content(name)
            assert art["path"] == name  # `name` beside `path`, the same
            assert art["size"] == len(data) and art["sha256"] == hashlib.sha256(data).hexdigest()
            # The short-lived URL from the listing, with no credentials...
            assert httpx.get(art["url"]).content == data, name
            # ...and the REST route, with the name percent-encoded as any client does.
            r = c.get(f"/v1/jobs/{job_id}/artifacts/{quote(name, safe='/')}", follow_redirects=True)
            assert r.status_code == 200 and r.content == data, name
        # The spellings from the report, byte for byte.
        for path, name in (("caf%C3%A9.txt", "café.txt"), ("my%20model.bin", "my model.bin")):
            r = c.get(f"/v1/jobs/{job_id}/artifacts/{path}", follow_redirects=True)
            assert r.status_code == 200 and r.content == content(name)
        missing = c.get(f"/v1/jobs/{job_id}/artifacts/caf%C3%A9.tx")
        assert missing.status_code == 404
    # And the SDK (what `yard artifacts` uses) writes them all, checked, under one directory.
    written = Client(cp.url, cp.token).download_artifacts(job_id, tmp_path)
    assert sorted(written) == sorted(tmp_path.joinpath(*n.split("/")) for n in names)
    for name in names:
        assert tmp_path.joinpath(*name.split("/")).read_bytes() == content(name)


@pytest.mark.parametrize(
    "name",
    ["line\nbreak.txt", "back\\slash.txt", "esc\x1b[31m.txt", "not-utf8-\udcff.bin"],
    ids=["newline", "backslash", "escape", "not-utf8"],
)
def test_an_unsafe_artifact_name_is_skipped_with_a_note(
    local_plat: tuple[ControlPlane, list[Agent]], name: str
) -> None:
    """Not storable, but never left RUNNING and never costing the job its other artifacts or its
    success: the file is skipped, and the job's log says which and why."""
    cp, _ = local_plat
    code = (
        "import os\n"
        "arts = os.fsencode(os.environ['TRAINYARD_ARTIFACT_DIR'])\n"
        f"name = {name.encode('utf-8', 'surrogateescape')!r}\n"
        "for n in (name, b'fine.txt'):\n"
        "    with open(os.path.join(arts, n), 'wb') as f:\n"
        "        f.write(b'x')\n"
    )
    with cp.client() as c:
        job_id = submit(c, [PY, "-c", code], retry={"max_attempts": 1})
        job = wait_status(c, job_id, DONE, 60)
        assert job["status"] == "SUCCEEDED", job
        names = [a["name"] for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]]
        assert names == ["fine.txt"]
        assert "not uploaded" in c.get(f"/v1/jobs/{job_id}/logs").text


def _refuse_finished_reports(monkeypatch: pytest.MonkeyPatch, exit_code: int, *, fallback_too: bool) -> None:
    """The control plane refuses (INVALID_ARGUMENT) the final reports of jobs exiting ``exit_code``:
    those with artifacts, or every one of them with ``fallback_too``."""
    check = worker_service._check_report

    def refusing(request: pb.ReportRequest) -> None:
        if (
            request.phase == pb.ReportRequest.FINISHED
            and request.has_exit_code
            and request.exit_code == exit_code
            and (fallback_too or len(request.artifacts) > 0)
        ):
            raise ValueError("refused for the test")
        check(request)

    monkeypatch.setattr(worker_service, "_check_report", refusing)


def test_a_refused_report_ends_the_job_as_an_infrastructure_failure(
    local_plat: tuple[ControlPlane, list[Agent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cp, _ = local_plat
    _refuse_finished_reports(monkeypatch, 77, fallback_too=False)
    with cp.client() as c:
        job_id = submit(c, writer(["café.txt"], exit_code=77), retry={"max_attempts": 2})
        job = wait_status(c, job_id, DONE, 60)
        # Retried once as infra (the policy's `on: [infra]`), then failed: never left RUNNING.
        assert job["status"] == "FAILED", job
        assert [a["outcome"] for a in job["attempts"]] == ["infra", "infra"]
        for a in job["attempts"]:
            assert "refused the final report" in a["reason"] and "refused for the test" in a["reason"]
            assert a["exit_code"] == 77
        assert c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"] == []


def test_an_attempt_the_agent_cannot_report_at_all_is_found_lost(
    local_plat: tuple[ControlPlane, list[Agent]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Report and fallback both refused: the agent lets the attempt go, its heartbeats stop listing
    it, and the reconciler ends it as LOST (an infrastructure retry) within a few heartbeats."""
    cp, _ = local_plat
    _refuse_finished_reports(monkeypatch, 78, fallback_too=True)
    with cp.client() as c:
        job_id = submit(c, writer(["café.txt"], exit_code=78), retry={"max_attempts": 2})
        job = wait_status(c, job_id, DONE, 60)
        assert job["status"] == "FAILED", job
        assert [a["outcome"] for a in job["attempts"]] == ["lost", "lost"]
        for a in job["attempts"]:
            assert "stopped listing the attempt" in a["reason"], a
        workers = c.get("/v1/workers").json()["workers"]
        assert all(w["status"] == "ALIVE" for w in workers)  # the worker itself was never in doubt


# ---- the control plane's checks, without a platform ------------------------------------------------


@pytest.mark.parametrize("name", NAMES + MORE_NAMES)
def test_the_worker_service_keys_any_safe_name(name: str) -> None:
    key = worker_service._object_key("j1", 2, pb.UrlRequest.ARTIFACT, name)
    assert key == f"jobs/j1/2/artifacts/{name}"
    worker_service._check_report(
        pb.ReportRequest(
            job_id="j1",
            attempt=2,
            phase=pb.ReportRequest.FINISHED,
            outcome="succeeded",
            artifacts=[pb.Artifact(path=name, object_key=key)],
            checkpoint_key="jobs/j1/2/checkpoint/checkpoint.tar.gz",
        )
    )


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/shadow",
        "../../other-job/1/artifacts/x",
        "a/../../x",
        "a//b",
        "a/./b",
        "a/",
        "nul\x00",
        "new\nline",
        "back\\slash",
        "x" * 256,
        "y/" * 600,
    ],
    ids=lambda n: ascii(n)[:24],
)
def test_the_worker_service_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be stored"):
        worker_service._object_key("j1", 2, pb.UrlRequest.ARTIFACT, name)


def test_a_report_cannot_claim_another_attempts_objects() -> None:
    def report(**kw: Any) -> pb.ReportRequest:
        return pb.ReportRequest(
            job_id="j1", attempt=2, phase=pb.ReportRequest.FINISHED, outcome="failed", **kw
        )

    other = pb.Artifact(path="model.bin", object_key="jobs/j2/1/artifacts/model.bin")
    with pytest.raises(ValueError, match="not the attempt's"):
        worker_service._check_report(report(artifacts=[other]))
    with pytest.raises(ValueError, match="not the attempt's"):
        worker_service._check_report(report(checkpoint_key="jobs/j2/1/checkpoint/checkpoint.tar.gz"))
    with pytest.raises(ValueError):
        worker_service._check_report(report(checkpoint_key="jobs/j1/2/checkpoint/../../../j2/x"))
