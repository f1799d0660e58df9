"""The plain command lines of the commands that stay up (`yard up`, `yard server`, `yard worker`),
parsed without Typer.

Typer 0.29 converts every option through a pydantic TypeAdapter; its parsing, with Typer itself, click
and the app's command modules, stayed in each of those processes' memory for as long as they ran:
10 MB of an agent (with pydantic), 2 MB of the control plane (bench/footprint.py). A command line that
has only plain options (``--flag VALUE``, ``--flag=VALUE`` and boolean flags, with unsigned numbers
and non-empty paths) is parsed here, exactly as Typer would; anything else (``--help``, another
option, an argument, a value Typer would convert or refuse in its own way) is left to Typer, which
parses it and reports its errors as always.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn


class NotPlain(Exception):
    """The command line needs Typer."""


def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    if not value:
        raise NotPlain  # how Typer converts an empty path is Typer's business
    return Path(value)


def number(value: str) -> float:
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        raise NotPlain  # signs, exponents, inf and nan: Typer's conversion decides
    return float(value)


def integer(value: str, low: int | None = None, high: int | None = None) -> int:
    if not re.fullmatch(r"[0-9]+", value):
        raise NotPlain
    n = int(value)
    if (low is not None and n < low) or (high is not None and n > high):
        raise NotPlain  # out of the option's range: Typer's error
    return n


def integer_in(low: int, high: int) -> Callable[[str], int]:
    return lambda value: integer(value, low, high)


@dataclass(frozen=True)
class Flag:
    """An option with a value: the parameter it sets, how Typer converts it, whether it repeats."""

    field: str
    convert: Callable[[str], object]
    repeatable: bool = False


def parse(
    argv: Sequence[str], flags: Mapping[str, Flag], switches: Mapping[str, tuple[str, bool]]
) -> dict[str, object]:
    """The parameters ``argv`` gives: ``flags`` take a value, ``switches`` set their parameter to a
    constant (``--verbose``, ``--no-share-cwd``). NotPlain for anything else."""
    given: dict[str, object] = {}
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in switches:
            field, constant = switches[arg]
            given[field] = constant
            continue
        name, eq, value = arg.partition("=")
        if name not in flags:
            raise NotPlain  # --help, another option, an argument, `--`: Typer answers
        if not eq:
            if not rest or rest[0].startswith("-"):
                raise NotPlain  # a missing value, or one that looks like a flag: Typer's error
            value = rest.pop(0)
        flag = flags[name]
        if flag.repeatable:
            items = given.setdefault(flag.field, [])
            assert isinstance(items, list)
            items.append(flag.convert(value))
        else:
            given[flag.field] = flag.convert(value)  # given twice, the last one counts, as in Typer
    return given


def finish(command: Callable[[], None]) -> NoReturn:
    """Run the command and exit as Typer does after one: 0, or 130 when Ctrl-C interrupted it."""
    try:
        command()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(0)
