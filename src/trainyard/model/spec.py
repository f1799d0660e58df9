"""The JobSpec: what a user asks to run. Validated strictly; unknown fields are refused."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from trainyard.model import jsontext
from trainyard.model.arrays import MAX_ARRAY_TASKS, Condition, normalize_indices, parse_indices
from trainyard.model.quantity import format_duration, format_memory, parse_duration, parse_memory
from trainyard.model.states import Priority

MAX_RUNTIME_LIMIT = 24 * 3600.0
MAX_CPU = 1024.0
MAX_MEMORY = 16 * 1024**4
MAX_GPU = 64
MAX_REPLICAS = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RETRY_ON_RE = re.compile(r"^(infra|timeout|oom|failed|exit:-?\d{1,3})$")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_JOB_ID_RE = re.compile(r"^j[0-9a-z]{1,31}(-[0-9]{1,4})?$")
MAX_DEPENDENCIES = 64


CWD_SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
    "/proc", "/run", "/sbin", "/sys", "/usr", "/var",
)  # fmt: skip
"""A job's ``cwd`` is never one of these (or inside one): the node's own files are no submit directory."""
MAX_CWD = 4096


def cwd_problem(cwd: str) -> str | None:
    """Why ``cwd`` cannot be a job's working directory, or None. Absolute: a normalized path outside
    the system directories (a worker uses it only inside the roots it shares, ``--allow-cwd``);
    relative: a directory inside the job's own working directory (its bundle), without ``..``."""
    if len(cwd) > MAX_CWD:
        return f"must be at most {MAX_CWD} characters"
    if not cwd.isprintable():
        return "must not contain control characters"
    if "\\" in cwd:
        return "must use / as its separator"
    parts = cwd.split("/")
    if ".." in parts:
        return "must not contain '..'"
    if not cwd.startswith("/"):
        return None if cwd.strip() else "must not be blank"
    cwd = cwd.rstrip("/") or "/"
    parts = cwd.split("/")
    if cwd == "/" or "." in parts[1:] or "" in parts[1:]:
        return "must be a normalized absolute directory other than /" if cwd != "/" else "must not be /"
    for d in CWD_SYSTEM_DIRS:
        if cwd == d or cwd.startswith(d + "/"):
            return f"must not be a system directory ({d})"
    return None


def _has_surrogate(value: Any) -> bool:
    """Whether a lone UTF-16 surrogate (JSON's "\\ud800") hides in ``value``'s text, keys included:
    such a string cannot be encoded to UTF-8, so the database or protobuf would fail on it later."""
    try:  # the fast answer (a JobSpec is validated on every submission): orjson encodes to UTF-8
        orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=repr)
        return False
    except TypeError:  # a surrogate, or something orjson does not take (a huge int): walk it
        pass
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE_RE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    cpu: float = Field(default=1.0, description="CPU cores (fractions allowed)")
    memory: int = Field(default=512 * 1024**2, description="bytes; accepts 512Mi, 16Gi, 2G")
    gpu: int = Field(default=0, description="whole GPUs")
    gpu_type: str | None = Field(default=None, description="e.g. a100, h100; any type when unset")

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError("cpu must be a number of cores such as 1, 0.5 or 4")
        try:
            cpu = float(v)
        except ValueError:
            raise ValueError(f"cpu {v!r} is not a number of cores") from None
        if not (0 < cpu <= MAX_CPU):
            raise ValueError(f"cpu must be more than 0 and at most {MAX_CPU:g}")
        return cpu

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int:
        if not isinstance(v, int | float | str):
            raise ValueError("memory must be a size such as 512Mi or 16Gi")
        n = parse_memory(v)
        if n <= 0 or n > MAX_MEMORY:
            raise ValueError("memory must be more than 0 and at most 16Ti")
        return n

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: int) -> int:
        if not (0 <= v <= MAX_GPU):
            raise ValueError(f"gpu must be between 0 and {MAX_GPU}")
        return v

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", v):
            raise ValueError("gpu_type must be a short lowercase label such as a100")
        return v

    @field_serializer("memory")
    def _ser_memory(self, v: int) -> str:
        return format_memory(v)


