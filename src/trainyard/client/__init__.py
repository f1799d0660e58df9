"""Trainyard's Python SDK: ``from trainyard.client import Client``."""

from trainyard.client.bundle import BundleError, make_bundle
from trainyard.client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    IntegrityError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TrainyardError,
    Unauthorized,
    ValidationFailed,
    job_exit_code,
    validate_spec,
)
from trainyard.client.sdk import Client

__all__ = [
    "BundleError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "IntegrityError",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "TrainyardError",
    "Unauthorized",
    "ValidationFailed",
    "job_exit_code",
    "make_bundle",
    "validate_spec",
]
