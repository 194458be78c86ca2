"""The sync engine's decisions (consumer/service/sync.py), on fakes of its ports: what it does with
each answer Google gives, without a broker, a database or HTTP.

Each test drives SyncEngine.handle (the runner's entry) and checks the calendar, the result
recorded, the link's state and the calls made: the decision, not only the outcome.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calls, sync_engine
from consumer.domain.errors import TokenRefreshFailed
from consumer.domain.models import (
    LinkRow,
    LinkState,
    MessagePosition,
    Operation,
    Outcome,
    SyncResult,
)
from consumer.domain.planning import google_event_id
from consumer.domain.refusals import NOT_GOOGLE_ANSWER as NOT_GOOGLE
from consumer.service.pressure import FAILING, RATE_LIMITED
from consumer.service.sync import SyncEngine
from consumer.settings import Settings
from tests.plugins.events import booking_model
from tests.unit.fakes import FakeCalendar, FakeQuota, FakeRepository, FakeSyncStore, FakeTokens

ACCOUNT = "owner@example.com"
CALENDAR = "cal"


def unit_settings(**changes: Any) -> Settings:
    """Quick retries: a budget of 0.3 s, waits of a few milliseconds."""
    values: dict[str, Any] = {
        "retry_budget_s": 0.3,
        "retry_initial_s": 0.001,
        "retry_max_s": 0.005,
        "google_client_id": "unit",
        **changes,
    }
    return Settings(**values)


@dataclass
class World:
    google: FakeCalendar
    tokens: FakeTokens
    repository: FakeRepository
    store: FakeSyncStore
    quota: FakeQuota
    engine: SyncEngine
    link: LinkRow

    @property
    def link_id(self) -> str:
        return self.link.link.id

    def event_id(self, generation: int, booking_id: str = "bk_1") -> str:
        return google_event_id(self.link_id, booking_id, generation)

    async def sync(
        self,
        booking_id: str = "bk_1",
        version: int = 1,
        event_type: str = "booking.created",
        **booking: Any,
    ) -> SyncResult:
        """One message through the engine; its one link's result (as recorded)."""
        event = booking_model(booking_id, version, event_type, **booking)
        before = len(self.store.results)
        results = await self.engine.handle(event, MessagePosition("bookings", 0, version))
        assert len(results) == 1, results
        assert [r.result for r in self.store.results[before:]] == results  # all recorded
        return results[0]

    def live(self) -> dict[str, dict[str, Any]]:
        return self.google.live_events(CALENDAR)


def pacing(world: World) -> Counter[str]:
    """Per account, its live messages retrying a rate limit inside the window."""
    return world.engine.calls.pressure.retrying[RATE_LIMITED]


async def make_world(deleted_event_update_status: int = 403, **settings: Any) -> World:
    google = FakeCalendar(deleted_event_update_status)
    google.add_calendar(CALENDAR)
    google.issue_token("t")  # the token a test's own calls at Google use
    repository, quota = FakeRepository(), FakeQuota()
    tokens = FakeTokens(google, repository)
    store = FakeSyncStore(repository)
    link = repository.add_link("lnk_1", "act_1", ACCOUNT, CALENDAR)
    config = unit_settings(**settings)
    calls = google_calls(config, quota, tokens)
    engine = sync_engine(config, repository, store, calls, google, Metrics(), config.deployment_id)
    return World(google, tokens, repository, store, quota, engine, link)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = await make_world()
    yield made
    await made.engine.close()


# --- creates, updates, deletes ------------------------------------------------------------------


