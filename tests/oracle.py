"""The content oracle: a calendar compared with the latest booking states the test published,
independently of what the consumer recorded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

from consumer.domain.models import BookingEvent
from consumer.domain.planning import belongs_on_calendar, render_event
from tests.plugins.environment import Env


def assert_exact(
    env: Env,
    email: str,
    link_id: str,
    latest: dict[str, dict[str, Any]],
    calendar_id: str | None = None,
    activity_id: str | None = None,
    other_links: Collection[str] = (),
) -> None:
    """The calendar holds exactly one event of `env`'s deployment per live booking (of
    `activity_id`, when given), with its latest content (tagged with that deployment), and
    nothing else of ours. Another deployment's events (tagged with its id, or untagged and of
    a link that is not ours) are not this check's business, nor are those of `other_links`
    (another activity's live links sharing the calendar)."""
    deployment = env.deployment_id
    our_links = {r["id"] for r in env.query("SELECT id FROM calendar_links")}
    events = [
        e
        for e in env.sandbox.events(email, calendar_id or email)
        if _ours(_private(e), deployment, our_links)
        and _private(e).get("link_id") not in other_links
    ]
    held = Counter(_private(e)["booking_id"] for e in events)
    assert not [b for b, n in held.items() if n > 1], f"duplicates: {held}"
    by_booking = {_private(e)["booking_id"]: e for e in events}
    for booking_id, data in latest.items():
        event = BookingEvent.model_validate(data)
        here = activity_id is None or event.booking.activity_id == activity_id
        if belongs_on_calendar(event) and here:
            assert booking_id in by_booking, f"{booking_id} missing"
            wanted = render_event(event.booking, link_id, deployment=deployment)
            got = by_booking[booking_id]
            assert {k: got.get(k) for k in wanted} == wanted, booking_id
        else:
            assert booking_id not in by_booking, f"{booking_id} should be gone"
    assert set(by_booking) <= set(latest)


def _ours(private: dict[str, Any], deployment: str, our_links: set[str]) -> bool:
    """Tagged with our deployment; or untagged (from before the tag) and of a link of ours."""
    tag = private.get("deployment")
    return tag == deployment or (tag is None and private.get("link_id") in our_links)


def _private(event: dict[str, Any]) -> dict[str, Any]:
    private: dict[str, Any] = (event.get("extendedProperties") or {}).get("private") or {}
    return private


def assert_none_of_ours(env: Env, email: str, calendar_id: str) -> None:
    """Nothing of ours left on a calendar."""
    ours = [
        e
        for e in env.sandbox.events(email, calendar_id)
        if (e.get("extendedProperties") or {}).get("private", {}).get("managed_by")
    ]
    assert not ours, f"{len(ours)} event(s) of ours left on {calendar_id}"
