"""The pages without a browser: content negotiation, the single-use calendar choice and its
CSRF defences, error pages, sign-in and its cookie, the links page, the embedding redirect;
and their pure parts (views, tokens), table-driven. `calsync serve` runs in this process on
the real database and sandbox; the HTTP client here behaves like a browser (asks for HTML,
keeps cookies by hand, follows no redirect)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import Morsel
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import psycopg

from calsync_dev.stack import free_port
from consumer.bootstrap import link_service
from consumer.entrypoints.http_api import serve
from consumer.entrypoints.web import views
from tests.plugins.environment import ADMIN_TOKEN, Env, wait_until
from tests.plugins.events import booking_event

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CALENDARS = [
    {"id": "cal-primary", "summary": "Owner", "primary": True},
    {"id": "cal-bookings", "summary": "Bookings"},
    {"id": "cal-holidays", "summary": "Holidays", "access_role": "reader"},
]


# --- over HTTP ---------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: Any
    text: str
    cookies: dict[str, Morsel[str]]

    @property
    def location(self) -> str:
        return str(self.headers.get("Location", ""))

    def hidden(self, name: str) -> str:
        found = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        assert found, f"no hidden {name!r} in {self.text[:2000]}"
        return found.group(1)


class Browser:
    """HTTP as a browser does it: asks for HTML, keeps cookies, follows nothing by itself."""

    def __init__(self, base: str, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.http = http
        self.cookies: dict[str, str] = {}

    async def go(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        accept: str = BROWSER_ACCEPT,
        cookies: bool = True,
        **headers: str,
    ) -> Answer:
        url = path if path.startswith("http") else self.base + path
        sent = {"Accept": accept, **{k.replace("_", "-"): v for k, v in headers.items()}}
        if cookies and self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        async with self.http.request(
            method, url, data=form, headers=sent, allow_redirects=False
        ) as answer:
            text = await answer.text()
            for name, morsel in answer.cookies.items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
            return Answer(answer.status, answer.headers, text, dict(answer.cookies))

    async def connect(self, env: Env, activity: str, account: str, deny: bool = False) -> str:
        """Start a connection through the API, consent at Google: Google's redirect URL."""
        async with self.http.post(
            self.base + "/links/connect", json={"activity_id": activity}, headers=BEARER
        ) as answer:
            assert answer.status == 201, await answer.text()
            started = await answer.json()
        return env.sandbox.consent(started["authorization_url"], account, deny=deny)

    async def sign_in(self) -> None:
        await self.go("GET", "/login")
        signed = await self.go(
            "POST",
            "/login",
            {"token": ADMIN_TOKEN, "next": "/", "csrf": self.cookies["calsync_login"]},
        )
        assert signed.status == 303, signed.text


@asynccontextmanager
async def site(env: Env, **overrides: Any) -> AsyncIterator[Browser]:
    """`calsync serve` in this process, and a browser-like client of it."""
    port = free_port()
    settings = env.settings.model_copy(update={"http_port": port, **overrides})
    stop, ready = asyncio.Event(), asyncio.Event()
    async with link_service(settings) as service:
        task = asyncio.create_task(serve(settings, service, stop, lambda _: ready.set()))
        await ready.wait()
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                yield Browser(f"http://127.0.0.1:{port}", http)
        finally:
            stop.set()
            await task


def add_bookings(env: Env, activity: str, count: int) -> None:
    """Bookings the consumer has seen (what a backfill reads)."""
    for n in range(count):
        event = booking_event(f"bk_{activity}_{n}", 1, activity_id=activity)
        env.query(
            "INSERT INTO bookings (booking_id, activity_id, version, event_type, event)"
            " VALUES (%s, %s, 1, 'booking.created', %s) RETURNING booking_id",
            event["booking"]["id"],
            activity,
            json.dumps(event),
        )


def execute(env: Env, sql: str, *params: Any) -> None:
    with psycopg.connect(env.database_url) as conn:
        conn.execute(sql.encode() if not params else sql, params or None)


