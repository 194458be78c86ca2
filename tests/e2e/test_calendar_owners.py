"""One owner per calendar (issue 20, points 1 and 2), on the real broker, database and
sandbox: a calendar shared between two Google accounts has one id for both, so one live
link of an activity may sync it, whatever the account (the CLI, the JSON API, the pages and
the database refuse a second); two activities may share it; and a calendar whose link is
still being disconnected cannot be chosen again until the disconnect has finished, whose
revoke at Google never kills the grant a live link uses. Each story ends with the content
oracle (tests/oracle.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import psycopg
import pytest

from calsync_dev.stack import free_port
from consumer.bootstrap import link_service
from consumer.domain.errors import LinkError
from consumer.entrypoints.http_api import serve
from consumer.entrypoints.problems import http_status
from consumer.service.links import LinkService
from tests.oracle import assert_exact
from tests.plugins.environment import ADMIN_TOKEN, Env, calsync, wait_until
from tests.plugins.events import booking_event

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SHARED = "team-bookings"


def shared_calendar(env: Env) -> tuple[str, str, str, str]:
    """Two accounts, one calendar: the owner's `team-bookings`, shared with the manager as a
    writer (the same id and events in both calendar lists). Returns both accounts and their
    refresh tokens."""
    owner, owner_refresh = env.account(
        "owner",
        calendars=[
            {"id": "owner-primary", "summary": "Owner", "primary": True},
            {"id": SHARED, "summary": "Team bookings"},
        ],
    )
    manager, manager_refresh = env.account("manager")
    env.sandbox.share_calendar(owner, SHARED, manager, "writer")
    return owner, owner_refresh, manager, manager_refresh


@asynccontextmanager
async def api(env: Env) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """`calsync serve` in this process; its base URL and an HTTP client."""
    port = free_port()
    settings = env.settings.model_copy(update={"http_port": port})
    stop, ready = asyncio.Event(), asyncio.Event()
    async with link_service(settings) as service:
        task = asyncio.create_task(serve(settings, service, stop, lambda _: ready.set()))
        await ready.wait()
        try:
            async with aiohttp.ClientSession() as http:
                yield f"http://127.0.0.1:{port}", http
        finally:
            stop.set()
            await task


def one_line_with(result: Any, problem: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def execute(env: Env, sql: str, *params: Any) -> None:
    with psycopg.connect(env.database_url) as conn:
        conn.execute(sql, params)


def events_of(env: Env, email: str, calendar_id: str, link_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in env.sandbox.events(email, calendar_id)
        if e["extendedProperties"]["private"]["link_id"] == link_id
    ]


# --- point 1: one live link per calendar of an activity, whatever the account -------------


async def test_a_calendar_shared_by_two_accounts_takes_one_live_link_of_the_activity(
    env: Env,
) -> None:
    owner, owner_refresh, manager, manager_refresh = shared_calendar(env)
    owner_link = await env.link(owner, owner_refresh, calendar_id=SHARED)
    manager_link = await env.link(manager, manager_refresh, calendar_id=None)  # pending

    # The manager's calendar list shows the shared calendar as taken, its own as free.
    listed = calsync(env, "links", "calendars", manager_link, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {c["id"]: c["taken"] for c in json.loads(listed.stdout)} == {
        manager: False,
        SHARED: True,
    }
    # The CLI refuses it in one line naming the problem; nothing changes.
    both = "SELECT * FROM calendar_links WHERE id IN (%s, %s) ORDER BY id"
    before = env.query(both, owner_link, manager_link)
    one_line_with(calsync(env, "links", "select", manager_link, SHARED), "calendar_taken")
    async with api(env) as (base, http):
        async with http.get(f"{base}/links/{manager_link}/calendars", headers=BEARER) as answer:
            assert answer.status == 200
            body = await answer.json()
            assert {c["id"]: c["taken"] for c in body["calendars"]} == {
                manager: False,
                SHARED: True,
            }
        async with http.put(
            f"{base}/links/{manager_link}/calendar", json={"calendar_id": SHARED}, headers=BEARER
        ) as answer:
            assert answer.status == 409
            assert answer.content_type == "application/problem+json"
            assert (await answer.json())["type"].endswith("calendar_taken")
        # The pages show it taken, and refuse it with the choice shown again.
        async with http.post(
            f"{base}/links/connect", json={"activity_id": "act_1"}, headers=BEARER
        ) as answer:
            started = await answer.json()
        redirect = env.sandbox.consent(started["authorization_url"], manager)
        async with http.get(redirect, headers={"Accept": BROWSER_ACCEPT}) as answer:
            page = await answer.text()
            assert answer.status == 200, page
            assert f"Already synced by this activity&#39;s link {owner_link}" in page
            assert f"(through {owner})" in page
    assert env.query(both, owner_link, manager_link) == before

    # Nor can a link imported from elsewhere take it.
    one_line_with(
        calsync(
            env,
            "links",
            "import",
            "--activity",
            "act_1",
            "--account",
            manager,
            "--refresh-token",
            manager_refresh,
            "--calendar",
            SHARED,
        ),
        "calendar_taken",
    )
    assert env.query(both, owner_link, manager_link) == before

    # The manager's own calendar is free: both sync, each booking once per calendar.
    chosen = calsync(env, "links", "select", manager_link, manager)
    assert chosen.returncode == 0, chosen.stderr
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(3)}
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 6, what="6 results")
        await wait_until(env.all_committed, what="offsets committed")
    assert_exact(env, owner, owner_link, latest, calendar_id=SHARED)
    assert_exact(env, manager, manager_link, latest)


async def test_the_database_lets_one_of_two_racing_selects_win(env: Env) -> None:
    owner, owner_refresh, manager, manager_refresh = shared_calendar(env)
    owner_link = await env.link(owner, owner_refresh, calendar_id=None)
    manager_link = await env.link(manager, manager_refresh, calendar_id=None)
    async with link_service(env.settings) as first, link_service(env.settings) as second:
        outcomes = await asyncio.gather(
            first.select(owner_link, SHARED),
            second.select(manager_link, SHARED),
            return_exceptions=True,
        )
    refused = [o for o in outcomes if isinstance(o, LinkError)]
    assert len(refused) == 1, outcomes
    assert refused[0].problem == "calendar_taken"
    live = env.query(
        "SELECT id FROM calendar_links WHERE calendar_id = %s AND state <> 'disconnected'", SHARED
    )
    assert len(live) == 1
    # Whatever the code above does, the database itself refuses a second live link.
    loser = manager_link if live[0]["id"] == owner_link else owner_link
    take = "UPDATE calendar_links SET calendar_id = %s, state = 'active' WHERE id = %s"
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(env, take, SHARED, loser)
    # A disconnected link does not hold its calendar.
    execute(env, "UPDATE calendar_links SET state = 'disconnected' WHERE id = %s", live[0]["id"])
    execute(env, take, SHARED, loser)


async def test_two_activities_may_share_a_calendar(env: Env) -> None:
    owner, owner_refresh, manager, manager_refresh = shared_calendar(env)
    kayaks = await env.link(owner, owner_refresh, calendar_id=SHARED, activity_id="act_kayak")
    canoes = await env.link(manager, manager_refresh, calendar_id=None, activity_id="act_canoe")
    listed = json.loads(calsync(env, "links", "calendars", canoes, "--json").stdout)
    assert {c["id"]: c["taken"] for c in listed} == {manager: False, SHARED: False}
    assert calsync(env, "links", "select", canoes, SHARED).returncode == 0
    latest = {
        "bk_k": booking_event("bk_k", 1, activity_id="act_kayak"),
        "bk_c": booking_event("bk_c", 1, activity_id="act_canoe", activity_name="Canoe Trip"),
    }
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 2, what="2 results")
        await wait_until(env.all_committed, what="offsets committed")
    # One event per booking on the calendar: each activity's, from its own link.
    events = env.sandbox.events(owner, SHARED)
    assert sorted(e["extendedProperties"]["private"]["booking_id"] for e in events) == [
        "bk_c",
        "bk_k",
    ]
    assert [e["summary"] for e in events_of(env, owner, SHARED, kayaks)] == [
        "Kayak Tour - Jane Smith"
    ]
    assert [e["summary"] for e in events_of(env, manager, SHARED, canoes)] == [
        "Canoe Trip - Jane Smith"
    ]


# --- point 2: no revival while a disconnect is still removing events -------------------------


async def connect(service: LinkService, env: Env, activity: str, email: str) -> str:
    """The OAuth flow as a person does it: consent at Google, the redirect. A new link's id."""
    started = await service.start_connect(activity)
    redirect = env.sandbox.consent(started.authorization_url, email)
    query = {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
    connected = await service.finish_connect(query)
    return connected.links[0].id


async def test_a_calendar_being_disconnected_cannot_be_chosen_until_the_disconnect_ends(
    env: Env,
) -> None:
    email, refresh = env.account("owner", calendars=[{"id": "cal-a", "summary": "A"}])
    link_id = await env.link(email, refresh, calendar_id="cal-a")
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(30)}
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 30, timeout_s=60, what="30 results")
        await wait_until(env.all_committed, what="offsets committed")
    assert len(env.sandbox.events(email, "cal-a")) == 30

    # Removing 30 events at 150 calls a minute takes about 12 s.
    slow = env.settings.model_copy(update={"quota_per_account_per_min": 150})
    async with link_service(slow) as disconnecting, link_service(env.settings) as meanwhile:
        removal = asyncio.create_task(disconnecting.disconnect(link_id, remove_events=True))
        await wait_until(
            lambda: len(env.sandbox.events(email, "cal-a")) < 28, what="removal under way"
        )
        # The account connected again to the activity, and its calendar chosen: refused
        # while the removal goes on, by the service, the CLI and the API alike.
        fresh = await connect(meanwhile, env, "act_1", email)
        with pytest.raises(LinkError) as refused:
            await meanwhile.select(fresh, "cal-a")
        assert refused.value.problem == "disconnect_in_progress"
        assert http_status(refused.value) == 409
        one_line_with(
            await asyncio.to_thread(calsync, env, "links", "select", fresh, "cal-a"),
            "disconnect_in_progress",
        )
        async with api(env) as (base, http):
            async with http.put(
                f"{base}/links/{fresh}/calendar", json={"calendar_id": "cal-a"}, headers=BEARER
            ) as answer:
                assert answer.status == 409
                assert (await answer.json())["type"].endswith("disconnect_in_progress")
        assert not removal.done(), "the removal ended too soon to show the refusal"
        done = await removal
    # The new link of the account is live: the grant stays valid at Google.
    assert done.token_revoked is False and done.token_still_used_by == [fresh]
    assert env.sandbox.events(email, "cal-a") == []
    assert env.query("SELECT state FROM calendar_links WHERE id = %s", fresh) == [
        {"state": "pending"}
    ]

    # Once it has finished, the calendar can be chosen again: every booking comes back once.
    chosen = calsync(env, "links", "select", fresh, "cal-a")
    assert chosen.returncode == 0, chosen.stderr
    assert "backfilled: 30 bookings, 30 applied" in chosen.stdout, chosen.stdout
    owner = env.query("SELECT id FROM calendar_links WHERE state = 'active'")[0]["id"]
    assert_exact(env, email, owner, latest, calendar_id="cal-a")
    # And it keeps syncing with the account's grant.
    latest["bk_0"] = booking_event("bk_0", 2, "booking.updated", customer_name="Later")
    latest["bk_new"] = booking_event("bk_new", 1)
    async with env.consumer():
        await env.publish(latest["bk_0"])
        await env.publish(latest["bk_new"])
        await wait_until(
            lambda: len(env.sandbox.events(email, "cal-a")) == 31, what="the new booking"
        )
        await wait_until(env.all_committed, what="offsets committed")
    assert_exact(env, email, owner, latest, calendar_id="cal-a")
    assert env.query("SELECT state FROM calendar_links WHERE id = %s", owner) == [
        {"state": "active"}
    ]


