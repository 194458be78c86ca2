"""The consumer process (`calsync consume`): the Kafka runner, the ops HTTP server (/metrics,
health) and the background loops (link watcher, gauges, repairs, scheduled reconcile), until
SIGTERM/SIGINT or `stop`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiokafka.errors import KafkaError

from consumer.adapters.kafka import ensure_topics
from consumer.adapters.postgres.link_watcher import watch_links
from consumer.adapters.postgres.migrations import pending_migrations
from consumer.bootstrap import consumer_runner, ops_store, services
from consumer.domain.errors import StartupError
from consumer.entrypoints.ops_http import start_ops_http
from consumer.service import reconcile
from consumer.service.repairs import RepairLoop
from consumer.service.status import refresh_gauges
from consumer.settings import Settings

log = structlog.get_logger(__name__)


async def consume(
    settings: Settings, stop: asyncio.Event | None = None, install_signal_handlers: bool = False
) -> None:
    """Run the consumer until `stop` is set (or, as a process, until SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    if install_signal_handlers:  # first: a SIGTERM while starting is a clean stop too
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    missing = await asyncio.to_thread(pending_migrations, settings.database_url)
    if missing:
        raise StartupError(
            f"the database is not migrated ({', '.join(missing)} pending): "
            "run `calsync migrate` first"
        )
    try:
        await ensure_topics(settings.kafka_bootstrap, [settings.dlq_topic])
    except KafkaError as exc:
        raise StartupError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from None
    async with services(settings) as svc:
        # Which deployment's events are ours (every event written carries it): said once.
        log.info("deployment", deployment_id=svc.deployment.id, source=svc.deployment.source)
        runner = consumer_runner(settings, svc)
        on_call = ops_store(settings)
        try:
            ops = await start_ops_http(settings, runner, svc.metrics, on_call)
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {settings.http_host}:{settings.metrics_port} "
                f"for /metrics ({exc.strerror}): set CALSYNC_METRICS_PORT"
            ) from None
        member = runner.member.member
        repair_loop = RepairLoop(settings, svc.engine, svc.repository, svc.metrics, member)
        background = [
            _supervised(
                "link_watcher",
                lambda: watch_links(
                    settings.database_url, svc.engine.link_changed, svc.engine.grant_changed
                ),
            ),
            _supervised("gauges", lambda: refresh_gauges(svc.metrics, on_call)),
            _supervised("repair_loop", repair_loop.run),
            *(
                [
                    _supervised(
                        "reconcile_schedule",
                        lambda: reconcile.scheduled(svc, settings.reconcile_interval_s, member),
                    )
                ]
                if settings.reconcile_interval_s > 0
                else []
            ),
        ]
        try:
            await runner.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await ops.cleanup()


def _supervised(
    name: str, work: Callable[[], Awaitable[None]], restart_after_s: float = 5.0
) -> asyncio.Task[None]:
    """A background loop that a bug of ours cannot end for good: it is logged and started
    again (the consumer's own loop is not concerned)."""

    async def keep() -> None:
        while True:
            try:
                await work()
                return
            except Exception as exc:
                log.error(
                    "background_task_failed",
                    task=name,
                    cause=type(exc).__name__,
                    error=str(exc)[:300],
                    restart_in_s=restart_after_s,
                )
                await asyncio.sleep(restart_after_s)

    return asyncio.create_task(keep(), name=name)
