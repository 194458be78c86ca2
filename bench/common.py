"""What the bench's scenarios share: events, producing, links, consumer processes, /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from calsync_dev.events import booking_event
from calsync_dev.sandbox import SandboxClient
from calsync_dev.stack import EmbeddedPostgres, free_port, fresh_database
from consumer.adapters.postgres.migrations import migrate
from consumer.bootstrap import link_service
from consumer.settings import STACK_SETTINGS, Settings, settings_env

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "bench-results"


@dataclass
class Row:
    scenario: str
    mode: str  # how the sandbox served a batch: sequential, parallel ("-": no batches)
    consumer: str
    link_ops: int
    seconds: float
    ops_per_s: float
    cpu_ms_per_op: float | None = None
    peak_rss_mb: float | None = None
    quota_share: float | None = None  # achieved rate / the project's quota
    rejected_share: float | None = None  # calls refused with 403/429 for rate limits
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    limit: int | None = None  # the controller's requests-in-flight limit at the end
    calls_per_request: float | None = None  # mean calls per HTTP request to Google
    note: str = ""


@dataclass
class Consumer:
    """`calsync consume` in its own process, and where its /metrics answer."""

    process: subprocess.Popen[bytes]
    metrics_port: int
    flow: dict[str, float] = field(default_factory=dict)

    def scrape(self) -> dict[str, float]:
        """The Google flow, from /metrics: the limit, and calls per request so far."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:  # labelled series added up
                if not sample.labels or sample.name.endswith(("_sum", "_count")):
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
        answered = "calsync_google_request_duration_seconds"
        self.flow = {
            "limit": values.get("calsync_google_requests_limit", 0.0),
            "calls": values.get("calsync_google_batch_calls_sum", 0.0),
            "requests": values.get("calsync_google_batch_calls_count", 0.0),
            "answer_s": values.get(f"{answered}_sum", 0.0),
            "answers": values.get(f"{answered}_count", 0.0),
        }
        return self.flow


@dataclass
class Flow:
    limit: int | None  # the largest limit of requests in flight
    calls_per_request: float | None
    answer_s: float | None  # mean seconds from a request's start to a call's answer

    @property
    def note(self) -> str:
        return "" if self.answer_s is None else f"; calls answered in {self.answer_s:.2f} s"


def flow_of(running: list[Consumer]) -> Flow:
    """Scrape every consumer's Google flow."""
    limits: list[int] = []
    total: dict[str, float] = {}
    for consumer in running:
        try:
            flow = consumer.scrape()
        except OSError:
            continue
        limits.append(int(flow["limit"]))
        for key, value in flow.items():
            total[key] = total.get(key, 0.0) + value
    calls, requests = total.get("calls", 0.0), total.get("requests", 0.0)
    answers = total.get("answers", 0.0)
    return Flow(
        max(limits) if limits else None,
        calls / requests if requests else None,
        total.get("answer_s", 0.0) / answers if answers else None,
    )


def event(
    booking: int, version: int, activity: str, occurred_at: str = "2026-04-01T12:00:00Z"
) -> bytes:
    """Booking `bk_<booking>` at `version`, as bytes on the topic (ids made from the numbers:
    the same run produces the same events)."""
    day = 1 + booking % 28
    return json.dumps(
        booking_event(
            f"bk_{booking}",
            version,
            "booking.created" if version == 1 else "booking.updated",
            activity,
            event_id=f"00000000-0000-4000-8000-{booking:06d}{version:06d}",
            occurred_at=occurred_at,
            customer_name=f"Customer {booking} v{version}",
            start=f"2026-05-{day:02d}T09:00:00Z",
            end=f"2026-05-{day:02d}T11:00:00Z",
        )
    ).encode()