def assert_page(answer: Answer, status: int, *texts: str) -> None:
    assert answer.status == status, (answer.status, answer.text[:3000])
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in answer.text and "urn:calsync:problem" not in answer.text
    for text in texts:
        assert text in answer.text, (text, answer.text[:3000])


async def test_the_calendar_choice_after_consent(env: Env) -> None:
    owner, refresh = env.account("owner", calendars=CALENDARS)
    activity = "act_choice"
    # The account's Bookings calendar already has a live link in the activity.
    existing = await env.link(owner, refresh, calendar_id="cal-bookings", activity_id=activity)
    add_bookings(env, activity, 2)
    async with site(env) as browser:
        # An API client keeps today's JSON answer.
        redirect = await browser.connect(env, activity, owner)
        api = await browser.go("GET", redirect, accept="application/json")
        assert api.status == 200 and api.headers["Content-Type"].startswith("application/json")
        assert set(json.loads(api.text)) == {
            "activity_id",
            "account_email",
            "links",
            "calendars",
            "reconnected",
            "backfill",
        }

        # A browser gets the choice: names, primary, read-only with why, already synced.
        redirect = await browser.connect(env, activity, owner)
        page = await browser.go("GET", redirect)
        assert_page(
            page,
            200,
            "Choose a calendar",
            owner,
            "Owner",
            "Primary",
            "Bookings",
            "Holidays",
            "Read-only: your access to this calendar is “reader”",
            f"Already synced by this activity&#39;s link {existing}",
            "2 bookings will be written to the calendar you choose",
        )
        assert page.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert re.search(
            r'<input type="radio" name="calendar_id" id="cal-3" '
            r'value="cal-holidays"\s+disabled',
            page.text,
        )
        binding = page.cookies["calsync_choice"]
        assert binding["httponly"] and binding["secure"] and binding["samesite"] == "Lax"
        link_id = re.search(r'action="/connect/(lnk_[0-9a-f]+)/calendar"', page.text)
        assert link_id
        action = f"/connect/{link_id.group(1)}/calendar"
        first_token = page.hidden("token")

        # A read-only calendar is refused, and the choice is shown again (a fresh form).
        refused = await browser.go(
            "POST", action, {"token": first_token, "calendar_id": "cal-holidays"}
        )
        assert_page(refused, 422, 'role="alert"', "is not writable")
        token = refused.hidden("token")
        assert token != first_token
        # The first form was used: sending it again is refused.
        replay = await browser.go(
            "POST", action, {"token": first_token, "calendar_id": "cal-primary"}
        )
        assert_page(replay, 409, "This form was already sent", "/activities/act_choice/links")
        # Another site cannot send it (checked before the form is used up) ...
        for headers in (
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
        ):
            forged = await browser.go(
                "POST", action, {"token": token, "calendar_id": "cal-primary"}, **headers
            )
            assert_page(forged, 403, "This request came from another site")
        # ... nor another browser (no binding cookie), nor a token made up or of another link.
        other_browser = await browser.go(
            "POST", action, {"token": token, "calendar_id": "cal-primary"}, cookies=False
        )
        assert_page(other_browser, 403, "This form was opened in another browser")
        made_up = await browser.go(
            "POST", action, {"token": token[:-4] + "abcd", "calendar_id": "cal-primary"}
        )
        assert_page(made_up, 400, "This form cannot be used")
        elsewhere = await browser.go(
            "POST", f"/connect/{existing}/calendar", {"token": token, "calendar_id": "cal-primary"}
        )
        assert_page(elsewhere, 400, "This form cannot be used")
        assert (
            env.query("SELECT state FROM calendar_links WHERE id = %s", link_id.group(1))[0][
                "state"
            ]
            == "pending"
        )
        # A GET is not a choice.
        assert (await browser.go("GET", action)).status == 405

        # The choice: the backfill runs in the background; its progress page.
        chosen = await browser.go(
            "POST", action, {"token": token, "calendar_id": "cal-primary"}, Origin=browser.base
        )
        assert chosen.status == 303 and "/backfills/" in chosen.location
        progress_url = chosen.location

        async def finished() -> dict[str, Any] | None:
            answer = await browser.go("GET", progress_url, accept="application/json")
            body: dict[str, Any] = json.loads(answer.text)
            return body if body["finished"] else None

        body = await wait_until(finished, what="the backfill")
        done = body["backfills"][0]
        assert (done["status"], done["total"], done["done"]) == ("finished", 2, 2)
        assert done["counts"] == {"bookings": 2, "applied": 2}
        assert done["will_write_text"].startswith("2 bookings will be written (those ending")
        assert done["calendar_name"] == "Owner" and done["rate_per_s"] > 0
        assert len(env.events(owner, "cal-primary")) == 2
        shown = await browser.go("GET", progress_url)
        assert_page(shown, 200, "Calendar chosen", "Done: 2 bookings", "(2 applied)")
        # The progress URL needs its token (or a session).
        bare = await browser.go("GET", progress_url.split("?")[0])
        assert bare.status == 303 and bare.location.startswith("/login?next=")
        tampered = await browser.go("GET", progress_url[:-3] + "xyz")
        assert tampered.status == 303
        row = env.query("SELECT total, done, finished_at, error, trigger FROM backfills")[0]
        assert (row["total"], row["done"], row["error"], row["trigger"]) == (2, 2, None, "select")
        assert row["finished_at"] is not None
        # Sent again once it worked: still refused.
        again = await browser.go("POST", action, {"token": token, "calendar_id": "cal-primary"})
        assert_page(again, 409, "This form was already sent")


