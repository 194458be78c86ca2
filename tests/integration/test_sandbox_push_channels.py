"""The sandbox's push channels as the Calendar API's "Push notifications" guide describes them:
events.watch answers the channel, then a `sync` message and an `exists` one per change (by
any writer) reach a receiver over HTTPS, with Google's headers and message numbers, from a
background thread; expiry and channels.stop end them; delivery faults (late, twice, never)
are switchable; the refusals users report. Each test runs on a sandbox of its own and
receives with a small HTTPS server whose certificate comes from the sandbox's CA."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from calsync_dev.sandbox import (
    NotificationReceiver,
    SandboxClient,
    SandboxHTTPServer,
    start_in_thread,
)
from calsync_dev.sandbox.client import CalendarCaller

OWNER = "owner@example.com"
EVENTS = CalendarCaller.events_path(OWNER)
WATCH = CalendarCaller.events_path(OWNER, "watch")


@pytest.fixture
def sandbox() -> Iterator[tuple[SandboxHTTPServer, SandboxClient]]:
    server = start_in_thread()
    client = SandboxClient(server.url, server.ca_file)
    client.add_account(OWNER, "1//refresh-owner")
    yield server, client
    server.shutdown()


@pytest.fixture
def admin(sandbox: tuple[SandboxHTTPServer, SandboxClient]) -> SandboxClient:
    return sandbox[1]


@pytest.fixture
def google(admin: SandboxClient) -> CalendarCaller:
    return admin.as_user(admin.issue_access_token(OWNER)[0])


@pytest.fixture
def receiver(admin: SandboxClient) -> Iterator[NotificationReceiver]:
    with NotificationReceiver(admin) as running:
        yield running


def event(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "start": {"dateTime": "2026-04-15T09:00:00Z"},
        "end": {"dateTime": "2026-04-15T10:00:00Z"},
    }


def watch(google: CalendarCaller, address: str, **more: Any) -> dict[str, Any]:
    body = {"id": str(uuid.uuid4()), "type": "web_hook", "address": address, **more}
    status, channel = google.call("POST", WATCH, body)
    assert status == 200, channel
    return dict(channel)


def error_of(answer: tuple[int, Any]) -> tuple[int, str]:
    status, body = answer
    return status, body["error"]["errors"][0]["reason"]


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Wait for what the sandbox records once a receiver has answered (the receiver sees a
    message before the sandbox has its answer)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def counts(admin: SandboxClient, channel: dict[str, Any]) -> dict[str, int]:
    return dict(admin.channel(channel["id"])["counts"])


def test_a_channel_gets_sync_first_then_exists_on_every_change_by_anyone(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    channel = watch(google, receiver.url, token="secret-of-this-channel")
    assert channel["kind"] == "api#channel" and channel["token"] == "secret-of-this-channel"
    assert channel["resourceUri"].endswith(
        "/calendar/v3/calendars/owner%40example.com/events?alt=json"
    )
    assert isinstance(channel["expiration"], str)  # int64 as Google's JSON writes it
    expires_in = int(channel["expiration"]) / 1000 - time.time()
    assert 604700 < expires_in <= 604800  # no expiration asked: ttl's default, one week
    receiver.wait_for(lambda got: len(got) == 1)

    created = google.call("POST", EVENTS, event("by the API"))[1]
    path = CalendarCaller.events_path(OWNER, created["id"])
    google.call("PATCH", path, {"summary": "patched"})
    google.call("PUT", path, event("updated"))
    google.call("DELETE", path)
    planted = admin.plant_event(OWNER, OWNER, event("by someone else"))
    admin.edit_by_hand(OWNER, OWNER, planted["id"], summary="edited by a person")
    admin.delete_by_hand(OWNER, OWNER, planted["id"])
    got = receiver.wait_for(lambda got: len(got) == 8)

    assert [n.state for n in got] == ["sync"] + ["exists"] * 7
    assert got[0].number == 1  # "Sync messages always have an X-Goog-Message-Number of 1"
    numbers = [n.number for n in got]
    assert numbers == sorted(numbers) and len(set(numbers)) == 8  # increasing ...
    assert numbers != list(range(1, 9))  # ... "though the message numbers will not be sequential"
    for notification in got:
        assert notification.channel_id == channel["id"]
        assert notification.token == "secret-of-this-channel"
        assert notification.resource_id == channel["resourceId"]
        assert notification.resource_uri == channel["resourceUri"]
        assert notification.body == b""
        assert notification.user_agent.startswith("APIs-Google")
        # Human-readable, e.g. "Tue, 19 Nov 2013 01:13:52 GMT", the channel's expiration.
        assert notification.expiration is not None and notification.expiration.endswith(" GMT")
    eventually(lambda: counts(admin, channel).get("delivered") == 8, "8 delivered")
    assert counts(admin, channel)["sync"] == 1 and counts(admin, channel)["exists"] == 7


def test_message_numbers_are_sequential_when_configured(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    admin.configure_notifications(sequential_numbers=True)
    watch(google, receiver.url)
    for n in range(3):
        google.call("POST", EVENTS, event(f"e{n}"))
    got = receiver.wait_for(lambda got: len(got) == 4)
    assert [n.number for n in got] == [1, 2, 3, 4]
    assert got[0].token is None  # no token asked for: no X-Goog-Channel-Token header


def test_notifications_never_delay_the_api_answer(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    receiver.hold()  # the receiver takes its time: it answers nothing until released
    channel = watch(google, receiver.url)  # answered although the sync message waits
    status, _ = google.call("POST", EVENTS, event("while the receiver is stuck"))
    assert status == 200  # answered while the receiver still holds the sync message
    assert admin.channel(channel["id"])["counts"].get("delivered", 0) == 0
    receiver.release()
    got = receiver.wait_for(lambda got: len(got) == 2)
    assert [n.state for n in got] == ["sync", "exists"]


def test_a_channel_on_a_shared_calendar_hears_the_other_account_until_the_calendar_leaves_its_list(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    manager = "manager@example.com"
    admin.share_calendar(OWNER, OWNER, manager, "writer")
    as_manager = admin.as_user(admin.issue_access_token(manager)[0])
    channel = watch(as_manager, receiver.url)  # the manager watches the owner's calendar
    google.call("POST", EVENTS, event("written by the owner"))
    receiver.wait_for(lambda got: [n.state for n in got] == ["sync", "exists"])
    admin.remove_calendar(manager, OWNER)  # unsubscribed: the channel goes silent
    google.call("POST", EVENTS, event("after the manager left"))
    assert admin.channel(channel["id"])["counts"]["exists"] == 1


def test_stop_ends_a_channel_and_only_its_maker_can_stop_it(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    channel = watch(google, receiver.url)
    receiver.wait_for(lambda got: len(got) == 1)
    stop = {"id": channel["id"], "resourceId": channel["resourceId"]}
    admin.add_account("other@example.com", "1//refresh-other")
    other = admin.as_user(admin.issue_access_token("other@example.com")[0])
    assert error_of(other.call("POST", "channels/stop", stop)) == (404, "notFound")
    wrong_resource = {"id": channel["id"], "resourceId": "not-the-resource"}
    assert error_of(google.call("POST", "channels/stop", wrong_resource)) == (404, "notFound")
    unknown = {"id": "no-such-channel", "resourceId": channel["resourceId"]}
    status, body = google.call("POST", "channels/stop", unknown)
    assert status == 404 and body["error"]["message"].startswith(
        "Channel 'no-such-channel' not found"
    )

    assert google.call("POST", "channels/stop", stop) == (204, None)
    google.call("POST", EVENTS, event("after the stop"))
    assert admin.channel(channel["id"])["status"] == "stopped"
    assert admin.channel(channel["id"])["counts"].get("exists", 0) == 0
    assert len(receiver.notifications) == 1
    assert error_of(google.call("POST", "channels/stop", stop)) == (404, "notFound")  # twice
    # Its id stays taken: a renewal needs a new one.
    again = {"id": channel["id"], "type": "web_hook", "address": receiver.url}
    assert error_of(google.call("POST", WATCH, again)) == (400, "channelIdNotUnique")


def test_a_channel_expires_when_asked_and_sends_nothing_after(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    short = watch(google, receiver.url, params={"ttl": "2"})
    assert int(short["expiration"]) / 1000 - time.time() <= 2
    receiver.wait_for(lambda got: len(got) == 1)
    time.sleep(max(0.0, int(short["expiration"]) / 1000 - time.time()) + 0.05)
    google.call("POST", EVENTS, event("after the expiry"))
    assert admin.channel(short["id"])["status"] == "expired"
    assert admin.channel(short["id"])["counts"].get("exists", 0) == 0
    # The admin's shortcut: expire a channel now.
    long = watch(google, receiver.url)
    admin.expire_channel(long["id"])
    google.call("POST", EVENTS, event("after the admin's expiry"))
    assert admin.channel(long["id"])["counts"].get("exists", 0) == 0
    assert error_of(
        google.call("POST", "channels/stop", {"id": long["id"], "resourceId": long["resourceId"]})
    ) == (404, "notFound")


def test_the_channels_life_is_the_most_restrictive_of_asked_ttl_and_the_cap(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    now_ms = time.time() * 1000
    asked = watch(google, receiver.url, expiration=str(int(now_ms + 3_600_000)))
    assert abs(int(asked["expiration"]) - (now_ms + 3_600_000)) < 5_000
    both = watch(google, receiver.url, expiration=int(now_ms + 3_600_000), params={"ttl": "60"})
    assert int(both["expiration"]) - now_ms < 65_000
    capped = watch(google, receiver.url, expiration=int(now_ms + 90 * 86_400_000))
    assert int(capped["expiration"]) - now_ms <= 604_800_000 + 5_000  # one week at most
    admin.configure(channel_max_ttl_s=None, channel_expiration_json="number")
    free = watch(google, receiver.url, expiration=int(now_ms + 90 * 86_400_000))
    assert isinstance(free["expiration"], int) and free["expiration"] > now_ms + 89 * 86_400_000
    past = {"id": "in-the-past", "type": "web_hook", "address": receiver.url, "expiration": 1000}
    assert error_of(google.call("POST", WATCH, past)) == (400, "invalid")


def test_watch_refuses_what_google_refuses(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    def refused(**body: Any) -> tuple[int, str]:
        return error_of(
            google.call("POST", WATCH, {"type": "web_hook", "address": receiver.url, **body})
        )

    assert refused() == (400, "required")  # no id
    assert refused(id="x" * 65) == (400, "invalid")
    assert refused(id="c1", type="email") == (400, "push.channelTypeNotSupported")
    assert refused(id="c1", address="not a url") == (400, "push.webhookUrlNoHostOrAddress")
    status, body = google.call(
        "POST", WATCH, {"id": "c1", "type": "web_hook", "address": "http://example.com/hook"}
    )
    assert status == 400 and body["error"]["errors"][0]["reason"] == "push.webhookUrlNotHttps"
    assert body["error"]["message"] == "WebHook callback must be HTTPS: http://example.com/hook"
    assert refused(id="c1", token="t" * 257) == (400, "invalid")
    status, body = google.call(
        "POST",
        CalendarCaller.events_path("nobody@example.com", "watch"),
        {"id": "c1", "type": "web_hook", "address": receiver.url},
    )
    assert (status, body["error"]["errors"][0]["reason"]) == (404, "notFound")
    assert admin.channels() == []  # none of those made a channel
    # "webhook" is the other accepted spelling of the type.
    assert watch(google, receiver.url, type="webhook")["kind"] == "api#channel"


def test_plain_http_goes_to_a_loopback_receiver_only_when_allowed(
    admin: SandboxClient, google: CalendarCaller
) -> None:
    with NotificationReceiver(admin, https=False) as plain:
        assert plain.url.startswith("http://127.0.0.1:")
        hook = {"id": "plain", "type": "web_hook", "address": plain.url}
        assert error_of(google.call("POST", WATCH, hook)) == (400, "push.webhookUrlNotHttps")
        assert admin.config()["allow_http_notifications"] is False  # Google's: https only
        admin.configure(allow_http_notifications=True)
        assert admin.config()["notifications"]["allow_http"] is True
        remote = {"id": "remote", "type": "web_hook", "address": "http://example.com/hook"}
        assert error_of(google.call("POST", WATCH, remote)) == (400, "push.webhookUrlNotHttps")
        watch(google, plain.url)
        google.call("POST", EVENTS, event("heard over plain http"))
        assert [n.state for n in plain.wait_for(lambda got: len(got) == 2)] == ["sync", "exists"]


def test_a_receiver_whose_certificate_the_sandbox_does_not_trust_gets_nothing(
    admin: SandboxClient, google: CalendarCaller
) -> None:
    """Google "is able to send notifications to this HTTPS address only if there's a valid
    SSL certificate": one from a CA it does not trust gets no message."""
    stranger = trustme.CA().issue_cert("127.0.0.1")
    certificate = (
        "".join(b.bytes().decode() for b in stranger.cert_chain_pems),
        stranger.private_key_pem.bytes().decode(),
    )
    with NotificationReceiver(admin, certificate=certificate) as untrusted:
        channel = watch(google, untrusted.url)
        google.call("POST", EVENTS, event("lost"))
        eventually(lambda: counts(admin, channel).get("failed") == 2, "two failed deliveries")
        assert untrusted.notifications == []
        assert counts(admin, channel).get("delivered", 0) == 0


