"""Issue 14: kill the leader once while many clients read. Two `yard server` replicas on one
PostgreSQL; SDK clients that list both keep answering through the survivor, and a keyed submit lands
once."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.harness import ServerProcess, wait_for
from trainyard.client.sdk import Client, TrainyardError

READERS = 4


def test_clients_fail_over_when_the_leader_is_killed(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    env = {"TRAINYARD_DATABASE_URL": pg_url, "TRAINYARD_SCHEDULER_INTERVAL": "0.2"}
    a = ServerProcess(home, env, "server-a").wait_ready()
    b = ServerProcess(home, env, "server-b").wait_ready()
    try:
        wait_for(lambda: a.is_leader() != b.is_leader(), 10, 0.1, "exactly one leader")
        leader, other = (a, b) if a.is_leader() else (b, a)
        token = (home / "token").read_text().strip()
        urls = f"{leader.url},{other.url}"
        with Client(url=urls, token=token, timeout=30) as setup:
            job_id = setup.submit({"command": ["true"]}, idempotency_key="before-kill")["id"]
            assert setup.url == leader.url

        errors: list[BaseException] = []
        reads = [0] * READERS
        stop = threading.Event()

        def reader(i: int) -> None:
            with Client(url=urls, token=token, timeout=30) as c:
                while not stop.is_set():
                    try:
                        assert c.get(job_id)["id"] == job_id
                    except (TrainyardError, AssertionError) as exc:
                        errors.append(exc)
                        return
                    reads[i] += 1

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
        for t in threads:
            t.start()
        wait_for(lambda: all(reads), 30, 0.05, "every reader's first read")
        leader.kill()  # SIGKILL: connections refused, and reads in flight cut
        leader.proc.wait(10)
        before = list(reads)
        wait_for(lambda: all(n > m + 5 for n, m in zip(reads, before, strict=True)) or errors, 60, 0.05)
        stop.set()
        for t in threads:
            t.join(15)
        assert not errors, errors

        # A fresh client still tries the dead leader first, moves on, and stays on the survivor.
        with Client(url=urls, token=token, timeout=30) as c:
            assert c.get(job_id)["status"] == "PENDING"
            assert c.url == other.url
            again = c.submit({"command": ["true"]}, idempotency_key="before-kill")
            assert again["id"] == job_id, "a replayed key gives the same job on the other replica"
    finally:
        a.stop()
        b.stop()
