"""Chaos: 300 short jobs on 3 agents while a seeded driver kill -9s agents (and restarts them),
SIGSTOPs/SIGCONTs them for shorter and longer than the heartbeat timeout, and kill -9s the control
plane once (and restarts it).

Afterwards, from the API and from the jobs' own records (each attempt appends start, alive and end
lines with its attempt number, pid, agent and a timestamp to a file in its cwd):

- every job is terminal, and SUCCEEDED (retries allow far more attempts than faults can cost);
- exactly one SUCCEEDED attempt per job, and the job's own record shows that attempt ran to its end;
- no two attempts of a job were live at once, with one honest exception: an agent frozen for longer
  than the heartbeat timeout is declared dead and its jobs run again elsewhere while the old process
  still runs under the frozen agent (nothing can reach it: the agent is the one that would kill it).
  Such an overlap is allowed only if the older attempt ran on an agent frozen (long) when the newer
  one started, and the older attempt's last record is at most ``FENCE_SLACK_S`` after that agent's
  SIGCONT: the woken agent is answered STALE and kills it. A short freeze allows nothing;
- every log line of each successful attempt is there, in order.

Agent 3 runs jobs unsandboxed (``--isolation off``): a kill -9 there is survived only because the
job watchdog kills the job's process group with its agent (bwrap's --die-with-parent covers the
sandboxed ones).
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.harness import Agent, ServerProcess, shared_dir, wait_for

SEED = 20240605
JOBS = 300
LINES = 12
LONG_LINES = 80  # every LONG_EVERY-th job runs ~8 s: longer than a long freeze, which can split it
LONG_EVERY = 10
LINE_S = 0.1
SUBMIT_PER_S = 5.0
"""Submitted over a minute, as users would, not all at once: with spare capacity a lost job runs
again at once (a requeued job queues behind every job already waiting), so a long freeze really
does leave an old attempt running beside its successor."""
HEARTBEAT_S = 1.0
TIMEOUT_S = 3 * HEARTBEAT_S  # the control plane's heartbeat TTL: 3 intervals
SHORT_STOP_S = (0.2, 1.0)  # well under the TTL, even with a heartbeat just missed before the stop
LONG_STOP_S = (TIMEOUT_S + 1.5, TIMEOUT_S + 3.0)
FENCE_SLACK_S = 2.0
BUDGET = {"kill -9 agent": 6, "short SIGSTOP": 6, "long SIGSTOP": 3, "kill -9 control plane": 1}
DEADLINE_S = 170.0
DONE = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}

JOB = f"""
import os, sys, time
n, agent, pid = os.environ["TRAINYARD_ATTEMPT"], os.environ.get("CHAOS_AGENT", "?"), os.getpid()
lines = int(os.environ["LINES"])
# Attempts of one job run as different users (agent 3 runs jobs unsandboxed, as itself; the others
# as nobody): the shared record file must stay writable for each.
os.umask(0)
def mark(kind):
    with open("rec", "a") as f:
        f.write(f"{{kind}} {{n}} {{pid}} {{agent}} {{time.time():.3f}}\\n")
mark("start")
for i in range(lines):
    print(f"line {{i}}", flush=True)
    mark("alive")
    time.sleep({LINE_S})
