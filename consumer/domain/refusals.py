"""What each refusal from Google means, and what we do about it: one table, no I/O.

Written from Google's documentation and from what people who use the real API report (the
README's "Google's refusals" repeats it). The order of the rules matters: the first that
matches decides.

status, reason (domain)                               call                      action
none (timeout, no connection)                          any                       retry
any (2xx too) notGoogleAnswer: not Google's JSON       any                       retry
401                                                    any                       refresh_token
403/429 rateLimitExceeded, userRateLimitExceeded       any                       pace
429 any other reason                                   any                       pace
403 dailyLimitExceeded, *Unreg, accessNotConfigured   any                       pause_project
403 quotaExceeded ("Calendar usage limits exceeded"),
    or any other reason in the usageLimits domain      any                       pause_account
404, 410                                               update/patch/delete/get   gone
409                                                    insert                    exists
403 any other (forbidden, requiredAccessLevel, ...)    update/patch/delete       check_event
403, 404 any other                                     insert, a calendar's list check_calendar
other 4xx (400 invalid, 412, ...; not 408)            any                       refused
5xx, 408, anything else                                any                       retry

- pace: the quota is slowed down (group-wide) and the call retried within the budget;
- pause_account / pause_project: that quota is paused for hours, its work deferred;
- gone: the event is not there any more (an update recreates it, a delete is done);
- exists: an earlier attempt inserted this id (it is updated to match);
- check_event: `events.get` says whether a person deleted the event (`status: cancelled`);
- check_calendar: `calendarList.get` says whether the calendar is gone or read-only;
- refused: Google would answer the same again soon: no retry now, the repair loop later;
- retry: within the retry budget, then the repair loop takes it.

`notGoogleAnswer` is ours, not Google's: an answer that is not a JSON object of the kind the
call asked for (an event with an id for a write, a list for a list, an empty body for a
delete), or a 4xx other than 408 and 429 without Google's JSON error (a proxy's login page,
a captive portal, a wrong `CALSYNC_GOOGLE_API_URL`). Whoever answered, it was not Google:
nothing is known to be done (a 404 page says nothing of the event), and the call is tried
again.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    RETRY = "retry"
    REFUSED = "refused"  # Google will answer the same: no retry now, the repair loop later
    REFRESH_TOKEN = "refresh_token"
    PACE = "pace"
    PAUSE_PROJECT = "pause_project"
    PAUSE_ACCOUNT = "pause_account"
    GONE = "gone"
    EXISTS = "exists"
    CHECK_EVENT = "check_event"
    CHECK_CALENDAR = "check_calendar"


NOT_GOOGLE_ANSWER = "notGoogleAnswer"  # an answer that did not come from Google (see above)
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
# The project's: its daily quota, or the project itself (the API not enabled, no key).
PROJECT_QUOTA_REASONS = frozenset(
    {
        "dailyLimitExceeded",
        "dailyLimitExceededUnreg",
        "accessNotConfigured",
        "userRateLimitExceededUnreg",
        "rateLimitExceededUnreg",
    }
)
ACCOUNT_QUOTA_REASONS = frozenset({"quotaExceeded"})
USAGE_LIMITS_DOMAIN = "usageLimits"
_EVENT_WRITES = frozenset({"events.update", "events.patch", "events.delete"})
_ONE_EVENT = _EVENT_WRITES | {"events.get"}
_CALENDAR_CALLS = frozenset(
    {"events.insert", "events.list", "calendarList.get", "calendarList.list"}
)


def classify(status: int | None, reason: str, domain: str, method: str) -> Action:
    """The action for a refusal of `method` (e.g. `events.update`)."""
    if status is None or reason == NOT_GOOGLE_ANSWER:
        return Action.RETRY
    if status == 401:
        return Action.REFRESH_TOKEN
    if status in (403, 429) and reason in RATE_LIMIT_REASONS:
        return Action.PACE
    if status == 429:
        return Action.PACE
    if status == 403 and reason in PROJECT_QUOTA_REASONS:
        return Action.PAUSE_PROJECT
    if status == 403 and (reason in ACCOUNT_QUOTA_REASONS or domain == USAGE_LIMITS_DOMAIN):
        return Action.PAUSE_ACCOUNT
    if status in (404, 410) and method in _ONE_EVENT:
        return Action.GONE
    if status == 409 and method == "events.insert":
        return Action.EXISTS
    if status == 403 and method in _EVENT_WRITES:
        return Action.CHECK_EVENT
    if status in (403, 404) and method in _CALENDAR_CALLS:
        return Action.CHECK_CALENDAR
    if 400 <= status < 500 and status not in (408, 425):
        return Action.REFUSED
    return Action.RETRY


def retriable(action: Action) -> bool:
    """Worth trying again soon, within the retry budget."""
    return action in (Action.RETRY, Action.PACE)
