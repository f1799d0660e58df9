"""What the applied options ask for, gathered one option at a time: a ``State`` that the spec is
built from (``build``). Each family of directives has a small handler, found by name in ``HANDLERS``;
a value a handler cannot use is a warning, never an error. Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from trainyard.model.slurm.options import Given
from trainyard.model.slurm.values import (
    parse_array,
    parse_dependency,
    parse_gpus,
    parse_gres,
    parse_memory,
    parse_time,
    positive_int,
)

_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class State:
    """The directives and options read so far; a later one of a kind replaces an earlier one."""

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
    """Where each applied option was last given (``line 7`` or ``command line``), by its name."""


@dataclass(frozen=True)
class _Directive:
    """One applied option as its handler sees it: the value, the state it sets, where it was given."""

    st: State
    value: str
    where: str
    warnings: list[str]
    qos_table: Mapping[str, str]
    environ: Mapping[str, str]

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.where}: {message}")


# -- the handlers, one per family of directives --------------------------------------------------


def _job_name(d: _Directive) -> None:
    d.st.name = d.value


def _cpus_per_task(d: _Directive) -> None:
    d.st.cpus_per_task = positive_int(d.value, "--cpus-per-task")


def _cpus_per_gpu(d: _Directive) -> None:
    d.st.cpus_per_gpu = positive_int(d.value, "--cpus-per-gpu")


def _memory(kind: str, d: _Directive) -> None:
    d.st.memory = (kind, parse_memory(d.value))


def _gres(d: _Directive) -> None:
    n, kind, notes = parse_gres(d.value)
    for note in notes:
        d.warn(note)
    d.st.gpus = ("node", n, kind)


def _gpus(kind: str, d: _Directive) -> None:
    n, gpu_type, notes = parse_gpus(d.value)
    for note in notes:
        d.warn(note)
    d.st.gpus = (kind, n, gpu_type)


def _nodes(d: _Directive) -> None:
    lo, dash, _ = d.value.partition("-")
    d.st.nodes = positive_int(lo, "--nodes")
    if dash:
        d.warn(f"--nodes={d.value}: a range of node counts is not supported; the job is a gang of {lo}")


def _ntasks(d: _Directive) -> None:
    d.st.ntasks = positive_int(d.value, "--ntasks")


def _ntasks_per_node(d: _Directive) -> None:
    d.st.ntasks_per_node = positive_int(d.value, "--ntasks-per-node")


def _time(d: _Directive) -> None:
    d.st.time = (parse_time(d.value), d.value)


def _partition(d: _Directive) -> None:
    first, comma, _ = d.value.partition(",")
    if comma:
        d.warn(f"--partition={d.value}: a job goes to one pool; {first!r} is used")
    pool = first.strip().lower()
    if not _LABEL_RE.fullmatch(pool):
        raise ValueError(
            f"partition {first!r} cannot be a pool name (lowercase letters, digits, '.', '_', '-')"
        )
    d.st.partition = pool


def _qos(d: _Directive) -> None:
    priority = d.qos_table.get(d.value.strip().lower())
    if priority is None:
        known = ", ".join(sorted(d.qos_table))
        raise ValueError(f"--qos={d.value} is not in the QOS table ({known}); the priority stays normal")
    d.st.qos = priority


def _array(d: _Directive) -> None:
    d.st.array = parse_array(d.value)


def _dependency(d: _Directive) -> None:
    deps, notes = parse_dependency(d.value)
    for note in notes:
        d.warn(note)
    d.st.depends_on = deps or None


def _requeue(on: bool, d: _Directive) -> None:
    d.st.requeue = on


def _output(stream: str, d: _Directive) -> None:
    d.st.outputs[stream] = d.value


def _chdir(d: _Directive) -> None:
    d.st.chdir = d.value


def _export(d: _Directive) -> None:
    for item in (i.strip() for i in d.value.split(",")):
        key, eq, val = item.partition("=")
        if not item or (not eq and key.upper() in ("ALL", "NIL")):
            continue
        if not eq and key.upper() == "NONE":
            d.warn("--export=NONE is not applied: a job's environment is the worker's plus the spec's env")
            continue
        if not _ENV_KEY_RE.fullmatch(key) or key.startswith("TRAINYARD_"):
            d.warn(f"--export: {key!r} is not a variable a job may be given; ignored")
            continue
        if eq:
            d.st.env[key] = val
        elif key in d.environ:
            d.st.env[key] = d.environ[key]
        else:
            d.warn(f"--export: {key} is not set here; ignored")


HANDLERS: Mapping[str, Callable[[_Directive], None]] = {
    "job-name": _job_name,
    "cpus-per-task": _cpus_per_task,
    "cpus-per-gpu": _cpus_per_gpu,
    "mem": partial(_memory, "node"),
    "mem-per-cpu": partial(_memory, "cpu"),
    "mem-per-gpu": partial(_memory, "gpu"),
    "gres": _gres,
    "gpus": partial(_gpus, "job"),
    "gpus-per-node": partial(_gpus, "node"),
    "gpus-per-task": partial(_gpus, "task"),
    "nodes": _nodes,
    "ntasks": _ntasks,
    "ntasks-per-node": _ntasks_per_node,
    "time": _time,
    "partition": _partition,
    "qos": _qos,
    "array": _array,
    "dependency": _dependency,
    "requeue": partial(_requeue, True),
    "no-requeue": partial(_requeue, False),
    "output": partial(_output, "output"),
    "error": partial(_output, "error"),
    "chdir": _chdir,
    "export": _export,
}
"""The handler of each applied option (those of ``options.OPTIONS`` without a note), by its name."""


def apply(
    st: State,
    g: Given,
    warnings: list[str],
    qos_table: Mapping[str, str],
    environ: Mapping[str, str],
) -> None:
    """One given option into ``st``: an ignored one is its note (a warning), an applied one its
    handler's doing; a value the handler refuses is a warning and leaves ``st`` as it was."""
    d = _Directive(st, g.value or "", g.where, warnings, qos_table, environ)
    if g.option.note is not None:
        if g.option.note:
            d.warn(f"{g.text} {g.option.note}")
        return
    try:
        HANDLERS[g.option.name](d)
    except ValueError as exc:
        d.warn(f"{g.text} is ignored: {exc}")
        return
    st.where[g.option.name] = g.where
