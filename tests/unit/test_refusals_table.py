"""Google's refusals table (consumer/domain/refusals.py), row by row: what each refusal means."""

from __future__ import annotations

import pytest

from consumer.domain.refusals import Action, classify


@pytest.mark.parametrize(
    ("status", "reason", "domain", "method", "action"),
    [
        (None, "TimeoutError", "global", "events.insert", Action.RETRY),
        (200, "notGoogleAnswer", "global", "events.insert", Action.RETRY),
        (200, "notGoogleAnswer", "global", "events.get", Action.RETRY),
        (204, "notGoogleAnswer", "global", "events.delete", Action.RETRY),
        (404, "notGoogleAnswer", "global", "events.update", Action.RETRY),
        (403, "notGoogleAnswer", "global", "events.insert", Action.RETRY),
        (401, "authError", "global", "events.update", Action.REFRESH_TOKEN),
        (403, "rateLimitExceeded", "usageLimits", "events.insert", Action.PACE),
        (429, "rateLimitExceeded", "usageLimits", "events.insert", Action.PACE),
        (403, "userRateLimitExceeded", "usageLimits", "events.update", Action.PACE),
        (429, "tooManyRequests", "global", "events.delete", Action.PACE),
        (403, "dailyLimitExceeded", "usageLimits", "events.insert", Action.PAUSE_PROJECT),
        (403, "quotaExceeded", "usageLimits", "events.update", Action.PAUSE_ACCOUNT),
        (403, "variableTermLimitExceeded", "usageLimits", "events.insert", Action.PAUSE_ACCOUNT),
        (404, "notFound", "global", "events.update", Action.GONE),
        (410, "deleted", "global", "events.delete", Action.GONE),
        (404, "notFound", "global", "events.get", Action.GONE),
        (409, "duplicate", "global", "events.insert", Action.EXISTS),
        (403, "forbidden", "global", "events.update", Action.CHECK_EVENT),
        (403, "forbidden", "global", "events.patch", Action.CHECK_EVENT),
        (403, "requiredAccessLevel", "calendar", "events.delete", Action.CHECK_EVENT),
        (403, "requiredAccessLevel", "calendar", "events.insert", Action.CHECK_CALENDAR),
        (404, "notFound", "global", "events.insert", Action.CHECK_CALENDAR),
        (404, "notFound", "global", "events.list", Action.CHECK_CALENDAR),
        (500, "backendError", "global", "events.insert", Action.RETRY),
        (503, "backendError", "global", "events.update", Action.RETRY),
        (400, "invalid", "global", "events.insert", Action.REFUSED),
        (412, "conditionNotMet", "global", "events.update", Action.REFUSED),
        (408, "requestTimeout", "global", "events.update", Action.RETRY),
        (403, "accessNotConfigured", "usageLimits", "events.insert", Action.PAUSE_PROJECT),
    ],
)
def test_the_refusals_table(
    status: int | None, reason: str, domain: str, method: str, action: Action
) -> None:
    assert classify(status, reason, domain, method) is action
