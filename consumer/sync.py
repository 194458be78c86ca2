"""The sync engine: one booking event, applied to every active link of its activity.

Each link is independent: its own transaction, its own token, its own failures. The
(link, booking) record is locked while Google is called, so two consumers that briefly
hold the same partition during a rebalance cannot interleave their writes for a booking.

A link's health is kept here too: a refresh token Google refuses turns the link
`reauth_required`, a calendar that is gone or no longer writable turns it
`calendar_unavailable`; either way no more Google calls are made for it, and the warning is
logged once, by whoever made the transition. Work for a link that leaves `active` (here or,
through the watcher, in another process) stops before its next Google call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from consumer.batching import Batcher
from consumer.core import google_event_id, plan_operation, render_event
from consumer.db import LinkRow, LinkTokens, MessagePosition, Repository
from consumer.errors import is_retriable
from consumer.google_calendar import GoogleApiError
from consumer.metrics import Metrics
from consumer.models import (
    BookingEvent,
    LinkState,
    Operation,
    Outcome,
    PlannedOperation,
    RecordedEvent,
    SyncResult,
)
from consumer.quota import GroupQuota
from consumer.settings import Settings
from consumer.sync_store import SyncStore
from consumer.tokens import TokenRefreshFailed

log = structlog.get_logger(__name__)
T = TypeVar("T")
_MAX_GENERATIONS = 3  # ids tried per create before giving up (each 409 then 410 moves on)


class CalendarGateway(Protocol):
    async def insert_event(self, token: str, calendar_id: str, body: dict[str, Any]
                           ) -> dict[str, Any]: ...

    async def update_event(self, token: str, calendar_id: str, event_id: str,
                           body: dict[str, Any]) -> dict[str, Any]: ...

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None: ...


class AccessTokens(Protocol):
    async def access_token(self, link_id: str, stored: LinkTokens | None,
                           rejected: str | None = None) -> str: ...

    def forget(self, link_id: str) -> None: ...


class LinkHalted(Exception):
    """The link left `active` while work for it was in flight."""


class CalendarUnavailable(Exception):
    """The link's calendar is gone (404 on insert) or no longer writable (403)."""

    def __init__(self, cause: GoogleApiError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, GoogleApiError) and exc.transient


def _calendar_refused(exc: GoogleApiError) -> bool:
    return exc.status == 403 and not exc.transient


@dataclass
class _LinkCall:
    """Google calls for one link: counts attempts, refreshes once on an unexpected 401."""

    engine: SyncEngine
    row: LinkRow
    ticket: int  # the message's place in arrival order: quota slots go to the oldest first
    token: str | None = None
    attempts: int = 0
    refreshed: bool = field(default=False)

    def _check_active(self) -> None:
        if self.row.link.id in self.engine.halted:
            raise LinkHalted(self.row.link.id)

    async def run(self, call: Callable[[str], Awaitable[T]]) -> T:
        self._check_active()
        if self.token is None:
            self.token = await self.engine.tokens.access_token(self.row.link.id, self.row.tokens)
        try:
            return await self._with_retries(call)
        except GoogleApiError as exc:
            if not exc.unauthorized or self.refreshed:
                raise
        # A token we believed valid was refused: refresh once and try again.
        self._check_active()
        self.refreshed = True
        self.token = await self.engine.tokens.access_token(
            self.row.link.id, self.row.tokens, rejected=self.token)
        return await self._with_retries(call)

    async def _with_retries(self, call: Callable[[str], Awaitable[T]]) -> T:
        settings = self.engine.settings
        quota = self.engine.quota
        account = self.row.link.account_email
        # The first slot is waited for before the retry budget starts: a long queue for a
        # busy account is not a failure.
        if quota is not None:
            await quota.acquire(account, self.ticket)
        slot_taken = True
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            wait=google_backoff(settings.retry_initial_s, settings.retry_max_s),
            stop=stop_before_delay(settings.retry_budget_s),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self.attempts:
                    self._check_active()
                if quota is not None and not slot_taken:
                    await quota.acquire(account, self.ticket)
                slot_taken = False
                self.attempts += 1
                assert self.token is not None
                try:
                    return await call(self.token)
                except GoogleApiError as exc:
                    if quota is not None and exc.rate_limited:
                        await quota.refused(account, exc.reason, exc.retry_after)
                    raise
        raise AssertionError("unreachable")


