"""Assembling a JobSpec for `yard submit` from a YAML file and command-line flags."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainyard.client.sdk import ValidationFailed
from trainyard.model.arrays import parse_array_flag


class SpecLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. PyYAML's YAML 1.1 reads the key `on` (as in
    `retry: {on: [infra]}`) and words like `no` or `off` as booleans."""


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_spec_yaml(text: str) -> Any:
    return yaml.load(text, Loader=SpecLoader)


@dataclass(frozen=True)
class SubmitFlags:
    """What `yard submit` was given on the command line; None means "not given, keep the file's"."""

    command: Sequence[str] = ()
    name: str | None = None
    kind: str | None = None
    image: str | None = None
    cpu: float | None = None
    memory: str | None = None
    gpu: int | None = None
    gpu_type: str | None = None
    pool: str | None = None
    team: str | None = None
    priority: str | None = None
    max_runtime: str | None = None
    retries: int | None = None
    env: Sequence[str] = ()
    artifacts: Sequence[str] = ()
    secrets: Sequence[str] = ()
    replicas: int | None = None
    array: str | None = None
    """``--array 0-199%16``: Slurm's syntax, ``%N`` the parallelism."""
    after_ok: Sequence[str] = ()
    after_any: Sequence[str] = ()
    after_not_ok: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def load_spec_file(path: Path) -> dict[str, Any]:
    """The mapping in a job YAML file; ValidationFailed naming the file when it is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationFailed(0, "bad_file", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = load_spec_yaml(text)
    except yaml.YAMLError as exc:
        raise ValidationFailed(0, "bad_file", f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationFailed(
            0, "bad_file", f"{path} must hold a mapping of JobSpec fields, not a {type(data).__name__}"
        )
    return data


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    bad = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            bad.append({"field": "env", "message": f"{pair!r} must look like KEY=VALUE"})
            continue
        env[key] = value
    if bad:
        raise ValidationFailed(0, "bad_flag", "invalid --env", bad)
    return env


def merge_spec(base: dict[str, Any], flags: SubmitFlags) -> dict[str, Any]:
    """The file's spec with every given flag laid over it; --env adds keys, other flags replace."""
    spec = dict(base)
    if flags.command:
        spec["command"] = list(flags.command)
    for key in ("name", "kind", "image", "pool", "team", "priority", "max_runtime"):
        value = getattr(flags, key)
        if value is not None:
            spec[key] = value
    given = {
        k: getattr(flags, k) for k in ("cpu", "memory", "gpu", "gpu_type") if getattr(flags, k) is not None
    }
    if given:
        spec["resources"] = {**_mapping(spec.get("resources")), **given}
    if flags.retries is not None:
        retry = _mapping(spec.get("retry"))
        # N retries means N+1 tries, and a user asking for retries means their own failures too.
        retry["max_attempts"] = flags.retries + 1
        retry["on"] = ["infra", "failed"]
        spec["retry"] = retry
    if flags.env:
        env = _mapping(spec.get("env"))
        env.update(parse_env(flags.env))
        spec["env"] = env
    if flags.artifacts:
        spec["artifacts"] = list(flags.artifacts)
    if flags.replicas is not None:
        spec["replicas"] = flags.replicas
    if flags.secrets:
        spec["secrets"] = list(dict.fromkeys([*(spec.get("secrets") or ()), *flags.secrets]))
    if flags.array is not None:
        try:
            spec["array"] = parse_array_flag(flags.array)
        except ValueError as exc:
            detail = [{"field": "array", "message": str(exc)}]
            raise ValidationFailed(0, "bad_flag", f"--array: {exc}", detail) from None
    deps = [
        {"job": job, "condition": condition}
        for jobs, condition in (
            (flags.after_ok, "succeeded"),
            (flags.after_not_ok, "failed"),
            (flags.after_any, "finished"),
        )
        for job in jobs
    ]
    if deps:
        # Added to the file's (or the script's #SBATCH --dependency) list; a job named again takes
        # the flag's condition.
        named = {d["job"] for d in deps}
        listed: list[Any] = list(spec.get("depends_on") or ())
        kept = [d for d in listed if not (isinstance(d, dict) and d.get("job") in named)]
        spec["depends_on"] = [*kept, *deps]
    spec.update(flags.extra)
    return spec


def _mapping(value: Any) -> dict[str, Any]:
    # A malformed section in the file is replaced by the flags rather than crashing the merge.
    return dict(value) if isinstance(value, dict) else {}