async def test_errors_are_pages_for_browsers_and_problems_for_api_clients(env: Env) -> None:
    owner, _ = env.account("owner", calendars=CALENDARS)
    activity = "act_errors"
    async with site(env, oauth_state_ttl_s=1.0) as browser:
        denied = await browser.connect(env, activity, owner, deny=True)
        page = await browser.go("GET", denied)
        assert_page(
            page,
            400,
            "Access was not granted",
            "choose Allow",
            f'href="/activities/{activity}/links"',
        )
        again = await browser.go("GET", denied, accept="*/*")
        assert again.status == 400
        assert again.headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(again.text)["type"] == "urn:calsync:problem:state_replayed"
        assert_page(
            await browser.go("GET", denied), 400, "This connection request was already used"
        )
        redirect = await browser.connect(env, activity, owner)
        refused = await browser.go("GET", redirect.replace("code=", "code=x"))
        assert_page(refused, 400, "Google refused the sign-in")
        assert_page(
            await browser.go("GET", "/oauth/callback"),
            400,
            "This address is incomplete",
            'href="/"',
        )

        # Expired: a state not used in time, and a choice not sent in time.
        late_state = await browser.connect(env, activity, owner)
        choice = await browser.go("GET", await browser.connect(env, activity, owner))
        assert choice.status == 200
        action = re.search(r'action="(/connect/lnk_[0-9a-f]+/calendar)"', choice.text)
        assert action
        await asyncio.sleep(2.2)
        assert_page(
            await browser.go("GET", late_state),
            400,
            "This connection request expired",
            "Start again",
        )
        late_form = await browser.go(
            "POST", action.group(1), {"token": choice.hidden("token"), "calendar_id": "cal-primary"}
        )
        assert_page(late_form, 400, "This calendar choice expired")
        problem = await browser.go("GET", late_state, accept="application/json")
        assert problem.headers["Content-Type"].startswith("application/problem+json")
        assert_page(await browser.go("GET", "/no/such/page"), 404, "There is no such page")


