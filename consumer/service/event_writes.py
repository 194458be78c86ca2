"""The writes on one link's calendar for one booking: create, update, move, delete, each as
Google's answers make it go, under the calls policy of its operation (consumer.service.calls).

- A create inserts under a client-supplied id derived from (link, booking, generation): a
  409 means an earlier attempt inserted it already, and it is updated to match; an id taken
  by an event a person deleted moves to the next generation. An event of ours left on this
  calendar by an earlier move away (stranded) is taken back instead of doubled.
- An update of an event deleted by hand (403 on an event `events.get` shows `cancelled`, or
  404/410) creates a fresh one under the next generation's id.
- A move deletes the event from the link's old calendar, then creates it on the new one; an
  old calendar that cannot be reached any more keeps the event, recorded as stranded.
- A 403 or 404 that may be about the calendar itself asks the account's calendar list: gone
  or read-only is CalendarUnavailable (the link then turns `calendar_unavailable`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NoReturn

import structlog

from consumer.domain.errors import CalendarUnavailable, GoogleApiError, printable
from consumer.domain.models import (
    BookingEvent,
    LinkRow,
    Operation,
    Outcome,
    PlannedOperation,
    RecordedEvent,
    RepairPlan,
    SyncResult,
)
from consumer.domain.planning import google_event_id, render_event
from consumer.domain.refusals import Action
from consumer.service.calls import LinkCalls
from consumer.service.ports import CalendarGateway

log = structlog.get_logger(__name__)
_MAX_GENERATIONS = 3  # ids tried per create before giving up (each 409 then 410 moves on)
Stranded = tuple[tuple[str, str, str], ...]  # (calendar, event, why) left where they are


def result(
    row: LinkRow,
    operation: Operation,
    outcome: Outcome,
    reason: str,
    call: LinkCalls,
    recorded: RecordedEvent | None = None,
    event_id: str | None = None,
    error: str | None = None,
    repair: RepairPlan | None = None,
) -> SyncResult:
    """The result of one operation on `row`, as recorded (its attempts from `call`)."""
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


class EventWrites:
    def __init__(self, google: CalendarGateway, deployment: str | None) -> None:
        self.google = google
        self.deployment = deployment  # every event written is tagged with it

    async def apply(
        self,
        planned: PlannedOperation,
        event: BookingEvent,
        row: LinkRow,
        recorded: RecordedEvent | None,
        call: LinkCalls,
        stranded: str | None = None,
    ) -> SyncResult:
        """Carry out `planned` on `row`'s calendar; `stranded`: an event of ours for this
        booking left on this calendar by an earlier move away from it."""
        booking = event.booking
        rec = recorded or RecordedEvent()
        operation = planned.operation
        if operation is Operation.NONE:
            if planned.reason == "version_not_newer":
                return result(row, Operation.NONE, Outcome.UNCHANGED, planned.reason, call)
            new = rec.model_copy(update={"applied_version": booking.version})
            return result(row, Operation.NONE, Outcome.UNCHANGED, planned.reason, call, new)
        if operation is Operation.CREATE:
            return await self._create(
                event, row, rec.generation, planned.reason, call, adopt=stranded
            )
        if operation is Operation.MOVE:
            left = await self._leave_old_calendar(rec, row, call)
            moved = await self._create(
                event, row, rec.generation + 1, planned.reason, call, Operation.MOVE, stranded
            )
            return moved.model_copy(update={"stranded": left})
        if operation is Operation.UPDATE:
            return await self._update(event, row, rec, planned.reason, call)
        return await self._delete(event, row, rec, planned.reason, call)

    async def _update(
        self, event: BookingEvent, row: LinkRow, rec: RecordedEvent, reason: str, call: LinkCalls
    ) -> SyncResult:
        booking, calendar_id, event_id = event.booking, row.link.calendar_id, rec.google_event_id
        assert calendar_id is not None and event_id is not None
        body = render_event(booking, row.link.id, deployment=self.deployment)
        try:
            await call.run(lambda t: self.google.update_event(t, calendar_id, event_id, body))
        except GoogleApiError as exc:
            if not await self._event_is_gone(exc, call, calendar_id, event_id):
                raise
            # Deleted by hand at Google: drop the stale record, create a fresh event under
            # the next generation's id (the old id stays taken).
            log.info(
                "stale_event_recreated",
                link_id=row.link.id,
                booking_id=booking.id,
                status=exc.status,
                google_reason=exc.reason,
            )
            return await self._create(event, row, rec.generation + 1, "stale_event_recreated", call)
        new = rec.model_copy(
            update={"applied_version": booking.version, "calendar_id": calendar_id}
        )
        return result(row, Operation.UPDATE, Outcome.APPLIED, reason, call, new, event_id)

    async def _delete(
        self, event: BookingEvent, row: LinkRow, rec: RecordedEvent, reason: str, call: LinkCalls
    ) -> SyncResult:
        calendar_id, event_id = row.link.calendar_id, rec.google_event_id
        assert calendar_id is not None and event_id is not None
        # A delete goes to the calendar the event is on (the link's old one, after a move).
        on = rec.calendar_id or calendar_id
        off: Stranded = ()
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
            applied_version=event.booking.version,
            google_event_id=None,
            generation=rec.generation + 1,
        )
        done = result(row, Operation.DELETE, Outcome.APPLIED, reason, call, new, event_id)
        return done.model_copy(update={"stranded": off})

    async def delete_extra(self, call: LinkCalls, calendar_id: str, event_id: str) -> None:
        """Delete an event that should not be there; one already gone is done."""
        try:
            await call.run(lambda t: self.google.delete_event(t, calendar_id, event_id))
        except GoogleApiError as exc:
            if not await self._event_is_gone(exc, call, calendar_id, event_id):
                raise

    async def _leave_old_calendar(
        self, rec: RecordedEvent, row: LinkRow, call: LinkCalls
    ) -> Stranded:
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
        self, refused: GoogleApiError, call: LinkCalls, calendar_id: str, event_id: str
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
        self, refused: GoogleApiError, call: LinkCalls, calendar_id: str
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
        call: LinkCalls,
        operation: Operation = Operation.CREATE,
        adopt: str | None = None,
    ) -> SyncResult:
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        taken_back: tuple[tuple[str, str], ...] = ()
        if adopt is not None:
            taken_back = ((calendar_id, adopt),)
            adopted = await self._take_back(event, row, generation, call, operation, adopt)
            if adopted is not None:
                return adopted.model_copy(update={"unstranded": taken_back})
        for gen in range(generation, generation + _MAX_GENERATIONS):
            created = await self._insert(event, row, gen, reason, call, operation)
            if created is not None:
                return created.model_copy(update={"unstranded": taken_back})
        return result(
            row,
            operation,
            Outcome.FAILED,
            "no_free_event_id",
            call,
            error=f"ids of {_MAX_GENERATIONS} generations taken",
            repair=RepairPlan(reason="no_free_event_id"),
        )

    async def _take_back(
        self,
        event: BookingEvent,
        row: LinkRow,
        generation: int,
        call: LinkCalls,
        operation: Operation,
        adopt: str,
    ) -> SyncResult | None:
        """An event of ours for this booking was left on this calendar when the link moved
        away from it: it is made to match and recorded, not doubled (None: it is gone)."""
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        booking = event.booking
        body = render_event(booking, row.link.id, deployment=self.deployment)
        try:
            await call.run(lambda t: self.google.update_event(t, calendar_id, adopt, body))
        except GoogleApiError as exc:
            if not await self._event_is_gone(exc, call, calendar_id, adopt):
                raise
            return None
        new = RecordedEvent(
            applied_version=booking.version,
            google_event_id=adopt,
            generation=generation,
            calendar_id=calendar_id,
        )
        return result(
            row, operation, Outcome.APPLIED, "stranded_event_taken_back", call, new, adopt
        )

    async def _insert(
        self,
        event: BookingEvent,
        row: LinkRow,
        generation: int,
        reason: str,
        call: LinkCalls,
        operation: Operation,
    ) -> SyncResult | None:
        """Insert the event under this generation's id (None: the id is taken by an event a
        person deleted since, the next generation's is to be tried)."""
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        booking = event.booking
        event_id = google_event_id(row.link.id, booking.id, generation)
        body = render_event(booking, row.link.id, event_id, deployment=self.deployment)
        new = RecordedEvent(
            applied_version=booking.version,
            google_event_id=event_id,
            generation=generation,
            calendar_id=calendar_id,
        )
        try:
            await call.run(lambda t: self.google.insert_event(t, calendar_id, body))
            return result(row, operation, Outcome.APPLIED, reason, call, new, event_id)
        except GoogleApiError as exc:
            if exc.action is Action.CHECK_CALENDAR:  # no calendar, or no right to write
                await self._check_calendar(exc, call, calendar_id)
            if exc.action is not Action.EXISTS:
                raise
        # 409: an earlier attempt (a retry, a replay, a crash before recording) already
        # inserted this id. Make it say what the booking says now.
        try:
            await call.run(lambda t: self.google.update_event(t, calendar_id, event_id, body))
            return result(row, operation, Outcome.APPLIED, "already_existed", call, new, event_id)
        except GoogleApiError as exc:
            # Taken by an event a person deleted since: the next generation's id.
            if not await self._event_is_gone(exc, call, calendar_id, event_id):
                raise
        return None
