"""Issue 12's findings about what a job may reach, tried by hostile jobs on a real platform.

Each test plays one finding from a plain team user's token against a worker as `yard worker` runs by
default (best-effort isolation: bubblewrap plus cgroups, jobs as ``nobody``), and names the defence
that stopped it. On the code before the fix every one of these read or wrote what it must not.

Needs bubblewrap and root (the agent drops jobs to an unprivileged user): fails, never skips, where
they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Agent, ControlPlane, platform, shared_dir, wait_for, wait_status

PY = sys.executable
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}
SECRET = "top-secret-node-file-7d1c"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, list[Agent], Path]]:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap (bwrap) is not installed: `make install` installs it")
    if os.geteuid() != 0:
        pytest.fail("these tests need root: the agent must be root to run jobs as another user")
    base = tmp_path_factory.mktemp("hostile")
    shared = shared_dir(base / "shared")  # the one root this worker shares with jobs
    args = ("--isolation", "best-effort", "--allow-cwd", str(shared))
    with platform(base, agents=1, agent_args=args) as (cp, agents):
        with cp.client() as admin:
            for team in ("vision", "nlp"):
                r = admin.put(f"/v1/admin/teams/{team}", json={})
                assert r.status_code in (200, 201), r.text
        yield cp, agents, shared


def user(cp: ControlPlane, name: str, team: str) -> httpx.Client:
    with cp.client() as admin:
        r = admin.post("/v1/admin/users", json={"name": name, "team": team, "role": "user"})
        if r.status_code == 409:
            r = admin.post("/v1/admin/tokens", json={"user": name})
        assert r.status_code in (200, 201), r.text
        return cp.client(str(r.json()["token"]))


@pytest.fixture
def mallory(plat: tuple[ControlPlane, list[Agent], Path]) -> Iterator[httpx.Client]:
    with user(plat[0], "mallory", "nlp") as c:
        yield c


def run(c: httpx.Client, code: str, timeout: float = 60, **spec: Any) -> dict[str, Any]:
    r = c.post("/v1/jobs", json={"command": [PY, "-c", code], **spec})
    assert r.status_code == 201, r.text
    return wait_status(c, str(r.json()["id"]), DONE, timeout)


def logs(c: httpx.Client, job: dict[str, Any]) -> str:
    return c.get(f"/v1/jobs/{job['id']}/logs").text


def artifact_names(c: httpx.Client, job: dict[str, Any]) -> set[str]:
    body = c.get(f"/v1/jobs/{job['id']}/artifacts").json()
    return {a["path"] for a in body["artifacts"]}


def test_finding_1_cwd_root_is_refused_at_submit(mallory: httpx.Client) -> None:
    """Defence: the JobSpec validator; `/`, `..` and system directories are no working directory."""
    for cwd in ("/", "/etc", "/proc/self", "/var/lib", "../..", "a/../../b", "/a/./b", "x\ny"):
        r = mallory.post("/v1/jobs", json={"command": ["true"], "cwd": cwd, "artifacts": ["etc/shadow"]})
        assert r.status_code == 422, (cwd, r.text)
        assert r.json()["error"]["details"][0]["field"] == "cwd", r.text


def test_finding_1_cwd_outside_the_shared_roots_yields_no_host_file(
    plat: tuple[ControlPlane, list[Agent], Path], mallory: httpx.Client
) -> None:
    """Defence: the worker takes a `cwd` only inside its `--allow-cwd` roots; elsewhere the job runs in
    its own directory, and artifacts are collected beneath that directory only."""
    cp, _, _ = plat
    home_parent = cp.home.parent
    job = run(
        mallory,
        "print('ran')",
        cwd=str(home_parent),
        artifacts=["home/token", "home/secret-key", "home/worker-token"],
    )
    assert job["status"] == "SUCCEEDED", job
    assert artifact_names(mallory, job) == set()
    assert "is not shared with this worker" in logs(mallory, job)


def test_finding_1_links_out_of_a_shared_cwd_are_not_followed(
    plat: tuple[ControlPlane, list[Agent], Path], mallory: httpx.Client
) -> None:
    """Defence: artifacts are opened beneath their root (openat2 RESOLVE_BENEATH or O_NOFOLLOW walks)
    and only when the job's own user could read them; links that leave the root are not followed."""
    _, _, shared = plat
    d = shared_dir(shared / "links")
    (d / "own.txt").write_text("mine\n")
    for name, target in (("shadow", "/etc/shadow"), ("root", "/"), ("token", str(plat[0].home / "token"))):
        link = d / name
        if not link.is_symlink():
            link.symlink_to(target)
    private = d / "root-only.txt"
    private.write_text(SECRET)
    private.chmod(0o600)  # root's own file in a shared directory: the job's user may not read it
    job = run(
        mallory,
        "print('ok')",
        cwd=str(d),
        artifacts=["own.txt", "shadow", "root/etc/shadow", "token", "root-only.txt"],
    )
    assert job["status"] == "SUCCEEDED", job
    assert artifact_names(mallory, job) == {"own.txt"}


