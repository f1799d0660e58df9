"""The layers of the package, and that no import crosses them the wrong way.

    cli, ui  →  client  →  server  →  store, cache, bus, objects  →  model
    worker   →  proto, model
    scheduler → model

`trainyard.job` and `trainyard.datacache` are the in-job helpers: standard library only, so every
layer may use them. Imports inside ``if TYPE_CHECKING:`` count too: a type is a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trainyard

SRC = Path(trainyard.__file__).resolve().parent

LEAVES = {"model", "proto", "job", "datacache", "__init__", "aio", "web"}
"""Depended on by anyone: pure data, generated stubs, the standard-library-only job helpers, the
package's own version and event-loop helper, static files."""

ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "proto": set(),
    "job": set(),
    "datacache": set(),
    "aio": set(),
    "scheduler": set(),
    "worker": set(),
    "store": set(),
    "cache": {"store"},  # the SQL fallback keeps heartbeats and rate buckets in the store's tables
    "bus": {"store"},  # the outbox relay and the replay read the store's outbox
    "objects": set(),
    "server": {"store", "cache", "bus", "objects", "scheduler"},
    "client": set(),
    "cli": {"client", "server", "store", "cache", "bus", "objects", "scheduler", "worker"},
    "web": set(),
    "__init__": set(),
    "__main__": {"cli"},
}
"""What each top-level part may import besides the leaves."""


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(n.split(".")[1] for n in names if n.startswith("trainyard."))
    return found


def test_no_import_crosses_the_layers() -> None:
    wrong: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        part = _part(path)
        if part == "proto":
            continue  # generated
        allowed = ALLOWED.get(part)
        assert allowed is not None, f"{part}: a new top-level part; give it a place in ALLOWED"
        for target in sorted(_imports(path) - {part} - LEAVES - allowed):
            wrong.append(f"{path.relative_to(SRC)} imports trainyard.{target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_scheduler_and_the_worker_stay_small_in_what_they_know() -> None:
    # The two rules a reader most relies on, spelled out: the scheduler is pure, the agent never
    # reaches the control plane's internals (it speaks gRPC and presigned HTTP only).
    for part, forbidden in (("scheduler", {"server", "store", "worker"}), ("worker", {"server", "store"})):
        for path in (SRC / part).rglob("*.py"):
            assert not (_imports(path) & forbidden), path


def _module_imports(path: Path) -> set[str]:
    """Every module the file imports, ``if TYPE_CHECKING:`` blocks included: typing a parameter as
    ``SqlStore`` ties a module to the implementation as surely as building one."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_only_composition_roots_build_the_sql_store() -> None:
    # The control plane's composition root, and the CLI commands that open a store of their own
    # (`yard admin migrate`, `yard admin replay`); everyone else gets a store handed in, typed as the port it needs (store/ports.py).
    roots = {"server/platform.py", "cli/admin.py", "cli/services.py"}
    wrong = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if _part(path) != "store"
        and str(path.relative_to(SRC)) not in roots
        and "trainyard.store.sql" in _module_imports(path)
    ]
    assert not wrong, f"import the store's ports from trainyard.store instead: {wrong}"