async def produce(
    bootstrap: str, topic: str, bookings: int, versions: int, activities: list[str], first: int = 0
) -> None:
    """Every booking's versions in order; bookings (numbered from `first`) spread over the
    activities."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for version in range(1, versions + 1):
            for booking in range(first, first + bookings):
                await producer.send(
                    topic,
                    event(booking, version, activities[booking % len(activities)]),
                    key=f"bk_{booking}".encode(),
                )
        await producer.flush()
    finally:
        await producer.stop()


def migrated_database(pg: EmbeddedPostgres, name: str) -> str:
    """A fresh database of this name (any older one dropped), migrated."""
    url = fresh_database(pg, name, replace=True)
    migrate(url)
    return url


async def make_links(
    settings: Settings, sandbox: SandboxClient, activities: list[str], per_activity: int, tag: str
) -> list[tuple[str, str]]:
    """`per_activity` links on each activity, each of its own Google account."""
    made = []
    async with link_service(settings) as service:
        for activity in activities:
            for n in range(per_activity):
                email = f"{tag}-{activity}-{n}@bench.example.com"
                refresh = f"1//bench-{tag}-{activity}-{n}"
                sandbox.add_account(email, refresh)
                made.append(
                    (
                        await service.import_link(
                            activity_id=activity,
                            account_email=email,
                            refresh_token=refresh,
                            access_token=None,
                            expires_at=None,
                            calendar_id=email,
                        ),
                        email,
                    )
                )
    return made


def proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MB of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, peak / 1024


def result_count(database_url: str) -> tuple[int, float]:
    """Link-operations applied (Google writes recorded), and the seconds from the first to
    the last. Work deferred to the repair loop counts when the repair applies it."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(recorded_at) -"
            " min(recorded_at)) FROM sync_results"
            " WHERE outcome = 'applied'"
        ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


def deferred_count(database_url: str) -> int:
    """Results deferred to the repair loop (an account's queue too long, a refusal)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sync_results WHERE outcome = 'deferred'"
        ).fetchone()
    return int(row[0]) if row else 0


def pairs_done(database_url: str, version: int) -> int:
    """(link, booking) pairs whose calendar holds at least `version`, none waiting for a
    repair: what "everything applied" means once work can be deferred."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM link_bookings lb WHERE lb.applied_version >= %s AND NOT"
            " EXISTS (SELECT 1 FROM repairs r WHERE r.link_id = lb.link_id"
            " AND r.booking_id = lb.booking_id)",
            (version,),
        ).fetchone()
    return int(row[0]) if row else 0


def consumer_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **settings_env(settings, STACK_SETTINGS),
        "CALSYNC_METRICS_PORT": "0",
        "CALSYNC_LOG_FORMAT": "json",
        "CALSYNC_LOG_LEVEL": "WARNING",
        **extra,
    }


@contextmanager
def consumers(
    count: int, env: dict[str, str], name: str, profile: bool = False
) -> Iterator[list[Consumer]]:
    """`calsync consume`, `count` processes, as users run it; SIGTERM at the end."""
    running = []
    for n in range(count):
        command = [sys.executable, "-m", "consumer", "consume"]
        log = open(STATE / f"{name}-{n}.log", "wb")
        port = free_port()
        process = subprocess.Popen(
            command,
            env={**env, "CALSYNC_METRICS_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        running.append(Consumer(process, port))
        if profile:  # py-spy samples every thread (cProfile would see only the event loop's)
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(process.pid),
                    "--duration",
                    "40",
                    "--rate",
                    "100",
                    "--nonblocking",
                    "--gil",
                    "--format",
                    "raw",
                    "-o",
                    str(STATE / f"{name}-{n}.pyspy.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    try:
        yield running
    finally:
        for consumer in running:
            if consumer.process.poll() is None:
                consumer.process.send_signal(signal.SIGTERM)
        for consumer in running:
            try:
                consumer.process.wait(60)
            except subprocess.TimeoutExpired:
                consumer.process.kill()


def wait_for_results(
    database_url: str,
    pairs: int,
    running: list[Consumer],
    timeout_s: float,
    name: str,
    version: int = 1,
) -> None:
    """Until `pairs` (link, booking) pairs hold `version` (or newer)."""
    deadline = time.monotonic() + timeout_s
    while (done := pairs_done(database_url, version)) < pairs:
        if any(c.process.poll() is not None for c in running) or time.monotonic() > deadline:
            raise SystemExit(
                f"the consumer stopped or timed out at {done}/{pairs}; see {STATE / name}-*.log"
            )
        time.sleep(0.5)
