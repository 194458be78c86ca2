"""A link's backfill bounded by the future (issue 22, points 1, 2 and 6), on the real
database, the sandbox and the CLI as a person runs it: only the bookings that end after the
horizon are written, in memory that does not grow with the activity's history, and a link
imported with its calendar is backfilled like a selected one.

The activity's history is filled straight into `bookings` (the consumer's record of the
latest booking states) with generate_series, as years of messages would have left it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from consumer.settings import Settings
from tests.plugins.environment import ROOT, Env, calsync, wait_until

ACTIVITY = "act_history"
# One row of `bookings` per i, ending `ends` (an SQL timestamptz expression over i) and
# lasting an hour, with the event the consumer stores (a valid booking event).
_FILL = """
INSERT INTO bookings (booking_id, activity_id, version, event_type, event)
SELECT %(prefix)s::text || i, %(activity)s::text, 1, 'booking.created', jsonb_build_object(
    'schema_version', 1, 'event_id', gen_random_uuid(), 'event_type', 'booking.created',
    'occurred_at', '2016-01-01T00:00:00Z',
    'booking', jsonb_build_object(
        'id', %(prefix)s::text || i, 'version', 1,
        'confirmation_code', 'BK-' || %(prefix)s::text || i,
        'status', %(status)s::text, 'source', 'web', 'activity_id', %(activity)s::text,
        'activity_name', 'Kayak Tour', 'customer_name', 'Customer ' || i,
        'location_name', 'Lake Dock', 'timezone', 'UTC',
        'start', to_char((ends - interval '1 hour') AT TIME ZONE 'UTC',
                         'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'end', to_char(ends AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
FROM generate_series(1, %(count)s::integer) AS i,
     LATERAL (SELECT date_trunc('minute', now()) + %(offset)s::interval
                     + i * %(step)s::interval AS ends) AS t
"""


@pytest.fixture(autouse=True)
def default_horizon(env: Env) -> None:
    """The horizon these tests are about: the setting's default (7 days)."""
    default = Settings.model_fields["backfill_past_days"].default
    env.settings = env.settings.model_copy(update={"backfill_past_days": default})


def fill(
    env: Env,
    prefix: str,
    count: int,
    offset: str,
    step: str = "1 minute",
    status: str = "confirmed",
    activity: str = ACTIVITY,
) -> list[str]:
    """`count` bookings of the activity ending at now + offset + i * step; their ids."""
    with psycopg.connect(env.database_url) as conn:
        conn.execute(
            _FILL,
            {
                "prefix": prefix,
                "activity": activity,
                "status": status,
                "count": count,
                "offset": offset,
                "step": step,
            },
        )
    return [f"{prefix}{i}" for i in range(1, count + 1)]


def on_calendar(env: Env, email: str) -> list[str]:
    """The booking ids of the events on the account's primary calendar."""
    return sorted(e["extendedProperties"]["private"]["booking_id"] for e in env.events(email))


def google_calls(env: Env, email: str, since: float) -> list[dict[str, Any]]:
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    return [c for c in calls if c["account"] == email]


async def test_a_backfill_writes_only_the_bookings_within_the_horizon(env: Env) -> None:
    """A link selected on an activity with bookings that ended 30 days ago and upcoming
    ones: only those ending after the horizon (7 days back, the default) are written, and
    Google is called at most 1.05 times per booking written, whatever the history."""
    email, refresh = env.account("history")
    past = fill(env, "past_", 300, "-30 days", "-1 hour")  # ended a month ago and before
    recent = fill(env, "recent_", 5, "-3 days")  # ended 3 days ago: within the horizon
    upcoming = fill(env, "next_", 60, "14 days")
    fill(env, "gone_", 4, "14 days", status="canceled")  # nothing to write
    link_id = await env.link(email, refresh, calendar_id=None, activity_id=ACTIVITY)
    since = time.time()

    chosen = calsync(env, "links", "select", link_id, email)

    assert chosen.returncode == 0, chosen.stderr
    written = sorted(recent + upcoming)
    assert f"backfilled: {len(written)} bookings, {len(written)} applied" in chosen.stdout
    assert f"backfill: {len(written)} bookings will be written (those ending after" in (
        chosen.stderr
    )
    assert on_calendar(env, email) == written
    assert not set(past) & set(on_calendar(env, email))
    calls = google_calls(env, email, since)
    assert len(calls) <= 1.05 * len(written), [c["op"] for c in calls]
    row = env.query("SELECT total, done, trigger, error, horizon FROM backfills")[0]
    assert (row["total"], row["done"], row["trigger"], row["error"]) == (
        len(written),
        len(written),
        "select",
        None,
    )
    results = env.query(
        "SELECT count(*) AS n FROM sync_results WHERE link_id = %s AND booking_id LIKE 'past_%%'",
        link_id,
    )
    assert results == [{"n": 0}]  # the past was not even tried
    assert env.query("SELECT count(*) AS n FROM repairs") == [{"n": 0}]  # all settled


# A child that runs the command and reports its peak resident set (ru_maxrss: KiB on
# Linux) as the last line of its output.
_PEAK = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stderr.write(done.stdout + done.stderr)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_kib(env: Env, *args: str) -> int:
    """Run `calsync ARGS` in a child process of its own and answer its peak RSS."""
    measured = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "consumer", *args],
        env=env.env_vars,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    code, peak = measured.stdout.split()
    assert code == "0", measured.stderr
    return int(peak)


async def test_a_backfills_memory_does_not_grow_with_the_history(env: Env) -> None:
    """The same backfill (20 upcoming bookings) over a history of 2,000 and of 40,000 past
    bookings of the activity, each measured in a process of its own: its peak memory does
    not grow with the history.

    The arithmetic: the 38,000 more past bookings would take, held as a list (what the
    backfill read before: every booking of the activity, parsed), at least 38,000 x 2 KiB
    (a BookingEvent with its Booking, a dozen strings and two datetimes; the row's dict and
    its parsed JSON come on top) = 76 MB; the bound, 25 MB, is a third of that and leaves
    room for the noise of two Python processes (allocator, import order)."""
    small_email, small_refresh = env.account("small")
    large_email, large_refresh = env.account("large")
    # The past ones canceled: a backfill that read them anyway would have nothing to send
    # to Google for them, so what is measured is memory alone (the horizon's own test
    # shows that past bookings are not written).
    past = {"status": "canceled", "offset": "-30 days", "step": "-1 hour"}
    fill(env, "s_past_", 2_000, activity="act_small", **past)
    fill(env, "s_next_", 20, "14 days", activity="act_small")
    fill(env, "l_past_", 40_000, activity="act_large", **past)
    fill(env, "l_next_", 20, "14 days", activity="act_large")
    small = await env.link(small_email, small_refresh, calendar_id=None, activity_id="act_small")
    large = await env.link(large_email, large_refresh, calendar_id=None, activity_id="act_large")

    small_kib = peak_rss_kib(env, "links", "select", small, small_email)
    large_kib = peak_rss_kib(env, "links", "select", large, large_email)

    assert len(env.events(small_email)) == 20 and len(env.events(large_email)) == 20
    growth_mb = (large_kib - small_kib) * 1024 / 1e6
    print(f"peak RSS: {small_kib} KiB (2,000 past), {large_kib} KiB (40,000 past)")
    assert growth_mb < 25, f"{small_kib} KiB -> {large_kib} KiB: +{growth_mb:.1f} MB"


async def test_links_import_with_a_calendar_backfills_like_a_select(env: Env) -> None:
    """`calsync links import --calendar` activates the link and backfills it like a select
    (from the horizon on, its progress in `backfills`, trigger 'import'), waited for, with
    its counts printed; the link id stays the last line."""
    email, refresh = env.account("imported")
    fill(env, "past_", 50, "-30 days", "-1 hour")
    upcoming = fill(env, "next_", 6, "2 days")
    since = time.time()

    imported = calsync(
        env,
        "links",
        "import",
        "--activity",
        ACTIVITY,
        "--account",
        email,
        "--refresh-token-file",
        "-",
        "--calendar",
        email,
        stdin=refresh + "\n",
    )

    assert imported.returncode == 0, imported.stderr
    lines = imported.stdout.strip().splitlines()
    link_id = lines[-1]
    assert link_id.startswith("lnk_")
    assert "backfilled: 6 bookings, 6 applied" in lines[:-1]
    assert "backfill: 6 bookings will be written (those ending after" in imported.stderr
    assert on_calendar(env, email) == sorted(upcoming)
    assert len(google_calls(env, email, since)) <= 1.05 * 6 + 1  # + the token's refresh
    rows = env.query("SELECT link_id, trigger, total, done, finished_at, error FROM backfills")
    assert [(r["link_id"], r["trigger"], r["total"], r["done"], r["error"]) for r in rows] == [
        (link_id, "import", 6, 6, None)
    ]
    assert rows[0]["finished_at"] is not None
    state = env.query("SELECT state, backfilled_at FROM calendar_links WHERE id = %s", link_id)
    assert state[0]["state"] == "active" and state[0]["backfilled_at"] is not None


async def test_links_import_no_backfill_activates_without_writing(env: Env) -> None:
    """`--no-backfill`: the link is active and nothing is written (nor recorded as a
    backfill); without --calendar it is refused (a pending link backfills nothing)."""
    email, refresh = env.account("quiet")
    fill(env, "next_", 3, "2 days")
    since = time.time()

    imported = calsync(
        env,
        "links",
        "import",
        "--activity",
        ACTIVITY,
        "--account",
        email,
        "--refresh-token",
        refresh,
        "--calendar",
        email,
        "--no-backfill",
    )

    assert imported.returncode == 0, imported.stderr
    link_id = imported.stdout.strip().splitlines()[-1]
    assert "backfilled" not in imported.stdout
    assert env.query("SELECT state FROM calendar_links WHERE id = %s", link_id) == [
        {"state": "active"}
    ]
    assert env.events(email) == [] and google_calls(env, email, since) == []
    assert env.query("SELECT count(*) AS n FROM backfills") == [{"n": 0}]
    refused = calsync(
        env,
        "links",
        "import",
        "--activity",
        ACTIVITY,
        "--account",
        email,
        "--refresh-token",
        refresh,
        "--no-backfill",
    )
    assert refused.returncode != 0 and "--no-backfill goes with --calendar" in refused.stderr


async def test_a_stopped_backfill_is_finished_by_the_repair_loop(env: Env) -> None:
    """What a backfill writes is owed in `repairs` before any of it is written: the CLI
    stopped in the middle (SIGKILL, nothing recorded on its way out), `calsync repair --now`
    writes the rest, each booking once."""
    email, refresh = env.account("stopped")
    fill(env, "past_", 100, "-30 days", "-1 hour")
    upcoming = fill(env, "next_", 12, "3 days")
    link_id = await env.link(email, refresh, calendar_id=None, activity_id=ACTIVITY)
    # One call a second for the account: the backfill is still under way when it is stopped.
    slow = {"CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN": "60"}
    select = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "links",
        "select",
        link_id,
        email,
        env={**env.env_vars, **slow},
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_until(
            lambda: len(env.events(email)) >= 2, timeout_s=60, what="the backfill under way"
        )
        owed = env.query("SELECT booking_id FROM repairs WHERE link_id = %s", link_id)
        assert owed, "nothing owed while the backfill runs"
    finally:
        select.kill()
        await select.wait()
    assert len(env.events(email)) < len(upcoming)
    # Every upcoming booking not yet written is owed (none of the past).
    owed = {r["booking_id"] for r in env.query("SELECT booking_id FROM repairs")}
    assert owed >= set(upcoming) - set(on_calendar(env, email))
    assert not {b for b in owed if b.startswith("past_")}

    repaired = calsync(env, "repair", "--now", "--json")

    assert repaired.returncode == 0, repaired.stderr + repaired.stdout
    json.loads(repaired.stdout)
    assert on_calendar(env, email) == sorted(upcoming)  # each once: no duplicates
    assert env.query("SELECT count(*) AS n FROM repairs") == [{"n": 0}]


async def test_a_backfill_page_is_read_from_the_index_not_the_history(env: Env) -> None:
    """The page statement reads the activity's bookings within the horizon straight from
    `bookings_activity_ends` (sql/016), never a scan of the activity's whole history."""
    from consumer.adapters.postgres.backfill_store import _ACTIVITY_PAGE

    fill(env, "past_", 20_000, "-30 days", "-1 hour")
    fill(env, "next_", 20, "2 days")
    fill(env, "other_", 5_000, "2 days", activity="act_other")
    with psycopg.connect(env.database_url) as conn:
        conn.execute("ANALYZE bookings")
        params = {
            "link": "lnk_none",
            "activity": ACTIVITY,
            "since": datetime.now(UTC) - timedelta(days=7),
            "after_end": datetime.now(UTC) - timedelta(days=7),
            "after_id": "",
            "limit": 500,
        }
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {_ACTIVITY_PAGE}", params).fetchone()
    assert row is not None
    plan = json.dumps(row[0])
    assert "bookings_activity_ends" in plan, plan
    assert '"Seq Scan"' not in plan, plan
