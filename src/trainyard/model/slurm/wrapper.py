"""The job's command for a batch script: ``bash -c WRAPPER NAME SCRIPT_TEXT ARGS...``. The wrapper
writes the script to a private directory, sets the ``SLURM_*`` variables, puts the ``srun`` and
``scontrol`` shims on ``PATH`` and ``exec``s the script (see the package's docstring). Pure: no I/O."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence

MAX_SCRIPT_BYTES = 100 * 1024
"""The largest script that travels in a job's command (Linux refuses a single argument over 128 KiB)."""

_SHELLS = {"bash", "sh", "dash", "ash"}


def shebang(text: str) -> tuple[list[str], list[str]]:
    """How the script runs: ``["bash", flags...]`` for a shell script (or none named), ``[]`` when
    its ``#!`` names another interpreter (the file then runs by its shebang); and notes."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.startswith("#!"):
        return ["bash"], ["line 1: the script has no #! line; it runs under bash"]
    words = first[2:].split()
    if not words:
        return ["bash"], []
    prog, args = posixpath.basename(words[0]), words[1:]
    if prog == "env":
        args = [a for a in args if a != "-S"]
        if not args:
            return ["bash"], []
        prog, args = posixpath.basename(args[0]), args[1:]
    if prog not in _SHELLS:
        return [], []
    flags: list[str] = []
    notes: list[str] = []
    for a in args:
        if a in ("-l", "--login"):
            notes.append(f"line 1: {a} is dropped: the script does not run as a login shell")
            continue
        if a.startswith("-") and not a.startswith("--") and "l" in a:
            notes.append("line 1: -l is dropped: the script does not run as a login shell")
            a = a.replace("l", "")
            if a == "-":
                continue
        flags.append(a)
    return ["bash", *flags], notes


_WRAPPER = r"""# Trainyard runs a Slurm batch script: $0 is its name, $1 its text, the rest its arguments.
_ty_num() { case $1 in '' | *[!0-9]*) printf '%s' "$2" ;; *) printf '%s' "$1" ;; esac; }
d=
for base in "${TMPDIR:-}" /tmp /var/tmp "${HOME:-}"; do
  [ -n "$base" ] && [ -d "$base" ] && [ -w "$base" ] || continue
  # What jobs of this user left here over a day ago (a job runs at most 24h): gone.
  find "$base" -maxdepth 1 -name 'trainyard-slurm.*' -user "$UID" -mmin +1560 -exec rm -rf {} + 2>/dev/null
  d="$base/trainyard-slurm.${TRAINYARD_JOB_ID:-job}.$$.$RANDOM"
  mkdir -m 700 "$d" 2>/dev/null && mkdir "$d/bin" && break
  d=
done
if [ -z "$d" ]; then
  echo "trainyard: no writable directory for the batch script (TMPDIR, /tmp, /var/tmp, HOME)" >&2
  exit 1
fi
script="$d/$0"
printf '%s' "$1" > "$script" || exit 1
shift
@SHIMS@
export PATH="$d/bin${PATH:+:$PATH}"
nodes=$(_ty_num "${TRAINYARD_WORLD_SIZE:-}" 1)
node=$(_ty_num "${TRAINYARD_RANK:-}" 0)
per_node=$(_ty_num "${SLURM_NTASKS_PER_NODE:-}" 1)
export SLURM_JOB_ID="${TRAINYARD_GANG_ID:-${TRAINYARD_JOB_ID:-0}}"
export SLURM_JOBID="$SLURM_JOB_ID"
export SLURM_JOB_NAME="${TRAINYARD_JOB_NAME:-${SLURM_JOB_NAME:-$0}}"
export SLURM_NNODES="$nodes" SLURM_JOB_NUM_NODES="$nodes" SLURM_NODEID="$node"
export SLURM_NTASKS_PER_NODE="$per_node"
export SLURM_NTASKS=$((nodes * per_node)) SLURM_NPROCS=$((nodes * per_node))
export SLURM_PROCID=$((node * per_node)) SLURM_LOCALID=0
export SLURM_RESTART_COUNT=$(($(_ty_num "${TRAINYARD_ATTEMPT:-}" 1) - 1))
export SLURM_SUBMIT_DIR="${SLURM_SUBMIT_DIR:-$PWD}"
export SLURM_CLUSTER_NAME="${SLURM_CLUSTER_NAME:-trainyard}"
export SLURMD_NODENAME="${HOSTNAME:-localhost}"
export SLURM_JOB_NODELIST="${MASTER_ADDR:-$SLURMD_NODENAME}"
export SLURM_NODELIST="$SLURM_JOB_NODELIST"
if [ -n "${TRAINYARD_ARRAY_INDEX:-}" ]; then
  export SLURM_ARRAY_TASK_ID="$TRAINYARD_ARRAY_INDEX"
  export SLURM_ARRAY_JOB_ID="${TRAINYARD_ARRAY_JOB_ID:-${TRAINYARD_ARRAY_ID:-$SLURM_JOB_ID}}"
fi
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
  gpus="${CUDA_VISIBLE_DEVICES//[!,]/}"
  export SLURM_GPUS_ON_NODE=$((${#gpus} + 1)) SLURM_JOB_GPUS="$CUDA_VISIBLE_DEVICES"
fi
if ! type module >/dev/null 2>&1; then
  module() { echo "trainyard: 'module $*' skipped: this worker has no environment modules" >&2; return 0; }
  ml() { module "$@"; }
  export -f module ml
fi
@RUN@
"""


def batch_command(
    text: str, *, script_name: str, args: Sequence[str] = (), shims: Mapping[str, str]
) -> list[str]:
    """The job's command: ``bash -c WRAPPER NAME TEXT ARGS...`` (see the package's docstring).
    ``shims``: the programs the job finds on its PATH by name (``srun``, ``scontrol``: the files in
    ``trainyard/shims/``) and their text."""
    run, _ = shebang(text)
    if run:
        line = "exec " + " ".join(shlex.quote(w) for w in run) + ' "$script" "$@"'
    else:
        line = 'chmod 700 "$script" && exec "$script" "$@"'
    writes = []
    for prog, body in sorted(shims.items()):
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", prog):
            raise ValueError(f"shim name {prog!r} must be a plain program name")
        target = f'"$d/bin/{prog}"'
        writes.append(f"printf '%s' {shlex.quote(_compact(body))} > {target} && chmod 755 {target} || exit 1")
    wrapper = _WRAPPER.replace("@SHIMS@", "\n".join(writes)).replace("@RUN@", line)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(script_name)) or "slurm_script"
    if name.startswith("."):
        name = "_" + name
    return ["bash", "-c", wrapper, name, text, *args]


def _compact(shell: str) -> str:
    # The shim without its comment lines (its #! line kept): the command a job's page shows is shorter.
    lines = shell.splitlines()
    kept = lines[:1] + [x for x in lines[1:] if x.strip() and not x.lstrip().startswith("#")]
    return "\n".join(kept) + "\n"


def script_problem(text: str) -> str | None:
    """Why a script cannot run as a job (too long, a NUL byte), or None."""
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_SCRIPT_BYTES:
        return (
            f"the script is {size // 1024} KiB; at most {MAX_SCRIPT_BYTES // 1024} KiB travels with a job: "
            "keep the bulk in files next to it (yard sbatch --workdir DIR uploads them)"
        )
    if "\x00" in text:
        return "the script holds a NUL byte: it is not a text file"
    return None