async def test_a_new_booking_is_inserted_under_its_generation_zero_id(world: World) -> None:
    result = await world.sync(customer_name="Ada Lovelace")
    assert (result.operation, result.outcome, result.reason) == (
        Operation.CREATE,
        Outcome.APPLIED,
        "booking_synced",
    )
    assert result.google_event_id == world.event_id(0) and result.attempts == 1
    assert list(world.live()) == [world.event_id(0)]
    assert "Ada Lovelace" in world.live()[world.event_id(0)]["summary"]
    recorded = world.repository.link_bookings[(world.link_id, "bk_1")]
    assert (recorded.applied_version, recorded.generation, recorded.calendar_id) == (1, 0, CALENDAR)
    assert world.quota.acquired == [(ACCOUNT, 0, True)]  # a live message may be deferred


async def test_a_newer_version_updates_the_same_event_and_an_older_one_changes_nothing(
    world: World,
) -> None:
    await world.sync(version=1)
    updated = await world.sync(version=3, event_type="booking.updated", customer_name="Bo")
    assert (updated.operation, updated.outcome) == (Operation.UPDATE, Outcome.APPLIED)
    assert list(world.live()) == [world.event_id(0)]
    assert "Bo" in world.live()[world.event_id(0)]["summary"]
    calls = len(world.google.calls)
    late = await world.sync(version=2, event_type="booking.updated", customer_name="Old")
    assert (late.operation, late.outcome, late.reason) == (
        Operation.NONE,
        Outcome.UNCHANGED,
        "version_not_newer",
    )
    assert len(world.google.calls) == calls  # Google is not asked
    assert "Bo" in world.live()[world.event_id(0)]["summary"]


async def test_a_409_on_insert_means_an_earlier_attempt_inserted_it_so_it_is_updated(
    world: World,
) -> None:
    # A crash after Google's insert and before the record: the id is taken, stale.
    await world.google.insert_event("t", CALENDAR, {"id": world.event_id(0), "summary": "old"})
    result = await world.sync(customer_name="Grace Hopper")
    assert (result.outcome, result.reason, result.google_event_id) == (
        Outcome.APPLIED,
        "already_existed",
        world.event_id(0),
    )
    assert [c[0] for c in world.google.calls[-2:]] == ["events.insert", "events.update"]
    assert list(world.live()) == [world.event_id(0)]  # one event, not two
    assert "Grace Hopper" in world.live()[world.event_id(0)]["summary"]
    assert world.repository.link_bookings[(world.link_id, "bk_1")].generation == 0


@pytest.mark.parametrize("update_status", [403, 410])
async def test_an_id_taken_by_a_hand_deleted_event_moves_to_the_next_generation(
    update_status: int,
) -> None:
    world = await make_world(deleted_event_update_status=update_status)
    try:
        await world.google.insert_event("t", CALENDAR, {"id": world.event_id(0)})
        world.google.delete_by_hand(CALENDAR, world.event_id(0))
        result = await world.sync()
        assert (result.outcome, result.google_event_id) == (Outcome.APPLIED, world.event_id(1))
        assert list(world.live()) == [world.event_id(1)]
        assert world.repository.link_bookings[(world.link_id, "bk_1")].generation == 1
        # A 403 is ambiguous: events.get tells a deleted event (cancelled) from a refusal.
        assert world.google.count("events.get") == (1 if update_status == 403 else 0)
        assert world.repository.state(world.link_id) is LinkState.ACTIVE
    finally:
        await world.engine.close()


async def test_when_every_generation_is_taken_the_create_fails_for_the_repair_loop(
    world: World,
) -> None:
    for generation in range(3):
        await world.google.insert_event("t", CALENDAR, {"id": world.event_id(generation)})
        world.google.delete_by_hand(CALENDAR, world.event_id(generation))
    before = len(world.google.calls)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "no_free_event_id")
    assert result.repair is not None and result.repair.reason == "no_free_event_id"
    tried = [c[2] for c in world.google.calls[before:] if c[0] == "events.insert"]
    assert tried == [world.event_id(g) for g in range(3)]  # three generations, then it stops
    assert not world.live()


