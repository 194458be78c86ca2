"""Google Calendar adapter: google-api-python-client builds the calls, aiohttp sends them.

The API client and its resources are built once from the library's bundled discovery
document, and build every request; each call carries its own access token (links belong to
different accounts). The requests are sent by aiohttp on the event loop, over one pool of
kept-alive connections sharing one TLS context: no thread per request in flight. (With a
thread each, as httplib2 needs, a batch of 8 calls cost 0.25 ms of CPU more per call once
the event loop was busy: the threads took turns at the GIL with it. When Google serves a
batch's calls one after another, it needs a request out for every call served at once.)

How many requests are out at once, and how many calls each carries, is measured rather than
configured (consumer/adapters/google/concurrency.py): the limit follows Google's latency and
the quota (Little's law) and backs off on congestion and rate-limit refusals, within
`google_concurrency` connections; calls that wait for a free request go together to Google's
batch endpoint, as many as Google's way of serving a batch allows without costing latency
(`google_batch_size` at most): each call still authenticated, counted against the quotas
and answered on its own. No timer holds a call back to fill a batch.

The batch envelope is written and read here (consumer/adapters/google/batch.py, where the
reason is), the requests inside it built and their answers read by google-api-python-client. A 401
in
a batch is that call's own answer: the sync engine refreshes the token and tries again.

An answer is only taken for Google's when it looks like one (`_not_googles_answer`): a JSON
object of the kind the call asks for (an event with an id for an event's write or read),
an empty body for a delete, Google's JSON error for a refusal. A proxy's login page, a
captive portal or a wrong `CALSYNC_GOOGLE_API_URL` answers 200 with HTML; taken at its word,
a write nobody made would be recorded as applied. Anything else is a GoogleApiError with the
reason `notGoogleAnswer`, which the refusals table retries like a 5xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import httplib2
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from prometheus_client import Gauge

from consumer.adapters.batching import Batcher
from consumer.adapters.google.batch import decode_batch, encode_batch
from consumer.adapters.google.concurrency import ConcurrencyController
from consumer.adapters.metrics import Metrics
from consumer.domain.errors import BatchFormatError, GoogleApiError, printable
from consumer.domain.planning import MANAGED_BY
from consumer.domain.records import CalendarInfo
from consumer.domain.refusals import NOT_GOOGLE_ANSWER

# What Google answers each call with (`kind`), when it does what was asked.
_KINDS = {
    "events.insert": "calendar#event",
    "events.update": "calendar#event",
    "events.patch": "calendar#event",
    "events.get": "calendar#event",  # an event deleted by hand too (`status: cancelled`)
    "events.list": "calendar#events",
    "calendarList.get": "calendar#calendarListEntry",
    "calendarList.list": "calendar#calendarList",
}
_WITH_ID = frozenset({"calendar#event", "calendar#calendarListEntry"})


def _not_google(
    status: int, response: httplib2.Response, content: bytes, method: str, why: str
) -> GoogleApiError:
    """The answer's status, type and size, never its body (a page may echo what was sent)."""
    content_type = response.get("content-type") or "no content type"
    return GoogleApiError(
        status,
        NOT_GOOGLE_ANSWER,
        printable(
            f"a {status} answer that is not Google's ({content_type}, {len(content)} bytes): {why}",
            500,
        ),
        method=method,
    )


def _not_googles_answer(
    method: str, response: httplib2.Response, content: bytes, result: Any
) -> GoogleApiError | None:
    """None when a 2xx `result` is what Google answers `method` with; otherwise the failure
    (retried: whoever answered, nothing is known to be done)."""
    status = int(response.status)
    if method == "events.delete":  # Google: 204, no body
        if not content.strip():
            return None
        return _not_google(status, response, content, method, "expected no body")
    kind = _KINDS.get(method)
    if kind is None:
        return None  # a call this adapter does not make
    if isinstance(result, dict) and result.get("kind") == kind:
        if kind not in _WITH_ID or (isinstance(result.get("id"), str) and result["id"]):
            return None
    expected = f"expected a {kind}" + (" with an id" if kind in _WITH_ID else "")
    return _not_google(status, response, content, method, expected)


