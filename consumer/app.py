"""Wiring: builds the adapters from the settings and runs the consumer until told to stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from aiokafka.errors import KafkaError

from consumer import reconcile
from consumer.crypto import TokenCipher, TokenKeyError
from consumer.db import Repository, pending_migrations
from consumer.google_calendar import GoogleCalendar
from consumer.kafka import build_consumer, build_producer, ensure_topics
from consumer.link_watcher import watch_links
from consumer.metrics import Metrics
from consumer.ops_http import refresh_gauges, start_ops_http
from consumer.quota import GroupQuota
from consumer.repairs import RepairLoop
from consumer.runner import ConsumerRunner
from consumer.settings import Settings
from consumer.sync import SyncEngine
from consumer.sync_store import SyncStore
from consumer.tokens import TokenProvider

log = structlog.get_logger(__name__)


class StartupError(Exception):
    """The consumer cannot start; the message says what to do."""


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    cipher: TokenCipher
    repository: Repository
    google: GoogleCalendar
    tokens: TokenProvider
    engine: SyncEngine


@asynccontextmanager
async def services(settings: Settings, pool_size: int | None = None
                   ) -> AsyncIterator[Services]:
    try:
        cipher = TokenCipher.from_settings(settings)
    except TokenKeyError as exc:
        raise StartupError(str(exc)) from None
    # Token refreshes get a pool of their own: they must never queue behind the intake.
    repository = Repository(Repository.pool_for(
        settings.database_url, pool_size or settings.db_pool_size, "sync"), cipher)
    token_repository = Repository(Repository.pool_for(settings.database_url, 4, "tokens"),
                                  cipher)
    await repository.pool.open(wait=True, timeout=30)
    await token_repository.pool.open(wait=True, timeout=30)
    metrics = Metrics()
    google = GoogleCalendar(settings, metrics)
    tokens = TokenProvider(settings, token_repository, metrics)
    engine = SyncEngine(settings, repository, google, tokens,
                        GroupQuota(settings, repository.pool, metrics),
                        SyncStore(settings.database_url), metrics)
    try:
        yield Services(settings, metrics, cipher, repository, google, tokens, engine)
    finally:
        await engine.close()
        google.close()
        tokens.close()
        await token_repository.pool.close()
        await repository.pool.close()


async def consume(settings: Settings, stop: asyncio.Event | None = None,
                  install_signal_handlers: bool = False) -> None:
    """Run the consumer until `stop` is set (or, as a process, until SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    if install_signal_handlers:  # first: a SIGTERM while starting is a clean stop too
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    missing = await asyncio.to_thread(pending_migrations, settings.database_url)
    if missing:
        raise StartupError(f"the database is not migrated ({', '.join(missing)} pending): "
                           "run `calsync migrate` first")
    try:
        await ensure_topics(settings.kafka_bootstrap, [settings.dlq_topic])
    except KafkaError as exc:
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    async with services(settings) as svc:
        runner = ConsumerRunner(settings, svc.engine, svc.repository, build_consumer(settings),
                                build_producer(settings), svc.metrics)
        try:
            ops = await start_ops_http(settings, runner, svc.metrics)
        except OSError as exc:
            raise StartupError(f"cannot listen on {settings.http_host}:{settings.metrics_port} "
                               f"for /metrics ({exc.strerror}): set CALSYNC_METRICS_PORT"
                               ) from None
        member = runner.member.member
        repair_loop = RepairLoop(settings, svc.engine, svc.repository, svc.metrics, member)
        background = [
            _supervised("link_watcher", lambda: watch_links(settings.database_url,
                                                            svc.engine.link_changed)),
            _supervised("gauges", lambda: refresh_gauges(svc.metrics, settings.database_url)),
            _supervised("repair_loop", repair_loop.run),
            *([_supervised("reconcile_schedule", lambda: reconcile.scheduled(
                svc, settings.reconcile_interval_s, member))]
              if settings.reconcile_interval_s > 0 else []),
        ]
        try:
            await runner.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await ops.cleanup()


def _supervised(name: str, work: Callable[[], Awaitable[None]],
                restart_after_s: float = 5.0) -> asyncio.Task[None]:
    """A background loop that a bug of ours cannot end for good: it is logged and started
    again (the consumer's own loop is not concerned)."""

    async def keep() -> None:
        while True:
            try:
                await work()
                return
            except Exception as exc:
                log.error("background_task_failed", task=name, cause=type(exc).__name__,
                          error=str(exc)[:300], restart_in_s=restart_after_s)
                await asyncio.sleep(restart_after_s)

    return asyncio.create_task(keep(), name=name)
