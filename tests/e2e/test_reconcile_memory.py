"""A reconcile's memory is bounded by the bookings within the horizon, not by the history:
`calsync reconcile` and the consumer's scheduled reconcile, each in a process of its own,
measured (peak RSS), never timed.

The history is written straight into PostgreSQL (bookings and the link's records, as years
of syncing leave them: tens of thousands of bookings that ended long ago, each recorded with
its event), a few dozen bookings within the horizon beside it, their events planted in the
sandbox as the consumer wrote them. The same link is reconciled over a small history and
over a large one; the peak may grow by less than a list of every booking would take.

The arithmetic of the bound: holding every booking of the activity costs, per booking, at
least its row (a dict of the parsed event: about fifteen strings, ~1.5 KB) or its parsed
model (~1 KB), plus its entry in the id -> booking map (~150 bytes): over 1 KB each, so
the 36,000 bookings the large history adds would take more than 36 MB. The growth allowed
is 12 MB (about 340 bytes a booking): room for the allocator's noise, a third of what a
list of the history would need.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from consumer.domain.models import BookingEvent
from consumer.domain.planning import google_event_id, render_event
from tests.integration.test_reconcile_horizon import span
from tests.plugins.environment import ROOT, Env
from tests.plugins.events import booking_event

SMALL_HISTORY = 2_000
LARGE_HISTORY = 38_000
WITHIN_HORIZON = 40
GROWTH_ALLOWED_KIB = 12 * 1024
HORIZON = {"CALSYNC_BACKFILL_PAST_DAYS": "7"}

# Runs a command and says its peak RSS (KiB) in a file: `resource.getrusage` of the children
# a process waited for (what `/usr/bin/time -v` says, where that exists).
_PEAK = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(done.returncode)\n"
)

# Bookings that ended long ago (30 days to 8 years), each with the event the link recorded
# for it, as years of syncing leave them: written by PostgreSQL, not through Kafka.
_HISTORY_BOOKINGS = """
INSERT INTO bookings (booking_id, activity_id, version, event_type, event)
SELECT 'hist_' || n, %(activity)s, 1, 'booking.created', jsonb_build_object(
    'schema_version', 1, 'event_id', gen_random_uuid()::text,
    'event_type', 'booking.created', 'occurred_at', to_char(s, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    'booking', jsonb_build_object(
        'id', 'hist_' || n, 'version', 1, 'confirmation_code', 'BK-hist-' || n,
        'status', 'confirmed', 'source', 'web', 'activity_id', %(activity)s::text,
        'activity_name', 'Kayak Tour', 'customer_name', 'Customer number ' || n,
        'location_name', 'Lake Dock', 'timezone', 'UTC',
        'start', to_char(s, 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'end', to_char(s + interval '2 hours', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
FROM generate_series(%(first)s::int, %(last)s::int) AS n,
LATERAL (SELECT (now() AT TIME ZONE 'UTC') - make_interval(days => 30 + mod(n, 2900)) AS s) t
"""
_HISTORY_RECORDS = """
INSERT INTO link_bookings (link_id, booking_id, applied_version, google_event_id, calendar_id)
SELECT %(link)s, 'hist_' || n, 1, 'evhist' || n, %(calendar)s
FROM generate_series(%(first)s::int, %(last)s::int) AS n
"""


def fill_history(env: Env, link_id: str, calendar_id: str, first: int, last: int) -> None:
    which = {"activity": "act_1", "first": first, "last": last}
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute(_HISTORY_BOOKINGS, which)
        conn.execute(_HISTORY_RECORDS, {**which, "link": link_id, "calendar": calendar_id})


def fill_horizon(env: Env, email: str, link_id: str, count: int) -> None:
    """`count` bookings ahead, recorded and on the calendar as the consumer would leave them."""
    for n in range(count):
        event = BookingEvent.model_validate(
            booking_event(f"soon_{n}", 1, customer_name=f"Soon {n}", **span(1 + n % 20))
        )
        event_id = google_event_id(link_id, event.booking.id, 0)
        env.query(
            "INSERT INTO bookings (booking_id, activity_id, version, event_type, event)"
            " VALUES (%s, 'act_1', 1, 'booking.created', %s) RETURNING 1",
            event.booking.id,
            event.model_dump_json(),
        )
        env.query(
            "INSERT INTO link_bookings (link_id, booking_id, applied_version, google_event_id,"
            " calendar_id) VALUES (%s, %s, 1, %s, %s) RETURNING 1",
            link_id,
            event.booking.id,
            event_id,
            email,
        )
        env.sandbox.plant_event(
            email,
            email,
            render_event(event.booking, link_id, event_id, deployment=env.deployment_id),
        )


def peak_rss_kib(env: Env, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`calsync ARGS --json` in a process of its own: its peak RSS, and its answer."""
    peak = tmp_path / "peak"
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(peak), sys.executable, "-m", "consumer", *args],
        env={**env.env_vars, **HORIZON},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return int(peak.read_text()), json.loads(done.stdout)


async def test_reconciling_a_link_takes_the_same_memory_whatever_its_history(
    env: Env, tmp_path: Path
) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    fill_horizon(env, email, link_id, WITHIN_HORIZON)
    fill_history(env, link_id, email, 1, SMALL_HISTORY)
    command = ("reconcile", "--link", link_id, "--json")
    small, answer = peak_rss_kib(env, tmp_path, *command)
    assert answer["found"] == {}, answer  # exact: the comparison alone is measured
    assert answer["links"][0]["events_seen"] == WITHIN_HORIZON
    fill_history(env, link_id, email, SMALL_HISTORY + 1, LARGE_HISTORY)
    large, answer = peak_rss_kib(env, tmp_path, *command)
    assert answer["found"] == {}, answer
    growth = large - small
    print(f"reconcile peak RSS: {small} KiB, then {large} KiB with the large history")
    assert growth < GROWTH_ALLOWED_KIB, (
        f"peak RSS grew {growth} KiB for {LARGE_HISTORY - SMALL_HISTORY} more bookings in the "
        f"past ({small} -> {large} KiB): the reconcile holds the history"
    )


def consumer_peak_kib(env: Env, tmp_path: Path, runs_before: int) -> int:
    """A consumer process until its scheduled reconcile has run once: its peak RSS."""
    log = tmp_path / f"consumer-{runs_before}.log"
    process = env.start_process(log, CALSYNC_RECONCILE_INTERVAL_S="1", **HORIZON)
    try:
        return _peak_after_scheduled_run(env, process, runs_before, log)
    finally:
        process.terminate()
        assert process.wait(30) == 0, f"calsync consume did not stop cleanly; see {log}"


def _peak_after_scheduled_run(
    env: Env, process: subprocess.Popen[bytes], runs_before: int, log: Path
) -> int:
    deadline = time.monotonic() + 90
    while True:
        done = env.query(
            "SELECT count(*) AS n FROM reconcile_runs"
            " WHERE trigger = 'schedule' AND finished_at IS NOT NULL"
        )[0]["n"]
        if done > runs_before:
            break
        assert process.poll() is None, f"calsync consume ended; see {log}"
        assert time.monotonic() < deadline, f"no scheduled reconcile ran; see {log}"
        time.sleep(0.2)
    status = Path(f"/proc/{process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


async def test_the_scheduled_reconcile_keeps_the_consumer_within_its_memory(
    env: Env, tmp_path: Path
) -> None:
    """The consumer group's own reconcile runs inside a consumer process: a large history
    must not raise that process's peak (the issue: the first nightly reconcile of a large
    company killed the consumer)."""
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    fill_horizon(env, email, link_id, WITHIN_HORIZON)
    fill_history(env, link_id, email, 1, SMALL_HISTORY)
    small = consumer_peak_kib(env, tmp_path, 0)
    fill_history(env, link_id, email, SMALL_HISTORY + 1, LARGE_HISTORY)
    env.query("UPDATE schedules SET next_at = now() RETURNING 1")  # due again at once
    large = consumer_peak_kib(env, tmp_path, 1)
    runs = env.query("SELECT found, error FROM reconcile_runs WHERE finished_at IS NOT NULL")
    assert len(runs) >= 2 and all(r["found"] == {} and r["error"] is None for r in runs), runs
    growth = large - small
    print(f"consumer peak RSS: {small} KiB, then {large} KiB with the large history")
    assert growth < GROWTH_ALLOWED_KIB, (
        f"the consumer's peak RSS grew {growth} KiB for {LARGE_HISTORY - SMALL_HISTORY} more "
        f"bookings in the past ({small} -> {large} KiB): its scheduled reconcile holds them"
    )