def test_finding_2_data_cache_markers_are_not_followed(
    plat: tuple[ControlPlane, list[Agent], Path], mallory: httpx.Client
) -> None:
    """Defence: the agent reads a dataset's marker beneath the cache without following links, and
    only a plain one-line URI is reported."""
    cp, _, _ = plat
    code = f"""
import os, pathlib
cache = pathlib.Path(os.environ["TRAINYARD_DATA_CACHE"])
for name, target in (("evil", {str(cp.home / "token")!r}), ("shadow", "/etc/shadow")):
    (cache / name).mkdir(exist_ok=True)
    marker = cache / name / ".trainyard-uri"
    if not marker.is_symlink():
        marker.symlink_to(target)
(cache / "good").mkdir(exist_ok=True)
(cache / "good" / ".trainyard-uri").write_text("s3://bucket/legit-dataset")
"""
    job = run(mallory, code)
    assert job["status"] == "SUCCEEDED", logs(mallory, job)
    admin_token = cp.token

    def reported() -> list[str] | None:
        workers = mallory.get("/v1/workers").json()["workers"]
        uris = [u for w in workers for u in w["cached_uris"]]
        return uris if "s3://bucket/legit-dataset" in uris else None

    uris = wait_for(reported, 20, 0.1, "the legitimate dataset to be reported")
    text = json.dumps(mallory.get("/v1/workers").json())
    assert admin_token not in text and "root:" not in text, uris


def test_finding_3_a_job_cannot_write_the_host_outside_its_own_directories(
    plat: tuple[ControlPlane, list[Agent], Path], mallory: httpx.Client
) -> None:
    """Defence: jobs run as an unprivileged user in a sandbox whose only writable binds are their own
    directories and a shared `cwd`; the platform home stays hidden, other host paths read-only."""
    cp, _, shared = plat
    victim = shared_dir(shared / "victim") / "other-team.txt"
    victim.write_text("original\n")
    victim.chmod(0o644)  # readable, as shared files are; not writable for others
    targets = {
        "home token": str(cp.home / "token"),
        "shared file of another user": str(victim),
        "checkout": str(Path(__file__).resolve()),
        "root's home": "/root/.profile-trainyard-probe",
    }
    code = f"""
import json
for what, path in {targets!r}.items():
    try:
        with open(path, "a") as f:
            f.write("pwned")
        print(what, "WROTE")
    except OSError as e:
        print(what, "refused", e.errno)
"""
    job = run(mallory, code, cwd=str(shared))
    out = logs(mallory, job)
    assert "WROTE" not in out, out
    assert victim.read_text() == "original\n"
    assert not Path("/root/.profile-trainyard-probe").exists()


def test_finding_4_jobs_do_not_run_as_root(mallory: httpx.Client) -> None:
    """Defence: the sandbox drops the job to `--run-as` (default nobody) with setpriv, so root-only
    files on the node stay unreadable through the read-only view of it; root's home is replaced by
    an empty directory (only the agent's interpreter is bound back into it)."""
    probe = Path.home() / ".trainyard-security-probe"
    probe.write_text(SECRET)
    probe.chmod(0o644)  # readable by anyone who can reach it: the sandbox must hide it
    code = f"""
import os
print("uid", os.getuid(), os.geteuid(), "gid", os.getgid(), "groups", os.getgroups())
for path in ("/etc/shadow", {str(probe)!r}):
    try:
        print(path, "READ", open(path).read())
    except OSError as e:
        print(path, "refused", e.errno)
"""
    try:
        job = run(mallory, code)
    finally:
        probe.unlink()
    out = logs(mallory, job)
    assert job["status"] == "SUCCEEDED", out
    assert "uid 65534 65534 gid 65534 groups []" in out, out
    assert "READ" not in out and SECRET not in out, out


