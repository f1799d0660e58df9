"""Slurm batch scripts as Trainyard jobs: ``#SBATCH`` directives and sbatch's command-line options
read into JobSpec fields, and the command that runs the script unchanged inside a job. Pure: no I/O.

What a script becomes:

- Its directives (and ``yard sbatch``'s options, which override them, as sbatch's do) give the name,
  resources, gang size, time limit, pool, priority, retry policy and working directory. A directive
  Trainyard does not support is a warning, never an error.
- ``-N/--nodes`` N is a gang of N replicas, one per node. Each replica runs the whole script (Slurm
  runs it on the first node only and reaches the others through ``srun``), so a script's commands
  outside ``srun`` run once per node; ``SLURM_NODEID`` tells them apart.
- Resources are per node (per replica): CPUs = tasks per node times CPUs per task; memory from ``--mem``
  (per node), ``--mem-per-cpu`` or ``--mem-per-gpu``; GPUs from ``--gres``, ``--gpus-per-node``,
  ``--gpus-per-task`` (times tasks per node) or ``--gpus`` (shared over the nodes).
- The command is ``bash -c WRAPPER NAME SCRIPT_TEXT ARGS...``: the script's text travels inside the
  job's own command (stored with the spec, sent to the worker with the lease), so it runs as it was
  at submit time on any worker, with or without a shared file system, a bundle or an image that
  holds it. The wrapper writes it to a private directory (``$TMPDIR`` or ``/tmp``: private per job
  in the sandbox), sets the ``SLURM_*`` variables from the ``TRAINYARD_*`` ones the platform sets at
  lease, puts the ``srun`` and ``scontrol`` shims on ``PATH``, defines ``module``/``ml`` as a note
  that succeeds when the worker has no environment modules, and ``exec``s the script under bash
  (with the shebang's flags, ``-l`` aside), or under its own interpreter when the shebang names
  another one (python, say). The script is exec'd, so its process, exit status and signals are
  those of a plain ``bash script.sh`` job. A script is at most ``MAX_SCRIPT_BYTES``: one argument
  of a command line cannot be longer than 128 KiB on Linux.
- ``--array`` and ``--dependency`` give the planned ``array`` and ``depends_on`` fields (issue 16);
  a control plane that does not know them yet refuses them, and the CLI says so.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, NamedTuple

from trainyard.model.spec import MAX_RUNTIME_LIMIT, cwd_problem

MAX_SCRIPT_BYTES = 100 * 1024
"""The largest script that travels in a job's command (Linux refuses a single argument over 128 KiB)."""

DEFAULT_QOS: Mapping[str, str] = {
    # Trainyard's own priorities, by name.
    "low": "low",
    "normal": "normal",
    "high": "high",
    "urgent": "urgent",
    # Names Slurm sites commonly give their QOS levels.
    "scavenger": "low",
    "standby": "low",
    "preemptible": "low",
    "preempt": "low",
    "spot": "low",
    "besteffort": "low",
    "backfill": "low",
    "lowprio": "low",
    "default": "normal",
    "standard": "normal",
    "batch": "normal",
    "medium": "normal",
    "short": "normal",
    "long": "normal",
    "highprio": "high",
    "priority": "high",
    "debug": "high",
    "interactive": "high",
    "dev": "high",
    "critical": "urgent",
    "express": "urgent",
}
"""``--qos`` → priority, until an admin's table is stored by the control plane. Keys are lowercase."""

REQUEUE_ATTEMPTS = 5
"""``--requeue``: tries after infrastructure failures (a lost worker), as Slurm's MaxBatchRequeue (5)."""

_ARITY = Literal["none", "required", "optional"]


@dataclass(frozen=True)
class _Option:
    name: str
    short: str | None
    arity: _ARITY
    note: str | None = None
    """Why a known option is ignored; None for the options that are applied."""


_IGNORED = "has no counterpart in Trainyard and is ignored"
_PLACEMENT = "is ignored: the scheduler places jobs; --pool (partition) and --gpu-type choose where"
_NO_MAIL = "is ignored: Trainyard sends no mail (`yard logs -f ID` follows a job)"
_SIGNAL = "is ignored: a job being stopped (preempted, cancelled, timed out) gets SIGTERM and a grace period"
_EXCLUSIVE = "is ignored: a job gets the CPUs, memory and GPUs it asks for, and only those"

