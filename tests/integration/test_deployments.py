"""Two deployments (production and staging, two regions) syncing to the same calendar keep
to their own events: each tags what it writes with its deployment id, and treats an event
tagged with another one as not its own (reconcile lists it as `foreign` and never touches
it; a disconnect never removes it). Events written before the tag existed are ours when
their link id is one of our links."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from calsync_dev.sandbox import SandboxClient
from calsync_dev.stack import DatabaseServer
from tests.oracle import assert_exact
from tests.plugins.environment import Env, calsync, wait_until
from tests.plugins.events import booking_event
from tests.plugins.stack import Broker

STAGING = "staging-eu"


@pytest.fixture
async def staging(
    postgres: DatabaseServer, broker: Broker, sandbox: SandboxClient
) -> AsyncIterator[Env]:
    """A second deployment: its own database, topics and consumer group, and its own
    CALSYNC_DEPLOYMENT_ID; the same Google sandbox."""
    other = Env(postgres, broker, sandbox)
    other.settings = other.settings.model_copy(update={"deployment_id": STAGING})
    await other.topics()
    yield other
    await other.close()


async def sync(env: Env, events: list[dict[str, Any]]) -> None:
    before = len(env.results())
    async with env.consumer():
        for event in events:
            await env.publish(event)
        await wait_until(lambda: len(env.results()) >= before + len(events), what="results")
        await wait_until(env.all_committed, what="offsets")


def of_link(env: Env, email: str, link_id: str) -> list[dict[str, Any]]:
    return [
        e for e in env.events(email) if e["extendedProperties"]["private"]["link_id"] == link_id
    ]


async def test_each_deployments_reconcile_leaves_the_others_events_alone(
    env: Env, staging: Env
) -> None:
    email, refresh = env.account("shared")
    ours = await env.link(email, refresh)
    theirs_refresh = f"1//refresh-{uuid.uuid4().hex}"
    env.sandbox.add_account(email, theirs_refresh)  # the same account, connected to staging
    theirs = await staging.link(email, theirs_refresh)
    latest = {"bk_1": booking_event("bk_1", 1), "bk_2": booking_event("bk_2", 1)}
    # Staging mirrors bookings: the same booking id, its own content.
    theirs_latest = {
        "bk_1": booking_event("bk_1", 1, customer_name="Staging One"),
        "bk_3": booking_event("bk_3", 1),
    }
    await sync(env, list(latest.values()))
    await sync(staging, list(theirs_latest.values()))
    their_events = sorted(of_link(env, email, theirs), key=lambda e: e["id"])
    assert len(their_events) == 2 and len(env.events(email)) == 4

    dry = calsync(env, "reconcile", "--json")
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)
    assert found["found"] == {"foreign": 2}, found
    report = found["links"][0]
    assert {(d["booking_id"], d["link_id"]) for d in report["foreign"]} == {
        ("bk_1", theirs),
        ("bk_3", theirs),
    }
    # A missing event of ours is created beside the other deployment's for the same booking.
    ours_bk1 = next(
        e
        for e in of_link(env, email, ours)
        if e["extendedProperties"]["private"]["booking_id"] == "bk_1"
    )
    env.sandbox.delete_by_hand(email, email, ours_bk1["id"])
    executed = calsync(env, "reconcile", "--execute", "--json")
    assert executed.returncode == 0, executed.stderr
    answer = json.loads(executed.stdout)
    assert answer["found"] == {"foreign": 2, "missing": 1}
    assert answer["repaired"] == {"missing": 1}
    assert sorted(of_link(env, email, theirs), key=lambda e: e["id"]) == their_events
    assert {e["extendedProperties"]["private"]["deployment"] for e in their_events} == {STAGING}
    assert_exact(env, email, ours, latest)

    # And the other way round: staging's reconcile leaves ours alone.
    our_events = sorted(of_link(env, email, ours), key=lambda e: e["id"])
    assert {e["extendedProperties"]["private"]["deployment"] for e in our_events} == {
        env.deployment_id
    }
    theirs_run = calsync(staging, "reconcile", "--execute", "--json")
    assert theirs_run.returncode == 0, theirs_run.stderr
    assert json.loads(theirs_run.stdout)["found"] == {"foreign": 2}
    assert sorted(of_link(env, email, ours), key=lambda e: e["id"]) == our_events
    assert_exact(staging, email, theirs, theirs_latest)
    status = json.loads(calsync(staging, "status", "--json").stdout)
    assert status["deployment_id"] == STAGING
    assert json.loads(calsync(env, "status", "--json").stdout)["deployment_id"] == (
        env.deployment_id
    )


async def test_untagged_events_are_ours_only_when_their_link_is_ours(env: Env) -> None:
    """Events written before the tag existed: ours when their link id is one of our links
    (re-rendered with the tag), another deployment's old ones otherwise (left alone)."""
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {"bk_1": booking_event("bk_1", 1)}
    await sync(env, list(latest.values()))
    (event,) = env.events(email)
    private = event["extendedProperties"]["private"]
    untagged = {k: v for k, v in private.items() if k != "deployment"}
    env.sandbox.edit_by_hand(email, email, event["id"], extendedProperties={"private": untagged})
    stranger = env.sandbox.plant_event(
        email,
        email,
        {
            "summary": "Another deployment's, from before the tag",
            "start": {"dateTime": "2026-05-01T09:00:00Z"},
            "end": {"dateTime": "2026-05-01T10:00:00Z"},
            "extendedProperties": {
                "private": {"managed_by": "resytech", "booking_id": "bk_9", "link_id": "lnk_0"}
            },
        },
    )
    found = json.loads(calsync(env, "reconcile", "--json").stdout)
    assert found["found"] == {"changed": 1, "foreign": 1}, found
    report = found["links"][0]
    assert report["changed"][0]["detail"] == "extendedProperties"
    assert report["foreign"][0]["event_id"] == stranger["id"]
    done = calsync(env, "reconcile", "--execute", "--json")
    assert json.loads(done.stdout)["repaired"] == {"changed": 1}, done.stdout
    assert_exact(env, email, link_id, latest)
    assert stranger in env.events(email), "left alone"


async def test_a_disconnect_never_removes_another_deployments_event(env: Env) -> None:
    """Disconnect finds a link's events by their `link_id`; an event that names the same
    link id but another deployment (a database restored elsewhere and given its own id)
    is not ours to delete."""
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    await sync(env, [booking_event("bk_1", 1)])
    theirs = env.sandbox.plant_event(
        email,
        email,
        {
            "summary": "Staging's",
            "start": {"dateTime": "2026-05-01T09:00:00Z"},
            "end": {"dateTime": "2026-05-01T10:00:00Z"},
            "extendedProperties": {
                "private": {
                    "managed_by": "resytech",
                    "booking_id": "bk_1",
                    "link_id": link_id,
                    "deployment": STAGING,
                }
            },
        },
    )
    gone = calsync(env, "links", "disconnect", link_id, "--remove-events")
    assert gone.returncode == 0, gone.stderr
    assert env.events(email) == [theirs]
