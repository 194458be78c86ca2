"""The sandbox's events.list as Google's "Synchronize resources efficiently" guide and the
events.list reference describe it, read conservatively: full listings paged with a
`nextSyncToken` on the last page only, incremental listings of every change since a token
(deleted events as `cancelled`), 410 `fullSyncRequired` for a void token, 400 for the
parameters a sync token forbids, and the filters of a full listing. Each test runs on a
sandbox of its own, over HTTPS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httplib2
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

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


def event(
    summary: str,
    start: str = "2026-04-15T09:00:00Z",
    end: str = "2026-04-15T10:00:00Z",
    **more: Any,
) -> dict[str, Any]:
    return {"summary": summary, "start": {"dateTime": start}, "end": {"dateTime": end}, **more}


def insert(google: CalendarCaller, body: dict[str, Any]) -> dict[str, Any]:
    status, created = google.call("POST", EVENTS, body)
    assert status == 200, created
    return dict(created)


def listing(google: CalendarCaller, **query: Any) -> dict[str, Any]:
    status, page = google.call("GET", EVENTS, query=query)
    assert status == 200, page
    return dict(page)


def all_pages(google: CalendarCaller, **query: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every page of a listing: its pages' answers, and whether each carried a nextPageToken
    or a nextSyncToken."""
    pages, marks = [], []
    while True:
        page = listing(google, **query)
        pages.append(page)
        marks.append(("nextPageToken" in page, "nextSyncToken" in page))
        if "nextPageToken" not in page:
            return pages, marks
        query["pageToken"] = page["nextPageToken"]


