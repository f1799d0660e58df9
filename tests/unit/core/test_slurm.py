"""Slurm batch scripts (``trainyard.model.slurm``): every directive and time format, table-driven;
the option forms sbatch accepts; where directives stop; and the job's command run for real in a
shell, with the TRAINYARD_* variables the platform sets, for the SLURM_* ones, srun and module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import trainyard
from trainyard.model import slurm
from trainyard.model.spec import JobSpec

SHIM_DIR = Path(trainyard.__file__).resolve().parent / "shims"
SHIMS = {name: (SHIM_DIR / name).read_text() for name in ("srun", "scontrol")}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def directives(*lines: str, options: tuple[str, ...] = (), **kw: Any) -> slurm.SbatchResult:
    text = "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines) + "echo hi\n"
    return slurm.parse_directives(text, script_name="job.sh", options=options, **kw)


def fields(*lines: str, **kw: Any) -> dict[str, Any]:
    """The spec without the SLURM_* bookkeeping in env (tested on its own)."""
    spec = dict(directives(*lines, **kw).spec)
    env = {k: v for k, v in spec.pop("env").items() if not k.startswith("SLURM_")}
    if env:
        spec["env"] = env
    return spec


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 600.0),  # MM
        ("90", 5400.0),  # MM, over an hour
        ("10:30", 630.0),  # MM:SS
        ("1:00:00", 3600.0),  # HH:MM:SS
        ("02:03:04", 7384.0),
        ("1-0", 86400.0),  # D-HH
        ("0-12", 43200.0),
        ("0-12:30", 45000.0),  # D-HH:MM
        ("0-01:02:03", 3723.0),  # D-HH:MM:SS
        ("2-00:00:00", 172800.0),
        (" 5 ", 300.0),
        ("0", None),  # no limit
        ("-1", None),
        ("UNLIMITED", None),
        ("infinite", None),
    ],
)
def test_every_slurm_time_format(text: str, seconds: float | None) -> None:
    assert slurm.parse_time(text) == seconds


@pytest.mark.parametrize("text", ["", "1h", "1:2:3:4", "a-10", "1-", "-5", "1:xx", "1.5", "1-2-3"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="Slurm time"):
        slurm.parse_time(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4000", 4000 * 1024**2),  # no unit: megabytes, as Slurm means them (MiB)
        ("4G", 4 * 1024**3),
        ("4g", 4 * 1024**3),
        ("4GB", 4 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1T", 1024**4),
        ("2048K", 2 * 1024**2),
        ("1.5G", 3 * 1024**3 // 2),
        ("0", 0),
    ],
)
def test_memory_units_are_slurm_units(text: str, size: int) -> None:
    assert slurm.parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "G", "4Gi", "-1", "four"])
def test_bad_memory_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        slurm.parse_memory(text)


# -- each directive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        # name and resources
        (["-J resnet"], {"name": "resnet"}),
        (["--job-name=resnet50-cifar"], {"name": "resnet50-cifar"}),
        (["--job-name my.job_1"], {"name": "my.job_1"}),
        (["-c 4"], {"resources": {"cpu": 4}}),
        (["-c4"], {"resources": {"cpu": 4}}),
        (["--cpus-per-task=8"], {"resources": {"cpu": 8}}),
        (["--cpus-per-task 8"], {"resources": {"cpu": 8}}),
        (["--mem=16G"], {"resources": {"memory": "16Gi"}}),
        (["--mem=4000"], {"resources": {"memory": "4000Mi"}}),
        (["--mem 500M"], {"resources": {"memory": "500Mi"}}),
        (["-c 4", "--mem-per-cpu=2G"], {"resources": {"cpu": 4, "memory": "8Gi"}}),
        (["--mem-per-cpu=2G"], {"resources": {"memory": "2Gi"}}),
        (["--gres=gpu:2"], {"resources": {"gpu": 2}}),
        (["--gres=gpu:a100:4"], {"resources": {"gpu": 4, "gpu_type": "a100"}}),
        (["--gres=gpu:A100:4"], {"resources": {"gpu": 4, "gpu_type": "a100"}}),
        (["--gres=gpu"], {"resources": {"gpu": 1}}),
        (["--gres=gpu:v100"], {"resources": {"gpu": 1, "gpu_type": "v100"}}),
        (["--gpus=2"], {"resources": {"gpu": 2}}),
        (["-G h100:2"], {"resources": {"gpu": 2, "gpu_type": "h100"}}),
        (["--gpus-per-node=a100:8"], {"resources": {"gpu": 8, "gpu_type": "a100"}}),
        (["--gpus-per-task=1", "--ntasks-per-node=4"], {"resources": {"cpu": 4, "gpu": 4}}),
        (["--gpus=2", "--mem-per-gpu=40G"], {"resources": {"gpu": 2, "memory": "80Gi"}}),
        (["--gpus=2", "--cpus-per-gpu=6"], {"resources": {"cpu": 12, "gpu": 2}}),
        # nodes and tasks: a gang of N, resources per node
        (["-N 2"], {"replicas": 2}),
        (["--nodes=4", "--gres=gpu:8"], {"replicas": 4, "resources": {"gpu": 8}}),
        (["-N 2", "--gpus=4"], {"replicas": 2, "resources": {"gpu": 2}}),
        (["-n 4"], {"resources": {"cpu": 4}}),
        (["--ntasks=8", "-N 2", "-c 2"], {"replicas": 2, "resources": {"cpu": 8}}),
        (["--ntasks=8", "--ntasks-per-node=4"], {"replicas": 2, "resources": {"cpu": 4}}),
        (["--ntasks-per-node=2", "-c 3"], {"resources": {"cpu": 6}}),
        # time
        (["-t 30"], {"max_runtime": "30m"}),
        (["--time=1:30:00"], {"max_runtime": "1h30m"}),
        (["--time 0-06"], {"max_runtime": "6h"}),
        (["-t 12:30"], {"max_runtime": "12m30s"}),
        (["-t 2-00:00:00"], {"max_runtime": "24h"}),  # over the limit: 24h, with a warning
        (["-t UNLIMITED"], {"max_runtime": "24h"}),
        # placement and priority
        (["-p gpu"], {"pool": "gpu"}),
        (["--partition=A100"], {"pool": "a100"}),
        (["--partition=gpu,cpu"], {"pool": "gpu"}),
        (["--qos=high"], {"priority": "high"}),
        (["-q scavenger"], {"priority": "low"}),
        (["--qos=Urgent"], {"priority": "urgent"}),
        # workflow
        (["--array=0-199%16"], {"array": {"indices": "0-199", "parallelism": 16}}),
        (["-a 1,3,5-7"], {"array": {"indices": "1,3,5-7"}}),
        (["--array=0-15:4"], {"array": {"indices": "0-15:4"}}),
        (
            ["--dependency=afterok:11:12"],
            {
                "depends_on": [
                    {"job": "11", "condition": "succeeded"},
                    {"job": "12", "condition": "succeeded"},
                ]
            },
        ),
        (
            ["-d afterany:j01a,afternotok:j01b"],
            {
                "depends_on": [
                    {"job": "j01a", "condition": "finished"},
                    {"job": "j01b", "condition": "failed"},
                ]
            },
        ),
        (["--requeue"], {"retry": {"max_attempts": slurm.REQUEUE_ATTEMPTS, "on": ["infra"]}}),
        (["--no-requeue"], {"retry": {"max_attempts": 1, "on": ["infra"]}}),
        # working directory
        (["-D /scratch/alice/run1"], {"cwd": "/scratch/alice/run1"}),
        (["--chdir=/scratch/alice/run1/"], {"cwd": "/scratch/alice/run1/"}),
        # environment
        (["--export=ALL,WANDB_MODE=offline"], {"env": {"WANDB_MODE": "offline"}}),
    ],
)
def test_each_directive(lines: list[str], expected: dict[str, Any]) -> None:
    assert fields(*lines) == {"name": "job.sh", **expected}


@pytest.mark.parametrize(
    ("lines", "warning"),
    [
        (["--mail-type=END"], "Trainyard sends no mail"),
        (["--mail-user=a@b.c"], "Trainyard sends no mail"),
        (["-A myproject"], "charged to your team"),
        (["--account=myproject"], "charged to your team"),
        (["--exclusive"], "only those"),
        (["--constraint=ib"], "scheduler places jobs"),
        (["--signal=B:USR1@60"], "SIGTERM"),
        (["--bogus=1"], "unknown option --bogus=1"),
        (["-Z"], "unknown option -Z"),
        (["-o logs/%x-%j.out"], "kept in its log"),
        (["--error=logs/%A_%a.err"], "kept in its log"),
        (["-t 2-00:00:00"], "over Trainyard's limit of 24h"),
        (["-t 0"], "no limit"),
        (["-N 2"], "gang of 2 replicas"),
        (["-N 2-4"], "range of node counts"),
        (["--qos=gold"], "not in the QOS table"),
        (["--partition=gpu,cpu"], "one pool"),
        (["--partition=GPU!"], "cannot be a pool name"),
        (["-c four"], "--cpus-per-task=four is ignored"),
        (["--mem=0"], "all of a node's"),
        (["--mem=lots"], "not a Slurm size"),
        (["--gres=gpu:2,lscratch:10"], "lscratch:10"),
        (["--array=9-1"], "run upwards"),
        (["--array=0-9%0"], "at least 1"),
        (["--dependency=after:5"], "'after' is not supported"),
        (["--dependency=singleton"], "'singleton' is not supported"),
        (["--dependency=afterok:1?afterok:2"], "any one of"),
        (["--job-name=my job"], "'job' is not an option"),
        (["--job-name=résumé"], "is used as 'r-sum'"),
        (["--requeue=yes"], "takes no value"),
        (["--time"], "needs a value"),
        (["--export=NONE"], "NONE is not applied"),
        (["--export=TRAINYARD_X=1"], "not a variable a job may be given"),
        (["--chdir=/etc/x"], "system directory"),
        (["--cpus-per-gpu=4"], "without GPUs"),
        (["--mem-per-gpu=4G"], "without GPUs"),
        (["-t 10 'unclosed"], "read as plain words"),
    ],
)
def test_what_cannot_be_applied_is_a_warning_never_an_error(lines: list[str], warning: str) -> None:
    result = directives(*lines)
    assert any(warning in w for w in result.warnings), result.warnings
    assert all(w.startswith("line ") for w in result.warnings), result.warnings
    planned = ("array", "depends_on")  # not JobSpec fields yet
    JobSpec.model_validate({k: v for k, v in result.spec.items() if k not in planned} | {"command": ["true"]})


def test_warnings_name_their_lines_in_order() -> None:
    text = "#!/bin/bash\n#SBATCH --bogus\n#SBATCH -J ok\n#SBATCH --mail-type=ALL\n"
    assert [w.split(":")[0] for w in slurm.parse_directives(text).warnings] == ["line 2", "line 4"]


# -- forms and boundaries ------------------------------------------------------------------------


def test_option_forms_sbatch_accepts() -> None:
    forms = [
        ["--cpus-per-task=4"],
        ["--cpus-per-task 4"],
        ["-c4"],
        ["-c 4"],
        ["-c=4"],
        ["--cpus-per-t=4"],  # getopt_long's unambiguous prefix
    ]
    for lines in forms:
        assert fields(*lines)["resources"] == {"cpu": 4}, lines
    # Several options on one line, a comment after them.
    assert fields("-N 2 -c 3 --mem=1G  # two nodes")["resources"] == {"cpu": 3, "memory": "1Gi"}
    # An ambiguous prefix is not guessed.
    assert any("unknown option --cpus-per=4" in w for w in directives("--cpus-per=4").warnings)
    # Quoted values keep their spaces (and then warn if they cannot be used).
    assert fields('--export="MSG=hello world"') == {"name": "job.sh", "env": {"MSG": "hello world"}}


def test_the_last_directive_wins_and_the_command_line_beats_them_all() -> None:
    r = directives("-t 10", "-c 2", "--time=20", "-p cpu", options=("-t", "1:00:00", "--partition=gpu"))
    assert r.spec["max_runtime"] == "1h"
    assert r.spec["pool"] == "gpu"
    assert r.spec["resources"] == {"cpu": 2}
    # GPUs: whichever option gave them last.
    assert fields("--gres=gpu:4", "--gpus-per-node=a100:2")["resources"] == {"gpu": 2, "gpu_type": "a100"}
    r = directives("--gres=gpu:4", options=("--gpus-per-node", "h100:1"))
    assert r.spec["resources"] == {"gpu": 1, "gpu_type": "h100"}


def test_command_line_warnings_say_so() -> None:
    r = directives(options=("--mail-type=ALL",))
    assert r.warnings == [
        "command line: --mail-type=ALL is ignored: Trainyard sends no mail (`yard logs -f ID` follows a job)"
    ]


def test_disabled_lines_comments_and_the_first_command() -> None:
    text = "\n".join(
        [
            "#!/bin/bash",
            "",
            "# resources -----------------",
            "#SBATCH -J real",
            "##SBATCH -J disabled",
            "#  SBATCH -J not-a-directive",
            "# SBATCH -J also-not",
            "#SBATCH -c 2",
            "",
            "#sbatch -c 9",  # sbatch's magic word is upper case
            "   #SBATCH -c 7",  # not at the line's start: not a directive
            "#SBATCH --mem=1G",
            "set -e",
            "#SBATCH -t 5",  # after the first command: ignored, with a note
            "python train.py",
        ]
    )
    r = slurm.parse_directives(text)
    assert r.spec["name"] == "real"
    assert r.spec["resources"] == {"cpu": 2}  # the indented line was the first command
    assert "max_runtime" not in r.spec
    assert r.warnings == [
        "line 12: #SBATCH after the script's first command is ignored (as by sbatch)",
        "line 14: #SBATCH after the script's first command is ignored (as by sbatch)",
    ]


def test_defaults_and_env_bookkeeping() -> None:
    r = slurm.parse_directives("#!/bin/bash\necho hi\n", script_name="dir/train job.sh")
    assert r.spec == {"name": "train-job.sh", "env": {"SLURM_NTASKS_PER_NODE": "1"}}
    assert r.warnings == []
    r = directives("-c 4", "--ntasks-per-node=2", "-p gpu", "--array=0-9", submit_dir="/home/a/p")
    assert r.spec["env"] == {
        "SLURM_ARRAY_TASK_COUNT": "10",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_MAX": "9",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_CPUS_PER_TASK": "4",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_SUBMIT_DIR": "/home/a/p",
    }


def test_relative_chdir_is_in_the_submit_directory() -> None:
    assert directives("-D out/run1", submit_dir="/home/a/proj").spec["cwd"] == "/home/a/proj/out/run1"
    assert directives("-D ../other", submit_dir="/home/a/proj").spec["cwd"] == "/home/a/other"
    # Without one (a --workdir bundle), relative to the job's own directory.
    assert directives("-D out").spec["cwd"] == "out"


def test_export_takes_named_variables_from_the_submitting_shell() -> None:
    r = directives("--export=ALL,HF_HOME,SEED=1,MISSING", environ={"HF_HOME": "/data/hf"})
    assert r.spec["env"]["HF_HOME"] == "/data/hf"
    assert r.spec["env"]["SEED"] == "1"
    assert any("MISSING is not set here" in w for w in r.warnings)


def test_qos_table_is_a_parameter() -> None:
    table = {"gold": "urgent", "bronze": "low"}
    assert directives("--qos=gold", qos_table=table).spec["priority"] == "urgent"
    r = directives("--qos=high", qos_table=table)
    assert "priority" not in r.spec
    assert "not in the QOS table (bronze, gold)" in r.warnings[0]


def test_arrays_and_dependencies_parse_every_form() -> None:
    assert slurm.array_task_ids("1,3,5-7,10-20:5") == [1, 3, 5, 6, 7, 10, 15, 20]
    assert slurm.parse_array("0-9999%100") == {"indices": "0-9999", "parallelism": 100}
    with pytest.raises(ValueError, match="at most"):
        slurm.parse_array(f"0-{slurm.MAX_ARRAY_TASKS}")
    deps, notes = slurm.parse_dependency("afterok:1+5:2,afterany:3")
    assert deps == [
        {"job": "1", "condition": "succeeded"},
        {"job": "2", "condition": "succeeded"},
        {"job": "3", "condition": "finished"},
    ]
    assert notes == ["--dependency 'afterok:1+5:2': the delay (1+5) is ignored"]


@pytest.mark.parametrize(
    ("token", "arity"),
    [
        ("-p", 1),
        ("-pgpu", 0),
        ("--partition", 1),
        ("--partition=gpu", 0),
        ("--part", 1),
        ("--requeue", 0),
        ("--exclusive", 0),
        ("-H", 0),
        ("--nonsense", None),
        ("-Z", None),
        ("train.sh", None),
    ],
)
def test_option_arity_finds_where_the_script_is(token: str, arity: int | None) -> None:
    assert slurm.option_arity(token) == arity


def test_sync_env_follows_a_cpu_override() -> None:
    spec = {"resources": {"cpu": 8}, "env": {"SLURM_CPUS_PER_TASK": "2", "SLURM_NTASKS_PER_NODE": "2"}}
    assert slurm.sync_env(spec)["env"]["SLURM_CPUS_PER_TASK"] == "4"
    spec = {"resources": {"cpu": 3}, "env": {"SLURM_CPUS_PER_TASK": "2", "SLURM_NTASKS_PER_NODE": "2"}}
    assert slurm.sync_env(spec)["env"]["SLURM_CPUS_PER_TASK"] == "2"  # 1.5 per task: left as it was


def test_overlay_merges_sections() -> None:
    base = {"name": "a", "env": {"A": "1"}, "resources": {"cpu": 2, "memory": "1Gi"}, "team": "t"}
    over = {"name": "b", "env": {"B": "2"}, "resources": {"cpu": 4}}
    assert slurm.overlay(base, over) == {
        "name": "b",
        "env": {"A": "1", "B": "2"},
        "resources": {"cpu": 4, "memory": "1Gi"},
        "team": "t",
    }


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "run", "notes"),
    [
        ("#!/bin/bash", ["bash"], 0),
        ("#!/bin/sh", ["bash"], 0),
        ("#!/usr/bin/env bash", ["bash"], 0),
        ("#!/bin/bash -l", ["bash"], 1),
        ("#!/bin/bash -le", ["bash", "-e"], 1),
        ("#!/bin/bash -ex", ["bash", "-ex"], 0),
        ("#!/usr/bin/env python3", [], 0),
        ("#!/usr/bin/env -S python3 -u", [], 0),
        ("echo no shebang", ["bash"], 1),
    ],
)
def test_shebang(first: str, run: list[str], notes: int) -> None:
    got, why = slurm.shebang(first + "\necho hi\n")
    assert got == run
    assert len(why) == notes


def test_script_size_and_content_limits() -> None:
    assert slurm.script_problem("#!/bin/bash\n" + "x" * 1000) is None
    assert "at most 100 KiB" in (slurm.script_problem("#" * (slurm.MAX_SCRIPT_BYTES + 1)) or "")
    assert "NUL" in (slurm.script_problem("a\x00b") or "")
    # A script at the limit still makes a command the JobSpec takes.
    big = "#!/bin/bash\n" + "# filler\n" * ((slurm.MAX_SCRIPT_BYTES - 20) // 9)
    assert slurm.script_problem(big) is None
    spec = slurm.parse_script(big, shims=SHIMS).spec
    JobSpec.model_validate(spec)


def test_dos_line_ends_become_unix_ones() -> None:
    r = slurm.parse_script("#!/bin/bash\r\n#SBATCH -c 2\r\necho hi\r\n", shims=SHIMS)
    assert r.spec["resources"] == {"cpu": 2}
    assert "\r" not in r.spec["command"][4]
    assert r.warnings[0].startswith("the script has DOS line ends")


def run_job(
    text: str,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    tmp: Path,
) -> subprocess.CompletedProcess[str]:
    """The job's command as a worker runs it: the spec's env plus what the platform sets at lease."""
    spec = slurm.parse_script(text, script_name="job.sh", args=args, options=options, shims=SHIMS).spec
    JobSpec.model_validate(spec)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TRAINYARD_"))}
    full = {
        **base,
        **spec["env"],
        "TMPDIR": str(tmp),
        "TRAINYARD_JOB_ID": "j01job",
        "TRAINYARD_JOB_NAME": spec["name"],
        "TRAINYARD_ATTEMPT": "1",
        "TRAINYARD_RANK": "0",
        "TRAINYARD_WORLD_SIZE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        **(env or {}),
    }
    return subprocess.run(spec["command"], env=full, cwd=tmp, capture_output=True, text=True, timeout=60)


SHOW = """
echo "SLURM_JOB_ID=$SLURM_JOB_ID"
echo "SLURM_JOB_NAME=$SLURM_JOB_NAME"
echo "SLURM_NTASKS=$SLURM_NTASKS"
echo "SLURM_PROCID=$SLURM_PROCID"
echo "SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-unset}"
echo "SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID:-unset}"
echo "SLURM_ARRAY_JOB_ID=${SLURM_ARRAY_JOB_ID:-unset}"
echo "SLURM_NNODES=$SLURM_NNODES SLURM_NODEID=$SLURM_NODEID"
echo "SLURM_RESTART_COUNT=$SLURM_RESTART_COUNT"
echo "SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE:-unset}"
echo "SLURM_SUBMIT_DIR=$SLURM_SUBMIT_DIR"
"""


def lines_of(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line and " " not in line)


def test_slurm_variables_in_a_plain_job(tmp_path: Path) -> None:
    p = run_job("#!/bin/bash\n#SBATCH -J envs\n#SBATCH -c 3\n" + SHOW, tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    got = lines_of(p.stdout)
    assert got == {
        "SLURM_JOB_ID": "j01job",
        "SLURM_JOB_NAME": "envs",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_CPUS_PER_TASK": "3",
        "SLURM_ARRAY_TASK_ID": "unset",
        "SLURM_ARRAY_JOB_ID": "unset",
        "SLURM_RESTART_COUNT": "0",
        "SLURM_GPUS_ON_NODE": "unset",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    assert "SLURM_NNODES=1 SLURM_NODEID=0" in p.stdout


def test_slurm_variables_in_an_array_task_of_a_gang_with_gpus(tmp_path: Path) -> None:
    p = run_job(
        "#!/bin/bash\n#SBATCH -N 2\n#SBATCH --ntasks-per-node=4\n" + SHOW,
        tmp=tmp_path,
        env={
            "TRAINYARD_JOB_ID": "j01job-1",
            "TRAINYARD_GANG_ID": "j01job",
            "TRAINYARD_RANK": "1",
            "TRAINYARD_WORLD_SIZE": "2",
            "TRAINYARD_ARRAY_INDEX": "7",
            "TRAINYARD_ATTEMPT": "3",
            "CUDA_VISIBLE_DEVICES": "4,5,6",
        },
    )
    assert p.returncode == 0, p.stderr
    got = lines_of(p.stdout)
    assert got["SLURM_JOB_ID"] == "j01job"  # every node sees the gang's id, as with Slurm
    assert got["SLURM_NTASKS"] == "8"
    assert got["SLURM_PROCID"] == "4"  # the first task of node 1
    assert got["SLURM_ARRAY_TASK_ID"] == "7"
    assert got["SLURM_ARRAY_JOB_ID"] == "j01job"
    assert got["SLURM_RESTART_COUNT"] == "2"
    assert got["SLURM_GPUS_ON_NODE"] == "3"
    assert "SLURM_NNODES=2 SLURM_NODEID=1" in p.stdout


def test_srun_runs_its_command_once_per_task(tmp_path: Path) -> None:
    script = """#!/bin/bash
