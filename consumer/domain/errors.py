"""The one error tree, and the one question asked of any failure: is it worth retrying?

Every error this service raises derives from `CalsyncError` and answers `retriable`.
Foreign exceptions (psycopg, aiokafka, OS) are answered by `consumer.adapters.classify`.

`retriable` means an infrastructure fault that will pass by itself (a connection lost, a
server restarting, a serialization failure or deadlock, a timeout): the work is retried
without limit and the offset waits for it. Anything else fails the same way for the same
input (data PostgreSQL refuses, an overflow, a recursion, a bug of ours): it is retried a
bounded number of times and then dead-lettered, so that it costs one message, not a partition.

    CalsyncError
    |-- ClaimLost                 the claim's locks died with their connection (retriable)
    |-- GoogleApiError            a Calendar API failure; retriable per the refusals table
    |-- TokenRefreshFailed        Google refused (not retriable) or was unreachable
    |-- Deferred                  not a failure: the work waits
    |   |-- QuotaPaused           a Google quota is spent for a while
    |   |-- AccountBacklogged     the account's queue is too long, or Google paces it
    |   `-- AccountFailing        the account's calls fail, and enough of them retry already
    |-- LinkHalted                the link left `active` while work was in flight
    |-- CalendarUnavailable       the link's calendar is gone or read-only
    |-- BatchFormatError          Google's batch answer could not be read (also ValueError)
    |-- TokenKeyError             CALSYNC_TOKEN_KEY missing, malformed or wrong
    `-- Refusal                   a request refused, worded for the person who asked
        |-- OAuthRefused          the OAuth flow cannot go on (`problem`)
        |-- StateRefused          the OAuth state is unknown, used or expired (`problem`)
        |-- CalendarTaken         another live link of the activity has that calendar
        |-- TokenRefused          a page token or cookie cannot be honoured (`problem`)
        |-- LinkError             a link request refused (`kind`, `problem`)
        |-- OpsError              an on-call command refused
        |-- CliError              a command line refused
        `-- StartupError          the consumer cannot start; the message says what to do

What a refusal means to the outside (an HTTP status and problem `type`, an exit code) is
decided only by the entrypoints (`consumer.entrypoints.problems`), from its `kind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from consumer.domain.refusals import Action, classify
from consumer.domain.refusals import retriable as action_retriable


class CalsyncError(Exception):
    """Base of this service's own errors."""

    retriable: bool = False


class ClaimLost(CalsyncError):
    """The connection holding the claim's locks broke; the work must start again."""

    retriable = True


@dataclass
class GoogleApiError(CalsyncError):
    """A Calendar API failure, reduced to what the sync engine decides on: what the refusals
    table (consumer.domain.refusals) says to do about it."""

    status: int | None  # None: no HTTP answer (timeout, connection refused)
    reason: str
    message: str
    retry_after: float | None = None
    domain: str = "global"
    method: str = ""  # the call refused, e.g. "events.update"

    def __str__(self) -> str:
        return f"{self.status or 'network'} {self.reason}: {self.message}"

    @property
    def action(self) -> Action:
        return classify(self.status, self.reason, self.domain, self.method)

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return action_retriable(self.action)

    @property
    def rate_limited(self) -> bool:
        return self.action is Action.PACE

    @property
    def gone(self) -> bool:
        return self.action is Action.GONE

    @property
    def unauthorized(self) -> bool:
        return self.action is Action.REFRESH_TOKEN


