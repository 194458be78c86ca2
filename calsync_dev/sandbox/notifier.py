"""Push notification channels (`events.watch`) and their delivery, as Google's "Push
notifications" guide (Calendar API) describes them and users report them.

A channel watches one calendar's events for one account. Google first sends a `sync`
message (`X-Goog-Message-Number: 1`), then an `exists` message on every change to the
calendar's events, each an empty-bodied `POST` to the channel's address with the headers
`X-Goog-Channel-ID`, `X-Goog-Channel-Token` (when the channel has one),
`X-Goog-Channel-Expiration` (human-readable), `X-Goog-Resource-ID`, `X-Goog-Resource-URI`,
`X-Goog-Resource-State` and `X-Goog-Message-Number`. The guide's own words set the
conservative reading taken here:

- "it's possible to receive the sync message even before you receive the watch method
  response": messages leave from a background thread the moment they are due, never
  waiting for (nor delaying) the API answer;
- message numbers "increase for each subsequent message on the channel, but they're not
  sequential": by default each one jumps ahead by a random step (`sequential_numbers`
  gives 1, 2, 3, ...);
- "Notifications are not 100% reliable. Expect a small percentage of messages to get
  dropped": delivery faults (`drop_rate`, `duplicate_rate`, `delay_s`, `delay_spread_s`,
  the last two late enough to reorder) are configurable; all are off by default so that a
  test sees exact sequences unless it asks for faults;
- a receiver's 500, 502, 503 or 504 is retried with exponential backoff only "if your
  service uses Google's API client library": by default a failed delivery is lost
  (`retries` 0, the reading that spares a receiver nothing); `retries` > 0 gives the
  documented backoff;
- the address must be HTTPS with a certificate the sender trusts (the sandbox trusts its
  own CA: `SandboxClient.receiver_certificate` issues one for a test's receiver); plain
  `http://` only for a loopback address and only when `allow_http` says so.

After a channel's expiration, or once it is stopped, nothing more is sent: a message not yet
sent when that happens is dropped, as Google "stops sending messages for this channel".
"""

from __future__ import annotations

import heapq
import itertools
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from typing import Any

USER_AGENT = "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"
SUCCESS = frozenset({102, 200, 201, 202, 204})  # what the guide counts as delivered
RETRYABLE = frozenset({500, 502, 503, 504})
_MAX_NUMBER_STEP = 97  # how far a message number may jump ahead when numbers are not sequential


@dataclass(eq=False)
class Channel:
    """One notification channel, as `events.watch` made it. Its id stays taken for good."""

    id: str
    resource_id: str
    resource_uri: str
    address: str
    token: str | None
    expiration_ms: int
    account: str
    calendar_id: str
    created: float = field(default_factory=time.time)
    stopped: bool = False
    last_number: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    # Due messages waiting their turn: one channel's messages leave one at a time, in order.
    outbox: deque[Delivery] = field(default_factory=deque, repr=False)
    sending: bool = False

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) * 1000 >= self.expiration_ms

    def status(self) -> str:
        if self.stopped:
            return "stopped"
        return "expired" if self.expired() else "active"

    def describe(self) -> dict[str, Any]:
        """What the admin API shows (never the channel's secret token)."""
        return {
            "id": self.id,
            "resourceId": self.resource_id,
            "resourceUri": self.resource_uri,
            "address": self.address,
            "account": self.account,
            "calendar_id": self.calendar_id,
            "expiration": self.expiration_ms,
            "status": self.status(),
            "has_token": self.token is not None,
            "last_number": self.last_number,
            "counts": dict(self.counts),
        }


@dataclass(eq=False)
class Delivery:
    channel: Channel = field(repr=False)
    state: str  # X-Goog-Resource-State: sync or exists
    number: int
    attempt: int = 0