_OPTIONS: tuple[_Option, ...] = (
    # Applied.
    _Option("job-name", "J", "required"),
    _Option("cpus-per-task", "c", "required"),
    _Option("cpus-per-gpu", None, "required"),
    _Option("mem", None, "required"),
    _Option("mem-per-cpu", None, "required"),
    _Option("mem-per-gpu", None, "required"),
    _Option("gres", None, "required"),
    _Option("gpus", "G", "required"),
    _Option("gpus-per-node", None, "required"),
    _Option("gpus-per-task", None, "required"),
    _Option("nodes", "N", "required"),
    _Option("ntasks", "n", "required"),
    _Option("ntasks-per-node", None, "required"),
    _Option("time", "t", "required"),
    _Option("partition", "p", "required"),
    _Option("qos", "q", "required"),
    _Option("array", "a", "required"),
    _Option("dependency", "d", "required"),
    _Option("requeue", None, "none"),
    _Option("no-requeue", None, "none"),
    _Option("output", "o", "required"),
    _Option("error", "e", "required"),
    _Option("chdir", "D", "required"),
    _Option("export", None, "required"),
    # Known, ignored, with a reason.
    _Option("account", "A", "required", "is ignored: a job is charged to your team (--team picks another)"),
    _Option("mail-type", None, "required", _NO_MAIL),
    _Option("mail-user", None, "required", _NO_MAIL),
    _Option("signal", None, "required", _SIGNAL),
    _Option("constraint", "C", "required", _PLACEMENT),
    _Option("nodelist", "w", "required", _PLACEMENT),
    _Option("exclude", "x", "required", _PLACEMENT),
    _Option("exclusive", None, "optional", _EXCLUSIVE),
    _Option("oversubscribe", "s", "none", _IGNORED),
    _Option("time-min", None, "required", _IGNORED),
    _Option("begin", "b", "required", _IGNORED),
    _Option("deadline", None, "required", _IGNORED),
    _Option("hold", "H", "none", _IGNORED),
    _Option("input", "i", "required", "is ignored: a job's standard input is empty"),
    _Option("open-mode", None, "required", "is ignored: the job's output is its log"),
    _Option("wait", "W", "none", "is ignored: `yard logs -f ID` waits for a job and exits with its status"),
    _Option("parsable", None, "none", ""),
    _Option("wrap", None, "required", "is only read on yard sbatch's command line"),
    _Option("comment", None, "required", _IGNORED),
    _Option("reservation", None, "required", _IGNORED),
    _Option("licenses", "L", "required", _IGNORED),
    _Option("clusters", "M", "required", _IGNORED),
    _Option("cluster-constraint", None, "required", _IGNORED),
    _Option("hint", None, "required", _IGNORED),
    _Option("distribution", "m", "required", _IGNORED),
    _Option("tmp", None, "required", _IGNORED),
    _Option("mincpus", None, "required", _IGNORED),
    _Option("ntasks-per-core", None, "required", _IGNORED),
    _Option("ntasks-per-socket", None, "required", _IGNORED),
    _Option("ntasks-per-gpu", None, "required", _IGNORED),
    _Option("sockets-per-node", None, "required", _IGNORED),
    _Option("cores-per-socket", None, "required", _IGNORED),
    _Option("threads-per-core", None, "required", _IGNORED),
    _Option("extra-node-info", "B", "required", _IGNORED),
    _Option("core-spec", "S", "required", _IGNORED),
    _Option("thread-spec", None, "required", _IGNORED),
    _Option("gres-flags", None, "required", _IGNORED),
    _Option("gpu-bind", None, "required", _IGNORED),
    _Option("gpu-freq", None, "required", _IGNORED),
    _Option("gpus-per-socket", None, "required", _IGNORED),
    _Option("cpu-freq", None, "required", _IGNORED),
    _Option("mem-bind", None, "required", _IGNORED),
    _Option("tres-per-task", None, "required", _IGNORED),
    _Option("tres-bind", None, "required", _IGNORED),
    _Option("network", None, "required", _IGNORED),
    _Option("switches", None, "required", _IGNORED),
    _Option("power", None, "required", _IGNORED),
    _Option("prefer", None, "required", _IGNORED),
    _Option("priority", None, "required", "is ignored: --qos (or yard's --priority) sets the priority"),
    _Option("nice", None, "optional", "is ignored: --qos (or yard's --priority) sets the priority"),
    _Option("profile", None, "required", _IGNORED),
    _Option("propagate", None, "optional", _IGNORED),
    _Option("acctg-freq", None, "required", _IGNORED),
    _Option("wckey", None, "required", _IGNORED),
    _Option("mcs-label", None, "required", _IGNORED),
    _Option("bb", None, "required", _IGNORED),
    _Option("bbf", None, "required", _IGNORED),
    _Option("container", None, "required", "is ignored: yard's --image runs a job in a container image"),
    _Option("container-id", None, "required", _IGNORED),
    _Option("delay-boot", None, "required", _IGNORED),
    _Option("reboot", None, "none", _IGNORED),
    _Option("contiguous", None, "none", _IGNORED),
    _Option("spread-job", None, "none", _IGNORED),
    _Option("use-min-nodes", None, "none", _IGNORED),
    _Option("overcommit", "O", "none", _IGNORED),
    _Option("no-kill", "k", "optional", _IGNORED),
    _Option("kill-on-invalid-dep", None, "required", _IGNORED),
    _Option("get-user-env", None, "optional", _IGNORED),
    _Option("export-file", None, "required", _IGNORED),
    _Option("nodefile", "F", "required", _IGNORED),
    _Option("uid", None, "required", _IGNORED),
    _Option("gid", None, "required", _IGNORED),
    _Option("test-only", None, "none", _IGNORED),
    _Option("ignore-pbs", None, "none", _IGNORED),
    _Option("quiet", "Q", "none", ""),
    _Option("verbose", "v", "none", ""),
    _Option("immediate", "I", "optional", _IGNORED),
    _Option("wait-all-nodes", None, "required", _IGNORED),
    _Option("extra", None, "required", _IGNORED),
    _Option("resv-ports", None, "optional", _IGNORED),
)  # fmt: skip
_LONG = {o.name: o for o in _OPTIONS}
_SHORT = {o.short: o for o in _OPTIONS if o.short}

