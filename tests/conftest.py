"""Session-wide real components: a Tansu broker, PostgreSQL, and the Google sandbox.

Each test gets its own database (copied from a migrated template), its own topics and
consumer group, and its own sandbox accounts, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from psycopg.rows import dict_row

from consumer import links
from consumer.app import consume
from consumer.crypto import TokenCipher
from consumer.db import migrate
from consumer.kafka import ensure_topics
from consumer.sandbox import SandboxClient, start_in_thread
from consumer.settings import Settings
from consumer.stack import (
    EmbeddedBroker,
    EmbeddedPostgres,
    free_port,
    start_broker,
    start_postgres,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "calsync_template"
CLIENT_ID, CLIENT_SECRET = "calsync-test-client", "test-client-secret"
TOKEN_KEY = TokenCipher.generate_key()
ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
# Tansu answers a first JoinGroup after half the session timeout: a short one makes every
# consumer start 3.5 s sooner (heartbeats then come every second).
SESSION_TIMEOUT_S = 3.0


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedPostgres:
    pg = start_postgres(tmp_path_factory.mktemp("postgres"))
    migrate(pg.create_database(TEMPLATE_DB))
    return pg


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    embedded = start_broker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    yield embedded
    embedded.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxClient]:
    server = start_in_thread()
    client = SandboxClient(server.url, server.ca_file)
    client.configure(clients={CLIENT_ID: CLIENT_SECRET})
    yield client
    server.shutdown()


def booking_event(booking_id: str = "bk_1", version: int = 1,
                  event_type: str = "booking.created", activity_id: str = "act_1",
                  **booking: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": booking_id, "version": version, "confirmation_code": f"BK-{booking_id}",
        "status": "confirmed", "source": "web", "activity_id": activity_id,
        "activity_name": "Kayak Tour", "customer_name": "Jane Smith",
        "location_name": "Lake Dock", "start": "2026-04-15T09:00:00Z",
        "end": "2026-04-15T11:00:00Z",
    }
    data.update(booking)
    return {"schema_version": 1, "event_id": str(uuid.uuid4()), "event_type": event_type,
            "occurred_at": "2026-04-01T12:00:00Z", "booking": data}


class Env:
    """One test's slice of the stack, and the helpers the integration tests share."""

    def __init__(self, postgres: EmbeddedPostgres, broker: EmbeddedBroker,
                 sandbox: SandboxClient) -> None:
        self.name = "t" + uuid.uuid4().hex[:10]
        self.sandbox = sandbox
        self.database_url = postgres.create_database(self.name, template=TEMPLATE_DB)
        self.settings = Settings(
            database_url=self.database_url, kafka_bootstrap=broker.bootstrap,
            topic=f"{self.name}.bookings", dlq_topic=f"{self.name}.bookings.dlq",
            group_id=f"{self.name}-group", google_api_url=sandbox.api_url,
            google_token_url=sandbox.token_url, google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET, retry_budget_s=3.0, retry_initial_s=0.05,
            retry_max_s=0.5, commit_interval_s=0.1, shutdown_grace_s=5.0, log_format="json",
            google_auth_url=sandbox.auth_url, google_revoke_url=sandbox.revoke_url,
            google_ca_bundle=sandbox.ca_file, token_key=TOKEN_KEY, admin_token=ADMIN_TOKEN,
            metrics_port=0, kafka_session_timeout_s=SESSION_TIMEOUT_S,
        )
        self.producer: AIOKafkaProducer | None = None

    @property
    def env_vars(self) -> dict[str, str]:
        s = self.settings
        return {**os.environ, "CALSYNC_DATABASE_URL": s.database_url,
                "CALSYNC_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "CALSYNC_TOPIC": s.topic,
                "CALSYNC_DLQ_TOPIC": s.dlq_topic, "CALSYNC_GROUP_ID": s.group_id,
                "CALSYNC_GOOGLE_API_URL": s.google_api_url,
                "CALSYNC_GOOGLE_TOKEN_URL": s.google_token_url,
                "CALSYNC_GOOGLE_CLIENT_ID": CLIENT_ID,
                "CALSYNC_GOOGLE_CLIENT_SECRET": CLIENT_SECRET,
                "CALSYNC_GOOGLE_AUTH_URL": s.google_auth_url,
                "CALSYNC_GOOGLE_REVOKE_URL": s.google_revoke_url,
                "CALSYNC_GOOGLE_CA_BUNDLE": self.sandbox.ca_file,
                "CALSYNC_TOKEN_KEY": TOKEN_KEY, "CALSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                "CALSYNC_METRICS_PORT": str(s.metrics_port),
                "CALSYNC_KAFKA_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S),
                "CALSYNC_RETRY_BUDGET_S": "3", "CALSYNC_RETRY_INITIAL_S": "0.05",
                "CALSYNC_COMMIT_INTERVAL_S": "0.1", "CALSYNC_LOG_FORMAT": "json"}

    # --- Google side -------------------------------------------------------------------

    def account(self, name: str = "owner", calendars: list[dict[str, Any]] | None = None,
                rotate_refresh_token: bool = False) -> tuple[str, str]:
        email = f"{name}-{self.name}@example.com"
        refresh_token = f"1//refresh-{uuid.uuid4().hex}"
        self.sandbox.add_account(email, refresh_token, calendars, rotate_refresh_token)
        return email, refresh_token

    def events(self, email: str, calendar_id: str | None = None) -> list[dict[str, Any]]:
        return self.sandbox.events(email, calendar_id or email)

    # --- links and records ---------------------------------------------------------------

    def stored_tokens(self, link_id: str) -> dict[str, Any]:
        """A link's tokens as stored, decrypted with the test key."""
        row = self.query("SELECT refresh_token_enc, access_token_enc, token_expires_at"
                         " FROM calendar_links WHERE id = %s", link_id)[0]
        cipher = TokenCipher([TOKEN_KEY])
        return {"refresh_token": row["refresh_token_enc"] and
                cipher.decrypt(row["refresh_token_enc"]),
                "access_token": row["access_token_enc"] and
                cipher.decrypt(row["access_token_enc"]),
                "token_expires_at": row["token_expires_at"]}

    async def link(self, email: str, refresh_token: str, calendar_id: str | None = "",
                   activity_id: str = "act_1", access_token: str | None = None,
                   expires_at: datetime | None = None) -> str:
        async with links.link_service(self.settings) as service:
            return await service.import_link(
                activity_id=activity_id, account_email=email, refresh_token=refresh_token,
                access_token=access_token, expires_at=expires_at,
                calendar_id=email if calendar_id == "" else calendar_id)

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def results(self, booking_id: str | None = None) -> list[dict[str, Any]]:
        if booking_id is None:
            return self.query("SELECT * FROM sync_results ORDER BY id")
        return self.query("SELECT * FROM sync_results WHERE booking_id = %s ORDER BY id",
                          booking_id)

    # --- Kafka side -----------------------------------------------------------------------

    async def topics(self, partitions: int = 3) -> None:
        await ensure_topics(self.settings.kafka_bootstrap, [self.settings.topic], partitions)
        await ensure_topics(self.settings.kafka_bootstrap, [self.settings.dlq_topic], 1)

    async def publish(self, event: dict[str, Any] | bytes, key: str | bytes | None = None,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap,
                                             max_request_size=8 * 1024 * 1024)
            await self.producer.start()
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        if key is None and isinstance(event, dict):
            key = event["booking"]["id"]
        raw_key = key.encode() if isinstance(key, str) else key
        # One record per request: Tansu's ListOffsets miscounts batches (DEVELOPERS.md).
        await self.producer.send_and_wait(self.settings.topic, value, key=raw_key,
                                          headers=headers)

    async def committed(self) -> dict[int, int | None]:
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap,
                                 group_id=self.settings.group_id, enable_auto_commit=False)
        await probe.start()
        try:
            parts = probe.partitions_for_topic(self.settings.topic) or set()
            return {p: await probe.committed(TopicPartition(self.settings.topic, p))
                    for p in sorted(parts)}
        finally:
            await probe.stop()

    async def committed_total(self) -> int:
        return sum(offset or 0 for offset in (await self.committed()).values())

    async def all_committed(self) -> bool:
        """Every partition's committed offset has reached its end."""
        committed = await self.committed()
        return all((committed.get(p) or 0) >= end
                   for p, end in (await self.end_offsets()).items())

    async def end_offsets(self) -> dict[int, int]:
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await probe.start()
        try:
            tps = [TopicPartition(self.settings.topic, p)
                   for p in probe.partitions_for_topic(self.settings.topic) or set()]
            return {tp.partition: off for tp, off in (await probe.end_offsets(tps)).items()}
        finally:
            await probe.stop()

    async def read_dlq(self, count: int, timeout_s: float = 15.0) -> list[Any]:
        reader = AIOKafkaConsumer(self.settings.dlq_topic,
                                  bootstrap_servers=self.settings.kafka_bootstrap,
                                  auto_offset_reset="earliest", enable_auto_commit=False)
        await reader.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(records) < count and time.monotonic() < deadline:
                for batch in (await reader.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        finally:
            await reader.stop()
        return records

    @asynccontextmanager
    async def consumer(self, **overrides: Any) -> AsyncIterator[asyncio.Event]:
        """The consumer, in this process, until the block ends."""
        stop = asyncio.Event()
        settings = self.settings.model_copy(update=overrides)
        task = asyncio.create_task(consume(settings, stop))
        try:
            yield stop
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    def start_process(self, log_path: Path, *command: str,
                      **extra_env: str) -> subprocess.Popen[bytes]:
        """`calsync consume` (or another command) as users run it, in its own process."""
        env = {**self.env_vars, **extra_env}
        return subprocess.Popen([sys.executable, "-m", "consumer.cli", *(command or ["consume"])],
                                env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                cwd=ROOT)

    @asynccontextmanager
    async def serve(self, log_path: Path) -> AsyncIterator[str]:
        """`calsync serve` in its own process; yields its base URL."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self.settings = self.settings.model_copy(update={"http_port": port})
        process = self.start_process(log_path, "serve", CALSYNC_HTTP_PORT=str(port))
        try:
            await asyncio.to_thread(wait_for_port, port, 30)
            yield base
        finally:
            process.terminate()
            status = await asyncio.to_thread(process.wait, 30)
            assert status == 0, f"calsync serve exited {status}; see {log_path}"

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


def calsync(env: Env, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`calsync ARGS` as a person runs it, with the test's environment."""
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args],
                          env={**env.env_vars, **extra_env}, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


async def wait_until(predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
                     timeout_s: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def env(postgres: EmbeddedPostgres, broker: EmbeddedBroker,
              sandbox: SandboxClient) -> AsyncIterator[Env]:
    environment = Env(postgres, broker, sandbox)
    await environment.topics()
    yield environment
    await environment.close()


_SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where this run's browser screenshots are (tests/test_browser.py)."""
    shots = ROOT / "test-artifacts" / "browser"
    fresh = [p for p in shots.glob("*.png") if p.stat().st_mtime >= _SESSION_STARTED]
    if fresh:
        terminalreporter.write_line(f"browser screenshots ({len(fresh)}): {shots}")
