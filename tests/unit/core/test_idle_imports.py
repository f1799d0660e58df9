"""What the embedded defaults load: a SQLite control plane and a worker agent import no client of a
backend they do not use (psycopg, Redis, Kafka, boto3), and a control plane starting on an
up-to-date schema no Alembic. Each is megabytes of a process that stays up (bench/footprint.py).

Each probe runs in a fresh interpreter: this test process has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainyard.store import migrate

BACKEND_CLIENTS = {"psycopg", "redis", "confluent_kafka", "boto3", "botocore"}
# Loaded when a team secret is sealed or opened, or a JWT comes (SSO): not by an idle control plane.
ON_FIRST_USE = {"cryptography", "jwt"}

CONTROL_PLANE = """
import asyncio, json, sys
from pathlib import Path
from trainyard.server.api import create_app
from trainyard.server.platform import Platform
from trainyard.server.settings import Settings

home = Path(sys.argv[1])
fresh = not (home / "trainyard.db").exists()
platform = Platform(Settings(home=home))
platform.store.migrate()
create_app(platform)
loaded = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"fresh": fresh, "loaded": loaded, "db": platform.settings.db_url}))
platform.close()
"""

# What `yard up` starts as an agent, `python -m trainyard worker ...` (or `yard worker`: ENTRY is
# "console"), with the agent imported.
AGENT = """
import contextlib, io, json, runpy, sys
sys.argv = ["yard", "worker", "--help"]
with contextlib.redirect_stdout(io.StringIO()) as help_text, contextlib.suppress(SystemExit):
    if "console" in sys.orig_argv:  # the probe's own argument
        from trainyard.cli.main import main
        main()
    else:
        runpy.run_module("trainyard", run_name="__main__")
assert "--server" in help_text.getvalue(), help_text.getvalue()
import trainyard.worker.agent
from trainyard.worker.executors.routing import executor_for
print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))  # None: blocked
"""


def _probe(code: str, *args: str) -> object:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}  # the defaults
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sqlite_control_plane_loads_no_other_backend_and_no_alembic_once_migrated(tmp_path: Path) -> None:
    first = _probe(CONTROL_PLANE, str(tmp_path))
    assert isinstance(first, dict)
    assert first["fresh"] and first["db"].startswith("sqlite")
    assert not (BACKEND_CLIENTS | ON_FIRST_USE) & set(first["loaded"])
    assert "alembic" in first["loaded"]  # a new database is migrated: the probe sees the real path
    again = _probe(CONTROL_PLANE, str(tmp_path))
    assert isinstance(again, dict)
    assert not again["fresh"]
    assert not (BACKEND_CLIENTS | ON_FIRST_USE | {"alembic", "mako"}) & set(again["loaded"])


@pytest.mark.parametrize("entry", ["python -m trainyard", "console"])
def test_agent_loads_neither_the_control_plane_nor_a_backend_client(entry: str) -> None:
    loaded = _probe(AGENT, entry)
    assert isinstance(loaded, list)
    tops = {m.split(".")[0] for m in loaded}
    assert not (BACKEND_CLIENTS | {"alembic", "sqlalchemy", "fastapi", "starlette", "uvicorn"}) & tops
    assert not [m for m in loaded if m.startswith(("trainyard.server", "trainyard.store"))]
    # Nor what only the job commands print with or send: the SDK, rich tables, YAML, the simulator.
    assert not [m for m in loaded if m.startswith(("trainyard.client", "trainyard.scheduler"))]
    assert not {"yaml", "trainyard.cli.output", "trainyard.cli.jobs"} & set(loaded)
    assert not {"pygments", "httpx._main"} & set(loaded)  # httpx's own CLI


# What `yard up` starts, `python -m trainyard worker --server ... --home ... --name ...`, up to the
# agent's start: the plain path, without Typer (trainyard.cli.worker_options).
UP_AGENT = """
import contextlib, json, runpy, sys
from trainyard.cli import worker_options

def run(options, verbose):
    import trainyard.worker.agent
    from trainyard.worker.executors.routing import executor_for
    print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))

worker_options.run = run
sys.argv = ["yard", "worker", "--server", "127.0.0.1:1", "--home", sys.argv[1], "--name", "local-1"]
sys.argv += ["--allow-cwd", sys.argv[1]]
with contextlib.suppress(SystemExit):
    runpy.run_module("trainyard", run_name="__main__")