class TokenRefreshFailed(CalsyncError):
    """An account's access token could not be refreshed: Google refused the grant's refresh
    token (not retriable: the account's links need their owner again) or could not be
    reached (retriable). `description` is Google's `error_description` (for `invalid_grant`:
    revoked, expired, unused for six months), kept for the person who fixes it."""

    def __init__(self, reason: str, permanent: bool, description: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.description = description
        self.retriable = not permanent

    @property
    def explained(self) -> str:
        """`invalid_grant: Token has been expired or revoked.`, or the reason alone."""
        return f"{self.reason}: {self.description}" if self.description else self.reason


class Deferred(CalsyncError):
    """Not a failure: the work waits (a repair takes it up later)."""


class QuotaPaused(Deferred):
    """Google said this quota is spent (an account's or the project's): no call until the
    pause ends. Not a failure: the work is deferred."""

    def __init__(self, scope: str, seconds: float) -> None:
        super().__init__(f"the {scope}'s Google quota is paused for {seconds:.0f}s")
        self.scope = scope
        self.seconds = seconds


class AccountBacklogged(Deferred):
    """The account's queue would make this call wait longer than allowed, or Google asked
    it to slow down: its work leaves the in-flight window (deferred) instead of holding other
    accounts' work behind it."""

    def __init__(self, seconds: float, reason: str = "account_backlogged") -> None:
        super().__init__(f"the account's Google quota is booked for {seconds:.0f}s")
        self.seconds = seconds
        self.reason = reason


class AccountFailing(Deferred):
    """Google fails this account's calls (5xx, timeouts, no connection, answers that are not
    Google's) and as many of its live messages as may retry inside the in-flight window
    already do: this one leaves the window for the repair loop (after its backoff, never
    before `seconds`) instead of holding other accounts' work behind it."""

    reason = "account_failing"

    def __init__(self, seconds: float, cause: str | None) -> None:
        super().__init__(f"the account's Google calls are failing ({cause or 'retrying'})")
        self.seconds = seconds
        self.cause = cause


class SlotTooFar(CalsyncError):
    """The quota's answer to a call that may not wait long: its account's next slot for it
    is `wait_s` away, further than it may wait (`slowed`: because Google just slowed the
    account down). A fact, not a decision: the account pressure decides what the work does
    (consumer.service.pressure)."""

    def __init__(self, wait_s: float, slowed: bool = False) -> None:
        super().__init__(f"the account's next slot is {wait_s:.1f}s away")
        self.wait_s = wait_s
        self.slowed = slowed


class LinkHalted(CalsyncError):
    """The link left `active` while work for it was in flight."""


class CalendarUnavailable(CalsyncError):
    """The link's calendar is gone or no longer writable, as its calendar list entry says."""

    def __init__(self, cause: GoogleApiError, confirmed_by: str) -> None:
        super().__init__(f"{cause} ({confirmed_by})")
        self.cause = cause


class BatchFormatError(CalsyncError, ValueError):
    """Google's answer to a batch could not be read."""


class TokenKeyError(CalsyncError):
    """The token key is missing, malformed, or does not open what is stored."""


# --- refusals ---------------------------------------------------------------------------------


class RefusalKind(StrEnum):
    """What kind of refusal: the entrypoints turn it into an HTTP status or an exit code."""

    INVALID = "invalid"  # the request itself is wrong
    FORBIDDEN = "forbidden"  # not from there (a foreign form)
    NOT_FOUND = "not_found"  # no such thing
    CONFLICT = "conflict"  # the state of things refuses it (disconnected, taken, ...)
    UNPROCESSABLE = "unprocessable"  # well-formed, but not a possible choice
    NOT_CONFIGURED = "not_configured"  # the service lacks a setting
    UPSTREAM = "upstream"  # Google failed
    UNAVAILABLE = "unavailable"  # not now: try again later


class Refusal(CalsyncError):
    """A request that cannot be honoured, worded for the person who asked."""

    kind: RefusalKind = RefusalKind.INVALID


class OAuthRefused(Refusal):
    """The flow cannot go on; `problem` is a short machine-readable name."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class StateRefused(Refusal):
    """The OAuth state is unknown, already used or expired; `problem` says which."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class CalendarTaken(Refusal):
    """Another live link of the activity already syncs the calendar (through whichever
    account: a calendar shared between accounts has one id for all of them)."""

    kind = RefusalKind.CONFLICT

    def __init__(self, link_id: str, state: str = "active", account: str | None = None) -> None:
        super().__init__(link_id)
        self.link_id = link_id
        self.state = state
        self.account = account


class TokenRefused(Refusal):
    """A token or cookie that cannot be honoured; `problem` is a short name."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class LinkError(Refusal):
    """A refusal about a link: `kind` says what kind (the entrypoints answer it with an HTTP
    status), `problem` is a short name. `activity_id`, when known, lets a page offer to
    start again."""

    def __init__(
        self,
        message: str,
        kind: RefusalKind = RefusalKind.INVALID,
        problem: str = "bad_request",
        activity_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.problem = problem
        self.activity_id = activity_id


class OpsError(Refusal):
    """A refusal, worded as one line for the person at the terminal."""


class CliError(Refusal):
    """A refusal the user can act on: printed as one line, exit status 1."""


class StartupError(Refusal):
    """The consumer cannot start; the message says what to do."""


def printable(text: str, limit: int | None = None) -> str:
    """Text that PostgreSQL, JSON and Kafka headers all take: NUL and lone surrogates shown
    escaped, and cut short at `limit` characters."""
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe(exc: BaseException, limit: int = 500) -> str:
    """`Class: message`, cut short: what a dead letter's `error` says of an exception."""
    return printable(f"{type(exc).__name__}: {exc}".strip(), limit)
