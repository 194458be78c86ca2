"""The outcome table (consumer/domain/outcomes.py), row by row: what a failed operation on
one link's calendar leaves behind, and when its repair is due."""

from __future__ import annotations

import pytest

from consumer.domain.errors import (
    AccountBacklogged,
    AccountFailing,
    CalendarUnavailable,
    ClaimLost,
    GoogleApiError,
    LinkHalted,
    QuotaPaused,
    TokenRefreshFailed,
)
from consumer.domain.models import LinkState, Outcome, RepairPlan
from consumer.domain.outcomes import FailureOutcome, failure_outcome, schedule_repair

FORBIDDEN = GoogleApiError(403, "forbidden", "Forbidden", method="events.update")
REFUSED_GRANT = TokenRefreshFailed(
    "invalid_grant", permanent=True, description="Token has been expired or revoked."
)


@pytest.mark.parametrize(
    ("failure", "outcome", "reason", "repair", "leaves"),
    [
        (LinkHalted("lnk_1"), Outcome.SKIPPED, "link_not_active", None, None),
        (REFUSED_GRANT, Outcome.SKIPPED, "token_refresh_failed", None, LinkState.REAUTH_REQUIRED),
        (
            TokenRefreshFailed("token_endpoint_unreachable: OSError", permanent=False),
            Outcome.FAILED,
            "token_refresh_failed",
            "token_endpoint_unavailable",
            None,
        ),
        (
            CalendarUnavailable(FORBIDDEN, "calendar list: access role 'reader'"),
            Outcome.FAILED,
            "calendar_unavailable",
            None,
            LinkState.CALENDAR_UNAVAILABLE,
        ),
        (QuotaPaused("account", 3600), Outcome.DEFERRED, "account_paused", "account_paused", None),
        (QuotaPaused("project", 60), Outcome.DEFERRED, "project_paused", "project_paused", None),
        (
            AccountFailing(2.0, "503 backendError: Service Unavailable"),
            Outcome.DEFERRED,
            "account_failing",
            "account_failing",
            None,
        ),
        (
            AccountBacklogged(7.0, "account_rate_limited"),
            Outcome.DEFERRED,
            "account_rate_limited",
            "account_rate_limited",
            None,
        ),
        (
            AccountBacklogged(9.0),
            Outcome.DEFERRED,
            "account_backlogged",
            "account_backlogged",
            None,
        ),
        (
            GoogleApiError(503, "backendError", "Service Unavailable", retry_after=4.0),
            Outcome.FAILED,
            "retries_exhausted",
            "retries_exhausted",
            None,
        ),
        (
            GoogleApiError(400, "invalid", "Invalid value", method="events.insert"),
            Outcome.FAILED,
            "google_refused",
            "google_refused",
            None,
        ),
    ],
)
def test_the_outcome_table(
    failure: Exception,
    outcome: Outcome,
    reason: str,
    repair: str | None,
    leaves: LinkState | None,
) -> None:
    left = failure_outcome(failure)
    assert left is not None
    assert (left.outcome, left.reason) == (outcome, reason)
    assert (left.repair.reason if left.repair else None) == repair
    assert (left.leaves_active[0] if left.leaves_active else None) == leaves


def test_what_each_row_keeps_for_the_person_reading_it() -> None:
    grant = failure_outcome(REFUSED_GRANT)
    assert grant == FailureOutcome(
        Outcome.SKIPPED,
        "token_refresh_failed",
        error="invalid_grant",
        leaves_active=(
            LinkState.REAUTH_REQUIRED,
            "token refresh refused: invalid_grant: Token has been expired or revoked.",
        ),
    )
    paused = failure_outcome(QuotaPaused("account", 3600))
    assert paused is not None and paused.repair == RepairPlan(
        reason="account_paused", not_before_s=3600, backoff=False
    )
    google = failure_outcome(GoogleApiError(429, "rateLimitExceeded", "Slow down", 12.0))
    assert google is not None and google.warning == "link_sync_failed"
    assert google.repair is not None and google.repair.not_before_s == 12.0
    failing = failure_outcome(AccountFailing(2.0, "503 backendError"))
    assert failing is not None and failing.repair is not None and failing.repair.backoff
    assert failing.error == "503 backendError"


@pytest.mark.parametrize("failure", [ClaimLost(), ValueError("a bug"), OSError("no database")])
def test_a_failure_no_row_is_about_goes_on_up(failure: Exception) -> None:
    assert failure_outcome(failure) is None


@pytest.mark.parametrize(
    ("attempts_before", "backoff", "not_before_s", "jitter", "attempts", "due_in_s"),
    [
        (0, True, 0.0, 1.0, 1, 30.0),  # the first failure: the initial backoff
        (1, True, 0.0, 1.0, 2, 60.0),  # doubling
        (3, True, 0.0, 0.5, 4, 120.0),  # jittered down to half
        (10, True, 0.0, 1.0, 11, 3600.0),  # capped
        (2, True, 500.0, 1.0, 3, 500.0),  # never before Retry-After
        (2, False, 45.0, 1.0, 2, 45.0),  # a pause: no backoff, no attempt counted
        (0, False, 0.0, 1.0, 0, 0.0),  # deferred with nothing to wait for: due now
    ],
)
def test_when_a_repair_is_due(
    attempts_before: int,
    backoff: bool,
    not_before_s: float,
    jitter: float,
    attempts: int,
    due_in_s: float,
) -> None:
    plan = RepairPlan(reason="x", backoff=backoff, not_before_s=not_before_s)
    scheduled = schedule_repair(plan, attempts_before, 30.0, 3600.0, jitter)
    assert (scheduled.attempts, scheduled.due_in_s) == (attempts, due_in_s)
