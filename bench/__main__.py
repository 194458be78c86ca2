"""`make bench`: calendar-sync's consumer against a naive baseline, in one invocation.

Everything real: embedded PostgreSQL, the Tansu broker, the Google sandbox in its own
process (`calsync sandbox`), our consumer as users run it (`calsync consume`). The naive
baseline is written here: one message at a time, one Google call at a time, one transaction
and one offset commit per message.

Scenario 1 (unthrottled, 50 ms per Google call): 20,000 events over 2,000 bookings, 2 links
each. Prints one table and writes it as JSON (bench-results/latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaProducer

from bench.naive import run_naive
from consumer.crypto import TokenCipher
from consumer.db import migrate
from consumer.kafka import ensure_topics
from consumer.links import link_service
from consumer.sandbox import SandboxClient
from consumer.settings import Settings
from consumer.stack import free_port, start_broker, start_postgres, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "bench-results"
ACTIVITY = "act_bench"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"


@dataclass
class Row:
    scenario: str
    consumer: str
    link_ops: int
    seconds: float
    ops_per_s: float
    cpu_ms_per_op: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""


def event(booking: int, version: int) -> bytes:
    day = 1 + booking % 28
    return json.dumps({
        "schema_version": 1, "event_id": f"00000000-0000-4000-8000-{booking:06d}{version:06d}",
        "event_type": "booking.created" if version == 1 else "booking.updated",
        "occurred_at": "2026-04-01T12:00:00Z",
        "booking": {
            "id": f"bk_{booking}", "version": version, "confirmation_code": f"BK-{booking}",
            "status": "confirmed", "source": "web", "activity_id": ACTIVITY,
            "activity_name": "Kayak Tour", "customer_name": f"Customer {booking} v{version}",
            "location_name": "Lake Dock", "start": f"2026-05-{day:02d}T09:00:00Z",
            "end": f"2026-05-{day:02d}T11:00:00Z",
        },
    }).encode()


async def produce(bootstrap: str, topic: str, bookings: int, versions: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for version in range(1, versions + 1):
            for booking in range(bookings):
                await producer.send(topic, event(booking, version), key=f"bk_{booking}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def proc_stats(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MB of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if line.startswith("VmHWM:"))
    return cpu, peak / 1024


def results(database_url: str) -> tuple[int, float]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*), extract(epoch FROM max(recorded_at) -"
                           " min(recorded_at)) FROM sync_results").fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


async def links(settings: Settings, sandbox: SandboxClient) -> list[tuple[str, str]]:
    made = []
    async with link_service(settings) as service:
        for name in ("owner", "manager"):
            email = f"{name}@bench.example.com"
            refresh = f"1//bench-{name}"
            sandbox.add_account(email, refresh)
            made.append((await service.import_link(
                activity_id=ACTIVITY, account_email=email, refresh_token=refresh,
                access_token=None, expires_at=None, calendar_id=email), email))
    return made


def scenario_1(args: argparse.Namespace, settings: Settings, sandbox: SandboxClient,
               env: dict[str, str]) -> list[Row]:
    sandbox.configure(latency_s=0.05)
    asyncio.run(ensure_topics(settings.kafka_bootstrap, [settings.topic], 12))
    made = asyncio.run(links(settings, sandbox))
    print(f"   producing {args.bookings * args.versions} events "
          f"({args.bookings} bookings x {args.versions} versions)", flush=True)
    asyncio.run(produce(settings.kafka_bootstrap, settings.topic, args.bookings, args.versions))
    expected = args.bookings * args.versions * len(made)

    print(f"   calsync consume: {expected} link-operations", flush=True)
    command = [sys.executable, "-m", "consumer.cli", "consume"]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", str(STATE / "consume.prof"),
                   "-m", "consumer.cli", "consume"]
    log = open(STATE / "consume.log", "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                               cwd=ROOT)
    try:
        deadline = time.monotonic() + args.timeout
        while (done := results(settings.database_url)[0]) < expected:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the consumer stopped or timed out at {done}/{expected}; "
                                 f"see {STATE / 'consume.log'}")
            time.sleep(0.5)
        cpu, rss = proc_stats(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    count, span = results(settings.database_url)
    ours = Row("1: unthrottled, 50 ms/call", "calsync consume", count, span, count / span,
               cpu * 1000 / count, rss, f"{args.bookings} bookings x {args.versions} versions"
               " x 2 links")

    print(f"   naive baseline: {args.naive_messages} messages", flush=True)
    naive = asyncio.run(run_naive(settings, sandbox, made, args.naive_messages))
    naive_row = Row("1: unthrottled, 50 ms/call", "naive baseline", naive.link_ops,
                    naive.seconds, naive.link_ops / naive.seconds, note=(
                        f"first {args.naive_messages} messages"))
    return [ours, naive_row]


def render(rows: list[Row], machine: str) -> str:
    lines = [f"machine: {machine}", "",
             "| scenario | consumer | link-ops | seconds | ops/s | CPU ms/op | peak RSS MB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cpu = f"{r.cpu_ms_per_op:.2f}" if r.cpu_ms_per_op is not None else "-"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        lines.append(f"| {r.scenario} | {r.consumer} | {r.link_ops} | {r.seconds:.1f} | "
                     f"{r.ops_per_s:.1f} | {cpu} | {rss} |")
    ours, naive = rows[0], rows[1]
    ratio = ours.ops_per_s / naive.ops_per_s
    lines += ["", f"ratio (ours / naive): {ratio:.1f}x (target: at least 40x) "
              f"{'MET' if ratio >= 40 else 'MISSED'}",
              f"CPU per link-operation: {ours.cpu_ms_per_op:.2f} ms (target: under 1.5 ms) "
              f"{'MET' if (ours.cpu_ms_per_op or 99) < 1.5 else 'MISSED'}",
              f"peak RSS: {ours.peak_rss_mb:.0f} MB (target: under 300 MB) "
              f"{'MET' if (ours.peak_rss_mb or 999) < 300 else 'MISSED'}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--bookings", type=int, default=2000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--naive-messages", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the consumer into bench-results/consume.prof")
    args = parser.parse_args()
    STATE.mkdir(exist_ok=True)
    pg = start_postgres(STATE / "postgres")
    with psycopg.connect(pg.uri, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS calsync_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE calsync_bench")
    database_url = pg.uri_for("calsync_bench")
    migrate(database_url)
    broker = start_broker(log_path=STATE / "tansu.log")
    port = free_port()
    ca_file = STATE / "sandbox-ca.pem"
    ca_file.unlink(missing_ok=True)  # the sandbox writes a fresh one once it listens
    sandbox_process = subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "sandbox", "--port", str(port), "--ca-file",
         str(ca_file)], stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for_port(port, 30)
        deadline = time.monotonic() + 30
        while not ca_file.exists() or not ca_file.stat().st_size:
            if time.monotonic() > deadline:
                raise SystemExit("the sandbox wrote no CA file")
            time.sleep(0.05)
        sandbox = SandboxClient(f"https://127.0.0.1:{port}/", ca_file)
        sandbox.configure(clients={CLIENT_ID: CLIENT_SECRET})
        settings = Settings(
            database_url=database_url, kafka_bootstrap=broker.bootstrap,
            topic="bench.bookings", dlq_topic="bench.bookings.dlq", group_id="bench",
            google_api_url=sandbox.api_url, google_token_url=sandbox.token_url,
            google_client_id=CLIENT_ID, google_client_secret=CLIENT_SECRET,
            google_ca_bundle=str(ca_file), token_key=TokenCipher.generate_key())
        env = {**os.environ, "CALSYNC_DATABASE_URL": database_url,
               "CALSYNC_KAFKA_BOOTSTRAP": broker.bootstrap, "CALSYNC_TOPIC": settings.topic,
               "CALSYNC_DLQ_TOPIC": settings.dlq_topic, "CALSYNC_GROUP_ID": "bench",
               "CALSYNC_GOOGLE_API_URL": sandbox.api_url,
               "CALSYNC_GOOGLE_TOKEN_URL": sandbox.token_url,
               "CALSYNC_GOOGLE_CLIENT_ID": CLIENT_ID,
               "CALSYNC_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
               "CALSYNC_GOOGLE_CA_BUNDLE": str(ca_file),
               "CALSYNC_TOKEN_KEY": settings.token_key.get_secret_value()  # type: ignore[union-attr]
               , "CALSYNC_METRICS_PORT": "0", "CALSYNC_LOG_FORMAT": "json",
               "CALSYNC_LOG_LEVEL": "WARNING"}
        print("== Scenario 1: unthrottled sandbox, 50 ms per call", flush=True)
        rows = scenario_1(args, settings, sandbox, env)
    finally:
        sandbox_process.terminate()
        sandbox_process.wait(30)
        broker.stop()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, {platform.system()} {platform.release()}")
    table = render(rows, machine)
    print("\n" + table)
    (STATE / "latest.json").write_text(json.dumps(
        {"machine": machine, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "rows": [asdict(r) for r in rows]}, indent=2))
    (STATE / "latest.md").write_text(table + "\n")
    print(f"\nwritten: {STATE / 'latest.json'}, {STATE / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
