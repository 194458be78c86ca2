"""The naive baseline: what a first attempt looks like. One message at a time, one Google
call at a time, one transaction and one offset commit per message."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import httplib2
import psycopg
from aiokafka import AIOKafkaConsumer
from googleapiclient.discovery import build

from calsync_dev.sandbox import SandboxClient
from consumer.settings import Settings


@dataclass(frozen=True)
class NaiveResult:
    link_ops: int
    seconds: float


async def run_naive(
    settings: Settings, sandbox: SandboxClient, links: list[tuple[str, str]], messages: int
) -> NaiveResult:
    tokens = {email: sandbox.issue_access_token(email)[0] for _, email in links}
    http = httplib2.Http(timeout=15, ca_certs=settings.google_ca_bundle)
    service = build(
        "calendar",
        "v3",
        http=http,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": settings.calendar_api_endpoint},
    )
    conn = psycopg.connect(settings.database_url)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS naive_results (booking_id text, version int,"
        " link_id text, event_id text, recorded_at timestamptz DEFAULT now())"
    )
    conn.commit()
    consumer = AIOKafkaConsumer(
        settings.topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id="naive",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    await consumer.start()
    done, ops, started = 0, 0, 0.0
    try:
        while done < messages:
            record = await consumer.getone()
            if not started:
                started = time.perf_counter()
            booking = json.loads(record.value)["booking"]
            for link_id, email in links:
                event_id = "nv" + hashlib.sha1(f"{link_id}/{booking['id']}".encode()).hexdigest()
                body = {
                    "id": event_id,
                    "summary": booking["customer_name"],
                    "start": {"dateTime": booking["start"]},
                    "end": {"dateTime": booking["end"]},
                }
                request = (
                    service.events().insert(calendarId=email, body=body)
                    if booking["version"] == 1
                    else service.events().update(calendarId=email, eventId=event_id, body=body)
                )
                request.headers["authorization"] = f"Bearer {tokens[email]}"
                request.execute(http=http)
                conn.execute(
                    "INSERT INTO naive_results (booking_id, version, link_id, event_id)"
                    " VALUES (%s, %s, %s, %s)",
                    (booking["id"], booking["version"], link_id, event_id),
                )
                ops += 1
            conn.commit()
            await consumer.commit()
            done += 1
    finally:
        await consumer.stop()
        conn.close()
    return NaiveResult(ops, time.perf_counter() - started)
