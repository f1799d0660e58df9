"""A/B of `make bench` rows between two commits, alternated row by row in one session.

Each commit is checked out into a temporary git worktree and every row runs as
`bench/run.py --only ROW` of that tree, from this interpreter with the tree's `src` first on
`PYTHONPATH`, so both sides share the installed packages. The order within a pair alternates
(A B, then B A) so a drift of the shared machine's speed does not favour one side. A table of each
row's values and the B/A ratios is printed; every record (with the load average) is appended to
`--out` as JSON lines.

    .venv/bin/python bench/ab.py 404d628 HEAD                        # every row both trees have
    .venv/bin/python bench/ab.py 404d628 HEAD --rows simulated_day --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Rows that run.py measures together (the trivial rate is a ratio to the floor measured with it).
GROUPS = [
    "spawn_floor,trivial_e2e_rate",
    "submit_rate_sqlite",
    "submit_rate_postgres",
    "dispatch_latency",
    "spawn_floor_sandboxed,trivial_e2e_rate_sandboxed",
    "status_reads_postgres",
    "status_reads_redis",
    "relay_throughput",
    "event_latency_replicas",
    "scheduler_cycle",
    "simulated_day",
    "ui_latency",
]


def run_group(tree: Path, group: str) -> list[dict[str, Any]]:
    """One `bench/run.py --only GROUP` of ``tree``; its result rows (empty when it failed)."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--only", group], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        print(f"{tree.name} {group} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return []
    rows: list[dict[str, Any]] = json.loads((tree / "bench" / "results.json").read_text())
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="commit A (the baseline)")
    ap.add_argument("b", help="commit B")
    ap.add_argument("--rows", default="", help="comma-separated groups of rows (default: all of GROUPS)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "ab-results.jsonl")
    args = ap.parse_args()
    groups = [g for g in GROUPS if not args.rows or set(g.split(",")) & set(args.rows.split(","))]
    values: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="ty-ab-") as tmp, args.out.open("a") as out:
        trees = {"A": Path(tmp) / "a", "B": Path(tmp) / "b"}
        for side, rev in (("A", args.a), ("B", args.b)):
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=REPO, check=True
            )
        try:
            for rnd in range(args.rounds):
                for i, group in enumerate(groups):
                    for side in ("A", "B") if (i + rnd) % 2 == 0 else ("B", "A"):
                        for row in run_group(trees[side], group):
                            load = os.getloadavg()[0]
                            out.write(json.dumps({"side": side, "round": rnd, "load": load, **row}) + "\n")
                            out.flush()
                            values.setdefault(row["name"], {"A": [], "B": []})[side].append(row["value"])
                            stamp = time.strftime("%H:%M:%S")
                            print(f"{stamp} {side} {row['name']} {row['value']:.1f} load={load:.1f}")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)
    print(f"\n{'row':<30}{'A':>28}{'B':>28}{'B/A (medians)':>15}")
    for name, by in values.items():
        a, b = by["A"], by["B"]
        ratio = statistics.median(b) / statistics.median(a) if a and b else float("nan")
        fa = ", ".join(f"{x:.1f}" for x in a)
        fb = ", ".join(f"{x:.1f}" for x in b)
        print(f"{name:<30}{fa:>28}{fb:>28}{ratio:>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
