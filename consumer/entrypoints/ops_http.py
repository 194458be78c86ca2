"""The consumer's own HTTP endpoints (aiohttp, CALSYNC_METRICS_PORT): `/metrics` for
Prometheus, `/healthz` (alive) and `/readyz` (ready) for the orchestrator. All cheap: health
reads the runner's state; readiness opens one short database connection (from the factory
`consumer.bootstrap` built) and asks the broker for metadata, each within two seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.connections import Connect
from consumer.domain.models import LinkState
from consumer.service.repairs import refresh_gauge as refresh_repairs_gauge
from consumer.service.runner import ConsumerRunner
from consumer.settings import Settings

log = structlog.get_logger(__name__)
LOOP_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 2.0


class OpsEndpoints:
    def __init__(
        self, settings: Settings, runner: ConsumerRunner, metrics: Metrics, connect: Connect
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.connect = connect

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        idle = time.monotonic() - self.runner.loop_turned_at
        stalled = self.runner.stalled(self.settings.stall_threshold_s)
        checks = {
            "loop": "ok" if idle < LOOP_TIMEOUT_S else f"no turn for {idle:.0f}s",
            "partitions": "ok" if not stalled else f"stalled: {stalled}",
        }
        return _answer(checks, loop_idle_s=round(idle, 3))

    async def readyz(self, request: web.Request) -> web.Response:
        database, broker = await asyncio.gather(self._database(), self._broker())
        checks = {
            "consumer": "ok" if self.runner.started else "starting",
            "database": database,
            "broker": broker,
        }
        return _answer(checks)

    async def _database(self) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S), self.connect(CHECK_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
            return "ok"
        except (TimeoutError, psycopg.Error) as exc:
            return f"unreachable: {type(exc).__name__}"

    async def _broker(self) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.runner.consumer.topics()
            return "ok"
        except Exception as exc:  # any failure to get metadata means not connected
            return f"unreachable: {type(exc).__name__}"


def _answer(checks: dict[str, Any], **details: Any) -> web.Response:
    ok = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if ok else "failing", "checks": checks, **details},
        status=200 if ok else 503,
    )


async def refresh_gauges(metrics: Metrics, connect: Connect, every_s: float = 15.0) -> None:
    """Links by state and repairs waiting by reason, from the database, until cancelled."""
    while True:
        try:
            async with connect(CHECK_TIMEOUT_S) as conn, asyncio.timeout(every_s):
                rows = await (
                    await conn.execute(
                        "SELECT state, count(*) AS n FROM calendar_links GROUP BY state"
                    )
                ).fetchall()
                counts = {row["state"]: row["n"] for row in rows}
                for state in LinkState:
                    metrics.links.labels(state.value).set(counts.get(state.value, 0))
                await refresh_repairs_gauge(metrics, conn)
        except (psycopg.Error, TimeoutError) as exc:
            log.debug("link_gauge_not_refreshed", cause=type(exc).__name__)
        await asyncio.sleep(every_s)


async def start_ops_http(
    settings: Settings, runner: ConsumerRunner, metrics: Metrics, connect: Connect
) -> web.AppRunner:
    endpoints = OpsEndpoints(settings, runner, metrics, connect)
    app = web.Application()
    app.add_routes(
        [
            web.get("/metrics", endpoints.metrics_page),
            web.get("/healthz", endpoints.healthz),
            web.get("/readyz", endpoints.readyz),
        ]
    )
    site_runner = web.AppRunner(app, access_log=None)
    await site_runner.setup()
    await web.TCPSite(site_runner, settings.http_host, settings.metrics_port).start()
    port = site_runner.addresses[0][1] if site_runner.addresses else settings.metrics_port
    runner.ops_port = port
    log.info("ops_http_listening", host=settings.http_host, port=port)
    return site_runner
