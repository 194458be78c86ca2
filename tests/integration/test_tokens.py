"""The seed's token rules, against the sandbox's OAuth token endpoint."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event


def token_calls(env: Env, since: float) -> int:
    return int(env.sandbox.calls(since=since)["by_op"].get("token", 0))


def link_tokens(env: Env, link_id: str) -> dict[str, Any]:
    return env.stored_tokens(link_id)


async def sync_one(env: Env, booking_id: str = "bk_1") -> list[dict[str, Any]]:
    async with env.consumer():
        await env.publish(booking_event(booking_id, 1))
        return list(await wait_until(lambda: env.results(booking_id), what="a result"))


async def test_token_with_more_than_five_minutes_left_is_used_as_is(env: Env) -> None:
    email, refresh = env.account()
    token, expires = env.sandbox.issue_access_token(email, lifetime_s=6 * 60)
    link_id = await env.link(
        email, refresh, access_token=token, expires_at=datetime.fromtimestamp(expires, UTC)
    )
    since = env.sandbox.calls()["now"]
    rows = await sync_one(env)
    assert rows[0]["outcome"] == "applied"
    assert token_calls(env, since) == 0
    assert link_tokens(env, link_id)["access_token"] == token


async def test_token_within_five_minutes_of_expiry_is_refreshed_and_saved(env: Env) -> None:
    email, refresh = env.account()
    token, expires = env.sandbox.issue_access_token(email, lifetime_s=4 * 60)
    link_id = await env.link(
        email, refresh, access_token=token, expires_at=datetime.fromtimestamp(expires, UTC)
    )
    since = env.sandbox.calls()["now"]
    rows = await sync_one(env)
    assert rows[0]["outcome"] == "applied"
    assert token_calls(env, since) == 1
    saved = link_tokens(env, link_id)
    assert saved["access_token"] != token
    assert saved["token_expires_at"] - datetime.now(UTC) > timedelta(minutes=55)
    # Google returned no refresh token: the original one is kept.
    assert saved["refresh_token"] == refresh


async def test_expired_or_missing_token_is_refreshed(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(
        email,
        refresh,
        access_token="ya29.long-gone",
        expires_at=datetime.now(UTC) - timedelta(hours=2),
    )
    rows = await sync_one(env)
    assert rows[0]["outcome"] == "applied"
    assert link_tokens(env, link_id)["access_token"] != "ya29.long-gone"


async def test_a_new_refresh_token_from_google_replaces_the_old(env: Env) -> None:
    email, refresh = env.account(rotate_refresh_token=True)
    link_id = await env.link(email, refresh)
    await sync_one(env)
    saved = link_tokens(env, link_id)["refresh_token"]
    assert saved != refresh and saved.startswith("1//sandbox-")


async def test_one_refresh_per_link_for_many_concurrent_bookings(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    since = env.sandbox.calls()["now"]
    async with env.consumer():
        for n in range(20):
            await env.publish(booking_event(f"bk_{n}", 1))
        await wait_until(lambda: len(env.results()) == 20, what="20 results")
    assert token_calls(env, since) == 1


async def test_a_401_on_a_token_believed_valid_refreshes_once_and_retries(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(
        email,
        refresh,
        access_token="ya29.revoked-by-google",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    since = env.sandbox.calls()["now"]
    rows = await sync_one(env)
    assert (rows[0]["outcome"], rows[0]["attempts"]) == ("applied", 2)
    assert token_calls(env, since) == 1
    assert link_tokens(env, link_id)["access_token"] != "ya29.revoked-by-google"
    assert len(env.events(email)) == 1


async def test_a_401_that_persists_after_refresh_fails_the_link_only(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    env.sandbox.add_fault(401, count=2, account=email)
    rows = await sync_one(env)
    assert (rows[0]["outcome"], rows[0]["reason"]) == ("failed", "google_refused")
    assert "401" in rows[0]["error"]


async def test_a_revoked_link_becomes_reauth_required_once_while_others_sync(env: Env) -> None:
    revoked, revoked_refresh = env.account("revoked")
    healthy, healthy_refresh = env.account("healthy")
    revoked_link = await env.link(revoked, revoked_refresh)
    healthy_link = await env.link(healthy, healthy_refresh)
    env.sandbox.revoke(revoked)  # the user removed access in their Google Account
    since = time.time()
    with capture_logs() as logs:
        async with env.consumer():
            await env.publish(booking_event("bk_1", 1))
            await wait_until(lambda: len(env.results()) == 2, what="2 results")
            for booking in ("bk_2", "bk_3", "bk_4"):
                await env.publish(booking_event(booking, 1))
            await wait_until(lambda: len(env.events(healthy)) == 4, what="4 healthy events")
            await wait_until(env.all_committed, what="offsets committed")
    skipped = [r for r in env.results() if r["link_id"] == revoked_link]
    assert [(r["booking_id"], r["outcome"], r["reason"], r["error"]) for r in skipped] == [
        ("bk_1", "skipped", "token_refresh_failed", "invalid_grant")
    ]
    assert all(r["outcome"] == "applied" for r in env.results() if r["link_id"] == healthy_link)
    assert env.events(revoked) == []
    # One refused refresh for the revoked account, then no Google call at all for it.
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    assert sum(1 for c in calls if c["op"] == "token" and c["status"] == 400) == 1
    state = env.query("SELECT state, state_reason FROM calendar_links WHERE id = %s", revoked_link)[
        0
    ]
    assert state["state"] == "reauth_required" and "invalid_grant" in state["state_reason"]
    warnings = [e for e in logs if e["event"] == "link_reauth_required"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert warnings[0]["link_id"] == revoked_link
    others = [e for e in logs if e["log_level"] == "warning" and e is not warnings[0]]
    assert not others
    # Skipped is not applied: nothing is recorded as being on the revoked calendar.
    applied = env.query(
        "SELECT applied_version FROM link_bookings WHERE link_id = %s", revoked_link
    )
    assert all(row["applied_version"] is None for row in applied)
