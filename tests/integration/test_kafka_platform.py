"""The platform with its event log in Kafka (a tansu broker the test starts): `yard events tail` sees
the live stream; with the broker down jobs still run and the outbox grows; once it is back every event
arrives, in order per job, and `yard admin replay` finds the log equal to the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from tests.harness import REPO, YARD, platform, wait_for, wait_status
from tests.kafka_broker import KafkaBroker
from trainyard.store.schema import outbox

DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


def test_broker_outage_loses_no_event_and_replay_matches(tmp_path: Path, pg_url: str) -> None:
    with (
        KafkaBroker(tmp_path / "kafka") as kafka,
        platform(tmp_path, database_url=pg_url, kafka_bootstrap=kafka.bootstrap) as (cp, _),
        cp.client() as c,
    ):
        env = {
            **os.environ,
            "TRAINYARD_HOME": str(cp.home),
            "TRAINYARD_URL": cp.url,
            "TRAINYARD_DATABASE_URL": pg_url,
            "TRAINYARD_KAFKA_BOOTSTRAP": kafka.bootstrap,
        }
        tail = subprocess.Popen(
            [*YARD, "events", "tail", "-o", "json"], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        try:
            time.sleep(1.0)  # the stream is open
            first = c.post("/v1/jobs", json={"command": ["true"], "name": "before"}).json()["id"]
            assert wait_status(c, first, DONE)["status"] == "SUCCEEDED"
            assert tail.stdout is not None
            seen = []
            for line in tail.stdout:
                seen.append(json.loads(line))
                if seen[-1]["job_id"] == first and seen[-1]["to_status"] == "SUCCEEDED":
                    break
            assert [e["to_status"] for e in seen if e["job_id"] == first][-1] == "SUCCEEDED"
        finally:
            tail.terminate()
            tail.wait(10)

        kafka.stop()
        jobs = [
            c.post(
                "/v1/jobs", json={"command": [sys.executable, "-c", "pass"] if i % 10 == 0 else ["true"]}
            ).json()["id"]
            for i in range(50)
        ]
        for j in jobs:
            assert wait_status(c, j, DONE, 60)["status"] == "SUCCEEDED"
        engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))

        def unsent() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(sa.select(sa.func.count()).where(outbox.c.sent_at.is_(None))).scalar_one()
                )

        assert unsent() >= 50 * 4  # every event of the 50 jobs waits in the outbox
        kafka.start()
        wait_for(lambda: unsent() == 0, 60, 0.2, "the outbox to drain after the broker returned")
        engine.dispose()

        replay = subprocess.run(
            [*YARD, "admin", "replay", "--timeout", "60"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "replay OK: 51 jobs" in replay.stdout, replay.stdout
