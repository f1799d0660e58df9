"""`yard sbatch SCRIPT` and `yard submit SCRIPT` through CliRunner against a scripted API: the dry
run, flags over directives, what is sent (arrays and dependencies included), and fields an older
control plane refuses named in a sentence rather than a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result
from yard_fake import FakeAPI, error, job

from trainyard.cli import sbatch as sbatch_cli
from trainyard.cli.main import State, app
from trainyard.client.sdk import Client, ValidationFailed

SCRIPT = """#!/bin/bash
# train a small model
#SBATCH --job-name=cifar
#SBATCH -c 2
#SBATCH --ntasks-per-node=2
#SBATCH --mem=4G
##SBATCH --gres=gpu:8
#SBATCH --time=0-01:30
#SBATCH --mail-type=END

module load cuda
srun python train.py
"""


def yard(state: State, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), obj=state, input=input)


@pytest.fixture
def accept(api: FakeAPI) -> FakeAPI:
    api.on("POST", "/v1/jobs", lambda r: httpx.Response(201, json=job("j-42", spec=json.loads(r.content))))
    return api


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.sh"
    path.write_text(SCRIPT)
    return path


def submitted(api: FakeAPI) -> dict[str, Any]:
    (req,) = api.calls("POST", "/v1/jobs")
    body: dict[str, Any] = json.loads(req.content)
    return body


def test_sbatch_dry_run_prints_the_jobspec_and_the_warnings(state: State, api: FakeAPI, script: Path) -> None:
    res = yard(state, "sbatch", "--dry-run", str(script))
    assert res.exit_code == 0, res.stderr
    spec = yaml.safe_load(res.stdout)
    assert spec["name"] == "cifar"
    assert spec["resources"] == {"cpu": 4, "memory": "4Gi"}
    assert spec["max_runtime"] == "1h30m"
    assert spec["cwd"] == os.getcwd()
    assert spec["env"]["SLURM_CPUS_PER_TASK"] == "2"
    assert spec["env"]["SLURM_SUBMIT_DIR"] == os.getcwd()
    assert spec["command"][:2] == ["bash", "-c"]
    assert spec["command"][3:] == ["train.sh", SCRIPT]
    assert "warning: line 9: --mail-type=END is ignored" in res.stderr
    assert not api.calls("POST", "/v1/jobs")  # nothing sent


def test_sbatch_options_override_the_directives(state: State, api: FakeAPI, script: Path) -> None:
    res = yard(
        state,
        "sbatch", "--dry-run", "--format", "json",
        "-J", "other", "-c4", "--time=20", "-p", "gpu", "--gres=gpu:a100:1", "--team", "vision",
        str(script), "--lr", "0.1",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    spec = json.loads(res.stdout)
    assert spec["name"] == "other"
    assert spec["resources"] == {"cpu": 8, "memory": "4Gi", "gpu": 1, "gpu_type": "a100"}
    assert spec["max_runtime"] == "20m"
    assert (spec["pool"], spec["team"]) == ("gpu", "vision")
    assert spec["command"][-2:] == ["--lr", "0.1"]  # the script's own arguments


def test_sbatch_submits_and_prints_what_sbatch_prints(state: State, accept: FakeAPI, script: Path) -> None:
    res = yard(state, "sbatch", str(script))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "Submitted batch job j-42\n"
    body = submitted(accept)
    assert body["name"] == "cifar"
    assert body["command"][4] == SCRIPT
    assert "warning: line 9" in res.stderr
    res = yard(state, "sbatch", "--parsable", str(script))
    assert res.stdout == "j-42\n"


def test_submit_reads_a_script_and_its_flags_win(state: State, accept: FakeAPI, script: Path) -> None:
    res = yard(state, "submit", "--cpu", "6", "--max-runtime", "2h", "--env", "A=1", str(script))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "j-42\n"
    body = submitted(accept)
    assert body["resources"] == {"cpu": 6.0, "memory": "4Gi"}
    assert body["max_runtime"] == "2h"
    assert body["env"]["A"] == "1"
    assert body["env"]["SLURM_CPUS_PER_TASK"] == "3"  # 6 CPUs over 2 tasks
    assert body["command"][3:] == ["train.sh", SCRIPT]


def test_submit_dry_run(state: State, api: FakeAPI, script: Path, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("team: vision\nenv: {FROM_FILE: '1'}\nname: from-file\n")
    res = yard(state, "submit", "--dry-run", "-o", "json", "-f", str(tmp_path / "job.yaml"), str(script))
    assert res.exit_code == 0, res.stderr
    spec = json.loads(res.stdout)
    assert spec["team"] == "vision"
    assert spec["name"] == "cifar"  # the directive over the file
    assert spec["env"]["FROM_FILE"] == "1"
    # A plain command's dry run too.
    res = yard(state, "submit", "--dry-run", "--", "python", "train.py")
    assert res.exit_code == 0, res.stderr
    assert yaml.safe_load(res.stdout)["command"] == ["python", "train.py"]
    assert not api.calls("POST", "/v1/jobs")


def test_which_files_submit_reads_as_batch_scripts(tmp_path: Path) -> None:
    directives = tmp_path / "a.sh"
    directives.write_text("#!/bin/bash\n#SBATCH -c 2\necho\n")
    directives.chmod(0o755)
    runnable = tmp_path / "run.sh"
    runnable.write_text("#!/bin/bash\necho plain\n")
    runnable.chmod(0o755)
    not_runnable = tmp_path / "b.sh"
    not_runnable.write_text("#!/bin/bash\necho plain\n")
    not_runnable.chmod(0o644)
    data = tmp_path / "data.txt"
    data.write_text("hello\n")
    assert sbatch_cli.batch_script_arg([str(directives)]) == directives
    assert sbatch_cli.batch_script_arg([str(not_runnable)]) == not_runnable
    assert sbatch_cli.batch_script_arg([str(runnable)]) is None  # runs as it always did
    assert sbatch_cli.batch_script_arg([str(data)]) is None
    assert sbatch_cli.batch_script_arg([str(directives), "arg"]) is None
    assert sbatch_cli.batch_script_arg([str(tmp_path / "missing.sh")]) is None
    assert sbatch_cli.batch_script_arg(["python"]) is None


def test_an_executable_script_without_directives_stays_a_command(
    state: State, accept: FakeAPI, tmp_path: Path
) -> None:
    runnable = tmp_path / "run.sh"
    runnable.write_text("#!/bin/bash\necho plain\n")
    runnable.chmod(0o755)
    res = yard(state, "submit", "./run.sh")
    assert res.exit_code == 0, res.stderr
    assert submitted(accept)["command"] == ["./run.sh"]


def test_arrays_and_dependencies_of_a_script_are_sent(state: State, accept: FakeAPI, tmp_path: Path) -> None:
    path = tmp_path / "sweep.sh"
    path.write_text("#!/bin/bash\n#SBATCH --array=0-9%2\n#SBATCH --dependency=afterok:j01x\necho\n")
    res = yard(state, "sbatch", "--dry-run", str(path))
    assert res.exit_code == 0, res.stderr
    assert yaml.safe_load(res.stdout)["array"] == {"indices": "0-9", "parallelism": 2}
    assert "not supported" not in res.stderr
    for cmd in ("sbatch", "submit"):
        res = yard(state, cmd, str(path))
        assert res.exit_code == 0, res.stderr
        body = json.loads(accept.calls("POST", "/v1/jobs")[-1].content)
        assert body["array"] == {"indices": "0-9", "parallelism": 2}
        assert body["depends_on"] == [{"job": "j01x", "condition": "succeeded"}]
        assert body["env"]["SLURM_ARRAY_TASK_COUNT"] == "10"


def test_a_control_plane_that_refuses_the_planned_fields_is_named(api: FakeAPI) -> None:
    details = [{"field": "array", "message": "Extra inputs are not permitted"}]
    api.on("POST", "/v1/jobs", error(422, "invalid_spec", "invalid JobSpec", details))
    client = Client(url="http://trainyard.test", token="t", transport=httpx.MockTransport(api))
    with pytest.raises(ValidationFailed, match=r"job arrays .* not supported by this control plane yet"):
        sbatch_cli.send(client, {"command": ["x"], "array": {"indices": "0-1"}}, None)
    # Any other refusal is passed on as it is.
    with pytest.raises(ValidationFailed, match="invalid JobSpec"):
        sbatch_cli.send(client, {"command": ["x"]}, None)


def test_sbatch_reads_standard_input_and_wrap(state: State, api: FakeAPI) -> None:
    res = yard(state, "sbatch", "--dry-run", "-c", "3", input="#!/bin/bash\n#SBATCH -J from-stdin\necho hi\n")
    assert res.exit_code == 0, res.stderr
    spec = yaml.safe_load(res.stdout)
    assert (spec["name"], spec["resources"]) == ("from-stdin", {"cpu": 3})
    res = yard(state, "sbatch", "--dry-run", "-J", "wrapped", "--wrap", "python train.py --lr 0.1")
    assert res.exit_code == 0, res.stderr
    spec = yaml.safe_load(res.stdout)
    assert spec["name"] == "wrapped"
    assert spec["command"][4] == "#!/bin/sh\npython train.py --lr 0.1\n"


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["sbatch", "missing.sh"], "error: cannot read missing.sh"),
        (None, ["sbatch"], "error: no script"),
        ("big", ["sbatch", "big.sh"], "at most 100 KiB travels with a job"),
        ("binary", ["sbatch", "bin.sh"], "is not a UTF-8 text file"),
        (None, ["sbatch", "--format", "xml", "x.sh"], "--format must be json or yaml"),
        (None, ["sbatch", "--team"], "--team needs a value"),
    ],
)
def test_sbatch_errors_are_sentences(
    state: State, api: FakeAPI, tmp_path: Path, setup: str | None, args: list[str], message: str
) -> None:
    if setup == "big":
        (tmp_path / "big.sh").write_text("#!/bin/bash\n" + "# x\n" * 30_000)
    if setup == "binary":
        (tmp_path / "bin.sh").write_bytes(b"#!/bin/bash\n\xff\xfe\n")
    res = yard(state, *args, input="")
    assert res.exit_code == 1
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_help_lists_sbatch_after_submit(state: State) -> None:
    res = yard(state, "--help")
    assert res.exit_code == 0
    assert res.stdout.index("submit") < res.stdout.index("sbatch")
    res = yard(state, "sbatch", "--help")
    assert res.exit_code == 0
    assert "Submit a Slurm batch script as it is" in res.stdout