async def test_sign_in_and_the_links_page(env: Env) -> None:
    owner, refresh = env.account("owner", calendars=CALENDARS)
    activity = "act_links"
    add_bookings(env, activity, 3)
    link_id = await env.link(owner, refresh, calendar_id=None, activity_id=activity)
    async with link_service(env.settings) as service:  # as the CLI does it: it waits
        chosen = await service.select(link_id, "cal-bookings")
    assert chosen.backfill == {"bookings": 3, "applied": 3}
    links_path = f"/activities/{activity}/links"
    async with site(env) as browser:
        # Not signed in: the page sends to the sign-in, which comes back.
        guarded = await browser.go("GET", links_path)
        assert guarded.status == 303
        assert guarded.location == "/login?next=/activities/act_links/links"
        form = await browser.go("GET", guarded.location)
        assert_page(
            form,
            200,
            'lang="en"',
            '<label for="admin-token">',
            'type="password"',
            'name="viewport"',
        )
        csrf = form.hidden("csrf")
        assert form.hidden("next") == links_path
        wrong = await browser.go(
            "POST", "/login", {"token": "nope", "csrf": csrf, "next": links_path}
        )
        assert_page(wrong, 401, "That is not the admin token.")
        stale = await browser.go(
            "POST", "/login", {"token": ADMIN_TOKEN, "csrf": "x", "next": links_path}
        )
        assert_page(stale, 400, "The sign-in form expired")
        foreign = await browser.go(
            "POST",
            "/login",
            {"token": ADMIN_TOKEN, "csrf": csrf, "next": links_path},
            Origin="https://evil.example",
        )
        assert foreign.status == 403 and "calsync_session" not in browser.cookies
        signed = await browser.go(
            "POST", "/login", {"token": ADMIN_TOKEN, "csrf": csrf, "next": links_path}
        )
        assert signed.status == 303 and signed.location == links_path
        cookie = signed.cookies["calsync_session"]
        assert cookie["httponly"] and cookie["secure"] and cookie["samesite"] == "Lax"
        assert cookie["path"] == "/" and cookie["max-age"] == "28800"

        # The links page: account, calendar, state, events synced, last result, backlog.
        page = await browser.go("GET", links_path)
        assert_page(
            page,
            200,
            owner,
            'Bookings <span class="meta">(cal-bookings)</span>',
            'data-state="active"',
            '<dd class="events-synced">3</dd>',
            "create → applied",
            "backfill",
            "Done: 3 bookings",
            '<dd class="repair-backlog">none</dd>',
            "Disconnect…",
            "Connect Google Calendar",
        )
        # The repair backlog: pairs the repair loop still owes the calendar.
        execute(
            env,
            "INSERT INTO repairs (link_id, booking_id, booking_version, reason,"
            " attempts, due_at) VALUES (%s, 'b1', 1, 'retries_exhausted', 1, now()),"
            " (%s, 'b2', 1, 'account_paused', 0, now() + interval '1 hour')",
            link_id,
            link_id,
        )
        page = await browser.go("GET", links_path)
        assert "2 bookings waiting" in page.text
        execute(
            env,
            "UPDATE calendar_links SET state = 'reauth_required', state_reason ="
            " 'token refresh refused: invalid_grant' WHERE id = %s",
            link_id,
        )
        page = await browser.go("GET", links_path)
        assert_page(page, 200, "Reconnect needed", "invalid_grant", ">Reconnect</button>")
        csrf = page.hidden("csrf")

        # The JSON API is the bearer's: the session cookie does not open it.
        assert (await browser.go("GET", "/links", accept="application/json")).status == 401
        async with browser.http.get(browser.base + "/links", headers=BEARER) as api:
            assert api.status == 200

        # Forms of the session need its CSRF token and the same origin.
        reconnect = f"/activities/{activity}/links/{link_id}/reconnect"
        assert_page(await browser.go("POST", reconnect, {}), 403, "another site")
        assert (
            await browser.go("POST", reconnect, {"csrf": csrf}, Origin="https://evil.example")
        ).status == 403
        to_google = await browser.go("POST", reconnect, {"csrf": csrf}, Origin=browser.base)
        assert to_google.status == 303
        consent = parse_qs(urlsplit(to_google.location).query)
        assert to_google.location.startswith(env.sandbox.auth_url)
        assert consent["login_hint"] == [owner] and consent["state"]
        connect = await browser.go("POST", f"/activities/{activity}/connect", {"csrf": csrf})
        assert connect.status == 303 and "login_hint" not in connect.location

        # Another activity's link is not reachable through this one.
        assert_page(
            await browser.go("GET", f"/activities/other/links/{link_id}/disconnect"),
            404,
            "There is no such link",
        )

        # Disconnect: a confirmation, keep or remove; then the links page says what was done.
        confirm = await browser.go("GET", f"/activities/{activity}/links/{link_id}/disconnect")
        assert_page(
            confirm,
            200,
            f"Disconnect {owner}?",
            "Keep them on the calendar",
            "Remove them from the calendar",
            "The 3 events this link put",
        )
        done = await browser.go(
            "POST",
            f"/activities/{activity}/links/{link_id}/disconnect",
            {"csrf": csrf, "events": "remove"},
        )
        assert done.status == 303 and done.location == f"{links_path}?disconnected={link_id}"
        assert_page(
            await browser.go("GET", done.location),
            200,
            f"{owner} is disconnected: 3 events removed.",
        )
        assert env.events(owner, "cal-bookings") == []

        # Signing out ends the session; a forged cookie is no session.
        assert (await browser.go("POST", "/logout", {"csrf": csrf})).status == 303
        assert "calsync_session" not in browser.cookies
        assert (await browser.go("GET", links_path)).status == 303
        browser.cookies["calsync_session"] = cookie.value[:-2] + "xx"
        assert (await browser.go("GET", links_path)).status == 303


