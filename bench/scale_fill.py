"""Scenario 6's database: ten years of a large company, made directly in PostgreSQL with
generate_series (never through Kafka), in minutes.

- 1,000,000 bookings over ten years (version 2, confirmed, ending from ten years ago to two
  months ahead): 800,000 over 400 activities, and 200,000 on `act_big` of which about 2,000
  end in the future (the backfill's activity);
- 2,000 active links, 5 on each of the 400 activities, over 10 Google accounts (each
  account's calendar on 200 activities);
- `link_bookings` for the future bookings of the linked activities (an event recorded for
  each link, applied at version 1: the repairs below have work to do);
- 1,000,000 repairs waiting: every future (link, booking) pair (due first), then past pairs;
- 10,000,000 `sync_results` over the ten years (2.5% of them within 90 days).

Secondary indexes of the big tables are dropped while rows go in and built again after
(what a bulk load does): with them, the 10,000,000 results alone took minutes longer.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from consumer.adapters.crypto import TokenCipher

ACTIVITIES = 400
LINKS_PER_ACTIVITY = 5
ACCOUNTS = 10
BOOKINGS = 1_000_000
BIG_BOOKINGS = 200_000  # on act_big, the backfill's activity
BIG_ACTIVITY = "act_big"
BIG_FUTURE = 2_000  # of them ending in the future
REPAIRS = 1_000_000
RESULTS = 10_000_000
YEARS_DAYS = 3650
AHEAD_DAYS = 60  # the other activities' bookings reach this far ahead
BIG_AHEAD_DAYS = YEARS_DAYS * BIG_FUTURE / (BIG_BOOKINGS - BIG_FUTURE)  # about 36.9 days


def account_email(n: int) -> str:
    return f"scale-{n}@bench.example.com"


def account_refresh(n: int) -> str:
    return f"1//bench-scale-{n}"


_ISO = "to_char(({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
_BOOKINGS = f"""
INSERT INTO bookings (booking_id, activity_id, version, event_type, event, updated_at)
SELECT 'bk_' || n, act, 2, 'booking.updated', jsonb_build_object(
    'schema_version', 1,
    'event_id', md5('event' || n)::uuid,
    'event_type', 'booking.updated',
    'occurred_at', {_ISO.format("ends - interval '30 days'")},
    'booking', jsonb_build_object(
        'id', 'bk_' || n, 'version', 2, 'confirmation_code', 'BK-' || n,
        'status', 'confirmed', 'source', 'web', 'activity_id', act,
        'activity_name', 'Kayak Tour', 'customer_name', 'Customer ' || n,
        'location_name', 'Lake Dock', 'start', {_ISO.format("ends - interval '2 hours'")},
        'end', {_ISO.format("ends")}, 'timezone', 'UTC')),
    ends - interval '30 days'
FROM (SELECT n,
             CASE WHEN n < %(big)s THEN %(big_activity)s ELSE 'act_' || (n %% %(activities)s)
             END AS act,
             date_trunc('minute', CASE WHEN n < %(big)s
                  THEN now() - interval '1 day' * %(years)s
                       + interval '1 day' * ((%(years)s + %(big_ahead)s) * (n + 1)::float8
                                             / %(big)s)
                  ELSE now() - interval '1 day' * %(years)s
                       + interval '1 day' * ((%(years)s + %(ahead)s) * (n - %(big)s + 1)::float8
                                             / (%(bookings)s - %(big)s)) END) AS ends
      FROM generate_series(%(first)s::int, %(last)s::int) AS n) AS s
"""
_LINKS = """
INSERT INTO calendar_links (id, activity_id, account_email, calendar_id, state, backfilled_at)
SELECT 'lnk_' || a || '_' || k, 'act_' || a, 'scale-' || ((a + 2 * k) %% %(accounts)s)
       || '@bench.example.com', 'scale-' || ((a + 2 * k) %% %(accounts)s)
       || '@bench.example.com', 'active', now()
FROM generate_series(0, %(activities)s::int - 1) AS a, generate_series(0, %(per)s::int - 1) AS k
"""
_GRANT = "INSERT INTO google_grants (account_email, refresh_token_enc) VALUES (%s, %s)"
_FUTURE_PAIRS = """
INSERT INTO link_bookings (link_id, booking_id, applied_version, google_event_id, generation)
SELECT l.id, b.booking_id, 1, 'ev' || md5(l.id || b.booking_id), 0
FROM bookings b JOIN calendar_links l ON l.activity_id = b.activity_id
WHERE (b.event -> 'booking' ->> 'end')::timestamptz > now()
"""
_FUTURE_REPAIRS = """
INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at, first_failed_at)
SELECT link_id, booking_id, 2, 'retries_exhausted', now() - interval '1 day',
       now() - interval '1 day'
FROM link_bookings
"""
_PAST_REPAIRS = """
INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at, first_failed_at)
SELECT l.id, b.booking_id, 2, 'retries_exhausted', now() - interval '1 hour',
       now() - interval '1 hour'
