"""The published JSON Schema of the booking event, generated from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from consumer.domain.models import BookingEvent

# The repository's schemas/ (for `calsync schema --write` in a checkout).
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "booking-event.schema.json"


def booking_event_schema_text() -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **BookingEvent.model_json_schema(mode="validation"),
    }
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"