async def test_the_return_url_sends_the_browser_back_to_the_host(env: Env) -> None:
    owner, _ = env.account("owner", calendars=CALENDARS)
    activity = "act_embedded"
    dashboard = "https://dashboard.example/calsync?tab=calendar"
    async with site(env, http_return_url=dashboard) as browser:
        back = await browser.go("GET", await browser.connect(env, activity, owner))
        assert back.status == 303 and back.location.startswith("https://dashboard.example/")
        query = parse_qs(urlsplit(back.location).query)
        link_id = query["link_id"][0]
        assert query == {
            "tab": ["calendar"],
            "link_id": [link_id],
            "state": ["pending"],
            "account": [owner],
            "activity_id": [activity],
        }
        assert (
            env.query("SELECT state FROM calendar_links WHERE id = %s", link_id)[0]["state"]
            == "pending"
        )
        # The host chooses the calendar through the JSON API.
        async with browser.http.put(
            f"{browser.base}/links/{link_id}/calendar",
            json={"calendar_id": "cal-primary"},
            headers=BEARER,
        ) as answer:
            assert answer.status == 200
        # A reconnection comes back active; a refusal comes back as an error.
        execute(env, "UPDATE calendar_links SET state = 'reauth_required' WHERE id = %s", link_id)
        back = await browser.go("GET", await browser.connect(env, activity, owner))
        query = parse_qs(urlsplit(back.location).query)
        assert (query["link_id"], query["state"]) == ([link_id], ["active"])
        denied = await browser.go("GET", await browser.connect(env, activity, owner, deny=True))
        query = parse_qs(urlsplit(denied.location).query)
        assert denied.status == 303 and query["error"] == ["consent_denied"]
        assert query["activity_id"] == [activity]
        # API clients still get JSON.
        api = await browser.go(
            "GET", await browser.connect(env, activity, owner), accept="application/json"
        )
        assert api.status == 200 and json.loads(api.text)["account_email"] == owner


