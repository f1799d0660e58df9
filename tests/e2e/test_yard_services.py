"""End to end: `yard up --services --replicas 2`, the production stack on one machine (PostgreSQL from
the test's database; Redis, an S3 server and a Kafka broker started by `yard up` itself), driven with
the CLI through both replicas; Ctrl-C stops the platform and the services it started."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_yard_cli import YARD, Yard
from tests.harness import REPO, free_port_run, wait_for


def test_up_with_services_and_two_replicas(tmp_path: Path, pg_url: str) -> None:
    home = tmp_path / "home"
    # Two replicas take two consecutive ports of each kind; the services `yard up` starts ask the
    # kernel for ports, so these come from below its ephemeral range.
    port = free_port_run(2)
    grpc_port = free_port_run(2, avoid={port, port + 1})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRAINYARD_DATABASE_URL": pg_url}
    for var in ("TRAINYARD_REDIS_URL", "TRAINYARD_KAFKA_BOOTSTRAP", "TRAINYARD_OBJECT_STORE"):
        env.pop(var, None)
    args = ["--home", str(home), "--port", str(port), "--grpc-port", str(grpc_port)]
    proc = subprocess.Popen(
        [*YARD, "up", *args, "--services", "--replicas", "2", "--heartbeat-interval", "0.5"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(banner)
        assert "replica 2" in text, text
        started = {
            m.group(1): int(m.group(2)) for m in re.finditer(r"started (\w+) on 127.0.0.1:(\d+)", text)
        }
        assert set(started) == {"redis", "s3", "kafka"}, text
        yard = Yard(home)
        second = f"http://127.0.0.1:{port + 1}"
        # The home's url names both replicas, so the CLI fails over between them.
        assert (home / "url").read_text().strip() == f"http://127.0.0.1:{port},{second}"
        wait_for(lambda: len(json.loads(yard.run("workers", "-o", "json").stdout)["workers"]) == 1, 30, 0.2)

        code = "import os, pathlib; print('hello'); pathlib.Path(os.environ['TRAINYARD_ARTIFACT_DIR'], 'out.txt').write_text('x' * 1000)"
        job_id = yard.run("--url", second, "submit", "--", sys.executable, "-c", code).stdout.strip()
        logs = yard.run("logs", "-f", job_id, timeout=60)  # through replica 1, exits with the job's code
        assert logs.stdout == "hello\n"
        assert yard.run("--url", second, "get", job_id, "-o", "json").stdout.count('"SUCCEEDED"') >= 1
        dest = tmp_path / "download"
        yard.run("--url", second, "artifacts", job_id, "--download", str(dest))  # presigned S3 URLs
        assert (dest / "out.txt").read_text() == "x" * 1000
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "Stopped." in rest
    for name, p in started.items():  # the services it started are gone too
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, f"{name} still listening on {p}"
