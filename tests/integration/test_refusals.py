"""Google as its users meet it: every refusal handled, nothing forgotten, nobody starved.

The sandbox answers as people using the real API report Google does (an update of an event
deleted in the UI is a 403; quotaExceeded and dailyLimitExceeded bodies; calendars whose
access drops to reader). Every test ends with every calendar exact: one event per live
booking, with its latest content, and no operator action.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from consumer.domain.planning import google_event_id
from tests.oracle import assert_exact
from tests.plugins.environment import Env, calsync, wait_until
from tests.plugins.events import booking_event

# The repair loop, sped up: due at once after a short backoff, looked for often.
FAST_REPAIRS = {"repair_initial_backoff_s": 0.5, "repair_max_backoff_s": 2.0, "repair_poll_s": 0.2}


@pytest.mark.parametrize("update_status", [403, 410])
async def test_a_hand_deleted_event_is_recreated_and_the_link_stays_active(
    env: Env, update_status: int
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    env.sandbox.configure(deleted_event_update_status=update_status)
    try:
        async with env.consumer():
            await env.publish(booking_event("bk_1", 1))
            await wait_until(lambda: env.events(email), what="the event")
            env.sandbox.delete_by_hand(email, email, google_event_id(link_id, "bk_1", 0))
            v2 = booking_event("bk_1", 2, "booking.updated", customer_name="Jane Smith-Jones")
            await env.publish(v2)
            other = booking_event("bk_2", 1)
            await env.publish(other)
            await wait_until(lambda: len(env.results()) == 3, what="3 results")
            await wait_until(env.all_committed, what="offsets")
    finally:
        env.sandbox.configure(deleted_event_update_status=403)
    update = env.results("bk_1")[-1]
    assert (update["operation"], update["outcome"], update["reason"]) == (
        "create",
        "applied",
        "stale_event_recreated",
    )
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "active"
    assert_exact(env, email, link_id, {"bk_1": v2, "bk_2": other})
    assert env.events(email)[0]["id"] in {
        google_event_id(link_id, "bk_1", 1),
        google_event_id(link_id, "bk_2", 0),
    }
    if update_status == 403:  # Google was asked about the event before anything else
        ops = [
            c["op"]
            for c in env.sandbox.calls(detail=True)["calls"]
            if c["account"] == email and c["event_id"] == google_event_id(link_id, "bk_1", 0)
        ]
        assert ops[-2:] == ["events.update", "events.get"]


async def test_a_quota_exceeded_account_is_paused_deferred_and_caught_up_alone(env: Env) -> None:
    """quotaExceeded ("Calendar usage limits exceeded") for one account: that account is
    paused (its links stay active, its work deferred), the others go on, and once the
    pause is over the repair loop catches it up, nothing doubled."""
    spent, spent_refresh = env.account("spent")
    fine, fine_refresh = env.account("fine")
    spent_link = await env.link(spent, spent_refresh)
    fine_link = await env.link(fine, fine_refresh)
    latest: dict[str, dict[str, Any]] = {}
    async with env.consumer(quota_exceeded_pause_s=5.0, **FAST_REPAIRS):
        env.sandbox.add_fault(403, account=spent, reason="quotaExceeded", duration_s=4)
        for n in range(6):
            latest[f"bk_{n}"] = booking_event(f"bk_{n}", 1)
            await env.publish(latest[f"bk_{n}"])
        await wait_until(lambda: len(env.events(fine)) == 6, what="the fine account synced")
        deferred = await wait_until(
            lambda: [
                r
                for r in env.results()
                if r["link_id"] == spent_link and r["outcome"] == "deferred"
            ],
            what="deferred results",
        )
        assert {r["reason"] for r in deferred} == {"account_paused"}
        status = json.loads(calsync(env, "status", "--json").stdout)
        assert status["repairs"]["waiting"] >= 1
        assert "account_paused" in status["repairs"]["by_reason"]
        assert (
            env.query("SELECT state FROM calendar_links WHERE id = %s", spent_link)[0]["state"]
            == "active"
        )
        latest["bk_0"] = booking_event("bk_0", 2, "booking.updated", customer_name="Later")
        await env.publish(latest["bk_0"])  # a change while paused: deferred too
        await wait_until(
            lambda: len(env.events(spent)) == 6, timeout_s=40, what="the paused account caught up"
        )
        await wait_until(lambda: not env.query("SELECT 1 FROM repairs"), what="no repairs")
    assert_exact(env, spent, spent_link, latest)
    assert_exact(env, fine, fine_link, latest)
    # While paused, no call for that account went to Google beyond the first refusals.
    refusals = [
        c
        for c in env.sandbox.calls(detail=True)["calls"]
        if c["account"] == spent and c["status"] == 403
    ]
    assert 1 <= len(refusals) <= 6  # at most the calls already out when the first came
    bucket = env.query(
        "SELECT paused_reason FROM quota_buckets WHERE key LIKE %s", f"%account:{spent}"
    )
    assert bucket and bucket[0]["paused_reason"] == "quotaExceeded"


async def test_daily_limit_exceeded_pauses_the_project_then_everything_catches_up(env: Env) -> None:
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    links = {one: await env.link(one, one_refresh), two: await env.link(two, two_refresh)}
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(4)}
    async with env.consumer(quota_exceeded_pause_s=3.0, **FAST_REPAIRS):
        env.sandbox.add_fault(403, reason="dailyLimitExceeded", duration_s=5)
        for event in latest.values():
            await env.publish(event)
        await wait_until(
            lambda: any(r["reason"] == "project_paused" for r in env.results()),
            what="a project pause",
        )
        await wait_until(
            lambda: all(len(env.events(e)) == 4 for e in links),
            timeout_s=40,
            what="both calendars caught up",
        )
    for email, link_id in links.items():
        assert_exact(env, email, link_id, latest)
    assert all(r["state"] == "active" for r in env.query("SELECT state FROM calendar_links"))


async def test_an_unexplained_403_on_an_update_is_retried_later_and_the_link_stays(
    env: Env,
) -> None:
    """A 403 `forbidden` on an event still there, in a calendar still writable: neither
    deleted by hand nor unavailable. The link stays active; the repair loop applies it."""
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer(**FAST_REPAIRS):
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: env.events(email), what="the event")
        env.sandbox.add_fault(403, count=2, account=email, reason="forbidden", method="PUT")
        v2 = booking_event("bk_1", 2, "booking.updated", customer_name="Ann")
        await env.publish(v2)
        await wait_until(
            lambda: any(r["reason"] == "google_refused" for r in env.results()),
            what="the refusal recorded",
        )
        await wait_until(
            lambda: env.events(email)[0]["summary"] == "Kayak Tour - Ann",
            timeout_s=30,
            what="the repair",
        )
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "active"
    assert_exact(env, email, link_id, {"bk_1": v2})
    ops = [c["op"] for c in env.sandbox.calls(detail=True)["calls"] if c["account"] == email]
    assert "events.get" in ops and "calendarList.get" in ops


async def test_a_404_on_insert_for_a_calendar_still_listed_does_not_switch_the_link_off(
    env: Env,
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    env.sandbox.add_fault(404, count=1, account=email, method="POST")
    latest = {"bk_1": booking_event("bk_1", 1)}
    async with env.consumer(**FAST_REPAIRS):
        await env.publish(latest["bk_1"])
        await wait_until(lambda: env.events(email), timeout_s=30, what="the repaired insert")
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "active"
    assert_exact(env, email, link_id, latest)


async def test_a_google_outage_ends_with_every_calendar_exact_without_an_operator(env: Env) -> None:
    """Google answers 5xx for a while (2 minutes in the issue; 15 s here, the retry budget
    5 s): every change of the outage is failed past its budget, kept as a repair, and
    applied once Google is back."""
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    links = {one: await env.link(one, one_refresh), two: await env.link(two, two_refresh)}
    latest: dict[str, dict[str, Any]] = {}
    async with env.consumer(retry_budget_s=5.0, **FAST_REPAIRS):
        for n in range(4):
            latest[f"bk_{n}"] = booking_event(f"bk_{n}", 1)
            await env.publish(latest[f"bk_{n}"])
        await wait_until(lambda: all(len(env.events(e)) == 4 for e in links), what="synced")
        env.sandbox.add_fault(503, duration_s=15)
        for n in range(6):  # changes, cancels and new bookings during the outage
            if n < 2:
                latest[f"bk_{n}"] = booking_event(
                    f"bk_{n}", 2, "booking.updated", customer_name=f"Outage {n}"
                )
            elif n < 4:
                latest[f"bk_{n}"] = booking_event(
                    f"bk_{n}", 2, "booking.canceled", status="canceled"
                )
            else:
                latest[f"bk_{n}"] = booking_event(f"bk_{n}", 1)
            await env.publish(latest[f"bk_{n}"])
        await wait_until(env.all_committed, timeout_s=30, what="offsets moved on")
        assert env.query("SELECT count(*) AS n FROM repairs")[0]["n"] > 0
        await wait_until(
            lambda: not env.query("SELECT 1 FROM repairs"), timeout_s=60, what="every repair done"
        )
    for email, link_id in links.items():
        assert_exact(env, email, link_id, latest)


class _Door:
    """A TCP door to the sandbox's token endpoint that can be shut (connections refused)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def shut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


