"""The sync engine: one booking event, applied to every active link of its activity.

Each link is independent: its own transaction, its own token, its own failures. The
(link, booking) record is locked while Google is called, so two consumers that briefly
hold the same partition during a rebalance cannot interleave their writes for a booking.
"""

from __future__ import annotations

import asyncio
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

from consumer.core import google_event_id, plan_operation, render_event
from consumer.db import LinkRow, MessagePosition, Repository
from consumer.google_calendar import GoogleApiError
from consumer.models import (
    BookingEvent,
    LinkState,
    Operation,
    Outcome,
    PlannedOperation,
    RecordedEvent,
    SyncResult,
)
from consumer.settings import Settings
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
    async def access_token(self, link_id: str, stored: Any, rejected: str | None = None
                           ) -> str: ...


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, GoogleApiError) and exc.transient


@dataclass
class _LinkCall:
    """Google calls for one link: counts attempts, refreshes once on an unexpected 401."""

    engine: SyncEngine
    row: LinkRow
    token: str | None = None
    attempts: int = 0
    refreshed: bool = field(default=False)

    async def run(self, call: Callable[[str], Awaitable[T]]) -> T:
        if self.token is None:
            self.token = await self.engine.tokens.access_token(self.row.link.id, self.row.tokens)
        try:
            return await self._with_retries(call)
        except GoogleApiError as exc:
            if not exc.unauthorized or self.refreshed:
                raise
        # A token we believed valid was refused: refresh once and try again.
        self.refreshed = True
        self.token = await self.engine.tokens.access_token(
            self.row.link.id, self.row.tokens, rejected=self.token)
        return await self._with_retries(call)

    async def _with_retries(self, call: Callable[[str], Awaitable[T]]) -> T:
        settings = self.engine.settings
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_transient),
            wait=_backoff(settings.retry_initial_s, settings.retry_max_s),
            stop=stop_before_delay(settings.retry_budget_s),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                self.attempts += 1
                assert self.token is not None
                return await call(self.token)
        raise AssertionError("unreachable")


def _backoff(initial: float, maximum: float) -> Callable[[RetryCallState], float]:
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
                 tokens: AccessTokens) -> None:
        self.settings = settings
        self.repository = repository
        self.google = google
        self.tokens = tokens

    async def handle(self, event: BookingEvent, position: MessagePosition | None = None
                     ) -> list[SyncResult]:
        """Apply one event to every active link; returns once every result is recorded."""
        await self.repository.upsert_booking(event)
        rows = await self.repository.links_for_activity(event.booking.activity_id)
        active = [row for row in rows if row.link.state is LinkState.ACTIVE]
        return list(await asyncio.gather(*(self.sync_link(event, row, position)
                                           for row in active)))

    async def sync_link(self, event: BookingEvent, row: LinkRow,
                        position: MessagePosition | None) -> SyncResult:
        booking = event.booking
        bound = log.bind(link_id=row.link.id, booking_id=booking.id, version=booking.version)
        async with self.repository.pool.connection() as conn, conn.transaction():
            recorded = await self.repository.lock_link_booking(conn, row.link.id, booking.id)
            planned = plan_operation(event, row.link, recorded)
            call = _LinkCall(self, row)
            try:
                result = await self._apply(planned, event, row, recorded, call)
            except TokenRefreshFailed as exc:
                if exc.permanent:
                    bound.warning("link_skipped_token_refresh_failed", cause=exc.reason)
                else:
                    bound.warning("token_endpoint_unavailable", cause=exc.reason)
                result = _result(row, planned.operation,
                                 Outcome.SKIPPED if exc.permanent else Outcome.FAILED,
                                 "token_refresh_failed", call, error=exc.reason)
            except GoogleApiError as exc:
                reason = "retries_exhausted" if exc.transient else "google_refused"
                bound.warning("link_sync_failed", op=planned.operation.value, cause=str(exc),
                              attempts=call.attempts)
                result = _result(row, planned.operation, Outcome.FAILED, reason, call,
                                 error=str(exc))
            await self.repository.record_result(conn, event, position, result)
        bound.debug("link_synced", op=result.operation.value, outcome=result.outcome.value,
                    reason=result.reason)
        return result

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
