"""Blocking calls (the store's, object storage's) run off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in a worker thread and wait for it without blocking the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)
