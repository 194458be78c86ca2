"""The pure core: what a booking event means for one calendar link, and what the event says.

No I/O here. Everything is a function of its arguments, so the rules of the seed's sync table
can be tested row by row.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

from consumer.domain.models import (
    Booking,
    BookingEvent,
    BookingSource,
    BookingStatus,
    CalendarLink,
    EventType,
    LinkState,
    Operation,
    PlannedOperation,
    RecordedEvent,
)

MANAGED_BY = "resytech"
# The private extended property naming the deployment that wrote an event (its
# CALSYNC_DEPLOYMENT_ID, or its database's id): deployments syncing to the same calendar
# keep to their own events.
DEPLOYMENT_PROPERTY = "deployment"
_NOT_SYNCED_STATUSES = frozenset({BookingStatus.DRAFT, BookingStatus.CANCELED})


def belongs_on_calendar(event: BookingEvent) -> bool:
    """Whether the booking, as this event leaves it, must have an event on linked calendars."""
    booking = event.booking
    return (
        booking.status not in _NOT_SYNCED_STATUSES
        and event.event_type is not EventType.DELETED
        and event.event_type is not EventType.CANCELED
        and booking.source is not BookingSource.ICAL
    )


def plan_operation(
    event: BookingEvent,
    link: CalendarLink,
    recorded: RecordedEvent | None,
    latest: bool = False,
) -> PlannedOperation:
    """Decide what one link's calendar needs so that it matches the booking.

    State-based rather than event-based: the answer depends on what the booking now is and
    on what was last applied to this link, so replaying any event is harmless. `latest`
    says that `event` is the booking's latest state (read under the pair's claim): then an
    event still on a calendar the link no longer has is moved even when its version was
    applied already (a version not newer never moves anything otherwise: its content may be
    older than what is on the calendar).
    """
    if link.state is not LinkState.ACTIVE or link.calendar_id is None:
        return PlannedOperation(operation=Operation.NONE, reason=f"link_{link.state.value}")
    recorded = recorded or RecordedEvent()
    on_calendar = recorded.google_event_id is not None
    elsewhere = on_calendar and recorded.calendar_id not in (None, link.calendar_id)
    newer = recorded.applied_version is None or event.booking.version > recorded.applied_version
    if not newer and not (latest and elsewhere):
        return PlannedOperation(operation=Operation.NONE, reason="version_not_newer")
    # A booking moved to another activity leaves the calendars of this one.
    moved = event.booking.activity_id != link.activity_id
    if belongs_on_calendar(event) and not moved:
        if elsewhere:
            return PlannedOperation(operation=Operation.MOVE, reason="calendar_changed")
        if on_calendar:
            return PlannedOperation(operation=Operation.UPDATE, reason="booking_changed")
        return PlannedOperation(operation=Operation.CREATE, reason="booking_synced")
    reason = "booking_moved" if moved else _removal_reason(event)
    if on_calendar:
        return PlannedOperation(operation=Operation.DELETE, reason=reason)
    return PlannedOperation(operation=Operation.NONE, reason=reason)


def _removal_reason(event: BookingEvent) -> str:
    booking = event.booking
    if booking.source is BookingSource.ICAL:
        return "ical_source"
    if event.event_type is EventType.DELETED:
        return "booking_deleted"
    if event.event_type is EventType.CANCELED or booking.status is BookingStatus.CANCELED:
        return "booking_canceled"
    return "booking_draft"


def google_event_id(link_id: str, booking_id: str, generation: int) -> str:
    """A Google event id that is the same every time for (link, booking, generation).

    Google accepts client-supplied ids of 5-1024 characters from base32hex (a-v, 0-9), and
    refuses a second insert of one with 409: this is what makes inserts idempotent.
    """
    digest = hashlib.sha256(f"{link_id}\x1f{booking_id}\x1f{generation}".encode()).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


def status_in_words(status: BookingStatus) -> str:
    return status.value.replace("_", " ").title()


def render_description(booking: Booking) -> str:
    tz = ZoneInfo(booking.timezone)
    start = booking.start.astimezone(tz)
    end = booking.end.astimezone(tz)
    minutes = int((booking.end - booking.start).total_seconds() // 60)
    return "\n".join(
        [
            f"Confirmation Code: {booking.confirmation_code}",
            f"Customer: {booking.customer_name}",
            f"Status: {status_in_words(booking.status)}",
            f"Duration: {minutes} minutes",
            f"Date: {start:%Y-%m-%d}",
            f"Time: {start:%H:%M} - {end:%H:%M}",
        ]
    )


def _utc(value: Any) -> str:
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def render_event(
    booking: Booking,
    link_id: str,
    event_id: str | None = None,
    *,
    deployment: str | None = None,
) -> dict[str, Any]:
    """The Google Calendar event resource for a booking on one link, written by
    `deployment` (every caller that writes or compares passes it; None leaves the tag out,
    as events were written before it existed)."""
    private = {"managed_by": MANAGED_BY, "booking_id": booking.id, "link_id": link_id}
    if deployment is not None:
        private[DEPLOYMENT_PROPERTY] = deployment
    body: dict[str, Any] = {
        "summary": f"{booking.activity_name} - {booking.customer_name}",
        "start": {"dateTime": _utc(booking.start), "timeZone": "UTC"},
        "end": {"dateTime": _utc(booking.end), "timeZone": "UTC"},
        "description": render_description(booking),
        "status": "confirmed",
        "extendedProperties": {"private": private},
    }
    if booking.location_name:
        body["location"] = booking.location_name
    if event_id is not None:
        body["id"] = event_id
    return body
