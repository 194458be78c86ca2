"""Reconcile's listing of a calendar's events of ours (consumer/adapters/google/calendar.py,
`managed_events_request`), as it goes to Google: from the horizon on (`timeMin`, which Google
applies to an event's end), in RFC 3339 with an offset, a page of 2,500 at a time. Built
from the client's bundled discovery document: nothing is sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

from consumer.adapters.google.calendar import managed_events_request, rfc3339
from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calendar
from consumer.settings import Settings


def query(page_token: str | None, time_min: datetime | None) -> dict[str, list[str]]:
    calendar = google_calendar(Settings(), Metrics())
    request = managed_events_request("owner@example.com", page_token, time_min)(
        calendar._resources  # the resources the adapter builds every request from
    )
    assert request.methodId == "calendar.events.list"
    return parse_qs(urlsplit(request.uri).query)


def test_the_listing_asks_for_events_that_end_after_the_horizon() -> None:
    since = datetime(2026, 11, 26, 20, 13, 40, 123456, tzinfo=UTC)
    asked = query(None, since)
    assert asked["timeMin"] == ["2026-11-26T20:13:40Z"]  # Google ignores fractions
    assert asked["privateExtendedProperty"] == ["managed_by=resytech"]
    assert asked["maxResults"] == ["2500"]
    assert "pageToken" not in asked


def test_the_next_page_keeps_the_horizon() -> None:
    asked = query("page-2", datetime(2026, 11, 26, tzinfo=UTC))
    assert asked["pageToken"] == ["page-2"] and asked["timeMin"] == ["2026-11-26T00:00:00Z"]


def test_without_a_horizon_nothing_is_filtered() -> None:
    assert "timeMin" not in query(None, None)


def test_a_moment_in_another_zone_is_said_in_utc() -> None:
    eastern = timezone(timedelta(hours=-5))
    assert rfc3339(datetime(2026, 11, 26, 15, 0, tzinfo=eastern)) == "2026-11-26T20:00:00Z"
