"""The JobSpec fields that the gathered directives (a ``State``) ask for: name, gang size, resources
per node, time limit, pool, priority, retry policy, working directory, array, dependencies and the
``SLURM_*`` variables known at submit time; with warnings for what is changed or dropped. Pure: no I/O."""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any

from trainyard.model.slurm.state import State
from trainyard.model.slurm.values import array_task_ids, duration_text, job_name, memory_text
from trainyard.model.spec import MAX_RUNTIME_LIMIT, cwd_problem

REQUEUE_ATTEMPTS = 5
"""``--requeue``: tries after infrastructure failures (a lost worker), as Slurm's MaxBatchRequeue (5)."""

_GPU_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


def build_spec(st: State, script_name: str, submit_dir: str | None, warnings: list[str]) -> dict[str, Any]:
    """The JobSpec fields (no command) for ``st``; what is changed or dropped goes to ``warnings``."""
    spec: dict[str, Any] = {"name": _name(st, script_name, warnings)}
    nodes, per_node = _nodes_and_tasks(st, warnings)
    if nodes > 1:
        spec["replicas"] = nodes
    resources = _resources(st, nodes, per_node, warnings)
    if resources:
        spec["resources"] = resources
    _set_scheduling(spec, st, warnings)
    cwd = _cwd(st, submit_dir, warnings)
    if cwd is not None:
        spec["cwd"] = cwd
    _set_array_and_dependencies(spec, st)
    for stream, pattern in st.outputs.items():
        warnings.append(
            f"{st.where[stream]}: --{stream}={pattern}: the job's output and errors are kept in its log "
            "(`yard logs ID`); no file is written"
        )
    spec["env"] = _env(st, per_node, submit_dir)
    return spec


def _name(st: State, script_name: str, warnings: list[str]) -> str:
    # --job-name, or the script's file name; either made a JobSpec name.
    name = job_name(st.name if st.name is not None else posixpath.basename(script_name))
    if st.name is not None and name != st.name:
        warnings.append(f"{st.where['job-name']}: the job name {st.name!r} is used as {name!r}")
    return name


def _nodes_and_tasks(st: State, warnings: list[str]) -> tuple[int, int]:
    # Nodes and tasks: a gang of N replicas with T tasks each → (N, T).
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
        warnings.append(
            f"{st.where['nodes'] if 'nodes' in st.where else st.where.get('ntasks', 'directives')}: "
            f"the job is a gang of {nodes} replicas, one per node; each runs the whole script "
            "(commands outside srun run once per node; SLURM_NODEID tells them apart)"
        )
    return nodes, per_node


def _gpus_per_node(st: State, nodes: int, per_node: int, warnings: list[str]) -> tuple[int, str | None]:
    # --gres, --gpus-per-node, --gpus-per-task or --gpus → (GPUs per node, GPU type).
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
    return gpus_per_node, gpu_type


def _resources(st: State, nodes: int, per_node: int, warnings: list[str]) -> dict[str, Any]:
    # The resources of one node (one replica): CPUs, memory, GPUs.
    gpus_per_node, gpu_type = _gpus_per_node(st, nodes, per_node, warnings)
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
    memory = _memory(st, cpu, gpus_per_node, warnings)
    if memory is not None:
        resources["memory"] = memory
    if gpus_per_node:
        resources["gpu"] = gpus_per_node
        if gpu_type:
            resources["gpu_type"] = gpu_type
    if "memory" in resources:
        resources["memory"] = memory_text(resources["memory"])
    return resources


def _memory(st: State, cpu: int, gpus_per_node: int, warnings: list[str]) -> int | None:
    # Bytes per node from --mem, --mem-per-cpu or --mem-per-gpu; None for the default.
    if st.memory is None:
        return None
    kind, size = st.memory
    where = st.where["mem" if kind == "node" else f"mem-per-{kind}"]
    if size == 0:
        warnings.append(
            f"{where}: --mem=0 (all of a node's memory) cannot be asked for; the job gets the default "
            "memory unless a size is given (yard sbatch --mem=200G SCRIPT)"
        )
    elif kind == "node":
        return size
    elif kind == "cpu":
        return size * cpu
    elif gpus_per_node:
        return size * gpus_per_node
    else:
        warnings.append(f"{where}: --mem-per-gpu without GPUs is ignored")
    return None


def _set_scheduling(spec: dict[str, Any], st: State, warnings: list[str]) -> None:
    # The time limit, pool, priority and retry policy.
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
            spec["max_runtime"] = duration_text(seconds)
    if st.partition is not None:
        spec["pool"] = st.partition
    if st.qos is not None:
        spec["priority"] = st.qos
    if st.requeue is not None:
        spec["retry"] = {"max_attempts": REQUEUE_ATTEMPTS if st.requeue else 1, "on": ["infra"]}


def _cwd(st: State, submit_dir: str | None, warnings: list[str]) -> str | None:
    # --chdir, a relative one inside the submit directory; None when not given or not usable.
    if st.chdir is None:
        return None
    cwd = st.chdir
    if not cwd.startswith("/") and submit_dir is not None:
        cwd = posixpath.normpath(posixpath.join(submit_dir, cwd))
    problem = cwd_problem(cwd)
    if problem is not None:
        warnings.append(f"{st.where['chdir']}: --chdir={st.chdir} is ignored: a working directory {problem}")
        return None
    return cwd


def _set_array_and_dependencies(spec: dict[str, Any], st: State) -> None:
    # --array (and the SLURM_ARRAY_TASK_* variables every task shares) and --dependency.
    if st.array is not None:
        spec["array"] = st.array
        ids = array_task_ids(st.array["indices"])
        st.env.setdefault("SLURM_ARRAY_TASK_COUNT", str(len(ids)))
        st.env.setdefault("SLURM_ARRAY_TASK_MIN", str(min(ids)))
        st.env.setdefault("SLURM_ARRAY_TASK_MAX", str(max(ids)))
    if st.depends_on is not None:
        spec["depends_on"] = st.depends_on


def _env(st: State, per_node: int, submit_dir: str | None) -> dict[str, str]:
    # --export's variables and the SLURM_* ones known at submit time (the wrapper sets the rest).
    env = dict(st.env)
    env["SLURM_NTASKS_PER_NODE"] = str(per_node)
    if st.cpus_per_task is not None:
        env["SLURM_CPUS_PER_TASK"] = str(st.cpus_per_task)
    if st.partition is not None:
        env["SLURM_JOB_PARTITION"] = st.partition
    if submit_dir is not None:
        env.setdefault("SLURM_SUBMIT_DIR", submit_dir)
    return env
