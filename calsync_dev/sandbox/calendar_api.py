"""Calendar v3 operations of the sandbox, over its state. Each returns (status, body).

`update` (PUT) and `patch` (PATCH) keep Google's semantics (the events.update and
events.patch references, and Google's "Performance tips" on patch):
- update replaces the event: a field not sent is removed, except what Google keeps on an
  event whatever a client sends (`kind`, `id`, `created`, `iCalUID`, `htmlLink`,
  `organizer`, `creator`, and `etag`, `updated`, `sequence`, which it sets) and what it
  fills in when absent (`status` "confirmed", `reminders` `{"useDefault": true}`,
  `eventType` "default");
- patch merges: "The modified data you send is merged into the data for the parent
  object" (so an object such as `extendedProperties.private` or `reminders` is merged key by
  key, recursively), a field sent as `null` is deleted, and "Patch requests that contain
  arrays replace the existing array with the one you provide" (`attendees`,
  `reminders.overrides`, `recurrence`);
- both validate the event as it would be stored (sandbox/validation.py) and answer the
  full stored event; insert validates the same way.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

from calsync_dev.sandbox.listing import list_events as _list_events
from calsync_dev.sandbox.listing import partial_response
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
from calsync_dev.sandbox.validation import validate_event

__all__ = ["partial_response"]

# What an update cannot remove: Google keeps these on the event whatever the body says.
KEPT_BY_GOOGLE = ("kind", "created", "iCalUID", "htmlLink", "organizer", "creator")


def _writable(calendar: Calendar) -> Calendar:
    if calendar.access_role not in WRITE_ROLES:
        raise GoogleError(
            403, "requiredAccessLevel", "You need to have writer access to this calendar."
        )
    return calendar


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
    validate_event(body)
    event_id = body.get("id") or secrets.token_hex(13)
    if not EVENT_ID.fullmatch(event_id):
        raise GoogleError(400, "invalid", "Invalid resource id value.")
    if event_id in calendar.events:  # deleted ids stay taken, as at Google
        raise GoogleError(409, "duplicate", "The requested identifier already exists.")
    stamp = now_rfc3339()
    event = _with_defaults(copy.deepcopy(body))
    event.update(
        kind="calendar#event",
        id=event_id,
        created=stamp,
        updated=stamp,
        sequence=0,
        etag=f'"{state.next_sequence()}"',
        iCalUID=f"{event_id}@google.com",
        htmlLink=f"https://www.google.com/calendar/event?eid={event_id}",
        organizer={"email": calendar_id, "self": True},
        creator={"email": email, "self": True},
    )
    calendar.events[event_id] = event
    state.changed(calendar, event_id)
    return 200, event


def _with_defaults(event: dict[str, Any]) -> dict[str, Any]:
    """What Google fills in on an event stored without it."""
    event.setdefault("status", "confirmed")
    event.setdefault("reminders", {"useDefault": True})
    event.setdefault("eventType", "default")
    return event


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Google's patch semantics: objects merged key by key (recursively), `null` deletes,
    anything else (arrays included) replaces."""
    merged = copy.deepcopy(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
        merged = merge_patch(current, body)
    else:  # a replacement: what the body does not say is gone
        merged = _with_defaults({k: copy.deepcopy(v) for k, v in body.items() if v is not None})
        for keep in KEPT_BY_GOOGLE:
            if keep in current:
                merged[keep] = current[keep]
    validate_event(merged)
    merged.update(
        id=event_id,
        updated=now_rfc3339(),
        sequence=current.get("sequence", 0) + 1,
        etag=f'"{state.next_sequence()}"',
    )
    merged.setdefault("status", "confirmed")
    calendar.events[event_id] = merged
    state.changed(calendar, event_id)
    return 200, merged


def delete_event(
    state: SandboxState, email: str, calendar_id: str, event_id: str
) -> tuple[int, dict[str, Any]]:
    calendar = _writable(state.calendar(email, calendar_id))
    event = _stored(calendar, event_id)
    event["status"] = "cancelled"
    event["updated"] = now_rfc3339()
    event["etag"] = f'"{state.next_sequence()}"'
    state.changed(calendar, event_id)
    return 204, {}


def list_events(
    state: SandboxState, email: str, calendar_id: str, query: dict[str, list[str]]
) -> tuple[int, dict[str, Any]]:
    """events.list: full and incremental listings (sandbox/listing.py)."""
    return _list_events(state, email, calendar_id, query)