"""


def test_the_agents_yard_up_starts_load_no_typer_and_no_pydantic(tmp_path: Path) -> None:
    # Typer 0.29 converts options with pydantic; with rich and click they were 10 MB of each agent.
    loaded = _probe(UP_AGENT, str(tmp_path))
    assert isinstance(loaded, list)
    tops = {m.split(".")[0] for m in loaded}
    assert "trainyard.worker.agent" in loaded
    assert not {"typer", "click", "rich", "pydantic", "pydantic_core", "pygments", "shellingham"} & tops
    assert not (BACKEND_CLIENTS | {"sqlalchemy", "fastapi", "starlette", "uvicorn", "yaml"}) & tops
    # Only a job's bundles and paths need these (0.3 MB each).
    assert not {"tarfile", "ctypes"} & tops
    assert "trainyard.job" not in loaded  # the jobs' helpers; the agent needs one constant, later


# `yard up --home H --port P --grpc-port G --workers 1` (bench/footprint.py), up to the control plane's
# start: its plain command line runs without Typer (trainyard.cli.plain), as its replicas' do.
UP = """
import contextlib, json, runpy, sys
from trainyard.cli import platform_run

def up(**given):
    from trainyard.server.api import create_app
    from trainyard.server.run import serve
    print(json.dumps({"given": sorted(given), "loaded": sorted(k for k, v in sys.modules.items() if v)}))

platform_run.up = up
sys.argv = ["yard", "up", "--home", sys.argv[1], "--port", "1", "--grpc-port", "2", "--workers", "1"]
with contextlib.suppress(SystemExit):
    runpy.run_module("trainyard", run_name="__main__")
"""


def test_yard_up_runs_the_control_plane_without_typer(tmp_path: Path) -> None:
    # Typer, its parsing and the app's command modules were 2 MB of the control plane.
    got = _probe(UP, str(tmp_path))
    assert isinstance(got, dict)
    assert got["given"] == ["grpc_port", "home", "port", "workers"]
    tops = {m.split(".")[0] for m in got["loaded"]}
    assert "fastapi" in tops
    assert not {"typer", "shellingham", "rich", "pygments", "watchfiles"} & tops
    assert not {"trainyard.cli.app", "trainyard.cli.platform", "httpx._main"} & set(got["loaded"])


def test_yard_still_has_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trainyard", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for command in ("submit", "logs", "simulate", "up", "worker", "admin"):
        assert command in done.stdout


def test_head_revisions_read_from_the_files_are_alembics_heads() -> None:
    # The start-up check skips Alembic when the database is stamped with these: they must be exactly
    # what Alembic itself would migrate to.
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert migrate.head_revisions() == frozenset(heads)


MIGRATE_APART = """
import json, sys
from pathlib import Path
import sqlalchemy as sa
from trainyard.cli.platform import _migrate_apart
from trainyard.server.settings import Settings
from trainyard.store.migrate import current_revisions

settings = Settings(home=Path(sys.argv[1]))
_migrate_apart(settings)
with sa.create_engine(settings.db_url).connect() as conn:
    stamped = sorted(current_revisions(conn))
print(json.dumps({"stamped": stamped, "alembic": "alembic" in sys.modules}))
"""


def test_yard_up_migrates_a_new_database_in_a_child(tmp_path: Path) -> None:
    # `yard up` and `yard server` on a new database: the schema reaches head, Alembic stays out.
    got = _probe(MIGRATE_APART, str(tmp_path / "home"))
    assert got == {"stamped": sorted(migrate.head_revisions()), "alembic": False}


SERVER = """
import contextlib, io, json, sys
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    from trainyard.cli.main import main
    main(["server", "--help"])
from pathlib import Path
from trainyard.server.platform import Platform
from trainyard.server.run import _rest_server
from trainyard.server.settings import Settings

platform = Platform(Settings(home=Path(sys.argv[1])))
server = _rest_server(platform.settings, platform)
server.config.load()  # what uvicorn does when it starts: its protocol classes are imported here
loaded = sorted(k for k, v in sys.modules.items() if v is not None)
print(json.dumps({"ws": server.config.ws, "loaded": loaded}))
platform.close()
"""


def test_the_rest_server_loads_no_websocket_stack_and_no_reloader(tmp_path: Path) -> None:
    # No route speaks WebSocket and no platform process reloads: 5 MB of either is dead weight.
    got = _probe(SERVER, str(tmp_path))
    assert isinstance(got, dict)
    assert got["ws"] == "none"
    tops = {m.split(".")[0] for m in got["loaded"]}
    assert not {"websockets", "wsproto", "watchfiles"} & tops
    assert "uvicorn.protocols.websockets.auto" not in got["loaded"]
