"""The consumer process (`calsync consume`): the Kafka runner, the ops HTTP server (/metrics,
health) and the background loops (link watcher, gauges, repairs, scheduled reconcile,
retention), until SIGTERM/SIGINT or `stop`.

A SIGTERM ends the process within `CALSYNC_SHUTDOWN_GRACE_S` + 10 s whatever the database and
the broker do: every step past the grace is bounded (consumer/service/shutdown.py), the
event loop's own closing too (`run_process`), and a watchdog armed by the signal ends the
process at the bound if anything still holds it (one `shutdown_overran` error line, exit
status 3). Offsets are only ever committed for recorded results, so ending there loses
nothing: what was left behind is read again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

import structlog
from aiokafka.errors import KafkaError

from consumer.adapters.kafka import ensure_topics
from consumer.adapters.postgres.link_watcher import watch_links
from consumer.adapters.postgres.migrations import pending_migrations
from consumer.adapters.postgres.ops_store import OpsStore
from consumer.bootstrap import (
    consumer_runner,
    group_admin,
    ops_store,
    reconciler,
    repair_loop,
    repair_store,
    retention,
    services,
    session_conninfo,
)
from consumer.domain.errors import StartupError
from consumer.entrypoints.ops_http import start_ops_http
from consumer.entrypoints.problems import SHUTDOWN_OVERRAN_EXIT_CODE
from consumer.service import reconcile
from consumer.service.context import Services
from consumer.service.shutdown import AFTER_GRACE_S, STEPS_AFTER_GRACE_S, Deadline, within
from consumer.service.status import GaugeSources, refresh_gauges
from consumer.settings import Settings

log = structlog.get_logger(__name__)
_WATCHDOG_MARGIN_S = 0.5  # the watchdog fires this long before the bound: exiting takes time
_LEFT_BEHIND_S = 0.5  # what the event loop's closing gives tasks left behind, cancelled


def run_process(settings: Settings) -> int:
    """`calsync consume` as a process. Like `asyncio.run`, except that tasks a bounded
    shutdown left behind (cancelled work still waiting on the database) are not waited for
    without limit when the event loop closes."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(consume(settings, install_signal_handlers=True))
    finally:
        try:
            _close_left_behind(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    return 0


def _close_left_behind(loop: asyncio.AbstractEventLoop) -> None:
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=_LEFT_BEHIND_S))
        if still := [t for t in left if not t.done()]:
            log.warning("shutdown_left_tasks_behind", tasks=len(still))
    closing_generators = loop.create_task(loop.shutdown_asyncgens())
    loop.run_until_complete(asyncio.wait([closing_generators], timeout=_LEFT_BEHIND_S))


def _stop_within_bound(stop: asyncio.Event, settings: Settings) -> None:
    """SIGTERM/SIGINT: stop, and make sure the process ends within the grace + 10 s."""
    if stop.is_set():
        return
    stop.set()
    _arm_watchdog(settings.shutdown_grace_s + AFTER_GRACE_S - _WATCHDOG_MARGIN_S)


def _arm_watchdog(seconds: float) -> None:
    """A thread that ends the process after `seconds`, whatever still holds it (a thread in
    a blocking call, a connection that never answers): the last guarantee of the bound."""

    def overrun() -> None:
        log.error(
            "shutdown_overran",
            after_s=round(seconds, 1),
            exit_status=SHUTDOWN_OVERRAN_EXIT_CODE,
            why="something still held the process at the shutdown's bound "
            "(CALSYNC_SHUTDOWN_GRACE_S + 10 s): ended; offsets were committed only for "
            "recorded results, so nothing is lost",
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(SHUTDOWN_OVERRAN_EXIT_CODE)

    timer = threading.Timer(seconds, overrun)
    timer.daemon = True  # a process that ends in time is not kept by it
    timer.start()


async def consume(
    settings: Settings, stop: asyncio.Event | None = None, install_signal_handlers: bool = False
) -> None:
    """Run the consumer until `stop` is set (or, as a process, until SIGTERM/SIGINT)."""
    stop = stop or asyncio.Event()
    if install_signal_handlers:  # first: a SIGTERM while starting is a clean stop too
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop_within_bound, stop, settings)
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
        background = _background_loops(settings, svc, on_call, runner.member.member)
        try:
            await runner.run(stop)
        finally:
            # What is left of the shutdown's bound (the runner's steps past the grace took
            # the rest); the services are closed within it too.
            closing = svc.closing = runner.closing or Deadline.after(STEPS_AFTER_GRACE_S)
            for task in background:
                task.cancel()
            await within(
                asyncio.gather(*background, return_exceptions=True),
                closing.left(2.0),
                "background_tasks",
            )
            await within(ops.cleanup(), closing.left(1.0), "ops_http")


def _background_loops(
    settings: Settings, svc: Services, on_call: OpsStore, member: str
) -> list[asyncio.Task[None]]:
    """The loops beside the runner, each supervised: the link watcher, the gauges, the
    repair loop (leasing as this member), the scheduled reconcile, retention."""
    repairs = repair_loop(svc, member)
    gauges = GaugeSources(on_call, repair_store(settings), group_admin(settings))
    background = [
        _supervised(
            "link_watcher",
            lambda: watch_links(
                session_conninfo(settings), svc.engine.link_changed, svc.engine.grant_changed
            ),
        ),
        _supervised(
            "gauges",
            lambda: refresh_gauges(svc.metrics, gauges, settings.group_id, settings.topic),
        ),
        _supervised("repair_loop", repairs.run),
    ]
    if settings.reconcile_interval_s > 0:
        background.append(
            _supervised(
                "reconcile_schedule",
                lambda: reconcile.scheduled(reconciler(svc), settings.reconcile_interval_s, member),
            )
        )
    if settings.results_retention_days > 0:
        background.append(_supervised("retention", retention(settings, svc.metrics).scheduled))
    return background


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
