"""The bench's scenarios. Each gets its own database, topic and consumer group."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from aiokafka import AIOKafkaProducer

from bench.common import (
    STATE,
    Consumer,
    Row,
    consumer_env,
    consumers,
    deferred_count,
    event,
    flow_of,
    make_links,
    migrated_database,
    proc_stats,
    produce,
    result_count,
    wait_for_results,
)
from bench.naive import run_naive
from calsync_dev.sandbox import SandboxClient
from calsync_dev.stack import EmbeddedPostgres
from consumer.adapters.kafka import ensure_topics
from consumer.settings import Settings

PARTITIONS = 12
UNLIMITED = {"CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN": "0", "CALSYNC_QUOTA_PER_PROJECT_PER_MIN": "0"}


@dataclass
class Bench:
    pg: EmbeddedPostgres
    sandbox: SandboxClient
    base: Settings  # broker, sandbox and client credentials
    timeout_s: float

    async def prepare(
        self, name: str, accounts: int, tag: str
    ) -> tuple[Settings, list[str], list[tuple[str, str]]]:
        """A database, a topic and `accounts` links, two to an activity."""
        settings = self.base.model_copy(
            update={
                "database_url": migrated_database(self.pg, f"bench_{name}"),
                "topic": f"bench.{name}",
                "dlq_topic": f"bench.{name}.dlq",
                "group_id": f"bench-{name}",
            }
        )
        await ensure_topics(settings.kafka_bootstrap, [settings.topic], PARTITIONS)
        activities = [f"act_{tag}_{n}" for n in range(max(1, accounts // 2))]
        made = await make_links(settings, self.sandbox, activities, 2, tag)
        return settings, activities, made


QUOTA_PER_MIN = 3000  # scenario 2 and 3: the project's quota
ACCOUNT_QUOTA_PER_MIN = 600
QUOTA_ACCOUNTS = 20
LATENCY = {"latency_median_s": 0.3, "latency_p99_s": 1.0}  # what Calendar writes take
QUOTA_ENV = {
    "CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN": str(ACCOUNT_QUOTA_PER_MIN),
    "CALSYNC_QUOTA_PER_PROJECT_PER_MIN": str(QUOTA_PER_MIN),
}


def scenario_1(bench: Bench, mode: str, bookings: int, versions: int, profile: bool) -> Row:
    """Unthrottled, 50 ms a call: our consumer's throughput, CPU and memory."""
    bench.sandbox.configure(
        batch_mode=mode,
        latency_s=0.05,
        quota_per_account_per_min=None,
        quota_per_project_per_min=None,
    )
    name = f"s1{mode[0]}"
    settings, activities, made = asyncio.run(bench.prepare(name, 2, name))
    total = bookings * versions
    print(f"   producing {total} events ({bookings} bookings x {versions} versions)", flush=True)
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic, bookings, versions, activities))
    expected = total * len(made)
    print(f"   calsync consume: {expected} link-operations", flush=True)
    with consumers(1, consumer_env(settings, **UNLIMITED), name, profile) as running:
        wait_for_results(
            settings.database_url,
            bookings * len(made),
            running,
            bench.timeout_s,
            name,
            version=versions,
        )
        cpu, rss = proc_stats(running[0].process.pid)
        flow = flow_of(running)
    count, span = result_count(settings.database_url)
    return Row(
        "1: unthrottled, 50 ms/call",
        mode,
        "calsync consume",
        count,
        span,
        count / span,
        cpu * 1000 / count,
        rss,
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{bookings} bookings x "
        f"{versions} versions x 2 links; CPU includes start-up{flow.note}",
    )


def scenario_1_naive(bench: Bench, messages: int) -> Row:
    """The naive consumer: one call at a time, never a batch (the batch mode is moot)."""
    bench.sandbox.configure(
        latency_s=0.05, quota_per_account_per_min=None, quota_per_project_per_min=None
    )
    settings, activities, made = asyncio.run(bench.prepare("s1n", 2, "s1n"))
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic, messages, 1, activities))
    print(f"   naive baseline: {messages} messages", flush=True)
    naive = asyncio.run(run_naive(settings, bench.sandbox, made, messages))
    return Row(
        "1: unthrottled, 50 ms/call",
        "-",
        "naive baseline",
        naive.link_ops,
        naive.seconds,
        naive.link_ops / naive.seconds,
        note=f"{messages} messages, one call at a time: no batches, either mode",
    )


