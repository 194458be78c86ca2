"""The published schema, message parsing and offset bookkeeping: pure, no I/O."""

from __future__ import annotations

import json

import pytest

from consumer.domain.messages import BadMessage, parse_message
from consumer.domain.models import BookingEvent
from consumer.domain.offsets import PartitionOffsets
from consumer.entrypoints.schema import SCHEMA_PATH, booking_event_schema_text
from tests.plugins.events import booking_event


def test_published_schema_is_generated_from_the_models() -> None:
    assert SCHEMA_PATH.read_text() == booking_event_schema_text(), (
        "schemas/ is out of step with consumer/domain/models.py: run `calsync schema --write`"
    )


def test_published_schema_accepts_the_documented_example() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text())
    example = booking_event("bk_1", 3, timezone="America/New_York")
    jsonschema.validate(example, schema)
    BookingEvent.model_validate(example)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "event_type": "booking.exploded"}, schema)


@pytest.mark.parametrize(
    ("key", "value", "error_type"),
    [
        (b"bk_1", None, "schema_violation"),
        (b"bk_1", b"\xff", "not_utf8"),
        (b"bk_1", b"", "not_json"),
        (b"bk_1", b"null", "schema_violation"),
        (b"bk_1", json.dumps({"schema_version": "1"}).encode(), "unsupported_schema_version"),
        (
            b"bk_1",
            json.dumps({**booking_event(), "schema_version": 9}).encode(),
            "unsupported_schema_version",
        ),
        (
            b"bk_1",
            json.dumps({**booking_event(), "event_type": "booking.moved"}).encode(),
            "schema_violation",
        ),
        (b"bk_1", json.dumps({**booking_event(), "event_id": "nope"}).encode(), "schema_violation"),
        (b"bk_2", json.dumps(booking_event("bk_1")).encode(), "key_mismatch"),
    ],
)
def test_bad_messages_are_classified(key: bytes, value: bytes | None, error_type: str) -> None:
    parsed = parse_message(key, value)
    assert isinstance(parsed, BadMessage)
    assert parsed.error_type == error_type
    assert parsed.error


def test_schema_violations_name_the_field() -> None:
    data = booking_event("bk_1", status="archived")
    parsed = parse_message(b"bk_1", json.dumps(data).encode())
    assert isinstance(parsed, BadMessage) and "booking.status" in parsed.error


def test_good_messages_parse_and_unknown_fields_are_tolerated() -> None:
    data = booking_event("bk_1")
    data["booking"]["party_size"] = 4
    parsed = parse_message(b"bk_1", json.dumps(data).encode())
    assert isinstance(parsed, BookingEvent) and parsed.booking.id == "bk_1"
    assert isinstance(parse_message(None, json.dumps(data).encode()), BookingEvent)


def test_commit_point_never_passes_an_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        offsets.add(offset)
    assert offsets.commit_point() is None
    offsets.finish(12)
    offsets.finish(11)
    assert offsets.commit_point() is None  # 10 is still in flight
    offsets.finish(10)
    assert offsets.commit_point() == 13
    offsets.committed = 13
    assert offsets.commit_point() is None
    offsets.finish(13)
    assert offsets.commit_point() == 14 and len(offsets) == 0
    assert offsets.add(5) is False  # a redelivery is not taken twice
    assert offsets.add(13) is False and offsets.add(14) is True


def test_first_unrecorded_offset_is_what_lag_counts_from() -> None:
    offsets = PartitionOffsets()
    assert offsets.first_unrecorded() is None  # nothing read yet
    for offset in (10, 11, 12):
        offsets.add(offset)
    assert offsets.first_unrecorded() == 10  # in flight is not recorded
    offsets.finish(11)
    assert offsets.first_unrecorded() == 10
    offsets.finish(10)
    assert offsets.first_unrecorded() == 12
    offsets.finish(12)
    assert offsets.first_unrecorded() == 13
