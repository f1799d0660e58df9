"""`yard sbatch SCRIPT`: a Slurm batch script as a job, its ``#SBATCH`` directives read as sbatch
reads them (also `yard submit SCRIPT`). The parsing and the job's command are
``trainyard.model.slurm``'s; this module reads files, prints and submits."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from trainyard.cli import output as out
from trainyard.cli.app import app, client_of, handle_errors
from trainyard.cli.output import Format
from trainyard.client.sdk import Client, ValidationFailed, new_idempotency_key, validate_spec
from trainyard.model import slurm
from trainyard.model.spec import cwd_problem

PLANNED: Mapping[str, str] = {
    "array": "job arrays (#SBATCH --array)",
    "depends_on": "job dependencies (#SBATCH --dependency)",
}
"""Fields a Slurm script may ask for that an older control plane does not know (``send`` names them
when it refuses them)."""

_HEAD_BYTES = 256 * 1024


SHIMS = ("srun", "scontrol")


def load_shims() -> dict[str, str]:
    """The programs a batch script finds on its PATH (``srun``, ``scontrol``), by name: the files of
    ``trainyard/shims/``, shipped in the package."""
    folder = resources.files("trainyard").joinpath("shims")
    return {name: folder.joinpath(name).read_text(encoding="utf-8") for name in SHIMS}


def read_script(path: Path) -> str:
    """A script's text; ValidationFailed naming the file when it cannot be read or is no text."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationFailed(0, "bad_file", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationFailed(0, "bad_file", f"{path} is not a UTF-8 text file") from None
    problem = slurm.script_problem(text)
    if problem is not None:
        raise ValidationFailed(0, "bad_file", f"{path}: {problem}")
    return text


def batch_script_arg(command: Sequence[str]) -> Path | None:
    """For `yard submit ARG`: ARG as a Slurm batch script, when it is the only argument and a file
    that holds ``#SBATCH`` directives, or that starts with ``#!`` and is not executable (as a
    command it could not run; sbatch runs it). An executable script without directives stays a
    plain command, run as it always was."""
    if len(command) != 1:
        return None
    path = Path(command[0])
    try:
        if not path.is_file():
            return None
        with path.open("rb") as f:
            head = f.read(_HEAD_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    if slurm.looks_like_batch_script(head):
        return path
    if head.startswith("#!") and not os.access(path, os.X_OK):
        return path
    return None


def script_spec(
    text: str,
    *,
    script_name: str,
    base: Mapping[str, Any] | None = None,
    options: Sequence[str] = (),
    args: Sequence[str] = (),
    workdir: bool = False,
) -> slurm.SbatchResult:
    """The spec for a script submitted from here: ``base`` (a ``-f`` file) under its directives and
    ``options``; the submit directory and host in ``SLURM_SUBMIT_DIR``/``SLURM_SUBMIT_HOST``. With a
    ``workdir`` bundle a relative ``--chdir`` stays inside the bundle."""
    here = os.path.abspath(os.getcwd())
    result = slurm.parse_script(
        text,
        script_name=script_name,
        args=args,
        options=options,
        shims=load_shims(),
        submit_dir=None if workdir else here,
        environ=os.environ,
    )
    spec = slurm.overlay(base or {}, result.spec)
    spec.setdefault("env", {}).setdefault("SLURM_SUBMIT_HOST", socket.gethostname())
    return slurm.SbatchResult(spec, result.warnings)


def default_cwd(spec: dict[str, Any], workdir: Path | None) -> None:
    """Slurm's convention, as `yard submit`'s: the job starts where it was submitted, when the
    worker shares that path (never a system directory: the job runs in its own one then)."""
    if workdir is None and not spec.get("workdir") and "cwd" not in spec:
        here = os.path.abspath(os.getcwd())
        if cwd_problem(here) is None:
            spec["cwd"] = here


def print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        out.note(f"warning: {w}")


class _Literal(yaml.SafeDumper):
    """YAML with multi-line text (a script, the wrapper) as literal blocks a person can read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Literal.add_representer(str, _str)


def print_dry_run(spec: Mapping[str, Any], warnings: Sequence[str], fmt: Format | None) -> None:
    """``--dry-run``: the JobSpec that would be sent (JSON with ``-o json``, else YAML) on stdout,
    the warnings on stderr; a spec the JobSpec refuses is an error."""
    if fmt is Format.json:
        out.print_json(spec)
    else:
        sys.stdout.write(yaml.dump(dict(spec), Dumper=_Literal, sort_keys=False, allow_unicode=True))
    sys.stdout.flush()
    print_warnings(warnings)
    validate_spec(dict(spec))


def send(client: Client, spec: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """Submit; a control plane that refuses ``array``/``depends_on`` as unknown says so plainly."""
    try:
        return client.submit(spec, idempotency_key=idempotency_key or new_idempotency_key())
    except ValidationFailed as exc:
        fields = {str(d.get("field", "")).split(".")[0] for d in exc.details}
        refused = [f for f in PLANNED if f in spec and f in fields]
        if refused:
            what = " and ".join(PLANNED[f] for f in refused)
            raise ValidationFailed(
                exc.status, "not_supported", f"{what} are not supported by this control plane yet"
            ) from None
        raise


# -- yard sbatch ---------------------------------------------------------------------------------

_YARD_OPTIONS = {
    "--dry-run": 0,
    "--parsable": 0,
    "--team": 1,
    "--image": 1,
    "--priority": 1,
    "--workdir": 1,
    "--idempotency-key": 1,
    "--format": 1,
    "--wrap": 1,
}

_HELP = """Submit a Slurm batch script as it is: yard sbatch [OPTIONS] SCRIPT [ARGS]...

The script's #SBATCH directives (name, CPUs, memory, GPUs, nodes, tasks, time, partition, QOS,
array, dependency, requeue, chdir) become the job's spec; OPTIONS are sbatch's own (-J, -c, --mem,
--gres, -N, -n, -t, -p, --qos, ...), and override the directives. Inside the job the SLURM_*
variables are set, srun runs its command, and `module load` is a note. The script's text travels
with the job. Without SCRIPT the script is read from standard input, as sbatch reads it.

