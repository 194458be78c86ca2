"""The pages' aiohttp handlers: the connect flow a person walks in a browser, and each
activity's links page. Rendering is in `render` and `views`; tokens in `security`.

    GET  /oauth/callback (browsers)          the calendar choice (or progress, on reconnect)
    POST /connect/{link}/calendar            the choice (single-use form token) -> progress
    GET  /backfills/{ids}?t=                 a backfill's progress (HTML, or JSON to poll)
    GET  /login  POST /login  POST /logout   the admin's session cookie (sessions recorded in
                                             PostgreSQL; sign-ins limited per client address)
    GET  /                                   activities with links
    GET  /activities/{activity}/links        link health, and what can be done
    POST /activities/{activity}/connect      -> Google's consent
    POST /activities/{activity}/links/{link}/reconnect    -> Google's consent
    GET  /activities/{activity}/links/{link}/calendar     choose (another) calendar
    GET  /activities/{activity}/links/{link}/disconnect   confirm, keep or remove events
    POST /activities/{activity}/links/{link}/disconnect
    GET  /static/{name}                      the stylesheet and the progress script
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import structlog
from aiohttp import web

from consumer.adapters.postgres.page_store import PageStore
from consumer.domain.errors import LinkError, RefusalKind, TokenRefused
from consumer.domain.records import Backfill, CalendarInfo
from consumer.entrypoints.problems import http_status
from consumer.entrypoints.web import views
from consumer.entrypoints.web.render import render, static_files
from consumer.entrypoints.web.security import (
    BINDING_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    PageSigner,
    Session,
    new_secret,
    same,
)
from consumer.service.answers import LinkSummary
from consumer.service.links import LinkService
from consumer.service.progress import quota_ceiling
from consumer.settings import Settings, trusted_networks

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SESSION = web.RequestKey("calsync_session", Session)
# A refused choice shows the choice again (with why) rather than an error page.
_CHOOSE_AGAIN = frozenset(
    {"calendar_not_writable", "calendar_unknown", "calendar_taken", "disconnect_in_progress"}
)
_LOGIN_FAILURE_DELAY_S = 0.5


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


def _is_loopback(host: str | None) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Pages:
    settings: Settings
    service: LinkService
    store: PageStore  # sessions and failed sign-ins, shared by every `serve` process
    signer: PageSigner
    root: str  # the public URL's path ("" at the root of its host)
    origin: str  # the public URL's origin: forms are accepted from it
    secure_cookies: bool
    csp: str
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def build(cls, settings: Settings, service: LinkService, store: PageStore) -> Pages:
        assert settings.admin_token is not None
        public = settings.oauth_redirect_uri.removesuffix("/oauth/callback")
        parts = urlsplit(public)
        secure = parts.scheme == "https" or _is_loopback(parts.hostname)
        if not secure:
            log.warning(
                "pages_need_https",
                public_url=public,
                hint="browsers drop Secure cookies over plain http: set "
                "CALSYNC_HTTP_PUBLIC_URL to an https address",
            )
        # Forms may lead to Google's consent page (a redirect after the POST).
        csp = (
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
            "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
            f"form-action 'self' {_origin(settings.google_auth_url)}"
        )
        signer = PageSigner(
            service.svc.cipher.keys,
            settings.admin_token.get_secret_value(),
            form_ttl_s=settings.oauth_state_ttl_s,
            view_ttl_s=settings.http_session_ttl_s,
            session_ttl_s=settings.http_session_ttl_s,
        )
        return cls(
            settings,
            service,
            store,
            signer,
            parts.path.rstrip("/"),
            _origin(public),
            secure,
            csp,
            tuple(trusted_networks(settings.http_trusted_proxies)),
        )

    # --- addresses ---------------------------------------------------------------------

    def links_url(self, activity_id: str) -> str:
        return f"{self.root}/activities/{quote(activity_id, safe='')}/links"

    def progress_url(self, backfill_ids: list[int]) -> str:
        ids = ",".join(str(i) for i in sorted(backfill_ids))
        return f"{self.root}/backfills/{ids}?t={self.signer.view_token(backfill_ids)}"

    # --- answers -----------------------------------------------------------------------

    def page(
        self, request: web.Request, template: str, title: str, status: int = 200, **context: Any
    ) -> web.Response:
        session = self.session(request)
        text = render(
            template, root=self.root, title=title, csrf=session.csrf if session else None, **context
        )
        response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
        self.protect(response)
        return response

    def protect(self, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = self.csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Tokens ride in some URLs: never tell another origin where a click came from.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"

    def set_cookie(
        self,
        response: web.StreamResponse,
        name: str,
        value: str,
        max_age: float,
        path: str,
        same_site: str = "Lax",
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(max_age),
            path=path or "/",
            secure=self.secure_cookies,
            httponly=True,
            samesite=same_site,
        )

    def error_page(
        self,
        request: web.Request,
        status: int,
        problem: str,
        detail: str,
        activity_id: str | None = None,
    ) -> web.StreamResponse:
        """What happened, what to do, and a link to start again: never a stack trace."""
        return_url = self.settings.http_return_url
        if return_url and request.path == "/oauth/callback":
            # Embedded: the host's dashboard shows the outcome, errors included.
            params = [("error", problem), ("error_description", detail)]
            if activity_id:
                params.append(("activity_id", activity_id))
            return self.redirect(views.with_query(return_url, params))
        trouble = views.trouble(problem, status)
        if (
            trouble.action == "Try again"
            and request.method == "GET"
            and request.path != "/oauth/callback"
        ):
            again = str(request.rel_url)
        elif activity_id:
            again = self.links_url(activity_id)
        else:
            again = self.root + "/"
        return self.page(
            request,
            "error.html",
            trouble.title,
            status=status,
            detail=views.for_people(detail, problem),
            code=status,
            advice=trouble.advice,
            action=trouble.action,
            again_url=again,
            problem=problem,
        )

    def redirect(self, location: str) -> web.Response:
        response = web.Response(status=303, headers={"Location": location})
        self.protect(response)
        return response

    # --- sessions and forms ------------------------------------------------------------

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, as `session_middleware` found it."""
        return request.get(_SESSION)

    async def live_session(self, request: web.Request) -> Session | None:
        """The session the cookie names, if it is signed by us and still recorded: signing
        out deletes its record, so a copy of the cookie is refused from then on, by every
        `calsync serve` process."""
        signed = self.signer.read_session(request.cookies.get(SESSION_COOKIE))
        if signed is None or not await self.store.session_alive(signed.id):
            return None
        return signed

    def client_address(self, request: web.Request) -> str:
        """Who is signing in, for the limit on failed sign-ins: the connection's peer; or,
        when the peer is a trusted proxy (CALSYNC_HTTP_TRUSTED_PROXIES), the address that
        X-Forwarded-For names last before the trusted proxies (what the first of them saw;
        anything further left was written by the client, and could be anything)."""
        peer = request.remote or "unknown"
        if not self._trusted(peer):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            if not _is_address(hop):
                return peer  # a proxy that writes no address: its clients share its limit
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in self.trusted_proxies)

    def require_session(self, request: web.Request) -> Session:
        session = self.session(request)
        if session is None:
            target = views.with_query(f"{self.root}/login", [("next", request.path_qs)])
            raise web.HTTPSeeOther(target)
        return session

    def check_origin(self, request: web.Request) -> None:
        """Refuse a form sent from another site or origin: by Sec-Fetch-Site, which
        browsers add, and by the Origin header, where there is one."""
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        allowed = {self.origin, f"{request.scheme}://{request.host}".lower()}
        foreign = (fetch_site is not None and fetch_site not in ("same-origin", "none")) or (
            origin is not None
            and origin.lower() not in allowed
            and not (origin == "null" and fetch_site == "same-origin")
        )
        if foreign:
            log.warning(
                "page_form_refused",
                path=request.path,
                origin=origin,
                sec_fetch_site=request.headers.get("Sec-Fetch-Site"),
            )
            raise LinkError(
                "the form was sent from another site", RefusalKind.FORBIDDEN, "csrf_refused"
            )

    async def session_form(self, request: web.Request) -> tuple[Session, Any]:
        """A form of the signed-in admin: same origin, and the session's CSRF secret."""
        session = self.require_session(request)
        self.check_origin(request)
        form = await request.post()
        if not same(str(form.get("csrf") or ""), session.csrf):
            raise LinkError(
                "the form's CSRF token does not match this session: reload the page and try again",
                RefusalKind.FORBIDDEN,
                "csrf_refused",
            )
        return session, form

    # --- the calendar choice -----------------------------------------------------------

    def choice_page(
        self,
        request: web.Request,
        link: LinkSummary,
        calendars: list[CalendarInfo],
        taken: dict[str, tuple[str, str]],
        error: str | None = None,
        status: int = 200,
        will_write: int | None = None,
    ) -> web.Response:
        """`will_write`: how many bookings the backfill writes once a calendar is saved."""
        binding = request.cookies.get(BINDING_COOKIE) or new_secret()
        response = self.page(
            request,
            "choose.html",
            "Choose a calendar",
            status=status,
            link_id=link.id,
            account=link.account_email,
            activity_id=link.activity_id,
            error=error,
            token=self.signer.form_token(link.id, binding),
            calendars=views.calendar_choices(calendars, taken, link.account_email),
            valid_for=views.duration(self.settings.oauth_state_ttl_s),
            links_url=self.links_url(link.activity_id) if self.session(request) else None,
            will_write_text=views.will_write_text(will_write, self.settings.backfill_past_days),
        )
        self.set_cookie(
            response,
            BINDING_COOKIE,
            binding,
            self.settings.oauth_state_ttl_s,
            path=f"{self.root}/connect/",
        )
        return response


