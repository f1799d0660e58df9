"""The size rules of docs/architecture.md: no hand-written module over 800 lines, no function over 100.

Generated code (the gRPC stubs) is exempt. A module or function that outgrows the rule is split along
its seams (see the kubernetes executor's package, or the SDK's errors module), not exempted here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src" / "trainyard"
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 100


def _hand_written() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "_pb2" not in p.name)


def test_the_sources_are_found() -> None:
    assert len(_hand_written()) > 100


def test_no_module_is_longer_than_the_rule() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in _hand_written()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_longer_than_the_rule() -> None:
    long: dict[str, int] = {}
    for p in _hand_written():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(SRC)}:{node.name}"] = n
    assert long == {}