Trainyard's own options: --dry-run (print the JobSpec and the warnings, submit nothing),
--format json|yaml (the dry run's, or the submitted job's), --team T, --image IMAGE,
--priority low|normal|high|urgent, --workdir DIR (upload DIR; the job runs in a copy of it),
--idempotency-key K, --parsable (print only the job id), --wrap CMD (a one-line script).
"""


def _split_argv(argv: Sequence[str]) -> tuple[dict[str, str], list[str], str | None, list[str]]:
    """yard's options, sbatch's options, the script, and its arguments."""
    yard: dict[str, str] = {}
    options: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        name, eq, value = tok.partition("=")
        if name in _YARD_OPTIONS:
            if _YARD_OPTIONS[name] and not eq:
                if i + 1 >= len(argv):
                    raise ValidationFailed(0, "bad_flag", f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            yard[name] = value if _YARD_OPTIONS[name] else "1"
            i += 1
            continue
        if tok == "--":
            i += 1
            break
        if not tok.startswith("-") or tok == "-":
            break
        arity = slurm.option_arity(tok) or 0
        options.extend(argv[i : i + 1 + arity])
        i += 1 + arity
    script = argv[i] if i < len(argv) else None
    return yard, options, script, list(argv[i + 1 :])


@app.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "allow_interspersed_args": False,
    },
    help=_HELP,
)
@handle_errors
def sbatch(
    ctx: typer.Context,
    argv: Annotated[
        list[str] | None, typer.Argument(metavar="[OPTIONS] SCRIPT [ARGS]", help="sbatch options, script")
    ] = None,
) -> None:
    yard, options, script, args = _split_argv([*(argv or ()), *ctx.args])
    fmt: Format | None = None
    if "--format" in yard:
        try:
            fmt = Format(yard["--format"].lower())
        except ValueError:
            raise ValidationFailed(0, "bad_flag", "--format must be json or yaml") from None
    workdir = Path(yard["--workdir"]) if "--workdir" in yard else None
    if "--wrap" in yard:
        if script is not None:
            args = [script, *args]
        text, name = f"#!/bin/sh\n{yard['--wrap']}\n", "wrap"
    elif script is not None and script != "-":
        path = Path(script)
        text, name = read_script(path), path.name
    elif script == "-" or not sys.stdin.isatty():
        text, name = sys.stdin.read(), "sbatch"
        if not text.strip():
            raise ValidationFailed(0, "bad_flag", "no script: yard sbatch [OPTIONS] SCRIPT [ARGS]")
        problem = slurm.script_problem(text)
        if problem is not None:
            raise ValidationFailed(0, "bad_file", f"standard input: {problem}")
    else:
        raise ValidationFailed(0, "bad_flag", "no script: yard sbatch [OPTIONS] SCRIPT [ARGS]")
    spec, warnings = script_spec(
        text, script_name=name, options=options, args=args, workdir=workdir is not None
    )
    for key in ("team", "image", "priority"):
        if f"--{key}" in yard:
            spec[key] = yard[f"--{key}"]
    default_cwd(spec, workdir)
    if "--dry-run" in yard:
        print_dry_run(spec, warnings, fmt)
        return
    print_warnings(warnings)
    validate_spec(spec)
    client = client_of(ctx)
    if workdir is not None:
        key = client.upload_workdir(workdir)
        out.note(f"uploaded workdir {workdir} as {key}")
        spec["workdir"] = key
    job = send(client, spec, yard.get("--idempotency-key"))
    if fmt is not None:
        out.print_data(job, fmt)
    elif "--parsable" in yard:
        sys.stdout.write(f"{job['id']}\n")
    else:
        sys.stdout.write(f"Submitted batch job {job['id']}\n")


__all__ = [
    "PLANNED",
    "batch_script_arg",
    "default_cwd",
    "load_shims",
    "print_dry_run",
    "print_warnings",
    "read_script",
    "sbatch",
    "script_spec",
    "send",
]