_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_GPU_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"\d+")
_MEM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)[Bb]?")
_MEM_UNIT = {"": 1024**2, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ARRAY_ITEM_RE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
MAX_ARRAY_TASKS = 100_000
_DEPENDENCY_CONDITIONS = {"afterok": "succeeded", "afternotok": "failed", "afterany": "finished"}
_SHELLS = {"bash", "sh", "dash", "ash"}


_TIME_ERROR = "time {!r} is not a Slurm time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"


class SbatchResult(NamedTuple):
    spec: dict[str, Any]
    """JobSpec fields, as a JSON-able mapping (it may hold ``array`` and ``depends_on``)."""
    warnings: list[str]
    """What was ignored or changed, each naming its line (``line 7:``) or ``command line:``."""


# -- values --------------------------------------------------------------------------------------


def parse_time(text: str) -> float | None:
    """Seconds from a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` or
    ``D-HH:MM:SS``; None for no limit (``0``, ``-1``, ``UNLIMITED``, ``INFINITE``). ValueError else."""
    t = text.strip()
    if t.lower() in ("unlimited", "infinite", "-1"):
        return None
    days = 0
    rest = t
    if "-" in t:
        d, _, rest = t.partition("-")
        if not _INT_RE.fullmatch(d) or not rest:
            raise ValueError(_TIME_ERROR.format(text))
        days = int(d)
    parts = rest.split(":")
    if not parts or len(parts) > 3 or not all(_INT_RE.fullmatch(p) for p in parts):
        raise ValueError(_TIME_ERROR.format(text))
    n = [int(p) for p in parts]
    if "-" in t:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = [*n, 0, 0][:3]
    elif len(n) == 1:  # MM
        hours, minutes, seconds = 0, n[0], 0
    elif len(n) == 2:  # MM:SS
        hours, minutes, seconds = 0, n[0], n[1]
    else:  # HH:MM:SS
        hours, minutes, seconds = n
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return float(total) if total > 0 else None


def parse_memory(text: str) -> int:
    """Bytes from a Slurm size: a number with an optional K, M, G or T (powers of 1024, as Slurm
    means them); no unit means megabytes (MiB). ValueError otherwise."""
    m = _MEM_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"memory {text!r} is not a Slurm size such as 4G, 500M or 4000 (MB)")
    return int(Fraction(m.group(1)) * _MEM_UNIT[m.group(2).lower()])


def _positive_int(text: str, what: str) -> int:
    if not _INT_RE.fullmatch(text.strip()) or int(text) < 1:
        raise ValueError(f"{what} {text!r} must be a whole number of at least 1")
    return int(text)


def parse_gpus(text: str) -> tuple[int, str | None, list[str]]:
    """``[type:]N`` (``--gpus``, ``--gpus-per-node``, ``--gpus-per-task``) → (N, type, notes)."""
    notes: list[str] = []
    items = [i for i in text.split(",") if i]
    if not items:
        raise ValueError(f"GPU count {text!r} must look like 2 or a100:2")
    if len(items) > 1:
        notes.append(f"only the first of several GPU kinds ({text}) is used")
    head, _, count = items[0].rpartition(":")
    if not head and not _INT_RE.fullmatch(count):  # a bare type: one GPU of it
        head, count = count, "1"
    n = int(count) if _INT_RE.fullmatch(count) else -1
    if n < 0:
        raise ValueError(f"GPU count {text!r} must look like 2 or a100:2")
    if head.startswith("gpu:"):
        head = head[4:]
    return n, head.lower() or None, notes


