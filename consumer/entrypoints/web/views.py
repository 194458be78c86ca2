"""Pure view models of the pages: what a template shows, worked out from the service's
records. No I/O; tested table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from consumer.domain.records import Backfill, CalendarInfo, LastResult
from consumer.service.links import LinkHealth
from consumer.service.progress import progress as backfill_progress

# A running backfill writes at least every few seconds; silence for this long means its
# process went away.


# --- content negotiation ----------------------------------------------------------------


def _quality(accept: str, wanted: str) -> float:
    """The quality the Accept header gives a media type (the most specific range wins)."""
    kind = wanted.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *params = [part.strip() for part in item.split(";")]
        media = media.lower()
        if media == wanted:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def prefers_html(accept: str | None) -> bool:
    """True when the client would rather have a page than JSON: browsers ask for text/html
    by name. No Accept header, `*/*` (curl, HTTP libraries) or a tie keep JSON."""
    if not accept:
        return False
    return _quality(accept, "text/html") > _quality(accept, "application/json")


# --- times ------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A short, readable duration: 45 s, 3 min, 2 h 5 min, 3 days."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return "less than a second"
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{round(minutes)} min"
    hours = int(minutes // 60)
    if hours < 48:
        rest = round(minutes - hours * 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    return f"{round(hours / 24)} days"


def ago(moment: datetime, now: datetime) -> str:
    seconds = (now - moment).total_seconds()
    return "a moment ago" if seconds < 1 else f"{duration(seconds)} ago"


def utc(moment: datetime) -> str:
    return (
        moment.strftime("%Y-%m-%d %H:%M:%S UTC")
        if moment.utcoffset() is not None
        else moment.isoformat()
    )


# --- backfill progress ------------------------------------------------------------------


def progress(backfill: Backfill, ceiling_per_s: float | None = None) -> dict[str, Any]:
    """A backfill's progress as the pages show it and their script polls it (JSON)."""
    return backfill_progress(backfill, ceiling_per_s).model_dump()


def progress_text(view: dict[str, Any]) -> str:
    """One line a person (and a screen reader) reads: what is done, how fast, how long."""
    total, done = view["total"], view["done"]
    if view["status"] == "finished":
        if not total:
            return "Nothing to catch up: the calendar already matches the bookings."
        result = ", ".join(f"{n} {outcome}" for outcome, n in sorted(view["outcomes"].items()))
        return (
            f"Done: {total} booking{'s' if total != 1 else ''} in "
            f"{duration(view['elapsed_s'])} ({result})."
        )
    if view["status"] == "failed":
        return f"Stopped after {done} of {total or '?'} bookings: {view['error']}"
    if view["status"] == "stalled":
        return (
            f"No progress for a while after {done} of {total or '?'} bookings: the "
            "service that ran it may have stopped."
        )
    if total is None:
        return "Finding the bookings to catch up…"
    parts = [f"{done} of {total} bookings"]
    if view["rate_per_s"]:
        parts.append(f"{view['rate_per_s']:g} per second")
    if view["remaining_s"] is not None and done:
        parts.append(f"about {duration(view['remaining_s'])} left")
    return ", ".join(parts) + "."


def will_write_text(count: int | None, past_days: float) -> str | None:
    """What choosing a calendar writes: "N bookings will be written" (those ending after
    the horizon; older ones are never sent)."""
    if count is None:
        return None
    days = f"{past_days:g} day{'s' if past_days != 1 else ''}"
    return (
        f"{count} booking{'s' if count != 1 else ''} will be written to the calendar you "
        f"choose (those ending after {days} ago; older ones are left out)."
    )


def backfill_will_write_text(backfill: Backfill) -> str | None:
    """A backfill's total, once counted: "N bookings will be written" (those ending after
    its horizon)."""
    if backfill.total is None:
        return None
    total = backfill.total
    since = f" (those ending after {utc(backfill.horizon)})" if backfill.horizon else ""
    return f"{total} booking{'s' if total != 1 else ''} will be written{since}."


# --- the calendar choice ----------------------------------------------------------------


