"""Untrusted JSON request bodies, parsed so that nothing downstream can be surprised by them.

Python's ``json`` accepts input that later breaks the server: nesting deep enough to raise
RecursionError, integers too long to convert (ValueError) or too big for a 64-bit column,
``NaN``/``Infinity`` and ``1e999`` (not finite), and ``\\ud800`` escapes that decode to lone
surrogates (not Unicode: encoding them to UTF-8 for the database or protobuf raises) or to NUL
(PostgreSQL refuses it in text). ``loads`` refuses all of these, before or while parsing, with a
reason and, for a value, the dotted path of the field that holds it; every route reads its body
through it (``trainyard.server.errors.json_object``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a body may have; no request needs more than a few."""
MAX_INT = 2**63 - 1
"""Integers must fit a signed 64-bit column (the largest the store has)."""
MAX_PROBLEMS = 10

# A JSON string, or an unterminated one running to the end of the text: a match never fails once it
# has started, so removing every string is one linear pass (no backtracking on hostile input).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
# Characters no field of the API accepts: NUL and lone UTF-16 surrogates.
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


class JsonRejected(ValueError):
    """The body is refused. ``problems`` empty: it is not (acceptable) JSON at all (answered 400);
    otherwise each names a field and why its value is refused (answered 422)."""

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class _Refused:
    """Stands in, while parsing, for a number that is refused; reported with its path after."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def printable(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udXXX`` escapes: safe to encode as UTF-8 (an
    error message that echoes hostile input must not itself fail to encode)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def too_deep(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``limit`` (brackets in strings do
    not count). Linear and in C (regular expressions, accumulate), so a 1 MiB body costs little."""
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def loads(raw: bytes | str) -> Any:
    """The JSON document in ``raw`` (UTF-8), or JsonRejected saying why it is refused."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")  # strict: invalid UTF-8 (raw surrogates included) is refused
        except UnicodeDecodeError:
            raise JsonRejected("the body is not valid JSON: it is not UTF-8 text") from None
    else:
        text = raw
    if too_deep(text):
        raise JsonRejected(f"the body is not valid JSON: it nests deeper than {MAX_DEPTH} levels")
    refused: list[_Refused] = []

    def refuse(why: str) -> _Refused:
        r = _Refused(why)
        refused.append(r)
        return r

    def parse_int(s: str) -> int | _Refused:
        if len(s) > 20:  # longer than any 64-bit integer (and int() refuses past 4300 digits)
            return refuse(f"must be an integer of at most {MAX_INT}")
        n = int(s)
        return n if -MAX_INT - 1 <= n <= MAX_INT else refuse(f"must be an integer of at most {MAX_INT}")

    def parse_float(s: str) -> float | _Refused:
        f = float(s)
        return f if math.isfinite(f) else refuse("must be a finite number")

    try:
        doc = json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=lambda _: refuse("must be a finite number (NaN and Infinity are not JSON)"),
        )
    except RecursionError:  # not reached after the nesting check; kept as a second line
        raise JsonRejected("the body is not valid JSON: it nests too deeply") from None
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise JsonRejected(f"the body is not valid JSON: {printable(str(e))}") from None
    if refused or "\\u" in text:  # only a \u escape decodes to NUL or a surrogate (UTF-8 was strict)
        problems = _problems(doc)
        if problems:
            raise JsonRejected("the body holds values no field accepts", problems)
    return doc


def _problems(doc: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    stack: list[tuple[Any, tuple[str, ...]]] = [(doc, ())]
    while stack and len(out) < MAX_PROBLEMS:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            out.append({"field": _dotted(path), "message": f"nests deeper than {MAX_DEPTH} levels"})
        elif isinstance(value, dict):
            items = list(value.items())
            for key, item in reversed(items):
                stack.append((item, (*path, printable(key))))
            for key, _ in items:
                why = _bad_text(key)
                if why:
                    out.append({"field": _dotted((*path, printable(key))), "message": f"its name {why}"})
        elif isinstance(value, list):
            stack.extend((item, (*path, str(i))) for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, str):
            why = _bad_text(value)
            if why:
                out.append({"field": _dotted(path), "message": why})
        elif isinstance(value, _Refused):
            out.append({"field": _dotted(path), "message": value.why})
    return out


def _bad_text(s: str) -> str | None:
    m = _BAD_CHAR.search(s)
    if m is None:
        return None
    if m.group() == "\x00":
        return "must not contain NUL characters"
    return f"must be valid Unicode: a lone surrogate ({printable(m.group())}) is not"


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path) or "body"
