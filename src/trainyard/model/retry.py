"""The retry policy as a pure function: given how an attempt ended, retry or stop, and when."""

from __future__ import annotations

import random
from dataclasses import dataclass

from trainyard.model.spec import Retry
from trainyard.model.states import AttemptOutcome, JobStatus

INFRA_OUTCOMES = frozenset({AttemptOutcome.START_FAILED, AttemptOutcome.INFRA, AttemptOutcome.LOST})


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float
    final_status: JobStatus  # the state when not retried


def final_status_for(outcome: AttemptOutcome) -> JobStatus:
    return {
        AttemptOutcome.SUCCEEDED: JobStatus.SUCCEEDED,
        AttemptOutcome.CANCELLED: JobStatus.CANCELLED,
        AttemptOutcome.TIMED_OUT: JobStatus.TIMED_OUT,
    }.get(outcome, JobStatus.FAILED)


def matches(policy: Retry, outcome: AttemptOutcome, exit_code: int | None, oom: bool = False) -> bool:
    for rule in policy.on:
        if rule == "infra" and outcome in INFRA_OUTCOMES:
            return True
        if rule == "timeout" and outcome is AttemptOutcome.TIMED_OUT:
            return True
        if rule == "oom" and oom:
            return True
        if rule == "failed" and outcome is AttemptOutcome.FAILED:
            return True
        if rule.startswith("exit:") and outcome is AttemptOutcome.FAILED and exit_code == int(rule[5:]):
            return True
    return False


def decide(
    policy: Retry,
    outcome: AttemptOutcome,
    exit_code: int | None,
    tries_used: int,
    *,
    oom: bool = False,
    rng: random.Random | None = None,
) -> RetryDecision:
    """``tries_used`` counts attempts of this run that used a try, including the one that just ended."""
    final = final_status_for(outcome)
    if outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.CANCELLED):
        return RetryDecision(False, 0.0, final)
    if tries_used >= policy.max_attempts or not matches(policy, outcome, exit_code, oom):
        return RetryDecision(False, 0.0, final)
    delay = 0.0
    if policy.backoff > 0:
        base = min(policy.max_backoff, policy.backoff * 2 ** max(0, tries_used - 1))
        # Full jitter would let a retry fire at once; keep at least half the backoff.
        delay = base / 2 + (rng or random).uniform(0, base / 2)
    return RetryDecision(True, delay, final)
