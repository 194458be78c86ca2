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

from aiohttp import web

from consumer.entrypoints.web import admin, flow
from consumer.entrypoints.web.render import static_files


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


def routes() -> list[web.RouteDef]:
    return [
        web.post("/connect/{link}/calendar", flow.choose),
        web.get("/backfills/{ids}", flow.backfill_progress),
        web.get("/login", admin.login_page),
        web.post("/login", admin.login),
        web.post("/logout", admin.logout),
        web.get("/", admin.index),
        web.get("/activities", admin.open_activity),
        web.get("/activities/{activity}/links", admin.links_page),
        web.post("/activities/{activity}/connect", admin.connect),
        web.post("/activities/{activity}/links/{link}/reconnect", admin.reconnect),
        web.get("/activities/{activity}/links/{link}/calendar", admin.choose_again),
        web.get("/activities/{activity}/links/{link}/disconnect", admin.disconnect_page),
        web.post("/activities/{activity}/links/{link}/disconnect", admin.disconnect),
        web.get("/static/{name}", static),
    ]


# Paths the admin bearer does not guard: they carry their own protection (a session cookie,
# a signed token) or need none.
OPEN_PREFIXES = ("/connect/", "/backfills/", "/login", "/logout", "/activities", "/static/")


def is_page(path: str) -> bool:
    return path == "/" or path.startswith(OPEN_PREFIXES)