async def test_an_update_of_a_hand_deleted_event_recreates_it_under_the_next_generation(
    world: World,
) -> None:
    await world.sync(version=1)
    world.google.delete_by_hand(CALENDAR, world.event_id(0))
    result = await world.sync(version=2, event_type="booking.updated", customer_name="Cy")
    assert (result.operation, result.outcome, result.reason) == (  # the update became a create
        Operation.CREATE,
        Outcome.APPLIED,
        "stale_event_recreated",
    )
    assert list(world.live()) == [world.event_id(1)]
    assert "Cy" in world.live()[world.event_id(1)]["summary"]
    assert world.repository.link_bookings[
        (world.link_id, "bk_1")
    ].google_event_id == world.event_id(1)


async def test_a_delete_of_an_event_already_gone_is_done(world: World) -> None:
    await world.sync(version=1)
    world.google.delete_by_hand(CALENDAR, world.event_id(0))
    result = await world.sync(version=2, event_type="booking.canceled", status="canceled")
    assert (result.operation, result.outcome, result.reason) == (
        Operation.DELETE,
        Outcome.APPLIED,
        "already_gone",
    )
    recorded = world.repository.link_bookings[(world.link_id, "bk_1")]
    assert recorded.google_event_id is None and recorded.generation == 1
    again = await world.sync(version=3, event_type="booking.updated")  # back: a fresh id
    assert again.google_event_id == world.event_id(1) and list(world.live()) == [world.event_id(1)]


async def test_a_new_calendar_takes_the_event_and_the_old_one_lets_it_go(world: World) -> None:
    await world.sync(version=1)
    world.google.add_calendar("cal2")
    world.repository.choose_calendar(world.link_id, "cal2")
    result = await world.sync(version=2, event_type="booking.updated")
    assert (result.operation, result.outcome, result.reason) == (
        Operation.MOVE,
        Outcome.APPLIED,
        "calendar_changed",
    )
    assert not world.live() and list(world.google.live_events("cal2")) == [world.event_id(1)]
    assert result.stranded == ()
    recorded = world.repository.link_bookings[(world.link_id, "bk_1")]
    assert (recorded.calendar_id, recorded.generation) == ("cal2", 1)


async def test_a_move_away_from_a_calendar_gone_meanwhile_strands_the_old_event(
    world: World,
) -> None:
    await world.sync(version=1)
    world.google.share_read_only(CALENDAR)  # the old calendar can no longer be written
    world.google.add_calendar("cal2")
    world.repository.choose_calendar(world.link_id, "cal2")
    result = await world.sync(version=2, event_type="booking.updated")
    assert (result.operation, result.outcome) == (Operation.MOVE, Outcome.APPLIED)
    [(calendar, event_id, why)] = result.stranded  # left there, recorded for reconcile
    assert (calendar, event_id) == (CALENDAR, world.event_id(0)) and "403" in why
    assert list(world.google.live_events("cal2")) == [world.event_id(1)]
    assert world.repository.state(world.link_id) is LinkState.ACTIVE  # the new one is fine


# --- tokens ---------------------------------------------------------------------------------


async def test_a_401_on_a_token_believed_valid_refreshes_once_and_retries(world: World) -> None:
    world.tokens.current[ACCOUNT] = world.google.issue_token("ya29.revoked-at-google")
    world.google.revoke_token("ya29.revoked-at-google")  # at Google, before its expiry
    result = await world.sync()
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    assert world.tokens.asked == [(ACCOUNT, None), (ACCOUNT, "ya29.revoked-at-google")]
    assert world.google.tokens_used[-1] == world.tokens.current[ACCOUNT]


async def test_a_401_that_persists_after_one_refresh_fails_the_link_only(world: World) -> None:
    world.google.fail(None, 401, "authError", times=5)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "google_refused")
    assert "401" in (result.error or "")
    assert world.tokens.refreshes == 1 and len(world.google.calls) == 2
    assert world.repository.state(world.link_id) is LinkState.ACTIVE
    assert result.repair is not None  # the repair loop tries again later


