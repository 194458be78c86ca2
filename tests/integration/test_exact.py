"""Calendars stay exact: link and booking moves, disconnect under load, resync and shutdown
races, and a reconcile that finds drift. Every test ends with the content oracle: each
calendar holds one event per live booking, with its latest content, and nothing of ours is
left where it should not be."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from consumer import bootstrap
from consumer.adapters.postgres.locks import link_lock_key, pair_lock_key
from consumer.adapters.postgres.sync_store import SyncStore
from consumer.bootstrap import services
from consumer.domain.models import BookingEvent
from tests.oracle import assert_exact, assert_none_of_ours
from tests.plugins.environment import Env, calsync, wait_until
from tests.plugins.events import booking_event

FAST_REPAIRS = {"repair_initial_backoff_s": 0.5, "repair_max_backoff_s": 2.0, "repair_poll_s": 0.2}
CALENDARS = [{"id": "cal-a", "summary": "A", "primary": True}, {"id": "cal-b", "summary": "B"}]


def select(env: Env, link_id: str, calendar_id: str) -> dict[str, Any]:
    answer = calsync(env, "links", "select", link_id, calendar_id)
    assert answer.returncode == 0, answer.stderr
    return answer


async def synced(env: Env, latest: dict[str, dict[str, Any]], n: int) -> None:
    await wait_until(lambda: len(env.results()) >= n, timeout_s=30, what=f"{n} results")
    await wait_until(env.all_committed, what="offsets")


async def sync_all(env: Env, latest: dict[str, dict[str, Any]], n: int) -> None:
    """A consumer while `latest` is published, until `n` results are in and committed."""
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await synced(env, latest, n)


async def two_bookings_on_cal_a(env: Env) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """An account with calendars A and B, its link syncing A, two bookings on it."""
    email, refresh = env.account(calendars=CALENDARS)
    link_id = await env.link(email, refresh, calendar_id="cal-a")
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(2)}
    await sync_all(env, latest, 2)
    return email, link_id, latest


async def test_choosing_a_calendar_again_after_the_old_one_was_deleted_moves_everything(
    env: Env,
) -> None:
    email, refresh = env.account(calendars=CALENDARS)
    link_id = await env.link(email, refresh, calendar_id="cal-a")
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(3)}
    latest["bk_gone"] = booking_event("bk_gone", 2, "booking.canceled", status="canceled")
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await synced(env, latest, 4)
        env.sandbox.remove_calendar(email, "cal-a")  # deleted by its owner
        latest["bk_0"] = booking_event("bk_0", 2, "booking.updated", customer_name="Later")
        await env.publish(latest["bk_0"])
        await wait_until(
            lambda: env.query("SELECT 1 FROM calendar_links WHERE state = 'calendar_unavailable'"),
            what="state",
        )
    answer = select(env, link_id, "cal-b")
    assert "backfilled: 3 bookings, 3 applied" in answer.stdout, answer.stdout
    assert_exact(env, email, link_id, latest, calendar_id="cal-b")
    records = env.query(
        "SELECT DISTINCT calendar_id FROM link_bookings WHERE google_event_id IS NOT NULL"
    )
    assert records == [{"calendar_id": "cal-b"}]


async def test_an_active_link_switched_to_another_calendar_leaves_nothing_behind(env: Env) -> None:
    email, refresh = env.account(calendars=CALENDARS)
    link_id = await env.link(email, refresh, calendar_id="cal-a")
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(3)}
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await synced(env, latest, 3)
        await asyncio.to_thread(select, env, link_id, "cal-b")  # while the consumer runs
        latest["bk_3"] = booking_event("bk_3", 1)
        latest["bk_1"] = booking_event("bk_1", 2, "booking.updated", customer_name="Moved")
        await env.publish(latest["bk_3"])
        await env.publish(latest["bk_1"])
        await wait_until(lambda: len(env.sandbox.events(email, "cal-b")) == 4, what="B")
        await wait_until(env.all_committed, what="offsets")
    assert_exact(env, email, link_id, latest, calendar_id="cal-b")
    assert_none_of_ours(env, email, "cal-a")


async def test_a_calendar_left_read_only_keeps_its_events_recorded_until_reconcile_reaches_them(
    env: Env,
) -> None:
    email, link_id, latest = await two_bookings_on_cal_a(env)
    env.sandbox.set_access_role(email, "cal-a", "reader")
    select(env, link_id, "cal-b")
    assert_exact(env, email, link_id, latest, calendar_id="cal-b")
    stranded = env.query("SELECT calendar_id, booking_id FROM stranded_events ORDER BY 2")
    assert stranded == [{"calendar_id": "cal-a", "booking_id": f"bk_{n}"} for n in range(2)]
    env.sandbox.set_access_role(email, "cal-a", "owner")  # writable again
    answer = calsync(env, "reconcile", "--execute", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["repaired"] == {"orphaned": 2}
    assert_none_of_ours(env, email, "cal-a")
    assert not env.query("SELECT 1 FROM stranded_events")


async def test_a_booking_moved_to_another_activity_moves_calendars(env: Env) -> None:
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    one_link = await env.link(one, one_refresh, activity_id="act_1")
    two_link = await env.link(two, two_refresh, activity_id="act_2")
    latest = {
        "bk_1": booking_event("bk_1", 1, activity_id="act_1"),
        "bk_2": booking_event("bk_2", 1, activity_id="act_1"),
    }
    async with env.consumer():
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.events(one)) == 2, what="act_1's calendar")
        latest["bk_1"] = booking_event("bk_1", 2, "booking.updated", activity_id="act_2")
        await env.publish(latest["bk_1"])
        await wait_until(lambda: len(env.events(two)) == 1, what="act_2's calendar")
        await wait_until(lambda: len(env.events(one)) == 1, what="off act_1's calendar")
        assert_exact(env, one, one_link, latest, activity_id="act_1")
        assert_exact(env, two, two_link, latest, activity_id="act_2")
        latest["bk_1"] = booking_event(
            "bk_1", 3, "booking.canceled", activity_id="act_2", status="canceled"
        )
        await env.publish(latest["bk_1"])
        await wait_until(lambda: not env.events(two), what="canceled")
        await wait_until(env.all_committed, what="offsets")
    assert_exact(env, one, one_link, latest, activity_id="act_1")
    assert_exact(env, two, two_link, latest, activity_id="act_2")
    moved = [r for r in env.results("bk_1") if r["link_id"] == one_link][-1]
    assert (moved["operation"], moved["reason"]) == ("delete", "booking_moved")


async def test_disconnect_under_load_fences_every_write_and_a_reconnect_never_doubles(
    env: Env,
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(12)}
    # 60 calls a minute for the account: most of the backlog waits for its quota (in the
    # window, or deferred to the repair loop) when the disconnect comes.
    async with env.consumer(quota_per_account_per_min=60, **FAST_REPAIRS):
        for event in latest.values():
            await env.publish(event)
        await wait_until(lambda: len(env.events(email)) >= 2, timeout_s=30, what="a start")
        # (In a thread: the consumer runs on this test's event loop.)
        answer = await asyncio.to_thread(
            calsync, env, "links", "disconnect", link_id, "--remove-events"
        )
        assert answer.returncode == 0, answer.stderr
        assert env.events(email) == [], "the calendar is empty once disconnect returns"
        await wait_until(env.all_committed, timeout_s=30, what="the backlog recorded")
        await asyncio.sleep(2)  # nothing lands late
        assert env.events(email) == []
    # Reconnect the same account (a new grant) and choose the same calendar again.
    fresh = f"1//refresh-{uuid.uuid4().hex}"
    env.sandbox.add_account(email, fresh)
    pending = await env.link(email, fresh, calendar_id=None)
    select(env, pending, email)
    revived = env.query("SELECT id FROM calendar_links WHERE state = 'active'")[0]["id"]
    assert_exact(env, email, revived, latest)


async def test_a_resync_reads_the_latest_state_under_the_claim(env: Env) -> None:
    """A resync that reads v5 while v6 is being applied must not put v5 back."""
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    v5 = booking_event("bk_1", 5, customer_name="Five")
    async with env.consumer():
        await env.publish(v5)
        await wait_until(lambda: env.events(email), what="v5")
    # The pair is held (as a consumer applying v6 holds it) while the resync starts.
    holder = await psycopg.AsyncConnection.connect(env.database_url, autocommit=True)
    try:
        await holder.execute(
            "SELECT pg_advisory_lock_shared(%s), pg_advisory_lock(%s)",
            (link_lock_key(link_id), pair_lock_key(link_id, "bk_1")),
        )
        resync = asyncio.create_task(bootstrap.resync(env.settings, {"bk_1"}))
        await asyncio.sleep(1.0)
        assert not resync.done(), "the resync did not wait for the claim"
        # Meanwhile v6 is applied and recorded, as the consumer would.
        v6 = booking_event("bk_1", 6, "booking.updated", customer_name="Six")
        async with env.consumer():
            await env.publish(v6)
            await asyncio.sleep(1.0)  # the consumer waits for the claim too
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await wait_until(lambda: resync.done(), what="the resync")
            await wait_until(env.all_committed, what="v6 recorded")
    finally:
        await holder.close()
    assert_exact(env, email, link_id, {"bk_1": v6})


async def test_a_write_cancelled_at_the_end_of_the_grace_keeps_its_claim_until_it_lands(
    env: Env,
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {"bk_1": booking_event("bk_1", 1)}
    async with env.consumer():
        await env.publish(latest["bk_1"])
        await wait_until(lambda: env.events(email), what="v1")
    env.sandbox.configure(latency_s=1.5)
    try:
        async with services(env.settings, pool_size=4) as svc:
            row = (await svc.repository.links_by_id({link_id}))[link_id]
            v2 = booking_event("bk_1", 2, "booking.updated", customer_name="Two")
            write = asyncio.create_task(
                svc.engine.sync_link(BookingEvent.model_validate(v2), row, None)
            )
            await asyncio.sleep(0.7)  # its update is at Google now
            write.cancel()
            other = SyncStore(env.database_url)
            try:
                claimed = asyncio.create_task(other.claim(link_id, "bk_1"))
                await asyncio.gather(write, return_exceptions=True)
                claim = await asyncio.wait_for(claimed, 10)
                taken_at = env.sandbox.calls()["now"]
                await other.release(claim)
            finally:
                await other.close()
    finally:
        env.sandbox.configure(latency_s=0.0)
    update = [
        c
        for c in env.sandbox.calls(detail=True)["calls"]
        if c["op"] == "events.update" and c["account"] == email
    ][-1]
    # The update was answered (it is logged before its latency) before the claim was free.
    assert taken_at >= update["at"] + 1.4


async def test_reconcile_finds_and_repairs_what_drifted(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(4)}
    await sync_all(env, latest, 4)
    by_booking = {e["extendedProperties"]["private"]["booking_id"]: e for e in env.events(email)}
    env.sandbox.delete_by_hand(email, email, by_booking["bk_0"]["id"])
    env.sandbox.edit_by_hand(email, email, by_booking["bk_1"]["id"], summary="Renamed by hand")
    private = {"managed_by": "resytech", "link_id": link_id}
    env.sandbox.plant_event(
        email,
        email,
        {  # an orphan of an old bug
            "summary": "Ghost",
            "start": {"dateTime": "2026-05-01T09:00:00Z"},
            "end": {"dateTime": "2026-05-01T10:00:00Z"},
            "extendedProperties": {"private": {**private, "booking_id": "bk_ghost"}},
        },
    )
    env.sandbox.plant_event(
        email,
        email,
        {  # a duplicate of bk_3
            **{k: v for k, v in by_booking["bk_3"].items() if k not in ("id", "etag")}
        },
    )

    dry = calsync(env, "reconcile", "--json")
    assert dry.returncode == 0, dry.stderr
    found = json.loads(dry.stdout)
    assert found["found"] == {"missing": 1, "changed": 1, "orphaned": 1, "duplicated": 1}
    report = found["links"][0]
    assert [d["booking_id"] for d in report["missing"]] == ["bk_0"]
    assert (
        report["changed"][0]["booking_id"] == "bk_1" and "summary" in report["changed"][0]["detail"]
    )
    assert report["orphaned"][0]["booking_id"] == "bk_ghost"
    assert report["duplicated"][0]["booking_id"] == "bk_3"
    assert len(env.events(email)) == 5, "a dry run changes nothing"

    executed = calsync(env, "reconcile", "--execute", "--link", link_id)
    assert executed.returncode == 0, executed.stderr
    assert "repaired 4" in executed.stdout
    assert_exact(env, email, link_id, latest)
    again = json.loads(calsync(env, "reconcile", "--json").stdout)
    assert again["found"] == {}
    status = json.loads(calsync(env, "status", "--json").stdout)
    assert status["reconcile"]["executed"] is False and status["reconcile"]["found"] == {}
    assert status["backfills"] == []  # none under way
    sources = {r["source"] for r in env.results()}
    assert "reconcile" in sources


async def test_the_consumer_group_reconciles_on_its_own(env: Env, tmp_path: Path) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(2)}
    async with env.consumer(reconcile_interval_s=1.0):
        for event in latest.values():
            await env.publish(event)
        await synced(env, latest, 2)
        first = env.events(email)[0]
        env.sandbox.delete_by_hand(email, email, first["id"])
        await wait_until(
            lambda: len(env.events(email)) == 2, timeout_s=60, what="a scheduled reconcile"
        )
    assert_exact(env, email, link_id, latest)
    runs = env.query(
        "SELECT trigger, executed, repaired FROM reconcile_runs WHERE repaired <> '{}'"
    )
    assert runs and runs[0]["trigger"] == "schedule" and runs[0]["executed"]


async def test_chaos_ends_exact(env: Env, tmp_path: Path) -> None:
    """Database sessions killed, a second consumer joining, Google slow, several versions
    per booking and a concurrent resync: every calendar ends exact."""
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    links = {one: await env.link(one, one_refresh), two: await env.link(two, two_refresh)}
    latest: dict[str, dict[str, Any]] = {}
    env.sandbox.configure(latency_s=0.05)
    second = None
    try:
        async with env.consumer(**FAST_REPAIRS):
            for version in (1, 2, 3):
                for n in range(15):
                    kind = "booking.created" if version == 1 else "booking.updated"
                    status = "canceled" if version == 3 and n % 5 == 0 else "confirmed"
                    if status == "canceled":
                        kind = "booking.canceled"
                    latest[f"bk_{n}"] = booking_event(
                        f"bk_{n}", version, kind, status=status, customer_name=f"C{n} v{version}"
                    )
                    await env.publish(latest[f"bk_{n}"])
                if version == 1:
                    second = env.start_process(
                        tmp_path / "second.log",
                        **{"CALSYNC_REPAIR_POLL_S": "0.2", "CALSYNC_REPAIR_MAX_BACKOFF_S": "2"},
                    )
                if version == 2:
                    with psycopg.connect(env.database_url, autocommit=True) as admin:
                        admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = %s AND pid <> pg_backend_pid()",
                            (env.name,),
                        )
                    resync = asyncio.create_task(
                        bootstrap.resync(env.settings, {f"bk_{n}" for n in range(0, 15, 2)})
                    )
            await wait_until(env.all_committed, timeout_s=90, what="everything recorded")
            await resync  # the concurrent resync ends well too
            await wait_until(
                lambda: not env.query("SELECT 1 FROM repairs"), timeout_s=60, what="no repairs left"
            )
    finally:
        env.sandbox.configure(latency_s=0.0)
        if second is not None:
            second.terminate()
            second.wait(30)
    for email, link_id in links.items():
        assert_exact(env, email, link_id, latest)


def ours(email: str, env: Env, calendar_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in env.sandbox.events(email, calendar_id)
        if (e.get("extendedProperties") or {}).get("private", {}).get("managed_by")
    ]


async def test_a_late_write_of_an_older_version_never_creates_on_an_activity_left(env: Env) -> None:
    """A rebalance overlap: the old owner's v1 (act_1) comes after v2 (moved to act_2) was
    taken in. Read under the claim, the booking's latest state says it is not act_1's."""
    one, one_refresh = env.account("one")
    two, two_refresh = env.account("two")
    one_link = await env.link(one, one_refresh, activity_id="act_1")
    await env.link(two, two_refresh, activity_id="act_2")
    v1 = booking_event("bk_1", 1, activity_id="act_1")
    v2 = booking_event("bk_1", 2, "booking.updated", activity_id="act_2")
    async with env.consumer():
        await env.publish(v2)
        await wait_until(lambda: env.events(two), what="act_2")
        await wait_until(env.all_committed, what="offsets")
    async with services(env.settings, pool_size=4) as svc:  # the old owner, late
        row = (await svc.repository.links_by_id({one_link}))[one_link]
        await svc.engine.sync_link(BookingEvent.model_validate(v1), row, None)
    assert env.events(one) == []


async def test_reconcile_removes_an_orphan_the_records_still_hold(env: Env) -> None:
    """The records of act_1's link hold bk_1's event, but the booking moved to act_2 and
    that link was never told (a message lost by an old bug): reconcile takes it away
    through the sync path (the records would refuse a plain delete)."""
    one, one_refresh = env.account("one")
    one_link = await env.link(one, one_refresh, activity_id="act_1")
    v1 = booking_event("bk_1", 1, activity_id="act_1")
    async with env.consumer():
        await env.publish(v1)
        await wait_until(lambda: env.events(one), what="act_1's event")
        await wait_until(env.all_committed, what="offsets")
    v2 = booking_event("bk_1", 2, "booking.updated", activity_id="act_2")
    env.query(
        "UPDATE bookings SET activity_id = 'act_2', version = 2, event = %s RETURNING 1",
        json.dumps(v2),
    )
    dry = json.loads(calsync(env, "reconcile", "--json").stdout)
    assert dry["found"] == {"orphaned": 1}
    answer = calsync(env, "reconcile", "--execute", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["repaired"] == {"orphaned": 1}
    assert_exact(env, one, one_link, {"bk_1": v2}, activity_id="act_1")
    assert json.loads(calsync(env, "reconcile", "--json").stdout)["found"] == {}


async def test_remove_events_reaches_the_old_calendar_and_a_new_link_there_is_exact(
    env: Env,
) -> None:
    email, link_id, latest = await two_bookings_on_cal_a(env)
    env.sandbox.set_access_role(email, "cal-a", "reader")
    select(env, link_id, "cal-b")  # A's events stranded there
    env.sandbox.set_access_role(email, "cal-a", "owner")  # reachable again
    gone = calsync(env, "links", "disconnect", link_id, "--remove-events")
    assert gone.returncode == 0, gone.stderr
    assert ours(email, env, "cal-a") == [] and ours(email, env, "cal-b") == []
    assert not env.query("SELECT 1 FROM stranded_events")
    fresh = f"1//refresh-{uuid.uuid4().hex}"
    env.sandbox.add_account(email, fresh, CALENDARS)
    pending = await env.link(email, fresh, calendar_id=None)
    select(env, pending, "cal-a")
    new = env.query("SELECT id FROM calendar_links WHERE state = 'active'")[0]["id"]
    assert_exact(env, email, new, latest, calendar_id="cal-a")
    assert json.loads(calsync(env, "reconcile", "--json").stdout)["found"] == {}


async def test_reconcile_takes_back_an_event_the_records_lost(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await synced(env, {}, 1)
        # An old bug: the records lost the event (it is still on the calendar).
        env.query(
            "UPDATE link_bookings SET google_event_id = NULL, calendar_id = NULL,"
            " generation = generation + 1 RETURNING 1"
        )
        dry = await asyncio.to_thread(calsync, env, "reconcile", "--json")
        found = json.loads(dry.stdout)["links"][0]
        assert [(d["booking_id"], d["detail"]) for d in found["changed"]] == [
            ("bk_1", "not recorded")
        ]
        done = await asyncio.to_thread(calsync, env, "reconcile", "--execute")
        assert done.returncode == 0, done.stderr
        v2 = booking_event("bk_1", 2, "booking.updated", customer_name="Two")
        await env.publish(v2)
        await synced(env, {}, 2)
    assert_exact(env, email, link_id, {"bk_1": v2})


async def test_an_interrupted_reconcile_stays_unfinished_and_is_resumed(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(3)}
    await sync_all(env, latest, 3)
    for event in env.events(email):
        env.sandbox.delete_by_hand(email, email, event["id"])
    env.sandbox.configure(latency_s=1.0)
    try:
        async with services(env.settings, pool_size=4) as svc:
            reconciler = bootstrap.reconciler(svc)
            run_id = await reconciler.start("cli", "test", True, None)
            task = asyncio.create_task(reconciler.run(run_id))
            await asyncio.sleep(2.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        env.sandbox.configure(latency_s=0.0)
    row = env.query("SELECT finished_at FROM reconcile_runs")[0]
    assert row["finished_at"] is None, "an interrupted run must stay open to be resumed"
    env.query("UPDATE reconcile_runs SET updated_at = now() - interval '1 hour' RETURNING 1")
    async with env.consumer(reconcile_interval_s=3600.0):  # the group picks it up
        await wait_until(
            lambda: env.query("SELECT 1 FROM reconcile_runs WHERE finished_at IS NOT NULL"),
            timeout_s=60,
            what="the run resumed and finished",
        )
    assert_exact(env, email, link_id, latest)


async def test_a_stranded_event_out_of_reach_does_not_fail_the_links_reconcile(env: Env) -> None:
    email, link_id, latest = await two_bookings_on_cal_a(env)
    env.sandbox.set_access_role(email, "cal-a", "reader")  # and it stays so
    select(env, link_id, "cal-b")
    env.sandbox.delete_by_hand(email, "cal-b", env.events(email, "cal-b")[0]["id"])
    answer = calsync(env, "reconcile", "--execute", "--json")
    report = json.loads(answer.stdout)["links"][0]
    assert report["error"] is None
    assert report["repaired"] == {"missing": 1} and len(report["unrepaired"]) == 2
    assert answer.returncode == 1  # a repair that could not be made is said
    assert_exact(env, email, link_id, latest, calendar_id="cal-b")
    assert len(env.query("SELECT 1 FROM stranded_events")) == 2


async def test_a_session_lost_mid_write_is_followed_by_the_latest_state(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1, customer_name="One"))
        await synced(env, {}, 1)
    v2 = BookingEvent.model_validate(
        booking_event("bk_1", 2, "booking.updated", customer_name="Two")
    )
    v3 = booking_event("bk_1", 3, "booking.updated", customer_name="Three")
    slow = env.settings.model_copy(update={"retry_budget_s": 10.0})
    async with services(slow, pool_size=4) as mine, services(env.settings, pool_size=4) as theirs:
        await mine.repository.upsert_bookings([v2])
        row = (await mine.repository.links_by_id({link_id}))[link_id]
        # Google answers the first update 503, Retry-After 3: the retry goes 3 s later.
        env.sandbox.add_fault(503, count=1, account=email, method="PUT", retry_after=3)
        write = asyncio.create_task(mine.engine.sync_link(v2, row, None))
        await wait_until(
            lambda: [
                c
                for c in env.sandbox.calls(detail=True)["calls"]
                if c["account"] == email and c["status"] == 503
            ],
            what="the 503",
        )
        with psycopg.connect(env.database_url, autocommit=True) as admin:  # session lost
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            )
        await theirs.engine.handle(BookingEvent.model_validate(v3))  # the next owner: v3
        await asyncio.gather(write, return_exceptions=True)  # v2's write lands late
        await mine.engine.handle(v2)  # the runner retries the message
    assert_exact(env, email, link_id, {"bk_1": v3})


async def test_choosing_the_old_calendar_again_takes_its_stranded_events_back(env: Env) -> None:
    email, link_id, latest = await two_bookings_on_cal_a(env)
    env.sandbox.set_access_role(email, "cal-a", "reader")
    select(env, link_id, "cal-b")  # moved; A's events stranded (recorded)
    env.sandbox.set_access_role(email, "cal-a", "owner")
    select(env, link_id, "cal-a")  # back to A
    assert_exact(env, email, link_id, latest, calendar_id="cal-a")
    assert_none_of_ours(env, email, "cal-b")
    assert not env.query("SELECT 1 FROM stranded_events")


async def test_remove_events_disconnect_of_a_link_whose_calendar_is_gone(env: Env) -> None:
    email, refresh = env.account(calendars=CALENDARS)
    link_id = await env.link(email, refresh, calendar_id="cal-a")
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await synced(env, {}, 1)
    env.sandbox.remove_calendar(email, "cal-a")
    gone = calsync(env, "links", "disconnect", link_id, "--remove-events")
    assert gone.returncode == 0, gone.stderr
    state = env.query("SELECT id, state FROM calendar_links")[0]
    assert state["state"] == "disconnected"
    assert env.stored_tokens(state["id"])["refresh_token"] is None


async def test_reconcile_removes_a_demoted_links_doubles_on_a_shared_calendar(env: Env) -> None:
    """A calendar shared between two accounts has one id for both. Two links of one activity
    synced it, so every booking was on it twice; one of them is demoted to `pending` without
    its calendar (what migration 011, refusing a second live link of an activity on one
    calendar, does). Reconcile of the live link sees the demoted link's events and removes
    them, through the claimed path with a token that reaches the calendar; another
    activity's live link on the same calendar keeps its own."""
    owner, owner_refresh = env.account("owner")
    manager, manager_refresh = env.account("manager")
    env.sandbox.share_calendar(owner, owner, manager, "writer")
    calendar = owner
    demoted = await env.link(manager, manager_refresh, calendar_id=calendar)
    neighbour = await env.link(manager, manager_refresh, calendar_id=calendar, activity_id="act_2")
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(2)}
    latest["bk_c"] = booking_event("bk_c", 1)
    latest["bk_x"] = booking_event("bk_x", 1, activity_id="act_2")
    await sync_all(env, latest, 4)
    env.query(
        "UPDATE calendar_links SET state = 'pending', state_reason = 'demoted',"
        " state_changed_at = now(), calendar_id = NULL WHERE id = %s RETURNING 1",
        demoted,
    )
    kept = await env.link(owner, owner_refresh, calendar_id=calendar)
    latest["bk_0"] = booking_event("bk_0", 2, "booking.updated", customer_name="Zero v2")
    latest["bk_1"] = booking_event("bk_1", 2, "booking.updated", customer_name="One v2")
    latest["bk_c"] = booking_event("bk_c", 2, "booking.canceled", status="canceled")
    async with env.consumer():
        for booking_id in ("bk_0", "bk_1", "bk_c"):
            await env.publish(latest[booking_id])
        await synced(env, latest, 7)
    held = Counter(e["extendedProperties"]["private"]["booking_id"] for e in env.events(calendar))
    assert held == {"bk_0": 2, "bk_1": 2, "bk_c": 1, "bk_x": 1}  # the doubles
    neighbours_event = next(e for e in env.events(calendar) if _of(e, neighbour))

    dry = json.loads(calsync(env, "reconcile", "--link", kept, "--json").stdout)
    assert dry["found"] == {"orphaned": 3}, dry
    assert {d["booking_id"] for d in dry["links"][0]["orphaned"]} == {"bk_0", "bk_1", "bk_c"}
    assert {d["link_id"] for d in dry["links"][0]["orphaned"]} == {demoted}
    answer = calsync(env, "reconcile", "--execute", "--json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["repaired"] == {"orphaned": 3}
    assert_exact(env, owner, kept, latest, activity_id="act_1", other_links={neighbour})
    assert_exact(env, owner, neighbour, latest, activity_id="act_2", other_links={kept})
    untouched = next(e for e in env.events(calendar) if _of(e, neighbour))
    assert untouched == neighbours_event, "another activity's live link's event is never touched"
    assert not env.query(
        "SELECT 1 FROM link_bookings WHERE link_id = %s AND google_event_id IS NOT NULL", demoted
    ), "the demoted link's records forget the events removed"
    assert json.loads(calsync(env, "reconcile", "--json").stdout)["found"] == {}


def _of(event: dict[str, Any], link_id: str) -> bool:
    return bool(event["extendedProperties"]["private"]["link_id"] == link_id)


async def test_a_repair_reconcile_could_not_apply_is_said_unrepaired(env: Env) -> None:
    """A changed event whose re-render Google keeps refusing (a 500 for as long as the
    retry budget lasts) is neither counted repaired nor silently dropped: the run lists it as
    unrepaired and the command exits 1; once Google answers, the next run repairs it."""
    email, link_id, latest = await two_bookings_on_cal_a(env)
    event = next(e for e in env.events(email, "cal-a") if e["summary"].endswith("Jane Smith"))
    env.sandbox.edit_by_hand(email, "cal-a", event["id"], summary="edited by hand")
    env.sandbox.add_fault(500, method="PUT", duration_s=30)
    answer = calsync(env, "reconcile", "--execute", "--json")
    report = json.loads(answer.stdout)
    assert answer.returncode == 1, answer.stdout
    assert report["found"] == {"changed": 1} and report["repaired"] == {}
    (unrepaired,) = report["links"][0]["unrepaired"]
    assert unrepaired.startswith("changed ") and "failed" in unrepaired
    env.sandbox.clear_faults()
    again = calsync(env, "reconcile", "--execute", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["repaired"] == {"changed": 1}
    assert_exact(env, email, link_id, latest, calendar_id="cal-a")