async def test_a_token_endpoint_refusing_connections_ends_caught_up(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)  # no access token yet: the first call refreshes
    sandbox_port = int(env.sandbox.base_url.rsplit(":", 1)[1])
    door = _Door(sandbox_port)
    token_url = f"https://127.0.0.1:{door.port}/token"
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(3)}
    async with env.consumer(google_token_url=token_url, retry_budget_s=2.0, **FAST_REPAIRS):
        for event in latest.values():  # the door is shut: connections refused
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 3, timeout_s=30, what="3 results")
        assert {(r["outcome"], r["reason"]) for r in env.results()} == {
            ("failed", "token_refresh_failed")
        }
        await wait_until(env.all_committed, what="offsets moved on")
        assert len(env.query("SELECT 1 FROM repairs")) == 3
        await door.open()
        try:
            await wait_until(
                lambda: len(env.events(email)) == 3,
                timeout_s=40,
                what="caught up once the token endpoint is back",
            )
        finally:
            await door.shut()
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "active"
    assert_exact(env, email, link_id, latest)


async def test_a_throttled_account_leaves_the_window_to_the_others(env: Env) -> None:
    """An account whose quota queue is long (here 60 calls a minute, a backlog of 30) does
    not fill the in-flight window (10 here): its waiting work is deferred to the repair
    loop, and another account's booking behind it is applied while the backlog waits."""
    slow, slow_refresh = env.account("slow")
    idle, idle_refresh = env.account("idle")
    slow_link = await env.link(slow, slow_refresh, activity_id="act_slow")
    idle_link = await env.link(idle, idle_refresh, activity_id="act_idle")
    latest: dict[str, dict[str, Any]] = {}
    for n in range(30):
        latest[f"bk_s{n}"] = booking_event(f"bk_s{n}", 1, activity_id="act_slow")
        await env.publish(latest[f"bk_s{n}"])
    latest["bk_idle"] = booking_event("bk_idle", 1, activity_id="act_idle")
    await env.publish(latest["bk_idle"])
    async with env.consumer(
        max_in_flight=10, quota_per_account_per_min=60, quota_max_wait_s=2.0, **FAST_REPAIRS
    ):
        await wait_until(lambda: env.events(idle), timeout_s=30, what="the idle account")
        waiting = env.query("SELECT count(*) AS n FROM repairs")[0]["n"]
        assert waiting > 0, "the idle account's booking did not have to wait for the backlog"
        assert len(env.events(slow)) < 30
        deferred = [r for r in env.results() if r["outcome"] == "deferred"]
        assert deferred and {r["reason"] for r in deferred} == {"account_backlogged"}
        await wait_until(env.all_committed, timeout_s=30, what="offsets past the backlog")
    assert_exact(env, idle, idle_link, {"bk_idle": latest["bk_idle"]})
    # The backlog itself is finished by `calsync repair`, here and now, without a consumer.
    answer = calsync(env, "repair", "--link", slow_link, "--now", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["still_waiting"]["waiting"] == 0
    assert_exact(env, slow, slow_link, {k: v for k, v in latest.items() if k != "bk_idle"})


async def _serve_502(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    body = b"<html><body>502 Bad Gateway</body></html>"
    writer.write(
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    await writer.drain()
    writer.close()


async def test_a_token_endpoint_answering_502_is_an_outage_not_a_revocation(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)  # no access token: the first call refreshes
    door = _Door(0)
    server = await asyncio.start_server(_serve_502, "127.0.0.1", door.port)
    try:
        async with env.consumer(
            google_token_url=f"http://127.0.0.1:{door.port}/token", retry_budget_s=1.0
        ):
            await env.publish(booking_event("bk_1", 1))
            await wait_until(lambda: env.results(), timeout_s=30, what="a result")
    finally:
        server.close()
    result = env.results()[0]
    assert (result["outcome"], result["reason"]) == ("failed", "token_refresh_failed")
    assert env.query("SELECT state FROM calendar_links")[0]["state"] == "active"
    assert env.query("SELECT reason FROM repairs") == [{"reason": "token_endpoint_unavailable"}]


async def test_an_account_google_rate_limits_leaves_the_window_to_the_others(env: Env) -> None:
    """Google answers one account 429 for a while: a couple of its messages retry inside the
    window, the rest are deferred to the repair loop at once, so another account's booking
    behind them is applied before any of them has used up its retry budget."""
    slow, slow_refresh = env.account("slow")
    idle, idle_refresh = env.account("idle")
    slow_link = await env.link(slow, slow_refresh, activity_id="act_slow")
    idle_link = await env.link(idle, idle_refresh, activity_id="act_idle")
    latest: dict[str, dict[str, Any]] = {}
    async with env.consumer(max_in_flight=10, retry_budget_s=10.0, **FAST_REPAIRS):
        for name, activity in (("warm_s", "act_slow"), ("warm_i", "act_idle")):
            latest[name] = booking_event(name, 1, activity_id=activity)
            await env.publish(latest[name])
        await wait_until(lambda: env.events(slow) and env.events(idle), what="warm")
        env.sandbox.add_fault(429, account=slow, reason="rateLimitExceeded", duration_s=12)
        for n in range(30):
            latest[f"bk_s{n}"] = booking_event(f"bk_s{n}", 1, activity_id="act_slow")
            await env.publish(latest[f"bk_s{n}"])
        latest["bk_idle"] = booking_event("bk_idle", 1, activity_id="act_idle")
        await env.publish(latest["bk_idle"])
        await wait_until(lambda: env.results("bk_idle"), timeout_s=60, what="idle applied")
        idle_id = env.results("bk_idle")[0]["id"]
        exhausted = [r["id"] for r in env.results() if r["reason"] == "retries_exhausted"]
        assert all(idle_id < i for i in exhausted), "idle waited for the slow account"
        deferred = [r for r in env.results() if r["outcome"] == "deferred"]
        assert {r["reason"] for r in deferred} <= {"account_rate_limited", "account_backlogged"}
        assert deferred, "none of the rate-limited account's messages left the window"
        await wait_until(
            lambda: len(env.events(slow)) == 31, timeout_s=90, what="the slow account caught up"
        )
    assert_exact(env, idle, idle_link, latest, activity_id="act_idle")
    assert_exact(env, slow, slow_link, latest, activity_id="act_slow")


def _owed(env: Env, link_id: str, booking: dict[str, Any], ago: str) -> None:
    """A booking recorded, and a repair of it due (as a failure long ago left it)."""
    env.query(
        "INSERT INTO bookings VALUES (%s, %s, 1, 'booking.created', %s) RETURNING 1",
        booking["booking"]["id"],
        booking["booking"]["activity_id"],
        json.dumps(booking),
    )
    env.query(
        "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at)"
        f" VALUES (%s, %s, 1, 'retries_exhausted', now() - interval '{ago}')"
        " RETURNING 1",
        link_id,
        booking["booking"]["id"],
    )


async def test_one_accounts_repairs_never_take_every_place_in_the_loop(env: Env) -> None:
    slow, slow_refresh = env.account("slow")
    fine, fine_refresh = env.account("fine")
    slow_link = await env.link(slow, slow_refresh, activity_id="act_slow")
    fine_link = await env.link(fine, fine_refresh, activity_id="act_fine")
    for n in range(12):  # owed for longer: first in line
        _owed(env, slow_link, booking_event(f"bk_s{n}", 1, activity_id="act_slow"), "1 minute")
    _owed(env, fine_link, booking_event("bk_fine", 1, activity_id="act_fine"), "1 second")
    async with env.consumer(quota_per_account_per_min=30, repair_concurrency=4, repair_poll_s=0.2):
        await wait_until(lambda: env.events(fine), timeout_s=60, what="fine repaired")
        slow_done = len(env.events(slow))
    # 30 calls a minute: the slow account has 3 places (what it can do in
    # CALSYNC_QUOTA_MAX_WAIT_S), so the fourth was the fine account's from the start.
    assert slow_done <= 3, f"the fine account waited for {slow_done} slow repairs"


async def test_a_stored_booking_no_longer_valid_does_not_stop_the_repair_loop(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    # Stored before the contract got its bounds (a 600-character name).
    _owed(env, link_id, booking_event("bk_old", 1, customer_name="x" * 600), "1 second")
    async with env.consumer(repair_poll_s=0.2):
        await wait_until(lambda: not env.query("SELECT 1 FROM repairs"), what="settled")
        ok = booking_event("bk_ok", 1)
        _owed(env, link_id, ok, "0 seconds")
        await wait_until(lambda: env.events(email), timeout_s=15, what="bk_ok repaired")
    assert_exact(env, email, link_id, {"bk_ok": ok})
