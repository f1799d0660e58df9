"""A whole batch script as JobSpec fields: its directives (with sbatch's command-line options laid
over them) and the command that runs it; and the merging of such fields with others. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

from trainyard.model.slurm.build import build_spec
from trainyard.model.slurm.options import Given, directive_lines, read_options, split_directive
from trainyard.model.slurm.state import State, apply
from trainyard.model.slurm.wrapper import batch_command, shebang

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


class SbatchResult(NamedTuple):
    spec: dict[str, Any]
    """JobSpec fields, as a JSON-able mapping (it may hold ``array`` and ``depends_on``)."""
    warnings: list[str]
    """What was ignored or changed, each naming its line (``line 7:``) or ``command line:``."""


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
    given: list[Given] = []
    for number, rest in lines:
        given.extend(read_options(split_directive(number, rest, warnings), f"line {number}", warnings))
    given.extend(read_options(list(options), "command line", warnings))
    st = State()
    for g in given:
        apply(st, g, warnings, qos_table, environ or {})
    spec = build_spec(st, script_name, submit_dir, warnings)
    return SbatchResult(spec, sorted(warnings + notes, key=_line_order))


def _line_order(warning: str) -> int:
    # Warnings in the order of the script's lines; the command line's after them.
    m = re.match(r"line (\d+):", warning)
    if m:
        return int(m.group(1))
    return 1 << 30 if warning.startswith("command line:") else 0


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