async def test_a_background_backfill_stopped_by_shutdown_says_so(env: Env) -> None:
    owner, refresh = env.account("owner", calendars=CALENDARS)
    activity = "act_shutdown"
    add_bookings(env, activity, 6)
    link_id = await env.link(owner, refresh, calendar_id=None, activity_id=activity)
    # One Google call a second for this account: the backfill outlives the shutdown grace.
    settings = env.settings.model_copy(
        update={"quota_per_account_per_min": 60, "quota_use_share": 1.0, "shutdown_grace_s": 0.5}
    )
    async with link_service(settings) as service:
        chosen = await service.choose(link_id, "cal-bookings", wait=False)
        assert chosen.backfill is None and chosen.link.state == "active"
        await wait_until(
            lambda: env.query("SELECT total FROM backfills")[0]["total"] == 6,
            what="the backfill counting its bookings",
        )
    row = env.query("SELECT * FROM backfills WHERE id = %s", chosen.backfill_id)[0]
    assert row["error"] == "interrupted: the service stopped" and row["finished_at"]
    assert row["done"] < 6
    async with link_service(env.settings) as service:
        view = views.progress((await service.backfills([chosen.backfill_id]))[0])
    assert view["status"] == "failed"
    assert views.progress_text(view).endswith("interrupted: the service stopped")
    async with link_service(env.settings) as service:
        health = await service.health(activity)
    card = views.link_card(health[0], datetime.now(UTC))
    assert card["choose"] == "Catch up again" and card["backfill"]["status"] == "failed"


# --- sessions voided on signing out, HSTS, failed sign-ins limited (issue 20, 12-14) -------


async def _wrong_sign_in(browser: Browser, **headers: str) -> Answer:
    await browser.go("GET", "/login", **headers)
    return await browser.go(
        "POST",
        "/login",
        {"token": "not-it", "next": "/", "csrf": browser.cookies["calsync_login"]},
        **headers,
    )


async def _sign_in(browser: Browser, **headers: str) -> Answer:
    await browser.go("GET", "/login", **headers)
    return await browser.go(
        "POST",
        "/login",
        {"token": ADMIN_TOKEN, "next": "/", "csrf": browser.cookies["calsync_login"]},
        **headers,
    )


async def test_signing_out_voids_the_session_in_every_serve_process(env: Env) -> None:
    links_path = "/activities/act_out/links"
    async with site(env) as first, site(env) as second:
        await first.sign_in()
        cookie = first.cookies["calsync_session"]
        # The same cookie presented to another `calsync serve` process (behind one address).
        second.cookies["calsync_session"] = cookie
        assert (await first.go("GET", links_path)).status == 200
        page = await second.go("GET", links_path)
        assert page.status == 200
        csrf = page.hidden("csrf")
        # Another sign-in (another browser) is a session of its own.
        other = Browser(first.base, first.http)
        await other.sign_in()

        signed_out = await second.go("POST", "/logout", {"csrf": csrf})
        assert signed_out.status == 303 and "calsync_session" not in second.cookies
        # A copy of the cookie (another tab, a shared machine, a stolen one) is refused by
        # every process from now on, although its signature is still good for hours.
        for browser in (first, second):
            browser.cookies["calsync_session"] = cookie
            refused = await browser.go("GET", links_path)
            assert refused.status == 303 and refused.location.startswith("/login"), browser
            # ... and so are its forms.
            action = await browser.go("POST", "/activities/act_out/connect", {"csrf": csrf})
            assert action.status == 303 and action.location.startswith("/login")
        assert (await other.go("GET", links_path)).status == 200  # the other session lives
        # Google's redirect in a signed-in browser knows the session too (the way back).
        owner, _ = env.account("owner", calendars=CALENDARS)
        choice = await other.go("GET", await other.connect(env, "act_out", owner))
        assert_page(choice, 200, "Choose a calendar", "Back to the links page", "Sign out")
        choice = await first.go("GET", await first.connect(env, "act_out", owner))
        assert_page(choice, 200, "Choose a calendar")
        assert "Back to the links page" not in choice.text and "Sign out" not in choice.text
    assert len(env.query("SELECT * FROM page_sessions")) == 1
    assert all(
        bytes(row["id_digest"]) != cookie.encode()
        for row in env.query("SELECT id_digest FROM page_sessions")
    )