@dataclass
class DeliveryFaults:
    """How Google delivers, from now on (the admin API's `notifications` settings)."""

    drop_rate: float = 0.0  # share of messages never sent
    duplicate_rate: float = 0.0  # share of messages sent twice (the same message number)
    delay_s: float = 0.0  # every message leaves this late...
    delay_spread_s: float = 0.0  # ... plus up to this much more, drawn per message
    sequential_numbers: bool = False  # Google: increasing, "not sequential"
    retries: int = 0  # resends of a message the receiver answered 500/502/503/504
    retry_backoff_s: float = 1.0  # the first resend's wait; doubled for each next one
    timeout_s: float = 10.0  # how long Google waits for the receiver's answer
    allow_http: bool = False  # plain http:// to a loopback address (a test's `calsync serve`)

    def update(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            if not hasattr(self, key):
                raise ValueError(f"notifications: no setting {key!r}")
            current = getattr(self, key)
            if isinstance(current, bool):
                value = bool(value)
            elif isinstance(current, int):
                value = int(value)
            else:
                value = float(value)
            setattr(self, key, value)
        for rate in (self.drop_rate, self.duplicate_rate):
            if not 0.0 <= rate <= 1.0:
                raise ValueError("notifications: rates are between 0 and 1")
        if min(self.delay_s, self.delay_spread_s, self.retry_backoff_s) < 0 or self.retries < 0:
            raise ValueError("notifications: delays and retries are not negative")
        if self.timeout_s <= 0:
            raise ValueError("notifications: timeout_s is positive")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notifier:
    """Sends channels' messages from background threads: a dispatcher that waits for each
    message's due time, and a few senders (one channel's messages in order, channels side by
    side). `notify` only queues, so the API call that caused it is never delayed."""

    def __init__(self, trust: ssl.SSLContext | None = None) -> None:
        self.faults = DeliveryFaults()
        self._trust = trust
        self._random = random.Random()
        self._lock = threading.Condition()
        self._due: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._senders: ThreadPoolExecutor | None = None

    def seed(self, value: int | None) -> None:
        with self._lock:
            self._random.seed(value)

    # --- what the API and the admin API call ----------------------------------------------

    def notify(self, channel: Channel, resource_state: str) -> None:
        """Queue one message for a channel (`sync` when it is made, `exists` on a change),
        through the configured faults."""
        with self._lock:
            now = time.time()
            if channel.stopped or channel.expired(now):
                channel.counts["suppressed"] += 1
                return
            if resource_state == "sync":
                number = 1
            else:
                step = (
                    1
                    if self.faults.sequential_numbers
                    else self._random.randint(1, _MAX_NUMBER_STEP)
                )
                number = max(channel.last_number, 1) + step
            channel.last_number = number
            channel.counts[resource_state] += 1
            if self._random.random() < self.faults.drop_rate:
                channel.counts["dropped"] += 1
                return
            delivery = Delivery(channel, resource_state, number)
            self._queue(delivery, now + self._delay())
            if self._random.random() < self.faults.duplicate_rate:
                channel.counts["duplicated"] += 1
                self._queue(Delivery(channel, resource_state, number), now + self._delay())

    def stop(self, channel: Channel) -> None:
        with self._lock:
            channel.stopped = True
            channel.outbox.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._due.clear()
            self._lock.notify_all()
        if self._senders is not None:
            self._senders.shutdown(wait=False, cancel_futures=True)

    # --- the background -------------------------------------------------------------------

    def _delay(self) -> float:
        spread = self.faults.delay_spread_s
        return self.faults.delay_s + (self._random.uniform(0, spread) if spread else 0.0)

    def _queue(self, delivery: Delivery, due: float) -> None:
        if self._closed:
            return
        if self._thread is None:  # started on first use: a sandbox nobody watches has none
            self._senders = ThreadPoolExecutor(max_workers=4, thread_name_prefix="google-push")
            self._thread = threading.Thread(
                target=self._dispatch, name="google-push-dispatch", daemon=True
            )
            self._thread.start()
        heapq.heappush(self._due, (due, next(self._order), delivery))
        self._lock.notify_all()

    def _dispatch(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._due:
                    self._lock.wait()
                    continue
                due, _, delivery = self._due[0]
                wait = due - time.time()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._due)
                channel = delivery.channel
                channel.outbox.append(delivery)
                if not channel.sending and self._senders is not None:
                    channel.sending = True
                    self._senders.submit(self._drain, channel)

    def _drain(self, channel: Channel) -> None:
        while True:
            with self._lock:
                if self._closed or not channel.outbox:
                    channel.sending = False
                    return
                delivery = channel.outbox.popleft()
                if channel.stopped or channel.expired():
                    channel.counts["suppressed"] += 1
                    continue
                timeout = self.faults.timeout_s
            status = self._post(delivery, timeout)
            with self._lock:
                channel.counts["sent"] += 1
                if status in SUCCESS:
                    channel.counts["delivered"] += 1
                    continue
                channel.counts["failed"] += 1
                if status in RETRYABLE and delivery.attempt < self.faults.retries:
                    channel.counts["retried"] += 1
                    wait = self.faults.retry_backoff_s * 2**delivery.attempt
                    delivery.attempt += 1
                    self._queue(delivery, time.time() + wait)

    def _post(self, delivery: Delivery, timeout: float) -> int | None:
        channel = delivery.channel
        headers = {
            "Content-Type": "application/json; utf-8",
            "User-Agent": USER_AGENT,
            "X-Goog-Channel-ID": channel.id,
            "X-Goog-Channel-Expiration": formatdate(channel.expiration_ms / 1000, usegmt=True),
            "X-Goog-Resource-ID": channel.resource_id,
            "X-Goog-Resource-URI": channel.resource_uri,
            "X-Goog-Resource-State": delivery.state,
            "X-Goog-Message-Number": str(delivery.number),
        }
        if channel.token is not None:
            headers["X-Goog-Channel-Token"] = channel.token
        request = urllib.request.Request(channel.address, data=b"", method="POST", headers=headers)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),  # straight to the address, as Google would
            urllib.request.HTTPSHandler(context=self._trust),
        )
        try:
            with opener.open(request, timeout=timeout) as answer:
                answer.read()
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):  # refused, reset, timed out, a bad certificate
            return None
