"""The SDK's errors: one class per kind of refusal, read from the server's error body.

A refusal carries the server's error code, message and field-level details, so a local check
(:func:`validate_spec`) and the server's own print alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import httpx
from pydantic import ValidationError

from trainyard.model.spec import JobSpec

Details: TypeAlias = list[dict[str, str]]


class TrainyardError(Exception):
    """A request failed. ``status`` is the HTTP status, or 0 when no response came back."""

    def __init__(self, status: int, code: str, message: str, details: Details | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: Details = list(details or [])

    def __str__(self) -> str:
        lines = [self.message] + [f"  {d.get('field', '')}: {d.get('message', '')}" for d in self.details]
        return "\n".join(lines)


class Unauthorized(TrainyardError):
    """401: no token, or a token the server does not know."""


class Forbidden(TrainyardError):
    """403: the caller may not do this (another user's job, an admin-only call)."""


class NotFound(TrainyardError):
    """404: unknown, or not visible to the caller."""


class Conflict(TrainyardError):
    """409: an idempotency key reused with another body, or a restart of an unfinished job."""


class PayloadTooLarge(TrainyardError):
    """413: the spec or the workdir bundle is over the server's limit."""


class ValidationFailed(TrainyardError):
    """422 from the server, or a spec refused by the same checks before it was sent."""


class RateLimited(TrainyardError):
    """429: over a rate limit or submission quota; ``retry_after`` is in seconds when the server says."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Details | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, code, message, details)
        self.retry_after = retry_after


class ConnectionFailed(TrainyardError):
    """No response: the server is down, unreachable, or the connection dropped."""


class IntegrityError(TrainyardError):
    """A downloaded artifact does not match the size or sha256 the server listed."""


_BY_STATUS: dict[int, type[TrainyardError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
}


def spec_error(exc: ValidationError) -> ValidationFailed:
    """Pydantic's errors in the server's shape, so local and remote refusals print alike."""
    details: Details = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = str(err["msg"]).removeprefix("Value error, ")
        details.append({"field": field, "message": msg})
    return ValidationFailed(422, "invalid_spec", "invalid job spec", details)


def validate_spec(spec: JobSpec | Mapping[str, Any]) -> JobSpec:
    """A JobSpec from a mapping, checked as the server would; raises ValidationFailed."""
    if isinstance(spec, JobSpec):
        return spec
    try:
        return JobSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise spec_error(exc) from None


def job_exit_code(job: Mapping[str, Any]) -> int:
    """The shell exit status that best reports a finished job (for `yard logs -f` and `yard wait`).

    A job that did not succeed never maps to 0, even when its process exited 0 (an upload failed,
    say), and a signal death -N maps to 128+N as a shell would report it.
    """
    status = job.get("status")
    code = job.get("exit_code")
    if status == "SUCCEEDED":
        return 0
    fallback = 130 if status == "CANCELLED" else 1
    if not isinstance(code, int) or isinstance(code, bool):
        return fallback
    if code < 0:
        code = 128 - code
    code &= 0xFF
    return code or fallback


def error_from(resp: httpx.Response) -> TrainyardError:
    code = f"http_{resp.status_code}"
    message = resp.reason_phrase or f"HTTP {resp.status_code}"
    details: Details = []
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError):
        text = resp.text.strip()
        if text:
            message = text[:500]
    else:
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code") or code)
            message = str(err.get("message") or message)
            for d in err.get("details") or []:
                if isinstance(d, dict):
                    details.append({"field": str(d.get("field", "")), "message": str(d.get("message", ""))})
    if resp.status_code == 429:
        return RateLimited(resp.status_code, code, message, details, retry_after(resp))
    cls = _BY_STATUS.get(resp.status_code, TrainyardError)
    return cls(resp.status_code, code, message, details)


def retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None
