"""Reconcile looks no further back than the horizon (CALSYNC_BACKFILL_PAST_DAYS): a booking
that ended before it has its event neither created nor deleted by a reconcile, nor is it
reported; live messages are applied whatever the booking's date. On the real stack: the
broker, PostgreSQL and the Google sandbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.plugins.environment import Env, calsync, wait_until
from tests.plugins.events import booking_event

HORIZON = {"CALSYNC_BACKFILL_PAST_DAYS": "7"}


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(days: float) -> dict[str, str]:
    """A two-hour booking `days` from now (negative: that long ago)."""
    start = datetime.now(UTC) + timedelta(days=days)
    return {"start": _at(start), "end": _at(start + timedelta(hours=2))}


def private(event: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = (event.get("extendedProperties") or {}).get("private") or {}
    return found


def of_booking(env: Env, email: str) -> dict[str, dict[str, Any]]:
    return {private(e)["booking_id"]: e for e in env.events(email)}


def plant_ours(env: Env, email: str, link_id: str, booking_id: str, days: float) -> str:
    """An event of ours (this link, this deployment) for a booking the records never had."""
    when = span(days)
    planted = env.sandbox.plant_event(
        email,
        email,
        {
            "summary": f"Ghost {booking_id}",
            "start": {"dateTime": when["start"]},
            "end": {"dateTime": when["end"]},
            "extendedProperties": {
                "private": {
                    "managed_by": "resytech",
                    "link_id": link_id,
                    "booking_id": booking_id,
                    "deployment": env.deployment_id,
                }
            },
        },
    )
    return str(planted["id"])


async def test_reconcile_leaves_what_ended_before_the_horizon_alone(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {
        "bk_past": booking_event("bk_past", 1, **span(-30)),  # ended 30 days ago
        "bk_old": booking_event("bk_old", 1, **span(-40)),  # ended 40 days ago
        "bk_soon": booking_event("bk_soon", 1, **span(10)),  # within the horizon
    }
    async with env.consumer():  # live messages: applied whatever the booking's date
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.events(email)) == 3, what="three events")
        await wait_until(env.all_committed, what="offsets")
    held = of_booking(env, email)
    env.sandbox.delete_by_hand(email, email, held["bk_past"]["id"])
    env.sandbox.delete_by_hand(email, email, held["bk_soon"]["id"])
    moved = span(20)  # a past booking's event moved into the future by hand
    env.sandbox.edit_by_hand(
        email,
        email,
        held["bk_old"]["id"],
        summary="Moved by hand",
        start={"dateTime": moved["start"]},
        end={"dateTime": moved["end"]},
    )
    gone_past = plant_ours(env, email, link_id, "bk_gone_past", -30)  # booking gone, past
    gone_soon = plant_ours(env, email, link_id, "bk_gone_soon", 10)  # booking gone, ahead

    dry = calsync(env, "reconcile", "--json", **HORIZON)
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)
    # Only what is within the horizon: bk_soon's event missing, bk_gone_soon's an orphan.
    assert found["found"] == {"missing": 1, "orphaned": 1}, found
    report = found["links"][0]
    assert [d["booking_id"] for d in report["missing"]] == ["bk_soon"]
    assert [d["event_id"] for d in report["orphaned"]] == [gone_soon]

    done = calsync(env, "reconcile", "--execute", "--json", **HORIZON)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["repaired"] == {"missing": 1, "orphaned": 1}
    now_held = of_booking(env, email)
    assert "bk_soon" in now_held, "a booking within the horizon gets its event back"
    assert "bk_past" not in now_held, "a booking that ended 30 days ago is not recreated"
    assert now_held["bk_gone_past"]["id"] == gone_past, "a past event of ours is not deleted"
    assert "bk_gone_soon" not in now_held, "an orphan within the horizon is removed"
    assert now_held["bk_old"]["summary"] == "Moved by hand", "a past booking's event untouched"
    again = json.loads(calsync(env, "reconcile", "--json", **HORIZON).stdout)
    assert again["found"] == {}

    # A live message for the past booking is still applied (the engine, whatever the date).
    late = booking_event("bk_past", 2, "booking.updated", customer_name="Late", **span(-30))
    async with env.consumer():
        await env.publish(late)
        await wait_until(
            lambda: "bk_past" in of_booking(env, email), what="the past booking's event"
        )
        await wait_until(env.all_committed, what="offsets")
    assert of_booking(env, email)["bk_past"]["summary"] == "Kayak Tour - Late"
