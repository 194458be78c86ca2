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

How each Google call is made is the calls policy's (consumer.service.calls); what each write
does with Google's answers is consumer.service.event_writes'; what a failure leaves behind
(outcome, reason, repair, the link's health) is the domain's outcome table
(consumer.domain.outcomes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from dataclasses import dataclass

import structlog

from consumer.adapters.batching import Batcher
from consumer.adapters.classify import is_retriable
from consumer.adapters.metrics import Metrics
from consumer.domain.errors import ClaimLost
from consumer.domain.models import (
    BookingEvent,
    LinkRow,
    LinkState,
    MessagePosition,
    Operation,
    Outcome,
    RecordedEvent,
    SyncResult,
)
from consumer.domain.outcomes import failure_outcome, schedule_repair
from consumer.domain.planning import plan_operation
from consumer.domain.records import Claim
from consumer.logs import debug_enabled
from consumer.service.calls import GoogleCalls, LinkCalls
from consumer.service.event_writes import EventWrites, result
from consumer.service.ports import Claims, SyncRecords

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """When the repair loop tries again after a failure (CALSYNC_REPAIR_INITIAL_BACKOFF_S
    doubling up to CALSYNC_REPAIR_MAX_BACKOFF_S)."""

    repair_initial_backoff_s: float
    repair_max_backoff_s: float


class SyncEngine:
    def __init__(
        self,
        config: EngineConfig,
        records: SyncRecords,
        store: Claims,
        calls: GoogleCalls,
        writes: EventWrites,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.records = records
        self.store = store
        self.calls = calls
        self.writes = writes
        self.metrics = metrics
        self._unsettled: set[tuple[str, str]] = set()  # written at Google, not recorded
        # Many messages' bookings are upserted and their links read in one round trip.
        self._intake: Batcher[BookingEvent, list[LinkRow]] = Batcher(
            self._take_in, split_on=lambda exc: not is_retriable(exc)
        )

    async def close(self) -> None:
        await self._intake.close()
        await self.store.close()
        await self.calls.quota.close()

    # --- what other processes tell (the link watcher) --------------------------------------

    def link_changed(self, link_id: str, state: LinkState, changed_at: float) -> None:
        """Another process changed a link (the watcher tells): stop or resume its work."""
        if state is LinkState.ACTIVE:
            if self.calls.halts.halted.get(link_id, -math.inf) < changed_at:
                self.calls.halts.resume(link_id)
        else:
            self.calls.halts.halt(link_id, changed_at)

    def grant_changed(self, account: str) -> None:
        """An account's grant was replaced, refused or revoked (the watcher tells): its
        cached access token is dropped (the next call reads the grant again)."""
        self.calls.tokens.forget(account)

    def halt(self, link_id: str, since: float) -> None:
        """Stop the link's work in this process before its next Google call, waits included:
        every piece of work that read it `active` before `since`."""
        self.calls.halts.halt(link_id, since)

    def resume(self, link_id: str) -> None:
        self.calls.halts.resume(link_id)

    # --- messages ----------------------------------------------------------------------------

    async def handle(
        self, event: BookingEvent, position: MessagePosition | None = None
    ) -> list[SyncResult]:
        """Apply one event to every active link; returns once every result is recorded."""
        ticket = self.calls.next_ticket()
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
        await self.records.upsert_bookings(events)
        links = await self.records.links_of_activities(
            {event.booking.activity_id for event in events}
        )
        # A booking moved to another activity: the old activity's links that still hold
        # its event are told too (the plan takes it off their calendars).
        holding = await self.records.links_holding({e.booking.id for e in events})
        answer = []
        for event in events:
            rows = list(links.get(event.booking.activity_id, []))
            known = {row.link.id for row in rows}
            rows += [row for row in holding.get(event.booking.id, []) if row.link.id not in known]
            answer.append(rows)
        return answer

    # --- one (link, booking) --------------------------------------------------------------

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
        call: LinkCalls | None = None
        restore = False
        try:
            if latest or (
                claim.latest_version is not None and claim.latest_version > event.booking.version
            ):
                # Read under the claim. A message whose booking has moved on since (a newer
                # version taken in by another owner during a rebalance) applies the newer
                # state: never older content, never a create on an activity it has left.
                event = await self.records.latest_booking(event.booking.id) or event
            if claim.calendar_id != row.link.calendar_id:  # chosen again since it was read
                row = dataclasses.replace(
                    row, link=row.link.model_copy(update={"calendar_id": claim.calendar_id})
                )
            call = self.calls.for_link(row, ticket, may_defer)
            done, health = await self._under_claim(claim, event, row, call, force, latest, adopt)
            await self.store.record(claim, event, position, done, source)
            self._unsettled.discard(pair)
        except Exception as exc:
            if call is None or call.attempts == 0:
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
            log.warning("claim_lost_after_write", link_id=row.link.id, booking_id=pair[1])
            return await self.sync_link(event, row, position, source, force=True, latest=True)
        self._finished(done, row, event)
        if health is not None:
            await self._leave_active(row, *health)
        return done

    async def _under_claim(
        self,
        claim: Claim,
        event: BookingEvent,
        row: LinkRow,
        call: LinkCalls,
        force: bool,
        latest: bool,
        adopt: str | None,
    ) -> tuple[SyncResult, tuple[LinkState, str] | None]:
        """The operation, under the pair's claim: its result, and the state the link is to
        leave `active` for (None: it stays)."""
        if claim.state is not LinkState.ACTIVE:  # changed since the link was read
            return result(row, Operation.NONE, Outcome.SKIPPED, f"link_{claim.state}", call), None
        # Read under the link's shared lock: active since `state_changed_at`. A halt from
        # before that is old news (the link was activated again since); one from after it
        # stops this work now.
        halted_at = self.calls.halts.since(row.link.id)
        if halted_at is not None and claim.state_changed_at > halted_at:
            self.calls.halts.resume(row.link.id)
        recorded = claim.recorded
        if adopt is not None:
            recorded = (recorded or RecordedEvent()).model_copy(
                update={"google_event_id": adopt, "calendar_id": row.link.calendar_id}
            )
        if force and recorded is not None:
            recorded = recorded.model_copy(update={"applied_version": None})
        planned = plan_operation(event, row.link, recorded, latest=latest)
        try:
            done = await self.writes.apply(
                planned, event, row, recorded, call, claim.stranded_event_id
            )
            return done, None
        except Exception as exc:
            failure = failure_outcome(exc)
            if failure is None:
                raise
            if failure.warning is not None:
                log.warning(
                    failure.warning,
                    link_id=row.link.id,
                    booking_id=event.booking.id,
                    version=event.booking.version,
                    op=planned.operation.value,
                    cause=failure.cause,
                    attempts=call.attempts,
                )
            repair = failure.repair
            if repair is not None:
                config = self.config
                repair = schedule_repair(
                    repair,
                    claim.repair_attempts,
                    config.repair_initial_backoff_s,
                    config.repair_max_backoff_s,
                    random.uniform(0.5, 1.0),
                )
            done = result(
                row,
                planned.operation,
                failure.outcome,
                failure.reason,
                call,
                error=failure.error,
                repair=repair,
            )
            return done, failure.leaves_active

    def _finished(self, done: SyncResult, row: LinkRow, event: BookingEvent) -> None:
        self.metrics.link_operations.labels(done.operation.value, done.outcome.value).inc()
        if debug_enabled():
            log.debug(
                "link_synced",
                link_id=row.link.id,
                booking_id=event.booking.id,
                version=event.booking.version,
                op=done.operation.value,
                outcome=done.outcome.value,
                reason=done.reason,
            )

    # --- a link's health ------------------------------------------------------------------

    async def _leave_active(self, row: LinkRow, state: LinkState, reason: str) -> None:
        """Stop all work for the link; the process that makes the change logs it, once."""
        # After the claim is released: the update must not wait behind a disconnect that is
        # itself waiting for that claim.
        if state is LinkState.REAUTH_REQUIRED:
            await self.grant_refused(row.link.account_email, reason)
            return
        changed_at = await self.records.leave_active(row.link.id, state, reason)
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
        for link_id, activity_id, calendar_id, changed_at in await self.records.leave_active_grant(
            account, reason
        ):
            self.halt(link_id, changed_at)
            log.warning(
                f"link_{LinkState.REAUTH_REQUIRED}",
                link_id=link_id,
                activity_id=activity_id,
                account=account,
                calendar_id=calendar_id,
                cause=reason,
            )

    # --- events that should not be there ------------------------------------------------------

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
            await self.writes.delete_extra(self.calls.for_link(row), calendar_id, event_id)
            if recorded_here:  # a link not active any more: its records forget the event
                await self.records.forget_event(claim_link_id, booking_id, event_id)
            return True
        finally:
            await self.store.release(claim)
