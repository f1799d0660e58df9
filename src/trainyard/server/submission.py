"""What makes a submission acceptable: the checks of ``POST /v1/jobs`` in their order, shared by the
route and by ``middleware.FastSubmits`` (which answers the request before routing when they all pass),
so a check added here holds on both paths."""

from __future__ import annotations

from pydantic import ValidationError

from trainyard.model.records import User
from trainyard.model.spec import JobSpec
from trainyard.server.errors import ApiError, field_errors, json_object_of
from trainyard.server.services.jobs import JobService, SpecRejected

MAX_IDEMPOTENCY_KEY = 256


async def accepted_spec(jobs: JobService, user: User, idempotency_key: str | None, raw: bytes) -> JobSpec:
    """The spec ``user`` submits in the body ``raw``, checked as ``JobService.submit`` expects it;
    ApiError (the documented 400/422) for the first check that fails."""
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ApiError(
            422,
            "invalid_request",
            "Idempotency-Key must be 1 to 256 characters",
            [{"field": "Idempotency-Key", "message": "must be 1 to 256 characters"}],
        )
    body = json_object_of(raw, code="invalid_spec", what="a JSON object (a JobSpec)")
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as e:
        raise ApiError(422, "invalid_spec", "the job spec is not valid", field_errors(e)) from None
    except ArithmeticError:  # e.g. memory "9…9" (400 digits): float() gives inf, int(inf) overflows
        raise ApiError(422, "invalid_spec", "the job spec is not valid: a number is out of range") from None
    try:
        await jobs.check_submittable(user, spec)
    except SpecRejected as e:
        raise ApiError(422, "invalid_spec", "the job spec is not valid", e.details) from None
    return spec
