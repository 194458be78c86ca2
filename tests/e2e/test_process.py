"""`calsync consume` as a process: killed mid-burst, stopped by signal."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event


async def test_sigkill_mid_burst_then_restart_ends_with_one_event_each(
    env: Env, tmp_path: Path
) -> None:
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    await env.link(one, one_refresh)
    await env.link(two, two_refresh)
    bookings = 40
    for n in range(bookings):
        await env.publish(booking_event(f"bk_{n}", 1))
    for n in range(bookings):
        if n % 4 == 0:
            await env.publish(booking_event(f"bk_{n}", 2, "booking.canceled", status="canceled"))
        else:
            await env.publish(
                booking_event(f"bk_{n}", 2, "booking.updated", customer_name=f"Customer {n}")
            )
    env.sandbox.configure(latency_s=0.03)
    log = tmp_path / "consumer.log"
    try:
        first = env.start_process(log, CALSYNC_MAX_IN_FLIGHT="16")
        await wait_until(lambda: len(env.results()) >= 40, timeout_s=60, what="a burst started")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL
        killed_at = len(env.results())
        assert killed_at < 4 * bookings, "the burst was over before the kill"

        second = env.start_process(log)
        try:
            await wait_until(
                env.all_committed, timeout_s=120, what="the restarted consumer to catch up"
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        env.sandbox.configure(latency_s=0.0)

    for email in (one, two):
        events = env.events(email)
        per_booking = Counter(e["extendedProperties"]["private"]["booking_id"] for e in events)
        expected = {f"bk_{n}" for n in range(bookings) if n % 4 != 0}
        assert set(per_booking) == expected, "missing or extra bookings"
        assert set(per_booking.values()) == {1}, "a booking has two events"
        for event in events:
            n = int(event["extendedProperties"]["private"]["booking_id"][3:])
            assert event["summary"] == f"Kayak Tour - Customer {n}"
    recorded = env.query("SELECT link_id, booking_id, applied_version FROM link_bookings")
    assert len(recorded) == 2 * bookings
    assert {r["applied_version"] for r in recorded} == {2}


async def test_sigterm_finishes_commits_and_exits_zero(env: Env, tmp_path: Path) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    log = tmp_path / "consumer.log"
    process = env.start_process(log)
    try:
        for n in range(10):
            await env.publish(booking_event(f"bk_{n}", 1))
        await wait_until(lambda: len(env.results()) == 10, timeout_s=60, what="10 results")
    finally:
        env.stop_process(process)
    assert process.returncode == 0, log.read_text()[-2000:]
    assert await env.all_committed()
    text = log.read_text()
    assert '"event": "consumer_stopped"' in text
    assert "Traceback" not in text
    link_id = env.query("SELECT id FROM calendar_links")[0]["id"]
    saved = env.stored_tokens(link_id)["access_token"]
    assert refresh not in text and saved and saved not in text
