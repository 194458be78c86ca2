"""The admin's pages: signing in and out (sessions recorded in PostgreSQL; sign-ins limited
per client address), the activities with links, each activity's links page and what can
be done there (connect, reconnect, choose another calendar, disconnect)."""

from __future__ import annotations

import asyncio
import hmac
import math
from datetime import UTC, datetime

import structlog
from aiohttp import web

from consumer.domain.errors import LinkError, RefusalKind
from consumer.entrypoints.web import views
from consumer.entrypoints.web.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    new_secret,
    same,
)
from consumer.entrypoints.web.site import (
    LOGIN_FAILURE_DELAY_S,
    Pages,
    pages_of,
)
from consumer.service.answers import LinkSummary

log = structlog.get_logger(__name__)


async def login_page(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    target = views.local_path(request.query.get("next"), pages.root + "/")
    if pages.session(request) is not None:
        return pages.redirect(target)
    return _login_form(request, None, 200, target)


def _login_form(request: web.Request, error: str | None, status: int, target: str) -> web.Response:
    pages = pages_of(request)
    login_csrf = request.cookies.get(LOGIN_COOKIE) or new_secret()
    response = pages.page(
        request,
        "login.html",
        "Sign in",
        status=status,
        error=error,
        login_csrf=login_csrf,
        next=target,
    )
    pages.set_cookie(
        response, LOGIN_COOKIE, login_csrf, 3600, path=f"{pages.root}/login", same_site="Strict"
    )
    return response


async def login(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.check_origin(request)
    form = await request.post()
    target = views.local_path(str(form.get("next") or ""), pages.root + "/")
    client = pages.client_address(request)
    blocked_s = await pages.store.sign_in_blocked(client)
    if blocked_s is not None:  # whatever it sends, the right token too
        log.warning("page_login_blocked", remote=client, retry_after_s=math.ceil(blocked_s))
        return _sign_in_blocked(request, blocked_s)
    if not same(str(form.get("csrf") or ""), request.cookies.get(LOGIN_COOKIE)):
        return _login_form(request, "The sign-in form expired: sign in again.", 400, target)
    assert pages.settings.admin_token is not None
    expected = pages.settings.admin_token.get_secret_value().encode()
    if not hmac.compare_digest(str(form.get("token") or "").encode(), expected):
        failures, now_blocked_s = await pages.store.sign_in_failed(
            client, pages.settings.http_login_max_failures, pages.settings.http_login_window_s
        )
        log.warning("page_login_refused", remote=client, failures=failures)
        await asyncio.sleep(LOGIN_FAILURE_DELAY_S)  # slows guessing down
        error = "That is not the admin token."
        if now_blocked_s:
            error += (
                f" After {failures} failed sign-ins, this address may not sign in again "
                f"for {views.duration(now_blocked_s)}."
            )
        return _login_form(request, error, 401, target)
    cookie, session = pages.signer.new_session()
    await pages.store.start_session(session.id, pages.settings.http_session_ttl_s)
    await pages.store.sign_in_succeeded(client)
    response = pages.redirect(target)
    pages.set_cookie(
        response, SESSION_COOKIE, cookie, pages.settings.http_session_ttl_s, path=pages.root + "/"
    )
    response.del_cookie(LOGIN_COOKIE, path=f"{pages.root}/login")
    log.info("page_login", remote=client)
    return response


def _sign_in_blocked(request: web.Request, blocked_s: float) -> web.Response:
    """429, a page that says why and until when, and Retry-After."""
    pages = pages_of(request)
    settings = pages.settings
    until = datetime.now(UTC).timestamp() + blocked_s
    response = pages.page(
        request,
        "error.html",
        "Too many failed sign-ins",
        status=429,
        detail=(
            f"{settings.http_login_max_failures} sign-ins with a wrong admin token came from "
            f"this address within {views.duration(settings.http_login_window_s)}: sign-in "
            f"is refused from it until {views.utc(datetime.fromtimestamp(until, UTC))} (in "
            f"{views.duration(blocked_s)}), even with the right token."
        ),
        code=429,
        advice="Wait until then, and sign in with the admin token (CALSYNC_ADMIN_TOKEN). "
        "If nobody here mistyped it, someone may be guessing: tell whoever runs this service.",
        action="Sign in",
        again_url=f"{pages.root}/login",
        problem="too_many_sign_ins",
    )
    response.headers["Retry-After"] = str(max(1, math.ceil(blocked_s)))
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Sign out: the session's record is deleted, so its cookie is refused from now on
    wherever it is presented, not only dropped by this browser."""
    pages = pages_of(request)
    session, _ = await pages.session_form(request)
    await pages.store.end_session(session.id)
    log.info("page_logout")
    response = pages.redirect(f"{pages.root}/login")
    response.del_cookie(SESSION_COOKIE, path=pages.root + "/")
    return response


async def index(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.require_session(request)
    return pages.page(
        request, "index.html", "Activities", activities=await pages.service.activities()
    )


async def open_activity(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.require_session(request)
    activity_id = request.query.get("id", "").strip()
    return pages.redirect(pages.links_url(activity_id) if activity_id else pages.root + "/")


async def links_page(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.require_session(request)
    activity_id = request.match_info["activity"]
    now = datetime.now(UTC)
    cards = [views.link_card(h, now) for h in await pages.service.health(activity_id)]
    notices = []
    gone = request.query.get("disconnected")
    for card in cards:
        if card["id"] == gone and card["state"] == "disconnected":
            what = str(card["reason"] or "").removeprefix("disconnected").lstrip("; ")
            notices.append(
                {
                    "kind": "ok",
                    "text": f"{card['account']} is disconnected" + (f": {what}." if what else "."),
                }
            )
    return pages.page(
        request,
        "links.html",
        f"Activity {activity_id}",
        activity_id=activity_id,
        links=cards,
        notices=notices,
    )


async def _link_of(pages: Pages, request: web.Request) -> LinkSummary:
    link = await pages.service.get(request.match_info["link"])
    if link.activity_id != request.match_info["activity"]:
        raise LinkError(
            f"no link {request.match_info['link']!r} in this activity",
            RefusalKind.NOT_FOUND,
            "link_not_found",
            request.match_info["activity"],
        )
    return link


async def connect(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    await pages.session_form(request)
    started = await pages.service.start_connect(request.match_info["activity"])
    return pages.redirect(started.authorization_url)


async def reconnect(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    await pages.session_form(request)
    link = await _link_of(pages, request)
    started = await pages.service.start_connect(link.activity_id, login_hint=link.account_email)
    return pages.redirect(started.authorization_url)


async def choose_again(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.require_session(request)
    await _link_of(pages, request)
    choice = await pages.service.choice(request.match_info["link"])
    return pages.choice_page(
        request, choice.link, choice.calendars, choice.taken, will_write=choice.will_write
    )


async def disconnect_page(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    pages.require_session(request)
    link = await _link_of(pages, request)
    activity_id = link.activity_id
    health = next(
        (h for h in await pages.service.health(activity_id) if h.link.id == link.id), None
    )
    if health is None or link.state == "disconnected":
        raise LinkError(
            f"link {link.id} is already disconnected",
            RefusalKind.CONFLICT,
            "link_disconnected",
            activity_id,
        )
    card = views.link_card(health, datetime.now(UTC))
    return pages.page(
        request,
        "disconnect.html",
        f"Disconnect {link.account_email}",
        link=card,
        activity_id=activity_id,
        action=request.path,
        links_url=pages.links_url(activity_id),
    )


async def disconnect(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
    _, form = await pages.session_form(request)
    link = await _link_of(pages, request)
    events = form.get("events")
    if events not in ("keep", "remove"):
        raise LinkError(
            "choose whether to keep or remove the events",
            RefusalKind.INVALID,
            "invalid_body",
            link.activity_id,
        )
    try:
        await pages.service.disconnect(link.id, remove_events=events == "remove")
    except LinkError as exc:
        exc.activity_id = link.activity_id
        raise
    return pages.redirect(
        views.with_query(pages.links_url(link.activity_id), [("disconnected", link.id)])
    )
