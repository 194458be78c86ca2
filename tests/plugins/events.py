"""Booking events for the tests: the one builder (calsync_dev.events, which the demo and the
bench use too), parsed models of it, and hypothesis strategies across the contract's edges."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from calsync_dev.events import booking_event
from consumer.domain.models import BookingEvent

# The booking's free-text fields (what NUL bytes and odd text are tried in).
STRING_FIELDS = (
    "id",
    "confirmation_code",
    "activity_id",
    "activity_name",
    "customer_name",
    "location_name",
    "timezone",
)


def booking_model(
    booking_id: str = "bk_1",
    version: int = 1,
    event_type: str = "booking.created",
    activity_id: str = "act_1",
    **booking: Any,
) -> BookingEvent:
    """The same event, parsed (what the consumer works on)."""
    return BookingEvent.model_validate(
        booking_event(booking_id, version, event_type, activity_id, **booking)
    )


# --- events across the contract's edges (hypothesis strategies) ------------------------------

EDGE_TEXT = st.one_of(
    st.text(min_size=1, max_size=30),
    st.sampled_from(
        [
            "",
            "x\x00",
            "\x00",
            "caf\u00e9",
            "\u2603" * 200,
            "y" * 200,
            "y" * 201,
            "Jane \ud800",
            "tab\tand\nnewline",
            "'; DROP TABLE bookings; --",
        ]
    ),
)
OFFSETS = st.sampled_from(["Z", "+00:00", "-05:00", "+05:30", "+14:00", "-12:00"])
EDGE_DATETIMES = st.one_of(
    st.sampled_from(
        [
            datetime(1, 1, 1),
            datetime(1899, 12, 31, 23),
            datetime(1900, 1, 1, 13),
            datetime(2199, 12, 31, 10),
            datetime(2199, 12, 31, 23),
            datetime(9999, 12, 31, 20),
        ]
    ),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)),
)
# Per field, values near its edges: some inside the contract, some just outside.
EDGES: dict[str, st.SearchStrategy[Any]] = {
    "version": st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([-1, 0, 2**63 - 1, 2**63])),
    "confirmation_code": EDGE_TEXT,
    "customer_name": EDGE_TEXT,
    "activity_name": EDGE_TEXT,
    "location_name": st.one_of(st.none(), EDGE_TEXT),
    "status": st.sampled_from(
        ["confirmed", "pending", "draft", "canceled", "checked_in", "no_show", "archived"]
    ),
    "source": st.sampled_from(["web", "ical", "api", "admin", "fax"]),
    "timezone": st.sampled_from(
        ["UTC", "America/New_York", "Pacific/Kiritimati", "Nope/Zone", "x\x00", "../etc"]
    ),
    "start": st.tuples(EDGE_DATETIMES, OFFSETS, st.sampled_from([1, 60, -60])),
}


@st.composite
def edge_messages(draw: st.DrawFn, n: int) -> tuple[bytes | None, bytes]:
    """A valid event with up to two fields moved to their edges (inside or just outside the
    contract), and now and then a key that is not UTF-8 or not the booking's id."""
    booking_id = f"prop-{n}-" + draw(st.sampled_from(["a", "\u00e9", "\x00", "\u2603"]))
    event = booking_event(
        booking_id,
        1,
        draw(
            st.sampled_from(
                ["booking.created", "booking.updated", "booking.canceled", "booking.deleted"]
            )
        ),
        start="2026-05-01T09:00:00-05:00",
        end="2026-05-01T15:00:00Z",
    )
    for field in draw(st.lists(st.sampled_from(sorted(EDGES)), max_size=2, unique=True)):
        value = draw(EDGES[field])
        if field == "start":
            when, offset, minutes = value
            event["booking"]["start"] = when.isoformat(timespec="seconds") + offset
            try:
                later = when + timedelta(minutes=minutes)
            except OverflowError:
                later = when
            event["booking"]["end"] = later.isoformat(timespec="seconds") + offset
        else:
            event["booking"][field] = value
    value_bytes = json.dumps(event).encode("utf-8", "surrogatepass")
    own_key = booking_id.encode("utf-8", "surrogatepass")
    key = draw(st.sampled_from([own_key] * 8 + [b"\xff" + own_key, b"someone-else"]))
    return key, value_bytes
