"""Link administration beyond the main story: the CLI, keys, states, auth, in-flight stops."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from calsync_dev.stack import free_port
from consumer.adapters.crypto import TokenCipher
from consumer.bootstrap import link_service
from consumer.domain.errors import LinkError, TokenKeyError
from consumer.entrypoints.http_api import serve
from consumer.entrypoints.problems import http_status
from tests.plugins.environment import ADMIN_TOKEN, TOKEN_KEY, Env, calsync, wait_until
from tests.plugins.events import booking_event


def one_line_refusal(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.strip() == text


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_cli_connect_prints_the_consent_url(env: Env) -> None:
    result = calsync(env, "links", "connect", "act_7")
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert len(result.stdout.strip().splitlines()) == 1
    assert url.startswith(env.sandbox.auth_url + "?")
    params = query_of(url)
    assert params["access_type"] == "offline" and params["prompt"] == "consent"
    assert params["client_id"] == env.settings.google_client_id
    assert params["code_challenge_method"] == "S256" and params["state"]
    assert env.query("SELECT activity_id FROM oauth_states") == [{"activity_id": "act_7"}]
    # The URL works: Google's consent answers with a redirect carrying a code.
    email, _ = env.account()
    assert "code" in query_of(env.sandbox.consent(url, email))


async def test_cli_refusals_are_one_line_and_change_nothing(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    second = await env.link(email, refresh, calendar_id=None)  # same account, pending
    links_now = (
        "SELECT id, activity_id, account_email, calendar_id, state, state_reason,"
        " state_changed_at FROM calendar_links ORDER BY id"
    )
    grants_now = (
        "SELECT account_email, refresh_token_enc, state, state_reason FROM google_grants"
        " ORDER BY account_email"
    )
    before = env.query(links_now)
    grants_before = env.query(grants_now)
    one_line_refusal(
        calsync(env, "links", "disconnect", "lnk_nope"),
        "calsync: no link 'lnk_nope' (see: calsync links list)",
    )
    one_line_refusal(
        calsync(env, "links", "select", link_id, "not-mine"),
        f"calsync: calendar 'not-mine' is not in the calendar list of {email} "
        f"(see: calsync links calendars {link_id})",
    )
    one_line_refusal(
        calsync(env, "links", "select", second, email),
        f"calsync: calendar_taken: calendar '{email}' of {email} already belongs to this "
        f"activity's link {link_id}: one live link per calendar of an activity, or every "
        "booking would be there twice",
    )
    one_line_refusal(
        calsync(env, "links", "connect", " "),
        "calsync: activity id must be a non-empty id without spaces (at most 200 characters)",
    )
    missing_key = calsync(env, "links", "list", CALSYNC_TOKEN_KEY="")
    one_line_refusal(
        missing_key,
        "calsync: CALSYNC_TOKEN_KEY is not set: generate a key with "
        "`calsync keys generate` and export it",
    )
    wrong_key = calsync(env, "links", "list", CALSYNC_TOKEN_KEY=TokenCipher.generate_key())
    assert wrong_key.returncode == 1 and "cannot be decrypted" in wrong_key.stderr
    assert len(wrong_key.stderr.strip().splitlines()) == 1
    one_line_refusal(
        calsync(env, "serve", CALSYNC_ADMIN_TOKEN=""),
        "calsync: CALSYNC_ADMIN_TOKEN is not set: the API needs a bearer credential",
    )
    assert env.query(links_now) == before
    assert env.query(grants_now) == grants_before


async def test_cli_disconnect_with_and_without_removing_events(env: Env) -> None:
    started = time.time()  # the sandbox is shared by the session's tests
    kept_email, kept_refresh = env.account("kept")
    gone_email, gone_refresh = env.account("gone")
    kept = await env.link(kept_email, kept_refresh)
    gone = await env.link(gone_email, gone_refresh)
    async with env.consumer():
        for booking in ("bk_1", "bk_2"):
            await env.publish(booking_event(booking, 1))
        await wait_until(lambda: len(env.events(gone_email)) == 2, what="2 events")
        await wait_until(lambda: len(env.events(kept_email)) == 2, what="2 events")

        result = calsync(env, "links", "disconnect", kept)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"link {kept} disconnected: events kept on the calendar; token revoked at Google"
        )
        result = calsync(env, "links", "disconnect", gone, "--remove-events")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"link {gone} disconnected: 2 events removed; token revoked at Google"
        )
        since = time.time()
        await env.publish(booking_event("bk_3", 1))
        await wait_until(env.all_committed, what="offsets committed")
    assert len(env.events(kept_email)) == 2 and env.events(gone_email) == []
    assert [
        c
        for c in env.sandbox.calls(since=since, detail=True)["calls"]
        if c["op"] != "calendarList.list"
    ] == []
    rows = {r["id"]: r for r in env.query("SELECT * FROM calendar_links")}
    for link_id in (kept, gone):
        assert rows[link_id]["state"] == "disconnected"
        assert rows[link_id]["disconnect_finished_at"] is not None
        assert env.stored_tokens(link_id)["refresh_token"] is None  # wiped
    assert "2 events removed" in rows[gone]["state_reason"]
    # The audit trail stays.
    assert {r["link_id"] for r in env.results()} == {kept, gone}
    # The grant is gone at Google too.
    token_calls = env.sandbox.calls(since=started, detail=True)["calls"]
    assert sum(1 for c in token_calls if c["op"] == "oauth.revoke" and c["status"] == 200) == 2


async def test_key_rotation_re_encrypts_every_token(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    generated = calsync(env, "keys", "generate").stdout.strip()
    TokenCipher([generated])  # a valid key
    rotated = calsync(env, "keys", "rotate", CALSYNC_TOKEN_KEY=f"{generated},{TOKEN_KEY}")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted the tokens of 1 link(s)" in rotated.stdout
    stored = env.query("SELECT refresh_token_enc FROM google_grants")[0]["refresh_token_enc"]
    assert TokenCipher([generated]).decrypt(stored) == refresh
    with pytest.raises(TokenKeyError):
        TokenCipher([TOKEN_KEY]).decrypt(stored)
    listed = calsync(env, "links", "list", "--json", CALSYNC_TOKEN_KEY=generated)
    assert listed.returncode == 0 and link_id in listed.stdout


async def test_an_expired_state_is_refused(env: Env) -> None:
    email, _ = env.account()
    settings = env.settings.model_copy(update={"oauth_state_ttl_s": 1.0})
    async with link_service(settings) as service:
        started = await service.start_connect("act_1")
        params = query_of(env.sandbox.consent(started.authorization_url, email))
        await asyncio.sleep(2.2)
        with pytest.raises(LinkError) as refused:
            await service.finish_connect(params)
    assert refused.value.problem == "state_expired" and http_status(refused.value) == 400
    assert env.query("SELECT * FROM calendar_links") == []


async def test_every_api_route_but_the_redirect_needs_the_admin_token(env: Env) -> None:
    port = free_port()
    settings = env.settings.model_copy(update={"http_port": port})
    stop = asyncio.Event()
    routes = [
        ("POST", "/links/connect"),
        ("GET", "/links"),
        ("GET", "/links/x"),
        ("GET", "/links/x/calendars"),
        ("PUT", "/links/x/calendar"),
        ("POST", "/links/x/disconnect"),
    ]
    async with link_service(settings) as service:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(settings, service, stop, lambda _: ready.set()))
        await ready.wait()
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for method, path in routes:
                    for headers in (
                        {},
                        {"Authorization": "Bearer wrong"},
                        {"Authorization": ADMIN_TOKEN},
                    ):
                        async with http.request(
                            method, base + path, json={}, headers=headers
                        ) as answer:
                            body: dict[str, Any] = await answer.json(content_type=None)
                            assert answer.status == 401, (method, path, headers)
                            assert answer.content_type == "application/problem+json"
                            assert body["type"] == "urn:calsync:problem:unauthorized"
                async with http.get(base + "/oauth/callback") as answer:
                    assert answer.status == 400  # no state: refused by the state check
                    assert (await answer.json(content_type=None))["type"] == (
                        "urn:calsync:problem:state_missing"
                    )
                async with http.post(
                    base + "/links/connect",
                    data=b"{oops",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ) as answer:
                    assert answer.status == 400
        finally:
            stop.set()
            await task


async def test_disconnect_stops_a_link_in_flight_in_another_process(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    env.sandbox.add_fault(503, count=10_000, account=email, path_contains="/events")
    try:
        async with env.consumer(retry_budget_s=60.0, retry_max_s=0.5):
            await env.publish(booking_event("bk_1", 1))
            await wait_until(
                lambda: env.sandbox.calls(detail=True)["calls"][-1]["status"] == 503,
                what="Google failing",
            )
            async with link_service(env.settings) as service:
                await service.disconnect(link_id, remove_events=False)
            # Well inside the 60 s retry budget: the consumer stopped retrying.
            result = await wait_until(
                lambda: env.results("bk_1"), timeout_s=15, what="the in-flight work to stop"
            )
            assert (result[0]["outcome"], result[0]["reason"]) == ("skipped", "link_not_active")
            await wait_until(env.all_committed, what="offsets committed")
            since = time.time()
            await asyncio.sleep(1.0)
            assert [
                c
                for c in env.sandbox.calls(since=since, detail=True)["calls"]
                if c["account"] == email
            ] == []
    finally:
        env.sandbox.clear_faults()


async def test_removing_a_links_events_keeps_to_the_accounts_quota(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        for n in range(20):
            await env.publish(booking_event(f"bk_{n}", 1))
        await wait_until(lambda: len(env.events(email)) == 20, what="20 events")
    since = env.sandbox.calls()["now"]
    # An operator's deletes wait for the account's group-wide slots like the sync's calls:
    # 300 a minute (at the default share) is one every 0.21 s, where unpaced they would go
    # in a burst.
    settings = env.settings.model_copy(update={"quota_per_account_per_min": 300})
    async with link_service(settings) as service:
        done = await service.disconnect(link_id, remove_events=True)
    assert done.events_removed == 20 and env.events(email) == []
    deletes = [
        c["at"]
        for c in env.sandbox.calls(since=since, detail=True)["calls"]
        if c["account"] == email and c["op"] == "events.delete"
    ]
    assert len(deletes) == 20
    interval = 60 / (300 * settings.quota_use_share)
    assert max(deletes) - min(deletes) >= 0.8 * 19 * interval, (deletes, interval)
