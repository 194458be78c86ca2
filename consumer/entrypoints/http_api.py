"""`calsync serve`: the links HTTP API (aiohttp), on CALSYNC_HTTP_HOST:CALSYNC_HTTP_PORT.

Every route needs `Authorization: Bearer <CALSYNC_ADMIN_TOKEN>`, except Google's redirect
(`GET /oauth/callback`, protected by its signed single-use `state`), `GET /healthz`, and the
pages a person uses in a browser (consumer/entrypoints/web: protected by signed tokens and a session
cookie). Errors are RFC 9457 problem documents (`application/problem+json`), except for
browsers (Accept prefers text/html), which get a page saying what happened and how to start
again. Tokens are never part of an answer.

    POST /links/connect                {"activity_id"}      -> 201 consent URL
    GET  /oauth/callback?code&state                         -> the new link and its calendars
                                                               (browsers: the choice page)
    GET  /links                                             -> every link
    GET  /links/{id}                                        -> one link
    GET  /links/{id}/calendars                              -> name, primary, writable,
                                                               taken
    PUT  /links/{id}/calendar          {"calendar_id"}      -> active, with its backfill
    POST /links/{id}/disconnect        {"remove_events"}    -> what was done
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from consumer.bootstrap import page_store
from consumer.domain.errors import LinkError, RefusalKind
from consumer.entrypoints.problems import http_status
from consumer.entrypoints.web import flow, pages, site
from consumer.entrypoints.web.views import prefers_html
from consumer.service.answers import Answer
from consumer.service.links import LinkService
from consumer.settings import Settings

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN_ROUTES = frozenset({"/oauth/callback", "/healthz"})
SERVICE_KEY = web.AppKey("links", LinkService)


def problem(status: int, name: str, detail: str, **extra: Any) -> web.Response:
    body = {
        "type": f"urn:calsync:problem:{name}",
        "title": name.replace("_", " "),
        "status": status,
        "detail": detail,
        **extra,
    }
    headers = {"WWW-Authenticate": 'Bearer realm="calsync"'} if status == 401 else None
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


def _middlewares(admin_token: str) -> list[Any]:
    expected = f"Bearer {admin_token}".encode()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        unrouted = request.match_info.http_exception is not None  # answered 404 or 405
        if request.path not in _OPEN_ROUTES and not pages.is_page(request.path) and not unrouted:
            # Header bytes that are not UTF-8 reach us as surrogate escapes: compare bytes,
            # so that any malformed header is simply a wrong credential (401), never a 500.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, expected):
                detail = (
                    "a valid admin bearer token is required (Authorization: Bearer "
                    "<CALSYNC_ADMIN_TOKEN>)"
                )
                if prefers_html(request.headers.get("Accept")):
                    page = request.app[site.PAGES_KEY].error_page(
                        request, 401, "unauthorized", detail
                    )
                    page.headers["WWW-Authenticate"] = 'Bearer realm="calsync"'
                    return page
                return problem(401, "unauthorized", detail)
        return await handler(request)

    @web.middleware
    async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        def refusal(
            status: int, name: str, detail: str, activity_id: str | None = None
        ) -> web.StreamResponse:
            if prefers_html(request.headers.get("Accept")):
                try:
                    return request.app[site.PAGES_KEY].error_page(
                        request, status, name, detail, activity_id
                    )
                except Exception:
                    log.exception("http_error_page_failed", path=request.path)
            return problem(status, name, detail)

        try:
            return await handler(request)
        except LinkError as exc:
            status = http_status(exc)
            log.info("http_refused", path=request.path, status=status, problem=exc.problem)
            return refusal(status, exc.problem, str(exc), exc.activity_id)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return refusal(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except Exception:
            log.exception("http_error", path=request.path)
            return refusal(500, "internal_error", "the request failed; see the service's log")

    return [problems, authenticate, site.session_middleware]


def _json(answer: Answer, status: int = 200) -> web.Response:
    """A service's answer as the API's JSON body: its dump, keys in the model's order."""
    return web.json_response(answer.model_dump(mode="json"), status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        raise LinkError(
            "the request body is not JSON", RefusalKind.INVALID, "invalid_body"
        ) from None
    if not isinstance(body, dict):
        raise LinkError(
            "the request body must be a JSON object", RefusalKind.INVALID, "invalid_body"
        )
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise LinkError(
            f"{key!r} is required (a non-empty string)", RefusalKind.INVALID, "invalid_body"
        )
    return value


async def connect(request: web.Request) -> web.Response:
    body = await _json_body(request)
    started = await request.app[SERVICE_KEY].start_connect(_string(body, "activity_id"))
    return _json(started, status=201)


async def oauth_callback(request: web.Request) -> web.StreamResponse:
    """Google's redirect. Browsers get the calendar choice page (or, embedded, go back to
    the host's dashboard); API clients keep the JSON answer."""
    if prefers_html(request.headers.get("Accept")):
        return await flow.after_consent(request)
    return _json(await request.app[SERVICE_KEY].finish_connect(dict(request.query)))


async def list_links(request: web.Request) -> web.Response:
    found = await request.app[SERVICE_KEY].list()
    return web.json_response({"links": [link.model_dump(mode="json") for link in found]})


async def get_link(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE_KEY].get(request.match_info["id"]))