def calendar_choices(
    calendars: list[CalendarInfo], taken: dict[str, tuple[str, str]], account: str
) -> list[dict[str, Any]]:
    """Each calendar with whether it can be chosen and, if not, why."""
    answer = []
    for calendar in calendars:
        why = None
        if not calendar.writable:
            why = (
                f"Read-only: your access to this calendar is “{calendar.access_role}”. "
                "Bookings can only go to a calendar where you are writer or owner."
            )
        elif calendar.id in taken:
            link_id, other_account = taken[calendar.id]
            why = (
                f"Already synced by this activity's link {link_id}"
                + ("" if other_account == account else f" (through {other_account})")
                + ": choosing it again would put every booking there twice."
            )
        answer.append(
            {
                "id": calendar.id,
                "name": calendar.name,
                "primary": calendar.primary,
                "writable": calendar.writable,
                "access_role": calendar.access_role,
                "selectable": why is None,
                "why": why,
                "taken_by": taken.get(calendar.id, (None, None))[0],
            }
        )
    return answer


# --- links ------------------------------------------------------------------------------

STATES = {
    "pending": ("Pending", "No calendar chosen yet: nothing syncs until one is."),
    "active": ("Active", "Bookings go to the calendar."),
    "reauth_required": (
        "Reconnect needed",
        "Google no longer accepts this account's access "
        "(revoked, or the password changed): nothing syncs until it is "
        "reconnected.",
    ),
    "calendar_unavailable": (
        "Calendar unavailable",
        "The calendar was deleted or is no longer writable: nothing syncs until another is chosen.",
    ),
    "disconnected": ("Disconnected", "Disconnected on purpose; its history is kept."),
}


def state_label(state: str) -> str:
    return STATES.get(state, (state, ""))[0]


def state_help(state: str) -> str:
    return STATES.get(state, (state, ""))[1]


def last_result_text(result: LastResult | None, now: datetime) -> str:
    if result is None:
        return "None yet"
    operation = "no change" if result.operation == "none" else result.operation
    source = "" if result.source == "event" else f", {result.source}"
    return (
        f"{operation} → {result.outcome} ({result.reason}{source}) for booking "
        f"{result.booking_id}, {ago(result.recorded_at, now)}"
    )


# --- errors a person can act on ---------------------------------------------------------


@dataclass(frozen=True)
class Trouble:
    title: str
    advice: str
    action: str = "Start again"  # the label of the link that starts again


_START = "Start again, and choose Allow on Google's page."
TROUBLES: dict[str, Trouble] = {
    "consent_denied": Trouble(
        "Access was not granted",
        "Google's consent page was answered with Deny (or closed), so "
        "nothing was connected. " + _START,
    ),
    "state_expired": Trouble(
        "This connection request expired",
        "A connection must come back from Google within a few minutes "
        "of being started. Start it again.",
    ),
    "state_replayed": Trouble(
        "This connection request was already used",
        "Each request works once (the page may have been reloaded or "
        "opened twice). If the account is on the links page it is "
        "connected; otherwise start again.",
    ),
    "state_invalid": Trouble(
        "This connection request is not valid",
        "It was not issued by this service, or it was altered. Start "
        "again from the Calendar Sync page.",
    ),
    "state_missing": Trouble(
        "This address is incomplete",
        "Google's answer lost its request identifier. Start again from the Calendar Sync page.",
    ),
    "code_missing": Trouble("Google sent no authorization", "Start again."),
    "code_refused": Trouble(
        "Google refused the sign-in",
        "Google did not accept the authorization it had just given (it may "
        "have expired or been used already). Start again.",
    ),
    "scope_not_granted": Trouble(
        "Some access was not granted",
        "Calendar Sync needs every box on Google's page ticked: to "
        "list your calendars and to add events to one. " + _START,
    ),
    "no_refresh_token": Trouble("Google gave no lasting access", "Start again."),
    "no_id_token": Trouble("Google did not say which account signed in", "Start again."),
    "bad_id_token": Trouble("Google's answer could not be checked", "Start again."),
    "no_verified_email": Trouble(
        "This Google account has no verified email",
        "Verify the account's email at Google, then start again.",
    ),
    "google_unreachable": Trouble(
        "Google could not be reached", "Nothing was changed. Try again in a moment.", "Try again"
    ),
    "google_error": Trouble(
        "Google answered with an error", "Nothing was changed. Try again in a moment.", "Try again"
    ),
    "calendar_not_writable": Trouble(
        "That calendar is read-only",
        "Choose a calendar where you are writer or owner.",
        "Choose again",
    ),
    "calendar_unknown": Trouble(
        "That calendar is not in the account",
        "It may have been deleted meanwhile. Choose another.",
        "Choose again",
    ),
    "calendar_taken": Trouble(
        "That calendar is already synced",
        "Another link of this activity already puts the bookings there (through this "
        "Google account or another one the calendar is shared with).",
        "Choose again",
    ),
    "disconnect_in_progress": Trouble(
        "A disconnect is still under way",
        "Calendar Sync is still disconnecting this account or calendar (removing its "
        "events, giving up its access). Try again once it has finished: the links page "
        "shows when.",
        "Open the links page",
    ),
    "form_expired": Trouble(
        "This calendar choice expired",
        "A calendar must be chosen within a few minutes of connecting. "
        "Open the choice again from the links page, or start again.",
        "Open the links page",
    ),
    "form_replayed": Trouble(
        "This form was already sent",
        "Each calendar choice can be sent once (the page may have been "
        "reloaded or sent twice). The links page shows what was "
        "chosen.",
        "Open the links page",
    ),
    "form_invalid": Trouble(
        "This form cannot be used",
        "It was not issued by this service, or it was altered.",
        "Open the links page",
    ),
    "form_not_this_browser": Trouble(
        "This form was opened in another browser",
        "A calendar choice works in the browser it was shown in. Open the choice again here.",
        "Open the links page",
    ),
    "csrf_refused": Trouble(
        "This request came from another site",
        "For your safety it was refused: forms of Calendar Sync are "
        "only accepted from its own pages.",
        "Open the links page",
    ),
    "reauth_required": Trouble(
        "Google no longer accepts this account's access",
        "Reconnect the account from the links page.",
        "Open the links page",
    ),
    "link_disconnected": Trouble(
        "This link is disconnected",
        "Connect the account again to sync to it.",
        "Open the links page",
    ),
    "link_not_found": Trouble(
        "There is no such link", "It may have been merged into another one.", "Open the links page"
    ),
    "not_found": Trouble("There is no such page", "Check the address."),
    "unauthorized": Trouble(
        "This address is for programs",
        "It belongs to the JSON API, which takes the admin bearer token. "
        "People use the pages: the activities and their links.",
        "Open the pages",
    ),
    "method_not_allowed": Trouble(
        "This address does not take that request", "Use the pages' buttons."
    ),
}


