"""The one Google-call policy: how every call to Google is made, whoever makes it (the sync
engine, the link lifecycle, reconcile, the repair loop).

- Quota: a call first takes a slot of its account's and the project's group-wide quota
  (consumer.adapters.postgres.quota); lower tickets (older messages) go first. A quota
  Google says is spent pauses it (QuotaPaused): the work is deferred.
- Retries: a failure that passes (5xx, timeouts, rate limits) is retried with exponential
  backoff and full jitter, never sooner than Retry-After, within `retry_budget_s` counted
  from the first call (consumer.service.retrying). A 401 on a token believed valid refreshes
  it once. A rate limit slows the account's quota down group-wide.
- Deferral: a live message (a message in the in-flight window, or a repair) whose account
  cannot be served now leaves the window instead of waiting there: the account pressure
  decides (consumer.service.pressure).
- Halts: a link that leaves `active` (here or in another process) gets no call from then on,
  whatever was waiting (LinkHalts).
- Cancellation safety: a call sent is waited for even when its caller is cancelled (a
  shutdown's grace ran out), so the pair's claim is never released while a write may still
  land.

`GoogleCalls.for_link()` is the policy for one (link, booking) operation; `operator()` for an
operator's call outside any message (a calendar listing, a disconnect's deletes).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from consumer.domain.errors import (
    AccountBacklogged,
    AccountFailing,
    GoogleApiError,
    LinkHalted,
    QuotaPaused,
    SlotTooFar,
    TokenRefreshFailed,
)
from consumer.domain.models import LinkRow
from consumer.domain.refusals import Action
from consumer.service.ports import AccessTokens, Quota
from consumer.service.pressure import FAILING, RATE_LIMITED, AccountPressure
from consumer.service.retrying import within_budget

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CallPolicy:
    """The policy's numbers (CALSYNC_RETRY_BUDGET_S, _RETRY_INITIAL_S, _RETRY_MAX_S,
    _GOOGLE_TIMEOUT_S, _QUOTA_MAX_WAIT_S)."""

    retry_budget_s: float
    retry_initial_s: float
    retry_max_s: float
    google_timeout_s: float
    quota_max_wait_s: float


def _google_failure_passes(exc: BaseException) -> bool:
    return isinstance(exc, GoogleApiError) and exc.retriable


def _token_outage(exc: BaseException) -> bool:
    return isinstance(exc, TokenRefreshFailed) and exc.retriable


class LinkHalts:
    """Links known to have left `active`, with since when (the database's state_changed_at,
    as epoch seconds): work that read `active` before that stops before its next call, and
    a wait for a quota slot stops at once (each halted link has a signal)."""

    def __init__(self) -> None:
        self.halted: dict[str, float] = {}
        self._signals: dict[str, asyncio.Event] = {}

    def __contains__(self, link_id: str) -> bool:
        return link_id in self.halted

    def since(self, link_id: str) -> float | None:
        return self.halted.get(link_id)

    def halt(self, link_id: str, since: float) -> None:
        self.halted[link_id] = max(since, self.halted.get(link_id, -math.inf))
        signal = self._signals.get(link_id)
        if signal is not None:
            signal.set()

    def resume(self, link_id: str) -> None:
        self.halted.pop(link_id, None)
        self._signals.pop(link_id, None)

    def signal(self, link_id: str) -> asyncio.Event:
        signal = self._signals.get(link_id)
        if signal is None:
            signal = self._signals[link_id] = asyncio.Event()
            if link_id in self.halted:
                signal.set()
        return signal


class GoogleCalls:
    """The policy, with what it keeps for the process: the quota, the tokens, the account
    pressure, the halted links and the tickets (arrival order)."""

    def __init__(self, policy: CallPolicy, quota: Quota, tokens: AccessTokens) -> None:
        self.policy = policy
        self.quota = quota
        self.tokens = tokens
        self.pressure = AccountPressure()
        self.halts = LinkHalts()
        self._tickets = itertools.count()

    def next_ticket(self) -> int:
        return next(self._tickets)

    def for_link(
        self, row: LinkRow, ticket: int | None = None, may_defer: bool = False
    ) -> LinkCalls:
        """The calls of one operation on `row`'s calendar. `may_defer`: a live message, which
        leaves the in-flight window rather than wait for an account in trouble."""
        return LinkCalls(self, row, self.next_ticket() if ticket is None else ticket, may_defer)

    async def operator(self, account: str, call: Callable[[], Awaitable[T]]) -> T:
        """An operator's call (a listing, a disconnect's deletes): first in line for the
        account's slot (someone waits for it), retried within the budget while it fails for
        a reason that passes, a rate limit slowing the account group-wide; a spent quota
        raises QuotaPaused (the caller says it its own way)."""

        async def attempt() -> T:
            await self.quota.acquire(account, -1)
            try:
                return await call()
            except GoogleApiError as exc:
                if exc.rate_limited:
                    await self.quota.refused(account, exc.reason, exc.retry_after)
                elif exc.action is Action.PAUSE_ACCOUNT:
                    paused = await self.quota.pause(account, exc.reason)
                    raise QuotaPaused("account", paused) from exc
                elif exc.action is Action.PAUSE_PROJECT:
                    raise QuotaPaused("project", await self.quota.pause(None, exc.reason)) from exc
                raise

        policy = self.policy
        return await within_budget(
            attempt,
            retriable=_google_failure_passes,
            budget_s=policy.retry_budget_s,
            initial_s=policy.retry_initial_s,
            max_s=policy.retry_max_s,
        )


class LinkCalls:
    """Google calls for one (link, booking) operation: counts attempts, refreshes the token
    once on an unexpected 401, takes quota slots, turns a spent quota into a pause, and keeps
    a live message's account pressure."""

    def __init__(self, calls: GoogleCalls, row: LinkRow, ticket: int, may_defer: bool) -> None:
        self.calls = calls
        self.row = row
        self.ticket = ticket  # the message's place in arrival order: slots go to the oldest
        self.may_defer = may_defer
        self.token: str | None = None
        self.attempts = 0
        self.refreshed = False
        # Why this call holds one of its account's places in the window, if it does.
        self.placed: str | None = None

    @property
    def account(self) -> str:
        return self.row.link.account_email

    def _check_active(self) -> None:
        if self.row.link.id in self.calls.halts:
            raise LinkHalted(self.row.link.id)

    async def run(self, call: Callable[[str], Awaitable[T]]) -> T:
        """`call(access_token)`, as the policy says."""
        self._check_active()
        if self.token is None:
            self.token = await self._access_token()
        try:
            return await self._with_retries(call)
        except GoogleApiError as exc:
            if not exc.unauthorized or self.refreshed:
                raise
        # A token we believed valid was refused: refresh once and try again.
        self._check_active()
        self.refreshed = True
        self.token = await self._access_token(rejected=self.token)
        return await self._with_retries(call)

    async def _access_token(self, rejected: str | None = None) -> str:
        """The account's token; an unreachable token endpoint is retried within the budget."""
        self._check_active()

        async def attempt() -> str:
            self._check_active()
            return await self.calls.tokens.access_token(
                self.account, self.row.tokens, rejected=rejected
            )

        policy = self.calls.policy
        return await within_budget(
            attempt,
            retriable=_token_outage,
            budget_s=policy.retry_budget_s,
            initial_s=policy.retry_initial_s,
            max_s=policy.retry_max_s,
        )

    async def _with_retries(self, call: Callable[[str], Awaitable[T]]) -> T:
        pressure = self.calls.pressure
        if self.may_defer and self.attempts == 0 and pressure.full(self.account):
            # Google is pacing this account, or failing its calls, and enough of its
            # messages already retry in the window: this one leaves at once, without a call
            # Google would refuse and without holding a place other accounts' messages need
            # meanwhile; its repair comes no sooner than Google's Retry-After allows.
            raise self._leave_window(pressure.why(self.account))
        # The first slot is waited for before the retry budget starts: a long queue for a
        # busy account is not a failure (but a live message may leave the window for it).
        await self._slot(self.may_defer)
        policy = self.calls.policy
        try:
            return await within_budget(
                lambda: self._attempt(call),
                retriable=_google_failure_passes,
                budget_s=policy.retry_budget_s,
                initial_s=policy.retry_initial_s,
                max_s=policy.retry_max_s,
                before_retry=lambda: self._slot(False),
            )
        finally:
            if self.placed is not None:
                pressure.leave(self.account, self.placed)
                self.placed = None

    def _leave_window(
        self, why: str, cause: str | None = None
    ) -> AccountBacklogged | AccountFailing:
        """The deferral of a live message whose account has no place left in the window."""
        account, pressure = self.account, self.calls.pressure
        if pressure.announce(account):
            log.warning(
                "account_work_deferred",
                account=account,
                reason=why,
                cause=cause or pressure.last_failure(account),
                retrying_in_window=pressure.held(account),
            )
        initial = self.calls.policy.retry_initial_s
        if why == FAILING:
            return AccountFailing(
                max(pressure.retry_after_left(account), initial),
                cause or pressure.last_failure(account),
            )
        return AccountBacklogged(
            max(
                pressure.retry_after_left(account),
                self.calls.quota.expected_wait(account),
                initial,
            ),
            RATE_LIMITED,
        )

    async def _attempt(self, call: Callable[[str], Awaitable[T]]) -> T:
        # Checked right before each call, after every wait: a link disconnected meanwhile
        # gets no write, whatever was waiting.
        self._check_active()
        self.attempts += 1
        assert self.token is not None
        try:
            answer = await outlive_cancellation(
                call(self.token), self.calls.policy.google_timeout_s + 1.0
            )
        except GoogleApiError as exc:
            await self._spent_quota(exc)
            self._failed(exc)
            raise
        self.calls.pressure.recovered(self.account)
        return answer

    async def _slot(self, may_defer: bool) -> None:
        """A quota slot; a link halted while waiting for it stops the wait at once; a live
        message whose slot is too far off leaves the window."""
        quota = self.calls.quota
        max_wait_s = self.calls.policy.quota_max_wait_s if may_defer else None
        try:
            if not quota.limited:
                # No quota configured: nothing to wait for but a pause check, so no race
                # with the halt signal (two futures and a wait per call cost CPU for nothing).
                await quota.acquire(self.account, self.ticket, max_wait_s)
                return
            await self._slot_or_halt(max_wait_s)
        except SlotTooFar as far:
            raise self.calls.pressure.slot_too_far(far) from None

    async def _slot_or_halt(self, max_wait_s: float | None) -> None:
        halted = self.calls.halts.signal(self.row.link.id)
        waiting = asyncio.ensure_future(
            self.calls.quota.acquire(self.account, self.ticket, max_wait_s)
        )
        stop = asyncio.ensure_future(halted.wait())
        try:
            await asyncio.wait([waiting, stop], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Cancelled meanwhile (a rebalance's drain): give the place in the queue up, or
            # it would take a slot reserved group-wide for nobody.
            waiting.cancel()
            raise
        finally:
            stop.cancel()
        if not waiting.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            raise LinkHalted(self.row.link.id)
        waiting.result()

    def _failed(self, exc: GoogleApiError) -> None:
        """A retriable failure of a live message: it retries inside the window only while
        its account has a place left there (pressure.py); otherwise it leaves it now."""
        if not exc.retriable:
            return
        account, pressure = self.account, self.calls.pressure
        why = RATE_LIMITED if exc.action is Action.PACE else FAILING
        if why == FAILING:
            pressure.failed(account, str(exc))
            if exc.retry_after:  # a 503 may say when to come back
                pressure.retry_after(account, exc.retry_after)
        if not self.may_defer:
            return
        if self.placed is not None:  # it retries already: its place kept, its reason told
            if self.placed != why:
                pressure.move(account, self.placed, why)
                self.placed = why
            return
        if why == RATE_LIMITED:
            # Google asked this account to slow down. A few of its live messages wait for
            # it inside the window; more would hold other accounts' messages behind them:
            # those go to the repair loop (not before Retry-After).
            wait = max(exc.retry_after or 0.0, self.calls.quota.expected_wait(account))
            policy = self.calls.policy
            if wait > policy.quota_max_wait_s or not pressure.enter(account, why):
                raise AccountBacklogged(max(wait, policy.retry_initial_s), RATE_LIMITED) from exc
        elif not pressure.enter(account, why):
            raise self._leave_window(why, str(exc)) from exc
        self.placed = why

    async def _spent_quota(self, exc: GoogleApiError) -> None:
        quota, account = self.calls.quota, self.account
        action = exc.action
        if action is Action.PACE:
            if exc.retry_after:
                self.calls.pressure.retry_after(account, exc.retry_after)
            await quota.refused(account, exc.reason, exc.retry_after)
        elif action is Action.PAUSE_ACCOUNT:
            raise QuotaPaused("account", await quota.pause(account, exc.reason)) from exc
        elif action is Action.PAUSE_PROJECT:
            raise QuotaPaused("project", await quota.pause(None, exc.reason)) from exc


async def outlive_cancellation(call: Awaitable[T], timeout_s: float) -> T:
    """Await a Google call; if the caller is cancelled meanwhile (a shutdown's grace ran
    out), wait for the request to end before the cancellation goes on: once sent, a write
    cannot be called back from Google, and the pair's claim must not be released while it
    may still land (a later owner's newer write could be overwritten)."""
    request = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(request)
    except asyncio.CancelledError:
        await asyncio.wait([request], timeout=timeout_s)
        if request.done() and not request.cancelled():
            request.exception()  # retrieved: the caller is gone
        raise
