"""The services' answers: models the entrypoints render (their attributes read by code)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from consumer.service.answers import Disconnected, LinkSummary

AT = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def link(**overrides: object) -> LinkSummary:
    fields: dict[str, object] = {
        "id": "lnk_1",
        "activity_id": "act_1",
        "account_email": "a@example.com",
        "calendar_id": None,
        "state": "pending_calendar",
        "state_reason": None,
        "state_changed_at": AT,
        "created_at": AT,
        "backfilled_at": None,
    }
    fields.update(overrides)
    return LinkSummary.model_validate(fields)


def test_an_answer_dumps_to_the_json_the_service_used_to_return() -> None:
    dumped = link().model_dump(mode="json")
    assert dumped["state_changed_at"] == "2026-04-01T12:00:00+00:00"  # isoformat, not Z
    assert dumped["calendar_id"] is None and "calendar_id" in dumped  # null, not absent
    assert json.loads(json.dumps(link().model_dump())) == dumped


def test_an_answer_is_read_by_its_attributes_and_written_by_nobody() -> None:
    answer = link(state="active", calendar_id="cal_1")
    assert answer.state == "active" and answer.calendar_id == "cal_1"
    assert answer == link(state="active", calendar_id="cal_1") and len({answer, answer}) == 1
    assert answer != answer.model_dump()  # a model, not the dict it dumps to
    with pytest.raises(TypeError):
        answer["state"]  # type: ignore[index]
    with pytest.raises(ValidationError):  # frozen: nothing is written through it
        answer.state = "disconnected"  # type: ignore[misc]


def test_answers_are_strict_and_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        link(state_reason=5)  # never quietly made text
    with pytest.raises(ValidationError):
        link(tokens="secret")  # a link's answer never carries more than it says


def test_a_nested_answer_is_read_by_its_attributes_all_the_way_down() -> None:
    done = Disconnected(
        link=link(state="disconnected"),
        events_removed=2,
        events_kept=False,
        token_revoked=True,
        token_still_used_by=[],
    )
    assert done.events_removed == 2 and done.link.state == "disconnected"
    assert done.model_dump()["link"]["state"] == "disconnected"  # what the entrypoints render
