"""The pages' shared machinery: `Pages` (settings, the link service, the signer, page
rendering, cookies, error pages, origin checks), the session middleware, and the helpers
the handlers share (consumer.entrypoints.web.flow, .admin; routes in .pages)."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import structlog
from aiohttp import web

from consumer.adapters.postgres.page_store import PageStore
from consumer.domain.errors import LinkError, RefusalKind, TokenRefused
from consumer.domain.records import CalendarInfo
from consumer.entrypoints.web import views
from consumer.entrypoints.web.render import render
from consumer.entrypoints.web.security import (
    BINDING_COOKIE,
    SESSION_COOKIE,
    PageSigner,
    Session,
    new_secret,
    same,
)
from consumer.service.answers import LinkSummary
from consumer.service.links import LinkService
from consumer.settings import Settings, trusted_networks

log = structlog.get_logger(__name__)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


SESSION_KEY = web.RequestKey("calsync_session", Session)


# A refused choice shows the choice again (with why) rather than an error page.
CHOOSE_AGAIN = frozenset(
    {"calendar_not_writable", "calendar_unknown", "calendar_taken", "disconnect_in_progress"}
)


LOGIN_FAILURE_DELAY_S = 0.5


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
        return request.get(SESSION_KEY)

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


def pages_of(request: web.Request) -> Pages:
    return request.app[PAGES_KEY]


def refuse(exc: TokenRefused, activity_id: str | None) -> NoReturn:
    kind = RefusalKind.FORBIDDEN if exc.problem == "form_not_this_browser" else RefusalKind.INVALID
    raise LinkError(str(exc), kind, exc.problem, activity_id)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The live session of a request that carries a session cookie (the pages, and Google's
    redirect in a browser), looked up once (PostgreSQL) and kept on it for the handlers and
    the templates (`Pages.session`). The JSON API takes only the bearer, checked before."""
    if request.cookies.get(SESSION_COOKIE):
        session = await request.app[PAGES_KEY].live_session(request)
        if session is not None:
            request[SESSION_KEY] = session
    return await handler(request)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