def google_backoff(initial: float, maximum: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with full jitter, never shorter than Google's Retry-After."""
    jittered = wait_random_exponential(multiplier=initial, max=maximum)

    def wait(state: RetryCallState) -> float:
        delay = float(jittered(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, GoogleApiError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        return delay

    return wait


class SyncEngine:
    def __init__(self, settings: Settings, repository: Repository, google: CalendarGateway,
                 tokens: AccessTokens, metrics: Metrics | None = None,
                 store: SyncStore | None = None, quota: GroupQuota | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.settings = settings
        self.repository = repository
        self.google = google
        self.tokens = tokens
        self.store = store or SyncStore(settings.database_url)
        self.quota = quota if quota is not None and quota.limited else None
        self.halted: set[str] = set()  # links known to have left `active` mid-flight
        # Many messages' bookings are upserted and their links read in one round trip.
        self._intake: Batcher[BookingEvent, list[LinkRow]] = Batcher(
            self._take_in, split_on=lambda exc: not is_retriable(exc))
        self._tickets = itertools.count()

    async def close(self) -> None:
        await self._intake.close()
        await self.store.close()
        if self.quota is not None:
            await self.quota.close()

    def link_changed(self, link_id: str, state: LinkState) -> None:
        """Another process changed a link (the watcher tells): stop or resume its work."""
        self.tokens.forget(link_id)
        if state is LinkState.ACTIVE:
            self.halted.discard(link_id)
        else:
            self.halted.add(link_id)

    async def handle(self, event: BookingEvent, position: MessagePosition | None = None
                     ) -> list[SyncResult]:
        """Apply one event to every active link; returns once every result is recorded."""
        ticket = next(self._tickets)
        rows = await self._intake.submit(event)
        active = [row for row in rows if row.link.state is LinkState.ACTIVE]
        return list(await asyncio.gather(*(self.sync_link(event, row, position, ticket=ticket)
                                           for row in active)))

    async def _take_in(self, events: list[BookingEvent]) -> list[list[LinkRow]]:
        # The bookings are committed before the links are read: a link activated meanwhile
        # is either seen here or backfilled from these rows (its backfill reads them later).
        await self.repository.upsert_bookings(events)
        links = await self.repository.links_of_activities(
            {event.booking.activity_id for event in events})
        return [links.get(event.booking.activity_id, []) for event in events]

    async def sync_link(self, event: BookingEvent, row: LinkRow,
                        position: MessagePosition | None, source: str = "event",
                        force: bool = False, ticket: int | None = None) -> SyncResult:
        """`force`: apply the booking even where the recorded version says it is applied
        (a resync, for when Google's side drifted)."""
        booking = event.booking
        bound = log.bind(link_id=row.link.id, booking_id=booking.id, version=booking.version)
        health: tuple[LinkState, str] | None = None
        claim = await self.store.claim(row.link.id, booking.id)
        try:
            recorded, state = claim.recorded, claim.state
            call = _LinkCall(self, row, next(self._tickets) if ticket is None else ticket)
            if state is not LinkState.ACTIVE:  # changed since the link was read
                result = _result(row, Operation.NONE, Outcome.SKIPPED, f"link_{state}", call)
                await self.store.record(claim, event, position, result, source)
                self.metrics.link_operations.labels("none", "skipped").inc()
                return result
            # Read under the link's shared lock: active now, whatever a missed or late
            # notice says. Only work already past this point can be halted.
            self.halted.discard(row.link.id)
            if force and recorded is not None:
                recorded = recorded.model_copy(update={"applied_version": None})
            planned = plan_operation(event, row.link, recorded)
            try:
                result = await self._apply(planned, event, row, recorded, call)
            except LinkHalted:
                result = _result(row, planned.operation, Outcome.SKIPPED, "link_not_active",
                                 call)
            except TokenRefreshFailed as exc:
                if exc.permanent:
                    health = (LinkState.REAUTH_REQUIRED, f"token refresh refused: {exc.reason}")
                else:
                    bound.warning("token_endpoint_unavailable", cause=exc.reason)
                result = _result(row, planned.operation,
                                 Outcome.SKIPPED if exc.permanent else Outcome.FAILED,
                                 "token_refresh_failed", call, error=exc.reason)
            except CalendarUnavailable as exc:
                health = (LinkState.CALENDAR_UNAVAILABLE, str(exc.cause))
                result = _result(row, planned.operation, Outcome.FAILED, "calendar_unavailable",
                                 call, error=str(exc.cause))
            except GoogleApiError as exc:
                reason = "retries_exhausted" if exc.transient else "google_refused"
                bound.warning("link_sync_failed", op=planned.operation.value, cause=str(exc),
                              attempts=call.attempts)
                result = _result(row, planned.operation, Outcome.FAILED, reason, call,
                                 error=str(exc))
            await self.store.record(claim, event, position, result, source)
        finally:
            await self.store.release(claim)
        self.metrics.link_operations.labels(result.operation.value, result.outcome.value).inc()
        if health is not None:
            await self._leave_active(row, *health)
        bound.debug("link_synced", op=result.operation.value, outcome=result.outcome.value,
                    reason=result.reason)
        return result

    async def _leave_active(self, row: LinkRow, state: LinkState, reason: str) -> None:
        """Stop all work for the link; the process that makes the change logs it, once."""
        self.halted.add(row.link.id)
        # After the claim is released: the update must not wait behind a disconnect that is
        # itself waiting for that claim.
        if await self.repository.leave_active(row.link.id, state, reason):
            log.warning(f"link_{state}", link_id=row.link.id, activity_id=row.link.activity_id,
                        account=row.link.account_email, calendar_id=row.link.calendar_id,
                        cause=reason)

    async def backfill(self, row: LinkRow, concurrency: int = 8) -> dict[str, int]:
        """Bring a link that just became active up to the latest recorded booking states,
        through the same locked, versioned path as events (so events cannot double them)."""
        self.halted.discard(row.link.id)
        self.tokens.forget(row.link.id)
        pending = [event for event, recorded in
                   await self.repository.bookings_of_activity(row.link.id, row.link.activity_id)
                   if plan_operation(event, row.link, recorded).operation is not Operation.NONE]
        gate = asyncio.Semaphore(concurrency)

        async def one(event: BookingEvent) -> SyncResult:
            async with gate:
                return await self.sync_link(event, row, None, source="backfill")

        results = await asyncio.gather(*(one(event) for event in pending))
        counts = {"bookings": len(results)}
        for result in results:
            counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        await self.repository.mark_backfilled(row.link.id)
        log.info("link_backfilled", link_id=row.link.id, **counts)
        return counts

    async def _apply(self, planned: PlannedOperation, event: BookingEvent, row: LinkRow,
                     recorded: RecordedEvent | None, call: _LinkCall) -> SyncResult:
        booking = event.booking
        rec = recorded or RecordedEvent()
        calendar_id = row.link.calendar_id
        assert calendar_id is not None or planned.operation is Operation.NONE
        if planned.operation is Operation.NONE:
            if planned.reason == "version_not_newer":
                return _result(row, Operation.NONE, Outcome.UNCHANGED, planned.reason, call)
            new = rec.model_copy(update={"applied_version": booking.version})
            return _result(row, Operation.NONE, Outcome.UNCHANGED, planned.reason, call, new)
        assert calendar_id is not None
        if planned.operation is Operation.CREATE:
            return await self._create(event, row, rec.generation, planned.reason, call)
        event_id = rec.google_event_id
        assert event_id is not None
        if planned.operation is Operation.UPDATE:
            body = render_event(booking, row.link.id)
            try:
                await call.run(lambda t: self.google.update_event(t, calendar_id, event_id, body))
            except GoogleApiError as exc:
                if _calendar_refused(exc):
                    raise CalendarUnavailable(exc) from None
                if not exc.gone:
                    raise
                # Deleted by hand at Google: drop the stale record, create a fresh event
                # under the next generation's id (the old id stays taken).
                log.info("stale_event_recreated", link_id=row.link.id, booking_id=booking.id,
                         status=exc.status)
                return await self._create(event, row, rec.generation + 1,
                                          "stale_event_recreated", call)
            new = rec.model_copy(update={"applied_version": booking.version})
            return _result(row, Operation.UPDATE, Outcome.APPLIED, planned.reason, call, new,
                           event_id)
        reason = planned.reason
        try:
            await call.run(lambda t: self.google.delete_event(t, calendar_id, event_id))
        except GoogleApiError as exc:
            if _calendar_refused(exc):
                raise CalendarUnavailable(exc) from None
            if not exc.gone:
                raise
            reason = "already_gone"
        new = RecordedEvent(applied_version=booking.version, google_event_id=None,
                            generation=rec.generation + 1)
        return _result(row, Operation.DELETE, Outcome.APPLIED, reason, call, new, event_id)

    async def _create(self, event: BookingEvent, row: LinkRow, generation: int, reason: str,
                      call: _LinkCall) -> SyncResult:
        booking = event.booking
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        for gen in range(generation, generation + _MAX_GENERATIONS):
            event_id = google_event_id(row.link.id, booking.id, gen)
            body = render_event(booking, row.link.id, event_id)
            new = RecordedEvent(applied_version=booking.version, google_event_id=event_id,
                                generation=gen)
            try:
                await call.run(lambda t: self.google.insert_event(t, calendar_id, body))  # noqa: B023
                return _result(row, Operation.CREATE, Outcome.APPLIED, reason, call, new,
                               event_id)
            except GoogleApiError as exc:
                # An insert that finds no calendar, or no right to write to it, says the
                # calendar itself is unusable (unlike a 404 on one event).
                if exc.status == 404 or _calendar_refused(exc):
                    raise CalendarUnavailable(exc) from None
                if exc.status != 409:
                    raise
            # 409: an earlier attempt (a retry, a replay, a crash before recording) already
            # inserted this id. Make it say what the booking says now.
            try:
                await call.run(
                    lambda t: self.google.update_event(t, calendar_id, event_id, body))  # noqa: B023
                return _result(row, Operation.CREATE, Outcome.APPLIED, "already_existed", call,
                               new, event_id)
            except GoogleApiError as exc:
                if not exc.gone:
                    raise
        return _result(row, Operation.CREATE, Outcome.FAILED, "no_free_event_id", call,
                       error=f"ids of {_MAX_GENERATIONS} generations taken")


def _result(row: LinkRow, operation: Operation, outcome: Outcome, reason: str, call: _LinkCall,
            recorded: RecordedEvent | None = None, event_id: str | None = None,
            error: str | None = None) -> SyncResult:
    return SyncResult(link_id=row.link.id, operation=operation, outcome=outcome, reason=reason,
                      google_event_id=event_id, error=error, attempts=call.attempts,
                      recorded=recorded, finished_at=datetime.now(UTC))
