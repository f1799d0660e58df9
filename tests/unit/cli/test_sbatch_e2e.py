"""A Slurm batch script end to end: `yard sbatch` submits it to a real control plane, a real agent
runs it (in its sandbox where the node has one), and the job's log shows the SLURM_* variables,
srun running its command once per task, and `module load` passing with a note."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness import ControlPlane, platform, shared_dir, wait_status
from trainyard.cli.main import State, app

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

SCRIPT = """#!/bin/bash
# An end-to-end check of a Slurm script run by Trainyard.
#SBATCH --job-name=slurm-e2e
#SBATCH --cpus-per-task=1
#SBATCH --mem=128M
##SBATCH --gres=gpu:8
#SBATCH --time=00:05:00
#SBATCH --mail-type=END

set -e
module load cuda/12.1
echo "SLURM_JOB_ID=$SLURM_JOB_ID"
echo "SLURM_JOB_NAME=$SLURM_JOB_NAME"
echo "SLURM_NTASKS=$SLURM_NTASKS"
echo "SLURM_PROCID=$SLURM_PROCID"
echo "SLURM_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK"
echo "SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID:-none}"
echo "SLURM_SUBMIT_DIR=$SLURM_SUBMIT_DIR"
echo "args=$*"
srun -n 2 --cpu-bind=cores bash -c 'echo "srun task $SLURM_PROCID of $SLURM_STEP_NUM_TASKS"' | sort
srun --mpi=pmix -l echo "srun ran its command"
echo done > result.txt
"""


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    with platform(tmp_path, agents=1) as (cp, _):
        yield cp


def test_a_slurm_script_runs_with_its_environment_and_srun(
    cp: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = shared_dir(tmp_path / "submit-dir")
    monkeypatch.chdir(work)
    (work / "train.sh").write_text(SCRIPT)
    state = State(url=cp.url, token=cp.token, reconnect_delay=0, poll_interval=0.05)
    res = CliRunner().invoke(app, ["sbatch", "--parsable", "train.sh", "first", "second"], obj=state)
    assert res.exit_code == 0, res.stderr
    job_id = res.stdout.strip()
    assert "--mail-type=END is ignored" in res.stderr
    with cp.client() as c:
        done = wait_status(c, job_id, {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}, 60)
        log = c.get(f"/v1/jobs/{job_id}/logs").text
        assert done["status"] == "SUCCEEDED", (done, log)
    lines = log.splitlines()
    for expected in (
        f"SLURM_JOB_ID={job_id}",
        "SLURM_JOB_NAME=slurm-e2e",
        "SLURM_NTASKS=1",
        "SLURM_PROCID=0",
        "SLURM_CPUS_PER_TASK=1",
        "SLURM_ARRAY_TASK_ID=none",
        f"SLURM_SUBMIT_DIR={work}",
        "args=first second",
        "srun task 0 of 2",
        "srun task 1 of 2",
        "srun ran its command",
    ):
        assert expected in lines, (expected, log)
    assert "trainyard: 'module load cuda/12.1' skipped: this worker has no environment modules" in log
    # The job ran in the submit directory, as a Slurm job does.
    assert (work / "result.txt").read_text() == "done\n"


def test_the_job_page_shows_the_script(
    cp: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(shared_dir(tmp_path / "d"))
    state = State(url=cp.url, token=cp.token, reconnect_delay=0, poll_interval=0.05)
    res = CliRunner().invoke(app, ["sbatch", "--parsable", "--wrap", "echo wrapped"], obj=state)
    assert res.exit_code == 0, res.stderr
    with httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"}) as c:
        job = c.get(f"/v1/jobs/{res.stdout.strip()}").json()
        assert job["spec"]["command"][4] == "#!/bin/sh\necho wrapped\n"
        done = wait_status(c, job["id"], {"SUCCEEDED", "FAILED"}, 60)
        assert done["status"] == "SUCCEEDED"
        assert c.get(f"/v1/jobs/{job['id']}/logs").text == "wrapped\n"


ARRAY_SCRIPT = """#!/bin/bash
#SBATCH --job-name=sweep
#SBATCH --array=0-2%2
#SBATCH --mem=64M
echo "task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID ($SLURM_ARRAY_TASK_COUNT tasks) job $SLURM_JOB_ID"
"""


def test_an_array_script_runs_each_task_with_its_slurm_array_variables(
    cp: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(shared_dir(tmp_path / "sweep"))
    (tmp_path / "sweep" / "sweep.sh").write_text(ARRAY_SCRIPT)
    state = State(url=cp.url, token=cp.token, reconnect_delay=0, poll_interval=0.05)
    res = CliRunner().invoke(app, ["sbatch", "--parsable", "sweep.sh"], obj=state)
    assert res.exit_code == 0, res.stderr
    array = res.stdout.strip()
    with httpx.Client(base_url=cp.url, headers={"Authorization": f"Bearer {cp.token}"}) as c:
        done = wait_status(c, array, {"SUCCEEDED", "FAILED", "CANCELLED"}, 60)
        assert done["status"] == "SUCCEEDED" and done["array"]["parallelism"] == 2, done
        for i in range(3):
            log = c.get(f"/v1/jobs/{array}-{i}/logs").text
            assert log == f"task {i} of {array} (3 tasks) job {array}-{i}\n", log