PAGES_KEY = web.AppKey("pages", Pages)


def _pages(request: web.Request) -> Pages:
    return request.app[PAGES_KEY]


def _refuse(exc: TokenRefused, activity_id: str | None) -> NoReturn:
    kind = RefusalKind.FORBIDDEN if exc.problem == "form_not_this_browser" else RefusalKind.INVALID
    raise LinkError(str(exc), kind, exc.problem, activity_id)


# --- Google's redirect, the choice, progress ----------------------------------------------


async def after_consent(request: web.Request) -> web.StreamResponse:
    """Google's redirect, for a browser: the calendar choice, or (a reconnection) the
    catch-up's progress; or, embedded, back to the host's dashboard."""
    pages = _pages(request)
    connected = await pages.service.connected(dict(request.query), wait=False)
    return_url = pages.settings.http_return_url
    if return_url:
        # `state` is the link's state: `pending` (a calendar is to be chosen, e.g. through
        # PUT /links/{id}/calendar) or `active` (reconnected; its catch-up runs).
        params = [("link_id", link.id) for link in connected.links]
        params += [
            ("state", connected.links[0].state),
            ("account", connected.account_email),
            ("activity_id", connected.activity_id),
        ]
        return pages.redirect(views.with_query(return_url, params))
    link = connected.links[0]
    if link.state != "pending":  # reconnected: the catch-ups (every activity's) run
        return pages.redirect(pages.progress_url(list(connected.backfill_ids.values())))
    taken = await pages.service.taken(connected.activity_id, link.id)
    will_write = await pages.service.will_write(link.id)
    return pages.choice_page(request, link, connected.calendars, taken, will_write=will_write)