FROM bookings b JOIN calendar_links l ON l.activity_id = b.activity_id
WHERE (b.event -> 'booking' ->> 'end')::timestamptz <= now()
  AND substring(b.booking_id FROM 4)::int %% 4 = right(l.id, 1)::int %% 4
LIMIT %(limit)s
"""
_RESULTS = """
INSERT INTO sync_results (event_id, event_type, booking_id, booking_version, link_id,
                          operation, outcome, reason, attempts, recorded_at, source)
SELECT md5('result' || i)::uuid, 'booking.updated',
       'bk_' || (%(big)s + i %% (%(bookings)s - %(big)s)), 2,
       'lnk_' || (i %% %(activities)s) || '_' || (i %% %(per)s), 'update', 'applied', 'updated',
       1, now() - interval '1 day' * %(years)s * (1 - i::float8 / %(results)s), 'event'
FROM generate_series(%(first)s::int, %(last)s::int) AS i
"""
_SECONDARY_INDEXES = """
SELECT indexname, indexdef FROM pg_indexes i
WHERE tablename = ANY(%s) AND NOT EXISTS (
    SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
"""
_BIG_TABLES = ["sync_results", "bookings", "repairs", "link_bookings"]


def _parallel(database_url: str, sql: str, params: dict[str, float | str], total: int) -> None:
    """`sql` over [first, last] ranges on two connections at once (two cores)."""
    half = total // 2
    ranges = [(0, half - 1), (half, total - 1)]
    if sql is _RESULTS:
        ranges = [(1, half), (half + 1, total)]

    def run(bounds: tuple[int, int]) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            conn.execute(sql, {**params, "first": bounds[0], "last": bounds[1]})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, ranges))


def fill(database_url: str, token_key: str, scale: float = 1.0) -> dict[str, float]:
    """Fill a migrated, empty database; seconds per step (and `total`). `scale` shrinks
    the bookings, repairs and results (a quick try of the bench itself)."""
    bookings, big = int(BOOKINGS * scale), int(BIG_BOOKINGS * scale)
    results, repairs = int(RESULTS * scale), int(REPAIRS * scale)
    timings: dict[str, float] = {}
    started = time.monotonic()

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = now - since
        print(f"   fill: {name} {now - since:.1f} s", flush=True)
        return now

    params: dict[str, float | str] = {
        "big": big,
        "big_activity": BIG_ACTIVITY,
        "activities": ACTIVITIES,
        "years": YEARS_DAYS,
        "ahead": AHEAD_DAYS,
        "big_ahead": BIG_AHEAD_DAYS,
        "bookings": bookings,
        "accounts": ACCOUNTS,
        "per": LINKS_PER_ACTIVITY,
        "results": results,
    }
    with psycopg.connect(database_url, autocommit=True) as conn:
        dropped = conn.execute(_SECONDARY_INDEXES, (_BIG_TABLES,)).fetchall()
        for name, _ in dropped:
            conn.execute(f'DROP INDEX "{name}"')
        cipher = TokenCipher([token_key])
        for n in range(ACCOUNTS):
            conn.execute(_GRANT, (account_email(n), cipher.encrypt(account_refresh(n))))
        conn.execute(_LINKS, params)
    at = step("links and grants", started)
    _parallel(database_url, _BOOKINGS, params, bookings)
    at = step("bookings", at)
    _parallel(database_url, _RESULTS, params, results)
    at = step("sync_results", at)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute(_FUTURE_PAIRS)
        future = conn.execute("SELECT count(*) FROM link_bookings").fetchone()
        conn.execute(_FUTURE_REPAIRS)
        conn.execute(_PAST_REPAIRS, {"limit": max(0, repairs - (future[0] if future else 0))})
    at = step("link_bookings and repairs", at)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET max_parallel_maintenance_workers = 2")
        for _, definition in dropped:
            conn.execute(definition)
    at = step("indexes built again", at)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in [*_BIG_TABLES, "calendar_links", "google_grants"]:
            conn.execute(f"ANALYZE {table}")
    step("analyze", at)
    timings["total"] = time.monotonic() - started
    return timings


def counts(database_url: str) -> dict[str, int]:
    """Rows per table, and future bookings of the backfill's activity (cheap estimates for
    the large tables would do, but exact ones are still seconds)."""
    with psycopg.connect(database_url) as conn:
        found = {
            table: int(row[0])
            for table in [*_BIG_TABLES, "calendar_links"]
            if (row := conn.execute(f"SELECT count(*) FROM {table}").fetchone())
        }
        row = conn.execute(
            "SELECT count(*) FROM bookings WHERE activity_id = %s"
            " AND (event -> 'booking' ->> 'end')::timestamptz > now()",
            (BIG_ACTIVITY,),
        ).fetchone()
        found["big_future"] = int(row[0]) if row else 0
    return found
