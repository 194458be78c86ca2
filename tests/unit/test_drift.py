"""The pure compare of a reconcile (consumer.domain.drift), row by row: whose events are ours
(this deployment's), and which of another link's events on the calendar are extras to
remove; and the comparison as a reconcile streams it: page by page (the same answer whatever
the pages), keeping ids, and bounded by the horizon."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.domain.drift import CalendarDrift, compare, ends_by, foreign
from consumer.domain.models import CalendarLink, LinkRow, LinkState, LinkTokens
from consumer.domain.planning import render_event
from consumer.domain.records import KnownBooking
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


# --- the comparison as it streams: pages, the horizon ------------------------------------------


def streamed(
    events: list[dict[str, Any]],
    wanted: list[tuple[Any, str | None]],
    known: dict[str, KnownBooking] | None = None,
    others: dict[str, tuple[str, str | None]] | None = None,
    since: datetime | None = None,
) -> CalendarDrift:
    """`events` compared one page per event, as a reconcile lists them."""
    comparison = CalendarDrift(ROW, deployment=OURS, since=since)
    for booking, recorded in wanted:
        comparison.want(booking, recorded)
    for event in events:
        bookings, links = comparison.to_look_up([event])
        comparison.compare_page(
            [event],
            {b: k for b, k in (known or {}).items() if b in bookings},
            {link: s for link, s in (others or {}).items() if link in links},
        )
    return comparison


@pytest.mark.parametrize(("case", "extra", "others", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_page_by_page_finds_what_all_at_once_finds(
    case: str,
    extra: dict[str, Any],
    others: dict[str, tuple[str, str | None]],
    expected: list[tuple[Any, ...]],
) -> None:
    wanted: list[tuple[Any, str | None]] = [(HELD, "own1")]
    if any(d[0] == "missing" for d in expected):
        wanted.append((OTHER, None))
    for events in ([OWN, extra], [extra, OWN]):
        drift = streamed(events, wanted, others=others).finish()
        found = Counter((d.kind, d.booking_id, d.event_id, d.link_id) for d in drift)
        assert found == Counter(expected), case


def test_the_recorded_event_on_a_later_page_is_the_bookings_the_earlier_one_doubles_it() -> None:
    early, later = event("dup1"), event("own1")
    drift = streamed([early, later], [(HELD, "own1")]).finish()
    assert [(d.kind, d.event_id) for d in drift] == [("duplicated", "dup1")]
    first, second = event("dup1"), event("dup2")  # neither recorded: the first one is kept
    drift = streamed([first, second, event("own1")], [(HELD, "own1")]).finish()
    assert [(d.kind, d.event_id) for d in drift] == [
        ("duplicated", "dup1"),
        ("duplicated", "dup2"),
    ]


def test_an_event_the_records_do_not_hold_is_taken_and_said_not_recorded() -> None:
    drift = streamed([event("lost1")], [(HELD, None)]).finish()
    assert [(d.kind, d.event_id, d.detail) for d in drift] == [("changed", "lost1", "not recorded")]


def test_only_ids_are_kept_of_the_events_seen() -> None:
    comparison = streamed([event("own1"), event("dup1")], [(HELD, "own1")])
    held = comparison._held["bk_1"]
    assert (held.keeper, held.extras, held.fields) == ("own1", ["dup1"], ())


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).isoformat()


SINCE = NOW - timedelta(days=7)
PAST = booking_model("bk_p", start=at(-30), end=at(-30 + 0.1))  # ended before the horizon
SOON = booking_model("bk_s", start=at(3), end=at(3.1))


def timed(event_id: str, booking_id: str, days: float) -> dict[str, Any]:
    body = event(event_id, booking_id=booking_id)
    body["start"], body["end"] = {"dateTime": at(days)}, {"dateTime": at(days + 0.1)}
    return body


def test_what_ended_before_the_horizon_is_not_wanted() -> None:
    comparison = CalendarDrift(ROW, deployment=OURS, since=SINCE)
    comparison.want(PAST, None)
    comparison.want(SOON, None)
    comparison.want(booking_model("bk_x", activity_id="act_2", start=at(3), end=at(3.1)), None)
    comparison.want(booking_model("bk_d", status="draft", start=at(3), end=at(3.1)), None)
    assert [(d.kind, d.booking_id) for d in comparison.finish()] == [("missing", "bk_s")]


def test_an_event_that_ends_before_the_horizon_is_not_judged() -> None:
    """Google does not list it (timeMin filters on the end): orphan or not, it is left."""
    drift = streamed([timed("g1", "bk_gone", -30)], [], since=SINCE).finish()
    assert drift == []
    moved = timed("s1", "bk_s", -30)  # a wanted booking's event moved back by hand: not listed
    drift = streamed([moved], [(SOON, "s1")], since=SINCE).finish()
    assert [(d.kind, d.booking_id) for d in drift] == [("missing", "bk_s")]


def test_an_event_of_a_booking_that_ended_before_the_horizon_is_left_whatever_it_shows() -> None:
    moved = timed("p1", "bk_p", 20)  # moved into the future by hand
    known = {"bk_p": KnownBooking("bk_p", within_horizon=False, recorded_event_id="p1")}
    comparison = streamed([moved], [(PAST, "p1")], known=known, since=SINCE)
    assert comparison.finish() == [] and comparison.events_seen == 1
    other_link = timed("p2", "bk_p", 20) | {
        "extendedProperties": {
            "private": {
                "managed_by": "resytech",
                "booking_id": "bk_p",
                "link_id": "lnk_gone",
                "deployment": OURS,
            }
        }
    }
    assert streamed([other_link], [], known=known, since=SINCE).finish() == []


def test_orphans_within_the_horizon_say_whether_the_records_hold_them() -> None:
    known = {"bk_x": KnownBooking("bk_x", within_horizon=True, recorded_event_id="x1")}
    comparison = streamed(
        [timed("x1", "bk_x", 3), timed("x2", "bk_x", 3), timed("g1", "bk_gone", 3)],
        [],
        known=known,
        since=SINCE,
    )
    drift = comparison.finish()
    assert [(d.kind, d.event_id, d.detail) for d in drift] == [
        ("orphaned", "x1", "booking not live here"),
        ("orphaned", "x2", "booking not live here"),
        ("orphaned", "g1", "no such booking"),
    ]
    assert comparison.held_by_records == {"x1"}


def test_a_page_names_what_must_be_looked_up_once() -> None:
    comparison = CalendarDrift(ROW, deployment=OURS)
    comparison.want(HELD, "own1")
    page = [OWN, event("o1", booking_id="bk_9", link_id="lnk_2"), event("o2", "bk_8")]
    assert comparison.to_look_up(page) == ({"bk_9", "bk_8"}, {"lnk_2"})
    comparison.compare_page(page, {}, {"lnk_2": ("active", "elsewhere")})
    assert comparison.to_look_up(page) == ({"bk_9", "bk_8"}, set())  # lnk_2 known now


@pytest.mark.parametrize(
    ("end", "ends_by_since"),
    [
        ({"dateTime": "2026-11-26T20:00:00Z"}, True),
        ({"dateTime": "2026-11-26T20:00:00+00:00"}, True),  # at the bound: not after it
        ({"dateTime": "2026-11-26T21:00:01+01:00"}, False),  # 20:00:01 UTC
        ({"dateTime": "2026-11-26T15:00:00-05:00"}, True),
        ({"date": "2026-11-26"}, True),
        ({"date": "2026-11-27"}, False),
        ({"dateTime": "not a time"}, False),  # unreadable: Google's listing decides
        ({}, False),
        (None, False),
    ],
)
def test_ends_by(end: Any, ends_by_since: bool) -> None:
    since = datetime(2026, 11, 26, 20, 0, tzinfo=UTC)
    assert ends_by({"id": "e", "end": end}, since) is ends_by_since