def scenario_1_backlog(bench: Bench, mode: str, backlog: int, seconds: float) -> Row:
    """Peak RSS while a 100,000-message backlog waits: memory follows max_in_flight."""
    bench.sandbox.configure(
        batch_mode=mode,
        latency_s=0.05,
        quota_per_account_per_min=None,
        quota_per_project_per_min=None,
    )
    name = f"s1b{mode[0]}"
    settings, activities, _ = asyncio.run(bench.prepare(name, 2, name))
    print(f"   producing a backlog of {backlog} events", flush=True)
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic, backlog, 1, activities))
    with consumers(1, consumer_env(settings, **UNLIMITED), name) as running:
        time.sleep(seconds)
        cpu, rss = proc_stats(running[0].process.pid)
        flow = flow_of(running)
    count, span = result_count(settings.database_url)
    return Row(
        "1: backlog of 100,000",
        mode,
        "calsync consume",
        count,
        span,
        count / span if span else 0.0,
        cpu * 1000 / max(count, 1),
        rss,
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{backlog} messages waiting; ran {seconds:.0f} s{flow.note}",
    )


def scenario_2(bench: Bench, mode: str, processes: int, messages: int) -> Row:
    """At Google's quota: 3,000/min for the project over 20 accounts (600/min each), Google
    taking 300 ms a call (median; 1 s at the 99th percentile)."""
    bench.sandbox.configure(
        batch_mode=mode,
        quota_per_account_per_min=ACCOUNT_QUOTA_PER_MIN,
        quota_per_project_per_min=QUOTA_PER_MIN,
        **LATENCY,
    )
    name = f"s2{mode[0]}p{processes}"
    settings, activities, made = asyncio.run(bench.prepare(name, QUOTA_ACCOUNTS, name))
    print(
        f"   {processes} process(es): {messages} messages, {messages * 2} link-operations "
        f"over {len(made)} accounts",
        flush=True,
    )
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic, messages, 1, activities))
    bench.sandbox.reset_quota()
    with consumers(processes, consumer_env(settings, **QUOTA_ENV), name) as running:
        wait_for_results(settings.database_url, messages * 2, running, bench.timeout_s, name)
        flow = flow_of(running)
    deferred = deferred_count(settings.database_url)
    report = bench.sandbox.quota()
    project = report["*project*"]
    calls, refused, span = project["calls"], project["refused"], project["span_s"]
    refused += sum(v["refused"] for k, v in report.items() if k != "*project*")
    rate = (calls - 1) / span if span else 0.0
    count, seconds = result_count(settings.database_url)
    return Row(
        f"2: quota 3,000/min, {processes} process{'es' if processes > 1 else ''}",
        mode,
        "calsync consume",
        count,
        seconds,
        count / seconds if seconds else 0.0,
        quota_share=rate / (QUOTA_PER_MIN / 60),
        rejected_share=refused / max(calls + refused, 1),
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{calls} calls in {span:.0f} s; most in one minute "
        f"{project['max_per_minute']}; {refused} refused; {deferred} results deferred "
        f"to the repair loop first{flow.note}",
    )


def scenario_3(bench: Bench, mode: str, seconds: float) -> Row:
    """A steady inflow at 70% of the quota: latency from message to recorded result."""
    bench.sandbox.configure(
        batch_mode=mode,
        quota_per_account_per_min=ACCOUNT_QUOTA_PER_MIN,
        quota_per_project_per_min=QUOTA_PER_MIN,
        **LATENCY,
    )
    name = f"s3{mode[0]}"
    settings, activities, _ = asyncio.run(bench.prepare(name, QUOTA_ACCOUNTS, name))
    bench.sandbox.reset_quota()
    rate = 0.7 * QUOTA_PER_MIN / 60 / 2  # messages a second, 2 links each
    with consumers(1, consumer_env(settings, **QUOTA_ENV), name) as running:
        asyncio.run(_warm_up(settings, activities[0]))  # joined and working before the clock
        wait_for_results(settings.database_url, 2, running, bench.timeout_s, name)
        print(f"   steady inflow: {rate:.1f} messages/s for {seconds:.0f} s", flush=True)
        sent = asyncio.run(_steady(settings, activities, rate, seconds))
        wait_for_results(settings.database_url, 2 + len(sent) * 2, running, bench.timeout_s, name)
        flow = flow_of(running)
    latencies = write_latencies(settings.database_url, sent)
    deferred = deferred_count(settings.database_url)
    p50, p99 = percentiles(latencies)
    report = bench.sandbox.quota()["*project*"]
    return Row(
        "3: steady 70% of quota",
        mode,
        "calsync consume",
        len(latencies),
        seconds,
        len(latencies) / seconds,
        latency_p50_s=p50,
        latency_p99_s=p99,
        rejected_share=report["refused"] / max(report["calls"] + report["refused"], 1),
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{len(sent)} messages at {rate:.1f}/s; from the message timestamp to "
        f"the write applied recorded; {deferred} results deferred first{flow.note}",
    )


