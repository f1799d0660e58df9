"""A corpus of Slurm batch scripts written the way people write them (tests/data/slurm/): comments
between directives, ``##SBATCH`` disabled lines, ``module load``, several options on a line, DOS
line ends, a Python script. Each becomes the spec below, with warnings that name what is dropped, and
a command that runs the script as it was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import trainyard
from trainyard.model import slurm
from trainyard.model.spec import JobSpec

CORPUS = Path(__file__).resolve().parents[2] / "data" / "slurm"
SHIMS = {
    n: (Path(trainyard.__file__).resolve().parent / "shims" / n).read_text() for n in ("srun", "scontrol")
}
SUBMIT_DIR = "/home/alice/proj"

GANG = "the job is a gang of"
NO_FILE = "no file is written"

# script → (the spec without its command, and the env's bookkeeping left out; warning fragments)
EXPECTED: dict[str, tuple[dict[str, Any], list[str]]] = {
    "ddp_multinode.sh": (
        {
            "name": "llama-ft",
            "replicas": 2,
            "resources": {"cpu": 64, "gpu": 8, "gpu_type": "a100"},
            "max_runtime": "24h",
            "pool": "gpu",
        },
        [
            "line 3: " + GANG + " 2 replicas",
            "line 7: --mem=0 (all of a node's memory) cannot be asked for",
            "line 8: --time=1-12:00:00 is over Trainyard's limit of 24h",
            "line 10: --output=logs/%x-%j.out: " + "the job's output and errors are kept in its log",
            "line 11: --error=logs/%x-%j.err",
            "line 12: --exclusive is ignored",
        ],
    ),
    "sweep_array.sh": (
        {
            "name": "lr-sweep",
            "resources": {"cpu": 4, "memory": "16Gi", "gpu": 1},
            "max_runtime": "4h",
            "pool": "gpu",
            "array": {"indices": "0-47", "parallelism": 8},
        },
        ["line 7: --output=logs/sweep_%A_%a.out", "line 8: --error=logs/sweep_%A_%a.err"],
    ),
    "preprocess_cpu.sh": (
        {
            "name": "tokenize",
            "resources": {"cpu": 16, "memory": "64Gi"},
            "max_runtime": "1h30m",
            "pool": "cpu",
        },
        ["line 8: --mail-type=END,FAIL is ignored", "line 9: --mail-user=alice@example.com is ignored"],
    ),
    "finetune_1gpu.sh": (
        {
            "name": "bert-finetune",
            "resources": {"memory": "32000Mi", "gpu": 1},
            "max_runtime": "12h",
            "priority": "normal",
            "retry": {"max_attempts": 5, "on": ["infra"]},
        },
        ["line 1: -l is dropped"],
    ),
    "eval_after_train.sh": (
        {
            "name": "eval",
            "resources": {"cpu": 2, "memory": "8Gi", "gpu": 1},
            "max_runtime": "30m",
            "depends_on": [{"job": "j01hx3train", "condition": "succeeded"}],
        },
        ["line 4: --kill-on-invalid-dep=yes has no counterpart"],
    ),
    "lightning_4gpu.sh": (
        {
            "name": "lightning_4gpu.sh",
            "resources": {"cpu": 24, "gpu": 4, "gpu_type": "v100"},
            "max_runtime": "8h",
        },
        ["line 6: --mem=0", "line 8: --signal=SIGUSR1@90 is ignored"],
    ),
    "mpi_job.sh": (
        {
            "name": "lammps_bench",
            "replicas": 2,
            "resources": {"cpu": 4, "memory": "8000Mi"},
            "max_runtime": "4h",
            "pool": "compute",
        },
        ["line 3: " + GANG, "line 7: --constraint=ib is ignored", "line 8: --account=chem-lab is ignored"],
    ),
    "conda_env.sh": (
        {
            "name": "vit-pretrain",
            "resources": {"cpu": 32, "memory": "160Gi", "gpu": 4},
            "max_runtime": "24h",
            "cwd": "/scratch/alice/vit",
            "env": {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"},
        },
        ["line 6: --account=vision is ignored", "line 11: --time=2-00:00:00 is over"],
    ),
    "python_direct.py": (
        {"name": "py-direct", "resources": {"cpu": 2, "memory": "4Gi"}, "max_runtime": "20m"},
        [],
    ),
    "windows_crlf.sh": (
        {"name": "windows-edited", "resources": {"cpu": 2}, "max_runtime": "15m"},
        ["the script has DOS line ends"],
    ),
    "short_opts.sh": (
        {"name": "quick", "resources": {"cpu": 4}, "max_runtime": "10m", "pool": "debug", "priority": "high"},
        ["line 3: --output=out.txt", "line 3: --error=err.txt"],
    ),
    "late_directives.sh": (
        {"name": "late"},
        [
            "line 6: #SBATCH after the script's first command",
            "line 7: #SBATCH after the script's first command",
        ],
    ),
    "big_gang.sh": (
        {
            "name": "gpt-pretrain",
            "replicas": 16,
            "resources": {"cpu": 96, "memory": "1600Gi", "gpu": 8, "gpu_type": "h100"},
            "max_runtime": "24h",
            "priority": "urgent",
            "retry": {"max_attempts": 5, "on": ["infra"]},
        },
        ["line 3: " + GANG + " 16", "line 8: --time=UNLIMITED", "line 11: --open-mode=append", "line 12: "],
    ),
}


def test_the_corpus_is_covered() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED)
    assert len(EXPECTED) >= 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_script(name: str) -> None:
    text = (CORPUS / name).read_bytes().decode()
    spec, warnings = slurm.parse_script(text, script_name=name, shims=SHIMS, submit_dir=SUBMIT_DIR)
    fields, fragments = EXPECTED[name]
    env = {k: v for k, v in spec["env"].items() if not k.startswith("SLURM_")}
    got = {k: v for k, v in spec.items() if k not in ("command", "env")}
    if env:
        got["env"] = env
    assert got == fields
    # Every warning is expected, in the script's order; and no other.
    assert len(warnings) == len(fragments), warnings
    for warning, fragment in zip(warnings, fragments, strict=True):
        assert warning.startswith(fragment) or fragment in warning, (warning, fragment)
    # The command carries the script as it is (DOS line ends aside) and the spec is a valid JobSpec.
    assert spec["command"][:2] == ["bash", "-c"]
    assert spec["command"][3] == name
    assert spec["command"][4] == text.replace("\r\n", "\n")
    assert spec["env"]["SLURM_SUBMIT_DIR"] == SUBMIT_DIR
    JobSpec.model_validate({k: v for k, v in spec.items() if k not in ("array", "depends_on")})
