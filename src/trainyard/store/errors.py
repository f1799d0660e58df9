"""The store's exceptions: the API maps ``StoreError`` and its subclasses to HTTP codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors the API maps to HTTP codes."""


class ConcurrentChange(RuntimeError):
    """A guarded write found the row changed since it was read in the same transaction."""


class NotFound(StoreError):
    """No such job, user or other record (HTTP 404)."""


class Conflict(StoreError):
    """The request conflicts with the record's current state (HTTP 409)."""


class IdempotencyConflict(Conflict):
    """An Idempotency-Key already used with a different job spec (HTTP 409)."""