def _from_http_error(exc: HttpError, method: str) -> GoogleApiError:
    reason, domain = "unknown", "global"
    message = str(exc.reason)
    status = int(exc.resp.status)
    try:
        body = json.loads(exc.content)
        googles = isinstance(body, dict) and isinstance(body.get("error"), dict | str)
    except (ValueError, TypeError):
        googles = False
    if not googles and 400 <= status < 500 and status not in (408, 429):
        # A refusal's meaning (gone, exists, no right to the calendar) is Google's to give:
        # a page answered 404 or 403 by something in front of Google says nothing of the
        # event or the calendar. (5xx, 408 and 429 are retried or paced whoever says them.)
        return _not_google(status, exc.resp, exc.content, method, "expected Google's error")
    try:
        error = json.loads(exc.content)["error"]
        first = error["errors"][0]
        reason = first.get("reason", reason)
        domain = first.get("domain", domain)
        message = error.get("message", message)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    retry_after = exc.resp.get("retry-after")
    try:
        retry = float(retry_after) if retry_after else None
    except ValueError:
        retry = None
    return GoogleApiError(
        status, str(reason), printable(str(message), 500), retry, str(domain), method
    )


@dataclass(frozen=True)
class _Resources:
    """Built once: building a resource walks the discovery document (a profile showed
    `service.events()` per call costing more than the rest of the request)."""

    events: Any
    calendar_list: Any


Call = tuple[Callable[[_Resources], Any], str]  # (builds the request, access token)


WRITE_ROLES = frozenset({"writer", "owner"})
# `kind` named too: a partial response carries only what `fields` names, and an answer
# without it is not taken for Google's (see _not_googles_answer).
_MANAGED_FIELDS = (
    "kind,items(id,status,summary,description,location,start,end,extendedProperties),nextPageToken"
)


class _Exchange(SimpleNamespace):
    """What the transport tells about one request (aiohttp's per-request trace context)."""

    cold: bool = False  # a connection was opened for it (a TLS handshake first)


async def _connection_opened(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceConnectionCreateEndParams,
) -> None:
    exchange = context.trace_request_ctx
    if isinstance(exchange, _Exchange):
        exchange.cold = True


def _response_of(answer: aiohttp.ClientResponse) -> httplib2.Response:
    """aiohttp's answer as the httplib2 response google-api-python-client reads."""
    info = {name.lower(): value for name, value in answer.headers.items()}
    info["status"] = str(answer.status)
    response = httplib2.Response(info)
    response.reason = answer.reason or ""
    return response


@dataclass(frozen=True)
class CalendarConfig:
    """Where the Calendar API is and how it is called (CALSYNC_GOOGLE_API_URL, _CA_BUNDLE,
    _TIMEOUT_S, _GOOGLE_CONCURRENCY, _GOOGLE_BATCH_SIZE), and the project's quota the group
    aims at, in calls a second (None: no quota), which the concurrency controller follows."""

    api_endpoint: str  # .../calendar/v3/
    batch_uri: str  # .../batch/calendar/v3
    ca_bundle: str | None
    timeout_s: float
    concurrency: int
    batch_size: int
    project_quota_per_s: float | None


