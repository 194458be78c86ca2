"""The whole link lifecycle over `calsync serve`, the real broker, database and sandbox:
connect through Google's consent, choose calendars, backfill, revoke, reconnect, disconnect.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from consumer.adapters.google.oauth import SCOPES
from tests.plugins.environment import ADMIN_TOKEN, Env, wait_until
from tests.plugins.events import booking_event

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Api:
    """The HTTP API as an admin tool uses it; keeps every answer for the no-token check."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session
        self.answers: list[str] = []

    async def call(
        self, method: str, path: str, json: Any = None, auth: bool = True, expect: int = 200
    ) -> Any:
        url = path if path.startswith("http") else self.base + path
        async with self.session.request(
            method, url, json=json, headers=AUTH if auth else {}
        ) as answer:
            text = await answer.text()
            self.answers.append(text)
            assert answer.status == expect, f"{method} {path}: {answer.status} {text}"
            if answer.status >= 400:
                assert answer.content_type == "application/problem+json"
            return await answer.json(content_type=None)

    async def connect(self, env: Env, activity: str, email: str) -> dict[str, Any]:
        """Start a connection, consent as `email` at Google, follow the redirect back."""
        started = await self.call("POST", "/links/connect", {"activity_id": activity}, expect=201)
        redirect = env.sandbox.consent(started["authorization_url"], email)
        return dict(await self.call("GET", redirect, auth=False))


def google_calls_for(env: Env, email: str, since: float) -> int:
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    return sum(1 for c in calls if c["account"] == email)


async def test_the_whole_link_story(env: Env, tmp_path: Path) -> None:
    owner, _ = env.account(
        "owner",
        calendars=[
            {"id": "owner-primary", "summary": "Owner", "primary": True},
            {"id": "owner-bookings", "summary": "Bookings"},
            {"id": "owner-holidays", "summary": "Holidays", "access_role": "reader"},
        ],
    )
    manager, _ = env.account("manager")
    activity = "act_1"
    consumer_log = tmp_path / "consumer.log"
    consumer = env.start_process(consumer_log)
    try:
        async with env.serve(tmp_path / "serve.log") as base, aiohttp.ClientSession() as http:
            api = Api(base, http)
            await story(env, api, owner, manager, activity)
            answers = api.answers
    finally:
        consumer.terminate()
        consumer.wait(30)
    # No token in clear: not in any HTTP answer, log line, or database column.
    secrets = set()
    for row in env.query("SELECT id FROM calendar_links"):
        stored = env.stored_tokens(row["id"])
        secrets |= {v for k, v in stored.items() if k != "token_expires_at" and v}
    secrets |= {t for t in env.sandbox.known_tokens() if t}
    assert len(secrets) >= 4
    logs = consumer_log.read_text() + (tmp_path / "serve.log").read_text()
    database = "\n".join(
        str(r)
        for table in (
            "calendar_links",
            "google_grants",
            "link_bookings",
            "sync_results",
            "bookings",
            "oauth_states",
        )
        for r in env.query(f"SELECT * FROM {table}")
    )
    for secret in secrets:
        assert secret not in logs
        assert secret not in database
        assert all(secret not in answer for answer in answers)