def error_of(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    return status, body["error"]["errors"][0]["reason"]


def test_a_full_listing_pages_and_only_its_last_page_carries_the_sync_token(
    google: CalendarCaller,
) -> None:
    ids = [
        insert(google, event(f"e{n}", f"2026-04-1{n}T09:00:00Z", f"2026-04-1{n}T10:00:00Z"))["id"]
        for n in range(5)
    ]
    pages, marks = all_pages(google, maxResults=2)
    assert marks == [(True, False), (True, False), (False, True)]
    assert [e["id"] for p in pages for e in p["items"]] == ids  # each once, by start
    # The default page is 250 and no page is ever larger than 2,500: asking for more is
    # answered as 2,500 (all five here), never refused.
    assert len(listing(google)["items"]) == 5
    assert len(listing(google, maxResults=100000)["items"]) == 5
    assert error_of(google.call("GET", EVENTS, query={"maxResults": 0})) == (400, "invalid")


def test_an_incremental_listing_holds_each_change_since_the_token_once_in_its_current_state(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    _, admin = sandbox
    kept = insert(google, event("kept"))
    edited = insert(google, event("edited"))
    removed = insert(google, event("removed"))
    by_hand = insert(google, event("deleted by a person"))
    token = listing(google)["nextSyncToken"]
    assert listing(google, syncToken=token)["items"] == []  # nothing changed yet

    assert (
        google.call("PATCH", CalendarCaller.events_path(OWNER, edited["id"]), {"summary": "v2"})[0]
        == 200
    )
    assert (
        google.call("PUT", CalendarCaller.events_path(OWNER, edited["id"]), event("v3"))[0] == 200
    )
    assert google.call("DELETE", CalendarCaller.events_path(OWNER, removed["id"]))[0] == 204
    added = insert(google, event("added"))
    admin.edit_by_hand(OWNER, OWNER, kept["id"], summary="renamed by a person")
    admin.delete_by_hand(OWNER, OWNER, by_hand["id"])
    planted = admin.plant_event(OWNER, OWNER, event("planted"))

    answer = listing(google, syncToken=token)
    items = {e["id"]: e for e in answer["items"]}
    assert len(answer["items"]) == len(items) == 6  # each changed event once
    assert set(items) == {
        kept["id"],
        edited["id"],
        removed["id"],
        added["id"],
        by_hand["id"],
        planted["id"],
    }
    assert items[edited["id"]]["summary"] == "v3"  # its current state, not its history
    assert items[kept["id"]]["summary"] == "renamed by a person"
    # Deleted events come back cancelled, without showDeleted, and (Google guarantees no
    # more) with little but their id.
    for gone in (removed["id"], by_hand["id"]):
        assert items[gone]["status"] == "cancelled"
        assert "summary" not in items[gone]
    assert "nextPageToken" not in answer and "nextSyncToken" in answer
    # The next token goes on from there: nothing new since.
    assert listing(google, syncToken=answer["nextSyncToken"])["items"] == []
    # An old token stays good until voided: it still answers the same changes.
    assert {e["id"] for e in listing(google, syncToken=token)["items"]} == set(items)


def test_an_incremental_listing_pages_too_and_a_change_made_while_paging_comes_next_time(
    google: CalendarCaller,
) -> None:
    token = listing(google)["nextSyncToken"]
    created = [insert(google, event(f"n{n}"))["id"] for n in range(5)]
    first = listing(google, syncToken=token, maxResults=2)
    assert "nextPageToken" in first and "nextSyncToken" not in first
    late = insert(google, event("made while paging"))["id"]  # after the first page
    pages, marks = [first], [(True, False)]
    query: dict[str, Any] = {
        "syncToken": token,
        "maxResults": 2,
        "pageToken": first["nextPageToken"],
    }
    while True:
        page = listing(google, **query)
        pages.append(page)
        marks.append(("nextPageToken" in page, "nextSyncToken" in page))
        if "nextPageToken" not in page:
            break
        query["pageToken"] = page["nextPageToken"]
    assert marks == [(True, False), (True, False), (False, True)]
    assert [e["id"] for p in pages for e in p["items"]] == created
    # The listing's token stands where its first page stood: the late event comes next.
    following = listing(google, syncToken=pages[-1]["nextSyncToken"])
    assert [e["id"] for e in following["items"]] == [late]


def test_a_void_or_expired_sync_token_answers_410_full_sync_required_in_googles_words(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    _, admin = sandbox
    insert(google, event("one"))
    token = listing(google)["nextSyncToken"]
    assert admin.void_sync_tokens(OWNER) == 1
    status, body = google.call("GET", EVENTS, query={"syncToken": token})
    assert status == 410
    assert body == {
        "error": {
            "errors": [
                {
                    "domain": "calendar",
                    "reason": "fullSyncRequired",
                    "message": "Sync token is no longer valid, a full sync is required.",
                    "locationType": "parameter",
                    "location": "syncToken",
                }
            ],
            "code": 410,
            "message": "Sync token is no longer valid, a full sync is required.",
        }
    }
    # A full sync gets a token that works again.
    fresh = listing(google)["nextSyncToken"]
    assert listing(google, syncToken=fresh)["items"] == []
    # A page token of an incremental listing dies with its sync token.
    for n in range(3):
        insert(google, event(f"more{n}"))
    first = listing(google, syncToken=fresh, maxResults=1)
    admin.void_sync_tokens(OWNER, OWNER)
    assert error_of(
        google.call(
            "GET",
            EVENTS,
            query={"syncToken": fresh, "pageToken": first["nextPageToken"], "maxResults": 1},
        )
    ) == (410, "fullSyncRequired")
    # "changes in related ACLs" void tokens too: the calendar shared with someone.
    fresh = listing(google)["nextSyncToken"]
    admin.share_calendar(OWNER, OWNER, "manager@example.com", "writer")
    assert error_of(google.call("GET", EVENTS, query={"syncToken": fresh})) == (
        410,
        "fullSyncRequired",
    )
    # A token past its lifetime, when the sandbox gives tokens one.
    fresh = listing(google)["nextSyncToken"]
    admin.configure(sync_token_lifetime_s=0)
    assert error_of(google.call("GET", EVENTS, query={"syncToken": fresh})) == (
        410,
        "fullSyncRequired",
    )
    # A token that is not one is a bad request, not a reason to resync.
    admin.configure(sync_token_lifetime_s=None)
    assert error_of(google.call("GET", EVENTS, query={"syncToken": "not-a-token"})) == (
        400,
        "invalid",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("iCalUID", "x@google.com"),
        ("orderBy", "updated"),
        ("privateExtendedProperty", "link_id=l1"),
        ("q", "kayak"),
        ("sharedExtendedProperty", "a=b"),
        ("timeMin", "2026-01-01T00:00:00Z"),
        ("timeMax", "2026-12-01T00:00:00Z"),
        ("updatedMin", "2026-01-01T00:00:00Z"),
        ("showDeleted", "false"),
    ],
)
def test_a_sync_token_with_a_forbidden_parameter_is_400(
    google: CalendarCaller, name: str, value: str
) -> None:
    token = listing(google)["nextSyncToken"]
    status, body = google.call("GET", EVENTS, query={"syncToken": token, name: value})
    assert status == 400
    assert body["error"]["errors"][0]["reason"] == "syncTokenWithRequestRestrictions"
    assert body["error"]["message"] == "Sync token cannot be used with other request restrictions."
    # What a sync token does allow: showDeleted=true, singleEvents, maxResults, fields.
    allowed = {"syncToken": token, "showDeleted": "true", "singleEvents": "true", "maxResults": 5}
    assert google.call("GET", EVENTS, query=allowed)[0] == 200


def test_a_full_listing_filters_on_end_after_time_min_start_before_time_max_and_properties(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    _, admin = sandbox
    morning = insert(google, event("morning", "2026-04-15T08:00:00Z", "2026-04-15T10:00:00Z"))
    noon = insert(google, event("noon", "2026-04-15T12:00:00Z", "2026-04-15T13:00:00Z"))
    all_day = insert(
        google,
        {"summary": "all day", "start": {"date": "2026-04-16"}, "end": {"date": "2026-04-17"}},
    )

    def ids(**query: Any) -> set[str]:
        return {e["id"] for e in listing(google, **query)["items"]}

    # timeMin: exclusive lower bound of the END (an event ending at timeMin is out).
    assert ids(timeMin="2026-04-15T10:00:00Z") == {noon["id"], all_day["id"]}
    assert ids(timeMin="2026-04-15T09:59:59Z") == {morning["id"], noon["id"], all_day["id"]}
    # timeMax: exclusive upper bound of the START (an event starting at timeMax is out).
    assert ids(timeMax="2026-04-15T12:00:00Z") == {morning["id"]}
    assert ids(timeMin="2026-04-15T12:00:00+02:00", timeMax="2026-04-16T00:00:01Z") == {
        noon["id"],
        all_day["id"],
    }
    assert error_of(google.call("GET", EVENTS, query={"timeMin": "2026-04-15"})) == (
        400,
        "badRequest",
    )
    assert error_of(
        google.call(
            "GET",
            EVENTS,
            query={"timeMin": "2026-04-16T00:00:00Z", "timeMax": "2026-04-15T00:00:00Z"},
        )
    ) == (400, "timeRangeEmpty")

    # privateExtendedProperty: repeatable, every constraint must hold.
    both = insert(
        google,
        event("both", extendedProperties={"private": {"link_id": "l1", "managed_by": "calsync"}}),
    )
    one = insert(google, event("one", extendedProperties={"private": {"link_id": "l1"}}))
    assert ids(privateExtendedProperty="link_id=l1") == {both["id"], one["id"]}
    status, page = google.call(
        "GET",
        EVENTS,
        query=[
            ("privateExtendedProperty", "link_id=l1"),
            ("privateExtendedProperty", "managed_by=calsync"),
        ],
    )
    assert status == 200 and [e["id"] for e in page["items"]] == [both["id"]]

    # Deleted events: out unless showDeleted; updatedMin brings back those deleted since.
    stamp = listing(google)["updated"]
    admin.delete_by_hand(OWNER, OWNER, noon["id"])
    assert noon["id"] not in ids()
    assert noon["id"] in ids(showDeleted="true")
    assert ids(updatedMin=stamp) == {noon["id"]}


def test_ordered_listings_end_without_a_sync_token_and_an_order_by_start_needs_single_events(
    google: CalendarCaller,
) -> None:
    insert(google, event("one"))
    assert "nextSyncToken" not in listing(google, orderBy="updated")
    assert "nextSyncToken" not in listing(google, orderBy="startTime", singleEvents="true")
    status, body = google.call("GET", EVENTS, query={"orderBy": "startTime"})
    assert status == 400
    assert body["error"]["errors"][0]["message"] == (
        "The requested ordering is not available for the particular query."
    )


@pytest.mark.parametrize("filtered_sync_token", ["given", "withheld"])
def test_a_filtered_full_listing_gives_an_unfiltered_token_or_none_as_configured(
    sandbox: tuple[SandboxHTTPServer, SandboxClient],
    google: CalendarCaller,
    filtered_sync_token: str,
) -> None:
    _, admin = sandbox
    admin.configure(filtered_sync_token=filtered_sync_token)
    mine = {"private": {"managed_by": "calsync"}}
    insert(google, event("ours", extendedProperties=mine))
    page = listing(google, privateExtendedProperty="managed_by=calsync")
    if filtered_sync_token == "withheld":
        assert "nextSyncToken" not in page
        return
    token = page["nextSyncToken"]
    theirs = insert(google, event("someone else's"))  # not matching the full listing's filter
    ours = insert(google, event("ours too", extendedProperties=mine))
    # The increments are every change to the calendar: the client filters them itself.
    assert {e["id"] for e in listing(google, syncToken=token)["items"]} == {
        theirs["id"],
        ours["id"],
    }


@pytest.mark.parametrize("cancelled_in_list", ["minimal", "full"])
def test_a_deleted_event_in_a_listing_is_minimal_or_full_as_configured(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller, cancelled_in_list: str
) -> None:
    _, admin = sandbox
    admin.configure(cancelled_in_list=cancelled_in_list)
    gone = insert(google, event("gone", description="details"))
    token = listing(google)["nextSyncToken"]
    assert google.call("DELETE", CalendarCaller.events_path(OWNER, gone["id"]))[0] == 204
    [item] = listing(google, syncToken=token)["items"]
    assert item["id"] == gone["id"] and item["status"] == "cancelled"
    if cancelled_in_list == "minimal":
        assert set(item) <= {"kind", "etag", "id", "status", "updated"}
    else:
        assert item["summary"] == "gone" and item["description"] == "details"
    # events.get shows a deleted event whole either way.
    status, got = google.call("GET", CalendarCaller.events_path(OWNER, gone["id"]))
    assert status == 200 and got["status"] == "cancelled" and got["summary"] == "gone"


def test_pages_may_hold_fewer_events_than_asked_for(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    _, admin = sandbox
    for n in range(4):
        insert(google, event(f"e{n}"))
    admin.configure(max_page_items=1)
    pages, marks = all_pages(google, maxResults=2500)
    assert [len(p["items"]) for p in pages] == [1, 1, 1, 1]
    assert marks[-1] == (False, True) and all(m == (True, False) for m in marks[:-1])


def test_googles_client_library_syncs_against_the_sandbox_and_sees_the_410(
    sandbox: tuple[SandboxHTTPServer, SandboxClient], google: CalendarCaller
) -> None:
    server, admin = sandbox
    http = httplib2.Http(timeout=30, ca_certs=str(server.ca_file))
    service = build(
        "calendar",
        "v3",
        http=http,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": server.url + "calendar/v3/"},
    )

    def execute(request: Any) -> Any:
        request.headers["authorization"] = f"Bearer {google.access_token}"
        return request.execute(http=http)

    first = insert(google, event("first"))
    full = execute(service.events().list(calendarId=OWNER))
    assert [e["id"] for e in full["items"]] == [first["id"]]
    second = insert(google, event("second"))
    changes = execute(service.events().list(calendarId=OWNER, syncToken=full["nextSyncToken"]))
    assert [e["id"] for e in changes["items"]] == [second["id"]]
    admin.void_sync_tokens(OWNER)
    with pytest.raises(HttpError) as refused:
        execute(service.events().list(calendarId=OWNER, syncToken=changes["nextSyncToken"]))
    assert refused.value.resp.status == 410
    assert json.loads(refused.value.content)["error"]["errors"][0]["reason"] == "fullSyncRequired"