async def choose(request: web.Request) -> web.StreamResponse:
    """The calendar choice, sent: a form token used once, then the backfill's progress."""
    pages = _pages(request)
    link_id = request.match_info["link"]
    known = await pages.service.find(link_id)  # gone once merged into an older link
    activity_id = known.activity_id if known else None
    pages.check_origin(request)
    form = await request.post()
    try:
        token = pages.signer.read_form_token(
            str(form.get("token") or ""), link_id, request.cookies.get(BINDING_COOKIE)
        )
    except TokenRefused as exc:
        _refuse(exc, activity_id)
    if not await pages.service.use_form_token(token.jti, link_id, token.expires_at):
        raise LinkError(
            "this calendar choice was already sent once",
            RefusalKind.CONFLICT,
            "form_replayed",
            activity_id,
        )
    if known is None:
        raise LinkError(f"no link {link_id!r}", RefusalKind.NOT_FOUND, "link_not_found")
    calendar_id = str(form.get("calendar_id") or "")
    try:
        if not calendar_id:
            raise LinkError(
                "choose one of the calendars", RefusalKind.UNPROCESSABLE, "calendar_missing"
            )
        chosen = await pages.service.choose(link_id, calendar_id, wait=False)
    except LinkError as exc:
        if exc.problem not in _CHOOSE_AGAIN | {"calendar_missing"}:
            raise
        choice = await pages.service.choice(link_id)
        return pages.choice_page(
            request,
            choice.link,
            choice.calendars,
            choice.taken,
            error=_sentence(views.for_people(str(exc), exc.problem)),
            status=http_status(exc),
            will_write=choice.will_write,
        )
    log.info("page_calendar_chosen", link_id=chosen.link.id, calendar_id=calendar_id)
    return pages.redirect(pages.progress_url([chosen.backfill_id]))


