"""The platform's idle footprint: `yard up --workers 1` on the embedded defaults (SQLite, in-process
cache and bus, objects on disk) in a temp home, left idle, then the memory of its process tree.

Each run starts the platform from this interpreter, waits until the agent has registered, lets it
sit idle for ``--settle`` seconds (heartbeats only) and reads every process of the tree from /proc:
RSS (``VmRSS``) and, where the kernel has it, PSS (``/proc/PID/smaps_rollup``: shared pages split
between the processes that map them, so the two Pythons' shared libraries count once in the sum).
The row's value is the median over the runs of the whole tree's RSS; the note has the control
plane's and the agent's medians and the PSS sum.

``--src DIR`` runs another tree of the code (e.g. an older commit's ``src``, exported with
``git archive``) on the same interpreter, so before and after are measured in one session:

    .venv/bin/python bench/footprint.py [--runs 3 --settle 10]
    git archive HEAD~3 src | tar -x -C /tmp/base && .venv/bin/python bench/footprint.py --src /tmp/base/src
    .venv/bin/python bench/footprint.py --env MALLOC_ARENA_MAX=2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from common import free_port, ts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MB = 1024 * 1024


@dataclass(frozen=True)
class Mem:
    """One process's memory at one instant, in bytes (``pss`` is 0 where the kernel has no rollup)."""

    pid: int
    role: str
    rss: int
    pss: int


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc's parent links (no psutil in the venv)."""
    parents: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{d}/stat", encoding="ascii", errors="replace") as f,
            ):
                parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
    out, frontier = [root], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "control plane"
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return "agent" if b"worker" in cmd else cmd[0].decode(errors="replace").rsplit("/", 1)[-1]


def sample(root: int) -> list[Mem]:
    out = []
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            out.append(Mem(pid, _role(pid, root), _status_kb(pid, "VmRSS:"), _pss(pid)))
    return out


def _up_and_sample(home: Path, port: int, grpc_port: int, settle_s: float, env: dict[str, str]) -> list[Mem]:
    """Start `yard up --workers 1` on ``home``, wait for the agent and ``settle_s`` idle, sample, stop."""
    argv = [sys.executable, "-m", "trainyard", "up", "--home", str(home), "--port", str(port)]
    argv += ["--grpc-port", str(grpc_port), "--workers", "1"]
    t0 = time.time() - 1.0  # the control plane's clock stamps registrations: allow for rounding
    proc = subprocess.Popen(
        argv, cwd=home.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Press Ctrl-C"):
                break
        else:
            raise RuntimeError("yard up did not start")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        token = (home / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as c:
            deadline = time.monotonic() + 60
            # A restart's agent registers again: wait for this start's registration, not the row
            # the first start left.
            while not [w for w in c.get("/v1/workers").json()["workers"] if ts(w["registered_at"]) >= t0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not register in 60 s")
                time.sleep(0.2)
        # Idle means heartbeats only: nothing of the bench's own reads left in flight.
        time.sleep(settle_s)
        return sample(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def one_run(settle_s: float, src: Path | None, env_extra: dict[str, str]) -> tuple[list[Mem], list[Mem]]:
    """A first start on a new home (its database is migrated) and a restart on the same home."""
    with tempfile.TemporaryDirectory(prefix="ty-footprint-") as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        for k in [k for k in env if k.startswith("TRAINYARD_")]:
            del env[k]  # the embedded defaults, whatever this shell has configured
        if src is not None:
            env["PYTHONPATH"] = str(src)
        home = Path(tmp) / "home"
        first = _up_and_sample(home, free_port(), free_port(), settle_s, env)
        return first, _up_and_sample(home, free_port(), free_port(), settle_s, env)


def _summary(runs: list[list[Mem]]) -> dict[str, Any]:
    def med(role: str | None, field: str) -> float:
        return statistics.median(
            sum(getattr(m, field) for m in r if role is None or m.role == role) / MB for r in runs
        )

    return {
        "value": med(None, "rss"),
        "unit": "MB",
        "n": len(runs),
        "control_plane_rss_mb": med("control plane", "rss"),
        "agent_rss_mb": med("agent", "rss"),
        "pss_mb": med(None, "pss"),
        "runs_rss_mb": [sum(m.rss for m in r) / MB for r in runs],
        "processes": [m.role for m in runs[0]],
    }


def idle_footprint(
    runs: int = 3, settle_s: float = 10.0, src: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`yard up --workers 1` idle: the whole tree's RSS (MB), median of ``runs`` first starts (a new
    home); the restarts on the same home, in ``restart``."""
    pairs = [one_run(settle_s, src, env or {}) for _ in range(runs)]
    out = _summary([first for first, _ in pairs])
    out["restart"] = _summary([again for _, again in pairs])
    again = out["restart"]
    out["note"] = (
        f"control plane {out['control_plane_rss_mb']:.0f} + agent {out['agent_rss_mb']:.0f} MB, "
        f"PSS {out['pss_mb']:.0f}; restarted: {again['value']:.0f} MB "
        f"({again['control_plane_rss_mb']:.0f} + {again['agent_rss_mb']:.0f}); {settle_s:.0f} s idle"
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=10.0, help="idle seconds after the agent registers")
    ap.add_argument("--src", type=Path, help="run this tree's trainyard (PYTHONPATH) instead")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the platform's processes")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    r = idle_footprint(args.runs, args.settle, args.src.resolve() if args.src else None, env)
    print(f"{'idle_footprint':<30}{r['value']:>10.1f} MB   {r['note']}")
    for what, row in (("first start", r), ("restart", r["restart"])):
        runs = ", ".join(f"{x:.1f}" for x in row["runs_rss_mb"])
        print(f"{what}: RSS {runs} MB; processes {row['processes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
