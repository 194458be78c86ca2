"""`events.list`: full listings and incremental ones (sync tokens), as Google's
"Synchronize resources efficiently" guide and the events.list reference say, read
conservatively.

A full listing (no `syncToken`) answers the calendar's events that match its filters
(`timeMin`: "Lower bound (exclusive) for an event's end time"; `timeMax`: "Upper bound
(exclusive) for an event's start time"; `privateExtendedProperty` and
`sharedExtendedProperty`, each repeatable, all ANDed; `q`; `iCalUID`; `updatedMin`, which
brings back the events deleted since then whatever `showDeleted` says; `showDeleted`),
`maxResults` at a time (250 by default, never more than 2,500), with a `nextPageToken` on
every page but the last and a `nextSyncToken` on the last one only. An incremental listing
(`syncToken`) answers every event changed since the token was issued (created, updated or
deleted, deleted ones as `status: cancelled` whatever `showDeleted` says), each once, in
its current state, paged the same way, its last page carrying the next `nextSyncToken`.

The conservative readings taken (each switchable where Google leaves it open):
- a sync token voided (`SandboxClient.void_sync_tokens`, an access-role or sharing change:
  "changes in related ACLs") or expired (`sync_token_lifetime_s`) answers 410
  `fullSyncRequired` "Sync token is no longer valid, a full sync is required." (domain
  `calendar`, location `syncToken`), the body users of the real API quote
  (compass-calendar#1239); so does a page token of an incremental listing whose sync token
  was voided while the client paged;
- `syncToken` with `iCalUID`, `orderBy`, `privateExtendedProperty`, `q`,
  `sharedExtendedProperty`, `timeMin`, `timeMax` or `updatedMin` (the reference's list), or
  with `showDeleted=false` ("it is not allowed to set showDeleted to False"), is 400
  `syncTokenWithRequestRestrictions` "Sync token cannot be used with other request
  restrictions.", as users report it;
- a full listing with `orderBy` ends without a `nextSyncToken` (as users report,
  google-api-ruby-client#312); one narrowed by the filters above ends with one
  (`filtered_sync_token` "given", Google's own sample syncs this way with `timeMin`) whose
  increments are every change to the calendar, unfiltered ("All other query parameters
  should be the same as for the initial synchronization to avoid undefined behavior": the
  client must filter them itself), or with none (`filtered_sync_token` "withheld");
- a page "may" hold fewer events than `maxResults` (`max_page_items` caps every page);
- a deleted event "is only guaranteed to have the id field populated" (`cancelled_in_list`
  "minimal": kind, etag, id, status, updated; "full": its last content);
- changes made while a client pages through a listing are all in the next incremental
  listing: the `nextSyncToken` stands where the listing's first page stood.
Page and sync tokens are opaque to clients (base64 of a small JSON document here).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from calsync_dev.sandbox.state import Calendar, GoogleError, SandboxState, now_rfc3339
from calsync_dev.sandbox.validation import instant

DEFAULT_PAGE = 250
MAX_PAGE = 2500
FORBIDDEN_WITH_SYNC_TOKEN = (
    "iCalUID",
    "orderBy",
    "privateExtendedProperty",
    "q",
    "sharedExtendedProperty",
    "timeMin",
    "timeMax",
    "updatedMin",
)
_MINIMAL_CANCELLED = ("kind", "etag", "id", "status", "updated")

Query = dict[str, list[str]]


def full_sync_required() -> GoogleError:
    return GoogleError(
        410,
        "fullSyncRequired",
        "Sync token is no longer valid, a full sync is required.",
        domain="calendar",
        location="syncToken",
    )


def _restricted() -> GoogleError:
    return GoogleError(
        400,
        "syncTokenWithRequestRestrictions",
        "Sync token cannot be used with other request restrictions.",
        domain="calendar",
        location="syncToken",
    )


def _bad_request() -> GoogleError:
    return GoogleError(400, "badRequest", "Bad Request")


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise GoogleError(400, "invalid", f"Invalid {what} value.") from None
    if not isinstance(payload, dict):
        raise GoogleError(400, "invalid", f"Invalid {what} value.")
    return payload


def _first(query: Query, name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _flag(query: Query, name: str) -> bool | None:
    value = _first(query, name)
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise GoogleError(400, "invalid", f"Invalid boolean value: '{value}'")
    return value.lower() == "true"


def _moment(query: Query, name: str) -> datetime | None:
    """An RFC 3339 timestamp "with mandatory time zone offset"; anything else is 400."""
    value = _first(query, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_request() from None
    if moment.tzinfo is None:
        raise _bad_request()
    return moment.astimezone(UTC)


def _page_size(state: SandboxState, query: Query) -> int:
    value = _first(query, "maxResults")
    size = DEFAULT_PAGE
    if value is not None:
        try:
            size = int(value)
        except ValueError:
            raise GoogleError(400, "invalid", f"Invalid value '{value}'.") from None
        if size < 1:
            raise GoogleError(
                400,
                "invalid",
                f"Invalid value '{value}'. Values must be within the range: [1, 2500]",
            )
    size = min(size, MAX_PAGE)  # "The page size can never be larger than 2500 events."
    if state.max_page_items is not None:
        size = max(1, min(size, state.max_page_items))
    return size


def _constraints(query: Query, name: str) -> list[tuple[str, str]]:
    return [tuple(v.split("=", 1)) for v in query.get(name, []) if "=" in v]  # type: ignore[misc]


def _listed(state: SandboxState, event: dict[str, Any]) -> dict[str, Any]:
    if event.get("status") == "cancelled" and state.cancelled_in_list == "minimal":
        return {k: event[k] for k in _MINIMAL_CANCELLED if k in event}
    return event


def _start_key(event: dict[str, Any]) -> str:
    moment = instant(event.get("start"))
    return moment.isoformat() if moment else ""


def list_events(
    state: SandboxState, email: str, calendar_id: str, query: Query
) -> tuple[int, dict[str, Any]]:
    calendar = state.calendar(email, calendar_id)
    page_token = _first(query, "pageToken")
    page = _decode(page_token, "page token") if page_token else None
    sync_token = _first(query, "syncToken")
    if sync_token is not None or (page is not None and page.get("m") == "inc"):
        answer = _incremental(state, calendar, query, sync_token, page)
    else:
        answer = _full(state, calendar, query, page)
    answer = {
        "kind": "calendar#events",
        "summary": calendar.summary,
        "updated": now_rfc3339(),
        "timeZone": "UTC",
        "accessRole": calendar.access_role,
        **answer,
    }
    if "fields" in query:  # a partial response: only what was asked for, `kind` included
        answer = partial_response(answer, query["fields"][0])
    return 200, answer


def _sync_token(calendar: Calendar, sequence: int) -> str:
    feed = calendar.feed
    return _encode({"r": feed.resource_id, "g": feed.generation, "s": sequence, "t": time.time()})


def _check_current(state: SandboxState, calendar: Calendar, token: dict[str, Any]) -> None:
    """410 for a token Google would no longer honour (voided, or past its lifetime)."""
    if token.get("r") != calendar.feed.resource_id:
        raise GoogleError(400, "invalid", "Invalid sync token value.")
    if token.get("g") != calendar.feed.generation:
        raise full_sync_required()
    lifetime = state.sync_token_lifetime_s
    if lifetime is not None and time.time() - float(token.get("t", 0)) > lifetime:
        raise full_sync_required()


def _paged(
    state: SandboxState,
    query: Query,
    items: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], list[Any]],
    after: list[Any] | None,
) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """One page of `items` (sorted by `key`) after the key `after`, and the key to go on
    from (None: this is the last page). Keyset paging: a change between two pages neither
    repeats nor skips an event that did not move."""
    ordered = sorted(items, key=key)
    if after is not None:
        ordered = [e for e in ordered if key(e) > after]
    size = _page_size(state, query)
    page = ordered[:size]
    more = len(ordered) > size
    return page, (key(page[-1]) if more and page else None)


def _full(
    state: SandboxState, calendar: Calendar, query: Query, page: dict[str, Any] | None
) -> dict[str, Any]:
    show_deleted = bool(_flag(query, "showDeleted"))
    _flag(query, "singleEvents")  # no recurring events here: every event is a single one
    time_min, time_max = _moment(query, "timeMin"), _moment(query, "timeMax")
    updated_min = _moment(query, "updatedMin")
    if time_min is not None and time_max is not None and time_max <= time_min:
        raise GoogleError(
            400, "timeRangeEmpty", "The specified time range is empty.", location="timeMax"
        )
    order_by = _first(query, "orderBy")
    if order_by not in (None, "startTime", "updated"):
        raise GoogleError(400, "invalid", f"Invalid value '{order_by}'.")
    if order_by == "startTime" and not _flag(query, "singleEvents"):
        raise GoogleError(
            400,
            "invalid",
            "The requested ordering is not available for the particular query.",
            location="orderBy",
        )
    private = _constraints(query, "privateExtendedProperty")
    shared = _constraints(query, "sharedExtendedProperty")
    words = (_first(query, "q") or "").lower().split()
    ical_uid = _first(query, "iCalUID")

    def wanted(event: dict[str, Any]) -> bool:
        cancelled = event.get("status") == "cancelled"
        updated = _updated(event)
        if updated_min is not None:
            if updated is None or updated < updated_min:
                return False
        elif cancelled and not show_deleted:
            return False
        if time_min is not None or time_max is not None:
            start, end = instant(event.get("start")), instant(event.get("end"))
            if start is None or end is None:
                return False
            if time_min is not None and not end > time_min:
                return False
            if time_max is not None and not start < time_max:
                return False
        properties = event.get("extendedProperties") or {}
        if not all((properties.get("private") or {}).get(k) == v for k, v in private):
            return False
        if not all((properties.get("shared") or {}).get(k) == v for k, v in shared):
            return False
        if ical_uid is not None and event.get("iCalUID") != ical_uid:
            return False
        text = " ".join(str(event.get(f, "")) for f in ("summary", "description", "location"))
        return all(word in text.lower() for word in words)

    if page is not None:
        if page.get("r") != calendar.feed.resource_id:
            raise GoogleError(400, "invalid", "Invalid page token value.")
        snapshot = int(page["s"])
    else:
        snapshot = calendar.feed.sequence

    def key(event: dict[str, Any]) -> list[Any]:
        if order_by == "updated":
            return [str(event.get("updated", "")), event["id"]]
        # by start (the default's "unspecified, stable order" is this one too)
        return [_start_key(event), event["id"]]

    items = [e for e in calendar.events.values() if wanted(e)]
    listed, next_after = _paged(state, query, items, key, page.get("a") if page else None)
    answer: dict[str, Any] = {"items": [_listed(state, e) for e in listed]}
    if next_after is not None:
        answer["nextPageToken"] = _encode(
            {"m": "full", "r": calendar.feed.resource_id, "s": snapshot, "a": next_after}
        )
        return answer
    filtered = any(name in query for name in FORBIDDEN_WITH_SYNC_TOKEN if name != "orderBy")
    if order_by is None and not (filtered and state.filtered_sync_token == "withheld"):
        answer["nextSyncToken"] = _sync_token(calendar, snapshot)
    return answer


def _incremental(
    state: SandboxState,
    calendar: Calendar,
    query: Query,
    sync_token: str | None,
    page: dict[str, Any] | None,
) -> dict[str, Any]:
    if any(name in query for name in FORBIDDEN_WITH_SYNC_TOKEN):
        raise _restricted()
    if _flag(query, "showDeleted") is False:
        raise _restricted()
    _flag(query, "singleEvents")
    if sync_token is not None:
        token = _decode(sync_token, "sync token")
        _check_current(state, calendar, token)
    if page is not None:  # the page goes on from where the listing's first page stood
        _check_current(state, calendar, page)
        since, snapshot = int(page["f"]), int(page["s"])
        issued = float(page.get("t", time.time()))
    else:
        since, snapshot = int(token["s"]), calendar.feed.sequence
        issued = float(token.get("t", time.time()))
    changed = calendar.feed.changed_at
    items = [
        calendar.events[event_id]
        for event_id, sequence in changed.items()
        if since < sequence <= snapshot and event_id in calendar.events
    ]
    listed, next_after = _paged(
        state,
        query,
        items,
        lambda e: [changed[e["id"]], e["id"]],
        page.get("a") if page else None,
    )
    answer: dict[str, Any] = {"items": [_listed(state, e) for e in listed]}
    if next_after is not None:
        feed = calendar.feed
        answer["nextPageToken"] = _encode(
            {
                "m": "inc",
                "r": feed.resource_id,
                "g": feed.generation,
                "t": issued,
                "f": since,
                "s": snapshot,
                "a": next_after,
            }
        )
    else:
        answer["nextSyncToken"] = _sync_token(calendar, snapshot)
    return answer


def _updated(event: dict[str, Any]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(event.get("updated", "")))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _split_fields(fields: str) -> list[str]:
    """`kind,items(id,start),nextPageToken` -> its top-level selectors."""
    parts, depth, current = [], 0, ""
    for char in fields:
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def partial_response(answer: dict[str, Any], fields: str) -> dict[str, Any]:
    """What Google answers for a `fields` selector: the named fields only (a sub-selection
    in parentheses applies to each item of a list or to an object). Nothing else comes back,
    not even `kind` unless it is named."""
    selected: dict[str, Any] = {}
    for selector in _split_fields(fields):
        name, _, inner = selector.partition("(")
        name = name.strip()
        if name not in answer:
            continue
        value = answer[name]
        if inner:
            sub = inner[:-1] if inner.endswith(")") else inner
            if isinstance(value, list):
                value = [partial_response(v, sub) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                value = partial_response(value, sub)
        selected[name] = value
    return selected
