"""What goes wrong at Google or in the input, and how the consumer lives with it."""

from __future__ import annotations

import asyncio
import json
import time

from structlog.testing import capture_logs

from consumer.domain.planning import google_event_id
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event


async def test_stale_event_recovery_after_a_manual_delete(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: env.events(email), what="the event")
        first_id = google_event_id(link_id, "bk_1", 0)
        env.sandbox.delete_by_hand(email, email, first_id)  # someone deletes it in Google
        await env.publish(
            booking_event("bk_1", 2, "booking.updated", customer_name="Jane Smith-Jones")
        )
        rows = await wait_until(
            lambda: len(env.results("bk_1")) == 2 and env.results("bk_1"),
            what="the update's result",
        )
    events = env.events(email)
    assert len(events) == 1
    assert events[0]["id"] == google_event_id(link_id, "bk_1", 1)  # next generation
    assert events[0]["summary"] == "Kayak Tour - Jane Smith-Jones"
    assert (rows[1]["operation"], rows[1]["outcome"], rows[1]["reason"]) == (
        "create",
        "applied",
        "stale_event_recreated",
    )
    record = env.query("SELECT google_event_id, generation FROM link_bookings")[0]
    assert record == {"google_event_id": events[0]["id"], "generation": 1}


async def test_a_delete_of_an_event_already_gone_is_done(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: env.events(email), what="the event")
        env.sandbox.delete_by_hand(email, email, google_event_id(link_id, "bk_1", 0))
        await env.publish(booking_event("bk_1", 2, "booking.canceled", status="canceled"))
        rows = await wait_until(
            lambda: len(env.results("bk_1")) == 2 and env.results("bk_1"),
            what="the cancel's result",
        )
    assert (rows[1]["operation"], rows[1]["outcome"], rows[1]["reason"]) == (
        "delete",
        "applied",
        "already_gone",
    )
    # Reinstated later: a fresh event under a new id (the deleted id stays taken at Google).
    async with env.consumer():
        await env.publish(booking_event("bk_1", 3, "booking.updated"))
        await wait_until(lambda: env.events(email), what="the reinstated event")
    assert env.events(email)[0]["id"] == google_event_id(link_id, "bk_1", 1)


async def test_transient_google_failures_are_retried(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    env.sandbox.add_fault(503, count=1, account=email)
    env.sandbox.add_fault(429, count=1, account=email, retry_after=1)
    env.sandbox.add_fault(403, count=1, account=email, reason="userRateLimitExceeded")
    env.sandbox.add_fault(500, count=1, account=email)
    started = time.monotonic()
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        rows = await wait_until(lambda: env.results("bk_1"), what="the result")
    assert (rows[0]["outcome"], rows[0]["attempts"]) == ("applied", 5)
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert len(env.events(email)) == 1


async def test_a_failure_past_the_budget_is_recorded_and_blocks_nothing(env: Env) -> None:
    broken, broken_refresh = env.account("broken")
    healthy, healthy_refresh = env.account("healthy")
    broken_link = await env.link(broken, broken_refresh)
    await env.link(healthy, healthy_refresh)
    env.sandbox.add_fault(503, count=10_000, account=broken)
    try:
        with capture_logs() as logs:
            async with env.consumer(retry_budget_s=1.0):
                for n in range(3):
                    await env.publish(booking_event(f"bk_{n}", 1))
                await wait_until(lambda: len(env.results()) == 6, what="6 results")
    finally:
        env.sandbox.clear_faults()
    failed = [r for r in env.results() if r["link_id"] == broken_link]
    assert {(r["outcome"], r["reason"]) for r in failed} == {("failed", "retries_exhausted")}
    assert all(r["attempts"] > 1 and "503" in r["error"] for r in failed)
    assert len(env.events(healthy)) == 3
    assert await env.committed_total() == 3
    assert any(e["event"] == "link_sync_failed" and e["log_level"] == "warning" for e in logs)


async def test_a_deleted_calendar_makes_that_link_calendar_unavailable_only(env: Env) -> None:
    gone, gone_refresh = env.account(
        "gone",
        calendars=[
            {"id": "primary-g", "summary": "Main", "primary": True},
            {"id": "old-bookings", "summary": "Old bookings"},
        ],
    )
    healthy, healthy_refresh = env.account("healthy")
    gone_link = await env.link(gone, gone_refresh, calendar_id="old-bookings")
    await env.link(healthy, healthy_refresh)
    env.sandbox.remove_calendar(gone, "old-bookings")
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: len(env.results()) == 2, what="2 results")
    row = next(r for r in env.results() if r["link_id"] == gone_link)
    assert (row["outcome"], row["reason"]) == ("failed", "calendar_unavailable")
    assert "404" in row["error"]
    assert len(env.events(healthy)) == 1
    link = env.query("SELECT state, state_reason FROM calendar_links WHERE id = %s", gone_link)
    assert link[0]["state"] == "calendar_unavailable" and "404" in link[0]["state_reason"]


