"""Reading a Kafka record as a booking event, or saying precisely why it is not one.

Pure and total: whatever bytes arrive, the answer is a BookingEvent or a BadMessage, never an
exception. The limits are the contract's (consumer.domain.models, README): a value larger than
MAX_MESSAGE_BYTES or nested deeper than MAX_JSON_DEPTH is refused before it can cost memory
or recursion, and every field is bounded so that nothing accepted here can fail later in
PostgreSQL, in UTC conversion or at Google.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consumer.domain.models import (
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    SUPPORTED_SCHEMA_VERSIONS,
    BookingEvent,
)

# Every error_type a dead letter can carry (README, "Bad input"). The runner adds
# `internal_error` (a message our own code failed on the same way, attempt after attempt)
# and `record_unreadable` (a record the Kafka client could not read at all).
ERROR_TYPES = (
    "message_too_large",
    "not_utf8",
    "key_not_utf8",
    "not_json",
    "json_too_deep",
    "json_number_too_large",
    "unsupported_schema_version",
    "schema_violation",
    "key_mismatch",
    "internal_error",
    "record_unreadable",
)


@dataclass(frozen=True)
class BadMessage:
    error_type: str  # one of ERROR_TYPES
    error: str


def parse_message(key: bytes | None, value: bytes | None) -> BookingEvent | BadMessage:
    if value is None:
        return BadMessage(
            "schema_violation", "empty value (tombstone): a booking event is required"
        )
    if len(value) > MAX_MESSAGE_BYTES:
        return BadMessage(
            "message_too_large",
            f"value is {len(value)} bytes; the contract takes at most {MAX_MESSAGE_BYTES}",
        )
    key_text: str | None = None
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadMessage("key_not_utf8", f"key is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadMessage("not_utf8", f"value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadMessage(
            "not_json", f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )
    except RecursionError:
        return BadMessage(
            "json_too_deep", f"value nests deeper than {MAX_JSON_DEPTH} objects or arrays"
        )
    except ValueError as exc:  # an integer of more than 4,300 digits (CPython's int limit)
        return BadMessage("json_number_too_large", f"value holds a number too large: {exc}")
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        return BadMessage(
            "json_too_deep", f"value nests deeper than {MAX_JSON_DEPTH} objects or arrays"
        )
    if not isinstance(data, dict):
        return BadMessage("schema_violation", "value must be a JSON object")
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        return BadMessage(
            "unsupported_schema_version",
            f"schema_version {_short(version)} is not supported "
            f"(supported: {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})",
        )
    try:
        event = BookingEvent.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        return BadMessage("schema_violation", problems)
    if key_text is not None and key_text != event.booking.id:
        return BadMessage(
            "key_mismatch",
            f"message key {_short(key_text)} is not booking.id {_short(event.booking.id)}",
        )
    return event


def _depth_exceeds(data: Any, limit: int) -> bool:
    """Iterative, so that a deep value cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _short(value: object, limit: int = 80) -> str:
    """A value for an error text: repr'd (NUL and the like stay visible) and cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
