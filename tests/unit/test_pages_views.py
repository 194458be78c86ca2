"""The pages' pure parts: content negotiation, backfill progress, calendar choices, safe
redirects, page tokens. (Over HTTP and in a browser: tests/e2e.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumer.adapters.crypto import TokenCipher
from consumer.domain.errors import TokenRefused
from consumer.domain.records import Backfill, CalendarInfo
from consumer.entrypoints.web import views
from consumer.entrypoints.web.security import PageSigner

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
KEY = TokenCipher.generate_key()


# --- pure parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("", False),
        ("*/*", False),  # curl, HTTP libraries
        ("application/json", False),
        ("application/json, text/html", False),  # a tie keeps JSON
        ("text/html", True),
        (BROWSER_ACCEPT, True),  # Chromium, Firefox
        ("text/html;q=0.5, application/json", False),
        ("application/json;q=0.1, text/*", True),
        ("text/html;q=0", False),
        ("application/problem+json", False),
    ],
)
def test_content_negotiation(accept: str | None, html: bool) -> None:
    assert views.prefers_html(accept) is html


T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def backfill(**changes: Any) -> Backfill:
    fields: dict[str, Any] = dict(
        id=7,
        link_id="lnk_1",
        calendar_id="cal",
        calendar_name="Bookings",
        trigger="select",
        total=100,
        done=25,
        counts={"bookings": 100, "applied": 25},
        started_at=T0,
        updated_at=T0 + timedelta(seconds=5),
        finished_at=None,
        error=None,
        now=T0 + timedelta(seconds=5),
    )
    fields.update(changes)
    return Backfill(**fields)


@pytest.mark.parametrize(
    ("record", "status", "rate", "end", "text"),
    [
        (
            backfill(),
            "running",
            5.0,
            T0 + timedelta(seconds=20),
            "25 of 100 bookings, 5 per second, about 15 s left.",
        ),
        (backfill(done=0, counts={"bookings": 100}), "running", None, None, "0 of 100 bookings."),
        (
            backfill(total=None, done=0, counts={}),
            "running",
            None,
            None,
            "Finding the bookings to catch up…",
        ),
        (
            backfill(
                done=100,
                counts={"bookings": 100, "applied": 98, "failed": 2},
                finished_at=T0 + timedelta(seconds=40),
            ),
            "finished",
            2.5,
            None,
            "Done: 100 bookings in 40 s (98 applied, 2 failed).",
        ),
        (
            backfill(total=0, done=0, counts={"bookings": 0}, finished_at=T0),
            "finished",
            None,
            None,
            "Nothing to catch up: the calendar already matches the bookings.",
        ),
        (
            backfill(
                finished_at=T0 + timedelta(seconds=5), error="interrupted: the service stopped"
            ),
            "failed",
            5.0,
            None,
            "Stopped after 25 of 100 bookings: interrupted: the service stopped",
        ),
        (
            backfill(now=T0 + timedelta(seconds=60)),
            "stalled",
            25 / 60,
            None,
            "No progress for a while after 25 of 100 bookings: the service that ran it may have "
            "stopped.",
        ),
    ],
)
def test_backfill_progress(
    record: Backfill, status: str, rate: float | None, end: datetime | None, text: str
) -> None:
    view = views.progress(record)
    assert view["status"] == status
    assert view["rate_per_s"] == (round(rate, 2) if rate is not None else None)
    assert view["estimated_end"] == (end.isoformat() if end else None)
    assert views.progress_text(view) == text
    json.dumps(view)  # what the progress page's script polls


def test_calendar_choices_say_why_a_calendar_cannot_be_chosen() -> None:
    calendars = [
        CalendarInfo("a", "Owner", True, True, "owner"),
        CalendarInfo("b", "Team", False, True, "writer"),
        CalendarInfo("c", "Holidays", False, False, "reader"),
        CalendarInfo("d", "Shared", False, True, "writer"),
    ]
    taken = {"b": ("lnk_1", "me@example.com"), "d": ("lnk_2", "boss@example.com")}
    choices = {c["id"]: c for c in views.calendar_choices(calendars, taken, "me@example.com")}
    assert choices["a"]["selectable"] and choices["a"]["primary"] and choices["a"]["why"] is None
    assert not choices["b"]["selectable"]
    assert choices["b"]["why"].startswith("Already synced by this activity's link lnk_1:")
    assert "(through boss@example.com)" in choices["d"]["why"]
    assert not choices["c"]["selectable"] and "“reader”" in choices["c"]["why"]


@pytest.mark.parametrize(
    ("candidate", "target"),
    [
        ("/activities/a/links", "/activities/a/links"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("activities", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
    ],
)
def test_redirects_after_sign_in_stay_on_this_site(candidate: str | None, target: str) -> None:
    assert views.local_path(candidate, "/") == target


def test_page_tokens_are_bound_to_their_link_browser_and_admin_token() -> None:
    signer = PageSigner([KEY], "admin", form_ttl_s=600, view_ttl_s=600, session_ttl_s=600)
    token = signer.form_token("lnk_1", "browser-1")
    read = signer.read_form_token(token, "lnk_1", "browser-1")
    assert read.link_id == "lnk_1" and read.jti
    assert (
        signer.read_form_token(signer.form_token("lnk_1", "browser-1"), "lnk_1", "browser-1").jti
        != read.jti
    )  # each form its own id
    for link, binding, problem in (
        ("lnk_2", "browser-1", "form_invalid"),
        ("lnk_1", "browser-2", "form_not_this_browser"),
        ("lnk_1", None, "form_not_this_browser"),
    ):
        with pytest.raises(TokenRefused) as refused:
            signer.read_form_token(token, link, binding)
        assert refused.value.problem == problem
    with pytest.raises(TokenRefused):
        signer.read_form_token(token[:-2] + "xx", "lnk_1", "browser-1")
    other_key = PageSigner([TokenCipher.generate_key()], "admin", 600, 600, 600)
    with pytest.raises(TokenRefused):
        other_key.read_form_token(token, "lnk_1", "browser-1")
    assert signer.can_view(signer.view_token([3, 1]), [1, 3])
    assert not signer.can_view(signer.view_token([1]), [1, 3])
    assert not signer.can_view(None, [1])
    cookie, session = signer.new_session()
    assert signer.read_session(cookie) == session
    assert signer.read_session(cookie + "x") is None
    # A new admin token signs every session out.
    assert PageSigner([KEY], "new-admin", 600, 600, 600).read_session(cookie) is None
    # Each session has its own id (what `page_sessions` records and signing out deletes);
    # a cookie signed before sessions had ids names none, and is no session.
    assert session.id and session.id != signer.new_session()[1].id
    legacy = signer._sessions.dumps({"c": "csrf", "a": signer._admin})
    assert signer.read_session(legacy) is None


@pytest.mark.parametrize("problem", ["calendar_taken", "disconnect_in_progress"])
def test_an_owner_refusal_reads_as_a_sentence_with_something_to_do(problem: str) -> None:
    """The CLI's and the API's message starts with the problem's name (for terminals and
    programs); a person on the pages reads it without, with what to do next."""
    detail = f"{problem}: link lnk_1 of this activity already has calendar 'c'"
    assert (
        views.for_people(detail, problem) == "link lnk_1 of this activity already has calendar 'c'"
    )
    assert views.for_people("no prefix here", problem) == "no prefix here"
    trouble = views.trouble(problem, 409)
    assert trouble.title != "This request could not be done" and trouble.advice
