"""The sandbox keeps Google's event semantics (issue 24): `update` replaces the event (fields
not sent are gone, what Google keeps stays), `patch` merges (objects key by key, arrays
replaced, null deletes), both answer the full stored event; and insert, update and patch
refuse what Google refuses: colorId outside "1".."11", more than 5 reminder overrides, an
override's minutes outside 0..40320 or method not email/popup, default reminders with
overrides, a source URL not http(s), an unknown visibility. The batch endpoint takes PATCH
parts. Each test runs on a sandbox of its own, over HTTPS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httplib2
import pytest
from googleapiclient.discovery import build
from googleapiclient.http import BatchHttpRequest

from calsync_dev.sandbox import SandboxClient, SandboxHTTPServer, start_in_thread
from calsync_dev.sandbox.client import CalendarCaller

OWNER = "owner@example.com"
EVENTS = CalendarCaller.events_path(OWNER)


@pytest.fixture
def sandbox() -> Iterator[tuple[SandboxHTTPServer, SandboxClient]]:
    server = start_in_thread()
    client = SandboxClient(server.url, server.ca_file)
    client.add_account(OWNER, "1//refresh-owner")
    yield server, client
    server.shutdown()


@pytest.fixture
def google(sandbox: tuple[SandboxHTTPServer, SandboxClient]) -> CalendarCaller:
    _, client = sandbox
    return client.as_user(client.issue_access_token(OWNER)[0])


def full_event(**more: Any) -> dict[str, Any]:
    return {
        "summary": "Kayak Tour",
        "description": "Bring a towel",
        "location": "Harbour",
        "colorId": "5",
        "visibility": "private",
        "source": {"title": "booking", "url": "https://example.com/b/1"},
        "reminders": {"useDefault": False, "overrides": [{"method": "popup", "minutes": 30}]},
        "extendedProperties": {"private": {"link_id": "l1", "managed_by": "calsync"}},
        "attendees": [{"email": "a@example.com"}, {"email": "b@example.com"}],
        "start": {"dateTime": "2026-04-15T09:00:00Z"},
        "end": {"dateTime": "2026-04-15T11:00:00Z"},
        **more,
    }


def created(google: CalendarCaller, body: dict[str, Any]) -> dict[str, Any]:
    status, event = google.call("POST", EVENTS, body)
    assert status == 200, event
    return dict(event)


def stored(google: CalendarCaller, event_id: str) -> dict[str, Any]:
    status, event = google.call("GET", CalendarCaller.events_path(OWNER, event_id))
    assert status == 200, event
    return dict(event)


def test_update_replaces_the_event_keeping_only_what_google_keeps(google: CalendarCaller) -> None:
    before = created(google, full_event())
    assert before["creator"] == {"email": OWNER, "self": True}
    body = {
        "summary": "Kayak Tour (moved)",
        "start": {"dateTime": "2026-04-16T09:00:00Z"},
        "end": {"dateTime": "2026-04-16T11:00:00Z"},
    }
    status, answer = google.call("PUT", CalendarCaller.events_path(OWNER, before["id"]), body)
    assert status == 200
    assert answer == stored(google, before["id"])  # the full stored event
    for gone in ("description", "location", "colorId", "visibility", "source", "attendees"):
        assert gone not in answer, gone
    assert "extendedProperties" not in answer  # not sent: removed, private properties too
    assert answer["reminders"] == {"useDefault": True}  # Google's default when none is sent
    for kept in ("id", "created", "iCalUID", "htmlLink", "organizer", "creator", "kind"):
        assert answer[kept] == before[kept], kept
    assert answer["summary"] == "Kayak Tour (moved)" and answer["status"] == "confirmed"
    assert answer["sequence"] == before["sequence"] + 1 and answer["etag"] != before["etag"]


def test_patch_merges_objects_replaces_arrays_and_deletes_nulls(google: CalendarCaller) -> None:
    before = created(google, full_event())
    patch = {
        "summary": "Kayak Tour (patched)",
        "extendedProperties": {"private": {"link_id": "l2", "extra": "x"}},
        "attendees": [{"email": "c@example.com"}],
        "reminders": {"overrides": [{"method": "email", "minutes": 60}]},
        "location": None,
    }
    status, answer = google.call("PATCH", CalendarCaller.events_path(OWNER, before["id"]), patch)
    assert status == 200
    assert answer == stored(google, before["id"])  # the full stored event
    assert answer["summary"] == "Kayak Tour (patched)"
    assert answer["description"] == before["description"]  # untouched fields stay
    assert answer["colorId"] == "5" and answer["source"] == before["source"]
    # Objects merge key by key: managed_by stays, link_id changes, extra is added.
    assert answer["extendedProperties"] == {
        "private": {"link_id": "l2", "managed_by": "calsync", "extra": "x"}
    }
    # Arrays are replaced whole, inside a merged object too.
    assert answer["attendees"] == [{"email": "c@example.com"}]
    assert answer["reminders"] == {
        "useDefault": False,
        "overrides": [{"method": "email", "minutes": 60}],
    }
    assert "location" not in answer  # null deletes


BAD_BODIES = [
    pytest.param({"colorId": "0"}, "invalid", id="colorId-0"),
    pytest.param({"colorId": "12"}, "invalid", id="colorId-12"),
    pytest.param({"colorId": "blue"}, "invalid", id="colorId-word"),
    pytest.param({"colorId": 5}, "invalid", id="colorId-number"),
    pytest.param(
        {
            "reminders": {
                "useDefault": False,
                "overrides": [{"method": "popup", "minutes": m} for m in range(6)],
            }
        },
        "invalid",
        id="six-overrides",
    ),
    pytest.param(
        {"reminders": {"useDefault": False, "overrides": [{"method": "popup", "minutes": -1}]}},
        "invalid",
        id="minutes-negative",
    ),
    pytest.param(
        {"reminders": {"useDefault": False, "overrides": [{"method": "popup", "minutes": 40321}]}},
        "invalid",
        id="minutes-over-four-weeks",
    ),
    pytest.param(
        {"reminders": {"useDefault": False, "overrides": [{"method": "sms", "minutes": 10}]}},
        "invalid",
        id="method-sms",
    ),
    pytest.param(
        {"reminders": {"useDefault": False, "overrides": [{"method": "popup"}]}},
        "required",
        id="minutes-missing",
    ),
    pytest.param(
        {"reminders": {"useDefault": True, "overrides": [{"method": "popup", "minutes": 10}]}},
        "cannotUseDefaultRemindersAndSpecifyOverride",
        id="default-and-overrides",
    ),
    pytest.param({"source": {"url": "ftp://example.com/b/1"}}, "invalid", id="source-ftp"),
    pytest.param({"source": {"url": "javascript:alert(1)"}}, "invalid", id="source-javascript"),
    pytest.param({"source": {"url": "example.com/b/1"}}, "invalid", id="source-no-scheme"),
    pytest.param({"visibility": "secret"}, "invalid", id="visibility"),
]


@pytest.mark.parametrize("how", ["insert", "update", "patch"])
@pytest.mark.parametrize(("bad", "reason"), BAD_BODIES)
def test_insert_update_and_patch_refuse_what_google_refuses(
    google: CalendarCaller, how: str, bad: dict[str, Any], reason: str
) -> None:
    if how == "insert":
        status, body = google.call("POST", EVENTS, full_event(**bad))
    else:
        event = created(google, full_event())
        path = CalendarCaller.events_path(OWNER, event["id"])
        if how == "update":
            status, body = google.call("PUT", path, full_event(**bad))
        else:
            status, body = google.call("PATCH", path, bad)
    assert status == 400, body
    assert body["error"]["errors"][0]["reason"] == reason
    if how != "insert":  # a refused change leaves the event as it was
        assert stored(google, event["id"]) == event


GOOD_BODIES = [
    pytest.param({"colorId": "1"}, id="colorId-1"),
    pytest.param({"colorId": "11"}, id="colorId-11"),
    pytest.param(
        {
            "reminders": {
                "useDefault": False,
                "overrides": [{"method": "email", "minutes": m} for m in (0, 10, 60, 1440, 40320)],
            }
        },
        id="five-overrides-at-the-bounds",
    ),
    pytest.param({"reminders": {"useDefault": True}}, id="default-reminders"),
    pytest.param({"source": {"url": "http://example.com/b/1"}}, id="source-http"),
    pytest.param({"source": {"url": "HTTPS://example.com/b/1"}}, id="source-https"),
    *[
        pytest.param({"visibility": v}, id=f"visibility-{v}")
        for v in ("default", "public", "private", "confidential")
    ],
]


@pytest.mark.parametrize("good", GOOD_BODIES)
def test_what_google_accepts_is_accepted_by_insert_update_and_patch(
    google: CalendarCaller, good: dict[str, Any]
) -> None:
    event = created(google, full_event(**good))
    path = CalendarCaller.events_path(OWNER, event["id"])
    assert google.call("PUT", path, full_event(**good))[0] == 200
    assert google.call("PATCH", path, good)[0] == 200
    for key, value in good.items():
        assert stored(google, event["id"])[key] == value


def test_the_batch_endpoint_takes_patch_parts(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    server, _ = sandbox
    first, second = created(google, full_event()), created(google, full_event())
    http = httplib2.Http(timeout=30, ca_certs=str(server.ca_file))
    service = build(
        "calendar",
        "v3",
        http=http,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": server.url + "calendar/v3/"},
    )
    answers: dict[str, Any] = {}

    def answered(request_id: str, response: Any, exception: Exception | None) -> None:
        answers[request_id] = exception or response

    batch = BatchHttpRequest(callback=answered, batch_uri=server.url + "batch/calendar/v3")
    patches = {
        "ok": (first["id"], {"summary": "patched in a batch"}),
        "refused": (second["id"], {"colorId": "99"}),
    }
    for request_id, (event_id, body) in patches.items():
        request = service.events().patch(calendarId=OWNER, eventId=event_id, body=body)
        request.headers["authorization"] = f"Bearer {google.access_token}"
        batch.add(request, request_id=request_id)
    batch.execute(http=http)
    assert answers["ok"]["summary"] == "patched in a batch"
    assert answers["ok"]["description"] == first["description"]  # merged, not replaced
    assert stored(google, first["id"])["summary"] == "patched in a batch"
    refused = answers["refused"]
    assert refused.resp.status == 400
    assert json.loads(refused.content)["error"]["errors"][0]["reason"] == "invalid"
    assert stored(google, second["id"]) == second
