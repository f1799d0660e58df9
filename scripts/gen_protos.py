"""Regenerate the committed gRPC stubs; with --check, fail if the committed ones are stale."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "src" / "trainyard" / "proto"


def generate(dest: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={Path(sys.executable).parent / 'protoc-gen-mypy_grpc'}",
            f"--python_out={dest}",
            f"--grpc_python_out={dest}",
            f"--mypy_out={dest}",
            # Typed stubs for the generated client and servicer (the agent uses the async stub).
            f"--mypy_grpc_out={dest}",
            *protos,
        ],
        check=True,
    )
    # protoc writes absolute `from trainyard.v1 import ...`; the stubs live under trainyard.proto.
    # Only module references: the wire names ('/trainyard.v1.WorkerService/...') stay as they are.
    for f in dest.rglob("*.py*"):
        text = f.read_text().replace("from trainyard.v1 import", "from trainyard.proto.trainyard.v1 import")
        if f.suffix == ".pyi":
            text = re.sub(
                r"(?<![./'\w])trainyard\.v1\.worker_pb2\b", "trainyard.proto.trainyard.v1.worker_pb2", text
            )
        f.write_text(text)
    for d in [dest, *[p for p in dest.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()


def main() -> int:
    check = "--check" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        if check:
            cmp = filecmp.dircmp(tmp, OUT)
            stale = _diff(cmp)
            if stale:
                print("gRPC stubs are stale; run `make proto`:", *stale, sep="\n  ")
                return 1
            print("gRPC stubs are fresh")
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(tmp, OUT)
    print(f"wrote {OUT}")
    return 0


def _diff(cmp: filecmp.dircmp[str], prefix: str = "") -> list[str]:
    out = [prefix + n for n in cmp.left_only + cmp.right_only + cmp.diff_files if n != "__pycache__"]
    for name, sub in cmp.subdirs.items():
        if name != "__pycache__":
            out += _diff(sub, prefix + name + "/")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
