"""Drift: what differs between a link's calendar and what the bookings say should be there.
Pure: `consumer.service.reconcile` reads the calendar and the records, and repairs.

The comparison streams (`CalendarDrift`): it is told the bookings that should be on the
calendar (the activity's live bookings that end after the horizon), then compares each page
of the calendar's events as Google lists it, keeping per booking only the ids of its events
seen (never the events themselves), and ends with what is missing. What ended before the
horizon is not its business: an event that ends by then is not listed (Google's `timeMin`
filters on an event's end), and one naming a booking that ended by then is neither reported
nor touched, whatever it shows.

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
from collections.abc import Container, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from consumer.domain.models import BookingEvent, LinkRow, LinkState
from consumer.domain.planning import DEPLOYMENT_PROPERTY, belongs_on_calendar, render_event
from consumer.domain.records import KnownBooking

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


def differences(wanted: Mapping[str, Any], held: Mapping[str, Any]) -> list[str]:
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


def foreign(event: Mapping[str, Any], deployment: str, our_links: Container[str]) -> str | None:
    """Why an event of `managed_by` ours is another deployment's (None: it is ours). Tagged
    with another deployment id; or untagged (written before the tag existed) and naming a
    link that is not one of ours (it may be the other deployment's old event)."""
    private = (event.get("extendedProperties") or {}).get("private") or {}
    tag = private.get(DEPLOYMENT_PROPERTY)
    if tag is None:
        owner = private.get("link_id")
        return None if owner in our_links else f"untagged, of link {owner} (not ours)"
    return None if tag == deployment else f"of deployment {tag}"


def _private(event: Mapping[str, Any]) -> dict[str, Any]:
    private: dict[str, Any] = (event.get("extendedProperties") or {}).get("private") or {}
    return private


def ends_by(event: Mapping[str, Any], since: datetime) -> bool:
    """Whether an event ends at or before `since`: Google's events.list leaves it out when
    asked for events from `since` on (`timeMin`: "lower bound (exclusive) for an event's
    end time"). An end that cannot be read does not leave it out."""
    end = event.get("end")
    if not isinstance(end, dict):
        return False
    try:
        if end.get("dateTime"):
            moment = datetime.fromisoformat(str(end["dateTime"]).replace("Z", "+00:00"))
        elif end.get("date"):  # an all-day event: its end date's start, taken in UTC
            moment = datetime.fromisoformat(str(end["date"])).replace(tzinfo=UTC)
        else:
            return False
    except ValueError:
        return False
    return moment.tzinfo is not None and moment <= since


@dataclass
class _Held:
    """What the calendar holds of one wanted booking, by event id only."""

    keeper: str | None = None  # its event: the recorded one when listed, else the first seen
    fields: tuple[str, ...] = ()  # the keeper's rendered fields that differ (when recorded)
    extras: list[str] = field(default_factory=list)  # its other events of the link, in order
    kept: list[tuple[str, str]] = field(default_factory=list)  # (event, link) disconnected


class CalendarDrift:
    """What drifted on one link's calendar, compared page by page as it is listed.

    `want` each booking that may need an event on it (the store reads them in keyset pages:
    the activity's bookings within the horizon, with the event the records hold for each);
    then, for each page of the calendar's events of `managed_by` ours (any link, any
    deployment), `to_look_up` says which bookings and links it names that are not known yet,
    and `compare_page` takes the page with what the records say of those; `finish` adds
    what is missing, doubled or changed, and returns the drift. `since`: the horizon (None:
    no horizon, every booking is within it)."""

    def __init__(self, row: LinkRow, *, deployment: str, since: datetime | None = None) -> None:
        self.link = row.link
        self.deployment = deployment
        self.since = since
        self.drift: list[Drift] = []
        self.events_seen = 0  # events of ours listed (foreign ones are not)
        # Orphans the link's records hold: only the sync path may remove them.
        self.held_by_records: set[str] = set()
        self._wanted: dict[str, BookingEvent] = {}
        self._recorded: dict[str, str] = {}  # wanted booking -> the event id recorded
        self._held: dict[str, _Held] = {}
        self._links: dict[str, tuple[str, str | None]] = {}  # other links: state, calendar
        self._our_links = {self.link.id}  # this link and the other links of ours named

    def want(self, booking: BookingEvent, recorded_event_id: str | None) -> None:
        """A booking that may need an event here (one that does not is left out)."""
        if not belongs_on_calendar(booking) or booking.booking.activity_id != self.link.activity_id:
            return
        if self.since is not None and booking.booking.end <= self.since:
            return
        self._wanted[booking.booking.id] = booking
        if recorded_event_id is not None:
            self._recorded[booking.booking.id] = recorded_event_id

    def wanted(self, booking_id: str | None) -> BookingEvent | None:
        return self._wanted.get(booking_id or "")

    def to_look_up(self, events: Iterable[Mapping[str, Any]]) -> tuple[set[str], set[str]]:
        """Of a page: the bookings named that are not wanted here (whether they exist and
        end after the horizon decides what their events are), and the other links named
        that are not known yet."""
        bookings: set[str] = set()
        links: set[str] = set()
        for event in events:
            private = _private(event)
            booking_id, owner = private.get("booking_id"), private.get("link_id")
            if isinstance(booking_id, str) and booking_id not in self._wanted:
                bookings.add(booking_id)
            if isinstance(owner, str) and owner != self.link.id and owner not in self._links:
                links.add(owner)
        return bookings, links

    def compare_page(
        self,
        events: Iterable[Mapping[str, Any]],
        bookings: Mapping[str, KnownBooking],
        links: Mapping[str, tuple[str, str | None]],
    ) -> None:
        """One page of the calendar's events; `bookings` and `links`: what the records say
        of those `to_look_up` named (a booking or link absent from them does not exist)."""
        self._links.update(links)
        self._our_links.update(links)
        for event in events:
            if self.since is not None and ends_by(event, self.since):
                continue  # not listed from the horizon on: never ours to judge
            self._event(event, bookings)

    def _event(self, event: Mapping[str, Any], bookings: Mapping[str, KnownBooking]) -> None:
        private = _private(event)
        owner, booking_id = private.get("link_id"), private.get("booking_id")
        why = foreign(event, self.deployment, self._our_links)
        if why is not None:
            # Never touched, and not the booking's event: ours is created beside it.
            link = None if owner is None else str(owner)
            self.drift.append(Drift("foreign", booking_id, event["id"], why, link_id=link))
            return
        self.events_seen += 1
        known = bookings.get(str(booking_id))
        if booking_id not in self._wanted and known is not None and not known.within_horizon:
            return  # its booking ended before the horizon: neither reported nor touched
        if owner != self.link.id:
            self._other_links(event, str(owner), booking_id)
        elif booking_id not in self._wanted:
            why = "no such booking" if known is None else "booking not live here"
            self.drift.append(Drift("orphaned", booking_id, event["id"], why))
            if known is not None and known.recorded_event_id == event["id"]:
                self.held_by_records.add(event["id"])
        else:
            self._hold(str(booking_id), event)

    def _other_links(self, event: Mapping[str, Any], owner: str, booking_id: str | None) -> None:
        """An event of another link of ours on this calendar."""
        state, calendar = self._links.get(owner, ("unknown", None))
        if calendar == self.link.calendar_id and state in _SYNCING:
            return  # another link that syncs this calendar (another activity's)
        if calendar == self.link.calendar_id and state == LinkState.DISCONNECTED.value:
            if booking_id in self._wanted:  # kept on purpose, unless it doubles one of ours
                self._held.setdefault(str(booking_id), _Held()).kept.append((event["id"], owner))
            return
        # A link that no longer exists, that moved to another calendar, or that no longer
        # syncs this one (pending: a second link of the activity on a calendar shared
        # between two accounts, demoted): its event should have left this one.
        detail = f"of link {owner} ({state})"
        self.drift.append(Drift("orphaned", booking_id, event["id"], detail, link_id=owner))

    def _hold(self, booking_id: str, event: Mapping[str, Any]) -> None:
        """The link's own event for a wanted booking: the booking's event, or an extra."""
        held = self._held.setdefault(booking_id, _Held())
        recorded = self._recorded.get(booking_id)
        if held.keeper is not None and (event["id"] != recorded or held.keeper == recorded):
            held.extras.append(event["id"])
            return
        if held.keeper is not None:  # the recorded one, after another: that one is extra
            held.extras.insert(0, held.keeper)  # it was the first seen
        held.keeper = event["id"]
        if event["id"] == recorded:
            wanted = render_event(
                self._wanted[booking_id].booking, self.link.id, deployment=self.deployment
            )
            held.fields = tuple(differences(wanted, event))

    def finish(self) -> list[Drift]:
        """The whole drift: what the pages showed, then each wanted booking's."""
        for booking_id in self._wanted:
            self.drift += self._booking_drift(booking_id, self._held.get(booking_id, _Held()))
        return self.drift

    def _booking_drift(self, booking_id: str, held: _Held) -> list[Drift]:
        if held.keeper is None:
            return [Drift("missing", booking_id, None)]
        # A booking this link holds, also on the calendar from a link disconnected with its
        # events kept: the calendar shows it twice.
        drift = [
            Drift("duplicated", booking_id, event_id, "kept by a disconnected link", link_id=link)
            for event_id, link in held.kept
        ]
        drift += [Drift("duplicated", booking_id, event_id) for event_id in held.extras]
        if held.keeper != self._recorded.get(booking_id):
            # On the calendar, but not what the records hold (an old bug lost it): taken as
            # the booking's event, or the next change would create a second one.
            drift.append(Drift("changed", booking_id, held.keeper, "not recorded"))
        elif held.fields:
            drift.append(Drift("changed", booking_id, held.keeper, ",".join(held.fields)))
        return drift


def compare(
    row: LinkRow,
    latest: Mapping[str, BookingEvent],
    recorded: Mapping[str, str],
    events: list[dict[str, Any]],
    others: Mapping[str, tuple[str, str | None]],
    *,
    deployment: str,
) -> list[Drift]:
    """What drifted on `row`'s calendar, all of it at once (no horizon). `latest`: the
    bookings that may concern the link (its activity's, and those it holds), by id;
    `recorded`: the event id the records hold per booking on this calendar; `events`: the
    calendar's events of `managed_by` ours (any link, any deployment); `others`: the other
    links of ours (this deployment's) named by events, id -> (state, calendar);
    `deployment`: our deployment id."""
    comparison = CalendarDrift(row, deployment=deployment)
    for booking_id, booking in latest.items():
        comparison.want(booking, recorded.get(booking_id))
    known = {b: KnownBooking(b, True, recorded.get(b)) for b in latest}
    comparison.compare_page(events, known, others)
    return comparison.finish()