def test_faults_drop_duplicate_and_delay_notifications(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    admin.configure_notifications(drop_rate=1.0)
    dropped = watch(google, receiver.url)
    google.call("POST", EVENTS, event("never heard of"))
    assert counts(admin, dropped)["dropped"] == 2 and "sent" not in counts(admin, dropped)
    stop = {"id": dropped["id"], "resourceId": dropped["resourceId"]}
    assert google.call("POST", "channels/stop", stop)[0] == 204

    admin.configure_notifications(drop_rate=0.0, duplicate_rate=1.0, sequential_numbers=True)
    doubled = watch(google, receiver.url)
    google.call("POST", EVENTS, event("heard twice"))
    receiver.wait_for(lambda got: len(got) == 4)
    heard = sorted((n.state, n.number) for n in receiver.of(doubled["id"]))
    assert heard == [("exists", 2), ("exists", 2), ("sync", 1), ("sync", 1)]  # the same twice
    assert receiver.of(dropped["id"]) == []

    admin.configure_notifications(duplicate_rate=0.0, delay_s=0.5)
    asked_at = time.time()
    late = watch(google, receiver.url)
    receiver.wait_for(lambda got: any(n.channel_id == late["id"] for n in got))
    assert receiver.of(late["id"])[0].received_at - asked_at >= 0.45  # late, as configured


def test_a_failed_delivery_is_lost_unless_retries_are_configured(
    admin: SandboxClient, google: CalendarCaller, receiver: NotificationReceiver
) -> None:
    receiver.status = 503
    lost = watch(google, receiver.url)
    eventually(lambda: counts(admin, lost).get("failed") == 1, "the failed delivery")
    time.sleep(0.3)  # room for a resend that must not come
    assert len(receiver.of(lost["id"])) == 1 and "retried" not in counts(admin, lost)

    admin.configure_notifications(retries=2, retry_backoff_s=0.05)
    retried = watch(google, receiver.url)
    eventually(lambda: counts(admin, retried).get("failed") == 3, "three failed attempts")
    assert [n.number for n in receiver.of(retried["id"])] == [1, 1, 1]  # the same message
    assert counts(admin, retried)["retried"] == 2

    # A receiver back on its feet gets the resend.
    admin.configure_notifications(retries=5, retry_backoff_s=0.2)
    receiver.status = 500
    recovering = watch(google, receiver.url)
    receiver.wait_for(lambda got: any(n.channel_id == recovering["id"] for n in got))
    receiver.status = 200
    eventually(lambda: counts(admin, recovering).get("delivered") == 1, "the resend delivered")


def test_a_watch_in_a_batch_is_refused(
    sandbox: tuple[SandboxHTTPServer, SandboxClient],
    google: CalendarCaller,
    receiver: NotificationReceiver,
) -> None:
    server, admin = sandbox
    boundary = "b0undary"
    body = json.dumps({"id": "batched", "type": "web_hook", "address": receiver.url})
    payload = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <1>\r\n\r\n"
        f"POST /calendar/v3/{WATCH} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{body}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        server.url + "batch/calendar/v3",
        data=payload,
        method="POST",
        headers={
            "Authorization": f"Bearer {google.access_token}",
            "Content-Type": f"multipart/mixed; boundary={boundary}",
        },
    )
    context = ssl.create_default_context(cafile=str(server.ca_file))
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        text = answer.read().decode()
    assert "HTTP/1.1 403 Forbidden" in text and "watchDenied" in text
    assert admin.channels() == []
