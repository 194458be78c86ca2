"""The connect flow a person walks in a browser: Google's redirect, the calendar choice, a
backfill's progress (HTML, or JSON to poll)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from consumer.domain.errors import LinkError, RefusalKind, TokenRefused
from consumer.domain.records import Backfill
from consumer.entrypoints.problems import http_status
from consumer.entrypoints.web import views
from consumer.entrypoints.web.security import (
    BINDING_COOKIE,
)
from consumer.entrypoints.web.site import (
    CHOOSE_AGAIN,
    Pages,
    pages_of,
    refuse,
    sentence,
)
from consumer.service.progress import quota_ceiling

log = structlog.get_logger(__name__)


async def after_consent(request: web.Request) -> web.StreamResponse:
    """Google's redirect, for a browser: the calendar choice, or (a reconnection) the
    catch-up's progress; or, embedded, back to the host's dashboard."""
    pages = pages_of(request)
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
    pages = pages_of(request)
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
        refuse(exc, activity_id)
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
        if exc.problem not in CHOOSE_AGAIN | {"calendar_missing"}:
            raise
        choice = await pages.service.choice(link_id)
        return pages.choice_page(
            request,
            choice.link,
            choice.calendars,
            choice.taken,
            error=sentence(views.for_people(str(exc), exc.problem)),
            status=http_status(exc),
            will_write=choice.will_write,
        )
    log.info("page_calendar_chosen", link_id=chosen.link.id, calendar_id=calendar_id)
    return pages.redirect(pages.progress_url([chosen.backfill_id]))


async def backfill_progress(request: web.Request) -> web.StreamResponse:
    pages = pages_of(request)
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
