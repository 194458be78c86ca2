"""The sandbox's in-memory Google: accounts, tokens, calendars, events, quotas and faults.

Only the behaviour the service relies on is modelled, but that behaviour follows Google's:
client-supplied event ids (base32hex, 5-1024 characters) that stay taken after a delete,
409 on a second insert, 410 on a deleted event, 404 on an unknown one, 401 on a bad or
expired access token, `invalid_grant` on a revoked refresh token, 403/429 rate limits.

Every change to a calendar's events (through the API or by a person, `edit_by_hand`,
`delete_by_hand`, `plant_event`) is a step in the calendar's feed (`Feed`): what an
incremental `events.list` with a sync token returns (sandbox/listing.py) and what wakes the
calendar's push channels (sandbox/notifier.py). A calendar shared with several accounts has
one feed, as it has one set of events.

How long Google takes is drawn per call: a fixed `latency_s`, or a log-normal distribution
fitted to a median and a 99th percentile (`latency_median_s`, `latency_p99_s`). How it serves
a batch is `batch_mode`: `sequential` (the default, the conservative reading: nothing in
Google's documentation promises that a batch's calls run side by side, only that a batch
saves HTTP overhead) serves the calls one after another, so a batch takes as long as its
calls added up; `parallel` serves them side by side, as slow as the slowest.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import secrets
import ssl
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from calsync_dev.sandbox.notifier import Channel, Notifier
from calsync_dev.sandbox.oauth import OAuthError, OAuthServer

EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
WRITE_ROLES = frozenset({"writer", "owner"})
BATCH_MODES = ("sequential", "parallel")
FILTERED_SYNC_TOKEN = ("given", "withheld")
CANCELLED_IN_LIST = ("minimal", "full")
EXPIRATION_JSON = ("string", "number")
# The default life of a channel when a watch asks for none: params.ttl's documented default.
CHANNEL_DEFAULT_TTL_S = 604800
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True)
class RawBody:
    """An answer that is not Google's JSON (a page a proxy puts in front of Google)."""

    content_type: str
    payload: bytes


