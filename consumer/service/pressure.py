"""How much of the in-flight window one Google account may hold while Google does not take
its calls: one object, per account, for every reason its work leaves the window early.

A live message (one that may be deferred: a message in the window, or a repair) whose call
Google does not take retries within `CALSYNC_RETRY_BUDGET_S`. That is right for a blip and
wrong for an account in trouble: a few hundred of its messages retrying for the whole budget
would fill the window and hold every other account's bookings behind them. So at most
`places` of an account's live messages retry inside the window at once, whatever the reason:

- `account_rate_limited`: Google asked the account to slow down (403/429 rate limits);
- `account_failing`: its calls fail (5xx, 408, timeouts, connections refused, answers that
  are not Google's).

Any other live message of that account leaves the window at once, without a call while the
places are taken, or right after its first failure when they were taken meanwhile: its
result is `deferred` with that reason and the repair loop takes it later (never before the
account's Retry-After ends; after the repair loop's backoff when its calls fail). The
places are given back when the retrying messages end, applied or out of budget.

The other way an account's live work leaves the window early is the quota's queue: a live
message waits for its account's slot only `CALSYNC_QUOTA_MAX_WAIT_S`; when the quota says its
slot is further off (now, or once Google slows the account down while it waits), it leaves
with `account_backlogged` or `account_rate_limited` (`slot_too_far`). One object, one
question: should this account's live work leave the window?

Also kept here: until when Google's last Retry-After for the account runs.
"""

from __future__ import annotations

import time
from collections import Counter

from consumer.domain.errors import AccountBacklogged, SlotTooFar

RATE_LIMITED = "account_rate_limited"
FAILING = "account_failing"
BACKLOGGED = "account_backlogged"  # its quota queue would keep a live message too long
REASONS = (RATE_LIMITED, FAILING)
PLACES_PER_ACCOUNT = 2  # live messages of one account retrying inside the window at once
_ANNOUNCE_EVERY_S = 60.0  # one log line per troubled account at most this often


class AccountPressure:
    def __init__(self, places: int = PLACES_PER_ACCOUNT) -> None:
        self.places = places
        # Per reason, per account: live messages retrying inside the window for it.
        self.retrying: dict[str, Counter[str]] = {reason: Counter() for reason in REASONS}
        self._retry_after_until: dict[str, float] = {}  # monotonic: Google's Retry-After ends
        self._last_failure: dict[str, str] = {}  # what the account's calls last failed with
        self._announced: dict[str, float] = {}  # monotonic: when it was last logged

    def held(self, account: str) -> int:
        """The account's places taken (any reason)."""
        return sum(counts[account] for counts in self.retrying.values())

    def full(self, account: str) -> bool:
        return self.held(account) >= self.places

    def why(self, account: str) -> str:
        """Why the account's places are taken: a rate limit outranks failures (its deferral
        waits for the account's quota queue too)."""
        return RATE_LIMITED if self.retrying[RATE_LIMITED][account] > 0 else FAILING

    def enter(self, account: str, reason: str) -> bool:
        """Take one of the account's places to retry inside the window; False when none is
        left (the message is to leave the window)."""
        if self.full(account):
            return False
        self.retrying[reason][account] += 1
        return True

    def move(self, account: str, was: str, reason: str) -> None:
        """A message holding a place retries now for another reason (its place kept)."""
        self.leave(account, was)
        self.retrying[reason][account] += 1

    def leave(self, account: str, reason: str) -> None:
        counts = self.retrying[reason]
        counts[account] -= 1
        if counts[account] <= 0:
            del counts[account]

    def failed(self, account: str, cause: str) -> None:
        """The account's last failure: what its deferred messages' results say."""
        self._last_failure[account] = cause

    def last_failure(self, account: str) -> str | None:
        return self._last_failure.get(account)

    def recovered(self, account: str) -> None:
        """A call of the account went through."""
        self._last_failure.pop(account, None)

    def retry_after(self, account: str, seconds: float) -> None:
        """Google asked this account to wait `seconds` before its next call."""
        until = time.monotonic() + seconds
        self._retry_after_until[account] = max(until, self._retry_after_until.get(account, 0.0))

    def retry_after_left(self, account: str) -> float:
        """Seconds left of the account's last Retry-After (0: none)."""
        until = self._retry_after_until.get(account)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._retry_after_until[account]
            return 0.0
        return left

    def slot_too_far(self, far: SlotTooFar) -> AccountBacklogged:
        """The quota says a live message's slot is further off than it may wait: it leaves
        the window, rate limited when Google just slowed the account down (its repair not
        before the slot), backlogged otherwise (a long queue of the account's own)."""
        return AccountBacklogged(far.wait_s, RATE_LIMITED if far.slowed else BACKLOGGED)

    def announce(self, account: str) -> bool:
        """Whether to log that the account's work leaves the window (once a minute)."""
        now = time.monotonic()
        if now - self._announced.get(account, -_ANNOUNCE_EVERY_S) < _ANNOUNCE_EVERY_S:
            return False
        if len(self._announced) > 1000:  # kept for the accounts in trouble lately only
            self._announced = {
                a: at for a, at in self._announced.items() if now - at < _ANNOUNCE_EVERY_S
            }
        self._announced[account] = now
        return True
