"""sbatch's options: the table of those Trainyard knows (applied, or ignored with a reason), and the
reading of ``#SBATCH`` lines and command-line words into them. Pure: no I/O."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Arity = Literal["none", "required", "optional"]


@dataclass(frozen=True)
class Option:
    name: str
    short: str | None
    arity: Arity
    note: str | None = None
    """Why a known option is ignored; None for the options that are applied."""


_IGNORED = "has no counterpart in Trainyard and is ignored"
_PLACEMENT = "is ignored: the scheduler places jobs; --pool (partition) and --gpu-type choose where"
_NO_MAIL = "is ignored: Trainyard sends no mail (`yard logs -f ID` follows a job)"
_SIGNAL = "is ignored: a job being stopped (preempted, cancelled, timed out) gets SIGTERM and a grace period"
_EXCLUSIVE = "is ignored: a job gets the CPUs, memory and GPUs it asks for, and only those"

OPTIONS: tuple[Option, ...] = (
    # Applied.
    Option("job-name", "J", "required"),
    Option("cpus-per-task", "c", "required"),
    Option("cpus-per-gpu", None, "required"),
    Option("mem", None, "required"),
    Option("mem-per-cpu", None, "required"),
    Option("mem-per-gpu", None, "required"),
    Option("gres", None, "required"),
    Option("gpus", "G", "required"),
    Option("gpus-per-node", None, "required"),
    Option("gpus-per-task", None, "required"),
    Option("nodes", "N", "required"),
    Option("ntasks", "n", "required"),
    Option("ntasks-per-node", None, "required"),
    Option("time", "t", "required"),
    Option("partition", "p", "required"),
    Option("qos", "q", "required"),
    Option("array", "a", "required"),
    Option("dependency", "d", "required"),
    Option("requeue", None, "none"),
    Option("no-requeue", None, "none"),
    Option("output", "o", "required"),
    Option("error", "e", "required"),
    Option("chdir", "D", "required"),
    Option("export", None, "required"),
    # Known, ignored, with a reason.
    Option("account", "A", "required", "is ignored: a job is charged to your team (--team picks another)"),
    Option("mail-type", None, "required", _NO_MAIL),
    Option("mail-user", None, "required", _NO_MAIL),
    Option("signal", None, "required", _SIGNAL),
    Option("constraint", "C", "required", _PLACEMENT),
    Option("nodelist", "w", "required", _PLACEMENT),
    Option("exclude", "x", "required", _PLACEMENT),
    Option("exclusive", None, "optional", _EXCLUSIVE),
    Option("oversubscribe", "s", "none", _IGNORED),
    Option("time-min", None, "required", _IGNORED),
    Option("begin", "b", "required", _IGNORED),
    Option("deadline", None, "required", _IGNORED),
    Option("hold", "H", "none", _IGNORED),
    Option("input", "i", "required", "is ignored: a job's standard input is empty"),
    Option("open-mode", None, "required", "is ignored: the job's output is its log"),
    Option("wait", "W", "none", "is ignored: `yard logs -f ID` waits for a job and exits with its status"),
    Option("parsable", None, "none", ""),
    Option("wrap", None, "required", "is only read on yard sbatch's command line"),
    Option("comment", None, "required", _IGNORED),
    Option("reservation", None, "required", _IGNORED),
    Option("licenses", "L", "required", _IGNORED),
    Option("clusters", "M", "required", _IGNORED),
    Option("cluster-constraint", None, "required", _IGNORED),
    Option("hint", None, "required", _IGNORED),
    Option("distribution", "m", "required", _IGNORED),
    Option("tmp", None, "required", _IGNORED),
    Option("mincpus", None, "required", _IGNORED),
    Option("ntasks-per-core", None, "required", _IGNORED),
    Option("ntasks-per-socket", None, "required", _IGNORED),
    Option("ntasks-per-gpu", None, "required", _IGNORED),
    Option("sockets-per-node", None, "required", _IGNORED),
    Option("cores-per-socket", None, "required", _IGNORED),
    Option("threads-per-core", None, "required", _IGNORED),
    Option("extra-node-info", "B", "required", _IGNORED),
    Option("core-spec", "S", "required", _IGNORED),
    Option("thread-spec", None, "required", _IGNORED),
    Option("gres-flags", None, "required", _IGNORED),
    Option("gpu-bind", None, "required", _IGNORED),
    Option("gpu-freq", None, "required", _IGNORED),
    Option("gpus-per-socket", None, "required", _IGNORED),
    Option("cpu-freq", None, "required", _IGNORED),
    Option("mem-bind", None, "required", _IGNORED),
    Option("tres-per-task", None, "required", _IGNORED),
    Option("tres-bind", None, "required", _IGNORED),
    Option("network", None, "required", _IGNORED),
    Option("switches", None, "required", _IGNORED),
    Option("power", None, "required", _IGNORED),
    Option("prefer", None, "required", _IGNORED),
    Option("priority", None, "required", "is ignored: --qos (or yard's --priority) sets the priority"),
    Option("nice", None, "optional", "is ignored: --qos (or yard's --priority) sets the priority"),
    Option("profile", None, "required", _IGNORED),
    Option("propagate", None, "optional", _IGNORED),
    Option("acctg-freq", None, "required", _IGNORED),
    Option("wckey", None, "required", _IGNORED),
    Option("mcs-label", None, "required", _IGNORED),
    Option("bb", None, "required", _IGNORED),
    Option("bbf", None, "required", _IGNORED),
    Option("container", None, "required", "is ignored: yard's --image runs a job in a container image"),
    Option("container-id", None, "required", _IGNORED),
    Option("delay-boot", None, "required", _IGNORED),
    Option("reboot", None, "none", _IGNORED),
    Option("contiguous", None, "none", _IGNORED),
    Option("spread-job", None, "none", _IGNORED),
    Option("use-min-nodes", None, "none", _IGNORED),
    Option("overcommit", "O", "none", _IGNORED),
    Option("no-kill", "k", "optional", _IGNORED),
    Option("kill-on-invalid-dep", None, "required", _IGNORED),
    Option("get-user-env", None, "optional", _IGNORED),
    Option("export-file", None, "required", _IGNORED),
    Option("nodefile", "F", "required", _IGNORED),
    Option("uid", None, "required", _IGNORED),
    Option("gid", None, "required", _IGNORED),
    Option("test-only", None, "none", _IGNORED),
    Option("ignore-pbs", None, "none", _IGNORED),
    Option("quiet", "Q", "none", ""),
    Option("verbose", "v", "none", ""),
    Option("immediate", "I", "optional", _IGNORED),
    Option("wait-all-nodes", None, "required", _IGNORED),
    Option("extra", None, "required", _IGNORED),
    Option("resv-ports", None, "optional", _IGNORED),
)  # fmt: skip
_LONG = {o.name: o for o in OPTIONS}
_SHORT = {o.short: o for o in OPTIONS if o.short}


@dataclass(frozen=True)
class Given:
    """One option as given: on a directive's line or on the command line."""

    option: Option
    value: str | None
    where: str
    text: str


def _lookup_long(name: str) -> Option | None:
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


def read_options(tokens: Sequence[str], where: str, warnings: list[str]) -> list[Given]:
    """The options among ``tokens`` (one directive's words, or sbatch's command line) as getopt_long
    reads them; what is not a known option, or lacks its value, is a warning naming ``where``."""
    given: list[Given] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        opt: Option | None = None
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
        given.append(Given(opt, value, where, text))
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


def split_directive(number: int, rest: str, warnings: list[str]) -> list[str]:
    """The words of directive line ``number`` (``rest``: after ``#SBATCH``), as a shell splits them."""
    try:
        # A '#' that starts a word ends the directive: `#SBATCH -t 10  # ten minutes`.
        return shlex.split(rest, comments=True)
    except ValueError as exc:
        warnings.append(f"line {number}: {exc}; read as plain words")
        return rest.split("#", 1)[0].split()