def test_finding_5_the_data_cache_is_per_team(plat: tuple[ControlPlane, list[Agent], Path]) -> None:
    """Defence: each team's jobs get their own data-cache directory; the cache's root, with every other
    team's datasets, is hidden from the sandbox."""
    cp, _, _ = plat
    poison = """
import os, pathlib
cache = pathlib.Path(os.environ["TRAINYARD_DATA_CACHE"])
print("cache", cache)
d = cache / "imagenet"
d.mkdir(exist_ok=True)
(d / "labels.txt").write_text("POISONED")
(d / ".trainyard-uri").write_text("s3://datasets/imagenet")
"""
    read = """
import os, pathlib
cache = pathlib.Path(os.environ["TRAINYARD_DATA_CACHE"])
print("cache", cache, "sees", sorted(p.name for p in cache.iterdir()))
labels = cache / "imagenet" / "labels.txt"
print("labels", labels.read_text() if labels.exists() else "absent")
try:
    print("root", sorted(os.listdir(cache.parent)))
except OSError as e:
    print("root refused", e.errno)
"""
    with user(cp, "bob", "nlp") as bob, user(cp, "alice", "vision") as alice:
        written = run(bob, poison)
        assert written["status"] == "SUCCEEDED", logs(bob, written)
        seen = run(alice, read)
        out = logs(alice, seen)
        assert seen["status"] == "SUCCEEDED", out
        assert "POISONED" not in out and "labels absent" in out, out
        assert "nlp" not in out.split("root", 1)[-1], out


def test_finding_10_a_preempted_job_that_exits_0_is_requeued(tmp_path: Path) -> None:
    """Defence: once the platform preempts an attempt it ends PREEMPTED whatever the process exits
    with; only `trainyard.job.mark_complete()` turns an exit 0 then into the job's success."""
    args = ("--isolation", "best-effort")
    env = {"TRAINYARD_PREEMPT_GRACE": "10"}
    # 1 s heartbeats: on a loaded machine 0.3 s ones can be missed, and a drain of a worker declared
    # dead answers 404.
    plat = platform(tmp_path, agents=2, agent_args=args, agent_env=env, heartbeat_interval=1.0)
    with plat as (cp, _), cp.client() as admin:
        # Round one drains the worker the job runs on; round two runs on the one left, and drains it.
        for complete in (False, True):
            code = f"""
import sys, time
import trainyard.job as tj
tj.install_preemption_handler()
if tj.latest_checkpoint() is not None:
    print("resumed", flush=True)
    sys.exit(0)
print("working", flush=True)
while not tj.preempted():
    time.sleep(0.05)
tj.save_checkpoint(b"half", step=1)
if {complete}:
    tj.mark_complete()
sys.exit(0)  # what a Lightning-style handler does
"""
            r = admin.post("/v1/jobs", json={"command": [PY, "-c", code], "preemptible": True})
            job_id = r.json()["id"]
            log_url = f"/v1/jobs/{job_id}/logs"
            wait_for(lambda u=log_url: "working" in admin.get(u).text, 30, 0.05, "the job")
            worker = admin.get(f"/v1/jobs/{job_id}").json()["attempts"][-1]["worker_id"]
            r = admin.post(f"/v1/admin/workers/{worker}/drain", json={"deadline": "0s"})
            assert r.status_code == 200, r.text
            done = wait_status(admin, job_id, {"SUCCEEDED", "FAILED"}, 60)
            outcomes = [a["outcome"] for a in done["attempts"]]
            if complete:
                assert outcomes == ["succeeded"], done
            else:
                assert outcomes == ["preempted", "succeeded"], done
                assert "resumed" in admin.get(f"/v1/jobs/{job_id}/logs", params={"attempt": 2}).text


def test_a_jobs_loader_variables_never_reach_the_sandboxs_setup(mallory: httpx.Client) -> None:
    """Beyond the list: bwrap and setpriv run as root; a job's `LD_PRELOAD` in their environment
    would run a library of the job's choosing as root. Defence: they start with a clean environment
    and the job's own comes in through a descriptor, exported only by the job's first process."""
    code = "import os; print('job sees', os.environ.get('LD_PRELOAD'), os.environ.get('TRAINYARD_JOB_ID'))\n"
    code += "print('Q is', repr(os.environ['Q']))"
    job = run(mallory, code, env={"LD_PRELOAD": "/nonexistent/trainyard-probe.so", "Q": 'it\'s "quoted" $x'})
    out = logs(mallory, job)
    assert job["status"] == "SUCCEEDED", out
    assert f"job sees /nonexistent/trainyard-probe.so {job['id']}" in out, out
    # The dynamic loader complains once per program that starts with it: the job's python only.
    assert out.count("trainyard-probe.so") == 2, out
    assert "Q is 'it\\'s \"quoted\" $x'" in out, out
