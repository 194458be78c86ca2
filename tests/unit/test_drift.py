"""The pure compare of a reconcile (consumer.domain.drift.compare), row by row: whose events
are ours (this deployment's), and which of another link's events on the calendar are
extras to remove."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from consumer.domain.drift import compare, foreign
from consumer.domain.models import CalendarLink, LinkRow, LinkState, LinkTokens
from consumer.domain.planning import render_event
from tests.plugins.events import booking_model

OURS = "dep-ours"
THEIRS = "dep-theirs"
CALENDAR = "shared-cal"
LINK = "lnk_1"
NOW = datetime.now(UTC)
ROW = LinkRow(
    CalendarLink(
        id=LINK,
        activity_id="act_1",
        account_email="owner@example.com",
        calendar_id=CALENDAR,
        state=LinkState.ACTIVE,
    ),
    LinkTokens("1//refresh", None, None),
    None,
    NOW,
    NOW,
)
HELD = booking_model("bk_1")  # a live booking of act_1, whose event the link holds
OTHER = booking_model("bk_2")  # a live booking of act_1 the link's records do not hold


def event(
    event_id: str,
    booking_id: str = "bk_1",
    link_id: str = LINK,
    deployment: str | None = OURS,
    customer_name: str = "Jane Smith",
) -> dict[str, Any]:
    body = render_event(
        booking_model(booking_id, customer_name=customer_name).booking,
        link_id,
        event_id,
        deployment=deployment,
    )
    return body


OWN = event("own1")  # the link's own, recorded event for bk_1, as rendered: no drift

# (what is on the calendar besides OWN, the other links of ours it names: id -> (state,
#  calendar), the drift expected besides none for OWN: (kind, booking, event, link))
ROWS: list[tuple[str, dict[str, Any], dict[str, tuple[str, str | None]], list[tuple[Any, ...]]]] = [
    (
        "another deployment's event for the same booking: foreign, ours stays the booking's",
        event("t1", link_id="lnk_t", deployment=THEIRS),
        {},
        [("foreign", "bk_1", "t1", "lnk_t")],
    ),
    (
        "another deployment's event naming our link id (a copy of our database): foreign",
        event("t2", booking_id="bk_9", deployment=THEIRS),
        {},
        [("foreign", "bk_9", "t2", LINK)],
    ),
    (
        "untagged, of a link that is not ours: another deployment's old event, foreign",
        event("t3", booking_id="bk_9", link_id="lnk_t", deployment=None),
        {},
        [("foreign", "bk_9", "t3", "lnk_t")],
    ),
    (
        "untagged, of another link of ours that moved away: ours, orphaned",
        event("u1", booking_id="bk_2", link_id="lnk_2", deployment=None),
        {"lnk_2": ("active", "elsewhere")},
        [("orphaned", "bk_2", "u1", "lnk_2"), ("missing", "bk_2", None, None)],
    ),
    (
        "ours, of a link that no longer exists: orphaned",
        event("o1", booking_id="bk_2", link_id="lnk_gone"),
        {},
        [("orphaned", "bk_2", "o1", "lnk_gone"), ("missing", "bk_2", None, None)],
    ),
    (
        "ours, of a link pending on this calendar (demoted): it syncs it no more, orphaned",
        event("p1", link_id="lnk_2"),
        {"lnk_2": ("pending", CALENDAR)},
        [("orphaned", "bk_1", "p1", "lnk_2")],
    ),
    (
        "ours, of a pending link, for a booking this link does not hold: orphaned too",
        event("p2", booking_id="bk_9", link_id="lnk_2"),
        {"lnk_2": ("pending", CALENDAR)},
        [("orphaned", "bk_9", "p2", "lnk_2")],
    ),
    (
        "ours, of a pending link without a calendar (demoted, calendar cleared): orphaned",
        event("p3", link_id="lnk_2"),
        {"lnk_2": ("pending", None)},
        [("orphaned", "bk_1", "p3", "lnk_2")],
    ),
    (
        "ours, of another activity's link active on this calendar: never touched",
        event("a1", booking_id="bk_x", link_id="lnk_x"),
        {"lnk_x": ("active", CALENDAR)},
        [],
    ),
    (
        "ours, of a link needing reauthorization on this calendar: never touched",
        event("a2", booking_id="bk_x", link_id="lnk_x"),
        {"lnk_x": ("reauth_required", CALENDAR)},
        [],
    ),
    (
        "ours, of a link whose calendar is unavailable to it, on this calendar: never touched",
        event("a3", booking_id="bk_x", link_id="lnk_x"),
        {"lnk_x": ("calendar_unavailable", CALENDAR)},
        [],
    ),
    (
        "ours, kept by a disconnected link, doubling a booking this link holds: duplicated",
        event("d1", link_id="lnk_d"),
        {"lnk_d": ("disconnected", CALENDAR)},
        [("duplicated", "bk_1", "d1", "lnk_d")],
    ),
    (
        "ours, kept by a disconnected link, for a booking this link does not hold: kept",
        event("d2", booking_id="bk_9", link_id="lnk_d"),
        {"lnk_d": ("disconnected", CALENDAR)},
        [],
    ),
]


@pytest.mark.parametrize(("case", "extra", "others", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_compare(
    case: str,
    extra: dict[str, Any],
    others: dict[str, tuple[str, str | None]],
    expected: list[tuple[Any, ...]],
) -> None:
    latest = {"bk_1": HELD}
    if any(d[0] == "missing" for d in expected):
        latest["bk_2"] = OTHER
    drift = compare(ROW, latest, {"bk_1": "own1"}, [OWN, extra], others, deployment=OURS)
    assert [(d.kind, d.booking_id, d.event_id, d.link_id) for d in drift] == expected, case


def test_our_untagged_event_is_changed_and_rerendered_with_the_tag() -> None:
    untagged = event("own1", deployment=None)
    drift = compare(ROW, {"bk_1": HELD}, {"bk_1": "own1"}, [untagged], {}, deployment=OURS)
    assert [(d.kind, d.event_id, d.detail) for d in drift] == [
        ("changed", "own1", "extendedProperties")
    ]


def test_a_foreign_event_is_never_the_bookings_event_ours_is_missing() -> None:
    theirs = event("t1", link_id="lnk_t", deployment=THEIRS)
    drift = compare(ROW, {"bk_1": HELD}, {}, [theirs], {}, deployment=OURS)
    assert [(d.kind, d.event_id) for d in drift] == [("foreign", "t1"), ("missing", None)]


def test_an_event_tagged_with_another_deployment_is_foreign_whatever_it_names() -> None:
    for private_link in (LINK, "lnk_t"):
        assert foreign(event("e", link_id=private_link, deployment=THEIRS), OURS, {LINK})
    assert foreign(event("e", deployment=OURS), OURS, set()) is None  # tagged ours: ours
    assert foreign(event("e", deployment=None), OURS, {LINK}) is None
    assert foreign(event("e", deployment=None), OURS, {"lnk_2"}) is not None
