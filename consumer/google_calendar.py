"""Google Calendar adapter: google-api-python-client calls, run on a bounded thread pool.

The API client and its resources are built once from the library's bundled discovery
document; each call carries its own access token (links belong to different accounts), and
each thread its own httplib2 connection (httplib2 is not thread-safe), reused across calls.

Calls go out alone while fewer than `google_concurrency` requests are out; beyond that,
the calls that wait go together to Google's batch endpoint (`google_batch_size` at most):
one HTTPS request instead of fifty, each call still authenticated, counted against the
quotas and answered on its own. No timer holds a call back to fill a batch.

A 401 inside a batch is sent once more by google-api-python-client (its BatchHttpRequest
retries 401 parts after refreshing credentials, and ours carry the token in a header), so
an access token Google refuses costs one extra call before the sync engine refreshes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httplib2
from googleapiclient.discovery import build
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest

from consumer.batching import Batcher
from consumer.core import MANAGED_BY
from consumer.errors import CalsyncError, printable
from consumer.metrics import Metrics
from consumer.refusals import Action, classify, retriable
from consumer.settings import Settings


@dataclass
class GoogleApiError(CalsyncError):
    """A Calendar API failure, reduced to what the sync engine decides on: what the refusals
    table (consumer.refusals) says to do about it."""

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
        return retriable(self.action)

    @property
    def rate_limited(self) -> bool:
        return self.action is Action.PACE

    @property
    def gone(self) -> bool:
        return self.action is Action.GONE

    @property
    def unauthorized(self) -> bool:
        return self.action is Action.REFRESH_TOKEN


def _from_http_error(exc: HttpError, method: str) -> GoogleApiError:
    reason, domain = "unknown", "global"
    message = str(exc.reason)
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
    return GoogleApiError(int(exc.resp.status), str(reason), printable(str(message), 500),
                          retry, str(domain), method)


@dataclass(frozen=True)
class _Resources:
    """Built once: building a resource walks the discovery document (a profile showed
    `service.events()` per call costing more than the rest of the request)."""

    events: Any
    calendar_list: Any


Call = tuple[Callable[[_Resources], Any], str]  # (builds the request, access token)


WRITE_ROLES = frozenset({"writer", "owner"})
_MANAGED_FIELDS = ("items(id,status,summary,description,location,start,end,"
                   "extendedProperties),nextPageToken")


@dataclass(frozen=True)
class CalendarInfo:
    id: str
    name: str
    primary: bool
    writable: bool
    access_role: str


class GoogleCalendar:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._metrics = metrics or Metrics()
        self._timeout = settings.google_timeout_s
        self._ca_certs = settings.google_ca_bundle
        self._local = threading.local()
        self._service = build(
            "calendar", "v3",
            http=httplib2.Http(timeout=self._timeout, ca_certs=self._ca_certs),
            client_options={"api_endpoint": settings.calendar_api_endpoint},
            static_discovery=True,
            cache_discovery=False,
        )
        self._resources = _Resources(self._service.events(), self._service.calendarList())
        self._batch_uri = settings.calendar_batch_uri
        self._pool = ThreadPoolExecutor(settings.google_concurrency,
                                        thread_name_prefix="google")
        self._calls: Batcher[Call, Any] = Batcher(
            self._send, max_size=settings.google_batch_size,
            concurrency=settings.google_concurrency)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _http(self) -> httplib2.Http:
        http: httplib2.Http | None = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = httplib2.Http(timeout=self._timeout,
                                                    ca_certs=self._ca_certs)
        return http

    def _request(self, call: Call) -> Any:
        make_request, token = call
        request = make_request(self._resources)
        request.headers["authorization"] = f"Bearer {token}"
        return request

    def _execute(self, call: Call) -> Any:
        request = self._request(call)
        method = str(request.methodId).removeprefix("calendar.")
        started = time.perf_counter()
        self._metrics.google_batches.observe(1)
        try:
            answer = request.execute(http=self._http(), num_retries=0)
        except HttpError as exc:
            self._metrics.google_call(method, started, int(exc.resp.status))
            return _from_http_error(exc, method)
        except (TimeoutError, OSError, httplib2.HttpLib2Error) as exc:
            self._metrics.google_call(method, started, None)
            self._local.http = None  # the connection may be half-used; start afresh
            return GoogleApiError(None, type(exc).__name__, str(exc) or "no answer",
                                  method=method)
        self._metrics.google_call(method, started, 200)
        return answer

    def _execute_batch(self, calls: list[Call]) -> list[Any]:
        """Answers in the calls' order; a call's failure is its GoogleApiError."""
        requests = [self._request(call) for call in calls]
        methods = [str(r.methodId).removeprefix("calendar.") for r in requests]
        answers: list[Any] = [None] * len(calls)
        started = time.perf_counter()

        def answered(request_id: str, response: Any, exception: Exception | None) -> None:
            n = int(request_id)
            if isinstance(exception, HttpError):
                self._metrics.google_call(methods[n], started, int(exception.resp.status))
                answers[n] = _from_http_error(exception, methods[n])
            else:
                self._metrics.google_call(methods[n], started, 200)
                answers[n] = response

        batch = BatchHttpRequest(callback=answered, batch_uri=self._batch_uri)
        for n, request in enumerate(requests):
            batch.add(request, request_id=str(n))
        self._metrics.google_batches.observe(len(calls))
        try:
            batch.execute(http=self._http())
        except HttpError as exc:  # the batch as a whole refused (5xx, 429, 400)
            error = _from_http_error(exc, "batch")
            status: int | None = int(exc.resp.status)
        except (TimeoutError, OSError, httplib2.HttpLib2Error, BatchError) as exc:
            self._local.http = None
            error = GoogleApiError(None, type(exc).__name__, str(exc) or "no answer")
            status = None
        else:
            return answers
        for method in methods:
            self._metrics.google_call(method, started, status)
        return [dataclasses.replace(error, method=method) for method in methods]

    async def _send(self, calls: list[Call]) -> list[Any]:
        loop = asyncio.get_running_loop()
        if len(calls) == 1:
            return [await loop.run_in_executor(self._pool, self._execute, calls[0])]
        return await loop.run_in_executor(self._pool, self._execute_batch, calls)

    async def _call(self, make_request: Callable[[_Resources], Any], token: str) -> Any:
        return await self._calls.submit((make_request, token))

    async def insert_event(self, token: str, calendar_id: str, body: dict[str, Any]
                           ) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            lambda r: r.events.insert(calendarId=calendar_id, body=body), token)
        return result

    async def update_event(self, token: str, calendar_id: str, event_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            lambda r: r.events.update(calendarId=calendar_id, eventId=event_id, body=body),
            token)
        return result

    async def delete_event(self, token: str, calendar_id: str, event_id: str) -> None:
        await self._call(
            lambda r: r.events.delete(calendarId=calendar_id, eventId=event_id), token)

    async def get_event(self, token: str, calendar_id: str, event_id: str) -> dict[str, Any]:
        """The event as Google holds it; one deleted by a person comes back with
        `status: cancelled` (404 when Google no longer keeps it at all)."""
        result: dict[str, Any] = await self._call(
            lambda r: r.events.get(calendarId=calendar_id, eventId=event_id), token)
        return result

    async def calendar_entry(self, token: str, calendar_id: str) -> CalendarInfo:
        """The account's calendar list entry for one calendar (404: not in its list)."""
        item = await self._call(lambda r: r.calendar_list.get(calendarId=calendar_id), token)
        return _calendar_info(item)

    async def list_link_events(self, token: str, calendar_id: str, link_id: str
                               ) -> list[dict[str, Any]]:
        """Every live event this service put on the calendar for one link."""
        events: list[dict[str, Any]] = []
        page_token: str | None = None
        while True:
            def request(r: _Resources, after: str | None = page_token) -> Any:
                return r.events.list(
                    calendarId=calendar_id, privateExtendedProperty=f"link_id={link_id}",
                    maxResults=2500, pageToken=after, fields="items(id),nextPageToken")

            page = await self._call(request, token)
            events.extend(page.get("items", []))
            page_token = page.get("nextPageToken")
            if not page_token:
                return events

    async def managed_events_page(self, token: str, calendar_id: str, page_token: str | None
                                  ) -> tuple[list[dict[str, Any]], str | None]:
        """One page (up to 2,500) of the live events this service put on a calendar, for
        any link (found by their private `managed_by` property), with the fields rendered:
        what a reconcile compares. Returns the events and the next page's token."""
        def request(r: _Resources) -> Any:
            return r.events.list(
                calendarId=calendar_id, privateExtendedProperty=f"managed_by={MANAGED_BY}",
                maxResults=2500, pageToken=page_token, fields=_MANAGED_FIELDS)

        page = await self._call(request, token)
        return list(page.get("items", [])), page.get("nextPageToken")

    async def list_calendars(self, token: str) -> list[CalendarInfo]:
        calendars: list[CalendarInfo] = []
        page_token: str | None = None
        while True:
            page = await self._call(
                lambda r: r.calendar_list.list(pageToken=page_token), token)  # noqa: B023
            calendars += [_calendar_info(item) for item in page.get("items", [])]
            page_token = page.get("nextPageToken")
            if not page_token:
                return calendars


def _calendar_info(item: dict[str, Any]) -> CalendarInfo:
    role = item.get("accessRole", "reader")
    return CalendarInfo(
        id=item["id"], name=item.get("summaryOverride") or item.get("summary", ""),
        primary=bool(item.get("primary", False)),
        writable=role in WRITE_ROLES, access_role=role,
    )
