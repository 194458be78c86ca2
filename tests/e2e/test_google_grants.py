"""One grant per Google account (issue 20, points 4 and 5), on the real broker, database and
sandbox. Google keeps at most 100 refresh tokens per account and OAuth client and silently
voids the oldest; every connect mints one. So calendar-sync keeps one grant per account,
shared by all its links: an account connected to more activities than Google keeps tokens
for loses nothing; Google refusing the grant stops every link of the account at once, with
Google's reason; reconnecting the account through any activity repairs them all; and the
grant is revoked at Google only with the last live link that uses it. Each story ends with
the content oracle (tests/oracle.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from consumer.adapters.crypto import TokenCipher
from consumer.bootstrap import link_service
from consumer.domain.errors import LinkError
from consumer.entrypoints.problems import http_status
from consumer.service.answers import Connected
from consumer.service.links import LinkService
from tests.oracle import assert_exact
from tests.plugins.environment import TOKEN_KEY, Env, calsync, wait_until
from tests.plugins.events import booking_event

CALENDARS = [
    {"id": "cal-kayak", "summary": "Kayaks", "primary": True},
    {"id": "cal-canoe", "summary": "Canoes"},
    {"id": "cal-bike", "summary": "Bikes"},
]
ACTIVITIES = {"act_kayak": "cal-kayak", "act_canoe": "cal-canoe", "act_bike": "cal-bike"}


async def connect(service: LinkService, env: Env, activity: str, email: str) -> Connected:
    """The OAuth flow as a person walks it: consent at Google, then Google's redirect."""
    started = await service.start_connect(activity)
    redirect = env.sandbox.consent(started.authorization_url, email)
    return await service.finish_connect(
        {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
    )


@contextmanager
def sandbox_config(env: Env, **settings: Any) -> Iterator[None]:
    """Google behaving so for the block (the sandbox is shared by the session's tests)."""
    before = env.sandbox.config()
    env.sandbox.configure(**settings)
    try:
        yield
    finally:
        env.sandbox.configure(**{k: before[k] for k in settings})


def grants(env: Env) -> list[dict[str, Any]]:
    cipher = TokenCipher([TOKEN_KEY])
    rows = env.query("SELECT * FROM google_grants ORDER BY account_email")
    for row in rows:
        for column in ("refresh_token_enc", "access_token_enc"):
            row[column] = row[column] and cipher.decrypt(row[column])
    return rows


def states(env: Env, link_ids: list[str]) -> dict[str, str]:
    rows = env.query("SELECT id, state FROM calendar_links WHERE id = ANY(%s)", link_ids)
    return {r["id"]: r["state"] for r in rows}


async def test_an_account_connected_to_more_activities_than_google_keeps_tokens_for(
    env: Env,
) -> None:
    email, _ = env.account("busy", calendars=CALENDARS)
    links: dict[str, str] = {}
    # Google keeping two refresh tokens per account stands for its 100: the third connect
    # voids the first one's token, as the 101st would.
    with sandbox_config(env, refresh_token_limit=2):
        async with link_service(env.settings) as service:
            for activity, calendar in ACTIVITIES.items():
                connected = await connect(service, env, activity, email)
                links[activity] = connected.links[0].id
                await service.select(links[activity], calendar)
        [grant] = grants(env)  # one grant: the newest refresh token, which Google keeps
        assert grant["account_email"] == email and grant["state"] == "valid"
        latest = {f"bk_{a}": booking_event(f"bk_{a}", 1, activity_id=a) for a in ACTIVITIES}
        # Access tokens last an hour; here every one is refreshed before it is used, as
        # each would be within the hour.
        async with env.consumer(token_refresh_margin_s=7200):
            for event in latest.values():
                await env.publish(event)
            await wait_until(lambda: len(env.results()) == 3, what="3 results")
            await wait_until(env.all_committed, what="offsets committed")
    assert states(env, list(links.values())) == dict.fromkeys(links.values(), "active")
    for activity, calendar in ACTIVITIES.items():
        assert_exact(env, email, links[activity], latest, calendar, activity_id=activity)


async def test_the_grant_is_refused_reconnected_and_revoked_once_for_every_activity(
    env: Env,
) -> None:
    email, _ = env.account("shared", calendars=CALENDARS[:2])
    two = {"act_kayak": "cal-kayak", "act_canoe": "cal-canoe"}
    links: dict[str, str] = {}
    async with link_service(env.settings) as service:
        for activity, calendar in two.items():
            links[activity] = (await connect(service, env, activity, email)).links[0].id
            await service.select(links[activity], calendar)
    latest = {f"bk_{a}": booking_event(f"bk_{a}", 1, activity_id=a) for a in two}
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 2, what="2 results")

        # The person removes the app's access in their Google Account: the next booking of
        # one activity stops the links of both, with Google's own words in the reason.
        env.sandbox.revoke(email)
        since = env.sandbox.calls()["now"]
        latest["bk_k2"] = booking_event("bk_k2", 1, activity_id="act_kayak")
        await env.publish(latest["bk_k2"])
        await wait_until(
            lambda: set(states(env, list(links.values())).values()) == {"reauth_required"},
            what="both links reauth_required",
        )
        reasons = env.query(
            "SELECT state_reason FROM calendar_links WHERE id = ANY(%s)", list(links.values())
        )
        for row in reasons:
            assert "invalid_grant" in row["state_reason"]
            assert "Token has been expired or revoked." in row["state_reason"]
        [grant] = grants(env)
        assert grant["state"] == "refused" and grant["refresh_token_enc"] not in (
            row["state_reason"] for row in reasons
        )
        # Nothing more is asked of Google for the account, in either activity.
        latest["bk_c2"] = booking_event("bk_c2", 1, activity_id="act_canoe")
        await env.publish(latest["bk_c2"])
        await wait_until(env.all_committed, what="offsets committed")
        calls = env.sandbox.calls(since=since, detail=True)["calls"]
        assert sum(1 for c in calls if c["op"] == "token") == 1
        assert not [c for c in calls if c["account"] == email]

        # Reconnecting through one activity repairs the account's links in every activity.
        async with link_service(env.settings) as service:
            again = await connect(service, env, "act_canoe", email)
        assert sorted(again.reconnected) == sorted(links.values())
        assert [link.id for link in again.links] == [links["act_canoe"]]
        assert states(env, list(links.values())) == dict.fromkeys(links.values(), "active")
        for activity, calendar in two.items():
            assert_exact(env, email, links[activity], latest, calendar, activity_id=activity)

    # Disconnecting one link leaves the grant to the other; the last one revokes it.
    since = env.sandbox.calls()["now"]
    first = calsync(env, "links", "disconnect", links["act_kayak"])
    assert first.returncode == 0, first.stderr
    assert "token not revoked at Google (still used by " + links["act_canoe"] in first.stdout
    assert grants(env)[0]["state"] == "valid"
    last = calsync(env, "links", "disconnect", links["act_canoe"], "--remove-events")
    assert last.returncode == 0, last.stderr
    assert "token revoked at Google" in last.stdout and "not revoked" not in last.stdout
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    assert [c["status"] for c in calls if c["op"] == "oauth.revoke"] == [200]
    [grant] = grants(env)
    assert grant["state"] == "revoked" and grant["refresh_token_enc"] is None
    assert env.sandbox.events(email, "cal-canoe") == []
    assert len(env.sandbox.events(email, "cal-kayak")) == 2  # kept on purpose