#SBATCH --ntasks-per-node=3
srun python_is_not_needed_here 2>/dev/null || echo "missing command fails: $?"
srun -l --mpi=pmix --cpu-bind cores bash -c 'echo "task $SLURM_PROCID/$SLURM_LOCALID"' | sort
srun -n 1 -c4 --exclusive echo "one task"
srun --ntasks 2 -- echo two
srun -n1 -D sub pwd
srun bash -c 'exit $((SLURM_PROCID == 1 ? 5 : 0))'; echo "srun exit $?"
"""
    (tmp_path / "sub").mkdir()
    p = run_job(script, tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "missing command fails: 127",
        "task 0/0",
        "task 1/1",
        "task 2/2",
        "one task",
        "two",
        "two",
        str(tmp_path / "sub"),
        "srun exit 5",
    ]


def test_srun_on_a_gang_node_runs_its_share_of_the_tasks(tmp_path: Path) -> None:
    script = "#!/bin/bash\n#SBATCH -N 3\nsrun -n 4 bash -c 'echo task $SLURM_PROCID'\n"
    shares = []
    for rank in range(3):
        p = run_job(script, tmp=tmp_path, env={"TRAINYARD_RANK": str(rank), "TRAINYARD_WORLD_SIZE": "3"})
        assert p.returncode == 0, p.stderr
        shares.append(sorted(p.stdout.split("\n")[:-1]))
    assert shares == [["task 0", "task 1"], ["task 2"], ["task 3"]]


def test_module_is_a_note_and_the_script_goes_on(tmp_path: Path) -> None:
    script = "#!/bin/bash\nset -e\nmodule purge\nmodule load cuda/12.1 cudnn\nml gcc\necho after modules\n"
    p = run_job(script, tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "after modules\n"
    assert "'module load cuda/12.1 cudnn' skipped" in p.stderr
    assert "'module gcc' skipped" in p.stderr


def test_the_script_gets_its_arguments_and_its_shebang_flags(tmp_path: Path) -> None:
    script = '#!/bin/bash -e\necho "$# args: $1|$2"\nfalse\necho not reached\n'
    p = run_job(script, tmp=tmp_path, args=("a b", "c"))
    assert p.returncode == 1
    assert p.stdout == "2 args: a b|c\n"


def test_a_python_script_runs_under_its_own_interpreter(tmp_path: Path) -> None:
    script = (
        f"#!{sys.executable}\n#SBATCH -c 2\nimport os\nprint('python', os.environ['SLURM_CPUS_PER_TASK'])\n"
    )
    p = run_job(script, tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "python 2\n"


def test_exit_status_and_signals_are_the_scripts_own(tmp_path: Path) -> None:
    p = run_job("#!/bin/bash\nexit 3\n", tmp=tmp_path)
    assert p.returncode == 3
    p = run_job("#!/bin/bash\nkill -TERM $$\n", tmp=tmp_path)
    assert p.returncode == -15  # exec'd: the job's process is the script's own shell


def test_the_script_text_is_run_as_it_was_submitted(tmp_path: Path) -> None:
    tricky = "#!/bin/bash\ncat <<'EOF'\nquotes ' \" $HOME `x` \\n %s\nEOF\nprintf 'no newline at the end'"
    p = run_job(tricky, tmp=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "quotes ' \" $HOME `x` \\n %s\nno newline at the end"


def test_scontrol_show_hostnames_gives_the_rendezvous_host(tmp_path: Path) -> None:
    script = """#!/bin/bash
#SBATCH -N 2
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "master=$MASTER_ADDR"
scontrol show hostnames a,b
scontrol show job "$SLURM_JOB_ID" || echo "scontrol show job: $?"
"""
    gang = {"TRAINYARD_RANK": "1", "TRAINYARD_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.5"}
    p = run_job(script, tmp=tmp_path, env=gang)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["master=10.0.0.5", "a", "b", "scontrol show job: 1"]
    assert "only 'scontrol show hostnames' is" in p.stderr
    # One node: this one.
    p = run_job("#!/bin/bash\nscontrol show hostnames\n", tmp=tmp_path, env={"HOSTNAME": "node7"})
    assert p.stdout.strip() in ("node7", os.uname().nodename)