def parse_gres(text: str) -> tuple[int, str | None, list[str]]:
    """``gpu[:type][:N]`` items of ``--gres`` → (GPUs, type, notes on the other resources)."""
    notes: list[str] = []
    gpus, gpu_type, seen = 0, None, False
    for item in (i.strip() for i in text.split(",")):
        if not item or item.lower() == "none":
            continue
        item = item.split("(", 1)[0]  # gpu:2(S:0-1): the socket binding is Slurm's business
        kind, *rest = item.replace("gres/", "", 1).split(":")
        if kind.lower() != "gpu":
            notes.append(f"the generic resource {item!r} is not supported and is ignored")
            continue
        if seen:
            notes.append(f"only the first GPU kind of {text!r} is used")
            continue
        seen = True
        if not rest:
            gpus = 1
        elif len(rest) == 1:
            if _INT_RE.fullmatch(rest[0]):
                gpus = int(rest[0])
            else:
                gpus, gpu_type = 1, rest[0].lower()
        elif len(rest) == 2 and _INT_RE.fullmatch(rest[1]):
            gpus, gpu_type = int(rest[1]), rest[0].lower()
        else:
            raise ValueError(f"--gres item {item!r} must look like gpu:2 or gpu:a100:2")
    return gpus, gpu_type, notes


def parse_array(text: str) -> dict[str, Any]:
    """``--array=0-99%8``, ``1,3,5-7``, ``0-15:4`` → ``{"indices": "0-99", "parallelism": 8}``
    (``parallelism`` only with ``%N``). ValueError for anything else."""
    t = text.strip()
    indices, sep, limit = t.partition("%")
    count = 0
    for item in indices.split(","):
        m = _ARRAY_ITEM_RE.fullmatch(item.strip())
        if not m:
            raise ValueError(f"array {text!r} must look like 0-99, 1,3,5, 0-15:4 or 0-99%8")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError(f"array range {item!r} must run upwards with a step of at least 1")
        count += (hi - lo) // step + 1
    if count > MAX_ARRAY_TASKS:
        raise ValueError(f"array {text!r} has {count} tasks; at most {MAX_ARRAY_TASKS}")
    out: dict[str, Any] = {"indices": ",".join(i.strip() for i in indices.split(","))}
    if sep:
        out["parallelism"] = _positive_int(limit, "array limit (%N)")
    return out


def array_task_ids(indices: str) -> list[int]:
    """Every index of an ``array.indices`` text, in order (``1,3,5-7`` → 1, 3, 5, 6, 7)."""
    ids: list[int] = []
    for item in indices.split(","):
        m = _ARRAY_ITEM_RE.fullmatch(item.strip())
        if not m:
            raise ValueError(f"array index {item!r} must look like 3, 0-99 or 0-15:4")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        ids.extend(range(lo, hi + 1, step))
    return ids


