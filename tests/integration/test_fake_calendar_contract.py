"""The unit tier's FakeCalendar keeps the contract of the real one: one story of calls, played
on the real adapter (consumer.adapters.google.calendar over HTTPS) against the Google sandbox and on
the fake, answers the same at every step. If the sandbox's reading of Google changes, this
says the fake must change with it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest

from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calendar
from consumer.domain.errors import GoogleApiError
from consumer.domain.planning import google_event_id
from tests.plugins.environment import Env
from tests.unit.fakes import FakeCalendar


class Backend(Protocol):
    """A gateway, and what a person does at Google outside of it."""

    gateway: Any
    token: str
    calendar: str

    def delete_by_hand(self, event_id: str) -> None: ...

    def share_read_only(self) -> None: ...

    def remove_calendar(self) -> None: ...


class SandboxBackend:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.email, _ = env.account("contract")
        self.calendar = self.email
        self.token = env.sandbox.issue_access_token(self.email)[0]
        self.gateway = google_calendar(env.settings, Metrics())

    def delete_by_hand(self, event_id: str) -> None:
        self.env.sandbox.delete_by_hand(self.email, self.calendar, event_id)

    def share_read_only(self) -> None:
        self.env.sandbox.set_access_role(self.email, self.calendar, "reader")

    def remove_calendar(self) -> None:
        self.env.sandbox.remove_calendar(self.email, self.calendar)


class FakeBackend:
    def __init__(self, update_status: int) -> None:
        self.calendar = "owner@example.com"
        self.gateway = FakeCalendar(update_status)
        self.token = self.gateway.issue_token("ya29.issued")
        self.gateway.add_calendar(self.calendar, primary=True)

    def delete_by_hand(self, event_id: str) -> None:
        self.gateway.delete_by_hand(self.calendar, event_id)

    def share_read_only(self) -> None:
        self.gateway.share_read_only(self.calendar)

    def remove_calendar(self) -> None:
        self.gateway.remove_calendar(self.calendar)


def body(summary: str, event_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "summary": summary,
        "start": {"dateTime": "2026-04-15T09:00:00Z"},
        "end": {"dateTime": "2026-04-15T11:00:00Z"},
    }
    if event_id is not None:
        event["id"] = event_id
    return event


async def answer(call: Awaitable[Any]) -> Any:
    """What a step saw: its refusal (status, reason), or what matters of its result."""
    try:
        result = await call
    except GoogleApiError as exc:
        return (exc.status, exc.reason)
    if isinstance(result, dict):
        return ("ok", result.get("status"), result.get("summary"))
    if result is None:
        return ("ok",)
    return ("ok", result.writable, result.access_role)  # a calendar list entry


async def story(backend: Backend) -> list[Any]:
    g, t, cal = backend.gateway, backend.token, backend.calendar
    a = google_event_id("lnk_contract", "bk_a", 0)
    b = google_event_id("lnk_contract", "bk_b", 0)
    c = google_event_id("lnk_contract", "bk_c", 0)
    steps: list[Callable[[], Awaitable[Any]] | Callable[[], None]] = [
        lambda: g.insert_event(t, cal, body("first", a)),
        lambda: g.insert_event(t, cal, body("again", a)),  # 409: the id is taken
        lambda: g.update_event(t, cal, a, body("second")),
        lambda: g.get_event(t, cal, a),
        lambda: g.calendar_entry(t, cal),
        lambda: backend.delete_by_hand(a),  # a person deletes it in Google Calendar
        lambda: g.get_event(t, cal, a),  # 200, cancelled
        lambda: g.update_event(t, cal, a, body("third")),  # 403 forbidden (or 410)
        lambda: g.delete_event(t, cal, a),  # 410
        lambda: g.insert_event(t, cal, body("reuse", a)),  # 409: a deleted id stays taken
        lambda: g.update_event(t, cal, b, body("never")),  # 404
        lambda: g.delete_event(t, cal, b),
        lambda: g.get_event(t, cal, b),
        lambda: g.insert_event("ya29.not-a-token", cal, body("x", c)),  # 401
        lambda: backend.share_read_only(),
        lambda: g.insert_event(t, cal, body("read-only", c)),  # 403 requiredAccessLevel
        lambda: g.calendar_entry(t, cal),
        lambda: backend.remove_calendar(),
        lambda: g.insert_event(t, cal, body("gone", c)),  # 404
        lambda: g.get_event(t, cal, a),
        lambda: g.calendar_entry(t, cal),
    ]
    seen = []
    for step in steps:
        outcome = step()
        if outcome is not None:
            seen.append(await answer(outcome))
    return seen


@pytest.mark.parametrize("update_status", [403, 410])
async def test_the_fake_calendar_answers_as_the_sandbox_does(env: Env, update_status: int) -> None:
    env.sandbox.configure(deleted_event_update_status=update_status)
    sandbox = SandboxBackend(env)
    try:
        real = await story(sandbox)
    finally:
        sandbox.gateway.close()
        env.sandbox.configure(deleted_event_update_status=403)
    fake = await story(FakeBackend(update_status))
    assert fake == real
    # And the story says what it should (not merely the same on both sides).
    assert real[1] == (409, "duplicate") and real[5] == ("ok", "cancelled", "second")
    assert real[6] == ((403, "forbidden") if update_status == 403 else (410, "deleted"))
    assert real[7] == (410, "deleted") and real[8] == (409, "duplicate")
    assert real[9:12] == [(404, "notFound")] * 3 and real[12] == (401, "authError")
    assert real[13] == (403, "requiredAccessLevel") and real[14] == ("ok", False, "reader")
    assert real[15:] == [(404, "notFound")] * 3
