"""The sandbox HTTP server: Calendar v3, the OAuth token endpoint, and an admin API.

Google paths: `GET /o/oauth2/auth` (consent), `POST /token`, `POST /revoke`,
`/calendar/v3/users/me/calendarList`, `/calendar/v3/calendars/{calendarId}/events[/{eventId}]`,
`POST /calendar/v3/calendars/{calendarId}/events/watch` and `POST /calendar/v3/channels/stop`
(sandbox/channels.py), and the batch endpoint `POST /batch/calendar/v3` over them
(sandbox/batch.py; a watch in a batch is refused), whose calls are served one after another
or side by side (`batch_mode`, sandbox/state.py).
It speaks HTTPS only, as Google does, with a certificate from its own throwaway CA
(trustme): clients trust it through CALSYNC_GOOGLE_CA_BUNDLE, the file `ca_file` names.
Admin paths (tests, demo, bench; never used by the service): `/_sandbox/...`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from calsync_dev.sandbox import calendar_api, channels
from calsync_dev.sandbox.batch import (
    BATCH_PATH,
    BatchFormatError,
    InnerResponse,
    parse_batch,
    render_batch,
)
from calsync_dev.sandbox.oauth import ConsentError, OAuthError
from calsync_dev.sandbox.state import Call, Fault, GoogleError, RawBody, SandboxState

_EVENTS = re.compile(r"^/calendar/v3/calendars/([^/]+)/events(?:/([^/]+))?$")
_CAL_LIST = "/calendar/v3/users/me/calendarList"
_CAL_LIST_ENTRY = re.compile(r"^/calendar/v3/users/me/calendarList/([^/]+)$")
_CHANNELS_STOP = "/calendar/v3/channels/stop"
_WATCH = "watch"  # events/watch: never an event id (not base32hex)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httplib2 expects
    server: SandboxHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, RawBody):  # not Google's answer: a page in front of it
            payload, content_type = body.payload, body.content_type
        else:
            payload = b"" if status == 204 else json.dumps(body).encode()
            content_type = "application/json; charset=UTF-8"
        self.send_response(status)
        if payload or status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _send_html(self, page: str) -> None:
        payload = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        state = self.server.state
        try:
            if url.path.startswith("/_sandbox/"):
                status, body = self.server.admin(method, url.path, parse_qs(url.query), raw)
                self._send(status, body)
            elif url.path == "/token" and method == "POST":
                self._token(state, raw)
            elif url.path == "/o/oauth2/auth" and method == "GET":
                self._consent(state, url.query)
            elif url.path == "/revoke" and method == "POST":
                self._revoke(state, url.query, raw)
            elif url.path == BATCH_PATH and method == "POST":
                self._batch(state, raw)
            else:
                self._calendar(state, method, url.path, parse_qs(url.query), raw)
        except Exception as exc:  # the sandbox must answer, whatever happened
            self._send(500, {"error": {"code": 500, "message": f"sandbox error: {exc!r}"}})

    def _token(self, state: SandboxState, raw: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        # Client credentials may come as HTTP Basic instead (RFC 6749, section 2.3.1).
        scheme, _, credentials = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic" and credentials:
            client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
            form.setdefault("client_id", unquote(client_id))
            form.setdefault("client_secret", unquote(secret))
        time.sleep(state.draw_latency())
        try:
            answer = state.token_grant(form)
            self._send(200, answer, {"Cache-Control": "no-store"})
            status = 200
        except OAuthError as exc:
            self._send(exc.status, {"error": exc.error, "error_description": exc.description})
            status = exc.status
        state.record(Call(time.time(), "POST", "/token", "token", None, None, None, status))

    def _consent(self, state: SandboxState, query: str) -> None:
        params = {k: v[0] for k, v in parse_qs(query).items()}
        try:
            page = state.oauth.consent_page(params)
            location = state.oauth.authorize(params) if page is None else ""
        except ConsentError as exc:
            self._send(400, {"error": exc.error, "error_description": exc.description})
            status = 400
        else:
            if page is not None:  # a person's step: the account chooser or the consent screen
                self._send_html(page)
                state.record(
                    Call(
                        time.time(),
                        "GET",
                        "/o/oauth2/auth",
                        "oauth.consent_page",
                        params.get("sandbox_account"),
                        None,
                        None,
                        200,
                    )
                )
                return
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            status = 302
        state.record(
            Call(
                time.time(),
                "GET",
                "/o/oauth2/auth",
                "oauth.consent",
                params.get("sandbox_account"),
                None,
                None,
                status,
            )
        )

    def _revoke(self, state: SandboxState, query: str, raw: bytes) -> None:
        form = {k: v[0] for k, v in parse_qs(query or raw.decode()).items()}
        try:
            state.oauth.revoke(form.get("token", ""))
            self._send(200, {})
            status = 200
        except OAuthError as exc:
            self._send(exc.status, {"error": exc.error, "error_description": exc.description})
            status = exc.status
        state.record(Call(time.time(), "POST", "/revoke", "oauth.revoke", None, None, None, status))

    def _calendar(
        self,
        state: SandboxState,
        method: str,
        path: str,
        query: dict[str, list[str]],
        raw: bytes,
    ) -> None:
        status, body, headers, delay = _calendar_call(
            state, method, path, query, raw, self.headers.get("Authorization")
        )
        time.sleep(delay)
        self._send(status, body, headers)

    def _batch(self, state: SandboxState, raw: bytes) -> None:
        try:
            requests = parse_batch(self.headers.get("Content-Type") or "", raw)
        except BatchFormatError as exc:
            self._send(400, GoogleError(400, "badRequest", str(exc)).body())
            return
        responses, batch = [], state.next_sequence()
        sequential = state.batch_mode == "sequential"
        started = time.time()
        slowest = 0.0
        for inner in requests:  # the outer request's headers apply unless a part has its own
            authorization = inner.headers.get("authorization") or self.headers.get("Authorization")
            status, body, headers, delay = _calendar_call(
                state,
                inner.method,
                inner.path,
                parse_qs(inner.query),
                inner.body,
                authorization,
                batch,
                None if sequential else started,
            )
            responses.append(InnerResponse(inner.content_id, status, body, headers))
            if sequential:  # one after another: the next call starts when this one ends
                time.sleep(delay)
            else:  # side by side: the batch is as slow as its slowest call
                slowest = max(slowest, delay)
        content_type, payload = render_batch(responses)
        time.sleep(max(0.0, started + slowest - time.time()))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _calendar_call(
    state: SandboxState,
    method: str,
    path: str,
    query: dict[str, list[str]],
    raw: bytes,
    authorization: str | None,
    batch: int | None = None,
    started: float | None = None,
) -> tuple[int, Any, dict[str, str], float]:
    """One Calendar call: its status, body, headers and how long Google takes to answer
    (the caller waits that long). `started`: when serving began, if not now."""
    match = _EVENTS.match(path)
    entry = _CAL_LIST_ENTRY.match(path)
    calendar_id = unquote(match.group(1)) if match else None
    if entry is not None:
        calendar_id = unquote(entry.group(1))
    event_id = unquote(match.group(2)) if match and match.group(2) else None
    op = _operation(method, path, match, event_id)
    if op == "events.watch":
        event_id = None
    account: str | None = None
    status = 500
    delay = state.draw_latency()
    begun = time.time() if started is None else started
    try:
        with state.lock:
            account = state.authenticate(authorization)
            fault = state.take_fault(method, path, account)
            if fault is not None:
                delay += fault.delay_s
                if fault.body_html is not None:  # a page in front of Google: never served
                    status = fault.status
                    page = RawBody("text/html; charset=utf-8", fault.body_html.encode())
                    return fault.status, page, {}, delay
                raise _fault_error(fault)
            state.charge_quota(account)
            if op == "events.watch" and batch is not None:
                raise GoogleError(
                    403, "watchDenied", "Watch requests are not allowed in a batch.", "push"
                )
            body = json.loads(raw) if raw else {}
            if op == "events.insert" and isinstance(body.get("id"), str):
                event_id = body["id"]  # client-supplied: the call log names it
            status, answer = _serve(state, op, account, calendar_id, event_id, body, query)
        return status, answer, {}, delay
    except GoogleError as exc:
        status = exc.status
        return exc.status, exc.body(), exc.headers, delay
    finally:
        state.record(
            Call(
                time.time(),
                method,
                path,
                op,
                account,
                calendar_id,
                event_id,
                status,
                batch,
                begun,
                begun + delay,
            )
        )


def _operation(method: str, path: str, match: re.Match[str] | None, event_id: str | None) -> str:
    if path == _CAL_LIST and method == "GET":
        return "calendarList.list"
    if _CAL_LIST_ENTRY.match(path) and method == "GET":
        return "calendarList.get"
    if path == _CHANNELS_STOP and method == "POST":
        return "channels.stop"
    if match is None:
        return "unknown"
    if event_id == _WATCH:
        return "events.watch" if method == "POST" else "unknown"
    if event_id is None:
        return {"POST": "events.insert", "GET": "events.list"}.get(method, "unknown")
    return {
        "GET": "events.get",
        "PUT": "events.update",
        "PATCH": "events.patch",
        "DELETE": "events.delete",
    }.get(method, "unknown")


def _serve(
    state: SandboxState,
    op: str,
    account: str,
    calendar_id: str | None,
    event_id: str | None,
    body: dict[str, Any],
    query: dict[str, list[str]],
) -> tuple[int, dict[str, Any]]:
    if op == "calendarList.list":
        return calendar_api.calendar_list(state, account)
    if op == "calendarList.get" and calendar_id is not None:
        return calendar_api.calendar_list_entry(state, account, calendar_id)
    if op == "channels.stop":
        return channels.stop_channel(state, account, body)
    if calendar_id is None or op == "unknown":
        raise GoogleError(404, "notFound", "Not Found")
    if op == "events.insert":
        return calendar_api.insert_event(state, account, calendar_id, body)
    if op == "events.list":
        return calendar_api.list_events(state, account, calendar_id, query)
    if op == "events.watch":
        return channels.watch_events(state, account, calendar_id, body)
    assert event_id is not None
    if op == "events.get":
        return calendar_api.get_event(state, account, calendar_id, event_id)
    if op in ("events.update", "events.patch"):
        return calendar_api.update_event(
            state, account, calendar_id, event_id, body, patch=op == "events.patch"
        )
    return calendar_api.delete_event(state, account, calendar_id, event_id)


# Google's bodies for the 403s a fault may name (domain, message).
_FORBIDDEN_BODIES = {
    "rateLimitExceeded": ("usageLimits", "Rate Limit Exceeded"),
    "userRateLimitExceeded": ("usageLimits", "User Rate Limit Exceeded"),
    "quotaExceeded": ("usageLimits", "Calendar usage limits exceeded."),
    "dailyLimitExceeded": ("usageLimits", "Daily Limit Exceeded"),
    "forbidden": ("global", "Forbidden"),
    "requiredAccessLevel": ("calendar", "You need to have writer access to this calendar."),
}


def _fault_error(fault: Fault) -> GoogleError:
    headers = {"Retry-After": str(int(fault.retry_after))} if fault.retry_after else None
    if fault.status in (403, 429):
        reason = fault.reason or "rateLimitExceeded"
        domain, message = _FORBIDDEN_BODIES.get(reason, ("usageLimits", "Rate Limit Exceeded"))
        return GoogleError(fault.status, reason, message, domain, headers)
    if fault.status == 401:
        return GoogleError(401, "authError", "Invalid Credentials")
    messages = {500: "Backend Error", 502: "Bad Gateway", 503: "Service Unavailable"}
    return GoogleError(
        fault.status,
        fault.reason or "backendError",
        messages.get(fault.status, "Error"),
        headers=headers,
    )


class SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        state: SandboxState | None = None,
        ca_file: Path | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.state = state or SandboxState()
        from calsync_dev.sandbox.admin import admin_routes

        self._admin: Callable[..., tuple[int, Any]] = admin_routes(self.state)
        authority = trustme.CA(organization_name="calendar-sync Google sandbox")
        # Push notifications go only to a receiver whose certificate this CA issued.
        self.state.trust_authority(authority)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        # The handshake runs in the request's thread (finish_request), not in the accept loop.
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        if ca_file is None:
            handle, name = tempfile.mkstemp(prefix="calsync-sandbox-ca-", suffix=".pem")
            os.close(handle)
            ca_file = Path(name)
        authority.cert_pem.write_to_path(str(ca_file))
        self.ca_file = ca_file

    def finish_request(self, request: Any, client_address: Any) -> None:
        # An answer goes out as headers then body: with Nagle's algorithm on, the body
        # waits for the client's delayed ACK of the headers (40 ms on Linux), a stall per
        # request that Google's front ends do not have.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)

    def shutdown(self) -> None:
        super().shutdown()
        self.state.notifier.close()

    def admin(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes
    ) -> tuple[int, Any]:
        return self._admin(method, path, query, json.loads(raw) if raw else {})

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host!s}:{port}/"


def start_in_thread(
    host: str = "127.0.0.1", port: int = 0, ca_file: Path | None = None
) -> SandboxHTTPServer:
    server = SandboxHTTPServer((host, port), ca_file=ca_file)
    threading.Thread(target=server.serve_forever, name="google-sandbox", daemon=True).start()
    return server