def parse_dependency(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """``afterok:ID[:ID][,afterany:ID]`` → ``depends_on`` items and notes on what is not supported."""
    deps: list[dict[str, str]] = []
    notes: list[str] = []
    if "?" in text:
        notes.append(f"--dependency={text}: '?' (any one of) is not supported; all of them must be met")
    for item in re.split(r"[,?]", text):
        item = item.strip()
        if not item:
            continue
        kind, _, ids = item.partition(":")
        condition = _DEPENDENCY_CONDITIONS.get(kind.lower())
        if condition is None:
            notes.append(
                f"--dependency {kind!r} is not supported and is ignored "
                "(afterok, afternotok and afterany are)"
            )
            continue
        if not ids:
            notes.append(f"--dependency {item!r} names no job and is ignored")
            continue
        for job in ids.split(":"):
            if "+" in job:
                notes.append(f"--dependency {item!r}: the delay ({job}) is ignored")
                job = job.split("+", 1)[0]
            if job:
                deps.append({"job": job, "condition": condition})
    return deps, notes


def job_name(text: str) -> str:
    """A Slurm job name as a JobSpec name: letters, digits, '.', '_' and '-', at most 128."""
    name = _NAME_BAD.sub("-", text.strip()).lstrip("._-")[:128].rstrip("-")
    return name or "slurm-job"


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Given:
    option: _Option
    value: str | None
    where: str
    text: str


def _lookup_long(name: str) -> _Option | None:
    if name in _LONG:
        return _LONG[name]
    # getopt_long, which sbatch uses, takes any unambiguous prefix (--ntasks-per-n, --part).
    found = [o for n, o in _LONG.items() if n.startswith(name)]
    return found[0] if len(found) == 1 else None


def option_arity(token: str) -> int | None:
    """How many of the following arguments an sbatch option ``token`` takes (0 or 1); None when it is
    not an option sbatch knows. For ``yard sbatch [OPTIONS] SCRIPT``: where the script's name is."""
    if token.startswith("--"):
        name, eq, _ = token[2:].partition("=")
        opt = _lookup_long(name)
        if opt is None:
            return None
        return 1 if opt.arity == "required" and not eq else 0
    if token.startswith("-") and len(token) >= 2:
        opt = _SHORT.get(token[1])
        if opt is None:
            return None
        return 1 if opt.arity == "required" and len(token) == 2 else 0
    return None


def _read_options(tokens: Sequence[str], where: str, warnings: list[str]) -> list[_Given]:
    given: list[_Given] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        opt: _Option | None = None
        value: str | None = None
        if tok.startswith("--") and len(tok) > 2:
            name, eq, val = tok[2:].partition("=")
            opt = _lookup_long(name)
            if opt is None:
                warnings.append(f"{where}: unknown option {tok} is ignored")
                continue
            if eq:
                if opt.arity == "none":
                    warnings.append(f"{where}: --{opt.name} takes no value; {val!r} is ignored")
                else:
                    value = val
        elif tok.startswith("-") and len(tok) > 1:
            opt = _SHORT.get(tok[1])
            if opt is None:
                warnings.append(f"{where}: unknown option {tok} is ignored")
                continue
            attached = tok[2:]
            if opt.arity == "none":
                if attached:
                    # Clustered flags (-vQ): each is a flag of its own.
                    rest = ["-" + c for c in attached]
                    tokens = [*tokens[:i], *rest, *tokens[i:]]
            else:
                value = attached[1:] if attached.startswith("=") else (attached or None)
        else:
            warnings.append(f"{where}: {tok!r} is not an option and is ignored")
            continue
        if opt.arity == "required" and value is None:
            if i < len(tokens):
                value = tokens[i]
                i += 1
            else:
                warnings.append(f"{where}: --{opt.name} needs a value and is ignored")
                continue
        text = f"--{opt.name}" + (f"={value}" if value is not None else "")
        given.append(_Given(opt, value, where, text))
    return given


def directive_lines(text: str) -> tuple[list[tuple[int, str]], list[str]]:
    """The ``#SBATCH`` lines sbatch reads (line number, the text after ``#SBATCH``), and notes.

    As sbatch: a directive starts its line with ``#SBATCH``; ``##SBATCH`` (any other comment) is not
    one; they are read up to the first line that is neither blank nor a comment."""
    found: list[tuple[int, str]] = []
    notes: list[str] = []
    reading = True
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if line.startswith("#SBATCH") and (len(line) == 7 or line[7] in " \t"):
            if reading:
                found.append((number, line[7:]))
            else:
                notes.append(
                    f"line {number}: #SBATCH after the script's first command is ignored (as by sbatch)"
                )
        elif reading and line.strip() and not line.startswith("#"):
            reading = False
    return found, notes


def _split_directive(number: int, rest: str, warnings: list[str]) -> list[str]:
    try:
        # A '#' that starts a word ends the directive: `#SBATCH -t 10  # ten minutes`.
        return shlex.split(rest, comments=True)
    except ValueError as exc:
        warnings.append(f"line {number}: {exc}; read as plain words")
        return rest.split("#", 1)[0].split()


# -- the spec ------------------------------------------------------------------------------------


@dataclass
class _State:
    name: str | None = None
    cpus_per_task: int | None = None
    cpus_per_gpu: int | None = None
    memory: tuple[str, int] | None = None  # ("node" | "cpu" | "gpu", bytes); 0 bytes: all of a node
    gpus: tuple[str, int, str | None] | None = None  # ("node" | "task" | "job", count, type)
    nodes: int | None = None
    ntasks: int | None = None
    ntasks_per_node: int | None = None
    time: tuple[float | None, str] | None = None
    partition: str | None = None
    qos: str | None = None
    array: dict[str, Any] | None = None
    depends_on: list[dict[str, str]] | None = None
    requeue: bool | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    chdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)