async def test_https_pages_tell_browsers_to_stay_on_https(env: Env) -> None:
    header = "Strict-Transport-Security"
    async with site(env, http_public_url="https://calsync.example") as browser:
        answers = [
            await browser.go("GET", "/login"),  # a page
            await browser.go("GET", "/activities/act_1/links"),  # a redirect to sign in
            await browser.go("GET", "/static/calsync.css"),  # an asset
            await browser.go("GET", "/links", accept="application/json"),  # the API's 401
            await browser.go("GET", "/healthz", accept="application/json"),
            await browser.go("GET", "/nowhere"),  # a 404 page
        ]
        assert [a.headers.get(header) for a in answers] == [
            "max-age=63072000; includeSubDomains"
        ] * len(answers), [a.status for a in answers]
    async with site(env) as browser:  # plain http: never
        answers = [await browser.go("GET", "/login"), await browser.go("GET", "/healthz")]
        assert [a.headers.get(header) for a in answers] == [None, None]


async def test_failed_sign_ins_are_limited_per_client_address(env: Env) -> None:
    async with site(env, http_login_max_failures=3, http_login_window_s=600) as browser:
        for _ in range(3):
            assert_page(await _wrong_sign_in(browser), 401, "That is not the admin token.")
        # Blocked: even the right token is refused, with a page that says why and until when.
        blocked = await _sign_in(browser)
        assert_page(
            blocked,
            429,
            "Too many failed sign-ins",
            "3 sign-ins with a wrong admin token came from this address within 10 min",
            "even with the right token",
        )
        assert 500 <= int(blocked.headers["Retry-After"]) <= 600
        assert "calsync_session" not in browser.cookies
        # X-Forwarded-For from a client is not believed: no proxy is trusted here.
        spoofed = await _sign_in(browser, X_Forwarded_For="203.0.113.9")
        assert spoofed.status == 429
        assert env.query("SELECT client, failures FROM page_login_failures") == [
            {"client": "127.0.0.1", "failures": 3}
        ]
    # Behind a trusted reverse proxy: each client address counts on its own.
    async with site(env, http_trusted_proxies="127.0.0.1", http_login_max_failures=2) as proxy:
        one = {"X_Forwarded_For": "198.51.100.7"}
        two = {"X_Forwarded_For": "10.9.9.9, 198.51.100.8"}  # what the proxy saw is last
        other = Browser(proxy.base, proxy.http)
        for _ in range(2):
            assert (await _wrong_sign_in(proxy, **one)).status == 401
        assert (await _sign_in(proxy, **one)).status == 429
        assert (await _sign_in(other, **two)).status == 303  # another address signs in
        assert (await _sign_in(proxy, **one)).status == 429  # and that does not free this one
        clients = {r["client"] for r in env.query("SELECT client FROM page_login_failures")}
        assert clients == {"127.0.0.1", "198.51.100.7"}


async def test_a_blocked_address_may_sign_in_once_the_window_passed(env: Env) -> None:
    async with site(env, http_login_max_failures=2, http_login_window_s=2) as browser:
        for _ in range(2):
            assert (await _wrong_sign_in(browser)).status == 401
        assert (await _sign_in(browser)).status == 429
        signed = await wait_until(
            lambda: _signed_in_now(browser), timeout_s=15, what="the block to end"
        )
        assert signed.status == 303 and "calsync_session" in browser.cookies
    # A success forgets the address's failures.
    assert env.query("SELECT * FROM page_login_failures") == []


async def _signed_in_now(browser: Browser) -> Answer | None:
    answer = await _sign_in(browser)
    return answer if answer.status == 303 else None