async def calendars(request: web.Request) -> web.Response:
    found = await request.app[SERVICE_KEY].calendars(request.match_info["id"])
    return web.json_response({"calendars": [c.model_dump(mode="json") for c in found]})


async def select_calendar(request: web.Request) -> web.Response:
    body = await _json_body(request)
    chosen = await request.app[SERVICE_KEY].select(
        request.match_info["id"], _string(body, "calendar_id")
    )
    return _json(chosen)


async def disconnect(request: web.Request) -> web.Response:
    body = await _json_body(request)
    remove = body.get("remove_events", False)
    if not isinstance(remove, bool):
        raise LinkError(
            "'remove_events' must be true or false", RefusalKind.INVALID, "invalid_body"
        )
    done = await request.app[SERVICE_KEY].disconnect(request.match_info["id"], remove)
    return _json(done)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# Served over https: browsers are told to come back only over https (two years, the
# subdomains too), so no later visit starts in plain http where a cookie or a token could
# be read or a page changed on the way.
HSTS = "max-age=63072000; includeSubDomains"


async def _strict_transport(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Strict-Transport-Security"] = HSTS


def build_app(settings: Settings, service: LinkService) -> web.Application:
    assert settings.admin_token is not None
    app = web.Application(middlewares=_middlewares(settings.admin_token.get_secret_value()))
    app[SERVICE_KEY] = service
    app[site.PAGES_KEY] = site.Pages.build(settings, service, page_store(service))
    if (settings.http_public_url or "").strip().lower().startswith("https://"):
        # Every answer, the JSON API's, redirects and errors too (not over plain http:
        # browsers ignore it there, and it would say nothing true).
        app.on_response_prepare.append(_strict_transport)
    app.add_routes(pages.routes())
    app.add_routes(
        [
            web.post("/links/connect", connect),
            web.get("/oauth/callback", oauth_callback),
            web.get("/links", list_links),
            web.get("/links/{id}", get_link),
            web.get("/links/{id}/calendars", calendars),
            web.put("/links/{id}/calendar", select_calendar),
            web.post("/links/{id}/disconnect", disconnect),
            web.get("/healthz", healthz),
        ]
    )
    return app


async def serve(
    settings: Settings,
    service: LinkService,
    stop: asyncio.Event,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop` is set."""
    runner = web.AppRunner(build_app(settings, service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    port = runner.addresses[0][1] if runner.addresses else settings.http_port
    log.info(
        "http_listening",
        host=settings.http_host,
        port=port,
        redirect_uri=settings.oauth_redirect_uri,
    )
    if ready is not None:
        ready(port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
