"""Calendar v3 operations of the sandbox, over its state. Each returns (status, body)."""

from __future__ import annotations

import copy
import secrets
from typing import Any

from calsync_dev.sandbox.state import (
    EVENT_ID,
    WRITE_ROLES,
    Calendar,
    GoogleError,
    SandboxState,
    deleted,
    not_found,
    now_rfc3339,
)


def _writable(calendar: Calendar) -> Calendar:
    if calendar.access_role not in WRITE_ROLES:
        raise GoogleError(
            403, "requiredAccessLevel", "You need to have writer access to this calendar."
        )
    return calendar


def _validate_event(body: dict[str, Any]) -> None:
    for key in ("start", "end"):
        when = body.get(key)
        if not isinstance(when, dict) or not (when.get("dateTime") or when.get("date")):
            raise GoogleError(
                400, "required", "Missing end time." if key == "end" else "Missing start time."
            )
    if str(body["end"].get("dateTime")) < str(body["start"].get("dateTime")):
        raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")


def _stored(calendar: Calendar, event_id: str) -> dict[str, Any]:
    event = calendar.events.get(event_id)
    if event is None:
        raise not_found()
    if event["status"] == "cancelled":
        raise deleted()
    return event


def _to_update(state: SandboxState, calendar: Calendar, event_id: str) -> dict[str, Any]:
    """An update or patch of an event a person deleted in Google Calendar's UI: 403
    `forbidden`, as people using the real API report it (google-api-ruby-client#1811,
    ical_to_gcal_sync#12); `deleted_event_update_status = 410` gives the other plausible
    answer."""
    event = calendar.events.get(event_id)
    if event is not None and event["status"] == "cancelled":
        if state.deleted_event_update_status == 410:
            raise deleted()
        raise GoogleError(403, "forbidden", "Forbidden")
    return _stored(calendar, event_id)


def _list_entry(cal: Calendar) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": "calendar#calendarListEntry",
        "id": cal.id,
        "summary": cal.summary,
        "accessRole": cal.access_role,
        "timeZone": "UTC",
    }
    if cal.primary:
        item["primary"] = True
    return item


def calendar_list(state: SandboxState, email: str) -> tuple[int, dict[str, Any]]:
    account = state.accounts[email]
    items = [_list_entry(cal) for cal in account.calendars.values()]
    return 200, {"kind": "calendar#calendarList", "etag": '"p1"', "items": items}


def calendar_list_entry(
    state: SandboxState, email: str, calendar_id: str
) -> tuple[int, dict[str, Any]]:
    """`calendarList.get`: 404 for a calendar no longer in the account's list (deleted, or
    unsubscribed); its access role as it stands (a calendar shared read-only: `reader`)."""
    return 200, _list_entry(state.calendar(email, calendar_id))


def insert_event(
    state: SandboxState, email: str, calendar_id: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    calendar = _writable(state.calendar(email, calendar_id))
    _validate_event(body)
    event_id = body.get("id") or secrets.token_hex(13)
    if not EVENT_ID.fullmatch(event_id):
        raise GoogleError(400, "invalid", "Invalid resource id value.")
    if event_id in calendar.events:  # deleted ids stay taken, as at Google
        raise GoogleError(409, "duplicate", "The requested identifier already exists.")
    stamp = now_rfc3339()
    event = copy.deepcopy(body)
    event.update(
        kind="calendar#event",
        id=event_id,
        status=body.get("status", "confirmed"),
        created=stamp,
        updated=stamp,
        sequence=0,
        etag=f'"{state.next_sequence()}"',
        iCalUID=f"{event_id}@google.com",
        htmlLink=f"https://www.google.com/calendar/event?eid={event_id}",
        organizer={"email": calendar_id, "self": True},
    )
    calendar.events[event_id] = event
    return 200, event


def get_event(
    state: SandboxState, email: str, calendar_id: str, event_id: str
) -> tuple[int, dict[str, Any]]:
    calendar = state.calendar(email, calendar_id)
    event = calendar.events.get(event_id)
    if event is None:
        raise not_found()
    return 200, event  # a deleted event is still readable, with status "cancelled"


def update_event(
    state: SandboxState,
    email: str,
    calendar_id: str,
    event_id: str,
    body: dict[str, Any],
    patch: bool,
) -> tuple[int, dict[str, Any]]:
    calendar = _writable(state.calendar(email, calendar_id))
    current = _to_update(state, calendar, event_id)
    if patch:
        merged = copy.deepcopy(current)
        merged.update(copy.deepcopy(body))
    else:
        merged = copy.deepcopy(body)
        for keep in ("kind", "created", "iCalUID", "htmlLink", "organizer"):
            merged[keep] = current[keep]
    _validate_event(merged)
    merged.update(
        id=event_id,
        status=merged.get("status", "confirmed"),
        updated=now_rfc3339(),
        sequence=current["sequence"] + 1,
        etag=f'"{state.next_sequence()}"',
    )
    calendar.events[event_id] = merged
    return 200, merged


def delete_event(
    state: SandboxState, email: str, calendar_id: str, event_id: str
) -> tuple[int, dict[str, Any]]:
    calendar = _writable(state.calendar(email, calendar_id))
    event = _stored(calendar, event_id)
    event["status"] = "cancelled"
    event["updated"] = now_rfc3339()
    return 204, {}


def list_events(
    state: SandboxState, email: str, calendar_id: str, query: dict[str, list[str]]
) -> tuple[int, dict[str, Any]]:
    calendar = state.calendar(email, calendar_id)
    show_deleted = query.get("showDeleted", ["false"])[0] == "true"
    wanted = [p.split("=", 1) for p in query.get("privateExtendedProperty", []) if "=" in p]
    items = []
    for event in calendar.events.values():
        if event["status"] == "cancelled" and not show_deleted:
            continue
        private = event.get("extendedProperties", {}).get("private", {})
        if all(private.get(k) == v for k, v in wanted):
            items.append(event)
    items.sort(key=lambda e: (e["start"].get("dateTime", ""), e["id"]))
    max_results = min(int(query.get("maxResults", ["250"])[0]), 2500)
    start = int(query.get("pageToken", ["0"])[0])
    page = items[start : start + max_results]
    answer: dict[str, Any] = {"kind": "calendar#events", "summary": calendar.summary, "items": page}
    if start + max_results < len(items):
        answer["nextPageToken"] = str(start + max_results)
    if "fields" in query:  # a partial response: only what was asked for, `kind` included
        answer = partial_response(answer, query["fields"][0])
    return 200, answer


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