class GoogleCalendar:
    def __init__(self, config: CalendarConfig, metrics: Metrics) -> None:
        self._metrics = metrics
        self._timeout = config.timeout_s
        self._service = build(  # builds requests only: they are sent by aiohttp, below
            "calendar",
            "v3",
            http=httplib2.Http(),
            client_options={"api_endpoint": config.api_endpoint},
            static_discovery=True,
            cache_discovery=False,
        )
        self._resources = _Resources(self._service.events(), self._service.calendarList())
        self._batch_uri = config.batch_uri
        self._tls = ssl.create_default_context(cafile=config.ca_bundle)
        self._max_connections = config.concurrency
        self._session: aiohttp.ClientSession | None = None
        self._closing: asyncio.Task[None] | None = None
        self.flow = ConcurrencyController(
            max_requests=config.concurrency,
            max_batch=config.batch_size,
            quota_per_s=config.project_quota_per_s,
        )
        self._calls: Batcher[Call, Any] = Batcher(
            self._send, max_size=self.flow.take_batch_size, concurrency=lambda: self.flow.limit
        )
        self._watch_flow()

    def _watch_flow(self) -> None:
        registry = self._metrics.registry
        Gauge(
            "calsync_google_requests_limit",
            "Requests to Google allowed in flight at once, "
            "as the concurrency controller measures the need",
            registry=registry,
        ).set_function(lambda: self.flow.limit)
        Gauge(
            "calsync_google_requests_in_flight", "Requests to Google in flight", registry=registry
        ).set_function(lambda: self._calls.flushing)
        Gauge(
            "calsync_google_batch_size_limit",
            "Most calls one request to Google carries, from how Google serves a batch",
            registry=registry,
        ).set_function(lambda: self.flow.batch_size)
        Gauge(
            "calsync_google_calls_waiting",
            "Google calls waiting for a free request",
            registry=registry,
        ).set_function(lambda: self._calls.waiting)

    def _client(self) -> aiohttp.ClientSession:
        """One session (connection pool, one TLS context) for every request, made in the
        event loop that sends them."""
        if self._session is None or self._session.closed:
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_create_end.append(_connection_opened)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trace_configs=[tracing],
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._closing is not None:
            await self._closing

    def close(self) -> None:
        """Close the connections; called from within the event loop, the closing finishes
        in it (`aclose` to wait for it)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            self._closing = asyncio.get_running_loop().create_task(session.close())

    def _request(self, call: Call) -> Any:
        make_request, token = call
        request = make_request(self._resources)
        request.headers["authorization"] = f"Bearer {token}"
        return request

    async def _execute(self, call: Call) -> tuple[list[Any], float, bool]:
        """The answer (a failure is its GoogleApiError), the seconds Google took, and
        whether a connection was opened first."""
        request = self._request(call)
        method = str(request.methodId).removeprefix("calendar.")
        exchange = _Exchange()
        started = time.perf_counter()
        self._metrics.google_batches.observe(1)
        try:
            async with self._client().request(
                request.method,
                request.uri,
                data=request.body,
                headers=request.headers,
                trace_request_ctx=exchange,
            ) as answer:
                content = await answer.read()
                response = _response_of(answer)
            result = request.postproc(response, content)  # HttpError from 300 on
            failure = _not_googles_answer(method, response, content, result)
        except HttpError as exc:
            self._metrics.google_call(method, started, int(exc.resp.status))
            return [_from_http_error(exc, method)], time.perf_counter() - started, exchange.cold
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            self._metrics.google_call(method, started, None)
            return (
                [GoogleApiError(None, type(exc).__name__, str(exc) or "no answer", method=method)],
                time.perf_counter() - started,
                exchange.cold,
            )
        self._metrics.google_call(method, started, response.status)
        return [failure or result], time.perf_counter() - started, exchange.cold

    async def _execute_batch(self, calls: list[Call]) -> tuple[list[Any], float, bool]:
        """Answers in the calls' order (a call's failure is its GoogleApiError), the
        seconds Google took, and whether a connection was opened first."""
        requests = [self._request(call) for call in calls]
        methods = [str(r.methodId).removeprefix("calendar.") for r in requests]
        batch = encode_batch(requests)
        exchange = _Exchange()
        self._metrics.google_batches.observe(len(calls))
        started = time.perf_counter()
        try:
            async with self._client().post(
                self._batch_uri,
                data=batch.body,
                headers={"content-type": batch.content_type},
                trace_request_ctx=exchange,
            ) as answer:
                content = await answer.read()
                response = _response_of(answer)
            if response.status >= 300:  # the batch as a whole refused (5xx, 429, 400)
                raise HttpError(response, content, uri=self._batch_uri)
            parts = decode_batch(response.get("content-type", ""), content, len(calls))
        except HttpError as exc:
            error = _from_http_error(exc, "batch")
            status: int | None = int(exc.resp.status)
        except (TimeoutError, OSError, aiohttp.ClientError, BatchFormatError) as exc:
            error = GoogleApiError(None, type(exc).__name__, str(exc) or "no answer")
            status = None
        else:
            seconds = time.perf_counter() - started
            return (
                [
                    self._answer(request, method, part, started)
                    for request, method, part in zip(requests, methods, parts, strict=True)
                ],
                seconds,
                exchange.cold,
            )
        for method in methods:
            self._metrics.google_call(method, started, status)
        return (
            [dataclasses.replace(error, method=method) for method in methods],
            time.perf_counter() - started,
            exchange.cold,
        )

    def _answer(
        self,
        request: Any,
        method: str,
        part: tuple[httplib2.Response, bytes] | None,
        started: float,
    ) -> Any:
        """One call's answer inside a batch: its result, or its GoogleApiError."""
        if part is None:
            self._metrics.google_call(method, started, None)
            return GoogleApiError(None, "BatchFormatError", "no answer for the call", method=method)
        response, content = part
        try:
            result = request.postproc(response, content)
        except HttpError as exc:
            self._metrics.google_call(method, started, int(exc.resp.status))
            return _from_http_error(exc, method)
        self._metrics.google_call(method, started, int(response.status))
        return _not_googles_answer(method, response, content, result) or result

    async def _send(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            answers, seconds, cold = await self._execute(calls[0])
        else:
            answers, seconds, cold = await self._execute_batch(calls)
        refused = sum(1 for a in answers if isinstance(a, GoogleApiError) and a.rate_limited)
        self.flow.answered(len(calls), seconds, refused, waiting=self._calls.waiting > 0, cold=cold)
        return answers

    async def _call(self, make_request: Callable[[_Resources], Any], token: str) -> Any:
        return await self._calls.submit((make_request, token))

    async def insert_event(
        self, token: str, calendar_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            lambda r: r.events.insert(calendarId=calendar_id, body=body), token
        )
        return result

    async def update_event(
        self, token: str, calendar_id: str, event_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            lambda r: r.events.update(calendarId=calendar_id, eventId=event_id, body=body), token
        )
        return result

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None:
        await self._call(lambda r: r.events.delete(calendarId=calendar_id, eventId=event_id), token)

    async def get_event(self, token: str, calendar_id: str, event_id: str) -> dict[str, Any]:
        """The event as Google holds it; one deleted by a person comes back with
        `status: cancelled` (404 when Google no longer keeps it at all)."""
        result: dict[str, Any] = await self._call(
            lambda r: r.events.get(calendarId=calendar_id, eventId=event_id), token
        )
        return result

    async def calendar_entry(self, token: str, calendar_id: str) -> CalendarInfo:
        """The account's calendar list entry for one calendar (404: not in its list)."""
        item = await self._call(lambda r: r.calendar_list.get(calendarId=calendar_id), token)
        return _calendar_info(item)

    async def list_link_events(
        self, token: str, calendar_id: str, link_id: str
    ) -> list[dict[str, Any]]:
        """Every live event this service put on the calendar for one link: its id and
        private extended properties (which deployment wrote it)."""
        events: list[dict[str, Any]] = []
        page_token: str | None = None
        while True:

            def request(r: _Resources, after: str | None = page_token) -> Any:
                return r.events.list(
                    calendarId=calendar_id,
                    privateExtendedProperty=f"link_id={link_id}",
                    maxResults=2500,
                    pageToken=after,
                    fields="kind,items(id,extendedProperties),nextPageToken",
                )

            page = await self._call(request, token)
            events.extend(page.get("items", []))
            page_token = page.get("nextPageToken")
            if not page_token:
                return events

    async def managed_events_page(
        self,
        token: str,
        calendar_id: str,
        page_token: str | None,
        time_min: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page (up to 2,500) of the live events this service put on a calendar, for
        any link (found by their private `managed_by` property), with the fields rendered:
        what a reconcile compares. `time_min`: only events that end after it (Google's
        `timeMin` filters on an event's end, exclusive). Returns the events and the next
        page's token."""
        page = await self._call(managed_events_request(calendar_id, page_token, time_min), token)
        return list(page.get("items", [])), page.get("nextPageToken")

    async def list_calendars(self, token: str) -> list[CalendarInfo]:
        calendars: list[CalendarInfo] = []
        page_token: str | None = None
        while True:
            page = await self._call(lambda r: r.calendar_list.list(pageToken=page_token), token)  # noqa: B023
            calendars += [_calendar_info(item) for item in page.get("items", [])]
            page_token = page.get("nextPageToken")
            if not page_token:
                return calendars


def rfc3339(moment: datetime) -> str:
    """A moment as Google takes it in a query (`timeMin`): RFC 3339 in UTC, whole seconds
    (Google ignores fractions)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def managed_events_request(
    calendar_id: str, page_token: str | None, time_min: datetime | None
) -> Callable[[_Resources], Any]:
    """The events.list of one page of a calendar's events of ours (see managed_events_page);
    built from the client's resources."""

    def request(r: _Resources) -> Any:
        optional = {} if time_min is None else {"timeMin": rfc3339(time_min)}
        return r.events.list(
            calendarId=calendar_id,
            privateExtendedProperty=f"managed_by={MANAGED_BY}",
            maxResults=2500,
            pageToken=page_token,
            fields=_MANAGED_FIELDS,
            **optional,
        )

    return request


def _calendar_info(item: dict[str, Any]) -> CalendarInfo:
    role = item.get("accessRole", "reader")
    return CalendarInfo(
        id=item["id"],
        name=item.get("summaryOverride") or item.get("summary", ""),
        primary=bool(item.get("primary", False)),
        writable=role in WRITE_ROLES,
        access_role=role,
    )