REFUSED_FOR_S = 600.0  # scenario 4: how long Google refuses the troubled accounts
BACKLOG_PER_WINDOW = 10  # scenario 4: the refused backlog, in CALSYNC_MAX_IN_FLIGHT windows


def scenario_4(bench: Bench, mode: str, seconds: float, rate: float) -> Row:
    """One activity's accounts refused by Google for 10 minutes (one rate limited, 429
    rateLimitExceeded; one out of quota, 403 quotaExceeded), a backlog of 10 x
    CALSYNC_MAX_IN_FLIGHT of their messages ahead, and more of them arriving all along: the
    other accounts' bookings, arriving at the same time, must still reach their calendars
    quickly (latency from the message timestamp to the write applied)."""
    bench.sandbox.configure(
        batch_mode=mode,
        quota_per_account_per_min=ACCOUNT_QUOTA_PER_MIN,
        quota_per_project_per_min=QUOTA_PER_MIN,
        **LATENCY,
    )
    name = f"s4{mode[0]}"
    settings, activities, made = asyncio.run(bench.prepare(name, 8, name))
    troubled, others = activities[0], activities[1:]
    refused = [email for _, email in made[:2]]  # the troubled activity's two accounts
    backlog = BACKLOG_PER_WINDOW * settings.max_in_flight
    print(
        f"   {backlog} messages of the refused accounts waiting ({BACKLOG_PER_WINDOW} x "
        f"CALSYNC_MAX_IN_FLIGHT {settings.max_in_flight})",
        flush=True,
    )
    asyncio.run(
        produce(
            settings.kafka_bootstrap, settings.topic, backlog, 1, [troubled], first=BACKLOG_FIRST
        )
    )
    bench.sandbox.clear_faults()
    bench.sandbox.add_fault(
        429, account=refused[0], reason="rateLimitExceeded", duration_s=REFUSED_FOR_S
    )
    bench.sandbox.add_fault(
        403, account=refused[1], reason="quotaExceeded", duration_s=REFUSED_FOR_S
    )
    bench.sandbox.reset_quota()
    backlog_ids = [f"bk_{BACKLOG_FIRST + n}" for n in range(backlog)]
    with consumers(1, consumer_env(settings, **QUOTA_ENV), name) as running:
        started = time.monotonic()
        wait_for_outcomes(
            settings.database_url,
            backlog_ids,
            len(refused),
            running,
            bench.timeout_s,
            name,
            share=0.99,
        )
        most_s = time.monotonic() - started
        wait_for_outcomes(
            settings.database_url, backlog_ids, len(refused), running, bench.timeout_s, name
        )
        drained_s = time.monotonic() - started
        print(
            f"   99% of the backlog left the window in {most_s:.0f} s, all of it in "
            f"{drained_s:.0f} s; now "
            f"{rate:.1f} messages/s of the other accounts' bookings and as many of the "
            f"refused ones', for {seconds:.0f} s",
            flush=True,
        )
        sent = asyncio.run(_steady(settings, others, rate, seconds, also=(troubled, STREAM_FIRST)))
        wait_for_results(settings.database_url, len(sent) * 2, running, bench.timeout_s, name)
        flow = flow_of(running)
    latencies = write_latencies(settings.database_url, sent)
    with psycopg.connect(settings.database_url) as conn:
        waiting = conn.execute("SELECT count(*) FROM repairs").fetchone()
    if len(latencies) < len(sent) * 2:
        raise SystemExit(f"scenario 4: {len(latencies)} of {len(sent) * 2} writes applied")
    p50, p99 = percentiles(latencies)
    asked = [c for c in bench.sandbox.calls(detail=True)["calls"] if c["account"] in refused]
    refusals = sum(1 for c in asked if c["status"] in (403, 429))
    return Row(
        "4: 2 accounts refused 10 min",
        mode,
        "calsync consume",
        len(latencies),
        seconds,
        len(latencies) / seconds,
        latency_p50_s=p50,
        latency_p99_s=p99,
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{backlog} messages of the refused accounts ahead (both links refused: "
        f"429 rateLimitExceeded and 403 quotaExceeded), then {len(sent)} messages of 6 "
        f"other accounts at {rate:.1f}/s with as many refused ones between them; "
        f"latency of the others' writes from the message timestamp; 99% of the backlog "
        f"left the window (deferred, or failed with a repair owed) in {most_s:.0f} s, "
        f"all of it in {drained_s:.0f} s (the last: those already waiting for the "
        f"rate-limited account's slot when Google began refusing, two at a time "
        f"retrying within CALSYNC_RETRY_BUDGET_S); "
        f"{waiting[0] if waiting else 0} repairs waiting at the end; Google asked "
        f"{len(asked)} times for the refused accounts, "
        f"{refusals} refused{flow.note}",
    )


FAILING_FOR_S = 600.0  # scenario 5: how long Google answers the failing account 503


def scenario_5(bench: Bench, mode: str, seconds: float, rate: float) -> Row:
    """One account whose calls Google answers 503 for 10 minutes, a backlog of 10 x
    CALSYNC_MAX_IN_FLIGHT of its messages ahead, and more of them arriving all along: the
    other accounts' bookings, arriving at the same time, must still reach their calendars
    quickly (latency from the message timestamp to the write applied). The failing account
    is alone on its activity: the backlog is its own."""
    bench.sandbox.configure(
        batch_mode=mode,
        quota_per_account_per_min=ACCOUNT_QUOTA_PER_MIN,
        quota_per_project_per_min=QUOTA_PER_MIN,
        **LATENCY,
    )
    name = f"s5{mode[0]}"
    settings, others, _ = asyncio.run(bench.prepare(name, 6, name))
    failing_activity = f"act_{name}_failing"
    failing = asyncio.run(make_links(settings, bench.sandbox, [failing_activity], 1, name))
    account = failing[0][1]
    backlog = BACKLOG_PER_WINDOW * settings.max_in_flight
    print(
        f"   {backlog} messages of the failing account waiting ({BACKLOG_PER_WINDOW} x "
        f"CALSYNC_MAX_IN_FLIGHT {settings.max_in_flight})",
        flush=True,
    )
    asyncio.run(
        produce(
            settings.kafka_bootstrap,
            settings.topic,
            backlog,
            1,
            [failing_activity],
            first=BACKLOG_FIRST,
        )
    )
    bench.sandbox.clear_faults()
    bench.sandbox.add_fault(503, account=account, duration_s=FAILING_FOR_S)
    bench.sandbox.reset_quota()
    since = bench.sandbox.calls()["now"]
    backlog_ids = [f"bk_{BACKLOG_FIRST + n}" for n in range(backlog)]
    with consumers(1, consumer_env(settings, **QUOTA_ENV), name) as running:
        started = time.monotonic()
        wait_for_outcomes(
            settings.database_url, backlog_ids, 1, running, bench.timeout_s, name, share=0.99
        )
        most_s = time.monotonic() - started
        wait_for_outcomes(settings.database_url, backlog_ids, 1, running, bench.timeout_s, name)
        drained_s = time.monotonic() - started
        print(
            f"   99% of the backlog left the window in {most_s:.0f} s, all of it in "
            f"{drained_s:.0f} s; now {rate:.1f} messages/s of the other accounts' bookings "
            f"and as many of the failing one's, for {seconds:.0f} s",
            flush=True,
        )
        sent = asyncio.run(
            _steady(settings, others, rate, seconds, also=(failing_activity, STREAM_FIRST))
        )
        wait_for_results(settings.database_url, len(sent) * 2, running, bench.timeout_s, name)
        flow = flow_of(running)
    latencies = write_latencies(settings.database_url, sent)
    with psycopg.connect(settings.database_url) as conn:
        waiting = conn.execute("SELECT count(*) FROM repairs").fetchone()
        rows = conn.execute(
            "SELECT outcome || ' ' || reason, count(*) FROM sync_results"
            " WHERE booking_id = ANY(%s) AND source = 'event' GROUP BY 1",
            (backlog_ids,),
        ).fetchall()
    by_outcome: dict[str, int] = {str(what): int(n) for what, n in rows}
    if len(latencies) < len(sent) * 2:
        raise SystemExit(f"scenario 5: {len(latencies)} of {len(sent) * 2} writes applied")
    p50, p99 = percentiles(latencies)
    asked = [
        c for c in bench.sandbox.calls(since=since, detail=True)["calls"] if c["account"] == account
    ]
    outcomes = ", ".join(f"{n} {what}" for what, n in sorted(by_outcome.items()))
    return Row(
        "5: 1 account failing (503) 10 min",
        mode,
        "calsync consume",
        len(latencies),
        seconds,
        len(latencies) / seconds,
        latency_p50_s=p50,
        latency_p99_s=p99,
        limit=flow.limit,
        calls_per_request=flow.calls_per_request,
        note=f"{backlog} messages of the failing account ahead (503 to every call), then "
        f"{len(sent)} messages of 6 other accounts at {rate:.1f}/s with as many failing "
        f"ones between them; latency of the others' writes from the message timestamp; 99% "
        f"of the backlog left the window in {most_s:.0f} s, all of it in {drained_s:.0f} s "
        f"(the backlog's results: {outcomes}); {waiting[0] if waiting else 0} repairs "
        f"waiting at the end; Google asked {len(asked)} times for the failing account "
        f"(repairs included){flow.note}",
    )


def write_latencies(database_url: str, sent: dict[str, float]) -> list[float]:
    """Seconds from each sent booking's message timestamp to its first write applied, per
    link; sorted."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT booking_id, min(recorded_at) FROM sync_results WHERE"
            " outcome = 'applied' GROUP BY booking_id, link_id"
        ).fetchall()
    return sorted(
        recorded.timestamp() - sent[booking] for booking, recorded in rows if booking in sent
    )


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile of sorted latencies."""
    return statistics.median(latencies), latencies[
        min(len(latencies) - 1, int(len(latencies) * 0.99))
    ]


BACKLOG_FIRST, STREAM_FIRST = 100_000, 500_000  # booking numbers of the refused messages


def wait_for_outcomes(
    database_url: str,
    booking_ids: list[str],
    links: int,
    running: list[Consumer],
    timeout_s: float,
    name: str,
    share: float = 1.0,
) -> None:
    """Until every one (or `share`) of these bookings has a result on each of its `links`
    links (applied, deferred to the repair loop, or failed with its repair owed): it has left
    the window."""
    deadline = time.monotonic() + timeout_s
    wanted = int(len(booking_ids) * links * share)
    while True:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT count(DISTINCT (booking_id, link_id)) FROM sync_results"
                " WHERE booking_id = ANY(%s)",
                (booking_ids,),
            ).fetchone()
        done = int(row[0]) if row else 0
        if done >= wanted:
            return
        if any(c.process.poll() is not None for c in running) or time.monotonic() > deadline:
            raise SystemExit(
                f"the consumer stopped or timed out at {done}/{wanted}; see {STATE / name}-*.log"
            )
        time.sleep(0.5)


