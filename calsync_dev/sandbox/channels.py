"""`events.watch` and `channels.stop`, as the Calendar API's "Push notifications" guide and
its reference describe them, with the refusals users of the real API report.

events.watch (`POST /calendar/v3/calendars/{calendarId}/events/watch`, body `{id, type,
address, token?, expiration?, params: {ttl?}}`) answers the channel:
`{kind: "api#channel", id, resourceId, resourceUri, token, expiration}`, `expiration` in
milliseconds (a string, as the discovery document's int64 says, or a number:
`channel_expiration_json`). Then the sandbox sends the `sync` message and an `exists` one per
change (sandbox/notifier.py). Its refusals:
- `id` missing: 400 `required`; longer than 64 characters ("Maximum length: 64"): 400
  `invalid`; already taken by any channel of the project, even a stopped or expired one:
  400 `channelIdNotUnique` (users renewing a channel report they must pick a new id);
- `type` other than `web_hook` (or `webhook`): 400 `push.channelTypeNotSupported`;
- `address` without a host: 400 `push.webhookUrlNoHostOrAddress`; not `https`: 400
  `push.webhookUrlNotHttps` "WebHook callback must be HTTPS: <address>" (as users quote it);
  plain `http` only to a loopback address when `notifications.allow_http` is on (a test's
  `calsync serve` runs on http://127.0.0.1). Google also requires a verified domain; the
  sandbox accepts any https host (it sends only where a test points it, and the delivery
  itself needs a certificate from the sandbox's CA);
- `token` longer than 256 characters ("Maximum length: 256"): 400 `invalid`;
- a calendar the account does not have: 404 `notFound`.
The channel lives until the earliest of: the `expiration` asked for, now + `params.ttl`
(seconds), now + 604800 s (ttl's documented default) when neither is given, and now +
`channel_max_ttl_s` ("the more restrictive value is used"); an expiration already past is
400 `invalid`. A watch is not served inside a batch: 403 `watchDenied`, the answer users
report for batched watch requests (google-api-dotnet-client#836).

channels.stop (`POST /calendar/v3/channels/stop`, body `{id, resourceId}`) answers 204 with
no body; after it nothing more is sent. Only the account that made the channel may stop it
("only the same user from the same client ... who created the channel can stop the
channel"); any other account, an unknown id, a resourceId that is not the channel's, or a
channel already stopped or expired: 404 `notFound` "Channel '<id>' not found for project
'<project>'", as users quote it (google-api-nodejs-client#627).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any
from urllib.parse import quote, urlsplit

from calsync_dev.sandbox.notifier import Channel
from calsync_dev.sandbox.state import CHANNEL_DEFAULT_TTL_S, GoogleError, SandboxState

MAX_ID = 64
MAX_TOKEN = 256
PROJECT = "calsync-sandbox"  # the project every channel of the sandbox belongs to
RESOURCE_URI = "https://www.googleapis.com/calendar/v3/calendars/{calendar}/events?alt=json"


def _bad(reason: str, message: str, domain: str = "global") -> GoogleError:
    return GoogleError(400, reason, message, domain=domain)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(state: SandboxState, address: Any) -> str:
    parts = urlsplit(str(address or ""))
    if not parts.hostname:
        raise _bad("push.webhookUrlNoHostOrAddress", f"No host or address in: {address}", "push")
    if parts.scheme == "https":
        return str(address)
    if parts.scheme == "http" and state.notifier.faults.allow_http and is_loopback(parts.hostname):
        return str(address)
    raise _bad("push.webhookUrlNotHttps", f"WebHook callback must be HTTPS: {address}", "push")


def _expiration_ms(state: SandboxState, body: dict[str, Any]) -> int:
    now = time.time()
    limits: list[float] = []
    asked = body.get("expiration")
    if asked is not None:
        try:
            limits.append(int(asked) / 1000)
        except (TypeError, ValueError):
            raise _bad("invalid", f"Invalid expiration: {asked}") from None
    ttl = (body.get("params") or {}).get("ttl")
    if ttl is not None:
        try:
            limits.append(now + float(ttl))
        except (TypeError, ValueError):
            raise _bad("invalid", f"Invalid ttl: {ttl}") from None
    if not limits:
        limits.append(now + CHANNEL_DEFAULT_TTL_S)
    if state.channel_max_ttl_s is not None:
        limits.append(now + state.channel_max_ttl_s)
    expires = min(limits)
    if expires <= now:
        raise _bad("invalid", "The channel's expiration time is in the past.")
    return int(expires * 1000)


def watch_events(
    state: SandboxState, email: str, calendar_id: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    calendar = state.calendar(email, calendar_id)  # 404 for a calendar not in the list
    channel_id = body.get("id")
    if not channel_id:
        raise _bad("required", "Required")
    channel_id = str(channel_id)
    if len(channel_id) > MAX_ID:
        raise _bad("invalid", f"Invalid channel id: longer than {MAX_ID} characters.")
    if body.get("type") not in ("web_hook", "webhook"):
        raise _bad(
            "push.channelTypeNotSupported",
            f"Unsupported channel type: {body.get('type')}",
            "push",
        )
    address = _check_address(state, body.get("address"))
    token = body.get("token")
    if token is not None and len(str(token)) > MAX_TOKEN:
        raise _bad("invalid", f"Invalid channel token: longer than {MAX_TOKEN} characters.")
    if channel_id in state.channels:
        raise _bad("channelIdNotUnique", "Channel id not unique", "push")
    channel = Channel(
        id=channel_id,
        resource_id=calendar.feed.resource_id,
        resource_uri=RESOURCE_URI.format(calendar=quote(calendar.id, safe="")),
        address=address,
        token=None if token is None else str(token),
        expiration_ms=_expiration_ms(state, body),
        account=email,
        calendar_id=calendar.id,
    )
    state.channels[channel.id] = channel
    calendar.feed.channels.append(channel)
    state.notifier.notify(channel, "sync")  # queued: sent after (or even before) this answer
    answer: dict[str, Any] = {
        "kind": "api#channel",
        "id": channel.id,
        "resourceId": channel.resource_id,
        "resourceUri": channel.resource_uri,
        "expiration": (
            str(channel.expiration_ms)
            if state.channel_expiration_json == "string"
            else channel.expiration_ms
        ),
    }
    if channel.token is not None:
        answer["token"] = channel.token
    return 200, answer


def stop_channel(state: SandboxState, email: str, body: dict[str, Any]) -> tuple[int, Any]:
    channel = state.channels.get(str(body.get("id", "")))
    if (
        channel is None
        or channel.account != email
        or channel.resource_id != body.get("resourceId")
        or channel.status() != "active"
    ):
        raise GoogleError(
            404, "notFound", f"Channel '{body.get('id')}' not found for project '{PROJECT}'"
        )
    state.notifier.stop(channel)
    return 204, {}


def expire_channel(state: SandboxState, channel_id: str) -> Channel:
    """The admin's shortcut to a channel's expiration: it expires now."""
    channel = state.channels.get(channel_id)
    if channel is None:
        raise GoogleError(404, "notFound", f"no channel {channel_id}")
    channel.expiration_ms = int(time.time() * 1000)
    return channel
