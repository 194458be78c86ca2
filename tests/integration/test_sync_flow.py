"""The seed's sync table and multi-calendar rules, through Kafka, PostgreSQL and the sandbox."""

from __future__ import annotations

from typing import Any

from consumer.domain.planning import google_event_id
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event


def by_booking(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["extendedProperties"]["private"]["booking_id"]: e for e in events}


async def results_for(env: Env, booking_id: str, count: int) -> list[dict[str, Any]]:
    return list(
        await wait_until(
            lambda: (rows := env.results(booking_id)) and len(rows) >= count and rows,
            what=f"{count} results for {booking_id}",
        )
    )


async def test_every_row_of_the_seed_sync_table(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        # Booking created (not Draft or Canceled): a new event.
        await env.publish(booking_event("bk_new", 1))
        # Booking created as Draft or Canceled: nothing.
        await env.publish(booking_event("bk_draft", 1, status="draft"))
        await env.publish(booking_event("bk_canceled", 1, status="canceled"))
        # Booking created via iCal sync: nothing (prevents sync loops).
        await env.publish(booking_event("bk_ical", 1, source="ical"))
        # Booking updated (rescheduled): the existing event updated in place.
        await env.publish(booking_event("bk_moved", 1))
        await env.publish(
            booking_event(
                "bk_moved",
                2,
                "booking.updated",
                start="2026-04-16T13:00:00Z",
                end="2026-04-16T14:30:00Z",
                location_name=None,
            )
        )
        # Booking canceled: the event deleted.
        await env.publish(booking_event("bk_cancel", 1))
        await env.publish(booking_event("bk_cancel", 2, "booking.canceled", status="canceled"))
        # Booking set to Draft: the event deleted.
        await env.publish(booking_event("bk_to_draft", 1))
        await env.publish(booking_event("bk_to_draft", 2, "booking.updated", status="draft"))
        # booking.deleted: the event deleted.
        await env.publish(booking_event("bk_deleted", 1))
        await env.publish(booking_event("bk_deleted", 2, "booking.deleted"))
        await wait_until(lambda: len(env.results()) == 12, what="12 results")

    live = by_booking(env.events(email))
    assert set(live) == {"bk_new", "bk_moved"}
    moved = live["bk_moved"]
    assert moved["id"] == google_event_id(link_id, "bk_moved", 0)  # updated in place
    assert moved["sequence"] == 1
    assert moved["start"]["dateTime"] == "2026-04-16T13:00:00Z"
    assert "location" not in moved
    assert "Duration: 90 minutes" in moved["description"]
    new = live["bk_new"]
    assert new["summary"] == "Kayak Tour - Jane Smith"
    assert new["status"] == "confirmed"
    assert new["location"] == "Lake Dock"
    assert new["extendedProperties"]["private"] == {
        "managed_by": "resytech",
        "booking_id": "bk_new",
        "link_id": link_id,
        "deployment": env.deployment_id,  # the database's own: no CALSYNC_DEPLOYMENT_ID set
    }

    ops = {
        (r["booking_id"], r["booking_version"]): (r["operation"], r["outcome"], r["reason"])
        for r in env.results()
    }
    assert ops[("bk_draft", 1)] == ("none", "unchanged", "booking_draft")
    assert ops[("bk_canceled", 1)] == ("none", "unchanged", "booking_canceled")
    assert ops[("bk_ical", 1)] == ("none", "unchanged", "ical_source")
    assert ops[("bk_moved", 2)] == ("update", "applied", "booking_changed")
    assert ops[("bk_cancel", 2)] == ("delete", "applied", "booking_canceled")
    assert ops[("bk_to_draft", 2)] == ("delete", "applied", "booking_draft")
    assert ops[("bk_deleted", 2)] == ("delete", "applied", "booking_deleted")
    every = env.results()
    assert all(r["event_id"] and r["attempts"] >= 0 and r["recorded_at"] for r in every)

    # The offsets moved past everything that was recorded.
    assert await env.committed_total() == 12


async def test_links_on_two_accounts_and_two_calendars_of_one_account(env: Env) -> None:
    owner, owner_refresh = env.account("owner")
    manager, manager_refresh = env.account(
        "manager",
        calendars=[
            {"id": "primary-m", "summary": "Manager", "primary": True},
            {"id": "bookings-m", "summary": "Bookings"},
        ],
    )
    await env.link(owner, owner_refresh)
    await env.link(manager, manager_refresh, calendar_id="primary-m")
    await env.link(manager, manager_refresh, calendar_id="bookings-m")
    other_activity, other_refresh = env.account("other")
    await env.link(other_activity, other_refresh, activity_id="act_2")

    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await env.publish(booking_event("bk_2", 1))
        await env.publish(booking_event("bk_2", 2, "booking.canceled", status="canceled"))
        await wait_until(lambda: len(env.results()) == 9, what="3 events x 3 links")

    for email, calendar in [(owner, owner), (manager, "primary-m"), (manager, "bookings-m")]:
        assert set(by_booking(env.events(email, calendar))) == {"bk_1"}, calendar
    assert env.events(other_activity) == []  # a link of another activity gets nothing
    ids = {r["google_event_id"] for r in env.results("bk_1")}
    assert len(ids) == 3  # one event per (booking, calendar), each with its own id


async def test_a_pending_link_receives_nothing(env: Env) -> None:
    active, active_refresh = env.account("active")
    pending, pending_refresh = env.account("pending")
    await env.link(active, active_refresh)
    pending_id = await env.link(pending, pending_refresh, calendar_id=None)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await results_for(env, "bk_1", 1)
    assert len(env.events(active)) == 1
    assert env.events(pending) == []
    assert not [r for r in env.results() if r["link_id"] == pending_id]
    calls = env.sandbox.calls(detail=True)["calls"]
    assert not [c for c in calls if c["account"] == pending]


async def test_an_old_version_replayed_changes_nothing(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    v1 = booking_event("bk_1", 1)
    v2 = booking_event("bk_1", 2, "booking.updated", customer_name="John Doe")
    v3 = booking_event("bk_1", 3, "booking.canceled", status="canceled")
    async with env.consumer():
        for event in (v1, v2):
            await env.publish(event)
        await results_for(env, "bk_1", 2)
        before = env.events(email)
        calls_before = env.sandbox.calls()["total"]
        # A replay of older versions: nothing changes at Google.
        await env.publish(v1)
        await env.publish(v2)
        rows = await results_for(env, "bk_1", 4)
        assert [(r["operation"], r["reason"]) for r in rows[2:]] == [
            ("none", "version_not_newer"),
            ("none", "version_not_newer"),
        ]
        assert env.events(email) == before
        assert env.sandbox.calls()["total"] == calls_before
        assert before[0]["summary"] == "Kayak Tour - John Doe"
        # After a cancel, a replayed create must not bring the event back.
        await env.publish(v3)
        await env.publish(v1)
        await results_for(env, "bk_1", 6)
    assert env.events(email) == []


async def test_a_duplicate_create_makes_no_second_event(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    # The insert reached Google, but the consumer died before recording it.
    token, _ = env.sandbox.issue_access_token(email)
    from consumer.domain.models import BookingEvent
    from consumer.domain.planning import render_event

    event = booking_event("bk_1", 1)
    parsed = BookingEvent.model_validate(event)
    stale = render_event(parsed.booking, link_id, google_event_id(link_id, "bk_1", 0))
    stale["summary"] = "half-written"
    _insert(env, email, token, stale)

    async with env.consumer():
        await env.publish(event)
        await env.publish(event)  # and the message itself delivered twice
        rows = await results_for(env, "bk_1", 2)
    events = env.events(email)
    assert len(events) == 1
    assert events[0]["summary"] == "Kayak Tour - Jane Smith"  # made to match the booking
    assert (rows[0]["operation"], rows[0]["outcome"], rows[0]["reason"]) == (
        "create",
        "applied",
        "already_existed",
    )
    assert rows[1]["reason"] == "version_not_newer"


def _insert(env: Env, email: str, token: str, body: dict[str, Any]) -> None:
    import json
    import ssl
    import urllib.request

    request = urllib.request.Request(
        f"{env.settings.calendar_api_endpoint}calendars/{email}/events",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=env.sandbox.ca_file)
    urllib.request.urlopen(request, context=context).read()


async def test_many_bookings_in_flight_stay_ordered_per_booking(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    env.sandbox.configure(latency_s=0.02)
    try:
        async with env.consumer(max_in_flight=8):
            for version in range(1, 6):
                for n in range(12):
                    await env.publish(
                        booking_event(
                            f"bk_{n}",
                            version,
                            "booking.created" if version == 1 else "booking.updated",
                            customer_name=f"Customer v{version}",
                        )
                    )
            await wait_until(lambda: len(env.results()) == 60, timeout_s=60, what="60 results")
    finally:
        env.sandbox.configure(latency_s=0.0)
    for n in range(12):
        versions = [r["booking_version"] for r in env.results(f"bk_{n}")]
        assert versions == [1, 2, 3, 4, 5], f"bk_{n} applied out of order: {versions}"
    assert {e["summary"] for e in env.events(email)} == {"Kayak Tour - Customer v5"}
    assert len(env.events(email)) == 12