async def _warm_up(settings: Settings, activity: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, event(999_999, 1, activity), key=b"bk_999999")
    finally:
        await producer.stop()


async def _steady(
    settings: Settings,
    activities: list[str],
    rate: float,
    seconds: float,
    also: tuple[str, int] | None = None,
) -> dict[str, float]:
    """Produce at `rate` a second, evenly; answers each booking's message timestamp. `also`
    (an activity, a first booking number): one more message of it after each, not timed."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=1)
    await producer.start()
    sent: dict[str, float] = {}
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            value = event(
                n,
                1,
                activities[n % len(activities)],
                occurred_at=now.isoformat().replace("+00:00", "Z"),
            )
            stamp_ms = int(now.timestamp() * 1000)  # the message's timestamp: the clock starts
            sent[f"bk_{n}"] = stamp_ms / 1000
            await producer.send(
                settings.topic, value, key=f"bk_{n}".encode(), timestamp_ms=stamp_ms
            )
            if also is not None:
                activity, first = also
                await producer.send(
                    settings.topic, event(first + n, 1, activity), key=f"bk_{first + n}".encode()
                )
        await producer.flush()
    finally:
        await producer.stop()
    return sent


__all__ = [
    "STATE",
    "Bench",
    "scenario_1",
    "scenario_1_backlog",
    "scenario_1_naive",
    "scenario_2",
    "scenario_3",
    "scenario_4",
    "scenario_5",
]
