"""PostgreSQL goes away for 10 s under running jobs: the API answers 503 with Retry-After, agents keep
their reports and retry, and afterwards every job is recorded exactly once.

Runs a private PostgreSQL (initdb/pg_ctl in a temp dir, on a free port): the machine's shared
cluster is never stopped. Fails, never skips, when the PostgreSQL binaries are missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Agent, ServerProcess, free_port, shared_dir, wait_for

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


class PrivatePostgres:
    def __init__(self, base: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.fail("PostgreSQL server binaries (pg_ctl, initdb) not found under /usr/lib/postgresql")
        self.bin = Path(found[-1]).parent
        self.dir = base / "pg"
        self.dir.mkdir(mode=0o700)
        self.port = free_port()
        # initdb refuses to run as root: run the server as the postgres user then.
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            shutil.chown(self.dir, "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / tool), *args], check=True, capture_output=True, timeout=60
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._run("pg_ctl", "-D", str(self.dir), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    # Outside pytest's tmp dir: that one is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="trainyard-pg-"))
    server = PrivatePostgres(base)
    server.start()
    yield server
    subprocess.run(
        [*server.prefix, str(server.bin / "pg_ctl"), "-D", str(server.dir), "-m", "immediate", "stop"],
        capture_output=True,
        timeout=60,
    )
    shutil.rmtree(base, ignore_errors=True)


def test_database_outage_503_then_consistent(tmp_path: Path, pg: PrivatePostgres) -> None:
    home = tmp_path / "home"
    server = ServerProcess(
        home,
        {
            "TRAINYARD_DATABASE_URL": pg.url,
            "TRAINYARD_HEARTBEAT_INTERVAL": "0.5",
            "TRAINYARD_SCHEDULER_INTERVAL": "0.2",
            "TRAINYARD_RESTART_GRACE": "10",
        },
    ).wait_ready()
    token = (home / "token").read_text().strip()
    recs = shared_dir(tmp_path / "records")
    agent = Agent(server, "agent-1", "--cpus", "16")
    try:
        with server.client(token) as c:
            wait_for(lambda: c.get("/v1/workers").json()["workers"], 30, 0.1, "the agent")
            # Each job runs 8 s: they finish while the database is down, so their reports must wait.
            script = (
                'echo "start $TRAINYARD_ATTEMPT" >> "$REC"; sleep 8; echo "end $TRAINYARD_ATTEMPT" >> "$REC"'
            )
            ids = [
                c.post(
                    "/v1/jobs",
                    json={
                        "command": ["sh", "-c", script],
                        "cwd": str(recs),  # writable under the sandbox
                        "env": {"REC": str(i)},
                        "resources": {"cpu": 0.5},
                    },
                ).json()["id"]
                for i in range(20)
            ]

            def statuses() -> list[str]:
                return [c.get(f"/v1/jobs/{j}").json()["status"] for j in ids]

            wait_for(lambda: set(statuses()) == {"RUNNING"}, 30, 0.2, "all 20 jobs running")
            pg.stop()
            down_at = time.monotonic()
            answers: list[httpx.Response] = []
            while time.monotonic() - down_at < 10:
                answers.append(c.get(f"/v1/jobs/{ids[0]}"))
                answers.append(c.post("/v1/jobs", json={"command": ["true"]}))
                answers.append(c.get("/v1/jobs"))
                time.sleep(0.5)
            pg.start()
            codes = {r.status_code for r in answers}
            assert codes == {503}, f"during the outage the API answered {codes}"
            assert all(r.headers.get("Retry-After") for r in answers)
            assert all(r.json()["error"]["code"] == "unavailable" for r in answers)

            def settled() -> bool:
                try:
                    return all(c.get(f"/v1/jobs/{j}").json()["status"] in DONE for j in ids)
                except (KeyError, ValueError):
                    return False

            wait_for(settled, 60, 0.5, "every job to end after the outage")
            for i, job_id in enumerate(ids):
                job = c.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] == "SUCCEEDED", job
                # Recorded once, from the reports the agent kept: not lost, not run again.
                assert [a["outcome"] for a in job["attempts"]] == ["succeeded"], job["attempts"]
                assert (recs / str(i)).read_text() == "start 1\nend 1\n"
            assert c.get("/readyz").status_code == 200
    finally:
        agent.stop()
        server.stop()
