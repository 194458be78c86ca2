"""The sync engine: one booking event, applied to every active link of its activity.

Each link is independent: its own transaction, its own token, its own failures. The
(link, booking) record is locked while Google is called, so two consumers that briefly
hold the same partition during a rebalance cannot interleave their writes for a booking.

Google's refusals are handled as consumer.domain.refusals classifies them: rate limits pace the
quota and are retried; a quota spent for hours pauses the account (or the project) and the
work is deferred; a 403 on one event's write asks Google about that event (deleted by a
person: recreated under the next generation's id, or taken as gone); a 403 or 404 on an
insert asks the calendar list whether the calendar is gone or read-only before the link
turns `calendar_unavailable`. Whatever is left off the calendar (failed after the retry
budget, deferred, the token endpoint down) is kept in `repairs` with its result, and the
repair loop (consumer.service.repairs) re-drives it: nothing is forgotten.

A link's health is kept here too: a refresh token Google refuses turns the link
`reauth_required`, a calendar that is gone or no longer writable turns it
`calendar_unavailable`; either way no more Google calls are made for it, and the warning is
logged once, by whoever made the transition. Work for a link that leaves `active` (here or,
through the watcher, in another process) stops before its next Google call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_before_delay,
)

from consumer.adapters.batching import Batcher
from consumer.adapters.classify import is_retriable
from consumer.adapters.google.backoff import google_backoff
from consumer.adapters.google.calendar import CalendarInfo
from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.quota import GroupQuota
from consumer.adapters.postgres.repository import Repository
from consumer.adapters.postgres.sync_store import SyncStore
from consumer.domain.errors import (
    AccountBacklogged,
    AccountFailing,
    CalendarUnavailable,
    ClaimLost,
    GoogleApiError,
    LinkHalted,
    QuotaPaused,
    TokenRefreshFailed,
    printable,
)
from consumer.domain.models import (
    BookingEvent,
    LinkRow,
    LinkState,
    LinkTokens,
    MessagePosition,
    Operation,
    Outcome,
    PlannedOperation,
    RecordedEvent,
    RepairPlan,
    SyncResult,
)
from consumer.domain.planning import google_event_id, plan_operation, render_event
from consumer.domain.refusals import Action
from consumer.logs import debug_enabled
from consumer.service.pressure import FAILING, RATE_LIMITED, AccountPressure
from consumer.settings import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")
_MAX_GENERATIONS = 3  # ids tried per create before giving up (each 409 then 410 moves on)


class CalendarGateway(Protocol):
    async def insert_event(
        self, token: str, calendar_id: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def update_event(
        self, token: str, calendar_id: str, event_id: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None: ...

    async def get_event(self, token: str, calendar_id: str, event_id: str) -> dict[str, Any]: ...

    async def calendar_entry(self, token: str, calendar_id: str) -> CalendarInfo: ...


class AccessTokens(Protocol):
    """Access tokens per Google account (its one grant, shared by all its links)."""

    async def access_token(
        self, account: str, stored: LinkTokens | None, rejected: str | None = None
    ) -> str: ...

    def forget(self, account: str) -> None: ...


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, GoogleApiError) and exc.retriable


def _is_token_outage(exc: BaseException) -> bool:
    return isinstance(exc, TokenRefreshFailed) and exc.retriable


@dataclass
class _LinkCall:
    """Google calls for one link: counts attempts, refreshes once on an unexpected 401,
    takes quota slots, and turns a spent quota into a pause of that quota."""

    engine: SyncEngine
    row: LinkRow
    ticket: int  # the message's place in arrival order: quota slots go to the oldest first
    may_defer: bool = False  # a live message: may leave the window when its account is busy
    token: str | None = None
    attempts: int = 0
    refreshed: bool = field(default=False)
    # Why this call holds one of its account's places in the window (pressure.py), if it does.
    placed: str | None = None

    def _check_active(self) -> None:
        if self.row.link.id in self.engine.halted:
            raise LinkHalted(self.row.link.id)

    async def run(self, call: Callable[[str], Awaitable[T]]) -> T:
        self._check_active()
        if self.token is None:
            self.token = await self._access_token()
        try:
            return await self._with_retries(call)
        except GoogleApiError as exc:
            if not exc.unauthorized or self.refreshed:
                raise
        # A token we believed valid was refused: refresh once and try again.
        self._check_active()
        self.refreshed = True
        self.token = await self._access_token(rejected=self.token)
        return await self._with_retries(call)

    async def _access_token(self, rejected: str | None = None) -> str:
        """The link's token; an unreachable token endpoint is retried within the budget."""
        self._check_active()
        started = time.monotonic()
        try:  # almost always a token at hand: no retry machinery around it (CPU per call)
            return await self.engine.tokens.access_token(
                self.row.link.account_email, self.row.tokens, rejected=rejected
            )
        except TokenRefreshFailed as exc:
            if not exc.retriable:
                raise
            first_failure: BaseException | None = exc
        settings = self.engine.settings
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_token_outage),
            wait=google_backoff(settings.retry_initial_s, settings.retry_max_s),
            stop=stop_before_delay(
                max(0.0, settings.retry_budget_s - (time.monotonic() - started))
            ),
            reraise=True,
        ):
            with attempt:
                if first_failure is not None:  # the first try's failure: backoff comes next
                    failure, first_failure = first_failure, None
                    raise failure
                self._check_active()
                return await self.engine.tokens.access_token(
                    self.row.link.account_email, self.row.tokens, rejected=rejected
                )
        raise AssertionError("unreachable")

    async def _with_retries(self, call: Callable[[str], Awaitable[T]]) -> T:
        settings = self.engine.settings
        account = self.row.link.account_email
        pressure = self.engine.pressure
        if self.may_defer and self.attempts == 0 and pressure.full(account):
            # Google is pacing this account, or failing its calls, and enough of its
            # messages already retry in the window: this one leaves at once, without a call
            # Google would refuse and without holding a place other accounts' messages need
            # meanwhile; its repair comes no sooner than Google's Retry-After allows.
            raise self._leave_window(pressure.why(account))
        # The first slot is waited for before the retry budget starts: a long queue for a
        # busy account is not a failure (but a live message may leave the window for it).
        await self._slot(account, self.may_defer)
        started = time.monotonic()
        try:
            try:  # most calls succeed at once: no retry machinery around them (CPU per call)
                return await self._attempt(call)
            except GoogleApiError as exc:
                if not exc.retriable:
                    raise
                first_failure: BaseException | None = exc
            # Retried within what is left of the budget, which started with the first call.
            retrying = AsyncRetrying(
                retry=retry_if_exception(_is_retriable),
                wait=google_backoff(settings.retry_initial_s, settings.retry_max_s),
                stop=stop_before_delay(
                    max(0.0, settings.retry_budget_s - (time.monotonic() - started))
                ),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    if first_failure is not None:
                        # Tenacity counts the first call's failure as its first attempt,
                        # so the backoff (and Retry-After) comes before the next one.
                        failure, first_failure = first_failure, None
                        raise failure
                    await self._slot(account, False)
                    return await self._attempt(call)
            raise AssertionError("unreachable")
        finally:
            if self.placed is not None:
                pressure.leave(account, self.placed)
                self.placed = None

    def _leave_window(
        self, why: str, cause: str | None = None
    ) -> AccountBacklogged | AccountFailing:
        """The deferral of a live message whose account has no place left in the window."""
        account = self.row.link.account_email
        pressure, settings = self.engine.pressure, self.engine.settings
        if pressure.announce(account):
            log.warning(
                "account_work_deferred",
                account=account,
                reason=why,
                cause=cause or pressure.last_failure(account),
                retrying_in_window=pressure.held(account),
            )
        if why == FAILING:
            return AccountFailing(
                max(pressure.retry_after_left(account), settings.retry_initial_s),
                cause or pressure.last_failure(account),
            )
        return AccountBacklogged(
            max(
                pressure.retry_after_left(account),
                self.engine.quota.expected_wait(account),
                settings.retry_initial_s,
            ),
            RATE_LIMITED,
        )

    async def _attempt(self, call: Callable[[str], Awaitable[T]]) -> T:
        # Checked right before each call, after every wait: a link disconnected meanwhile
        # gets no write, whatever was waiting.
        self._check_active()
        self.attempts += 1
        assert self.token is not None
        try:
            answer = await _outlive_cancellation(
                call(self.token), self.engine.settings.google_timeout_s + 1.0
            )
        except GoogleApiError as exc:
            await self._spent_quota(exc)
            self._failed(exc)
            raise
        self.engine.pressure.recovered(self.row.link.account_email)
        return answer

    async def _slot(self, account: str, may_defer: bool) -> None:
        """A quota slot; a link halted while waiting for it stops the wait at once."""
        if not getattr(self.engine.quota, "limited", True):
            # No quota configured: nothing to wait for but a pause check, so no race with
            # the halt signal (two futures and a wait per call cost CPU for nothing).
            await self.engine.quota.acquire(account, self.ticket, may_defer=may_defer)
            return
        halted = self.engine.halt_signal(self.row.link.id)
        waiting = asyncio.ensure_future(
            self.engine.quota.acquire(account, self.ticket, may_defer=may_defer)
        )
        stop = asyncio.ensure_future(halted.wait())
        try:
            await asyncio.wait([waiting, stop], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Cancelled meanwhile (a rebalance's drain): give the place in the queue up, or
            # it would take a slot reserved group-wide for nobody.
            waiting.cancel()
            raise
        finally:
            stop.cancel()
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            raise LinkHalted(self.row.link.id)
        waiting.result()

    def _failed(self, exc: GoogleApiError) -> None:
        """A retriable failure of a live message: it retries inside the window only while
        its account has a place left there (pressure.py); otherwise it leaves it now."""
        if not exc.retriable:
            return
        account, pressure = self.row.link.account_email, self.engine.pressure
        why = RATE_LIMITED if exc.action is Action.PACE else FAILING
        if why == FAILING:
            pressure.failed(account, str(exc))
            if exc.retry_after:  # a 503 may say when to come back
                pressure.retry_after(account, exc.retry_after)
        if not self.may_defer:
            return
        if self.placed is not None:  # it retries already: its place kept, its reason told
            if self.placed != why:
                pressure.move(account, self.placed, why)
                self.placed = why
            return
        if why == RATE_LIMITED:
            # Google asked this account to slow down. A few of its live messages wait for
            # it inside the window; more would hold other accounts' messages behind them:
            # those go to the repair loop (not before Retry-After).
            wait = max(exc.retry_after or 0.0, self.engine.quota.expected_wait(account))
            if wait > self.engine.settings.quota_max_wait_s or not pressure.enter(account, why):
                raise AccountBacklogged(
                    max(wait, self.engine.settings.retry_initial_s), RATE_LIMITED
                ) from exc
        elif not pressure.enter(account, why):
            raise self._leave_window(why, str(exc)) from exc
        self.placed = why

    async def _spent_quota(self, exc: GoogleApiError) -> None:
        quota, account = self.engine.quota, self.row.link.account_email
        action = exc.action
        if action is Action.PACE:
            if exc.retry_after:
                self.engine.pressure.retry_after(account, exc.retry_after)
            await quota.refused(account, exc.reason, exc.retry_after)
        elif action is Action.PAUSE_ACCOUNT:
            raise QuotaPaused("account", await quota.pause(account, exc.reason)) from exc
        elif action is Action.PAUSE_PROJECT:
            raise QuotaPaused("project", await quota.pause(None, exc.reason)) from exc


async def _outlive_cancellation(call: Awaitable[T], timeout_s: float) -> T:
    """Await a Google call; if the caller is cancelled meanwhile (a shutdown's grace ran
    out), wait for the request to end before the cancellation goes on: once sent, a write
    cannot be called back from Google, and the pair's claim must not be released while it
    may still land (a later owner's newer write could be overwritten)."""
    request = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(request)
    except asyncio.CancelledError:
        await asyncio.wait([request], timeout=timeout_s)
        if request.done() and not request.cancelled():
            request.exception()  # retrieved: the caller is gone
        raise


class SyncEngine:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        google: CalendarGateway,
        tokens: AccessTokens,
        quota: GroupQuota,
        store: SyncStore,
        metrics: Metrics,
        deployment: str | None = None,
    ) -> None:
        self.metrics = metrics
        # Every event written is tagged with it (bootstrap reads it: CALSYNC_DEPLOYMENT_ID,
        # else the database's id). None (an engine built without a database, in unit tests)
        # takes the setting, and leaves events untagged when there is none.
        self.deployment = deployment if deployment is not None else settings.deployment_id
        self.settings = settings
        self.repository = repository
        self.google = google
        self.tokens = tokens
        self.store = store
        self.quota = quota
        # Links known to have left `active`, with when (the database's state_changed_at, as
        # epoch seconds): work that read `active` before that is stopped.
        self.halted: dict[str, float] = {}
        self._halt_signals: dict[str, asyncio.Event] = {}
        # Per account: its live messages retrying inside the window, and why; Retry-After.
        self.pressure = AccountPressure()
        self._unsettled: set[tuple[str, str]] = set()  # written at Google, not recorded
        # Many messages' bookings are upserted and their links read in one round trip.
        self._intake: Batcher[BookingEvent, list[LinkRow]] = Batcher(
            self._take_in, split_on=lambda exc: not is_retriable(exc)
        )
        self._tickets = itertools.count()

    async def close(self) -> None:
        await self._intake.close()
        await self.store.close()
        await self.quota.close()

    def link_changed(self, link_id: str, state: LinkState, changed_at: float) -> None:
        """Another process changed a link (the watcher tells): stop or resume its work."""
        if state is LinkState.ACTIVE:
            if self.halted.get(link_id, -math.inf) < changed_at:
                self.resume(link_id)
        else:
            self.halt(link_id, changed_at)

    def grant_changed(self, account: str) -> None:
        """An account's grant was replaced, refused or revoked (the watcher tells): its
        cached access token is dropped (the next call reads the grant again)."""
        self.tokens.forget(account)

    @property
    def pacing(self) -> Counter[str]:
        """Per account, its live messages retrying a rate limit inside the window (the
        pressure's count; the name of the days when only rate limits had one)."""
        return self.pressure.retrying[RATE_LIMITED]

    def paced_until(self, account: str, retry_after_s: float) -> None:
        """Google asked this account to wait `retry_after_s` (see AccountPressure)."""
        self.pressure.retry_after(account, retry_after_s)

    def paced_for(self, account: str) -> float:
        """Seconds left of the account's last Retry-After (0: none)."""
        return self.pressure.retry_after_left(account)

    def halt(self, link_id: str, since: float) -> None:
        """Stop the link's work in this process before its next Google call, waits included:
        every piece of work that read it `active` before `since`."""
        self.halted[link_id] = max(since, self.halted.get(link_id, -math.inf))
        signal = self._halt_signals.get(link_id)
        if signal is not None:
            signal.set()

    def resume(self, link_id: str) -> None:
        self.halted.pop(link_id, None)
        self._halt_signals.pop(link_id, None)

    def halt_signal(self, link_id: str) -> asyncio.Event:
        signal = self._halt_signals.get(link_id)
        if signal is None:
            signal = self._halt_signals[link_id] = asyncio.Event()
            if link_id in self.halted:
                signal.set()
        return signal

    def next_ticket(self) -> int:
        return next(self._tickets)

    async def handle(
        self, event: BookingEvent, position: MessagePosition | None = None
    ) -> list[SyncResult]:
        """Apply one event to every active link; returns once every result is recorded."""
        ticket = self.next_ticket()
        rows = await self._intake.submit(event)
        active = [row for row in rows if row.link.state is LinkState.ACTIVE]
        return list(
            await asyncio.gather(
                *(
                    self.sync_link(event, row, position, ticket=ticket, may_defer=True)
                    for row in active
                )
            )
        )

    async def _take_in(self, events: list[BookingEvent]) -> list[list[LinkRow]]:
        # The bookings are committed before the links are read: a link activated meanwhile
        # is either seen here or backfilled from these rows (its backfill reads them later).
        await self.repository.upsert_bookings(events)
        links = await self.repository.links_of_activities(
            {event.booking.activity_id for event in events}
        )
        # A booking moved to another activity: the old activity's links that still hold
        # its event are told too (the plan takes it off their calendars).
        holding = await self.repository.links_holding({e.booking.id for e in events})
        answer = []
        for event in events:
            rows = list(links.get(event.booking.activity_id, []))
            known = {row.link.id for row in rows}
            rows += [row for row in holding.get(event.booking.id, []) if row.link.id not in known]
            answer.append(rows)
        return answer

    async def sync_link(
        self,
        event: BookingEvent,
        row: LinkRow,
        position: MessagePosition | None,
        source: str = "event",
        force: bool = False,
        ticket: int | None = None,
        may_defer: bool = False,
        latest: bool = False,
        adopt: str | None = None,
    ) -> SyncResult:
        """`force`: apply the booking even where the recorded version says it is applied
        (a resync or a reconcile, for when Google's side drifted). `latest`: apply the
        booking's latest state, read under the pair's claim (not `event`, read before it:
        a newer version may have come meanwhile, and a forced write must never roll one
        back). `may_defer`: when the account's quota is booked up, leave the work to the
        repair loop instead of waiting for it. `adopt`: an event of ours on the link's
        calendar for this booking that the records do not hold (a reconcile found it):
        taken as the booking's event, made to match, recorded."""
        pair = (row.link.id, event.booking.id)
        if pair in self._unsettled:
            # A write of ours for this pair went out, but its record did not: what Google
            # holds is unknown, so the latest state is applied whatever is recorded.
            force = latest = True
        claim = await self.store.claim(row.link.id, event.booking.id)
        wrote = restore = False
        try:
            if latest or (
                claim.latest_version is not None and claim.latest_version > event.booking.version
            ):
                # Read under the claim. A message whose booking has moved on since (a newer
                # version taken in by another owner during a rebalance) applies the newer
                # state: never older content, never a create on an activity it has left.
                event = await self.repository.latest_booking(event.booking.id) or event
            booking = event.booking
            about = {
                "link_id": row.link.id,
                "booking_id": booking.id,
                "version": booking.version,
            }  # bound only when a line is written
            health: tuple[LinkState, str] | None = None
            recorded, state = claim.recorded, claim.state
            if claim.calendar_id != row.link.calendar_id:  # chosen again since it was read
                row = dataclasses.replace(
                    row, link=row.link.model_copy(update={"calendar_id": claim.calendar_id})
                )
            call = _LinkCall(
                self, row, self.next_ticket() if ticket is None else ticket, may_defer=may_defer
            )
            if state is not LinkState.ACTIVE:  # changed since the link was read
                result = _result(row, Operation.NONE, Outcome.SKIPPED, f"link_{state}", call)
                await self.store.record(claim, event, position, result, source)
                self.metrics.link_operations.labels("none", "skipped").inc()
                return result
            # Read under the link's shared lock: active since `state_changed_at`. A halt
            # from before that is old news (the link was activated again since); one from
            # after it stops this work now.
            halted_at = self.halted.get(row.link.id)
            if halted_at is not None and claim.state_changed_at > halted_at:
                self.resume(row.link.id)
            if adopt is not None:
                recorded = (recorded or RecordedEvent()).model_copy(
                    update={"google_event_id": adopt, "calendar_id": row.link.calendar_id}
                )
            if force and recorded is not None:
                recorded = recorded.model_copy(update={"applied_version": None})
            planned = plan_operation(event, row.link, recorded, latest=latest)
            op = planned.operation
            try:
                result = await self._apply(
                    planned, event, row, recorded, call, claim.stranded_event_id
                )
            except LinkHalted:
                result = _result(row, op, Outcome.SKIPPED, "link_not_active", call)
            except TokenRefreshFailed as exc:
                if not exc.retriable:
                    # Google's words kept (revoked, expired, unused for months): the person
                    # fixing it needs to know which.
                    health = (LinkState.REAUTH_REQUIRED, f"token refresh refused: {exc.explained}")
                    result = _result(
                        row, op, Outcome.SKIPPED, "token_refresh_failed", call, error=exc.reason
                    )
                else:
                    log.warning("token_endpoint_unavailable", **about, cause=exc.reason)
                    result = _result(
                        row,
                        op,
                        Outcome.FAILED,
                        "token_refresh_failed",
                        call,
                        error=exc.reason,
                        repair=RepairPlan(reason="token_endpoint_unavailable"),
                    )
            except CalendarUnavailable as exc:
                health = (LinkState.CALENDAR_UNAVAILABLE, str(exc))
                result = _result(
                    row, op, Outcome.FAILED, "calendar_unavailable", call, error=str(exc)
                )
            except QuotaPaused as exc:
                result = _result(
                    row,
                    op,
                    Outcome.DEFERRED,
                    f"{exc.scope}_paused",
                    call,
                    error=str(exc.__cause__ or exc),
                    repair=RepairPlan(
                        reason=f"{exc.scope}_paused", not_before_s=exc.seconds, backoff=False
                    ),
                )
            except AccountFailing as exc:
                result = _result(
                    row,
                    op,
                    Outcome.DEFERRED,
                    exc.reason,
                    call,
                    error=exc.cause,
                    # Its calls fail: the repair loop's backoff, not a retry at once.
                    repair=RepairPlan(reason=exc.reason, not_before_s=exc.seconds, backoff=True),
                )
            except AccountBacklogged as exc:
                result = _result(
                    row,
                    op,
                    Outcome.DEFERRED,
                    exc.reason,
                    call,
                    repair=RepairPlan(reason=exc.reason, not_before_s=exc.seconds, backoff=False),
                )
            except GoogleApiError as exc:
                reason = "retries_exhausted" if exc.retriable else "google_refused"
                log.warning(
                    "link_sync_failed", **about, op=op.value, cause=str(exc), attempts=call.attempts
                )
                result = _result(
                    row,
                    op,
                    Outcome.FAILED,
                    reason,
                    call,
                    error=str(exc),
                    repair=RepairPlan(reason=reason, not_before_s=exc.retry_after or 0.0),
                )
            if result.repair is not None:
                result = result.model_copy(
                    update={"repair": self._schedule(result.repair, claim.repair_attempts)}
                )
            wrote = call.attempts > 0
            await self.store.record(claim, event, position, result, source)
            self._unsettled.discard(pair)
        except Exception as exc:
            if not wrote:
                raise
            self._unsettled.add(pair)  # whoever handles the pair next restores the latest
            if not isinstance(exc, ClaimLost):
                raise
            restore = True
        finally:
            await self.store.release(claim)
        if restore:
            # The claim died while Google was being written to: another process may have
            # written a newer version meanwhile, which ours may have overwritten. The
            # latest state is applied again, under a fresh claim, whatever is recorded.
            log.warning("claim_lost_after_write", link_id=row.link.id, booking_id=event.booking.id)
            return await self.sync_link(event, row, position, source, force=True, latest=True)
        self.metrics.link_operations.labels(result.operation.value, result.outcome.value).inc()
        if health is not None:
            await self._leave_active(row, *health)
        if debug_enabled():
            log.debug(
                "link_synced",
                link_id=row.link.id,
                booking_id=event.booking.id,
                version=event.booking.version,
                op=result.operation.value,
                outcome=result.outcome.value,
                reason=result.reason,
            )
        return result

    def _schedule(self, plan: RepairPlan, attempts_before: int) -> RepairPlan:
        """When the repair loop should try again: exponential backoff with jitter after a
        failure (at most `repair_max_backoff_s`), and never before a pause or Retry-After."""
        attempts = attempts_before + (1 if plan.backoff else 0)
        delay = 0.0
        if plan.backoff:
            settings = self.settings
            ceiling = min(
                settings.repair_max_backoff_s,
                settings.repair_initial_backoff_s * 2 ** min(attempts - 1, 30),
            )
            delay = ceiling * random.uniform(0.5, 1.0)
        return plan.model_copy(
            update={"attempts": attempts, "due_in_s": max(delay, plan.not_before_s)}
        )

    async def _leave_active(self, row: LinkRow, state: LinkState, reason: str) -> None:
        """Stop all work for the link; the process that makes the change logs it, once."""
        # After the claim is released: the update must not wait behind a disconnect that is
        # itself waiting for that claim.
        if state is LinkState.REAUTH_REQUIRED:
            await self.grant_refused(row.link.account_email, reason)
            return
        changed_at = await self.repository.leave_active(row.link.id, state, reason)
        if changed_at is not None:  # (otherwise another process changed it: its notice comes)
            self.halt(row.link.id, changed_at)
            log.warning(
                f"link_{state}",
                link_id=row.link.id,
                activity_id=row.link.activity_id,
                account=row.link.account_email,
                calendar_id=row.link.calendar_id,
                cause=reason,
            )

    async def grant_refused(self, account: str, reason: str) -> None:
        """Google refused the account's grant: every active link of the account, in every
        activity, becomes `reauth_required` and its work stops (here at once, elsewhere
        through the links' notices); one warning per link, by the process that changed it."""
        for (
            link_id,
            activity_id,
            calendar_id,
            changed_at,
        ) in await self.repository.leave_active_grant(account, reason):
            self.halt(link_id, changed_at)
            log.warning(
                f"link_{LinkState.REAUTH_REQUIRED}",
                link_id=link_id,
                activity_id=activity_id,
                account=account,
                calendar_id=calendar_id,
                cause=reason,
            )

    async def remove_extra_event(
        self, row: LinkRow, claim_link_id: str, booking_id: str, calendar_id: str, event_id: str
    ) -> bool:
        """Delete an event of ours that should not be there (a duplicate, an orphan), with
        `row`'s token, under the claim of the (link, booking) it names: never the event the
        records say is that booking's on that calendar. False when it was not removed
        (it is the recorded one); True when it is gone."""
        claim = await self.store.claim(claim_link_id, booking_id)
        try:
            rec = claim.recorded
            recorded_here = (
                rec is not None
                and rec.google_event_id == event_id
                and rec.calendar_id in (None, calendar_id)
            )
            if recorded_here and claim.state is LinkState.ACTIVE:
                return False  # an active link's records hold it: only its sync may remove it
            call = _LinkCall(self, row, self.next_ticket())
            try:
                await call.run(lambda t: self.google.delete_event(t, calendar_id, event_id))
            except GoogleApiError as exc:
                if not await self._event_is_gone(exc, call, calendar_id, event_id):
                    raise
            if recorded_here:  # a link not active any more: its records forget the event
                await self.repository.forget_event(claim_link_id, booking_id, event_id)
            return True
        finally:
            await self.store.release(claim)

    # --- the operations -----------------------------------------------------------------

    async def _apply(
        self,
        planned: PlannedOperation,
        event: BookingEvent,
        row: LinkRow,
        recorded: RecordedEvent | None,
        call: _LinkCall,
        stranded: str | None = None,
    ) -> SyncResult:
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
            return await self._create(
                event, row, rec.generation, planned.reason, call, adopt=stranded
            )
        event_id = rec.google_event_id
        assert event_id is not None
        if planned.operation is Operation.MOVE:
            left = await self._leave_old_calendar(rec, row, call)
            moved = await self._create(
                event, row, rec.generation + 1, planned.reason, call, Operation.MOVE, adopt=stranded
            )
            return moved.model_copy(update={"stranded": left})
        if planned.operation is Operation.UPDATE:
            body = render_event(booking, row.link.id, deployment=self.deployment)
            try:
                await call.run(lambda t: self.google.update_event(t, calendar_id, event_id, body))
            except GoogleApiError as exc:
                if not await self._event_is_gone(exc, call, calendar_id, event_id):
                    raise
                # Deleted by hand at Google: drop the stale record, create a fresh event
                # under the next generation's id (the old id stays taken).
                log.info(
                    "stale_event_recreated",
                    link_id=row.link.id,
                    booking_id=booking.id,
                    status=exc.status,
                    google_reason=exc.reason,
                )
                return await self._create(
                    event, row, rec.generation + 1, "stale_event_recreated", call
                )
            new = rec.model_copy(
                update={"applied_version": booking.version, "calendar_id": calendar_id}
            )
            return _result(
                row, Operation.UPDATE, Outcome.APPLIED, planned.reason, call, new, event_id
            )
        # A delete goes to the calendar the event is on (the link's old one, after a move).
        on = rec.calendar_id or calendar_id
        reason = planned.reason
        off: tuple[tuple[str, str, str], ...] = ()
        if on != calendar_id:
            off = await self._leave_old_calendar(rec, row, call)
        else:
            try:
                await call.run(lambda t: self.google.delete_event(t, on, event_id))
            except GoogleApiError as exc:
                if not await self._event_is_gone(exc, call, on, event_id):
                    raise
                reason = "already_gone"
        new = RecordedEvent(
            applied_version=booking.version, google_event_id=None, generation=rec.generation + 1
        )
        result = _result(row, Operation.DELETE, Outcome.APPLIED, reason, call, new, event_id)
        return result.model_copy(update={"stranded": off})

    async def _leave_old_calendar(
        self, rec: RecordedEvent, row: LinkRow, call: _LinkCall
    ) -> tuple[tuple[str, str, str], ...]:
        """Delete the event from the calendar the link had before. Gone already is done; a
        calendar that cannot be reached any more (deleted, read-only, refused) leaves the
        event there, recorded as stranded (reconcile removes it if it can later). Faults
        that pass (5xx, rate limits) are retried, then the whole move is (repair loop)."""
        old, event_id = rec.calendar_id, rec.google_event_id
        assert old is not None and event_id is not None
        try:
            await call.run(lambda t: self.google.delete_event(t, old, event_id))
        except GoogleApiError as exc:
            if exc.retriable:
                raise
            if exc.action is Action.GONE:
                return ()
            if exc.action is Action.CHECK_EVENT:
                try:
                    held = await call.run(lambda t: self.google.get_event(t, old, event_id))
                    if held.get("status") == "cancelled":
                        return ()
                except GoogleApiError as again:
                    if again.retriable:
                        raise
                    if again.action is Action.GONE:
                        return ()
            log.warning("event_stranded", link_id=row.link.id, calendar_id=old, cause=str(exc))
            return ((old, event_id, printable(str(exc), 300)),)
        return ()

    async def _event_is_gone(
        self, refused: GoogleApiError, call: _LinkCall, calendar_id: str, event_id: str
    ) -> bool:
        """Whether a refused update or delete met an event that is no longer there: 404 or
        410, or a 403 (what Google answers for an event a person deleted in its UI) for an
        event that `events.get` shows `cancelled`. A 403 on an event still there may be
        about the calendar: its calendar list entry is asked (and the link may turn
        `calendar_unavailable`); otherwise the refusal stands (retried later)."""
        if refused.action is Action.GONE:
            return True
        if refused.action is not Action.CHECK_EVENT:
            return False
        try:
            held = await call.run(lambda t: self.google.get_event(t, calendar_id, event_id))
        except GoogleApiError as exc:
            if exc.action is Action.GONE:
                return True
            raise
        if held.get("status") == "cancelled":
            return True
        await self._check_calendar(refused, call, calendar_id)

    async def _check_calendar(
        self, refused: GoogleApiError, call: _LinkCall, calendar_id: str
    ) -> NoReturn:
        """A 403 or 404 that may be about the calendar itself: the account's calendar list
        entry says whether it is gone or read-only (then CalendarUnavailable); if it says
        neither, the refusal stands."""
        try:
            entry = await call.run(lambda t: self.google.calendar_entry(t, calendar_id))
        except GoogleApiError as exc:
            if exc.status == 404:
                raise CalendarUnavailable(refused, "not in the account's calendar list") from None
            raise
        if not entry.writable:
            raise CalendarUnavailable(refused, f"calendar list: access role {entry.access_role!r}")
        raise refused

    async def _create(
        self,
        event: BookingEvent,
        row: LinkRow,
        generation: int,
        reason: str,
        call: _LinkCall,
        operation: Operation = Operation.CREATE,
        adopt: str | None = None,
    ) -> SyncResult:
        booking = event.booking
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        taken_back: tuple[tuple[str, str], ...] = ()
        if adopt is not None:
            # An event of ours for this booking was left on this calendar when the link
            # moved away from it: it is made to match and recorded, not doubled.
            taken_back = ((calendar_id, adopt),)
            body = render_event(booking, row.link.id, deployment=self.deployment)
            try:
                await call.run(lambda t: self.google.update_event(t, calendar_id, adopt, body))
            except GoogleApiError as exc:
                if not await self._event_is_gone(exc, call, calendar_id, adopt):
                    raise
            else:
                new = RecordedEvent(
                    applied_version=booking.version,
                    google_event_id=adopt,
                    generation=generation,
                    calendar_id=calendar_id,
                )
                result = _result(
                    row, operation, Outcome.APPLIED, "stranded_event_taken_back", call, new, adopt
                )
                return result.model_copy(update={"unstranded": taken_back})
        for gen in range(generation, generation + _MAX_GENERATIONS):
            event_id = google_event_id(row.link.id, booking.id, gen)
            body = render_event(booking, row.link.id, event_id, deployment=self.deployment)
            new = RecordedEvent(
                applied_version=booking.version,
                google_event_id=event_id,
                generation=gen,
                calendar_id=calendar_id,
            )
            try:
                await call.run(lambda t: self.google.insert_event(t, calendar_id, body))  # noqa: B023
                return _result(
                    row, operation, Outcome.APPLIED, reason, call, new, event_id
                ).model_copy(update={"unstranded": taken_back})
            except GoogleApiError as exc:
                if exc.action is Action.CHECK_CALENDAR:  # no calendar, or no right to write
                    await self._check_calendar(exc, call, calendar_id)
                if exc.action is not Action.EXISTS:
                    raise
            # 409: an earlier attempt (a retry, a replay, a crash before recording) already
            # inserted this id. Make it say what the booking says now.
            try:
                await call.run(lambda t: self.google.update_event(t, calendar_id, event_id, body))  # noqa: B023
                return _result(
                    row, operation, Outcome.APPLIED, "already_existed", call, new, event_id
                ).model_copy(update={"unstranded": taken_back})
            except GoogleApiError as exc:
                # Taken by an event a person deleted since: the next generation's id.
                if not await self._event_is_gone(exc, call, calendar_id, event_id):
                    raise
        return _result(
            row,
            operation,
            Outcome.FAILED,
            "no_free_event_id",
            call,
            error=f"ids of {_MAX_GENERATIONS} generations taken",
            repair=RepairPlan(reason="no_free_event_id"),
        )


def _result(
    row: LinkRow,
    operation: Operation,
    outcome: Outcome,
    reason: str,
    call: _LinkCall,
    recorded: RecordedEvent | None = None,
    event_id: str | None = None,
    error: str | None = None,
    repair: RepairPlan | None = None,
) -> SyncResult:
    return SyncResult(
        link_id=row.link.id,
        operation=operation,
        outcome=outcome,
        reason=reason,
        google_event_id=event_id,
        error=error,
        attempts=call.attempts,
        recorded=recorded,
        finished_at=datetime.now(UTC),
        repair=repair,
    )
