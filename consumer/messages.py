"""Reading a Kafka record as a booking event, or saying precisely why it is not one."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from consumer.models import SUPPORTED_SCHEMA_VERSIONS, BookingEvent


@dataclass(frozen=True)
class BadMessage:
    # not_utf8 | not_json | unsupported_schema_version | schema_violation | key_mismatch
    error_type: str
    error: str


def parse_message(key: bytes | None, value: bytes | None) -> BookingEvent | BadMessage:
    if value is None:
        return BadMessage("schema_violation",
                          "empty value (tombstone): a booking event is required")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadMessage("not_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadMessage("not_json", f"value is not JSON: {exc.msg} at line {exc.lineno} "
                                      f"column {exc.colno}")
    if not isinstance(data, dict):
        return BadMessage("schema_violation", "value must be a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return BadMessage("unsupported_schema_version",
                          f"schema_version {version!r} is not supported "
                          f"(supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    try:
        event = BookingEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        return BadMessage("schema_violation", problems)
    if key is not None and key.decode("utf-8", "replace") != event.booking.id:
        return BadMessage("key_mismatch", f"message key {key.decode('utf-8', 'replace')!r} "
                                          f"is not booking.id {event.booking.id!r}")
    return event
