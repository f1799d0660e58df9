"""What an admin may change about a team: its fair-share weight, its concurrent quotas and its
monthly dollar budget."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainyard.model.pricing import parse_budget, parse_money
from trainyard.model.quantity import parse_memory

TEAM_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_GPU_QUOTA = 1_000_000


class TeamUpdate(BaseModel):
    """A field left out stays as it is; a quota set to null removes that limit."""

    model_config = ConfigDict(extra="forbid")

    weight: float = Field(default=1.0, gt=0, le=1000, description="fair-share weight")
    # Upper bounds keep values storable (gpu_quota is a 32-bit column, memory a 64-bit one) and
    # finite: JSON allows 1e999, which would be stored as infinity and could not be answered.
    cpu_quota: float | None = Field(default=None, ge=0, le=1e9, description="concurrent CPUs")
    memory_quota: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="concurrent memory, e.g. 512Gi"
    )
    gpu_quota: int | None = Field(
        default=None, ge=0, le=MAX_GPU_QUOTA, description="concurrent GPUs of any type"
    )
    gpu_type_quotas: dict[str, int] | None = Field(
        default=None, description="concurrent GPUs per type, e.g. {a100: 8}"
    )

    monthly_budget: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description='dollars a calendar month (UTC), e.g. "5000/month" or 5000; null lifts the budget',
    )

    @field_validator("monthly_budget", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        # Read as exact dollars into micro-dollars; "none" lifts it, as null does.
        if isinstance(v, str):
            return None if v.strip().lower() in ("none", "") else parse_budget(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return parse_money(v)
        return v

    @field_validator("memory_quota", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> Any:
        return parse_memory(v) if isinstance(v, str) else v

    @field_validator("gpu_type_quotas")
    @classmethod
    def _types(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None:
            for name, n in v.items():
                if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,31}", name):
                    raise ValueError(f"{name!r} is not a GPU type label")
                if not 0 <= n <= MAX_GPU_QUOTA:
                    raise ValueError(f"the {name} quota must be 0 to {MAX_GPU_QUOTA}")
        return v

    def changes(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.model_fields_set}
