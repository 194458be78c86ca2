"""The consumer's own HTTP endpoints (aiohttp, CALSYNC_METRICS_PORT): `/metrics` for
Prometheus, `/healthz` (alive) and `/readyz` (ready) for the orchestrator. All cheap: health
reads the runner's state; readiness opens one short database connection (the on-call store
`consumer.bootstrap` built) and asks the broker for metadata, each within two seconds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.adapters.metrics import Metrics
from consumer.service.ports import OpsRecords
from consumer.service.runner import ConsumerRunner
from consumer.settings import Settings

log = structlog.get_logger(__name__)
LOOP_TIMEOUT_S = 30.0
CHECK_TIMEOUT_S = 2.0


class OpsEndpoints:
    def __init__(
        self, settings: Settings, runner: ConsumerRunner, metrics: Metrics, store: OpsRecords
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.metrics = metrics
        self.store = store

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
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self.store.ping(CHECK_TIMEOUT_S)
            return "ok"
        except Exception as exc:  # any failure to open a connection means not ready
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


async def start_ops_http(
    settings: Settings, runner: ConsumerRunner, metrics: Metrics, store: OpsRecords
) -> web.AppRunner:
    endpoints = OpsEndpoints(settings, runner, metrics, store)
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
