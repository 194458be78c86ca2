"""Which answers are taken for Google's (consumer/adapters/google/calendar.py), call by call:
a JSON object of the kind the call asks for, an empty body for a delete, Google's JSON error
for a refusal. Anything else is a retriable `notGoogleAnswer`."""

from __future__ import annotations

import json
from typing import Any

import httplib2
import pytest
from googleapiclient.errors import HttpError

from consumer.adapters.google.calendar import _from_http_error, _not_googles_answer
from consumer.domain.refusals import NOT_GOOGLE_ANSWER, Action

PAGE = b"<html><body>Sign in to the proxy</body></html>"
EVENT = {"kind": "calendar#event", "id": "abc123", "status": "confirmed"}


def _response(status: int, content_type: str = "application/json; charset=UTF-8") -> Any:
    return httplib2.Response({"status": str(status), "content-type": content_type})


def _deserialized(content: bytes) -> Any:
    """What google-api-python-client hands back for a 2xx body (JsonModel.deserialize)."""
    try:
        return json.loads(content)
    except ValueError:
        return content.decode()


@pytest.mark.parametrize(
    ("method", "status", "content", "googles"),
    [
        ("events.insert", 200, json.dumps(EVENT).encode(), True),
        ("events.update", 200, json.dumps(EVENT).encode(), True),
        ("events.patch", 200, json.dumps(EVENT).encode(), True),
        ("events.get", 200, json.dumps({**EVENT, "status": "cancelled"}).encode(), True),
        ("events.insert", 200, PAGE, False),
        ("events.get", 200, PAGE, False),
        ("events.update", 200, b"{}", False),
        ("events.insert", 200, json.dumps({**EVENT, "id": ""}).encode(), False),
        ("events.insert", 200, json.dumps({"kind": "calendar#events"}).encode(), False),
        ("events.insert", 200, b"[]", False),
        ("events.delete", 204, b"", True),
        ("events.delete", 200, b"", True),
        ("events.delete", 200, PAGE, False),
        ("events.list", 200, b'{"kind": "calendar#events", "items": []}', True),
        ("events.list", 200, b'{"items": []}', False),
        ("calendarList.get", 200, b'{"kind": "calendar#calendarListEntry", "id": "c"}', True),
        ("calendarList.get", 200, b'{"kind": "calendar#calendarListEntry"}', False),
        ("calendarList.list", 200, b'{"kind": "calendar#calendarList", "items": []}', True),
        ("calendarList.list", 200, PAGE, False),
    ],
)
def test_a_2xx_is_googles_answer_only_when_it_is_what_the_call_asks_for(
    method: str, status: int, content: bytes, googles: bool
) -> None:
    failure = _not_googles_answer(method, _response(status), content, _deserialized(content))
    if googles:
        assert failure is None
        return
    assert failure is not None
    assert (failure.status, failure.reason, failure.method) == (status, NOT_GOOGLE_ANSWER, method)
    assert failure.retriable and failure.action is Action.RETRY
    assert b"proxy" not in str(failure).encode()  # what it said is not repeated


@pytest.mark.parametrize(
    ("status", "content", "reason", "action"),
    [
        (
            404,
            b'{"error": {"code": 404, "message": "Not Found", "errors": '
            b'[{"domain": "global", "reason": "notFound"}]}}',
            "notFound",
            Action.GONE,
        ),
        (404, PAGE, NOT_GOOGLE_ANSWER, Action.RETRY),
        (403, PAGE, NOT_GOOGLE_ANSWER, Action.RETRY),
        (409, b"", NOT_GOOGLE_ANSWER, Action.RETRY),
        (503, PAGE, "unknown", Action.RETRY),
        (429, PAGE, "unknown", Action.PACE),
    ],
)
def test_a_refusal_means_what_google_says_only_when_google_said_it(
    status: int, content: bytes, reason: str, action: Action
) -> None:
    exc = HttpError(_response(status, "text/html"), content, uri="https://example.test/")
    error = _from_http_error(exc, "events.update")
    assert (error.status, error.reason, error.action) == (status, reason, action)
