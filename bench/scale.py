"""Scenario 6, scale (issue 22, point 7): a company ten years old, filled directly in
PostgreSQL (bench/scale_fill.py: 1,000,000 bookings, 2,000 links, 1,000,000 repairs
waiting, 10,000,000 results), and what calendar-sync costs on it:

- peak RSS of the process doing the work, during a backfill of an activity with 200,000
  bookings (about 2,000 ending in the future: `calsync links select`) and during a
  reconcile of every link (`calsync reconcile`, a dry run: Google is listed, not written);
  target under 250 MB;
- that backfill's Google calls (the sandbox's count for its account): at most 1.05 x the
  future bookings;
- one repair poll with 1,000,000 repairs waiting (the repair loop's own lease, timed in
  this process): under 10 ms; then `calsync consume` for a minute with that backlog, at the
  default quotas (600 calls a minute per account, 10 accounts): the share of the accounts'
  quotas used, at least 95%;
- a retention pass over the 10,000,000 results while `calsync consume` takes a steady
  inflow: p99 latency from a message's timestamp to its write recorded, without and with
  the pass running, at most 100 ms apart.

The backfill and the repair loop call Google, so they run in every batch mode asked for;
the fill, the reconcile (listings only), the poll and retention run once. Each measurement
has a time cap: what does not finish within it is reported as such (MISSED), so the
scenario ends whatever the code it measures does.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg.rows import dict_row

from bench.common import ROOT, STATE, Row, consumer_env, consumers, migrated_database
from bench.scale_fill import (
    ACCOUNTS,
    BIG_ACTIVITY,
    BIG_FUTURE,
    account_email,
    account_refresh,
    counts,
    fill,
)
from bench.scenarios import LATENCY, UNLIMITED, Bench, percentiles
from calsync_dev.events import booking_event
from consumer.adapters.kafka import ensure_topics
from consumer.adapters.metrics import Metrics
from consumer.bootstrap import link_service, repair_store, retention
from consumer.domain.records import LeaseRequest
from consumer.domain.repair_queue import places_per_account
from consumer.settings import Settings

RSS_TARGET_MB = 250.0
CALLS_PER_FUTURE_TARGET = 1.05
POLL_TARGET_MS = 10.0
QUOTA_SHARE_TARGET = 0.95
BLOCK_TARGET_S = 0.1
FILL_TARGET_S = 180.0
BACKFILL_CAP_S = 180.0
RECONCILE_CAP_S = 180.0
REPAIR_LOOP_S = 60.0
RETENTION_CAP_S = 480.0
ACCOUNT_QUOTA_PER_MIN = 600  # the default CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN
PROJECT_QUOTA_PER_MIN = 10_000  # the default CALSYNC_QUOTA_PER_PROJECT_PER_MIN
STEADY_RATE = 20.0  # messages a second during the retention measure (5 links each)
STEADY_S = 30.0
NO_RETENTION = {"CALSYNC_RESULTS_RETENTION_DAYS": "0"}  # the bench runs its own pass


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def run_measured(
    command: list[str], env: dict[str, str], cap_s: float, log_name: str
) -> tuple[float, float, bool]:
    """`calsync COMMAND` in its own process: its peak RSS in MB (VmHWM, read every 0.1 s),
    its seconds, and whether it ended by itself within `cap_s` (else it is stopped)."""
    with open(STATE / f"{log_name}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "consumer", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        started, peak = time.monotonic(), 0.0
        while process.poll() is None and time.monotonic() - started < cap_s:
            peak = max(peak, _peak_rss_mb(process.pid))
            time.sleep(0.1)
        finished = process.poll() is not None
        if not finished:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return peak, time.monotonic() - started, finished and process.returncode == 0


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


async def _pending_link(settings: Settings, email: str, refresh: str) -> str:
    async with link_service(settings) as service:
        return await service.import_link(
            activity_id=BIG_ACTIVITY,
            account_email=email,
            refresh_token=refresh,
            access_token=None,
            expires_at=None,
            calendar_id=None,
        )


def backfill(bench: Bench, settings: Settings, mode: str, future: int) -> tuple[Row, list[str]]:
    """`calsync links select` of a new link on the activity of 200,000 bookings."""
    bench.sandbox.configure(
        batch_mode=mode, latency_s=0.02, quota_per_account_per_min=None,
        quota_per_project_per_min=None,
    )  # fmt: skip
    email, refresh = f"big-{mode}@bench.example.com", f"1//bench-big-{mode}"
    bench.sandbox.add_account(email, refresh)
    link_id = asyncio.run(_pending_link(settings, email, refresh))
    bench.sandbox.reset_quota()
    env = consumer_env(settings, **UNLIMITED)
    print(f"   backfill: calsync links select (cap {BACKFILL_CAP_S:.0f} s)", flush=True)
    peak, seconds, finished = run_measured(
        ["links", "select", link_id, email], env, BACKFILL_CAP_S, f"s6{mode[0]}-backfill"
    )
    calls = int(bench.sandbox.quota().get(email, {}).get("calls", 0))
    allowed = CALLS_PER_FUTURE_TARGET * future
    ended = "" if finished else f" (stopped at the {BACKFILL_CAP_S:.0f} s cap, not finished)"
    row = Row(
        "6: backfill of 200,000 bookings",
        mode,
        "calsync links select",
        calls,
        seconds,
        calls / seconds if seconds else 0.0,
        peak_rss_mb=peak,
        note=f"{future} of the activity's bookings end in the future; {calls} Google calls{ended}",
    )
    return row, [
        f"[{mode}] 6: backfill peak RSS {peak:.0f} MB, target under {RSS_TARGET_MB:.0f} MB"
        f"{ended}: {_verdict(finished and peak < RSS_TARGET_MB)}",
        f"[{mode}] 6: backfill Google calls {calls} for {future} future bookings, target at "
        f"most {allowed:.0f}{ended}: {_verdict(finished and calls <= allowed)}",
    ]


def reconcile(bench: Bench, settings: Settings) -> tuple[Row, list[str]]:
    """`calsync reconcile` (a dry run) of every link."""
    bench.sandbox.configure(
        latency_s=0.02, quota_per_account_per_min=None, quota_per_project_per_min=None
    )
    bench.sandbox.reset_quota()
    print(f"   reconcile: calsync reconcile --json (cap {RECONCILE_CAP_S:.0f} s)", flush=True)
    peak, seconds, finished = run_measured(
        ["reconcile", "--json"],
        consumer_env(settings, **UNLIMITED),
        RECONCILE_CAP_S,
        "s6-reconcile",
    )
    calls = int(bench.sandbox.quota().get("*project*", {}).get("calls", 0))
    ended = "" if finished else f" (stopped at the {RECONCILE_CAP_S:.0f} s cap, not finished)"
    row = Row(
        "6: reconcile of 2,000 links",
        "-",
        "calsync reconcile",
        calls,
        seconds,
        calls / seconds if seconds else 0.0,
        peak_rss_mb=peak,
        note=f"a dry run: {calls} Google calls (listings){ended}",
    )
    return row, [
        f"6: reconcile peak RSS {peak:.0f} MB, target under {RSS_TARGET_MB:.0f} MB{ended}: "
        f"{_verdict(finished and peak < RSS_TARGET_MB)}"
    ]


async def _poll_ms(settings: Settings, polls: int = 5) -> float | None:
    """One poll of the repair loop (its one lease statement), timed on a connection held
    open (its opening is not the poll's), as a fresh process would ask it (no account worked
    here yet: every account's default places)."""
    store = repair_store(settings)
    ask = LeaseRequest(
        member="bench-poll",
        limit=settings.repair_concurrency,
        per_account=places_per_account(
            settings.quota_per_account_per_min, settings.quota_max_wait_s
        ),
        lease_s=1.0,  # released at once after: the consumer's own loop leases them next
    )
    times = []
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        for _ in range(polls):
            started = time.perf_counter()
            await store.lease_on(conn, ask)
            times.append((time.perf_counter() - started) * 1000)
            await conn.execute(
                "UPDATE repairs SET leased_by = NULL, leased_until = NULL"
                " WHERE leased_by = 'bench-poll'"
            )
    return statistics.median(times)


def repair_poll(settings: Settings) -> list[str]:
    print("   repair poll: the loop's lease with 1,000,000 repairs waiting", flush=True)
    try:
        ms = asyncio.run(_poll_ms(settings))
    except TypeError as exc:  # the poll's signature changed
        return [f"6: repair poll not measured ({exc}): MISSED"]
    if ms is None:
        return ["6: repair poll not measured (RepairLoop._lease is gone: follow it): MISSED"]
    return [
        f"6: one repair poll {ms:.1f} ms (median of 5) with 1,000,000 repairs waiting, target "
        f"under {POLL_TARGET_MS:.0f} ms: {_verdict(ms < POLL_TARGET_MS)}"
    ]


def repair_loop(bench: Bench, settings: Settings, mode: str) -> tuple[Row, list[str]]:
    """`calsync consume` with the repairs' backlog, at the default quotas."""
    bench.sandbox.configure(
        batch_mode=mode,
        quota_per_account_per_min=ACCOUNT_QUOTA_PER_MIN,
        quota_per_project_per_min=PROJECT_QUOTA_PER_MIN,
        **LATENCY,
    )
    bench.sandbox.reset_quota()
    print(f"   repair loop: calsync consume for {REPAIR_LOOP_S:.0f} s", flush=True)
    name = f"s6{mode[0]}-repairs"
    with consumers(1, consumer_env(settings, **NO_RETENTION), name) as running:
        started, peak = time.monotonic(), 0.0
        while time.monotonic() - started < REPAIR_LOOP_S and running[0].process.poll() is None:
            peak = max(peak, _peak_rss_mb(running[0].process.pid))
            time.sleep(0.5)
    report = bench.sandbox.quota()
    mine = [report[a] for a in map(account_email, range(ACCOUNTS)) if a in report]
    calls = sum(int(a["calls"]) for a in mine)
    span = max((float(a["span_s"]) for a in mine), default=0.0)
    rate_per_min = calls / span * 60 if span else 0.0
    share = rate_per_min / (ACCOUNTS * ACCOUNT_QUOTA_PER_MIN)
    row = Row(
        "6: repair loop, 1,000,000 waiting",
        mode,
        "calsync consume",
        calls,
        span,
        calls / span if span else 0.0,
        peak_rss_mb=peak,
        quota_share=share,
        note=f"{ACCOUNTS} accounts at {ACCOUNT_QUOTA_PER_MIN}/min each; {calls} Google calls in "
        f"{span:.0f} s",
    )
    return row, [
        f"[{mode}] 6: repair loop at {share:.1%} of the accounts' quotas with 1,000,000 "
        f"repairs waiting, target at least {QUOTA_SHARE_TARGET:.0%}: "
        f"{_verdict(share >= QUOTA_SHARE_TARGET)}"
    ]


def _message(booking_id: str, activity: str, at: datetime) -> bytes:
    """A new booking a week ahead, as the upstream publishes it (ids apart from the fill's)."""
    start = at + timedelta(days=7)
    return json.dumps(
        booking_event(
            booking_id,
            1,
            "booking.created",
            activity,
            occurred_at=_iso(at),
            start=_iso(start),
            end=_iso(start + timedelta(hours=2)),
        )
    ).encode()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _steady(settings: Settings, activities: list[str], tag: str) -> dict[str, float]:
    """STEADY_RATE messages a second for STEADY_S, bookings `bk_<tag>_<n>`; each booking's
    message timestamp."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=1)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(int(STEADY_RATE * STEADY_S)):
            delay = start + n / STEADY_RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            stamp_ms = int(now.timestamp() * 1000)
            booking_id = f"bk_{tag}_{n}"
            sent[booking_id] = stamp_ms / 1000
            await producer.send(
                settings.topic,
                _message(booking_id, activities[n % len(activities)], now),
                key=booking_id.encode(),
                timestamp_ms=stamp_ms,
            )
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _latencies(database_url: str, sent: dict[str, float], links: int, wait_s: float) -> list[float]:
    """Seconds from each message's timestamp to its write applied, per link, once all are
    recorded (or `wait_s` passed); sorted."""
    query = (
        "SELECT booking_id, min(recorded_at) FROM sync_results WHERE booking_id = ANY(%s)"
        " AND outcome = 'applied' GROUP BY booking_id, link_id"
    )
    deadline = time.monotonic() + wait_s
    while True:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query, (list(sent),)).fetchall()
        if len(rows) >= len(sent) * links or time.monotonic() > deadline:
            return sorted(at.timestamp() - sent[booking] for booking, at in rows)
        time.sleep(1.0)


def retention_pass(bench: Bench, settings: Settings) -> tuple[list[Row], list[str]]:
    """p99 message latency without, then with, a retention pass over the 10,000,000
    results (run by this process, as the consumer's own loop would: the same code)."""
    bench.sandbox.configure(
        latency_s=0.05, quota_per_account_per_min=None, quota_per_project_per_min=None
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE repairs")  # the repair loop's backlog is measured above
    activities = [f"act_{n}" for n in range(10)]  # 5 links each
    metrics = Metrics()
    outcome: dict[str, object] = {}

    def prune() -> None:
        started = time.monotonic()
        try:
            done = asyncio.run(
                asyncio.wait_for(retention(settings, metrics).run_pass(), RETENTION_CAP_S)
            )
            outcome["pass"] = done
        except TimeoutError:
            outcome["pass"] = None
        outcome["seconds"] = time.monotonic() - started

    env = consumer_env(settings, **UNLIMITED, **NO_RETENTION)
    with consumers(1, env, "s6-retention") as running:
        warm = asyncio.run(_steady_once(settings, activities[0]))
        _latencies(settings.database_url, warm, 5, 60)
        print(f"   retention: {STEADY_S:.0f} s of steady inflow without a pass", flush=True)
        quiet = _latencies(
            settings.database_url, asyncio.run(_steady(settings, activities, "quiet")), 5, 60
        )
        pruning = threading.Thread(target=prune, name="retention pass")
        pruning.start()
        print(f"   retention: a pass, and {STEADY_S:.0f} s of steady inflow", flush=True)
        busy = _latencies(
            settings.database_url, asyncio.run(_steady(settings, activities, "busy")), 5, 60
        )
        results_gone = metrics.retention_pruned.labels("sync_results")._value.get()
        pruning.join(RETENTION_CAP_S + 30)
        alive = running[0].process.poll() is None
    done = outcome.get("pass")
    seconds = float(outcome.get("seconds", 0.0))  # type: ignore[arg-type]
    pruned = int(metrics.retention_pruned.labels("sync_results")._value.get())
    bookings = int(metrics.retention_pruned.labels("bookings")._value.get())
    ended = "finished" if done is not None else f"stopped at the {RETENTION_CAP_S:.0f} s cap"
    rows, lines = [], []
    for label, latencies in (("without a pass", quiet), ("during a retention pass", busy)):
        p50, p99 = percentiles(latencies) if latencies else (0.0, 0.0)
        rows.append(
            Row(
                f"6: steady inflow, {label}",
                "-",
                "calsync consume",
                len(latencies),
                STEADY_S,
                len(latencies) / STEADY_S,
                latency_p50_s=p50,
                latency_p99_s=p99,
                note=f"{STEADY_RATE:.0f} messages/s x 5 links; max {max(latencies or [0]):.2f} s",
            )
        )
    rows[-1].note += (
        f"; the pass removed {int(results_gone)} results while the inflow ran; in all "
        f"{pruned} results and {bookings} bookings in {seconds:.0f} s ({ended})"
    )
    if quiet and busy and alive:
        delta = (rows[1].latency_p99_s or 0.0) - (rows[0].latency_p99_s or 0.0)
        lines.append(
            f"6: retention pass: p99 {rows[1].latency_p99_s:.2f} s during it, "
            f"{rows[0].latency_p99_s:.2f} s without ({delta * 1000:+.0f} ms), target at most "
            f"{BLOCK_TARGET_S * 1000:.0f} ms more: {_verdict(delta <= BLOCK_TARGET_S)}"
        )
    else:
        lines.append("6: retention pass: the consumer did not record the inflow: MISSED")
    return rows, lines


async def _steady_once(settings: Settings, activity: str) -> dict[str, float]:
    """One message, so the consumer has joined and works before the clock starts."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        now = datetime.now(UTC)
        await producer.send_and_wait(
            settings.topic, _message("bk_warm", activity, now), key=b"bk_warm"
        )
    finally:
        await producer.stop()
    return {"bk_warm": now.timestamp()}


def scenario_6(bench: Bench, modes: list[str], scale: float = 1.0) -> tuple[list[Row], list[str]]:
    """Fill (`scale` < 1: a smaller history, to try the scenario itself quickly), then
    measure."""
    settings = bench.base.model_copy(
        update={
            "database_url": migrated_database(bench.pg, "bench_s6"),
            "topic": "bench.s6",
            "dlq_topic": "bench.s6.dlq",
            "group_id": "bench-s6",
        }
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, [settings.topic], 12))
    print("   filling: 1,000,000 bookings, 2,000 links, 1,000,000 repairs, 10,000,000 results")
    key = settings.token_key.get_secret_value() if settings.token_key else ""
    timings = fill(settings.database_url, key, scale)
    found = counts(settings.database_url)
    for n in range(ACCOUNTS):
        bench.sandbox.add_account(account_email(n), account_refresh(n))
    rows = [
        Row(
            "6: fill (generate_series)",
            "-",
            "PostgreSQL",
            sum(v for k, v in found.items() if k != "big_future"),
            timings["total"],
            0.0,
            note=", ".join(f"{k} {v:,}" for k, v in found.items())
            + "; "
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total"),
        )
    ]
    lines = [
        f"6: fill {timings['total']:.0f} s, target under {FILL_TARGET_S:.0f} s: "
        f"{_verdict(timings['total'] < FILL_TARGET_S)}"
    ]
    future = found["big_future"] or int(BIG_FUTURE * scale)
    for mode in modes:
        row, said = backfill(bench, settings, mode, future)
        rows.append(row)
        lines += said
    row, said = reconcile(bench, settings)
    rows.append(row)
    lines += said
    lines += repair_poll(settings)
    for mode in modes:
        row, said = repair_loop(bench, settings, mode)
        rows.append(row)
        lines += said
    more, said = retention_pass(bench, settings)
    return [*rows, *more], [*lines, *said]