class Retry(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: float = Field(default=0.0, description="seconds before the first retry; doubles each time")
    max_backoff: float = Field(default=600.0)
    on: tuple[str, ...] = Field(default=("infra",), description="infra, timeout, oom, failed, exit:N")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean True; DESIGN.md's JobSpec writes it bare.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data

    @field_validator("backoff", "max_backoff", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        if not isinstance(v, int | float | str):
            raise ValueError("a duration must look like 30s, 10m or 2h")
        d = parse_duration(v)
        if d > 86400:
            raise ValueError("backoff must be at most 24h")
        return d

    @field_validator("on")
    @classmethod
    def _on(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            if not _RETRY_ON_RE.match(item):
                raise ValueError(f"retry.on item {item!r} must be infra, timeout, oom, failed or exit:N")
        return v

    @field_serializer("backoff", "max_backoff")
    def _ser_dur(self, v: float) -> str:
        return format_duration(v)


class DataSpec(_Strict):
    region: str | None = None
    uris: tuple[str, ...] = ()
    require_region: bool = False


class ArraySpec(_Strict):
    """A job array (a sweep): one task per index, each a job of its own."""

    indices: str = Field(
        description="Slurm's syntax: 0-199, 1,3,5-9:2 (a step); at most 10,000 tasks, indices 0-9999"
    )
    parallelism: int | None = Field(
        default=None, ge=1, le=MAX_ARRAY_TASKS, description="how many tasks may run at once (none: no cap)"
    )

    @field_validator("indices", mode="before")
    @classmethod
    def _indices(cls, v: Any) -> str:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str):
            raise ValueError("indices must be a text such as 0-199, 1,3,5 or 0-15:4")
        parse_indices(v)
        return normalize_indices(v)

    def task_indices(self) -> list[int]:
        """Every index, ascending."""
        return parse_indices(self.indices)


class Dependency(_Strict):
    """A job this one waits for (a pipeline step): it starts once ``job`` meets ``condition``, and
    ends FAILED if it never can. An array as ``job``: every one of its tasks must meet it."""

    job: str = Field(description="the id of a job of your team")
    condition: Condition = Field(
        default="succeeded",
        description="succeeded (Slurm's afterok), failed (afternotok: FAILED, TIMED_OUT or CANCELLED) "
        "or finished (afterany)",
    )

    @field_validator("job")
    @classmethod
    def _job(cls, v: str) -> str:
        if not _JOB_ID_RE.match(v):
            raise ValueError(f"{v!r} is not a job id")
        return v


class JobSpec(_Strict):
    name: str | None = Field(default=None, description="a label; not unique")
    kind: Literal["train", "eval"] = "train"
    command: tuple[str, ...] = Field(description="argv; nothing goes through a shell unless you write one")
    image: str | None = None
    workdir: str | None = Field(
        default=None, description="an uploaded bundle's key (`yard submit --workdir`)"
    )
    cwd: str | None = Field(
        default=None,
        description="directory the command runs in: relative, inside the job's bundle; absolute, a "
        "directory on a root the worker shares (`yard worker --allow-cwd`, Slurm's submit-directory "
        "convention; elsewhere the job runs in its own directory); never /, '..' or a system directory. "
        "`yard submit` sets it to the caller's directory",
    )
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    pool: str | None = None
    team: str | None = None
    priority: Priority = Priority.NORMAL
    max_runtime: float = Field(default=MAX_RUNTIME_LIMIT, description="seconds; accepts 30m, 2h, 24h")
    retry: Retry = Field(default_factory=Retry)
    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    preemptible: bool = False
    network: bool = Field(
        default=True,
        description="false: the job runs without a network (loopback only) on workers that sandbox jobs",
    )
    data: DataSpec | None = None
    artifacts: tuple[str, ...] = ()
    secrets: tuple[str, ...] = Field(
        default=(),
        description="names of the team's secrets (`yard secret set NAME`), given to the job as environment "
        "variables of the same names at run time; never stored in the spec, masked as *** in its logs",
    )
    array: ArraySpec | None = Field(
        default=None,
        description="a job array: one task per index, each a job with TRAINYARD_ARRAY_INDEX set and "
        "'{index}' in its command replaced by the index",
    )
    depends_on: tuple[Dependency, ...] = Field(
        default=(), description="jobs this one waits for; it ends FAILED if one can never be met"
    )

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # One walk over the whole input (nested resources, env, data included), before any field.
        if isinstance(data, dict) and _has_surrogate(data):
            for key, value in data.items():
                if _has_surrogate(key) or _has_surrogate(value):
                    field = _SURROGATE_RE.sub("?", str(key))
                    raise ValueError(f"{field} must be valid Unicode text: a lone surrogate (\\ud800) is not")
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
            raise ValueError(
                "name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, v: str | None) -> str | None:
        if v is None:
            return v
        problem = cwd_problem(v)
        if problem is not None:
            raise ValueError(f"cwd {problem}")
        return v.rstrip("/") if v.startswith("/") else v

    @field_validator("command")
    @classmethod
    def _command(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or not v[0].strip():
            raise ValueError("command must be a non-empty list of arguments")
        if len(v) > 4096 or sum(len(a) for a in v) > 256 * 1024:
            raise ValueError("command is too long")
        if any("\x00" in a for a in v):
            raise ValueError("command arguments must not contain NUL bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 512:
            raise ValueError("at most 512 environment variables")
        for k, val in v.items():
            if not _ENV_KEY_RE.match(k):
                raise ValueError(f"environment variable name {k!r} is not valid")
            if k.startswith("TRAINYARD_"):
                raise ValueError(f"environment variable {k!r} is reserved for the platform")
            if "\x00" in val:
                raise ValueError(f"environment variable {k!r} must not contain NUL bytes")
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) > 64:
            raise ValueError("at most 64 secrets")
        for name in v:
            check_secret_name(name)
        if len(set(v)) != len(v):
            raise ValueError("a secret is named twice")
        return v

    @field_validator("pool", "team")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", v):
            raise ValueError("must be a lowercase label (letters, digits, '.', '_', '-')")
        return v

    @field_validator("max_runtime", mode="before")
    @classmethod
    def _max_runtime(cls, v: Any) -> float:
        if not isinstance(v, int | float | str) or isinstance(v, bool):
            raise ValueError("max_runtime must look like 30m, 2h or 24h")
        d = parse_duration(v)
        if d <= 0 or d > MAX_RUNTIME_LIMIT:
            raise ValueError("max_runtime must be more than 0 and at most 24h")
        return d

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not p or p.startswith("/") or ".." in p.split("/"):
                raise ValueError(f"artifact path {p!r} must be relative to the job's directory, without '..'")
        return v

    @model_validator(mode="after")
    def _gpu_type_needs_gpu(self) -> JobSpec:
        if self.resources.gpu_type and self.resources.gpu == 0:
            raise ValueError("resources.gpu_type is set but resources.gpu is 0")
        return self

    @field_validator("depends_on")
    @classmethod
    def _depends_on(cls, v: tuple[Dependency, ...]) -> tuple[Dependency, ...]:
        if len(v) > MAX_DEPENDENCIES:
            raise ValueError(f"at most {MAX_DEPENDENCIES} dependencies")
        seen: set[str] = set()
        for d in v:
            if d.job in seen:
                raise ValueError(f"job {d.job} is named twice")
            seen.add(d.job)
        return v

    @model_validator(mode="after")
    def _array_of_single_jobs(self) -> JobSpec:
        if self.array is not None and self.replicas > 1:
            raise ValueError("an array's tasks run one replica each: replicas must be 1 with array")
        return self

    @model_validator(mode="after")
    def _secrets_apart_from_env(self) -> JobSpec:
        both = sorted(set(self.secrets) & set(self.env))
        if both:
            raise ValueError(f"{', '.join(both)} named both in env and in secrets")
        return self

    @field_serializer("max_runtime")
    def _ser_runtime(self, v: float) -> str:
        return format_duration(v)

    def canonical(self) -> dict[str, Any]:
        """The normalized spec as JSON-able data: what is stored and returned."""
        data = self.model_dump(mode="json")
        # Fields added later are left out at their defaults, so the specs (and idempotency
        # fingerprints) of jobs submitted before them stay the same.
        if not data["secrets"]:
            del data["secrets"]
        if data["network"] is True:
            del data["network"]
        if data["array"] is None:
            del data["array"]
        elif data["array"]["parallelism"] is None:
            del data["array"]["parallelism"]
        if not data["depends_on"]:
            del data["depends_on"]
        return data

    def fingerprint(self) -> str:
        """Hash of the normalized spec: two bodies that mean the same job hash the same."""
        return spec_fingerprint(self.canonical())


def check_secret_name(name: str) -> str:
    """A secret's name is the environment variable the job reads it from."""
    if not _ENV_KEY_RE.match(name) or len(name) > 128:
        raise ValueError(f"secret name {name!r} must be an environment variable name (letters, digits, _)")
    if name.startswith("TRAINYARD_"):
        raise ValueError(f"secret name {name!r}: TRAINYARD_ names are reserved for the platform")
    return name


def spec_fingerprint(canonical: dict[str, Any]) -> str:
    # json.dumps(canonical, sort_keys=True, separators=(",", ":")) hashed: the same bytes, faster.
    blob = jsontext.dumps(canonical, ensure_ascii=True, sort_keys=True)
    return hashlib.sha256(blob).hexdigest()
