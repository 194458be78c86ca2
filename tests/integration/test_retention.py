"""Retention (issue 22, point 4) on the real stack: what a pass removes, what it never
removes (a booking a calendar may still need), a pruned booking written again when it comes
back, and one pass of the group at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.retention_store import RetentionStore
from consumer.bootstrap import connections
from consumer.service.retention import Retention, RetentionPass, RetentionPolicy
from consumer.settings import Settings
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event

OLD = "now() - interval '100 days'"  # older than the default retention of 90 days
RECENT = "now() - interval '1 day'"


def retention(env: Env, batch_rows: int = 1000, min_pause_s: float = 0.0) -> Retention:
    """A pass as the consumer runs it (the store on connections of its own), with the
    default retention and horizon (not the suite's century: tests/plugins/environment.py),
    and batches as small as the test needs."""
    policy = RetentionPolicy(
        retention_days=env.settings.results_retention_days,
        past_days=Settings().backfill_past_days,
        login_window_s=env.settings.http_login_window_s,
        batch_rows=batch_rows,
        min_pause_s=min_pause_s,
    )
    return Retention(policy, RetentionStore(connections(env.settings), 5.0), Metrics())


def count(env: Env, table: str, where: str = "true") -> int:
    return int(env.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")[0]["n"])


def add_results(env: Env, n: int, recorded_at: str, booking: str = "bk_x") -> None:
    env.query(
        "INSERT INTO sync_results (event_id, event_type, booking_id, booking_version, link_id,"
        " operation, outcome, reason, recorded_at)"
        f" SELECT gen_random_uuid(), 'booking.created', %s, g, 'lnk_x', 'create', 'applied',"
        f" 'created', {recorded_at} FROM generate_series(1, %s) g RETURNING 1",
        booking,
        n,
    )


def add_dead_letter(env: Env, offset: int, recorded_at: str, **marks: str | None) -> None:
    """A dead letter recorded at `recorded_at`; `marks`: published_at, replayed_at,
    reprocessed_at as SQL (None: not set)."""
    columns = {"published_at": recorded_at, "replayed_at": None, "reprocessed_at": None}
    columns.update(marks)
    env.query(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, message_value,"
        " error_type, error, recorded_at, record_timestamp, record_digest, published_at,"
        " replayed_at, reprocessed_at)"
        f" VALUES ('t', 0, %s, 'x', 'not_json', 'bad', {recorded_at}, %s,"
        " calsync_record_digest(NULL, 'x'),"
        + ", ".join(columns[c] or "NULL" for c in ("published_at", "replayed_at", "reprocessed_at"))
        + ") RETURNING 1",
        offset,
        offset,
    )


async def test_a_pass_prunes_old_records_and_keeps_recent_ones(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    add_results(env, 2500, OLD)  # more than one batch of 1,000
    add_results(env, 7, RECENT)
    # Dead letters: settled (replayed, and that replay processed) long ago; waiting for an
    # operator (never replayed); replayed but the copy not processed yet; settled recently.
    add_dead_letter(env, 1, OLD, replayed_at=OLD, reprocessed_at=OLD)
    add_dead_letter(env, 2, OLD)
    add_dead_letter(env, 3, OLD, replayed_at=OLD)
    add_dead_letter(env, 4, OLD, replayed_at=RECENT, reprocessed_at=RECENT)
    for finished in ("NULL", OLD, OLD):  # one never finished, two finished long ago
        env.query(
            "INSERT INTO reconcile_runs (trigger, by_whom, executed, started_at, finished_at)"
            f" VALUES ('schedule', 'm', true, {OLD}, {finished}) RETURNING 1"
        )
    env.query(
        "INSERT INTO replays (who, group_id, topic, spec, executed, plan, at) VALUES"
        f" ('a', 'g', 't', 's', true, '[]', {OLD}), ('b', 'g', 't', 's', true, '[]', {RECENT})"
        " RETURNING 1"
    )
    for _ in range(3):  # the link's three backfills, all finished long ago: the latest stays
        env.query(
            "INSERT INTO backfills (link_id, calendar_id, trigger, started_at, finished_at)"
            f" VALUES (%s, %s, 'select', {OLD}, {OLD}) RETURNING 1",
            link_id,
            email,
        )
    env.query(
        "INSERT INTO consumer_members (group_id, member, host, pid, topic, seen_at) VALUES"
        f" ('g', 'gone', 'h', 1, 't', {OLD}), ('g', 'alive', 'h', 2, 't', now()) RETURNING 1"
    )
    env.query(
        "INSERT INTO page_sessions (id_digest, expires_at) VALUES ('\\x01', now() - interval"
        " '1 hour'), ('\\x02', now() + interval '1 hour') RETURNING 1"
    )
    env.query(
        "INSERT INTO page_form_tokens (jti, link_id, expires_at) VALUES ('old', 'l', now() -"
        " interval '2 days'), ('new', 'l', now() + interval '1 hour') RETURNING 1"
    )
    env.query(
        "INSERT INTO page_login_failures (client, failures, first_failed_at, blocked_until)"
        f" VALUES ('10.0.0.1', 9, {OLD}, {OLD}), ('10.0.0.2', 9, now(), now() + interval"
        " '1 hour') RETURNING 1"
    )
    latest_backfill = env.query("SELECT max(id) AS id FROM backfills")[0]["id"]
    latest_run = env.query("SELECT max(id) AS id FROM reconcile_runs")[0]["id"]

    pruning = retention(env)
    done = await pruning.run_pass()

    assert done is not None
    assert count(env, "sync_results") == 7
    assert {r["kafka_offset"] for r in env.query("SELECT kafka_offset FROM dead_letters")} == {
        2,
        3,
        4,
    }
    runs = env.query("SELECT id, finished_at FROM reconcile_runs ORDER BY id")
    assert [r["id"] for r in runs] == [latest_run - 2, latest_run]  # unfinished; the latest
    assert [r["who"] for r in env.query("SELECT who FROM replays")] == ["b"]
    assert [r["id"] for r in env.query("SELECT id FROM backfills")] == [latest_backfill]
    assert [r["member"] for r in env.query("SELECT member FROM consumer_members")] == ["alive"]
    assert count(env, "page_sessions") == 1
    assert [r["jti"] for r in env.query("SELECT jti FROM page_form_tokens")] == ["new"]
    assert [r["client"] for r in env.query("SELECT client FROM page_login_failures")] == [
        "10.0.0.2"
    ]
    assert done.pruned == {
        "sync_results": 2500,
        "dead_letters": 1,
        "reconcile_runs": 1,
        "replays": 1,
        "backfills": 2,
        "consumer_members": 1,
        "page_form_tokens": 1,
        "page_sessions": 1,
        "page_login_failures": 1,
    }
    metric = pruning._metrics.retention_pruned
    assert metric.labels("sync_results")._value.get() == 2500
    assert (await pruning.run_pass()) is not None  # nothing left to remove: a pass of nothing
    assert count(env, "sync_results") == 7


def _ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _in(days: float) -> str:
    return _ago(-days)


async def test_bookings_a_calendar_may_still_need_are_never_pruned(env: Env) -> None:
    """Live bookings (ending after the horizon), bookings whose event is still on a
    calendar, bookings a repair is owed for, and bookings changed within the retention stay;
    bookings that can no longer need an event go. One pruned and published again syncs."""
    email, refresh = env.account()
    await env.link(email, refresh)  # activity act_1; act_unlinked has no link
    past = {"start": _ago(400.1), "end": _ago(400)}
    future = {"start": _in(30), "end": _in(30.1)}
    published: list[dict[str, Any]] = [
        booking_event("bk_future", 1, **future),  # live, on the calendar
        booking_event("bk_past_on_calendar", 1, **past),  # ended, its event still there
        booking_event("bk_canceled", 1, **future),
        booking_event("bk_canceled", 2, "booking.canceled", status="canceled", **future),
        booking_event("bk_draft", 1, status="draft", **future),
        booking_event("bk_ical", 1, source="ical", **future),
        booking_event("bk_deleted", 1, **future),
        booking_event("bk_deleted", 2, "booking.deleted", **future),
        booking_event("bk_past_unlinked", 1, "booking.created", "act_unlinked", **past),
        booking_event("bk_future_unlinked", 1, "booking.created", "act_unlinked", **future),
        booking_event("bk_draft_recent", 1, status="draft", **future),
        booking_event("bk_owed", 1, status="draft", **future),
    ]
    async with env.consumer(results_retention_days=0):
        for event in published:
            await env.publish(event)
        await wait_until(env.all_committed, what="every message recorded")
        on_calendar = {e["extendedProperties"]["private"]["booking_id"] for e in env.events(email)}
        assert on_calendar == {"bk_future", "bk_past_on_calendar"}
        # All of it last changed long ago, except one; a repair is owed for another.
        env.query(
            f"UPDATE bookings SET updated_at = {OLD} WHERE booking_id <> 'bk_draft_recent'"
            " RETURNING 1"
        )
        env.query(
            "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at)"
            " SELECT id, 'bk_owed', 1, 'account_paused', now() + interval '1 hour'"
            " FROM calendar_links RETURNING 1"
        )

        done = await retention(env, batch_rows=3).run_pass()  # several pages of bookings

        assert done is not None
        kept = {r["booking_id"] for r in env.query("SELECT booking_id FROM bookings")}
        assert kept == {
            "bk_future",
            "bk_past_on_calendar",
            "bk_future_unlinked",
            "bk_draft_recent",
            "bk_owed",
        }
        assert done.pruned["bookings"] == 5
        # Calendars untouched, and what was applied per link kept (versions, generations).
        assert len(env.events(email)) == 2
        assert count(env, "link_bookings", "booking_id = 'bk_canceled'") == 1

        # A pruned booking published again (rebooked, a newer version) is written again and
        # syncs; an old message of another one replayed is taken in again and changes nothing.
        await env.publish(booking_event("bk_canceled", 3, "booking.updated", **future))
        await env.publish(booking_event("bk_deleted", 1, **future))
        await wait_until(
            lambda: (
                "bk_canceled"
                in {e["extendedProperties"]["private"]["booking_id"] for e in env.events(email)}
            ),
            what="the rebooked booking's event",
        )
        await wait_until(env.all_committed, what="every message recorded")
    assert env.query("SELECT version FROM bookings WHERE booking_id = 'bk_canceled'") == [
        {"version": 3}
    ]
    assert env.query("SELECT version FROM bookings WHERE booking_id = 'bk_deleted'") == [
        {"version": 1}
    ]
    on_calendar = {e["extendedProperties"]["private"]["booking_id"] for e in env.events(email)}
    assert on_calendar == {"bk_future", "bk_past_on_calendar", "bk_canceled"}


async def test_two_processes_never_run_a_pass_at_once(env: Env) -> None:
    add_results(env, 3000, OLD)
    # Two processes' passes: 15 batches of 200 rows each, each batch followed by a pause.
    first, second = (retention(env, batch_rows=200, min_pause_s=0.05) for _ in range(2))

    # While one process holds the group's lock, another's pass does nothing.
    holder = RetentionStore(connections(env.settings), 5.0)
    async with holder.exclusive() as held:
        assert held is not None
        assert await second.run_pass() is None
        assert count(env, "sync_results") == 3000

    # Started together: whichever runs, their passes never overlap, and rows go once.
    passes = [p for p in await asyncio.gather(first.run_pass(), second.run_pass()) if p]
    assert passes
    assert sum(p.pruned.get("sync_results", 0) for p in passes) == 3000
    assert count(env, "sync_results") == 0
    if len(passes) == 2:
        a, b = sorted(passes, key=lambda p: p.started_at)
        assert a.finished_at <= b.started_at, "two passes ran at once"


async def test_the_group_schedule_runs_one_pass_an_interval(env: Env) -> None:
    """The consumer's loop asks for a pass when due: on a new database at once, then not
    again before the interval (an hour by default), whichever process asks."""
    add_results(env, 5, OLD)
    first, second = retention(env), retention(env)
    done: RetentionPass | None = await first.run_pass(only_when_due=True)
    assert done is not None and done.pruned == {"sync_results": 5}
    add_results(env, 5, OLD)
    assert await second.run_pass(only_when_due=True) is None
    assert count(env, "sync_results") == 5
    env.query("UPDATE schedules SET next_at = now() WHERE name = 'retention' RETURNING 1")
    assert await second.run_pass(only_when_due=True) is not None
    assert count(env, "sync_results") == 0
