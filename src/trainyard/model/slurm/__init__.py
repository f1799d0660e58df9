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

The package, by concern: ``options`` (sbatch's option table; ``#SBATCH`` lines and command-line words
read into options), ``values`` (time limits, sizes, GPU counts, arrays, dependencies), ``state`` (one
handler per family of directives, gathering what they ask for), ``build`` (the JobSpec fields from
that), ``wrapper`` (the job's command) and ``script`` (a whole script; merging specs).
"""

from __future__ import annotations

from trainyard.model.slurm.build import REQUEUE_ATTEMPTS
from trainyard.model.slurm.options import directive_lines, option_arity
from trainyard.model.slurm.script import (
    DEFAULT_QOS,
    SbatchResult,
    looks_like_batch_script,
    overlay,
    parse_directives,
    parse_script,
    sync_env,
)
from trainyard.model.slurm.values import (
    MAX_ARRAY_TASKS,
    array_task_ids,
    job_name,
    parse_array,
    parse_dependency,
    parse_gpus,
    parse_gres,
    parse_memory,
    parse_time,
)
from trainyard.model.slurm.wrapper import MAX_SCRIPT_BYTES, batch_command, script_problem, shebang

__all__ = [
    "DEFAULT_QOS",
    "MAX_ARRAY_TASKS",
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
