"""The one booking-event builder: a valid event of the published contract (schemas/), with
any booking field overridden. The tests, the demo (`make run`) and the bench build their
events with it."""

from __future__ import annotations

import uuid
from typing import Any


def booking_event(
    booking_id: str = "bk_1",
    version: int = 1,
    event_type: str = "booking.created",
    activity_id: str = "act_1",
    *,
    event_id: str | None = None,
    occurred_at: str = "2026-04-01T12:00:00Z",
    **booking: Any,
) -> dict[str, Any]:
    """The event as JSON data (what the upstream service publishes); `booking` overrides
    any field of the booking (`customer_name`, `start`, `status`, ...)."""
    data: dict[str, Any] = {
        "id": booking_id,
        "version": version,
        "confirmation_code": f"BK-{booking_id}",
        "status": "confirmed",
        "source": "web",
        "activity_id": activity_id,
        "activity_name": "Kayak Tour",
        "customer_name": "Jane Smith",
        "location_name": "Lake Dock",
        "start": "2026-04-15T09:00:00Z",
        "end": "2026-04-15T11:00:00Z",
    }
    data.update(booking)
    return {
        "schema_version": 1,
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": occurred_at,
        "booking": data,
    }
