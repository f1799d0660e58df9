"""Bounds of the API's integer query parameters, shared by the route modules."""

from __future__ import annotations

from trainyard.model.states import JobStatus

STATUSES = frozenset(s.value for s in JobStatus)
"""The names ``?status=`` accepts."""
# What the store's 32- and 64-bit columns hold (larger values overflowed the database driver and
# answered 500).
MAX_ATTEMPT = 2**31 - 1
MAX_OFFSET = 2**63 - 1