async def test_a_refresh_token_google_refuses_turns_the_link_reauth_required(world: World) -> None:
    world.tokens.failure = TokenRefreshFailed("invalid_grant", permanent=True)
    result = await world.sync()
    assert (result.outcome, result.reason, result.error) == (
        Outcome.SKIPPED,
        "token_refresh_failed",
        "invalid_grant",
    )
    assert len(world.tokens.asked) == 1 and not world.google.calls  # never retried
    assert world.repository.state(world.link_id) is LinkState.REAUTH_REQUIRED
    assert world.link_id in world.engine.calls.halts
    assert await world.engine.handle(booking_model("bk_2"), None) == []  # no more work


async def test_a_refused_grant_stops_every_active_link_of_the_account(world: World) -> None:
    other = world.repository.add_link("lnk_2", "act_2", ACCOUNT, "cal2")  # its one grant
    elsewhere = world.repository.add_link("lnk_3", "act_3", "other@example.com", "cal3")
    world.tokens.failure = TokenRefreshFailed(
        "invalid_grant", permanent=True, description="Token has been expired or revoked."
    )
    world.tokens.failures_left = 1
    result = await world.sync()
    assert (result.outcome, result.error) == (Outcome.SKIPPED, "invalid_grant")
    reason = "token refresh refused: invalid_grant: Token has been expired or revoked."
    assert sorted(world.repository.left_active) == [
        (world.link_id, LinkState.REAUTH_REQUIRED, reason),
        (other.link.id, LinkState.REAUTH_REQUIRED, reason),
    ]
    assert {world.link_id, other.link.id} <= set(world.engine.calls.halts.halted)
    assert world.repository.state(elsewhere.link.id) is LinkState.ACTIVE
    assert elsewhere.link.id not in world.engine.calls.halts


async def test_a_token_endpoint_outage_is_retried_then_left_to_the_repair_loop(
    world: World,
) -> None:
    world.tokens.failure = TokenRefreshFailed("token_endpoint_unreachable", permanent=False)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "token_refresh_failed")
    assert result.repair is not None and result.repair.reason == "token_endpoint_unavailable"
    assert len(world.tokens.asked) > 1  # retried within the budget
    assert world.repository.state(world.link_id) is LinkState.ACTIVE  # an outage, not a revocation


async def test_a_token_endpoint_that_comes_back_within_the_budget_is_no_failure(
    world: World,
) -> None:
    world.tokens.failure = TokenRefreshFailed("token_endpoint_unreachable", permanent=False)
    world.tokens.failures_left = 2
    result = await world.sync()
    assert result.outcome is Outcome.APPLIED and len(world.tokens.asked) == 3


# --- each refusal of Google's table (consumer/domain/refusals.py) --------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(None, "TimeoutError"), (500, "backendError"), (503, "backendError"), (408, "timeout")],
)
async def test_a_passing_fault_is_retried_within_the_budget(
    world: World, status: int | None, reason: str
) -> None:
    world.google.fail("events.insert", status, reason, times=2)
    result = await world.sync()
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 3)
    assert list(world.live()) == [world.event_id(0)]


async def test_a_fault_that_outlasts_the_budget_fails_for_the_repair_loop(world: World) -> None:
    world.google.fail("events.insert", 503, "backendError", times=10_000)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "retries_exhausted")
    assert result.attempts > 2 and result.repair is not None and result.repair.backoff
    assert result.repair.due_in_s > 0  # the repair loop's backoff, not at once


