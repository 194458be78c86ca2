"""Wiring: the one place that builds the adapters from the settings and hands them to the
services. Only entrypoints import it; services never do.

`services()` opens what the sync engine needs (two pools, Google, tokens, the quota, the
sync store) and reads which deployment this is (CALSYNC_DEPLOYMENT_ID, else the database's
id), handed to the engine and the services; `link_service()` adds the link lifecycle on
top; `link_tables()` opens just one small pool for commands that only read or rewrite the
links table (`calsync links list`, `calsync keys rotate`); `connections()` is the factory
of single connections handed to what needs one outside the pools (`calsync status`,
`calsync dlq`, a replay's record, the scheduled reconcile's lock, the ops endpoints).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from consumer.adapters.crypto import TokenCipher
from consumer.adapters.google.calendar import GoogleCalendar
from consumer.adapters.google.oauth import OAuthClient
from consumer.adapters.google.tokens import TokenProvider
from consumer.adapters.kafka import KafkaGroupAdmin, build_consumer, build_producer
from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.backfill_store import BackfillStore
from consumer.adapters.postgres.connections import Connect, connector, session_conninfo
from consumer.adapters.postgres.deployment import deployment
from consumer.adapters.postgres.link_health_store import LinkHealthStore
from consumer.adapters.postgres.link_store import LinkStore
from consumer.adapters.postgres.ops_store import OpsStore
from consumer.adapters.postgres.page_store import PageStore
from consumer.adapters.postgres.quota import GroupQuota
from consumer.adapters.postgres.repository import Repository
from consumer.adapters.postgres.sync_store import SyncStore
from consumer.domain.errors import StartupError, TokenKeyError
from consumer.service import repairs
from consumer.service.calls import CallPolicy, GoogleCalls
from consumer.service.context import Services
from consumer.service.event_writes import EventWrites
from consumer.service.links import LinkParts, LinkService
from consumer.service.operations import resync_bookings
from consumer.service.ports import AccessTokens, CalendarGateway, Claims, Quota, SyncRecords
from consumer.service.runner import ConsumerRunner
from consumer.service.shutdown import Deadline, within
from consumer.service.sync import EngineConfig, SyncEngine
from consumer.settings import Settings

_CLOSE_S = 10.0  # closing the services when nobody set a deadline (commands, `serve`)
_ENGINE_CLOSE_S = 2.0


def _cipher(settings: Settings) -> TokenCipher:
    try:
        return TokenCipher.from_settings(settings)
    except TokenKeyError as exc:
        raise StartupError(str(exc)) from None


def connections(settings: Settings) -> Connect:
    """New connections to the database, one per `async with connect()`."""
    return connector(session_conninfo(settings))


def ops_store(settings: Settings) -> OpsStore:
    """The database as on-call tooling reads it (short connections of its own)."""
    return OpsStore(connections(settings))


def group_admin(settings: Settings) -> KafkaGroupAdmin:
    """The broker as on-call tooling asks it."""
    return KafkaGroupAdmin(settings.kafka_bootstrap)


@asynccontextmanager
async def services(settings: Settings, pool_size: int | None = None) -> AsyncIterator[Services]:
    cipher = _cipher(settings)
    database = session_conninfo(settings)  # every session with its lock and statement timeouts
    # Token refreshes get a pool of their own: they must never queue behind the intake.
    repository = Repository(
        Repository.pool_for(database, pool_size or settings.db_pool_size, "sync"), cipher
    )
    token_repository = Repository(Repository.pool_for(database, 4, "tokens"), cipher)
    await repository.pool.open(wait=True, timeout=30)
    await token_repository.pool.open(wait=True, timeout=30)
    try:
        async with repository.pool.connection() as conn:
            ours = await deployment(conn, settings.deployment_id)
    except BaseException:  # not migrated yet: nothing is left open
        await token_repository.pool.close()
        await repository.pool.close()
        raise
    metrics = Metrics()
    google = GoogleCalendar(settings, metrics)
    tokens = TokenProvider(settings, token_repository, metrics)
    calls = google_calls(settings, GroupQuota(settings, repository.pool, metrics), tokens)
    engine = sync_engine(settings, repository, SyncStore(database), calls, google, metrics, ours.id)
    svc = Services(
        settings,
        metrics,
        cipher,
        repository,
        google,
        tokens,
        calls,
        engine,
        connections(settings),
        ours,
    )
    try:
        yield svc
    finally:
        # Bounded: work left behind may hold a flush or a connection on a locked table.
        closing = svc.closing or Deadline.after(_CLOSE_S)
        # Its flushes end at once unless left-behind work holds one on a locked table.
        await within(engine.close(), closing.left(_ENGINE_CLOSE_S), "sync_engine")
        google.close()
        tokens.close()
        for pool in (token_repository.pool, repository.pool):
            await within(pool.close(timeout=closing.left(1.0)), closing.left(), f"pool {pool.name}")


def google_calls(settings: Settings, quota: Quota, tokens: AccessTokens) -> GoogleCalls:
    """The one Google-call policy of the process, over its quota and tokens."""
    return GoogleCalls(
        CallPolicy(
            retry_budget_s=settings.retry_budget_s,
            retry_initial_s=settings.retry_initial_s,
            retry_max_s=settings.retry_max_s,
            google_timeout_s=settings.google_timeout_s,
            quota_max_wait_s=settings.quota_max_wait_s,
        ),
        quota,
        tokens,
    )


def sync_engine(
    settings: Settings,
    records: SyncRecords,
    store: Claims,
    calls: GoogleCalls,
    google: CalendarGateway,
    metrics: Metrics,
    deployment: str | None,
) -> SyncEngine:
    """The sync engine over its ports (the real adapters here; fakes in the unit tier)."""
    return SyncEngine(
        EngineConfig(
            repair_initial_backoff_s=settings.repair_initial_backoff_s,
            repair_max_backoff_s=settings.repair_max_backoff_s,
        ),
        records,
        store,
        calls,
        EventWrites(google, deployment),
        metrics,
    )


def consumer_runner(settings: Settings, svc: Services) -> ConsumerRunner:
    """The consume loop over the group's Kafka clients, on `svc`'s engine and metrics."""
    return ConsumerRunner(
        settings,
        svc.engine,
        svc.repository,
        build_consumer(settings),
        build_producer(settings),
        svc.metrics,
    )


@asynccontextmanager
async def link_service(settings: Settings) -> AsyncIterator[LinkService]:
    async with services(settings, pool_size=4) as svc:
        service = LinkService(svc, link_parts(svc))
        try:
            yield service
        finally:
            await service.close()


def link_parts(svc: Services) -> LinkParts:
    """The link lifecycle's ports over the process's pool, Google, tokens and engine."""
    pool = svc.repository.pool
    return LinkParts(
        settings=svc.settings,
        links=LinkStore(svc.repository, svc.cipher),
        backfills=BackfillStore(pool),
        health=LinkHealthStore(pool),
        oauth=OAuthClient(svc.settings, svc.cipher),
        google=svc.google,
        tokens=svc.tokens,
        calls=svc.calls,
        engine=svc.engine,
        repairs=_OwedRepairs(svc.repository),
        deployment_id=svc.deployment.id,
    )


class _OwedRepairs:
    """The repair ledger a backfill owes its bookings to: `repairs`, through the repair
    loop's own statements (consumer.service.repairs)."""

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def owe(
        self, link_id: str, pairs: list[tuple[str, int]], reason: str, member: str, lease_s: float
    ) -> None:
        await repairs.owe(self._repository, link_id, pairs, reason, member, lease_s)

    async def renew(self, member: str, lease_s: float) -> None:
        await repairs.renew(self._repository, member, lease_s)


def page_store(service: LinkService) -> PageStore:
    """What the pages keep in PostgreSQL (sessions, failed sign-ins), on the link service's
    pool."""
    return PageStore(service.svc.repository.pool)


@asynccontextmanager
async def link_tables(settings: Settings) -> AsyncIterator[LinkStore]:
    """The links table alone: one small pool, no Google, no engine, no quota."""
    cipher = _cipher(settings)
    repository = Repository(Repository.pool_for(session_conninfo(settings), 2, "links"), cipher)
    await repository.pool.open(wait=True, timeout=30)
    try:
        yield LinkStore(repository, cipher)
    finally:
        await repository.pool.close()


async def resync(settings: Settings, booking_ids: set[str]) -> int:
    """`calsync resync`: see `consumer.service.operations.resync_bookings`."""
    async with services(settings, pool_size=4) as svc:
        return await resync_bookings(svc, booking_ids)