class GoogleError(Exception):
    """An error answer, in the JSON shape the Calendar API uses."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        domain: str = "global",
        headers: dict[str, str] | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.domain = domain
        self.headers = headers or {}
        self.location = location  # the query parameter the error is about, if one

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "errors": [{"domain": self.domain, "reason": self.reason, "message": self.message}],
            "code": self.status,
            "message": self.message,
        }
        if self.location is not None:
            error["errors"][0].update(locationType="parameter", location=self.location)
        if self.status == 401:
            error["errors"][0].update(location="Authorization", locationType="header")
            error["status"] = "UNAUTHENTICATED"
        return {"error": error}


def not_found() -> GoogleError:
    return GoogleError(404, "notFound", "Not Found")


def deleted() -> GoogleError:
    return GoogleError(410, "deleted", "Resource has been deleted")


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Feed:
    """A calendar's events as they change: which change last touched each event (what a
    sync token's incremental listing returns), the generation every sync token must carry
    (voiding the tokens bumps it) and the channels watching the calendar. One per calendar,
    shared by every account the calendar is shared with."""

    resource_id: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    sequence: int = 0  # the calendar's changes so far
    changed_at: dict[str, int] = field(default_factory=dict)  # event id -> its last change
    generation: int = 0
    channels: list[Channel] = field(default_factory=list)


@dataclass
class Calendar:
    id: str
    summary: str
    access_role: str = "owner"
    primary: bool = False
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    feed: Feed = field(default_factory=Feed)


@dataclass
class Account:
    email: str
    # Oldest first: Google keeps a limited number per account and OAuth client, and a new
    # one silently voids the oldest (see SandboxState.refresh_token_limit).
    refresh_tokens: dict[str, None] = field(default_factory=dict)
    calendars: dict[str, Calendar] = field(default_factory=dict)
    rotate_refresh_token: bool = False

    def add_refresh_token(self, token: str, limit: int) -> None:
        self.refresh_tokens[token] = None
        while len(self.refresh_tokens) > max(1, limit):
            del self.refresh_tokens[next(iter(self.refresh_tokens))]


@dataclass
class Fault:
    """Answer the next `count` matching calls with an error instead of serving them.

    `body_html`: not Google's answer at all but a page in front of it (a proxy's login page,
    a captive portal, a wrong `CALSYNC_GOOGLE_API_URL`), sent as `text/html` with `status`
    (200 included) for any call it matches, without Google seeing the call."""

    status: int
    count: int = 1
    method: str | None = None
    path_contains: str | None = None
    account: str | None = None
    reason: str | None = None
    retry_after: float | None = None
    delay_s: float = 0.0
    duration_s: float | None = None  # instead of a count: every matching call for this long
    body_html: str | None = None  # not Google's JSON: a page (any status, 200 too)
    until: float | None = None  # set from duration_s when the fault is added (time.time())

    def __post_init__(self) -> None:
        if self.duration_s is not None and self.until is None:
            self.until = time.time() + self.duration_s
            self.count = 1 << 62


@dataclass
class Call:
    at: float
    method: str
    path: str
    op: str
    account: str | None
    calendar: str | None
    event_id: str | None
    status: int
    batch: int | None = None  # the request to the batch endpoint that carried the call
    started: float | None = None  # when Google began serving it (wall clock)
    ended: float | None = None  # when its answer was ready (wall clock)


PROJECT = "*project*"  # the quota report's key for the project as a whole


def _carry_over(old: Notifier, trust: ssl.SSLContext) -> Notifier:
    fresh = Notifier(trust)
    fresh.faults = old.faults
    old.close()
    return fresh


def _window_stats(times: list[float], refused: int) -> dict[str, Any]:
    most, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - 60:
            start += 1
        most = max(most, end - start + 1)
    return {
        "calls": len(times),
        "refused": refused,
        "max_per_minute": most,
        "span_s": times[-1] - times[0] if times else 0.0,
    }


class SandboxState:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.access_tokens: dict[str, tuple[str, float]] = {}
        self.issued: list[str] = []  # every token ever handed out (tests look for leaks)
        self.clients: dict[str, str] = {}  # client_id -> secret; empty = any client accepted
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.latency_median_s = 0.0
        self.latency_p99_s: float | None = None  # None: every call takes the median
        self.batch_mode = "sequential"
        self._random = random.Random()
        self.token_lifetime_s = 3599
        # Google keeps at most 100 refresh tokens per Google account and OAuth client; a
        # 101st silently voids the oldest, which then answers `invalid_grant` (Google's
        # OAuth documentation, "Refresh token expiration"). The sandbox serves one client.
        self.refresh_token_limit = 100
        self.quota_per_account_per_min: int | None = None
        self.quota_per_project_per_min: int | None = None
        self.rate_limit_status = 403
        # An update of an event a person deleted: 403 (what users report), or 410.
        self.deleted_event_update_status = 403
        # Sync tokens (sandbox/listing.py). Google documents no lifetime, only that a token
        # may expire or be invalidated at any time (410): None keeps them until voided.
        self.sync_token_lifetime_s: float | None = None
        # A full listing narrowed by filters a sync token may not carry (timeMin, timeMax,
        # privateExtendedProperty, ...): "given" answers a nextSyncToken whose increments
        # are every change to the calendar, unfiltered; "withheld" answers none.
        self.filtered_sync_token = "given"
        # A deleted event in a listing: "minimal" (id, status and little else: Google only
        # guarantees the id) or "full" (its last content, as the organizer's calendar shows).
        self.cancelled_in_list = "minimal"
        # Google "may" answer fewer events than maxResults: None fills pages up to it.
        self.max_page_items: int | None = None
        # Push channels (sandbox/notifier.py): the longest life granted to one (a longer
        # expiration asked for is shortened: "the more restrictive value is used").
        self.channel_max_ttl_s: float | None = CHANNEL_DEFAULT_TTL_S
        # A channel's `expiration` in the watch answer: a string of milliseconds (int64 in
        # Google's discovery document) or a JSON number (the guide's example).
        self.channel_expiration_json = "string"
        self.channels: dict[str, Channel] = {}  # every channel ever made: ids stay taken
        self.notifier = Notifier()
        self.authority: Any = None  # the server's CA (trustme), which the notifier trusts
        self._window_project: deque[float] = deque()
        self._window_account: dict[str, deque[float]] = {}
        # What a quota report reads: every charged call's time, and the refusals, by quota.
        self.charged: dict[str, list[float]] = {}
        self.quota_refusals: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self.oauth = OAuthServer(self)

    # --- how Google serves -----------------------------------------------------------------

    @property
    def latency_s(self) -> float:
        return self.latency_median_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        """A fixed latency: every call takes exactly this long (no tail)."""
        self.latency_median_s = float(value)
        self.latency_p99_s = None

    def set_latency(self, median_s: float, p99_s: float | None = None) -> None:
        if median_s < 0 or (p99_s is not None and p99_s < median_s):
            raise ValueError("latency: 0 <= median <= p99")
        self.latency_median_s = float(median_s)
        self.latency_p99_s = None if p99_s is None else float(p99_s)

    def set_batch_mode(self, mode: str) -> None:
        if mode not in BATCH_MODES:
            raise ValueError(f"batch_mode: one of {', '.join(BATCH_MODES)}")
        self.batch_mode = mode

    def seed(self, value: int | None) -> None:
        self._random.seed(value)

    def draw_latency(self) -> float:
        """One call's time at Google: log-normal with the configured median and p99 (its
        sigma is ln(p99 / median) / z99), or the median alone when no tail is set."""
        median, p99 = self.latency_median_s, self.latency_p99_s
        if median <= 0 or p99 is None or p99 <= median:
            return median
        sigma = math.log(p99 / median) / _Z99
        with self.lock:
            z = self._random.gauss(0.0, 1.0)
        return median * math.exp(sigma * z)

    def config(self) -> dict[str, Any]:
        return {
            "batch_mode": self.batch_mode,
            "sync_token_lifetime_s": self.sync_token_lifetime_s,
            "filtered_sync_token": self.filtered_sync_token,
            "cancelled_in_list": self.cancelled_in_list,
            "max_page_items": self.max_page_items,
            "channel_max_ttl_s": self.channel_max_ttl_s,
            "channel_expiration_json": self.channel_expiration_json,
            "deleted_event_update_status": self.deleted_event_update_status,
            "notifications": self.notifier.faults.as_dict(),
            "allow_http_notifications": self.notifier.faults.allow_http,
            "latency_median_s": self.latency_median_s,
            "latency_p99_s": self.latency_p99_s,
            "quota_per_account_per_min": self.quota_per_account_per_min,
            "quota_per_project_per_min": self.quota_per_project_per_min,
            "rate_limit_status": self.rate_limit_status,
            "token_lifetime_s": self.token_lifetime_s,
            "refresh_token_limit": self.refresh_token_limit,
        }

    # --- administration -------------------------------------------------------------------

    def add_account(
        self,
        email: str,
        refresh_token: str,
        calendars: list[dict[str, Any]] | None = None,
        rotate_refresh_token: bool = False,
    ) -> Account:
        with self.lock:
            account = self.accounts.get(email) or Account(email=email)
            if refresh_token:
                account.add_refresh_token(refresh_token, self.refresh_token_limit)
            account.rotate_refresh_token = rotate_refresh_token
            specs = calendars or [{"id": email, "summary": email, "primary": True}]
            for spec in specs:
                if spec["id"] not in account.calendars:
                    account.calendars[spec["id"]] = Calendar(
                        id=spec["id"],
                        summary=spec.get("summary", spec["id"]),
                        access_role=spec.get("access_role", "owner"),
                        primary=bool(spec.get("primary", False)),
                    )
            self.accounts[email] = account
            return account

    def share_calendar(
        self, owner: str, calendar_id: str, with_email: str, access_role: str = "writer"
    ) -> Calendar:
        """What an owner does in Google Calendar's sharing settings: the calendar (the same
        id, the same events) appears in the other account's calendar list with its own access
        role, not as its primary. Both accounts then read and write one set of events."""
        with self.lock:
            source = self.calendar(owner, calendar_id)
            account = self.accounts.get(with_email) or Account(email=with_email)
            self.accounts[with_email] = account
            shared = Calendar(
                id=source.id,
                summary=source.summary,
                access_role=access_role,
                primary=False,
                events=source.events,  # one calendar: one set of events, seen by both
                feed=source.feed,  # ... one history of changes, one set of channels
            )
            account.calendars[calendar_id] = shared
            self.acl_changed(shared)
            return shared

    def set_access_role(self, email: str, calendar_id: str, access_role: str) -> None:
        calendar = self.calendar(email, calendar_id)
        if calendar.access_role != access_role:
            calendar.access_role = access_role
            self.acl_changed(calendar)

    def acl_changed(self, calendar: Calendar) -> None:
        """Sync tokens are invalidated by "changes in related ACLs" (Google's sync guide):
        a calendar's sharing or access role changing voids its tokens."""
        calendar.feed.generation += 1

    def void_sync_tokens(self, email: str, calendar_id: str | None = None) -> int:
        """What Google does when it invalidates sync tokens "for various reasons": every
        token issued so far for the account's calendars (or one of them) answers 410
        `fullSyncRequired` from now on. Returns how many calendars."""
        with self.lock:
            account = self.accounts.get(email)
            if account is None:
                raise not_found()
            calendars = (
                [self.calendar(email, calendar_id)]
                if calendar_id is not None
                else list(account.calendars.values())
            )
            for calendar in calendars:
                calendar.feed.generation += 1
            return len(calendars)

    # --- changes: the sync-token feed and the push channels ------------------------------

    def changed(self, calendar: Calendar, event_id: str) -> None:
        """An event of the calendar was created, changed or deleted, by anyone: the change
        goes into the calendar's feed and wakes its channels (an `exists` message each)."""
        feed = calendar.feed
        feed.sequence += 1
        feed.changed_at[event_id] = feed.sequence
        live = [c for c in feed.channels if not c.stopped and not c.expired()]
        feed.channels[:] = live  # a channel stopped or expired is never woken again
        for channel in live:
            if self._watches(channel, feed):
                self.notifier.notify(channel, "exists")

    def _watches(self, channel: Channel, feed: Feed) -> bool:
        """A channel hears of a calendar only while its account still has the calendar in
        its list (one removed, or unsubscribed, goes silent)."""
        account = self.accounts.get(channel.account)
        calendar = account.calendars.get(channel.calendar_id) if account else None
        return calendar is not None and calendar.feed is feed

    def trust_authority(self, authority: Any) -> None:
        """The sandbox's CA (trustme): the one a receiver's certificate must come from."""
        self.authority = authority
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        authority.configure_trust(context)
        self.notifier = _carry_over(self.notifier, context)

    def issue_access_token(self, email: str, lifetime_s: float | None = None) -> tuple[str, float]:
        with self.lock:
            token = "ya29.sandbox-" + secrets.token_urlsafe(24)
            expires_at = time.time() + (
                lifetime_s if lifetime_s is not None else self.token_lifetime_s
            )
            self.access_tokens[token] = (email, expires_at)
            self.issued.append(token)
            return token, expires_at

    def revoke(self, email: str) -> None:
        """What a user does in their Google Account's security settings."""
        with self.lock:
            account = self.accounts[email]
            account.refresh_tokens.clear()
            for token, (owner, _) in list(self.access_tokens.items()):
                if owner == email:
                    del self.access_tokens[token]

    def calendar(self, email: str, calendar_id: str) -> Calendar:
        account = self.accounts.get(email)
        if account is None or calendar_id not in account.calendars:
            raise not_found()
        return account.calendars[calendar_id]

    # --- the token endpoint ---------------------------------------------------------------

    def token_grant(self, form: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            client_id = form.get("client_id", "")
            if self.clients and self.clients.get(client_id) != form.get("client_secret"):
                raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
            grant = form.get("grant_type")
            if grant == "authorization_code":
                return self.oauth.exchange_code(form)
            if grant != "refresh_token":
                raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
            refresh_token = form.get("refresh_token", "")
            account = next(
                (a for a in self.accounts.values() if refresh_token in a.refresh_tokens), None
            )
            if account is None:
                raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
            token, _ = self.issue_access_token(account.email)
            answer: dict[str, Any] = {
                "access_token": token,
                "expires_in": self.token_lifetime_s,
                "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/calendar.events "
                "https://www.googleapis.com/auth/calendar.readonly",
            }
            if account.rotate_refresh_token:
                new = "1//sandbox-" + secrets.token_urlsafe(24)
                account.add_refresh_token(new, self.refresh_token_limit)
                self.issued.append(new)
                answer["refresh_token"] = new
            return answer

    # --- checks every Calendar call goes through ----------------------------------------------

    def authenticate(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        entry = self.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if entry is None or entry[1] <= time.time():
            raise GoogleError(
                401,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        return entry[0]

    def take_fault(self, method: str, path: str, account: str | None) -> Fault | None:
        now = time.time()
        self.faults = [f for f in self.faults if f.until is None or f.until > now]
        for fault in self.faults:
            if fault.method and fault.method != method:
                continue
            if fault.path_contains and fault.path_contains not in path:
                continue
            if fault.account and fault.account != account:
                continue
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            return fault
        return None

    def charge_quota(self, account: str) -> None:
        """Sliding one-minute windows, per project and per user, as Google enforces them.
        Every call counts, a batch's as many as it holds. Over the project's quota: 403 or
        429 `rateLimitExceeded` (`rate_limit_status`; Google documents both); over the
        user's: 403 `userRateLimitExceeded`."""
        now = time.monotonic()
        project = self._window_project
        user = self._window_account.setdefault(account, deque())
        for window in (project, user):
            while window and window[0] <= now - 60:
                window.popleft()
        if self.quota_per_project_per_min is not None and (
            len(project) >= self.quota_per_project_per_min
        ):
            self.quota_refusals[PROJECT] += 1
            raise GoogleError(
                self.rate_limit_status,
                "rateLimitExceeded",
                "Rate Limit Exceeded",
                domain="usageLimits",
            )
        if self.quota_per_account_per_min is not None and (
            len(user) >= self.quota_per_account_per_min
        ):
            self.quota_refusals[account] += 1
            raise GoogleError(
                403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits"
            )
        project.append(now)
        user.append(now)
        self.charged.setdefault(account, []).append(now)

    def reset_quota_windows(self) -> None:
        self._window_project.clear()
        self._window_account.clear()
        self.charged.clear()
        self.quota_refusals.clear()

    def quota_report(self) -> dict[str, Any]:
        """Per account and for the project: calls charged, refusals, the most calls in any
        sliding minute, and the span from the first call to the last."""
        every = sorted(t for times in self.charged.values() for t in times)
        report = {PROJECT: _window_stats(every, self.quota_refusals[PROJECT])}
        report.update(
            {
                account: _window_stats(times, self.quota_refusals[account])
                for account, times in self.charged.items()
            }
        )
        for account in self.quota_refusals:
            report.setdefault(account, _window_stats([], self.quota_refusals[account]))
        return report

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def next_sequence(self) -> int:
        return next(self._ids)
