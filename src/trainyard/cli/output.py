"""Rendering for `yard`: rich tables on a terminal, plain aligned text when piped, JSON and YAML."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from trainyard.cli.formats import Format as Format  # re-exported: the commands import it from here
from trainyard.client.bundle import human_size
from trainyard.client.sdk import TrainyardError

EMPTY = "-"


def _tty() -> bool:
    return sys.stdout.isatty()


def _console() -> Console:
    # Built per call so the current sys.stdout is used (CliRunner swaps it).
    return Console(file=sys.stdout, highlight=False)


def print_error(err: TrainyardError | str, details: Sequence[Mapping[str, str]] = ()) -> None:
    """`error: <message>` and one `  <field>: <message>` line per detail, on stderr."""
    if isinstance(err, TrainyardError):
        message, details = err.message, err.details
    else:
        message = err
    lines = [f"error: {message}"] + [f"  {d.get('field', '')}: {d.get('message', '')}" for d in details]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def note(message: str) -> None:
    """A remark for the human on stderr, so stdout stays parseable."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_yaml(data: Any) -> None:
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def print_data(data: Any, fmt: Format) -> None:
    if fmt is Format.yaml:
        print_yaml(data)
    else:
        print_json(data)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """A table; when stdout is not a terminal, whitespace-aligned columns a script can split."""
    if _tty():
        table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        _console().print(table)
        return
    if title:
        sys.stdout.write(title + "\n")
    cells = [list(columns)] + [[c or EMPTY for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
        sys.stdout.write(line.rstrip() + "\n")


def print_fields(pairs: Sequence[tuple[str, str]]) -> None:
    """`Key:  value` lines, aligned."""
    width = max((len(k) for k, _ in pairs), default=0) + 1
    for key, value in pairs:
        sys.stdout.write(f"{(key + ':').ljust(width)}  {value}\n")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def fmt_time(value: Any) -> str:
    """A timestamp in UTC to the second; the server's text unchanged if it does not parse."""
    dt = parse_time(value)
    if dt is None:
        return str(value) if value else EMPTY
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_age(value: Any, now: datetime | None = None) -> str:
    """How long ago, kubectl style: 45s, 12m, 3h, 5d."""
    dt = parse_time(value)
    if dt is None:
        return EMPTY
    secs = int(((now or datetime.now(UTC)) - dt).total_seconds())
    if secs < 0:
        secs = 0
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


ETA_NEAR_S = 3 * 3600
"""Closer than this, an estimated start reads as a duration ("in 2 h 5 min"); further, as a clock time."""
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def fmt_eta(value: Any, now: datetime | None = None, tz: tzinfo | None = None) -> str:
    """An estimated start a person reads at a glance, after "starts": ``any moment`` (due within a
    minute, or past), ``in 3 min`` or ``in 2 h 5 min`` (rounded up: it is a latest start) when
    near, else a clock time in ``tz`` (default: local), ``at 14:05``, ``tomorrow at 09:30`` or
    ``on Wed 5 Mar at 14:05``. The server's text unchanged if it does not parse."""
    dt = parse_time(value)
    if dt is None:
        return str(value) if value else EMPTY
    now = now or datetime.now(UTC)
    secs = (dt - now).total_seconds()
    if secs < 60:
        return "any moment"
    if secs < ETA_NEAR_S:
        hours, mins = divmod(math.ceil(secs / 60), 60)
        if not hours:
            return f"in {mins} min"
        return f"in {hours} h {mins} min" if mins else f"in {hours} h"
    at = datetime.fromtimestamp(math.ceil(dt.timestamp() / 60) * 60, UTC).astimezone(tz)  # rounded up
    today = now.astimezone(tz).date()
    clock = f"{at:%H:%M}"
    if at.date() == today:
        return f"at {clock}"
    if at.date() == today + timedelta(days=1):
        return f"tomorrow at {clock}"
    year = f" {at.year}" if at.year != today.year else ""
    return f"on {_DAYS[at.weekday()]} {at.day} {_MONTHS[at.month - 1]}{year} at {clock}"


def fmt_duration(start: Any, end: Any) -> str:
    a, b = parse_time(start), parse_time(end)
    if a is None:
        return EMPTY
    secs = int(((b or datetime.now(UTC)) - a).total_seconds())
    h, rem = divmod(max(secs, 0), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def fmt_bytes(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return human_size(value)
    return str(value) if value is not None else EMPTY


def cell(value: Any) -> str:
    if value is None or value == "":
        return EMPTY
    return str(value)