def _apply(
    st: _State,
    g: _Given,
    warnings: list[str],
    qos_table: Mapping[str, str],
    environ: Mapping[str, str],
) -> None:
    name, value, where = g.option.name, g.value or "", g.where

    def warn(message: str) -> None:
        warnings.append(f"{where}: {message}")

    if g.option.note is not None:
        if g.option.note:
            warn(f"{g.text} {g.option.note}")
        return
    handlers: dict[str, Callable[[], None]] = {}

    def job_name_() -> None:
        st.name = value

    def cpus_per_task() -> None:
        st.cpus_per_task = _positive_int(value, "--cpus-per-task")

    def cpus_per_gpu() -> None:
        st.cpus_per_gpu = _positive_int(value, "--cpus-per-gpu")

    def mem(kind: str) -> Callable[[], None]:
        def set_() -> None:
            st.memory = (kind, parse_memory(value))

        return set_

    def gres() -> None:
        n, kind, notes = parse_gres(value)
        for note in notes:
            warn(note)
        st.gpus = ("node", n, kind)

    def gpus(kind: str) -> Callable[[], None]:
        def set_() -> None:
            n, gpu_type, notes = parse_gpus(value)
            for note in notes:
                warn(note)
            st.gpus = (kind, n, gpu_type)

        return set_

    def nodes() -> None:
        lo, dash, _ = value.partition("-")
        st.nodes = _positive_int(lo, "--nodes")
        if dash:
            warn(f"--nodes={value}: a range of node counts is not supported; the job is a gang of {lo}")

    def ntasks() -> None:
        st.ntasks = _positive_int(value, "--ntasks")

    def ntasks_per_node() -> None:
        st.ntasks_per_node = _positive_int(value, "--ntasks-per-node")

    def time_() -> None:
        st.time = (parse_time(value), value)

    def partition() -> None:
        first, comma, _ = value.partition(",")
        if comma:
            warn(f"--partition={value}: a job goes to one pool; {first!r} is used")
        pool = first.strip().lower()
        if not _LABEL_RE.fullmatch(pool):
            raise ValueError(
                f"partition {first!r} cannot be a pool name (lowercase letters, digits, '.', '_', '-')"
            )
        st.partition = pool

    def qos() -> None:
        priority = qos_table.get(value.strip().lower())
        if priority is None:
            known = ", ".join(sorted(qos_table))
            raise ValueError(f"--qos={value} is not in the QOS table ({known}); the priority stays normal")
        st.qos = priority

    def array() -> None:
        st.array = parse_array(value)

    def dependency() -> None:
        deps, notes = parse_dependency(value)
        for note in notes:
            warn(note)
        st.depends_on = deps or None

    def requeue(on: bool) -> Callable[[], None]:
        def set_() -> None:
            st.requeue = on

        return set_

    def output(stream: str) -> Callable[[], None]:
        def set_() -> None:
            st.outputs[stream] = value

        return set_

    def chdir() -> None:
        st.chdir = value

    def export() -> None:
        for item in (i.strip() for i in value.split(",")):
            key, eq, val = item.partition("=")
            if not item or (not eq and key.upper() in ("ALL", "NIL")):
                continue
            if not eq and key.upper() == "NONE":
                warn("--export=NONE is not applied: a job's environment is the worker's plus the spec's env")
                continue
            if not _ENV_KEY_RE.fullmatch(key) or key.startswith("TRAINYARD_"):
                warn(f"--export: {key!r} is not a variable a job may be given; ignored")
                continue
            if eq:
                st.env[key] = val
            elif key in environ:
                st.env[key] = environ[key]
            else:
                warn(f"--export: {key} is not set here; ignored")

    handlers.update(
        {
            "job-name": job_name_,
            "cpus-per-task": cpus_per_task,
            "cpus-per-gpu": cpus_per_gpu,
            "mem": mem("node"),
            "mem-per-cpu": mem("cpu"),
            "mem-per-gpu": mem("gpu"),
            "gres": gres,
            "gpus": gpus("job"),
            "gpus-per-node": gpus("node"),
            "gpus-per-task": gpus("task"),
            "nodes": nodes,
            "ntasks": ntasks,
            "ntasks-per-node": ntasks_per_node,
            "time": time_,
            "partition": partition,
            "qos": qos,
            "array": array,
            "dependency": dependency,
            "requeue": requeue(True),
            "no-requeue": requeue(False),
            "output": output("output"),
            "error": output("error"),
            "chdir": chdir,
            "export": export,
        }
    )
    try:
        handlers[name]()
    except ValueError as exc:
        warn(f"{g.text} is ignored: {exc}")
        return
    st.where[name] = where


