"""``sandbox._within`` by the text of absolute paths answers as ``parent in path.parents`` did."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from trainyard.worker.sandbox import _within

parts = st.lists(st.sampled_from(["a", "b", "ab", "a.b", "..", ".", "x y", "-"]), max_size=5)
paths = st.builds(lambda lead, ps: Path(lead + "/".join(ps)), st.sampled_from(["/", "//", ""]), parts)


@given(paths, paths)
def test_within_is_the_ancestry_of_paths(path: Path, parent: Path) -> None:
    assert _within(path, parent) == (path == parent or parent in path.parents)


def test_within_examples() -> None:
    assert _within(Path("/tmp/x/y"), Path("/tmp"))
    assert _within(Path("/tmp"), Path("/tmp"))
    assert _within(Path("/tmp"), Path("/"))
    assert not _within(Path("/tmpx/y"), Path("/tmp"))
    assert not _within(Path("/tmp"), Path("/tmp/x"))