mark("end")
"""


@dataclass
class Run:
    """One attempt as the job itself recorded it."""

    attempt: int
    agent: str
    start: float
    last: float
    ended: bool


@dataclass
class Freeze:
    agent: str
    stop: float
    cont: float
    long: bool


def parse_runs(path: Path) -> dict[int, Run]:
    runs: dict[int, Run] = {}
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue  # a line cut short by a SIGKILL mid-write
        kind, n, _pid, agent, t = parts
        at, number = float(t), int(n)
        run = runs.setdefault(number, Run(number, agent, at, at, False))
        run.start, run.last = min(run.start, at), max(run.last, at)
        run.ended |= kind == "end"
    return runs


def lines_of(index: int) -> int:
    return LONG_LINES if index % LONG_EVERY == 0 else LINES


def busy_with_long_jobs(jobdirs: list[Path], now: float) -> Counter[str]:
    """Per agent, its long jobs that started in the last 4 s and run on: they outlive a long freeze
    of that agent, so their next attempts start while they are still alive."""
    busy: Counter[str] = Counter()
    for d in jobdirs[::LONG_EVERY]:
        for run in parse_runs(d / "rec").values():
            if not run.ended and now - run.start < 4.0:
                busy[run.agent] += 1
    return busy


def all_jobs(c: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/jobs", params=params).json()
        jobs += page["jobs"]
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


def unfinished(c: httpx.Client) -> int | None:
    """Jobs not yet terminal; None while the control plane does not answer."""
    try:
        return sum(j["status"] not in DONE for j in all_jobs(c))
    except (httpx.HTTPError, KeyError, ValueError):
        return None


class Fleet:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.args = {
            "agent-1": ("--cpus", "4"),
            "agent-2": ("--cpus", "4"),
            # Unsandboxed: its jobs die with it only through the job watchdog.
            "agent-3": ("--cpus", "4", "--isolation", "off"),
        }
        self.agents = {name: self._spawn(name) for name in self.args}

    def _spawn(self, name: str) -> Agent:
        return Agent(self.server, name, *self.args[name], extra_env={"CHAOS_AGENT": name})

    def restart(self, name: str) -> None:
        self.agents[name] = self._spawn(name)

    def stop(self) -> None:
        for a in self.agents.values():
            a.kill(signal.SIGCONT)
            a.stop()


def overlaps(runs: dict[int, Run], freezes: list[Freeze]) -> tuple[list[str], list[float]]:
    """Overlapping live attempts of one job that no long freeze explains; for those one explains, how
    long after its agent's SIGCONT the stale attempt's last record was written."""
    bad: list[str] = []
    fenced: list[float] = []
    ordered = sorted(runs.values(), key=lambda r: r.start)
    for i, old in enumerate(ordered):
        for new in ordered[i + 1 :]:
            if new.start >= old.last:
                continue
            freeze = next(
                (
                    f
                    for f in freezes
                    if f.long
                    and f.agent == old.agent
                    and f.stop <= new.start <= f.cont + FENCE_SLACK_S
                    and old.last <= f.cont + FENCE_SLACK_S
                ),
                None,
            )
            if freeze is not None:
                fenced.append(old.last - freeze.cont)
            else:
                bad.append(
                    f"attempt {old.attempt} on {old.agent} [{old.start:.2f}, {old.last:.2f}] overlaps "
                    f"attempt {new.attempt} on {new.agent} from {new.start:.2f}"
                )
    return bad, fenced


def submit_all(server: ServerProcess, token: str, jobdirs: list[Path], ids: list[str]) -> None:
    """Submit at a steady rate, through the control plane's restart: a submission whose answer was
    lost is sent again with its Idempotency-Key, which returns the job it created, not a second one."""
    began = time.monotonic()
    with server.client(token) as c:
        for i, d in enumerate(jobdirs):
            time.sleep(max(0.0, began + i / SUBMIT_PER_S - time.monotonic()))
            spec = {
                "command": [sys.executable, "-c", JOB],
                "cwd": str(d),  # the job's records: writable under the sandbox
                "env": {"LINES": str(lines_of(i))},
                "resources": {"cpu": 0.5},
                "retry": {"max_attempts": 20, "on": ["infra"]},
            }
            while not ids[i]:
                with contextlib.suppress(httpx.HTTPError):
                    r = c.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"chaos-{i}"})
                    if r.status_code in (200, 201):
                        ids[i] = r.json()["id"]
                        break
                time.sleep(0.2)


def test_chaos_300_jobs_3_agents(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    home = tmp_path / "home"
    server = ServerProcess(
        home,
        {
            "TRAINYARD_HEARTBEAT_INTERVAL": str(HEARTBEAT_S),
            "TRAINYARD_SCHEDULER_INTERVAL": "0.2",
            "TRAINYARD_RESTART_GRACE": "10",
        },
    ).wait_ready()
    token = (home / "token").read_text().strip()
    fleet = Fleet(server)
    jobdirs = [tmp_path / "jobs" / str(i) for i in range(JOBS)]
    faults: Counter[str] = Counter()
    freezes: list[Freeze] = []
    cp_restart_at = 0.0
    try:
        with server.client(token) as c:
            wait_for(lambda: len(c.get("/v1/workers").json()["workers"]) == 3, 30, 0.1, "3 agents")
            for d in jobdirs:
                shared_dir(d)
            began = time.monotonic()
            ids = [""] * JOBS
            submitter = threading.Thread(target=submit_all, args=(server, token, jobdirs, ids), daemon=True)
            submitter.start()

            # The driver: one fault at a time, each undone (SIGCONT, restart) before the next, so that
            # two agents are healthy between faults; the control plane goes down after the third.
            plan = [k for k, n in BUDGET.items() if k != "kill -9 control plane" for _ in range(n)]
            rng.shuffle(plan)
            plan.insert(3, "kill -9 control plane")
            for fault in plan:
                time.sleep(rng.uniform(1.0, 2.5))
                left = unfinished(c)
                if not submitter.is_alive() and left is not None and left < 30:
                    break  # too little work left for a fault to hit
                name = rng.choice(sorted(fleet.agents))
                if fault == "long SIGSTOP":
                    # Freeze an agent in the middle of long jobs, or the freeze splits nothing.
                    busy = busy_with_long_jobs(jobdirs, time.time())
                    if busy:
                        name = busy.most_common(1)[0][0]
                agent = fleet.agents[name]
                if fault == "kill -9 agent":
                    agent.kill(signal.SIGKILL)
                    agent.proc.wait(10)
                    time.sleep(rng.uniform(0.5, 2.0))
                    fleet.restart(name)
                elif fault in ("short SIGSTOP", "long SIGSTOP"):
                    long = fault == "long SIGSTOP"
                    stopped = time.time()
                    agent.kill(signal.SIGSTOP)
                    time.sleep(rng.uniform(*(LONG_STOP_S if long else SHORT_STOP_S)))
                    agent.kill(signal.SIGCONT)
                    freezes.append(Freeze(name, stopped, time.time(), long))
                else:
                    cp_restart_at = time.time()
                    server.kill(signal.SIGKILL)
                    server.proc.wait(10)
                    time.sleep(1.0)
                    server.restart().wait_ready()
                faults[fault] += 1
            chaos_s = time.monotonic() - began
            submitter.join(JOBS / SUBMIT_PER_S + 30)
            assert all(ids), f"{ids.count('')} jobs were never accepted"

            def finished() -> list[dict[str, Any]] | None:
                with contextlib.suppress(httpx.HTTPError):
                    jobs = all_jobs(c)
                    return jobs if all(j["status"] in DONE for j in jobs) else None
                return None

            left_s = DEADLINE_S - (time.monotonic() - began)
            jobs = {j["id"]: j for j in wait_for(finished, max(left_s, 10.0), 0.5, "every job to end")}
            took = time.monotonic() - began

            assert faults["kill -9 control plane"] == 1, f"the driver ran out of work too soon: {faults}"
            assert faults["kill -9 agent"] >= 3 and faults["long SIGSTOP"] >= 1, faults
            assert len(jobs) == JOBS
            bad_status = {j["status"] for j in jobs.values()} - {"SUCCEEDED"}
            assert not bad_status, [j["attempts"] for j in jobs.values() if j["status"] != "SUCCEEDED"][:3]

            problems: list[str] = []
            recovered = reattached = 0
            fenced: list[float] = []
            for index, (job_id, d) in enumerate(zip(ids, jobdirs, strict=True)):
                job = jobs[job_id]
                won = [a for a in job["attempts"] if a["outcome"] == "succeeded"]
                if len(won) != 1:
                    problems.append(f"{job_id}: {len(won)} succeeded attempts: {job['attempts']}")
                    continue
                number = won[0]["number"]
                runs = parse_runs(d / "rec")
                run = runs.get(number)
                if run is None or not run.ended:
                    problems.append(f"{job_id}: attempt {number} succeeded but its own record says {run}")
                bad, explained = overlaps(runs, freezes)
                problems += [f"{job_id}: {b}" for b in bad]
                fenced += explained
                expected = [f"line {i}" for i in range(lines_of(index))]
                resp = c.get(f"/v1/jobs/{job_id}/logs", params={"attempt": number})
                lines = resp.text.splitlines()
                if resp.status_code != 200 or lines != expected:
                    problems.append(f"{job_id}: attempt {number} log is {resp.status_code} {lines}")
                recovered += len(job["attempts"]) > 1
                reattached += run is not None and run.start < cp_restart_at < run.last and len(runs) == 1
            assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
            assert recovered > 0, "no fault hit a running job: the test proved nothing"
            assert fenced, "no long freeze split a job: the fencing path went untested"

            print(
                f"\nchaos (seed {SEED}): {JOBS} jobs on 3 agents in {took:.0f}s ({chaos_s:.0f}s of faults); "
                f"faults injected: {dict(faults)} ({sum(faults.values())} in all); "
                f"jobs re-run after a lost attempt: {recovered}; "
                f"running across the control-plane restart and carried on: {reattached}; "
                f"overlaps fenced after a long freeze: {len(fenced)} (stale attempt's last sign of life "
                f"at most {max(fenced):.2f}s after SIGCONT); "
                f"all {JOBS} succeeded exactly once with every log line in order"
            )
    finally:
        fleet.stop()
        server.stop()


def test_overlap_rule_allows_only_a_fenced_long_freeze() -> None:
    """The judge itself: an overlap counts as fenced only under a long freeze of the old attempt's
    agent, and only if the old attempt stopped within FENCE_SLACK_S of SIGCONT."""
    old = Run(1, "agent-1", 100.0, 106.5, False)
    new = Run(2, "agent-2", 104.0, 110.0, True)
    runs = {1: old, 2: new}
    long = Freeze("agent-1", 101.0, 106.0, long=True)
    assert overlaps(runs, [long]) == ([], [0.5])
    assert overlaps(runs, [])[0], "an overlap with no freeze at all passed"
    assert overlaps(runs, [Freeze("agent-1", 101.0, 106.0, long=False)])[0], "a short freeze excused it"
    assert overlaps(runs, [Freeze("agent-3", 101.0, 106.0, long=True)])[0], "another agent's freeze did"
    late = {1: Run(1, "agent-1", 100.0, 106.0 + FENCE_SLACK_S + 0.1, False), 2: new}
    assert overlaps(late, [long])[0], "a stale attempt that ran on after its agent woke passed"
    apart = {1: Run(1, "agent-1", 100.0, 103.0, False), 2: new}
    assert overlaps(apart, []) == ([], [])
