"""A real control plane and real worker agents running real subprocesses over gRPC."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import REPO, Agent, ControlPlane, platform, shared_dir, wait_for, wait_status

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent]]]:
    with platform(
        tmp_path_factory.mktemp("plat"), agents=2, agent_args=("--gpus", "4", "--gpu-type", "a100")
    ) as p:
        yield p


@pytest.fixture
def c(plat: tuple[ControlPlane, list[Agent]]) -> Iterator[httpx.Client]:
    with plat[0].client() as client:
        yield client


def submit(c: httpx.Client, command: list[str], **spec: Any) -> str:
    r = c.post("/v1/jobs", json={"command": command, "cwd": str(REPO), **spec})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def test_train_tiny_end_to_end(c: httpx.Client, plat: tuple[ControlPlane, list[Agent]]) -> None:
    job_id = submit(
        c, [PY, "examples/train_tiny.py", "--epochs", "3"], name="tiny", resources={"memory": "256Mi"}
    )
    job = wait_status(c, job_id, DONE, 60)
    assert job["status"] == "SUCCEEDED", job
    assert job["exit_code"] == 0 and len(job["attempts"]) == 1 and job["attempts"][0]["worker_id"]
    logs = c.get(f"/v1/jobs/{job_id}/logs").content
    assert b"epoch 3/3" in logs and b"loss=" in logs
    arts = {a["path"]: a for a in c.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]}
    assert {"model.npz", "metrics.json"} <= set(arts)
    for a in arts.values():
        body = httpx.get(a["url"]).content  # presigned: no Authorization header
        assert hashlib.sha256(body).hexdigest() == a["sha256"] and len(body) == a["size"]
    redirect = c.get(f"/v1/jobs/{job_id}/artifacts/metrics.json", follow_redirects=True)
    assert json.loads(redirect.content)["epochs"] == 3
    series = c.get(f"/v1/jobs/{job_id}/metrics").json()["series"]
    assert len(series["loss"]) == 3
    tail = c.get(f"/v1/jobs/{job_id}/logs", params={"tail": 1}).content
    assert tail.count(b"\n") <= 1 and tail.strip()


def test_logs_are_byte_exact_and_sealed(c: httpx.Client, plat: tuple[ControlPlane, list[Agent]]) -> None:
    code = (
        "import os,sys\n"
        "os.write(1, b'partial line, no newline; ')\n"
        "os.write(2, b'\\xff\\xfe invalid utf8 on stderr\\n')\n"
        "os.write(1, b'end\\n')\n"
    )
    job_id = submit(c, py(code))
    assert wait_status(c, job_id, DONE)["status"] == "SUCCEEDED"
    data = c.get(f"/v1/jobs/{job_id}/logs").content
    assert b"partial line, no newline; " in data and b"\xff\xfe invalid utf8 on stderr\n" in data
    assert b"end\n" in data and len(data) == len(
        b"partial line, no newline; end\n\xff\xfe invalid utf8 on stderr\n"
    )
    # The bytes were sealed into object storage: readable from chunks alone.
    cp = plat[0]
    chunks = list((cp.home / "objects" / "jobs" / job_id / "1" / "logs").glob("*.log.gz"))
    assert chunks
    since = c.get(f"/v1/jobs/{job_id}/logs", params={"since": 5})
    assert since.content == data[5:]
    assert since.headers["x-trainyard-next-offset"] == str(len(data))


def test_follow_streams_lines_within_a_second(c: httpx.Client) -> None:
    code = (
        "import time\n"
        "for i in range(4):\n"
        "    print(f'tick {i} {time.time()}', flush=True)\n"
        "    time.sleep(0.4)\n"
    )
    job_id = submit(c, py(code))
    lags = []
    buf = b""
    with c.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}, timeout=30) as r:
        for chunk in r.iter_bytes():
            now = time.time()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"tick"):
                    lags.append(now - float(line.split()[2]))
    assert len(lags) == 4, lags
    assert max(lags) < 1.0, lags
    assert wait_status(c, job_id, DONE)["status"] == "SUCCEEDED"


def test_failure_reports_exit_code_and_stderr_tail(c: httpx.Client) -> None:
    job_id = submit(
        c, py("import sys; print('x' * 10); sys.stderr.write('boom: bad things\\n'); sys.exit(3)")
    )
    job = wait_status(c, job_id, DONE)
    assert job["status"] == "FAILED" and job["exit_code"] == 3
    att = job["attempts"][-1]
    assert att["exit_code"] == 3 and "boom: bad things" in att["stderr_tail"] and att["outcome"] == "failed"


def test_command_that_cannot_start(c: httpx.Client) -> None:
    job_id = submit(c, ["/nonexistent/binary"], retry={"max_attempts": 1})
    job = wait_status(c, job_id, DONE)
    assert job["status"] == "FAILED" and job["attempts"][0]["outcome"] == "start_failed"
    assert "nonexistent" in (job["attempts"][0]["reason"] or "")


def test_cancel_kills_the_whole_process_group(c: httpx.Client, tmp_path: Path) -> None:
    marker = f"trainyard-cancel-{os.getpid()}-{time.time_ns()}"
    job_id = submit(c, ["sh", "-c", f"sleep 300 & sleep 301; echo {marker}"], env={"MARKER": marker})
    wait_status(c, job_id, {"RUNNING"})
    t0 = time.monotonic()
    r = c.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 202 and r.json()["status"] in {"CANCELLING", "CANCELLED"}
    job = wait_status(c, job_id, DONE, 15)
    assert job["status"] == "CANCELLED" and time.monotonic() - t0 < 5

    # Neither the shell nor its background child survive.
    def survivors() -> list[str]:
        out = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if marker.encode() in (p / "environ").read_bytes():
                        out.append(p.name)
                except OSError:
                    pass
        return out

    wait_for(lambda: not survivors(), 5, 0.1, "job processes to be gone")
    assert c.delete(f"/v1/jobs/{job_id}").json()["status"] == "CANCELLED"  # idempotent


def test_timeout(c: httpx.Client) -> None:
    job_id = submit(c, ["sleep", "30"], max_runtime="1s")
    job = wait_status(c, job_id, DONE, 20)
    assert job["status"] == "TIMED_OUT"


def test_gpus_are_exclusive_and_visible(c: httpx.Client) -> None:
    code = "import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES']); import time; time.sleep(1.5)"
    ids = [submit(c, py(code), resources={"gpu": 2, "gpu_type": "a100"}) for _ in range(4)]
    seen: dict[str, set[str]] = {}
    for job_id in ids:
        job = wait_status(c, job_id, DONE, 30)
        assert job["status"] == "SUCCEEDED"
        line = next(x for x in c.get(f"/v1/jobs/{job_id}/logs").text.splitlines() if x.startswith("CVD="))
        gpus = line[4:].split(",")
        assert len(gpus) == 2 and [int(g) for g in gpus] == job["attempts"][0]["gpu_indices"]
        seen[job_id] = {job["attempts"][0]["worker_id"] + ":" + g for g in gpus}
    cpu_job = submit(c, py("import os; print('CVD=[' + os.environ['CUDA_VISIBLE_DEVICES'] + ']')"))
    wait_status(c, cpu_job, DONE)
    assert "CVD=[]" in c.get(f"/v1/jobs/{cpu_job}/logs").text


def test_unfittable_job_stays_pending_with_reason(c: httpx.Client) -> None:
    job_id = submit(c, ["true"], resources={"gpu": 8, "gpu_type": "a100"})
    job = wait_for(lambda: (j := c.get(f"/v1/jobs/{job_id}").json())["pending_reason"] and j, 10)
    assert job["status"] == "PENDING"
    assert "no registered worker can ever fit" in job["pending_reason"], job["pending_reason"]
    assert "8×a100" in job["pending_reason"], job["pending_reason"]
    c.delete(f"/v1/jobs/{job_id}")


def test_restart_runs_a_new_attempt(c: httpx.Client) -> None:
    job_id = submit(c, py("import os; print('attempt', os.environ['TRAINYARD_ATTEMPT'])"))
    wait_status(c, job_id, DONE)
    r = c.post(f"/v1/jobs/{job_id}/restart")
    assert r.status_code == 202
    job = wait_for(
        lambda: (
            (j := c.get(f"/v1/jobs/{job_id}").json())["status"] == "SUCCEEDED" and j["attempt"] == 2 and j
        ),
        20,
    )
    assert [a["number"] for a in job["attempts"]] == [1, 2]
    assert b"attempt 2" in c.get(f"/v1/jobs/{job_id}/logs").content
    assert b"attempt 1" in c.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 1}).content


def test_events_history_and_follow(c: httpx.Client) -> None:
    job_id = submit(c, ["true"])
    seen = []
    with c.stream("GET", f"/v1/jobs/{job_id}/events", params={"follow": "true"}, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"to_status"' in line:
                seen.append(json.loads(line[6:])["to_status"])
            if line == "event: end":
                break
    assert seen[0] == "PENDING" and seen[-1] == "SUCCEEDED" and "RUNNING" in seen


def test_tenancy_and_auth(plat: tuple[ControlPlane, list[Agent]], c: httpx.Client) -> None:
    cp = plat[0]
    token_a = c.post("/v1/admin/users", json={"name": "ann", "team": "vision"}).json()["token"]
    token_b = c.post("/v1/admin/users", json={"name": "ben", "team": "nlp"}).json()["token"]
    with cp.client(token_a) as a, cp.client(token_b) as b:
        job_id = submit(a, ["true"])
        assert b.get(f"/v1/jobs/{job_id}").status_code == 404
        assert b.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert all(j["team"] == "nlp" for j in b.get("/v1/jobs").json()["jobs"])
        assert a.get(f"/v1/jobs/{job_id}").status_code == 200
        assert c.get(f"/v1/jobs/{job_id}").status_code == 200  # admin sees all
        assert a.post("/v1/admin/users", json={"name": "eve", "team": "x"}).status_code == 403
    assert httpx.get(f"{cp.url}/v1/jobs").status_code == 401
    worker_token = (cp.home / "worker-token").read_text().strip()
    with cp.client(worker_token) as w:
        assert w.get("/v1/jobs").status_code == 401


def test_workdir_bundle_becomes_the_working_directory(c: httpx.Client, tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print(open('data.txt').read().strip())\n"
        for name, body in (("main.py", data), ("data.txt", b"hello from the bundle\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    up = c.post("/v1/workdirs", content=buf.getvalue(), headers={"Content-Type": "application/gzip"})
    assert up.status_code == 201, up.text
    r = c.post("/v1/jobs", json={"command": [PY, "main.py"], "workdir": up.json()["workdir"]})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert wait_status(c, job_id, DONE)["status"] == "SUCCEEDED"
    assert b"hello from the bundle" in c.get(f"/v1/jobs/{job_id}/logs").content
    bad = c.post("/v1/jobs", json={"command": ["true"], "workdir": "bundles/other-team/x.tar.gz"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "workdir"


def test_workers_and_queues(c: httpx.Client) -> None:
    workers = c.get("/v1/workers").json()["workers"]
    assert {w["name"] for w in workers} >= {"agent-1", "agent-2"}
    assert all(w["capacity"]["gpu"] == 4 and w["capacity"]["gpu_type"] == "a100" for w in workers)
    q = c.get("/v1/queues").json()
    assert any(p["pool"] == "default" for p in q["pools"])
    metrics = c.get("/metrics").text
    assert "trainyard_jobs_submitted_total" in metrics and "trainyard_pending_jobs" in metrics


def test_killed_agent_job_runs_again_elsewhere(tmp_path: Path) -> None:
    with platform(tmp_path, agents=1) as (cp, agents), cp.client() as c:
        code = "import time; print('started', flush=True); time.sleep(2); print('done')"
        job_id = submit(c, py(code), retry={"max_attempts": 3})
        first = wait_status(c, job_id, {"RUNNING"})
        assert first["attempts"][0]["worker_id"]
        # RUNNING is reported at the spawn; the line is checked below only once it was shipped.
        wait_for(lambda: b"started" in c.get(f"/v1/jobs/{job_id}/logs").content, 20, 0.05, "the first output")
        second = Agent(cp, "agent-2")
        agents.append(second)
        agents[0].kill()
        job = wait_status(c, job_id, DONE, 30)
        assert job["status"] == "SUCCEEDED", job
        assert [a["status"] for a in job["attempts"]] == ["LOST", "SUCCEEDED"]
        assert job["attempts"][0]["worker_id"] != job["attempts"][1]["worker_id"]
        assert b"started" in c.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 1}).content


def test_instant_job_still_records_its_start(c: httpx.Client) -> None:
    # The agent merges a very short run's STARTED report into FINISHED; the history stays complete.
    job_id = submit(c, ["true"])
    job = wait_status(c, job_id, DONE)
    assert job["status"] == "SUCCEEDED" and job["started_at"] and job["attempts"][0]["started_at"]
    types = [e["type"] for e in c.get(f"/v1/jobs/{job_id}/events").json()["events"]]
    assert types == ["submitted", "scheduled", "running", "succeeded"]


def test_large_log_spans_chunks_and_reads_back_exactly(c: httpx.Client) -> None:
    # ~3 MiB of numbered lines: sealed as several chunks, streamed back in slices, tailed from the end.
    code = "import sys\nfor i in range(300000):\n    sys.stdout.write(f'line {i:06d}\\n')\n"
    job_id = submit(c, py(code))
    assert wait_status(c, job_id, DONE, 60)["status"] == "SUCCEEDED"
    expected = "".join(f"line {i:06d}\n" for i in range(300000)).encode()
    r = c.get(f"/v1/jobs/{job_id}/logs")
    assert r.content == expected and r.headers["x-trainyard-next-offset"] == str(len(expected))
    assert c.get(f"/v1/jobs/{job_id}/logs", params={"tail": 3}).content == expected[-36:]
    assert c.get(f"/v1/jobs/{job_id}/logs", params={"tail": 0}).content == b""
    assert c.get(f"/v1/jobs/{job_id}/logs", params={"tail": 400000}).content == expected
    assert c.get(f"/v1/jobs/{job_id}/logs", params={"since": len(expected) - 12}).content == expected[-12:]


def test_failed_job_keeps_its_artifacts_and_spec_paths(c: httpx.Client, tmp_path: Path) -> None:
    out = tmp_path / "wd"
    shared_dir(out)
    code = (
        "import os, pathlib\n"
        "pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'], 'partial.txt').write_text('half done')\n"
        "pathlib.Path('outputs').mkdir(exist_ok=True)\n"
        "pathlib.Path('outputs/report.json').write_text('{}')\n"
        "raise SystemExit(2)\n"
    )
    r = c.post("/v1/jobs", json={"command": py(code), "cwd": str(out), "artifacts": ["outputs/"]})
    job = wait_status(c, r.json()["id"], DONE)
    assert job["status"] == "FAILED" and job["exit_code"] == 2
    arts = {a["path"]: a for a in c.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"]}
    assert set(arts) == {"partial.txt", "outputs/report.json"}
    assert httpx.get(arts["partial.txt"]["url"]).content == b"half done"


def test_grpc_needs_worker_credentials(plat: tuple[ControlPlane, list[Agent]], c: httpx.Client) -> None:
    import grpc

    from trainyard.proto.trainyard.v1 import worker_pb2 as pb
    from trainyard.proto.trainyard.v1 import worker_pb2_grpc as pbg

    cp = plat[0]
    user_token = c.post("/v1/admin/users", json={"name": "mallory", "team": "vision"}).json()["token"]
    bootstrap = (cp.home / "worker-token").read_text().strip()
    cap = pb.Capacity(cpu=0.001, memory=1)  # fits no job: the shared platform's other tests never land here
    with grpc.insecure_channel(cp.grpc) as ch:
        stub = pbg.WorkerServiceStub(ch)  # type: ignore[no-untyped-call]
        for token in (user_token, cp.token, "", "tyb_wrong"):
            with pytest.raises(grpc.RpcError) as e:
                stub.Register(
                    pb.RegisterRequest(name="rogue", capacity=cap),
                    metadata=[("authorization", f"Bearer {token}")],
                )
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The bootstrap token only registers; it is not a worker credential.
        with pytest.raises(grpc.RpcError) as e:
            stub.Heartbeat(pb.HeartbeatRequest(), metadata=[("authorization", f"Bearer {bootstrap}")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reg = stub.Register(
            pb.RegisterRequest(name="probe", capacity=cap),
            metadata=[("authorization", f"Bearer {bootstrap}")],
        )
        assert reg.worker_token and reg.worker_token != bootstrap
        ok = stub.Heartbeat(pb.HeartbeatRequest(), metadata=[("authorization", f"Bearer {reg.worker_token}")])
        assert ok.known
    with cp.client(reg.worker_token) as w:
        assert w.get("/v1/jobs").status_code == 401
