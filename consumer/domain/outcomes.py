"""What a failed operation on one link's calendar leaves behind: the outcome table.

When Google (or the token endpoint, or the account's quota) does not let one (link, booking)
operation through, the sync engine records a result and moves on; this table says which:
its outcome and reason, the error kept with it, whether the repair loop owes it (and when it
may try), whether the link leaves `active`, and the warning logged. Pure: one row per kind
of failure, the first matching row decides; tested row by row (tests/unit/test_outcomes.py).
A failure no row matches is not an outcome: the engine lets it through (an infrastructure
fault is retried with the offset waiting; anything else is the poison policy's).

    the link left `active` meanwhile        skipped   link_not_active
    Google refused the grant (invalid_grant) skipped   token_refresh_failed   -> reauth_required
    the token endpoint unreachable           failed    token_refresh_failed   repair, backoff
    the calendar gone or read-only           failed    calendar_unavailable   -> calendar_unavail.
    the account's or project's quota spent   deferred  account/project_paused repair after the pause
    the account's calls fail, window full    deferred  account_failing        repair, backoff
    the account paced or its queue too long  deferred  account_rate_limited,  repair not before
                                                       account_backlogged     Retry-After/its slot
    a Google failure past the retry budget   failed    retries_exhausted      repair, backoff
    a Google refusal (a 4xx)                 failed    google_refused         repair, backoff
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consumer.domain.errors import (
    AccountBacklogged,
    AccountFailing,
    CalendarUnavailable,
    CalsyncError,
    GoogleApiError,
    LinkHalted,
    QuotaPaused,
    TokenRefreshFailed,
)
from consumer.domain.models import LinkState, Outcome, RepairPlan


@dataclass(frozen=True)
class FailureOutcome:
    """What a failed operation leaves: its result (outcome, reason, error), the repair owed
    (None: nothing is owed), the state the link moves to (with why), and the warning to log
    (its event name, None: none) with its cause."""

    outcome: Outcome
    reason: str
    error: str | None = None
    repair: RepairPlan | None = None
    leaves_active: tuple[LinkState, str] | None = None
    warning: str | None = None
    cause: str | None = None


def _halted(exc: LinkHalted) -> FailureOutcome:
    return FailureOutcome(Outcome.SKIPPED, "link_not_active")


def _token(exc: TokenRefreshFailed) -> FailureOutcome:
    if not exc.retriable:
        # Google's words kept (revoked, expired, unused for months): the person fixing it
        # needs to know which.
        return FailureOutcome(
            Outcome.SKIPPED,
            "token_refresh_failed",
            error=exc.reason,
            leaves_active=(LinkState.REAUTH_REQUIRED, f"token refresh refused: {exc.explained}"),
        )
    return FailureOutcome(
        Outcome.FAILED,
        "token_refresh_failed",
        error=exc.reason,
        repair=RepairPlan(reason="token_endpoint_unavailable"),
        warning="token_endpoint_unavailable",
        cause=exc.reason,
    )


def _calendar(exc: CalendarUnavailable) -> FailureOutcome:
    return FailureOutcome(
        Outcome.FAILED,
        "calendar_unavailable",
        error=str(exc),
        leaves_active=(LinkState.CALENDAR_UNAVAILABLE, str(exc)),
    )


def _paused(exc: QuotaPaused) -> FailureOutcome:
    reason = f"{exc.scope}_paused"
    return FailureOutcome(
        Outcome.DEFERRED,
        reason,
        error=str(exc.__cause__ or exc),
        repair=RepairPlan(reason=reason, not_before_s=exc.seconds, backoff=False),
    )


def _failing(exc: AccountFailing) -> FailureOutcome:
    # Its calls fail: the repair loop's backoff, not a retry at once.
    return FailureOutcome(
        Outcome.DEFERRED,
        exc.reason,
        error=exc.cause,
        repair=RepairPlan(reason=exc.reason, not_before_s=exc.seconds, backoff=True),
    )


def _backlogged(exc: AccountBacklogged) -> FailureOutcome:
    return FailureOutcome(
        Outcome.DEFERRED,
        exc.reason,
        repair=RepairPlan(reason=exc.reason, not_before_s=exc.seconds, backoff=False),
    )


def _google(exc: GoogleApiError) -> FailureOutcome:
    reason = "retries_exhausted" if exc.retriable else "google_refused"
    return FailureOutcome(
        Outcome.FAILED,
        reason,
        error=str(exc),
        repair=RepairPlan(reason=reason, not_before_s=exc.retry_after or 0.0),
        warning="link_sync_failed",
        cause=str(exc),
    )


# The table: the first row whose kind of failure matches decides (a subclass before its base).
OUTCOMES: tuple[tuple[type[CalsyncError], Callable[..., FailureOutcome]], ...] = (
    (LinkHalted, _halted),
    (TokenRefreshFailed, _token),
    (CalendarUnavailable, _calendar),
    (QuotaPaused, _paused),
    (AccountFailing, _failing),
    (AccountBacklogged, _backlogged),
    (GoogleApiError, _google),
)


def failure_outcome(exc: BaseException) -> FailureOutcome | None:
    """What `exc`, ending one link's operation, leaves behind; None: no row is about it
    (the engine raises it on)."""
    for kind, outcome in OUTCOMES:
        if isinstance(exc, kind):
            return outcome(exc)
    return None


def schedule_repair(
    plan: RepairPlan, attempts_before: int, initial_s: float, max_s: float, jitter: float
) -> RepairPlan:
    """When the repair loop should try again: after a failure (`plan.backoff`), exponential
    backoff from `initial_s` doubling up to `max_s`, scaled by `jitter` (0.5 .. 1: callers
    draw it at random, so that repairs that failed together are not all due together); and
    never before a pause or a Retry-After ends (`plan.not_before_s`)."""
    attempts = attempts_before + (1 if plan.backoff else 0)
    delay = 0.0
    if plan.backoff:
        delay = min(max_s, initial_s * 2 ** min(attempts - 1, 30)) * jitter
    return plan.model_copy(update={"attempts": attempts, "due_in_s": max(delay, plan.not_before_s)})