@pytest.mark.parametrize(("status", "reason"), [(400, "invalid"), (412, "conditionNotMet")])
async def test_a_refusal_google_would_repeat_is_not_retried_now(
    world: World, status: int, reason: str
) -> None:
    world.google.fail("events.insert", status, reason)
    result = await world.sync()
    assert (result.outcome, result.reason, result.attempts) == (Outcome.FAILED, "google_refused", 1)
    assert result.repair is not None
    assert world.repository.state(world.link_id) is LinkState.ACTIVE


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (403, "rateLimitExceeded"),
        (429, "rateLimitExceeded"),
        (403, "userRateLimitExceeded"),
        (429, "tooManyRequests"),
    ],
)
async def test_a_rate_limit_slows_the_accounts_quota_and_is_retried(
    world: World, status: int, reason: str
) -> None:
    world.google.fail("events.insert", status, reason, domain="usageLimits")
    result = await world.sync()
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    assert world.quota.refusals == [(ACCOUNT, reason, None)]
    assert pacing(world)[ACCOUNT] == 0  # its place in the window is given back


async def test_a_rate_limit_for_an_account_already_pacing_leaves_the_window(world: World) -> None:
    pacing(world)[ACCOUNT] = 1  # one of its live messages already waits in the window
    pacing(world)["other@example.com"] = 5  # another account's pacing is not this one's
    world.google.fail(
        "events.insert", 403, "userRateLimitExceeded", domain="usageLimits", retry_after=3.0
    )
    pacing(world)[ACCOUNT] += 1  # a second one, meanwhile: the window has its two
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.DEFERRED, "account_rate_limited")
    assert result.repair is not None and not result.repair.backoff
    assert world.google.count("events.insert") == 0  # no call Google would refuse
    assert not world.live()


async def test_a_message_of_an_account_pacing_leaves_no_sooner_than_retry_after(
    world: World,
) -> None:
    world.engine.calls.pressure.retry_after(ACCOUNT, 4.0)  # Google said: not for 4 seconds
    pacing(world)[ACCOUNT] = 2
    result = await world.sync()
    assert result.repair is not None and result.repair.not_before_s > 3.5


async def test_a_rate_limit_met_by_the_second_of_two_in_the_window_defers_it(
    world: World,
) -> None:
    pacing(world)[ACCOUNT] = 1  # one pacing: this message may call, and is refused
    world.google.fail("events.insert", 429, "rateLimitExceeded", domain="usageLimits")
    result = await world.sync()
    # It becomes the second pacing one, retries within the budget and is applied.
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)
    assert pacing(world)[ACCOUNT] == 1  # its own place given back


async def test_a_rate_limit_with_two_already_pacing_defers_a_call_already_made(
    world: World,
) -> None:
    # The window had room when this message called; two others began pacing meanwhile.
    world.google.fail("events.insert", 429, "rateLimitExceeded", domain="usageLimits")
    original = world.quota.refused

    async def two_more_meanwhile(account: str, reason: str, retry_after_s: float | None) -> None:
        pacing(world)[ACCOUNT] = 2
        await original(account, reason, retry_after_s)

    world.quota.refused = two_more_meanwhile  # type: ignore[method-assign]
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.DEFERRED, "account_rate_limited")
    assert world.google.count("events.insert") == 1


# --- an account whose calls fail (issue 20, point 8) -----------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(503, "backendError"), (500, "backendError"), (None, "TimeoutError"), (200, NOT_GOOGLE)],
)
async def test_a_failing_call_takes_one_of_its_accounts_places_and_gives_it_back(
    world: World, status: int | None, reason: str
) -> None:
    world.google.fail("events.insert", status, reason)
    result = await world.sync()
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)  # retried in the window
    assert world.engine.calls.pressure.held(ACCOUNT) == 0  # its place given back


