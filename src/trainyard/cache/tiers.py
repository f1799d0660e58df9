"""Rate-limit tiers: ``"free=5/day,standard=60/min,enterprise=unlimited"``.

``N/period`` is a token bucket of ``N`` tokens refilling evenly over the period: a user may spend
all ``N`` at once, then gets one back every ``period / N``. The period may carry a count
(``100/15min``). ``unlimited`` means no bucket at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
_LIMIT = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*/\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)")


@dataclass(frozen=True)
class Tier:
    rate_per_s: float
    burst: float

    @property
    def unlimited(self) -> bool:
        """No bucket: callers skip ``Cache.take`` for this tier."""
        return math.isinf(self.rate_per_s)


UNLIMITED = Tier(math.inf, math.inf)


def parse_limit(text: str) -> Tier:
    """``"60/min"`` → Tier(1.0, 60.0); ``"unlimited"`` → UNLIMITED."""
    t = text.strip().lower()
    if t == "unlimited":
        return UNLIMITED
    m = _LIMIT.fullmatch(t)
    if m is None:
        raise ValueError(f"{text!r} is not a limit: write N/unit (e.g. 60/min, 5/day) or unlimited")
    unit = _UNITS.get(m["unit"])
    if unit is None:
        raise ValueError(f"{text!r}: unknown unit {m['unit']!r}; use s, min, h or day")
    period = unit * float(m["count"] or 1)
    if period <= 0:
        raise ValueError(f"{text!r}: the period must be longer than zero")
    n = float(m["n"])
    return Tier(rate_per_s=n / period, burst=n)


def parse_tiers(spec: str) -> dict[str, Tier]:
    """``"free=5/day,standard=60/min,enterprise=unlimited"`` → {name: Tier}. Raises ValueError
    naming the bad part; an empty spec is no tiers."""
    tiers: dict[str, Tier] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, limit = part.partition("=")
        name = name.strip().lower()
        if not sep:
            raise ValueError(f"tier {part.strip()!r}: write name=limit (e.g. standard=60/min)")
        if not _NAME.fullmatch(name):
            raise ValueError(f"tier name {name!r}: use up to 32 lowercase letters, digits, '.', '_', '-'")
        if name in tiers:
            raise ValueError(f"tier {name!r} is given twice")
        try:
            tiers[name] = parse_limit(limit)
        except ValueError as e:
            raise ValueError(f"tier {name!r}: {e}") from None
    return tiers


def tier_of(tiers: dict[str, Tier], user_tier: str | None, default: str) -> Tier:
    """The limit for a user: their tier, else the default tier. A tier nobody defined raises
    ValueError: a typo in configuration must not silently mean unlimited."""
    name = user_tier or default
    tier = tiers.get(name)
    if tier is None:
        raise ValueError(f"rate-limit tier {name!r} is not defined (known: {', '.join(sorted(tiers))})")
    return tier
