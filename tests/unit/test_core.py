"""The pure core, row by row: the seed's sync table, rendering, and deterministic ids."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.domain.models import (
    Booking,
    BookingEvent,
    CalendarLink,
    LinkState,
    Operation,
    RecordedEvent,
)
from consumer.domain.planning import (
    google_event_id,
    plan_operation,
    render_description,
    render_event,
)
from consumer.settings import Settings
from tests.plugins.events import booking_event

ACTIVE = CalendarLink(
    id="lnk_a",
    activity_id="act_1",
    account_email="o@example.com",
    calendar_id="cal",
    state=LinkState.ACTIVE,
)


# The suite's one booking-event builder, with this table's own defaults.
CORE_DEFAULTS: dict[str, Any] = {"version": 3, "confirmation_code": "BK-12345"}


def booking(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = booking_event(**{**CORE_DEFAULTS, **overrides})["booking"]
    return data


def event(event_type: str = "booking.created", **booking_overrides: Any) -> BookingEvent:
    return BookingEvent.model_validate(
        booking_event(event_type=event_type, **{**CORE_DEFAULTS, **booking_overrides})
    )


NOTHING = None
ON_CAL = RecordedEvent(applied_version=2, google_event_id="abc12345", generation=0)
OFF_CAL = RecordedEvent(applied_version=2, google_event_id=None, generation=1)


@pytest.mark.parametrize(
    ("row", "evt", "recorded", "expected"),
    [
        # Seed: booking created (status not Draft or Canceled) -> new event on all calendars
        ("created confirmed", event(), NOTHING, Operation.CREATE),
        ("created pending", event(status="pending"), NOTHING, Operation.CREATE),
        ("created checked_in", event(status="checked_in"), NOTHING, Operation.CREATE),
        ("created completed", event(status="completed"), NOTHING, Operation.CREATE),
        ("created no_show", event(status="no_show"), NOTHING, Operation.CREATE),
        ("created draft", event(status="draft"), NOTHING, Operation.NONE),
        ("created canceled", event(status="canceled"), NOTHING, Operation.NONE),
        # Seed: booking updated (rescheduled, details changed) -> updated in place
        ("updated", event("booking.updated"), ON_CAL, Operation.UPDATE),
        ("updated, nothing yet", event("booking.updated"), NOTHING, Operation.CREATE),
        ("updated after a delete", event("booking.updated"), OFF_CAL, Operation.CREATE),
        # Seed: booking canceled -> deleted from all calendars
        ("canceled", event("booking.canceled", status="canceled"), ON_CAL, Operation.DELETE),
        (
            "canceled, never synced",
            event("booking.canceled", status="canceled"),
            NOTHING,
            Operation.NONE,
        ),
        (
            "updated to canceled",
            event("booking.updated", status="canceled"),
            ON_CAL,
            Operation.DELETE,
        ),
        # Seed: booking set to Draft -> deleted (drafts are not synced)
        ("set to draft", event("booking.updated", status="draft"), ON_CAL, Operation.DELETE),
        ("draft to confirmed", event("booking.updated"), OFF_CAL, Operation.CREATE),
        # Seed: booking created via iCal sync -> no event (prevents sync loops)
        ("ical created", event(source="ical"), NOTHING, Operation.NONE),
        ("ical updated", event("booking.updated", source="ical"), NOTHING, Operation.NONE),
        # Contract: booking.deleted removes the event
        ("deleted", event("booking.deleted"), ON_CAL, Operation.DELETE),
        ("deleted, never synced", event("booking.deleted"), NOTHING, Operation.NONE),
        # Contract: a version not newer than the applied one changes nothing
        ("same version", event("booking.updated", version=2), ON_CAL, Operation.NONE),
        ("older version", event("booking.created", version=1), ON_CAL, Operation.NONE),
        ("older create after delete", event(version=1), OFF_CAL, Operation.NONE),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_sync_table(
    row: str, evt: BookingEvent, recorded: RecordedEvent | None, expected: Operation
) -> None:
    assert plan_operation(evt, ACTIVE, recorded).operation is expected, row


@pytest.mark.parametrize("state", [s for s in LinkState if s is not LinkState.ACTIVE])
def test_inactive_links_receive_nothing(state: LinkState) -> None:
    link = ACTIVE.model_copy(update={"state": state, "calendar_id": None})
    planned = plan_operation(event(), link, None)
    assert planned.operation is Operation.NONE
    assert planned.reason == f"link_{state.value}"


def test_render_event_matches_the_seed() -> None:
    body = render_event(event().booking, "lnk_a", event_id="abcdefgh")
    assert body == {
        "id": "abcdefgh",
        "summary": "Kayak Tour - Jane Smith",
        "start": {"dateTime": "2026-04-15T09:00:00Z", "timeZone": "UTC"},
        "end": {"dateTime": "2026-04-15T11:00:00Z", "timeZone": "UTC"},
        "location": "Lake Dock",
        "status": "confirmed",
        "description": (
            "Confirmation Code: BK-12345\nCustomer: Jane Smith\nStatus: Confirmed\n"
            "Duration: 120 minutes\nDate: 2026-04-15\nTime: 09:00 - 11:00"
        ),
        "extendedProperties": {
            "private": {"managed_by": "resytech", "booking_id": "bk_1", "link_id": "lnk_a"}
        },
    }


@pytest.mark.parametrize(
    ("overrides", "expected_lines"),
    [
        ({"status": "checked_in"}, {"Status: Checked In"}),
        ({"status": "no_show"}, {"Status: No Show"}),
        ({"status": "pending"}, {"Status: Pending"}),
        # Date and times in the booking's time zone (EDT is UTC-4 in April)
        (
            {"timezone": "America/New_York"},
            {"Date: 2026-04-15", "Time: 05:00 - 07:00", "Duration: 120 minutes"},
        ),
        # Crossing midnight locally: the date is the local start date
        (
            {
                "timezone": "Asia/Tokyo",
                "start": "2026-04-15T14:30:00Z",
                "end": "2026-04-15T15:15:00Z",
            },
            {"Date: 2026-04-15", "Time: 23:30 - 00:15", "Duration: 45 minutes"},
        ),
        # Offsets other than Z are accepted and normalised
        (
            {"start": "2026-04-15T11:00:00+02:00", "end": "2026-04-15T12:30:00+02:00"},
            {"Time: 09:00 - 10:30", "Duration: 90 minutes"},
        ),
    ],
)
def test_render_description(overrides: dict[str, Any], expected_lines: set[str]) -> None:
    lines = set(render_description(event(**overrides).booking).splitlines())
    assert expected_lines <= lines


def test_location_omitted_when_none() -> None:
    assert "location" not in render_event(event(location_name=None).booking, "l")
    data = booking()
    del data["location_name"]
    parsed = Booking.model_validate(data)
    assert "location" not in render_event(parsed, "l")
    assert parsed.timezone == "UTC"


def test_start_end_rendered_in_utc() -> None:
    body = render_event(
        event(start="2026-04-15T11:00:00+02:00", end="2026-04-15T12:00:00+02:00").booking, "l"
    )
    assert body["start"]["dateTime"] == "2026-04-15T09:00:00Z"
    assert body["end"]["dateTime"] == "2026-04-15T10:00:00Z"


def test_google_event_ids_are_deterministic_base32hex() -> None:
    first = google_event_id("lnk_a", "bk_1", 0)
    assert first == google_event_id("lnk_a", "bk_1", 0)
    assert re.fullmatch(r"[a-v0-9]{5,1024}", first)
    others = {
        google_event_id("lnk_b", "bk_1", 0),
        google_event_id("lnk_a", "bk_2", 0),
        google_event_id("lnk_a", "bk_1", 1),
    }
    assert first not in others and len(others) == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "archived"},
        {"source": "fax"},
        {"end": "2026-04-15T08:00:00Z"},
        {"start": "2026-04-15T09:00:00"},  # no offset
        {"timezone": "Mars/Olympus"},
        {"version": -1},
        {"id": ""},
    ],
)
def test_contract_violations_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        event(**bad)


def test_render_event_tags_the_deployment_that_writes_it() -> None:
    body = render_event(event().booking, "lnk_a", deployment="staging-eu")
    assert body["extendedProperties"]["private"] == {
        "managed_by": "resytech",
        "booking_id": "bk_1",
        "link_id": "lnk_a",
        "deployment": "staging-eu",
    }


@pytest.mark.parametrize(
    "value", ["staging-eu", "prod.us_1", "~x", "a" * 64, "0b7c6f1e-6c1d-4d8e-9a4b-2f0e1d3c5b7a"]
)
def test_a_deployment_id_is_short_and_needs_no_escaping(value: str) -> None:
    assert Settings(deployment_id=value).deployment_id == value


@pytest.mark.parametrize(
    "value", ["", " ", "a" * 65, "staging/eu", "staging eu", "x=y", "st\u00e1ging", "a\nb"]
)
def test_a_deployment_id_out_of_its_rule_is_refused(value: str) -> None:
    # It lands in Google's private extended properties, in a `privateExtendedProperty=k=v`
    # query and in a URI (ce_source): URI-unreserved characters only, at most 64.
    with pytest.raises(ValidationError):
        Settings(deployment_id=value)
