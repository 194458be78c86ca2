"""The batch envelope (consumer/adapters/google/batch.py) against Google's format as the sandbox's
parser reads it and its renderer writes it: no server, no network."""

from __future__ import annotations

import json

import httplib2
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from calsync_dev.sandbox.batch import InnerResponse, parse_batch, render_batch
from calsync_dev.sandbox.state import GoogleError
from consumer.adapters.google.batch import decode_batch, encode_batch
from consumer.domain.errors import BatchFormatError

# --- the batch envelope (consumer/adapters/google/batch.py), against the sandbox's reading ----


def test_the_batch_envelope_round_trips_through_googles_format() -> None:
    service = build(
        "calendar",
        "v3",
        http=httplib2.Http(),
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": "https://google.test/calendar/v3/"},
    )
    insert = service.events().insert(calendarId="a@example.com", body={"summary": "Ünïcode"})
    insert.headers["authorization"] = "Bearer t1"
    delete = service.events().delete(calendarId="a@example.com", eventId="ev1")
    delete.headers["authorization"] = "Bearer t2"
    encoded = encode_batch([insert, delete])
    parts = parse_batch(encoded.content_type, encoded.body)  # as the sandbox reads a batch
    assert [(p.content_id, p.method, p.path, p.query) for p in parts] == [
        ("<0>", "POST", "/calendar/v3/calendars/a%40example.com/events", "alt=json"),
        ("<1>", "DELETE", "/calendar/v3/calendars/a%40example.com/events/ev1", ""),
    ]
    assert parts[0].headers["authorization"] == "Bearer t1"
    assert json.loads(parts[0].body) == {"summary": "Ünïcode"} and parts[1].body == b""

    content_type, payload = render_batch(
        [  # the answer, in reverse order, as Google may
            InnerResponse("<1>", 204, None, {}),
            InnerResponse(
                "<0>",
                403,
                GoogleError(403, "userRateLimitExceeded", "User Rate Limit Exceeded").body(),
                {"Retry-After": "3"},
            ),
        ]
    )
    (first, first_body), (second, second_body) = decode_batch(  # type: ignore[misc]
        content_type, payload, 2
    )
    assert first.status == 403 and first["retry-after"] == "3"
    assert json.loads(first_body)["error"]["errors"][0]["reason"] == "userRateLimitExceeded"
    assert second.status == 204 and second_body == b""
    with pytest.raises(HttpError):
        insert.postproc(first, first_body)
    assert not delete.postproc(second, second_body)  # no content


def test_an_unreadable_batch_answer_is_a_format_error() -> None:
    with pytest.raises(BatchFormatError):
        decode_batch("application/json", b"{}", 1)
    with pytest.raises(BatchFormatError):
        decode_batch("multipart/mixed", b"", 1)
    content_type, payload = render_batch([InnerResponse("<7>", 200, {}, {})])
    with pytest.raises(BatchFormatError):  # an answer to a call that was not asked
        decode_batch(content_type, payload, 2)
    # A call left unanswered comes back as None: its caller sees a failure of its own.
    content_type, payload = render_batch([InnerResponse("<0>", 200, {"id": "x"}, {})])
    quoted = content_type.replace("boundary=", 'boundary="') + '"'  # quoted, as RFC 2046 allows
    answers = decode_batch(quoted, payload, 2)
    assert answers[1] is None and answers[0] is not None and answers[0][0].status == 200