async def test_a_connection_whose_grant_a_disconnect_revoked_meanwhile_is_refused(
    env: Env,
) -> None:
    email, refresh = env.account("leaving")
    old_link = await env.link(email, refresh)  # the account's only link
    with sandbox_config(env, latency_median_s=3.0, latency_p99_s=None):
        async with link_service(env.settings) as service:
            started = await service.start_connect("act_2")
            redirect = env.sandbox.consent(started.authorization_url, email)
            since = env.sandbox.calls()["now"]
            connecting = asyncio.create_task(
                service.finish_connect(
                    {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
                )
            )
            # Google has exchanged the code (a new refresh token exists); the connection
            # lists the account's calendars before storing it. Meanwhile the old link's
            # disconnect revokes the grant at Google, which voids that new token too.
            await wait_until(
                lambda: [
                    c
                    for c in env.sandbox.calls(since=since, detail=True)["calls"]
                    if c["op"] == "token" and c["status"] == 200
                ],
                what="the code exchanged",
            )
            async with link_service(env.settings) as other:
                done = await other.disconnect(old_link, remove_events=False)
            assert done.token_revoked is True and not connecting.done()
            with pytest.raises(LinkError) as refused:
                await connecting
    assert refused.value.problem == "disconnect_in_progress"
    assert http_status(refused.value) == 409
    assert env.query("SELECT id FROM calendar_links") == [{"id": old_link}]
    # Connecting again works: its grant is alive.
    async with link_service(env.settings) as service:
        again = await connect(service, env, "act_2", email)
        calendars = await service.calendars(again.links[0].id)
    assert [c.id for c in calendars] == [email]
    assert grants(env)[0]["state"] == "valid"
