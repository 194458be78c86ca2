"""What Google refuses in an event body (insert, update, patch), with its 400 answers.

From the Event resource's reference (the discovery document google-api-python-client ships):
- `colorId`: "an ID referring to an entry in the event section of the colors definition",
  which holds "1" to "11". Anything else is 400 `invalid` "Invalid Value", the body users
  report for an out-of-range color (coursetable/coursetable#1551). A number (5 rather than
  "5") is refused too: the field is a string, and the conservative reading is that Google
  does not coerce it.
- `reminders.overrides`: "The maximum number of override reminders is 5"; each override's
  `minutes` "between 0 and 40320 (4 weeks in minutes)" and `method` `email` or `popup`,
  both "Required when adding a reminder". `useDefault: true` with overrides is 400
  `cannotUseDefaultRemindersAndSpecifyOverride` (the body users report, openclaw/gogcli#97).
- `source.url`: "The URL scheme must be HTTP or HTTPS".
- `visibility`: `default`, `public`, `private` or `confidential`.
- `start` and `end`: both required; an end before the start is 400 `timeRangeEmpty`.
For the refusals users do not quote (too many overrides, a bad override, a bad source URL)
the status and the reason are Google's documented 400 `invalid`; the message is the
sandbox's own wording.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

from calsync_dev.sandbox.state import GoogleError

COLOR_IDS = frozenset(str(n) for n in range(1, 12))
VISIBILITIES = frozenset({"default", "public", "private", "confidential"})
REMINDER_METHODS = frozenset({"email", "popup"})
MAX_OVERRIDES = 5
MAX_REMINDER_MINUTES = 40320


def invalid(message: str = "Invalid Value") -> GoogleError:
    return GoogleError(400, "invalid", message)


def instant(when: Any) -> datetime | None:
    """An event's start or end as a UTC instant: `dateTime` (RFC 3339; without an offset,
    UTC, the sandbox calendars' time zone), or `date` (an all-day event: that day's
    midnight, UTC). None when it has neither or they do not parse."""
    if not isinstance(when, dict):
        return None
    try:
        if when.get("dateTime"):
            moment = datetime.fromisoformat(str(when["dateTime"]))
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        if when.get("date"):
            day = date.fromisoformat(str(when["date"]))
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
    except ValueError:
        return None
    return None


def validate_event(body: dict[str, Any]) -> None:
    """Raise Google's 400 for the first thing it refuses in an event as it would be stored."""
    for key in ("start", "end"):
        when = body.get(key)
        if not isinstance(when, dict) or not (when.get("dateTime") or when.get("date")):
            raise GoogleError(
                400, "required", "Missing end time." if key == "end" else "Missing start time."
            )
    start, end = instant(body["start"]), instant(body["end"])
    if start is None or end is None:
        raise invalid("Invalid start or end time.")
    if end < start:
        raise GoogleError(400, "timeRangeEmpty", "The specified time range is empty.")
    color = body.get("colorId")
    if color is not None and (not isinstance(color, str) or color not in COLOR_IDS):
        raise invalid()
    visibility = body.get("visibility")
    if visibility is not None and visibility not in VISIBILITIES:
        raise invalid()
    _validate_reminders(body.get("reminders"))
    _validate_source(body.get("source"))


def _validate_reminders(reminders: Any) -> None:
    if reminders is None:
        return
    if not isinstance(reminders, dict):
        raise invalid()
    overrides = reminders.get("overrides") or []
    if not isinstance(overrides, list):
        raise invalid()
    if reminders.get("useDefault") is True and overrides:
        raise GoogleError(
            400,
            "cannotUseDefaultRemindersAndSpecifyOverride",
            "Cannot specify both default reminders and overrides at the same time.",
        )
    if len(overrides) > MAX_OVERRIDES:
        raise invalid(f"Too many reminders: at most {MAX_OVERRIDES} overrides.")
    for override in overrides:
        if not isinstance(override, dict):
            raise invalid()
        if "method" not in override or "minutes" not in override:
            raise GoogleError(400, "required", "Missing reminder method or minutes.")
        if override["method"] not in REMINDER_METHODS:
            raise invalid("Invalid reminder method.")
        minutes = override["minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int):
            raise invalid("Invalid reminder minutes.")
        if not 0 <= minutes <= MAX_REMINDER_MINUTES:
            raise invalid("Invalid reminder minutes.")


def _validate_source(source: Any) -> None:
    if source is None:
        return
    if not isinstance(source, dict):
        raise invalid()
    url = source.get("url")
    if url is None:
        return
    parts = urlsplit(str(url))
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise invalid("Invalid source URL: the scheme must be http or https.")
