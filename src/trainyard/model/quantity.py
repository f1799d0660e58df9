"""Parsing of human quantities: memory sizes (``512Mi``, ``16G``) and durations (``1h30m``)."""

from __future__ import annotations

import math
import re

_MAX_DURATION_S = 100 * 365 * 86400.0

_MEM_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "b": 1,
}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_memory(value: str | int | float) -> int:
    """Bytes from ``512Mi``, ``16Gi``, ``2G``, ``1048576``; ValueError with a reason otherwise."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size such as 512Mi or 16Gi")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("memory must be a finite size")  # JSON's 1e999 parses as infinity
        if value < 0:
            raise ValueError("memory must not be negative")
        return int(value)
    m = _MEM_RE.match(value)
    if not m or m.group(2).lower() not in _MEM_UNITS:
        raise ValueError(f"memory {value!r} is not a size such as 512Mi, 16Gi or 2G")
    return int(float(m.group(1)) * _MEM_UNITS[m.group(2).lower()])


def format_memory(n: int) -> str:
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def human_memory(n: int | float) -> str:
    """A readable size for messages (23.5Gi), where format_memory is exact (24684092Ki)."""
    for unit, size in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{int(n)}"


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30s``, ``2h``, ``1h30m``, ``90`` (plain numbers are seconds)."""
    # Values come straight from JSON bodies: anything but text or a finite number is refused with
    # ValueError (the API's 422), never a TypeError or an infinity that breaks a later step.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("a duration must look like 30s, 10m or 2h")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value > _MAX_DURATION_S:
            raise ValueError("a duration must be at most 100 years")
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_duration(float(text))
    pos = 0
    total = 0.0
    for m in _DUR_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"duration {value!r} must look like 30s, 10m, 2h or 1h30m")
    return parse_duration(total)


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s == 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            parts.append(f"{s // size}{unit}")
            s %= size
    return "".join(parts)