async def story(env: Env, api: Api, owner: str, manager: str, activity: str) -> None:
    # --- bad requests change nothing --------------------------------------------------------
    await api.call("POST", "/links/connect", {"activity_id": activity}, auth=False, expect=401)
    await api.call("GET", "/links", auth=False, expect=401)
    await api.call("POST", "/links/connect", {}, expect=400)

    # --- the consent URL asks for what it should -------------------------------------------
    started = await api.call("POST", "/links/connect", {"activity_id": activity}, expect=201)
    query = parse_qs(urlsplit(started["authorization_url"]).query)
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert set(query["scope"][0].split()) == set(SCOPES)
    assert query["redirect_uri"] == [f"{api.base}/oauth/callback"]

    # --- connect two accounts: both pending, calendars listed ---------------------------
    first = await api.connect(env, activity, owner)
    assert first["account_email"] == owner
    owner_link = first["links"][0]["id"]
    assert first["links"][0]["state"] == "pending"
    assert first["calendars"] == [
        {"id": "owner-primary", "name": "Owner", "primary": True, "writable": True},
        {"id": "owner-bookings", "name": "Bookings", "primary": False, "writable": True},
        {"id": "owner-holidays", "name": "Holidays", "primary": False, "writable": False},
    ]
    started = await api.call("POST", "/links/connect", {"activity_id": activity}, expect=201)
    redirect = env.sandbox.consent(started["authorization_url"], manager)
    manager_link = (await api.call("GET", redirect, auth=False))["links"][0]["id"]
    before = await api.call("GET", "/links")
    assert {x["id"]: x["state"] for x in before["links"]} == {
        owner_link: "pending",
        manager_link: "pending",
    }

    # A replayed redirect, a forged state, a code Google refuses, a denied consent, a
    # non-writable or unknown calendar, an unknown link: refused, and nothing changes.
    replayed = await api.call("GET", redirect, auth=False, expect=400)
    assert replayed["type"] == "urn:calsync:problem:state_replayed"
    forged = await api.call("GET", redirect.replace("state=", "state=x"), auth=False, expect=400)
    assert forged["type"] == "urn:calsync:problem:state_invalid"
    started = await api.call("POST", "/links/connect", {"activity_id": activity}, expect=201)
    redirect = env.sandbox.consent(started["authorization_url"], owner)
    refused = await api.call("GET", redirect.replace("code=", "code=x"), auth=False, expect=400)
    assert refused["type"] == "urn:calsync:problem:code_refused"
    started = await api.call("POST", "/links/connect", {"activity_id": activity}, expect=201)
    redirect = env.sandbox.consent(started["authorization_url"], owner, deny=True)
    denied = await api.call("GET", redirect, auth=False, expect=400)
    assert denied["type"] == "urn:calsync:problem:consent_denied"
    await api.call(
        "PUT", f"/links/{owner_link}/calendar", {"calendar_id": "owner-holidays"}, expect=422
    )
    await api.call("PUT", f"/links/{owner_link}/calendar", {"calendar_id": "nope"}, expect=422)
    await api.call("PUT", "/links/lnk_nope/calendar", {"calendar_id": "x"}, expect=404)
    await api.call("POST", "/links/lnk_nope/disconnect", {}, expect=404)
    assert await api.call("GET", "/links") == before

    # --- select one, leave one pending: events only on the selected calendar ------------
    chosen = await api.call(
        "PUT", f"/links/{owner_link}/calendar", {"calendar_id": "owner-bookings"}
    )
    assert chosen["link"]["state"] == "active" and chosen["backfill"] == {"bookings": 0}
    since = time.time()
    for booking in ("bk_1", "bk_2"):
        await env.publish(booking_event(booking, 1, activity_id=activity))
    await wait_until(lambda: len(env.events(owner, "owner-bookings")) == 2, what="2 events")
    await env.publish(
        booking_event("bk_1", 2, "booking.updated", activity_id=activity, customer_name="Jane Doe")
    )
    await wait_until(
        lambda: any(e["summary"].endswith("Jane Doe") for e in env.events(owner, "owner-bookings")),
        what="update",
    )
    assert google_calls_for(env, manager, since) == 0  # pending: nothing at all

    # --- select the pending one: the activity's bookings are backfilled, once -----------
    selected = await api.call("PUT", f"/links/{manager_link}/calendar", {"calendar_id": manager})
    assert selected["backfill"] == {"bookings": 2, "applied": 2}
    manager_events = env.events(manager)
    assert sorted(e["summary"] for e in manager_events) == [
        "Kayak Tour - Jane Doe",
        "Kayak Tour - Jane Smith",
    ]
    await env.publish(booking_event("bk_3", 1, activity_id=activity))
    await wait_until(lambda: len(env.events(manager)) == 3, what="bk_3 on the manager's")
    await env.publish(booking_event("bk_2", 1, activity_id=activity))  # a replay
    await wait_until(env.all_committed, what="offsets committed")
    assert len(env.events(manager)) == 3 and len(env.events(owner, "owner-bookings")) == 3

    # --- revoke the manager at Google: reauth_required, the owner keeps syncing ---------
    env.sandbox.revoke(manager)
    await env.publish(booking_event("bk_4", 1, activity_id=activity))
    await wait_until(lambda: len(env.events(owner, "owner-bookings")) == 4, what="bk_4")
    link = await wait_until(
        lambda: next(
            (
                x
                for x in env.query("SELECT * FROM calendar_links WHERE id = %s", manager_link)
                if x["state"] == "reauth_required"
            ),
            None,
        ),
        what="reauth_required",
    )
    assert "invalid_grant" in link["state_reason"]
    listed = {x["id"]: x for x in (await api.call("GET", "/links"))["links"]}
    assert listed[manager_link]["state"] == "reauth_required"
    assert listed[manager_link]["state_reason"] and listed[manager_link]["state_changed_at"]
    since = time.time()
    await env.publish(booking_event("bk_5", 1, activity_id=activity))
    await env.publish(
        booking_event("bk_3", 2, "booking.canceled", activity_id=activity, status="canceled")
    )
    await wait_until(lambda: len(env.events(owner, "owner-bookings")) == 4, what="bk_5, -bk_3")
    await wait_until(env.all_committed, what="offsets committed")
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    assert not [c for c in calls if c["account"] == manager or c["op"] == "token"]

    # --- reconnect the manager: it catches up, without duplicates -----------------------
    again = await api.connect(env, activity, manager)
    assert again["reconnected"] == [manager_link]
    assert again["links"][0]["state"] == "active"
    assert again["backfill"][manager_link] == {"bookings": 3, "applied": 3}  # +4 +5 -3
    assert sorted(
        e["extendedProperties"]["private"]["booking_id"] for e in env.events(manager)
    ) == ["bk_1", "bk_2", "bk_4", "bk_5"]

    # --- disconnect the owner, keeping events; reconnect: no duplicates -----------------
    done = await api.call("POST", f"/links/{owner_link}/disconnect", {})
    assert done["events_removed"] == 0 and done["token_revoked"] is True
    assert done["link"]["state"] == "disconnected"
    assert len(env.events(owner, "owner-bookings")) == 4
    await env.publish(booking_event("bk_6", 1, activity_id=activity))
    await wait_until(lambda: len(env.events(manager)) == 5, what="bk_6 on the manager's")
    assert len(env.events(owner, "owner-bookings")) == 4
    audit = env.query("SELECT count(*) AS n FROM sync_results WHERE link_id = %s", owner_link)
    assert audit[0]["n"] > 0
    await api.call("POST", f"/links/{owner_link}/disconnect", {}, expect=409)

    fresh = await api.connect(env, activity, owner)
    assert fresh["reconnected"] == []
    revived = await api.call(
        "PUT", f"/links/{fresh['links'][0]['id']}/calendar", {"calendar_id": "owner-bookings"}
    )
    assert revived["link"]["id"] == owner_link and revived["merged_from"]
    owner_events = env.events(owner, "owner-bookings")
    assert sorted(e["extendedProperties"]["private"]["booking_id"] for e in owner_events) == [
        "bk_1",
        "bk_2",
        "bk_4",
        "bk_5",
        "bk_6",
    ]

    # --- disconnect the manager, removing its events -----------------------------------
    removed = await api.call("POST", f"/links/{manager_link}/disconnect", {"remove_events": True})
    assert removed["events_removed"] == 5 and removed["token_revoked"] is True
    assert env.events(manager) == []
    await env.publish(booking_event("bk_7", 1, activity_id=activity))
    await wait_until(lambda: len(env.events(owner, "owner-bookings")) == 6, what="bk_7")
    await wait_until(env.all_committed, what="offsets committed")
    assert env.events(manager) == []