async def test_a_live_message_of_an_account_failing_with_its_places_taken_leaves_at_once(
    world: World,
) -> None:
    world.engine.calls.pressure.retrying[FAILING][ACCOUNT] = 2  # two of its messages retry already
    world.engine.calls.pressure.retrying[FAILING]["other@example.com"] = 5  # not this account's
    world.engine.calls.pressure.failed(ACCOUNT, "503 backendError: Service Unavailable")
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.DEFERRED, "account_failing")
    assert result.error == "503 backendError: Service Unavailable"  # what its calls meet
    # Its calls fail: the repair loop's backoff (not at once, as a mere queue would be).
    assert result.repair is not None and result.repair.backoff and result.repair.due_in_s > 0
    assert world.google.count("events.insert") == 0  # no call while the places are taken
    assert world.engine.calls.pressure.held(ACCOUNT) == 2


async def test_a_failure_met_when_the_last_place_went_meanwhile_leaves_after_one_call(
    world: World,
) -> None:
    world.google.fail("events.insert", 503, "backendError", times=10_000)
    world.engine.calls.pressure.retrying[FAILING][ACCOUNT] = 1  # one place left: the first takes it
    first, second = booking_model("bk_1", 1), booking_model("bk_2", 1)
    results = await asyncio.gather(
        world.engine.handle(first, MessagePosition("bookings", 0, 1)),
        world.engine.handle(second, MessagePosition("bookings", 0, 2)),
    )
    outcomes = sorted((r[0].outcome, r[0].reason, r[0].attempts > 1) for r in results)
    assert outcomes == [
        (Outcome.DEFERRED, "account_failing", False),  # left after its first call
        (Outcome.FAILED, "retries_exhausted", True),  # retried in the window, then owed
    ]
    assert world.engine.calls.pressure.held(ACCOUNT) == 1  # the place taken before, nothing more


async def test_a_5xx_that_says_retry_after_defers_no_sooner(world: World) -> None:
    world.google.fail("events.insert", 503, "backendError", times=10_000, retry_after=4.0)
    world.engine.calls.pressure.retrying[FAILING][ACCOUNT] = 2
    world.engine.calls.pressure.retry_after(ACCOUNT, 4.0)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.DEFERRED, "account_failing")
    assert result.repair is not None and result.repair.due_in_s > 3.5


async def test_a_message_that_may_not_be_deferred_retries_whatever_its_account(
    world: World,
) -> None:
    """Work outside the window (a backfill, a resync) has no place to leave: it retries."""
    world.engine.calls.pressure.retrying[FAILING][ACCOUNT] = 2
    world.google.fail("events.insert", 503, "backendError")
    result = await world.engine.sync_link(
        booking_model("bk_1", 1), world.link, None, source="backfill"
    )
    assert (result.outcome, result.attempts) == (Outcome.APPLIED, 2)


@pytest.mark.parametrize(
    ("reason", "scope", "paused"),
    [
        ("quotaExceeded", "account", ACCOUNT),
        ("dailyLimitExceeded", "project", None),
        ("accessNotConfigured", "project", None),
    ],
)
async def test_a_quota_spent_for_hours_pauses_it_and_defers_the_work(
    world: World, reason: str, scope: str, paused: str | None
) -> None:
    world.google.fail("events.insert", 403, reason, domain="usageLimits")
    result = await world.sync()
    assert (result.outcome, result.reason, result.attempts) == (
        Outcome.DEFERRED,
        f"{scope}_paused",
        1,
    )
    assert world.quota.pauses == [(paused, reason)]
    assert result.repair is not None and result.repair.not_before_s == world.quota.pause_s
    assert result.repair.due_in_s >= world.quota.pause_s  # not before the pause ends
    assert world.repository.state(world.link_id) is LinkState.ACTIVE
    calls = len(world.google.calls)
    later = await world.sync("bk_2")  # paused: deferred without asking Google
    assert later.outcome is Outcome.DEFERRED and len(world.google.calls) == calls


async def test_a_404_on_insert_for_a_deleted_calendar_turns_the_link_unavailable(
    world: World,
) -> None:
    world.google.remove_calendar(CALENDAR)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "calendar_unavailable")
    assert world.google.count("calendarList.get") == 1  # asked before deciding
    assert world.repository.state(world.link_id) is LinkState.CALENDAR_UNAVAILABLE
    calls = len(world.google.calls)
    assert await world.engine.handle(booking_model("bk_2"), None) == []
    assert len(world.google.calls) == calls  # no more Google calls for it


