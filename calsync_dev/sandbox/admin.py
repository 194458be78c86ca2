"""The sandbox's admin API (`/_sandbox/...`): what tests, the demo and the bench drive.

A person's edits (`PATCH`, `POST` and `DELETE` of `.../events`) are changes like any other:
they enter the calendar's sync-token feed and wake its push channels."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote

from calsync_dev.sandbox.channels import expire_channel
from calsync_dev.sandbox.state import (
    CANCELLED_IN_LIST,
    EXPIRATION_JSON,
    FILTERED_SYNC_TOKEN,
    Fault,
    SandboxState,
    now_rfc3339,
)


def admin_routes(state: SandboxState) -> Callable[..., tuple[int, Any]]:
    def route(
        method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")[1:]]
        with state.lock:
            return _route(state, method, parts, query, body)

    return route


def _route(
    state: SandboxState,
    method: str,
    parts: list[str],
    query: dict[str, list[str]],
    body: dict[str, Any],
) -> tuple[int, Any]:
    match (method, parts):
        case ("POST", ["accounts"]):
            state.add_account(
                body["email"],
                body["refresh_token"],
                body.get("calendars"),
                bool(body.get("rotate_refresh_token", False)),
            )
            return 200, {"email": body["email"]}
        case ("POST", ["accounts", email, "revoke"]):
            state.revoke(email)
            return 200, {}
        case ("POST", ["accounts", email, "access-token"]):
            token, expires_at = state.issue_access_token(email, body.get("lifetime_s"))
            return 200, {"access_token": token, "expires_at": expires_at}
        case ("POST", ["accounts", email, "calendars"]):
            state.add_account(email, body.pop("refresh_token", ""), [body])
            return 200, {}
        case ("POST", ["accounts", email, "calendars", calendar_id, "share"]):
            state.share_calendar(
                email, calendar_id, body["with"], body.get("access_role", "writer")
            )
            return 200, {}
        case ("PATCH", ["accounts", email, "calendars", calendar_id]):
            cal = state.calendar(email, calendar_id)
            state.set_access_role(email, calendar_id, body.get("access_role", cal.access_role))
            return 200, {}
        case ("POST", ["accounts", email, "sync-tokens", "void"]):
            return 200, {"calendars": state.void_sync_tokens(email)}
        case ("POST", ["accounts", email, "calendars", calendar_id, "sync-tokens", "void"]):
            return 200, {"calendars": state.void_sync_tokens(email, calendar_id)}
        case ("DELETE", ["accounts", email, "calendars", calendar_id]):
            state.accounts[email].calendars.pop(calendar_id, None)
            return 200, {}
        case ("GET", ["accounts", email, "calendars", calendar_id, "events"]):
            show_deleted = query.get("showDeleted", ["false"])[0] == "true"
            events = [
                e
                for e in state.calendar(email, calendar_id).events.values()
                if show_deleted or e["status"] != "cancelled"
            ]
            return 200, {"items": events}
        case ("PATCH", ["accounts", email, "calendars", calendar_id, "events", event_id]):
            # A person editing the event in Google Calendar.
            calendar = state.calendar(email, calendar_id)
            event = calendar.events[event_id]
            event.update(body)
            event["sequence"] = event.get("sequence", 0) + 1
            event["updated"] = now_rfc3339()
            event["etag"] = f'"{state.next_sequence()}"'
            state.changed(calendar, event_id)
            return 200, event
        case ("POST", ["accounts", email, "calendars", calendar_id, "events"]):
            # An event put there by someone else, or by an old bug: stored as given.
            event_id = body.get("id") or secrets.token_hex(13)
            stamp = now_rfc3339()
            # Everything Google keeps on an event it holds, where the plant does not say.
            event = {
                "kind": "calendar#event",
                "status": "confirmed",
                "id": event_id,
                "created": stamp,
                "updated": stamp,
                "sequence": 0,
                "etag": f'"{state.next_sequence()}"',
                "iCalUID": f"{event_id}@google.com",
                "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
                "organizer": {"email": calendar_id, "self": True},
                **body,
            }
            calendar = state.calendar(email, calendar_id)
            calendar.events[event["id"]] = event
            state.changed(calendar, event["id"])
            return 200, event
        case ("DELETE", ["accounts", email, "calendars", calendar_id, "events", event_id]):
            # A person deleting the event by hand in Google Calendar.
            calendar = state.calendar(email, calendar_id)
            event = calendar.events[event_id]
            event["status"] = "cancelled"
            event["updated"] = now_rfc3339()
            event["etag"] = f'"{state.next_sequence()}"'
            state.changed(calendar, event_id)
            return 200, {}
        case ("GET", ["channels"]):
            account = query.get("account", [None])[0]
            channels = [
                c.describe()
                for c in state.channels.values()
                if account is None or c.account == account
            ]
            return 200, {"channels": channels}
        case ("POST", ["channels", channel_id, "expire"]):
            return 200, expire_channel(state, channel_id).describe()
        case ("POST", ["certificates"]):
            # A server certificate from the sandbox's CA, for a test's notification receiver.
            if state.authority is None:
                return _bad("the sandbox has no CA")
            cert = state.authority.issue_cert(*body.get("hosts", ["127.0.0.1", "localhost"]))
            return 200, {
                "cert_pem": "".join(b.bytes().decode() for b in cert.cert_chain_pems),
                "key_pem": cert.private_key_pem.bytes().decode(),
            }
        case ("GET", ["tokens"]):
            return 200, {"access_tokens": len(state.access_tokens), "issued": state.issued}
        case ("POST", ["faults"]):
            state.faults.append(Fault(**body))
            return 200, {"pending": len(state.faults)}
        case ("DELETE", ["faults"]):
            state.faults.clear()
            return 200, {}
        case ("POST", ["config"]):
            return _configure(state, body)
        case ("GET", ["config"]):
            return 200, state.config()
        case ("GET", ["calls"]):
            since = float(query.get("since", ["0"])[0])
            calls = [c for c in state.calls if c.at >= since]
            if query.get("detail", ["false"])[0] == "true":
                return 200, {"calls": [asdict(c) for c in calls]}
            return 200, {
                "total": len(calls),
                "by_op": Counter(c.op for c in calls),
                "by_status": Counter(str(c.status) for c in calls),
                "now": time.time(),
            }
        case ("GET", ["quota"]):
            with state.lock:
                return 200, state.quota_report()
        case ("DELETE", ["quota"]):  # a fresh minute: windows and counts start again
            with state.lock:
                state.reset_quota_windows()
            return 200, {}
        case ("POST", ["reset"]):
            authority, notifier = state.authority, state.notifier
            fresh = SandboxState()
            for key, value in vars(fresh).items():
                if key != "lock":
                    setattr(state, key, value)
            state.oauth.state = state
            notifier.close()  # the old channels' messages go nowhere now
            if authority is not None:
                state.trust_authority(authority)
            return 200, {}
    return 404, {"error": {"code": 404, "message": f"no admin route {method} /{'/'.join(parts)}"}}


def _configure(state: SandboxState, body: dict[str, Any]) -> tuple[int, Any]:
    """How Google behaves from now on. Latency: `latency_s` (fixed), or `latency_median_s`
    with `latency_p99_s` (log-normal; `latency_seed` makes the draws repeatable)."""
    if "rate_limit_status" in body and body["rate_limit_status"] not in (403, 429):
        return _bad("rate_limit_status: 403 or 429")
    try:
        if "latency_s" in body:
            state.latency_s = float(body["latency_s"])
        if "latency_median_s" in body or "latency_p99_s" in body:
            p99 = body.get("latency_p99_s", state.latency_p99_s)
            state.set_latency(
                float(body.get("latency_median_s", state.latency_median_s)),
                None if p99 is None else float(p99),
            )
        if "batch_mode" in body:
            state.set_batch_mode(str(body["batch_mode"]))
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    choices = {
        "filtered_sync_token": FILTERED_SYNC_TOKEN,
        "cancelled_in_list": CANCELLED_IN_LIST,
        "channel_expiration_json": EXPIRATION_JSON,
    }
    for key, allowed in choices.items():
        if key in body and body[key] not in allowed:
            return _bad(f"{key}: one of {', '.join(allowed)}")
    if body.get("max_page_items") is not None and int(body["max_page_items"]) < 1:
        return _bad("max_page_items: at least 1 (or None)")
    notifications = dict(body.get("notifications") or {})
    if "allow_http_notifications" in body:  # the same switch, by its top-level name
        notifications["allow_http"] = body["allow_http_notifications"]
    try:
        state.notifier.faults.update(notifications)
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    if "latency_seed" in body:
        state.seed(body["latency_seed"])
    if "notification_seed" in body:
        state.notifier.seed(body["notification_seed"])
    for key in (
        "token_lifetime_s",
        "quota_per_account_per_min",
        "quota_per_project_per_min",
        "rate_limit_status",
        "deleted_event_update_status",
        "refresh_token_limit",
        "sync_token_lifetime_s",
        "max_page_items",
        "channel_max_ttl_s",
        *choices,
    ):
        if key in body:
            setattr(state, key, body[key])
    if "clients" in body:
        state.clients = dict(body["clients"])
    return 200, state.config()


def _bad(message: str) -> tuple[int, Any]:
    return 400, {"error": {"code": 400, "message": message}}
