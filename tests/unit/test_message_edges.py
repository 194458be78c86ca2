"""Parsing at the contract's edges, without a broker: total (never raises), and what it
accepts can be stored and rendered; NUL in any string field is a schema violation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.domain.messages import ERROR_TYPES, parse_message
from consumer.domain.models import BookingEvent
from consumer.domain.planning import render_event
from tests.plugins.events import STRING_FIELDS, booking_event, edge_messages


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_nul_in_any_string_field_is_a_schema_violation(field: str) -> None:
    data = booking_event("bk_1")
    data["booking"][field] = "x\x00"
    parsed = parse_message(None, json.dumps(data).encode())
    assert not isinstance(parsed, BookingEvent)
    assert parsed.error_type == "schema_violation" and f"booking.{field}" in parsed.error


@given(batch=st.tuples(*(edge_messages(n) for n in range(30))))
@settings(max_examples=25, deadline=None, database=None)
def test_whatever_the_edges_parsing_is_total_and_what_it_accepts_is_storable(
    batch: tuple[tuple[bytes | None, bytes], ...],
) -> None:
    for key, value in batch:
        parsed = parse_message(key, value)  # never raises
        if isinstance(parsed, BookingEvent):
            stored = parsed.model_dump_json()
            assert "\\u0000" not in stored
            stored.encode("utf-8")  # no lone surrogate
            assert 0 <= parsed.booking.version < 2**63
            render_event(parsed.booking, "lnk_x", "abcde")
        else:
            assert parsed.error_type in ERROR_TYPES and parsed.error
