"""The one Google-call policy (consumer/service/calls.py) on fakes of its ports: an operator's
call and a link's calls, what each does with Google's answers, the quota and the halts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.domain.errors import (
    AccountBacklogged,
    GoogleApiError,
    LinkHalted,
    QuotaPaused,
    SlotTooFar,
)
from consumer.domain.models import CalendarLink, LinkRow, LinkState
from consumer.service.calls import CallPolicy, GoogleCalls
from consumer.service.pressure import BACKLOGGED, RATE_LIMITED
from consumer.service.retrying import within_budget
from tests.unit.fakes import FakeQuota, FakeTokens

ACCOUNT = "owner@example.com"
POLICY = CallPolicy(
    retry_budget_s=0.3,
    retry_initial_s=0.001,
    retry_max_s=0.005,
    google_timeout_s=1.0,
    quota_max_wait_s=5.0,
)
AT = datetime(2026, 4, 1, tzinfo=UTC)


def row(link_id: str = "lnk_1") -> LinkRow:
    link = CalendarLink(
        id=link_id,
        activity_id="act_1",
        account_email=ACCOUNT,
        calendar_id=ACCOUNT,
        state=LinkState.ACTIVE,
    )
    return LinkRow(link=link, tokens=None, state_reason=None, state_changed_at=AT, created_at=AT)


class Google:
    """Answers a call with what it is told, in order: an exception is raised, else returned."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.tokens: list[str] = []

    async def __call__(self, token: str = "") -> object:
        self.tokens.append(token)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def calls(quota: FakeQuota | None = None) -> GoogleCalls:
    return GoogleCalls(POLICY, quota or FakeQuota(limited=False), FakeTokens())


UNAVAILABLE = GoogleApiError(503, "backendError", "Service Unavailable", method="events.list")
SLOW_DOWN = GoogleApiError(429, "rateLimitExceeded", "Slow down", 0.0, "usageLimits", "x")
SPENT = GoogleApiError(403, "quotaExceeded", "Calendar usage limits exceeded.", None, "usageLimits")


async def test_an_operators_call_goes_first_in_line_and_is_retried_while_failures_pass() -> None:
    quota = FakeQuota(limited=False)
    google = Google(UNAVAILABLE, UNAVAILABLE, "listed")
    assert await calls(quota).operator(ACCOUNT, google) == "listed"
    assert quota.acquired == [(ACCOUNT, -1, False)] * 3  # a slot each time, ahead of messages


async def test_an_operators_call_that_is_refused_is_not_retried() -> None:
    refused = GoogleApiError(400, "invalid", "Invalid value", method="events.delete")
    with pytest.raises(GoogleApiError) as raised:
        await calls().operator(ACCOUNT, Google(refused, "never"))
    assert raised.value is refused


async def test_an_operators_call_rate_limited_slows_the_account_down_group_wide() -> None:
    quota = FakeQuota(limited=False)
    assert await calls(quota).operator(ACCOUNT, Google(SLOW_DOWN, "listed")) == "listed"
    assert quota.refusals == [(ACCOUNT, "rateLimitExceeded", 0.0)]


async def test_an_operators_call_meeting_a_spent_quota_pauses_it_and_says_so() -> None:
    quota = FakeQuota(limited=False, pause_s=1800)
    with pytest.raises(QuotaPaused) as paused:
        await calls(quota).operator(ACCOUNT, Google(SPENT))
    assert (paused.value.scope, paused.value.seconds) == ("account", 1800)
    assert quota.pauses == [(ACCOUNT, "quotaExceeded")]
    with pytest.raises(QuotaPaused):  # and no call is made while it is paused
        await calls(quota).operator(ACCOUNT, Google())


async def test_a_links_call_refreshes_a_refused_token_once() -> None:
    policy = calls()
    unauthorized = GoogleApiError(401, "authError", "Invalid Credentials", method="events.insert")
    google = Google(unauthorized, "created")
    assert await policy.for_link(row()).run(google) == "created"
    assert google.tokens[0] != google.tokens[1]  # a fresh token the second time
    assert isinstance(policy.tokens, FakeTokens)
    assert policy.tokens.asked == [(ACCOUNT, None), (ACCOUNT, google.tokens[0])]


async def test_a_halted_link_gets_no_call() -> None:
    policy = calls()
    policy.halts.halt("lnk_1", since=1.0)
    with pytest.raises(LinkHalted):
        await policy.for_link(row()).run(Google("never"))
    policy.halts.resume("lnk_1")
    assert await policy.for_link(row()).run(Google("created")) == "created"


async def test_a_live_message_whose_slot_is_too_far_leaves_the_window() -> None:
    class FarQuota(FakeQuota):
        def __init__(self, slowed: bool) -> None:
            super().__init__(limited=False)
            self.slowed = slowed

        async def acquire(
            self, account: str, ticket: int = 0, max_wait_s: float | None = None
        ) -> None:
            await super().acquire(account, ticket, max_wait_s)
            if max_wait_s is not None:
                raise SlotTooFar(42.0, slowed=self.slowed)

    for slowed, reason in ((False, BACKLOGGED), (True, RATE_LIMITED)):
        live = GoogleCalls(POLICY, FarQuota(slowed), FakeTokens()).for_link(row(), may_defer=True)
        with pytest.raises(AccountBacklogged) as left:
            await live.run(Google("never"))
        assert (left.value.reason, left.value.seconds) == (reason, 42.0)
    # Work that is not a live message waits for its slot, however far.
    patient = GoogleCalls(POLICY, FarQuota(False), FakeTokens()).for_link(row())
    assert await patient.run(Google("created")) == "created"


async def test_within_budget_stops_retrying_once_the_budget_is_spent() -> None:
    tries = 0

    async def failing() -> None:
        nonlocal tries
        tries += 1
        raise UNAVAILABLE

    with pytest.raises(GoogleApiError):
        await within_budget(
            failing,
            retriable=lambda exc: isinstance(exc, GoogleApiError),
            budget_s=0.05,
            initial_s=0.01,
            max_s=0.02,
        )
    assert 2 <= tries <= 10  # retried, and not for ever