async def test_a_calendar_no_longer_writable_makes_the_link_calendar_unavailable(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: len(env.events(email)) == 1, what="the event")
        env.sandbox.set_access_role(email, email, "reader")  # the owner shared it read-only
        await env.publish(booking_event("bk_1", 2, "booking.updated", customer_name="Ann"))
        await env.publish(booking_event("bk_2", 1))
        await wait_until(
            lambda: env.query("SELECT 1 FROM calendar_links WHERE state = 'calendar_unavailable'"),
            what="state",
        )
        await wait_until(env.all_committed, what="offsets committed")
    link = env.query("SELECT state_reason FROM calendar_links WHERE id = %s", link_id)[0]
    assert "403" in link["state_reason"] and "requiredAccessLevel" in link["state_reason"]
    # Whichever of the update and the insert met the refusal first turned the link; the
    # other one found it no longer active.
    last = [env.results("bk_1")[-1], env.results("bk_2")[-1]]
    assert ("failed", "calendar_unavailable") in {(r["outcome"], r["reason"]) for r in last}
    assert {(r["outcome"], r["reason"]) for r in last} <= {
        ("failed", "calendar_unavailable"),
        ("skipped", "link_not_active"),
    }


BAD_MESSAGES: list[tuple[bytes | None, bytes, str]] = [
    (b"bk_x", b"\xff\xfe not utf-8", "not_utf8"),
    (b"bk_x", b"{not json", "not_json"),
    (b"bk_x", b"[1, 2]", "schema_violation"),
    (
        b"bk_x",
        json.dumps({**booking_event("bk_x"), "schema_version": 2}).encode(),
        "unsupported_schema_version",
    ),
    (b"bk_x", json.dumps(booking_event("bk_x", status="archived")).encode(), "schema_violation"),
    (
        b"bk_x",
        json.dumps(booking_event("bk_x", end="2026-04-15T08:00:00Z")).encode(),
        "schema_violation",
    ),
    (b"bk_other", json.dumps(booking_event("bk_x")).encode(), "key_mismatch"),
]


async def test_bad_messages_are_dead_lettered_and_the_offset_moves_on(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    with capture_logs() as logs:
        async with env.consumer():
            for key, value, _ in BAD_MESSAGES:
                await env.publish(value, key=key)
            await env.publish(booking_event("bk_good", 1))
            await wait_until(lambda: env.results("bk_good"), what="the good message")
            await wait_until(
                lambda: len(env.query("SELECT id FROM dead_letters")) == len(BAD_MESSAGES),
                what="dead letters recorded",
            )
            await wait_until(env.all_committed, what="offsets past every message")
    copies = await env.read_dlq(len(BAD_MESSAGES))
    assert len(copies) == len(BAD_MESSAGES)
    sent = {(key, value): kind for key, value, kind in BAD_MESSAGES}
    for copy in copies:
        headers = {k: v.decode() for k, v in copy.headers}
        assert sent[(copy.key, copy.value)] == headers["error.type"]
        assert headers["error"]
        assert headers["error.source.topic"] == env.settings.topic
        assert int(headers["error.source.offset"]) >= 0
    rows = env.query("SELECT error_type, error, message_key, message_value FROM dead_letters")
    assert sorted(r["error_type"] for r in rows) == sorted(k for _, _, k in BAD_MESSAGES)
    assert {(bytes(r["message_key"]), bytes(r["message_value"])) for r in rows} == set(sent)
    errors = [e for e in logs if e["event"] == "message_dead_lettered"]
    assert len(errors) == len(BAD_MESSAGES)
    assert all(e["log_level"] == "error" and e["error_type"] and "offset" in e for e in errors)
    assert len(env.events(email)) == 1


async def test_the_database_going_away_holds_the_offset_until_it_is_back(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    import psycopg

    async with env.consumer():
        # Take the consumer's tables away (as good as a database outage for it).
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE sync_results RENAME TO sync_results_away")
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: env.events(email), what="the Google call")
        await asyncio.sleep(0.5)
        assert await env.committed_total() == 0
        with psycopg.connect(env.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE sync_results_away RENAME TO sync_results")
        rows = await wait_until(lambda: env.results("bk_1"), timeout_s=30, what="recovery")
        await wait_until(env.all_committed, what="the offset")
        assert await env.committed_total() == 1
    assert rows[0]["reason"] in ("booking_synced", "already_existed")
    assert len(env.events(email)) == 1


async def test_a_google_call_that_times_out_is_retried(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    env.sandbox.add_fault(503, count=1, account=email, delay_s=2.0)  # answers too late
    async with env.consumer(google_timeout_s=0.5):
        await env.publish(booking_event("bk_1", 1))
        rows = await wait_until(lambda: env.results("bk_1"), what="the result")
    assert (rows[0]["outcome"], rows[0]["attempts"]) == ("applied", 2)
    assert len(env.events(email)) == 1
