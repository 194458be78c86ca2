"""The one booking-event builder: a valid event of the published contract (schemas/), with
any booking field overridden."""

from __future__ import annotations

import uuid
from typing import Any

from consumer.models import BookingEvent


def booking_event(booking_id: str = "bk_1", version: int = 1,
                  event_type: str = "booking.created", activity_id: str = "act_1",
                  **booking: Any) -> dict[str, Any]:
    """The event as JSON data (what the upstream service publishes)."""
    data: dict[str, Any] = {
        "id": booking_id, "version": version, "confirmation_code": f"BK-{booking_id}",
        "status": "confirmed", "source": "web", "activity_id": activity_id,
        "activity_name": "Kayak Tour", "customer_name": "Jane Smith",
        "location_name": "Lake Dock", "start": "2026-04-15T09:00:00Z",
        "end": "2026-04-15T11:00:00Z",
    }
    data.update(booking)
    return {"schema_version": 1, "event_id": str(uuid.uuid4()), "event_type": event_type,
            "occurred_at": "2026-04-01T12:00:00Z", "booking": data}


def booking_model(booking_id: str = "bk_1", version: int = 1,
                  event_type: str = "booking.created", activity_id: str = "act_1",
                  **booking: Any) -> BookingEvent:
    """The same event, parsed (what the consumer works on)."""
    return BookingEvent.model_validate(
        booking_event(booking_id, version, event_type, activity_id, **booking))
