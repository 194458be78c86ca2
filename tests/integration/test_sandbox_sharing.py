"""The sandbox's shared calendars: one calendar id in two accounts' lists, one set of events."""

from __future__ import annotations

from tests.plugins.environment import Env


def test_a_shared_calendar_is_one_calendar_seen_by_two_accounts(env: Env) -> None:
    owner, _ = env.account("owner")
    manager, _ = env.account("manager")
    env.sandbox.share_calendar(owner, owner, manager, "writer")
    planted = env.sandbox.plant_event(manager, owner, {"summary": "written by the manager"})
    seen_by_owner = env.sandbox.events(owner, owner)
    assert [e["id"] for e in seen_by_owner] == [planted["id"]]
    # Each account keeps its own access role; the owner's stays the owner's.
    env.sandbox.set_access_role(manager, owner, "reader")
    env.sandbox.plant_event(owner, owner, {"summary": "written by the owner"})
    assert len(env.sandbox.events(manager, owner)) == 2
