"""One test's slice of the session's stack (`Env`), and the helpers integration and
end-to-end tests share: `calsync` (the CLI as a person runs it), `wait_until`, the `env`
fixture.

Each test gets its own database (copied from the migrated template), its own topics and
consumer group, and its own sandbox accounts, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from psycopg.rows import dict_row

from calsync_dev.sandbox import SandboxClient
from calsync_dev.stack import DatabaseServer, free_port, fresh_database, wait_for_port
from consumer.adapters.crypto import TokenCipher
from consumer.adapters.kafka import ensure_topics
from consumer.bootstrap import link_service
from consumer.entrypoints.worker import consume
from consumer.settings import STACK_SETTINGS, Settings, settings_env
from tests.plugins.database import copy_of_template
from tests.plugins.stack import CLIENT_ID, CLIENT_SECRET, Broker

ROOT = Path(__file__).resolve().parent.parent.parent
TOKEN_KEY = TokenCipher.generate_key()
ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
# Tansu answers a first JoinGroup after half the session timeout: a short one makes every
# consumer start 3.5 s sooner (heartbeats then come every second). Apache Kafka in a
# container is configured to accept it (tests/plugins/stack.py).
SESSION_TIMEOUT_S = 3.0
# The settings a process we start is given (consumer.settings.settings_env); the others keep
# their defaults there, as they always have.
PROCESS_SETTINGS = (
    *STACK_SETTINGS,
    "admin_token",
    "metrics_port",
    "kafka_session_timeout_s",
    "retry_budget_s",
    "retry_initial_s",
    "commit_interval_s",
    "log_format",
    "backfill_past_days",
)
# The suite's bookings are dated by the one builder's defaults (April 2026) and by fixed
# dates of their own, whatever day the suite runs: a horizon of a century keeps them all
# within it. The horizon's own tests set CALSYNC_BACKFILL_PAST_DAYS (7, the default).
SUITE_PAST_DAYS = 36_500.0


class Env:
    """One test's slice of the stack, and the helpers the integration tests share."""

    def __init__(self, postgres: DatabaseServer, broker: Broker, sandbox: SandboxClient) -> None:
        self.name = "t" + uuid.uuid4().hex[:10]
        self.sandbox = sandbox
        self.postgres = postgres
        self.database_url = copy_of_template(postgres, self.name)
        self.settings = Settings(
            database_url=self.database_url,
            kafka_bootstrap=broker.bootstrap,
            topic=f"{self.name}.bookings",
            dlq_topic=f"{self.name}.bookings.dlq",
            group_id=f"{self.name}-group",
            google_api_url=sandbox.api_url,
            google_token_url=sandbox.token_url,
            google_client_id=CLIENT_ID,
            google_client_secret=CLIENT_SECRET,
            retry_budget_s=3.0,
            retry_initial_s=0.05,
            retry_max_s=0.5,
            commit_interval_s=0.1,
            shutdown_grace_s=5.0,
            log_format="json",
            google_auth_url=sandbox.auth_url,
            google_revoke_url=sandbox.revoke_url,
            google_ca_bundle=sandbox.ca_file,
            token_key=TOKEN_KEY,
            admin_token=ADMIN_TOKEN,
            metrics_port=0,
            kafka_session_timeout_s=SESSION_TIMEOUT_S,
            backfill_past_days=SUITE_PAST_DAYS,
        )
        self.producer: AIOKafkaProducer | None = None

    @property
    def env_vars(self) -> dict[str, str]:
        """This process's environment with the test's settings: what processes we start
        (`calsync ...`) are given."""
        return {**os.environ, **settings_env(self.settings, PROCESS_SETTINGS)}

    @property
    def deployment_id(self) -> str:
        """Which deployment this test's consumer is: the setting, else its database's id."""
        if self.settings.deployment_id is not None:
            return self.settings.deployment_id
        return str(self.query("SELECT id FROM deployment")[0]["id"])

    def fresh_database(self, suffix: str) -> str:
        """An empty (unmigrated) database of this test's own beside its own; its URL."""
        return fresh_database(self.postgres, f"{self.name}_{suffix}")

    # --- Google side -------------------------------------------------------------------

    def account(
        self,
        name: str = "owner",
        calendars: list[dict[str, Any]] | None = None,
        rotate_refresh_token: bool = False,
    ) -> tuple[str, str]:
        email = f"{name}-{self.name}@example.com"
        refresh_token = f"1//refresh-{uuid.uuid4().hex}"
        self.sandbox.add_account(email, refresh_token, calendars, rotate_refresh_token)
        return email, refresh_token

    def events(self, email: str, calendar_id: str | None = None) -> list[dict[str, Any]]:
        return self.sandbox.events(email, calendar_id or email)

    # --- links and records ---------------------------------------------------------------

    def stored_tokens(self, link_id: str) -> dict[str, Any]:
        """A link's tokens as stored (its account's grant's), decrypted with the test key;
        all None when there is no grant (or it was revoked)."""
        rows = self.query(
            "SELECT g.refresh_token_enc, g.access_token_enc, g.token_expires_at"
            " FROM calendar_links l JOIN google_grants g ON g.account_email = l.account_email"
            " WHERE l.id = %s",
            link_id,
        )
        row = (
            rows[0]
            if rows
            else dict.fromkeys(("refresh_token_enc", "access_token_enc", "token_expires_at"))
        )
        cipher = TokenCipher([TOKEN_KEY])
        return {
            "refresh_token": row["refresh_token_enc"] and cipher.decrypt(row["refresh_token_enc"]),
            "access_token": row["access_token_enc"] and cipher.decrypt(row["access_token_enc"]),
            "token_expires_at": row["token_expires_at"],
        }

    async def link(
        self,
        email: str,
        refresh_token: str,
        calendar_id: str | None = "",
        activity_id: str = "act_1",
        access_token: str | None = None,
        expires_at: datetime | None = None,
        backfill: bool = False,
    ) -> str:
        """A link imported (active on `calendar_id`, by default the account's primary
        calendar; pending with None); not backfilled unless asked (tests set up their
        links before the bookings they publish)."""
        async with link_service(self.settings) as service:
            return await service.import_link(
                activity_id=activity_id,
                account_email=email,
                refresh_token=refresh_token,
                access_token=access_token,
                expires_at=expires_at,
                calendar_id=email if calendar_id == "" else calendar_id,
                backfill=backfill,
            )

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def results(self, booking_id: str | None = None) -> list[dict[str, Any]]:
        if booking_id is None:
            return self.query("SELECT * FROM sync_results ORDER BY id")
        return self.query(
            "SELECT * FROM sync_results WHERE booking_id = %s ORDER BY id", booking_id
        )

    # --- Kafka side -----------------------------------------------------------------------

    async def topics(self, partitions: int = 3) -> None:
        await ensure_topics(self.settings.kafka_bootstrap, [self.settings.topic], partitions)
        await ensure_topics(self.settings.kafka_bootstrap, [self.settings.dlq_topic], 1)

    async def publish(
        self,
        event: dict[str, Any] | bytes,
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self.producer is None:
            self.producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap, max_request_size=8 * 1024 * 1024
            )
            await self.producer.start()
        value = event if isinstance(event, bytes) else json.dumps(event).encode()
        if key is None and isinstance(event, dict):
            key = event["booking"]["id"]
        raw_key = key.encode() if isinstance(key, str) else key
        # One record per request: Tansu's ListOffsets miscounts batches (DEVELOPERS.md).
        await self.producer.send_and_wait(self.settings.topic, value, key=raw_key, headers=headers)

    async def committed(self) -> dict[int, int | None]:
        probe = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.settings.group_id,
            enable_auto_commit=False,
        )
        await probe.start()
        try:
            parts = probe.partitions_for_topic(self.settings.topic) or set()
            return {
                p: await probe.committed(TopicPartition(self.settings.topic, p))
                for p in sorted(parts)
            }
        finally:
            await probe.stop()

    async def committed_total(self) -> int:
        return sum(offset or 0 for offset in (await self.committed()).values())

    async def all_committed(self) -> bool:
        """Every partition's committed offset has reached its end."""
        committed = await self.committed()
        return all((committed.get(p) or 0) >= end for p, end in (await self.end_offsets()).items())

    async def end_offsets(self) -> dict[int, int]:
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        await probe.start()
        try:
            tps = [
                TopicPartition(self.settings.topic, p)
                for p in probe.partitions_for_topic(self.settings.topic) or set()
            ]
            return {tp.partition: off for tp, off in (await probe.end_offsets(tps)).items()}
        finally:
            await probe.stop()

    async def read_dlq(self, count: int, timeout_s: float = 15.0) -> list[Any]:
        reader = AIOKafkaConsumer(
            self.settings.dlq_topic,
            bootstrap_servers=self.settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
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

    @staticmethod
    def stop_process(process: subprocess.Popen[bytes]) -> int:
        """SIGTERM, as an orchestrator stops it; its exit status. One that has not ended
        within 30 s is killed and the test fails."""
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise

    def start_process(
        self, log_path: Path, *command: str, **extra_env: str
    ) -> subprocess.Popen[bytes]:
        """`calsync consume` (or another command) as users run it, in its own process."""
        env = {**self.env_vars, **extra_env}
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", *(command or ["consume"])],
            env=env,
            stdout=open(log_path, "ab"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

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


def calsync(
    env: Env, *args: str, stdin: str | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """`calsync ARGS` as a person runs it, with the test's environment (and `stdin` piped
    to it, when given)."""
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env={**env.env_vars, **extra_env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout_s: float = 20.0,
    what: str = "condition",
) -> Any:
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
async def env(
    postgres: DatabaseServer, broker: Broker, sandbox: SandboxClient
) -> AsyncIterator[Env]:
    environment = Env(postgres, broker, sandbox)
    await environment.topics()
    yield environment
    await environment.close()


_SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where this run's browser screenshots are (tests/e2e/test_browser.py)."""
    shots = ROOT / "test-artifacts" / "browser"
    fresh = [p for p in shots.glob("*.png") if p.stat().st_mtime >= _SESSION_STARTED]
    if fresh:
        terminalreporter.write_line(f"browser screenshots ({len(fresh)}): {shots}")
