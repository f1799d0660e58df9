"""`trainyard.job` runs inside jobs, under whatever interpreter the job brings: it must import with
the standard library alone (a job's `python` rarely has grpc, pydantic or SQLAlchemy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src"

PROBE = (
    "import sys\n"
    f"sys.path.insert(0, {str(SRC)!r})\n"
    "before = set(sys.modules)\n"
    "import trainyard.job\n"
    "print('\\n'.join(sorted(set(sys.modules) - before)))\n"
)


def test_trainyard_job_imports_only_the_standard_library() -> None:
    # -I: no site-packages, no user site, no PYTHONPATH: only the standard library and src/.
    out = subprocess.run([sys.executable, "-I", "-c", PROBE], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    ours = {m for m in loaded if m == "trainyard" or m.startswith("trainyard.")}
    assert ours == {"trainyard", "trainyard.job", "trainyard.datacache"}, ours
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"trainyard"}
    assert not third_party, third_party
