"""Drift: what differs between a link's calendar and what the bookings say should be there.
Pure: `consumer.service.reconcile` reads the calendar and the records, and repairs.

Each difference is one of four kinds: missing (a live booking with no event of the link),
changed (a rendered field differs, or the event is not the one recorded), orphaned (an
event for no live booking of the activity, or of a link gone, moved, or no longer syncing
the calendar), duplicated (a second event for the same booking, or one kept by a
disconnected link). A fifth, foreign, is reported and never repaired: an event of another
deployment (tagged with another deployment id; or untagged, from before the tag existed,
and naming a link that is not one of ours).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from consumer.domain.models import BookingEvent, LinkRow, LinkState
from consumer.domain.planning import DEPLOYMENT_PROPERTY, belongs_on_calendar, render_event

Kind = Literal["missing", "changed", "orphaned", "duplicated", "foreign"]
KINDS: tuple[Kind, ...] = ("missing", "changed", "orphaned", "duplicated", "foreign")
REPAIRED_KINDS: frozenset[Kind] = frozenset({"missing", "changed", "orphaned", "duplicated"})
_COMPARED = ("summary", "description", "location", "status", "start", "end")
# States in which another link still syncs its calendar (or will again once its account is
# reconnected or the calendar reachable): its events there are its own, never removed from
# here. A pending link syncs nothing; a disconnected one kept its events on purpose.
_SYNCING = frozenset(
    {LinkState.ACTIVE.value, LinkState.REAUTH_REQUIRED.value, LinkState.CALENDAR_UNAVAILABLE.value}
)


@dataclass(frozen=True)
class Drift:
    kind: Kind
    booking_id: str | None
    event_id: str | None
    detail: str = ""
    link_id: str | None = None  # the link the event names, when not the one reconciled
    calendar_id: str | None = None  # for a stranded event: the calendar it was left on


@dataclass
class LinkReport:
    link_id: str
    activity_id: str
    account_email: str
    calendar_id: str
    events_seen: int = 0
    drift: list[Drift] = field(default_factory=list)
    repaired: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    unrepaired: list[str] = field(default_factory=list)  # repairs that failed, and why

    def found(self) -> Counter[str]:
        return Counter(d.kind for d in self.drift)

    def as_json(self) -> dict[str, Any]:
        by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for d in self.drift:
            item = {k: v for k, v in asdict(d).items() if k != "kind" and v not in (None, "")}
            by_kind[d.kind].append(item)
        return {
            "link_id": self.link_id,
            "activity_id": self.activity_id,
            "account_email": self.account_email,
            "calendar_id": self.calendar_id,
            "events_seen": self.events_seen,
            **by_kind,
            "repaired": dict(self.repaired),
            "unrepaired": self.unrepaired,
            "error": self.error,
        }


def _instant(when: Any) -> str | None:
    """A start or end as an instant, however Google spells it back."""
    if not isinstance(when, dict):
        return None
    if when.get("dateTime"):
        try:
            parsed = datetime.fromisoformat(str(when["dateTime"]).replace("Z", "+00:00"))
        except ValueError:
            return str(when["dateTime"])
        return parsed.astimezone(UTC).isoformat() if parsed.tzinfo else str(when["dateTime"])
    return str(when.get("date"))


def differences(wanted: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """The rendered fields of an event that differ from what the booking says."""
    fields = []
    for name in _COMPARED:
        want, have = wanted.get(name), held.get(name)
        if name in ("start", "end"):
            want, have = _instant(want), _instant(have)
        elif name == "location":
            want, have = want or None, have or None
        elif name == "status":
            have = have or "confirmed"
        if want != have:
            fields.append(name)
    ours = wanted["extendedProperties"]["private"]
    theirs = (held.get("extendedProperties") or {}).get("private") or {}
    if any(theirs.get(k) != v for k, v in ours.items()):
        fields.append("extendedProperties")
    return fields


def foreign(event: dict[str, Any], deployment: str, our_links: Container[str]) -> str | None:
    """Why an event of `managed_by` ours is another deployment's (None: it is ours). Tagged
    with another deployment id; or untagged (written before the tag existed) and naming a
    link that is not one of ours (it may be the other deployment's old event)."""
    private = (event.get("extendedProperties") or {}).get("private") or {}
    tag = private.get(DEPLOYMENT_PROPERTY)
    if tag is None:
        owner = private.get("link_id")
        return None if owner in our_links else f"untagged, of link {owner} (not ours)"
    return None if tag == deployment else f"of deployment {tag}"


def compare(
    row: LinkRow,
    latest: dict[str, BookingEvent],
    recorded: dict[str, str],
    events: list[dict[str, Any]],
    others: dict[str, tuple[str, str | None]],
    *,
    deployment: str,
) -> list[Drift]:
    """What drifted on `row`'s calendar. `latest`: the bookings that may concern the link
    (its activity's, and those it holds), by id; `recorded`: the event id the records hold
    per booking on this calendar; `events`: the calendar's events of `managed_by` ours (any
    link, any deployment); `others`: the other links of ours (this deployment's) named by
    events, id -> (state, calendar); `deployment`: our deployment id."""
    link = row.link
    wanted = {
        b: e
        for b, e in latest.items()
        if belongs_on_calendar(e) and e.booking.activity_id == link.activity_id
    }
    drift: list[Drift] = []
    mine: dict[str, list[dict[str, Any]]] = {}
    kept: dict[str, list[dict[str, Any]]] = {}  # a disconnected link's, kept on purpose
    our_links = {link.id, *others}
    for event in events:
        private = (event.get("extendedProperties") or {}).get("private") or {}
        owner, booking_id = private.get("link_id"), private.get("booking_id")
        why = foreign(event, deployment, our_links)
        if why is not None:
            # Never touched, and not the booking's event: ours is created beside it.
            drift.append(
                Drift(
                    "foreign",
                    booking_id,
                    event["id"],
                    why,
                    link_id=None if owner is None else str(owner),
                )
            )
            continue
        if owner != link.id:
            state, calendar = others.get(str(owner), ("unknown", None))
            if calendar == link.calendar_id and state in _SYNCING:
                continue  # another link that syncs this calendar (another activity's)
            if calendar == link.calendar_id and state == LinkState.DISCONNECTED.value:
                kept.setdefault(str(booking_id), []).append(event)
                continue  # kept by its owner on purpose (unless it doubles one of ours)
            # A link that no longer exists, that moved to another calendar, or that no
            # longer syncs this one (pending: a second link of the activity on a calendar
            # shared between two accounts, demoted): its event should have left this one.
            drift.append(
                Drift(
                    "orphaned",
                    booking_id,
                    event["id"],
                    f"of link {owner} ({state})",
                    link_id=str(owner),
                )
            )
            continue
        if booking_id not in wanted:
            why = "no such booking" if booking_id not in latest else "booking not live here"
            drift.append(Drift("orphaned", booking_id, event["id"], why))
            continue
        mine.setdefault(str(booking_id), []).append(event)
    for booking_id, booking_event in wanted.items():
        held = mine.get(booking_id, [])
        # A booking this link holds, also on the calendar from a link disconnected with
        # its events kept: the calendar shows it twice.
        drift += [
            Drift(
                "duplicated",
                booking_id,
                e["id"],
                "kept by a disconnected link",
                link_id=str(
                    ((e.get("extendedProperties") or {}).get("private") or {}).get("link_id")
                ),
            )
            for e in kept.get(booking_id, [])
            if held
        ]
        if not held:
            drift.append(Drift("missing", booking_id, None))
            continue
        keep = next((e for e in held if e["id"] == recorded.get(booking_id)), held[0])
        drift += [Drift("duplicated", booking_id, e["id"]) for e in held if e is not keep]
        if keep["id"] != recorded.get(booking_id):
            # On the calendar, but not what the records hold (an old bug lost it): taken
            # as the booking's event, or the next change would create a second one.
            drift.append(Drift("changed", booking_id, keep["id"], "not recorded"))
            continue
        changed = differences(
            render_event(booking_event.booking, link.id, deployment=deployment), keep
        )
        if changed:
            drift.append(Drift("changed", booking_id, keep["id"], ",".join(changed)))
    return drift