def _spec(st: _State, script_name: str, submit_dir: str | None, warnings: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    name = st.name if st.name is not None else posixpath.basename(script_name)
    spec["name"] = job_name(name)
    if st.name is not None and spec["name"] != st.name:
        warnings.append(f"{st.where['job-name']}: the job name {st.name!r} is used as {spec['name']!r}")

    # Nodes and tasks: a gang of N replicas with T tasks each.
    nodes = st.nodes
    per_node = st.ntasks_per_node
    if per_node is None and st.ntasks is not None:
        n = nodes or 1
        per_node = math.ceil(st.ntasks / n)
        if st.ntasks % n:
            warnings.append(
                f"{st.where['ntasks']}: {st.ntasks} tasks do not divide evenly over {n} nodes; "
                f"each node gets resources for {per_node}"
            )
    if nodes is None and st.ntasks is not None and st.ntasks_per_node is not None:
        nodes = math.ceil(st.ntasks / st.ntasks_per_node)
    nodes = nodes or 1
    per_node = per_node or 1
    if st.ntasks is not None and st.ntasks_per_node is not None and st.ntasks != nodes * per_node:
        warnings.append(
            f"{st.where['ntasks']}: --ntasks={st.ntasks} with {nodes} nodes of {per_node} tasks: "
            f"the job runs {nodes * per_node} tasks"
        )
    if nodes > 1:
        spec["replicas"] = nodes
        warnings.append(
            f"{st.where['nodes'] if 'nodes' in st.where else st.where.get('ntasks', 'directives')}: "
            f"the job is a gang of {nodes} replicas, one per node; each runs the whole script "
            "(commands outside srun run once per node; SLURM_NODEID tells them apart)"
        )

    # GPUs per node.
    gpus_per_node, gpu_type = 0, None
    if st.gpus is not None:
        kind, count, gpu_type = st.gpus
        if kind == "task":
            gpus_per_node = count * per_node
        elif kind == "job":
            gpus_per_node = math.ceil(count / nodes)
            if count % nodes:
                warnings.append(
                    f"{st.where['gpus']}: {count} GPUs do not divide evenly over {nodes} nodes; "
                    f"each node gets {gpus_per_node}"
                )
        else:
            gpus_per_node = count
    if gpu_type is not None and not _GPU_TYPE_RE.fullmatch(gpu_type):
        warnings.append(f"GPU type {gpu_type!r} cannot be a Trainyard GPU type and is ignored")
        gpu_type = None

    resources: dict[str, Any] = {}
    cpus_per_task = st.cpus_per_task or 1
    cpu = cpus_per_task * per_node
    if st.cpus_per_gpu is not None:
        if gpus_per_node:
            cpu = st.cpus_per_gpu * gpus_per_node
        else:
            warnings.append(f"{st.where['cpus-per-gpu']}: --cpus-per-gpu without GPUs is ignored")
    if st.cpus_per_task is not None or per_node > 1 or (st.cpus_per_gpu and gpus_per_node):
        resources["cpu"] = cpu
    if st.memory is not None:
        kind, size = st.memory
        where = st.where["mem" if kind == "node" else f"mem-per-{kind}"]
        if size == 0:
            warnings.append(
                f"{where}: --mem=0 (all of a node's memory) cannot be asked for; the job gets the default "
                "memory unless a size is given (yard sbatch --mem=200G SCRIPT)"
            )
        elif kind == "node":
            resources["memory"] = size
        elif kind == "cpu":
            resources["memory"] = size * cpu
        elif gpus_per_node:
            resources["memory"] = size * gpus_per_node
        else:
            warnings.append(f"{where}: --mem-per-gpu without GPUs is ignored")
    if gpus_per_node:
        resources["gpu"] = gpus_per_node
        if gpu_type:
            resources["gpu_type"] = gpu_type
    if "memory" in resources:
        resources["memory"] = _memory_text(resources["memory"])
    if resources:
        spec["resources"] = resources

    if st.time is not None:
        seconds, text = st.time
        where = st.where["time"]
        if seconds is None:
            warnings.append(f"{where}: --time={text} (no limit): a job runs at most 24h; the limit is 24h")
            spec["max_runtime"] = "24h"
        elif seconds > MAX_RUNTIME_LIMIT:
            warnings.append(
                f"{where}: --time={text} is over Trainyard's limit of 24h per attempt; the limit is 24h"
            )
            spec["max_runtime"] = "24h"
        else:
            spec["max_runtime"] = _duration_text(seconds)
    if st.partition is not None:
        spec["pool"] = st.partition
    if st.qos is not None:
        spec["priority"] = st.qos
    if st.requeue is not None:
        spec["retry"] = {"max_attempts": REQUEUE_ATTEMPTS if st.requeue else 1, "on": ["infra"]}
    if st.chdir is not None:
        cwd = st.chdir
        if not cwd.startswith("/") and submit_dir is not None:
            cwd = posixpath.normpath(posixpath.join(submit_dir, cwd))
        problem = cwd_problem(cwd)
        if problem is not None:
            warnings.append(
                f"{st.where['chdir']}: --chdir={st.chdir} is ignored: a working directory {problem}"
            )
        else:
            spec["cwd"] = cwd
    if st.array is not None:
        spec["array"] = st.array
        ids = array_task_ids(st.array["indices"])
        st.env.setdefault("SLURM_ARRAY_TASK_COUNT", str(len(ids)))
        st.env.setdefault("SLURM_ARRAY_TASK_MIN", str(min(ids)))
        st.env.setdefault("SLURM_ARRAY_TASK_MAX", str(max(ids)))
    if st.depends_on is not None:
        spec["depends_on"] = st.depends_on
    for stream, pattern in st.outputs.items():
        warnings.append(
            f"{st.where[stream]}: --{stream}={pattern}: the job's output and errors are kept in its log "
            "(`yard logs ID`); no file is written"
        )

    env = dict(st.env)
    env["SLURM_NTASKS_PER_NODE"] = str(per_node)
    if st.cpus_per_task is not None:
        env["SLURM_CPUS_PER_TASK"] = str(st.cpus_per_task)
    if st.partition is not None:
        env["SLURM_JOB_PARTITION"] = st.partition
    if submit_dir is not None:
        env.setdefault("SLURM_SUBMIT_DIR", submit_dir)
    spec["env"] = env
    return spec


def _memory_text(n: int) -> str | int:
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return n


def _duration_text(seconds: float) -> str:
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def parse_directives(
    text: str,
    *,
    script_name: str = "script.sh",
    options: Sequence[str] = (),
    qos_table: Mapping[str, str] = DEFAULT_QOS,
    submit_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SbatchResult:
    """The JobSpec fields a script's ``#SBATCH`` directives ask for, with ``options`` (sbatch's own
    command-line options) laid over them; no command. Never fails: what cannot be used is a warning.

    ``submit_dir``: where ``yard sbatch`` runs (a relative ``--chdir`` is inside it, and
    ``SLURM_SUBMIT_DIR``); ``environ``: the submitting shell's variables, for ``--export=NAME``."""
    warnings: list[str] = []
    lines, notes = directive_lines(text)
    given: list[_Given] = []
    for number, rest in lines:
        given.extend(_read_options(_split_directive(number, rest, warnings), f"line {number}", warnings))
    given.extend(_read_options(list(options), "command line", warnings))
    st = _State()
    for g in given:
        _apply(st, g, warnings, qos_table, environ or {})
    spec = _spec(st, script_name, submit_dir, warnings)
    return SbatchResult(spec, sorted(warnings + notes, key=_line_order))


def _line_order(warning: str) -> int:
    # Warnings in the order of the script's lines; the command line's after them.
    m = re.match(r"line (\d+):", warning)
    if m:
        return int(m.group(1))
    return 1 << 30 if warning.startswith("command line:") else 0


# -- the command ---------------------------------------------------------------------------------


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
    """The job's command: ``bash -c WRAPPER NAME TEXT ARGS...`` (see the module's docstring).
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


def parse_script(
    text: str,
    *,
    script_name: str = "script.sh",
    args: Sequence[str] = (),
    options: Sequence[str] = (),
    shims: Mapping[str, str],
    qos_table: Mapping[str, str] = DEFAULT_QOS,
    submit_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SbatchResult:
    """The whole JobSpec (as a mapping) for a Slurm batch script: its directives' fields (see
    ``parse_directives``) and the command that runs it with ``args``. DOS line ends are made Unix
    ones (sbatch refuses such a script; bash would fail on every line)."""
    warnings: list[str] = []
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
        warnings.append("the script has DOS line ends (CRLF); it runs with Unix ones")
    spec, more = parse_directives(
        text,
        script_name=script_name,
        options=options,
        qos_table=qos_table,
        submit_dir=submit_dir,
        environ=environ,
    )
    _, notes = shebang(text)
    spec["command"] = batch_command(text, script_name=script_name, args=args, shims=shims)
    return SbatchResult(spec, warnings + notes + more)


def looks_like_batch_script(head: str) -> bool:
    """Whether a file's first bytes (as text) are a Slurm batch script: ``#SBATCH`` directives."""
    lines, _ = directive_lines(head)
    return bool(lines)


def sync_env(spec: dict[str, Any]) -> dict[str, Any]:
    """``SLURM_CPUS_PER_TASK`` again after flags changed ``resources.cpu`` (``yard submit --cpu 8
    script.sh``): the CPUs per node over the tasks per node, when that is a whole number."""
    env = spec.get("env")
    resources = spec.get("resources")
    if not isinstance(env, dict) or "SLURM_CPUS_PER_TASK" not in env or not isinstance(resources, dict):
        return spec
    try:
        per_node = int(env.get("SLURM_NTASKS_PER_NODE", "1"))
        cpu = Fraction(str(resources.get("cpu", 1)))
    except (ValueError, ZeroDivisionError):
        return spec
    per_task = cpu / max(per_node, 1)
    if per_task.denominator == 1 and per_task >= 1:
        env["SLURM_CPUS_PER_TASK"] = str(per_task.numerator)
    return spec


def overlay(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over``'s fields laid on ``base``'s (a JobSpec file under a script's directives): the
    sections ``resources``, ``env`` and ``retry`` merge key by key, other fields replace."""
    out = dict(base)
    for key, value in over.items():
        if (
            key in ("resources", "env", "retry")
            and isinstance(out.get(key), dict)
            and isinstance(value, dict)
        ):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


__all__ = [
    "DEFAULT_QOS",
    "MAX_SCRIPT_BYTES",
    "REQUEUE_ATTEMPTS",
    "SbatchResult",
    "array_task_ids",
    "batch_command",
    "directive_lines",
    "job_name",
    "looks_like_batch_script",
    "option_arity",
    "overlay",
    "parse_array",
    "parse_dependency",
    "parse_directives",
    "parse_gpus",
    "parse_gres",
    "parse_memory",
    "parse_script",
    "parse_time",
    "script_problem",
    "shebang",
    "sync_env",
]