async def backfill_progress(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    try:
        ids = [int(part) for part in request.match_info["ids"].split(",")][:20]
    except ValueError:
        raise web.HTTPNotFound() from None
    if not pages.signer.can_view(request.query.get("t"), ids):
        pages.require_session(request)
    backfills = await pages.service.backfills(ids)
    if not backfills:
        raise web.HTTPNotFound()
    items = [await _progress_item(pages, backfill) for backfill in backfills]
    running = any(item["view"]["status"] == "running" for item in items)
    if not views.prefers_html(request.headers.get("Accept")):
        answer = web.json_response(
            {
                "finished": not running,
                "backfills": [
                    {
                        **item["view"],
                        "text": item["text"],
                        "eta_text": item["eta_text"],
                        "will_write_text": item["will_write_text"],
                    }
                    for item in items
                ],
            }
        )
        pages.protect(answer)
        return answer
    first = items[0]
    reconnect = first["view"]["trigger"] == "reconnect"
    heading = (
        ("Reconnected: catching up" if reconnect else "Calendar chosen: catching up")
        if running
        else ("Reconnected" if reconnect else "Calendar chosen")
    )
    return pages.page(
        request,
        "progress.html",
        heading,
        heading=heading,
        items=items,
        running=running,
        links_url=(
            pages.links_url(str(first["activity_id"]))
            if pages.session(request) or not running
            else None
        ),
    )


async def _progress_item(pages: Pages, backfill: Backfill) -> dict[str, Any]:
    """One backfill as the progress page (and its JSON) shows it."""
    view = views.progress(backfill, quota_ceiling(pages.service.settings))
    link = await pages.service.get(backfill.link_id)
    remaining = view["remaining_s"]
    return {
        "view": view,
        "text": views.progress_text(view),
        "account": link.account_email,
        "activity_id": link.activity_id,
        "calendar_label": backfill.calendar_name or backfill.calendar_id,
        "will_write_text": views.backfill_will_write_text(backfill),
        "eta_text": (
            f"{views.utc(datetime.fromisoformat(view['estimated_end']))} (in "
            f"{views.duration(remaining)})"
            if view["estimated_end"] and remaining is not None
            else None
        ),
    }


# --- signing in ---------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    target = views.local_path(request.query.get("next"), pages.root + "/")
    if pages.session(request) is not None:
        return pages.redirect(target)
    return _login_form(request, None, 200, target)


def _login_form(request: web.Request, error: str | None, status: int, target: str) -> web.Response:
    pages = _pages(request)
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
    pages = _pages(request)
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
        await asyncio.sleep(_LOGIN_FAILURE_DELAY_S)  # slows guessing down
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
    pages = _pages(request)
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
    pages = _pages(request)
    session, _ = await pages.session_form(request)
    await pages.store.end_session(session.id)
    log.info("page_logout")
    response = pages.redirect(f"{pages.root}/login")
    response.del_cookie(SESSION_COOKIE, path=pages.root + "/")
    return response


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The live session of a request that carries a session cookie (the pages, and Google's
    redirect in a browser), looked up once (PostgreSQL) and kept on it for the handlers and
    the templates (`Pages.session`). The JSON API takes only the bearer, checked before."""
    if request.cookies.get(SESSION_COOKIE):
        session = await request.app[PAGES_KEY].live_session(request)
        if session is not None:
            request[_SESSION] = session
    return await handler(request)


# --- the admin's pages ----------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    pages.require_session(request)
    return pages.page(
        request, "index.html", "Activities", activities=await pages.service.activities()
    )


async def open_activity(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    pages.require_session(request)
    activity_id = request.query.get("id", "").strip()
    return pages.redirect(pages.links_url(activity_id) if activity_id else pages.root + "/")


async def links_page(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
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
    pages = _pages(request)
    await pages.session_form(request)
    started = await pages.service.start_connect(request.match_info["activity"])
    return pages.redirect(started.authorization_url)


async def reconnect(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    await pages.session_form(request)
    link = await _link_of(pages, request)
    started = await pages.service.start_connect(link.activity_id, login_hint=link.account_email)
    return pages.redirect(started.authorization_url)


async def choose_again(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
    pages.require_session(request)
    await _link_of(pages, request)
    choice = await pages.service.choice(request.match_info["link"])
    return pages.choice_page(
        request, choice.link, choice.calendars, choice.taken, will_write=choice.will_write
    )


async def disconnect_page(request: web.Request) -> web.StreamResponse:
    pages = _pages(request)
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
    pages = _pages(request)
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


async def static(request: web.Request) -> web.StreamResponse:
    found = static_files().get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    body, media_type = found
    return web.Response(
        body=body,
        content_type=media_type,
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def routes() -> list[web.RouteDef]:
    return [
        web.post("/connect/{link}/calendar", choose),
        web.get("/backfills/{ids}", backfill_progress),
        web.get("/login", login_page),
        web.post("/login", login),
        web.post("/logout", logout),
        web.get("/", index),
        web.get("/activities", open_activity),
        web.get("/activities/{activity}/links", links_page),
        web.post("/activities/{activity}/connect", connect),
        web.post("/activities/{activity}/links/{link}/reconnect", reconnect),
        web.get("/activities/{activity}/links/{link}/calendar", choose_again),
        web.get("/activities/{activity}/links/{link}/disconnect", disconnect_page),
        web.post("/activities/{activity}/links/{link}/disconnect", disconnect),
        web.get("/static/{name}", static),
    ]


# Paths the admin bearer does not guard: they carry their own protection (a session cookie,
# a signed token) or need none.
OPEN_PREFIXES = ("/connect/", "/backfills/", "/login", "/logout", "/activities", "/static/")


def is_page(path: str) -> bool:
    return path == "/" or path.startswith(OPEN_PREFIXES)