def for_people(detail: str, problem: str) -> str:
    """A refusal's message without the machine name some put first for programs and
    terminals (`calendar_taken: ...`)."""
    prefix = f"{problem}: "
    return detail[len(prefix) :] if detail.startswith(prefix) else detail


def trouble(problem: str, status: int) -> Trouble:
    found = TROUBLES.get(problem)
    if found is not None:
        return found
    if status >= 500:
        return Trouble(
            "Something went wrong on our side",
            "Nothing you did caused it, and it has been logged. Try again in a moment.",
            "Try again",
        )
    return Trouble("This request could not be done", "Start again.")


# --- addresses --------------------------------------------------------------------------


def with_query(url: str, params: list[tuple[str, str]]) -> str:
    """`url` with `params` added to its query (what it already has is kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


def local_path(candidate: str | None, default: str) -> str:
    """A redirect target that stays on this site (no open redirect)."""
    if (
        not candidate
        or not candidate.startswith("/")
        or candidate.startswith("//")
        or "\\" in candidate
        or any(c.isspace() or not c.isprintable() for c in candidate)
    ):
        return default  # browsers drop tabs and newlines: "/\t/evil" would be "//evil"
    return candidate


def link_card(health: LinkHealth, now: datetime) -> dict[str, Any]:
    """One link on the links page: what it is, how it is, and what can be done about it."""
    link = health.link
    state = link.state
    since = link.state_changed_at
    backfill = progress(health.backfill) if health.backfill is not None else None
    choose = {
        "pending": "Choose a calendar",
        "calendar_unavailable": "Choose another calendar",
    }.get(state)
    if state == "active" and backfill is not None and backfill["status"] in ("failed", "stalled"):
        choose = "Catch up again"  # choosing the same calendar again backfills what is left
    return {
        "id": link.id,
        "account": link.account_email,
        "calendar_id": link.calendar_id,
        "calendar_name": health.calendar_name,
        "state": state,
        "state_label": state_label(state),
        "state_help": state_help(state),
        "reason": link.state_reason,
        "since": since,
        "since_text": ago(since, now),
        "events_synced": health.events_synced,
        "last_result": last_result_text(health.last_result, now),
        "last_result_failed": (
            health.last_result is not None and health.last_result.outcome == "failed"
        ),
        "repair_backlog": health.repair_backlog,
        "backfill": backfill,
        "backfill_text": progress_text(backfill) if backfill else None,
        "reconnect": state == "reauth_required",
        "choose": choose,
        "disconnect": state != "disconnected",
    }