async def test_a_calendar_shared_read_only_turns_the_link_unavailable(world: World) -> None:
    world.google.share_read_only(CALENDAR)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "calendar_unavailable")
    assert "reader" in (result.error or "")
    assert world.repository.left_active == [
        (world.link_id, LinkState.CALENDAR_UNAVAILABLE, result.error)
    ]


async def test_a_404_on_insert_for_a_calendar_still_listed_and_writable_stands(
    world: World,
) -> None:
    world.google.fail("events.insert", 404, "notFound")
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.FAILED, "google_refused")
    assert world.google.count("calendarList.get") == 1
    assert world.repository.state(world.link_id) is LinkState.ACTIVE


async def test_an_unexplained_403_on_an_update_of_an_event_still_there_stands(world: World) -> None:
    await world.sync(version=1)
    world.google.fail("events.update", 403, "forbidden")
    result = await world.sync(version=2, event_type="booking.updated")
    assert (result.outcome, result.reason) == (Outcome.FAILED, "google_refused")
    # It asked: the event is there (not cancelled), the calendar writable: no recreate.
    assert world.google.count("events.get") == 1 and world.google.count("calendarList.get") == 1
    assert list(world.live()) == [world.event_id(0)]
    assert world.repository.state(world.link_id) is LinkState.ACTIVE


# --- links that leave `active` -------------------------------------------------------------------


async def test_a_link_halted_meanwhile_gets_no_google_call(world: World) -> None:
    world.engine.halt(world.link_id, since=world.repository.state_changed_at[world.link_id] + 1)
    result = await world.sync()
    assert (result.outcome, result.reason) == (Outcome.SKIPPED, "link_not_active")
    assert not world.google.calls


async def test_without_a_quota_configured_calls_go_straight_and_a_halt_still_stops_them(
    world: World,
) -> None:
    world.quota.limited = False  # the engine takes its fast path: no race with the halt
    applied = await world.sync("bk_1")
    assert applied.outcome is Outcome.APPLIED and world.quota.acquired
    world.engine.halt(world.link_id, since=world.repository.state_changed_at[world.link_id] + 1)
    calls = len(world.google.calls)
    halted = await world.sync("bk_2")
    assert (halted.outcome, halted.reason) == (Outcome.SKIPPED, "link_not_active")
    assert len(world.google.calls) == calls


async def test_a_link_made_active_again_after_its_halt_works_again(world: World) -> None:
    world.engine.link_changed(world.link_id, LinkState.DISCONNECTED, 1.0)
    assert world.link_id in world.engine.calls.halts
    world.engine.grant_changed(ACCOUNT)  # its account's grant replaced (the watcher tells)
    assert world.tokens.forgotten == [ACCOUNT]  # its cached token is dropped
    world.engine.link_changed(world.link_id, LinkState.ACTIVE, 2.0)
    result = await world.sync()
    assert result.outcome is Outcome.APPLIED


async def test_every_write_is_tagged_with_the_engines_deployment() -> None:
    world = await make_world(deployment_id="dep-unit")
    try:
        await world.sync(version=1)
        assert (
            world.live()[world.event_id(0)]["extendedProperties"]["private"]["deployment"]
            == "dep-unit"
        )
        # An update (and an event a person untagged) is written with the tag again.
        world.google.live_events(CALENDAR)[world.event_id(0)]["extendedProperties"]["private"].pop(
            "deployment"
        )
        await world.sync(version=2, event_type="booking.updated", customer_name="Two")
        assert (
            world.live()[world.event_id(0)]["extendedProperties"]["private"]["deployment"]
            == "dep-unit"
        )
    finally:
        await world.engine.close()