async def test_the_other_account_of_a_shared_calendar_takes_over_its_kept_events(
    env: Env,
) -> None:
    owner, owner_refresh, manager, manager_refresh = shared_calendar(env)
    owner_link = await env.link(owner, owner_refresh, calendar_id=SHARED)
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(2)}
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.results()) == 2, what="2 results")
    # The owner leaves, keeping the events; the manager, who shares the calendar, takes over.
    assert calsync(env, "links", "disconnect", owner_link).returncode == 0
    manager_link = await env.link(manager, manager_refresh, calendar_id=None)
    chosen = calsync(env, "links", "select", manager_link, SHARED)
    assert chosen.returncode == 0, chosen.stderr
    assert f"folded into earlier link {owner_link}" in chosen.stdout
    [row] = env.query("SELECT state, account_email FROM calendar_links WHERE id = %s", owner_link)
    assert row == {"state": "active", "account_email": manager}
    latest["bk_0"] = booking_event("bk_0", 2, "booking.updated", customer_name="Moved On")
    latest["bk_2"] = booking_event("bk_2", 1)
    async with env.consumer():
        await env.publish(latest["bk_0"])
        await env.publish(latest["bk_2"])
        await wait_until(lambda: len(env.results()) >= 4, what="2 more results")
        await wait_until(env.all_committed, what="offsets committed")
    # The kept events were taken over, not doubled; written with the manager's grant.
    assert_exact(env, manager, owner_link, latest, calendar_id=SHARED)
