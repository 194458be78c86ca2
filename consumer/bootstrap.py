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
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from consumer.adapters.crypto import TokenCipher
from consumer.adapters.google.calendar import CalendarConfig, GoogleCalendar
from consumer.adapters.google.oauth import OAuthClient, OAuthConfig
from consumer.adapters.google.tokens import GrantStore, TokenConfig, TokenProvider
from consumer.adapters.kafka import (
    DeadLetterProducer,
    GroupConsumer,
    KafkaGroupAdmin,
    build_consumer,
    build_producer,
)
from consumer.adapters.metrics import Metrics
from consumer.adapters.postgres.backfill_store import BackfillStore
from consumer.adapters.postgres.connections import (
    Connect,
    DatabaseConfig,
    DictConnection,
    connector,
)
from consumer.adapters.postgres.deployment import deployment
from consumer.adapters.postgres.link_health_store import LinkHealthStore
from consumer.adapters.postgres.link_store import LinkStore
from consumer.adapters.postgres.members import MemberReport
from consumer.adapters.postgres.ops_store import OpsStore
from consumer.adapters.postgres.page_store import PageStore
from consumer.adapters.postgres.quota import GroupQuota, QuotaConfig
from consumer.adapters.postgres.reconcile_store import ReconcileStore
from consumer.adapters.postgres.repair_store import RepairStore
from consumer.adapters.postgres.repository import Repository
from consumer.adapters.postgres.retention_store import RetentionStore
from consumer.adapters.postgres.sync_store import SyncStore
from consumer.domain.errors import StartupError, TokenKeyError
from consumer.domain.repair_queue import places_per_account
from consumer.service.calls import CallPolicy, GoogleCalls
from consumer.service.context import Services
from consumer.service.dead_letters import DeadLetters
from consumer.service.event_writes import EventWrites
from consumer.service.links import LinkParts, LinkService
from consumer.service.operations import resync_bookings
from consumer.service.ports import AccessTokens, CalendarGateway, Claims, Quota, SyncRecords
from consumer.service.reconcile import ReconcileConfig, Reconciler
from consumer.service.repairs import RepairLoop, RepairLoopConfig
from consumer.service.retention import Retention, RetentionPolicy
from consumer.service.runner import ConsumerRunner, RunnerConfig
from consumer.service.shutdown import Deadline, within
from consumer.service.sync import EngineConfig, SyncEngine
from consumer.settings import Settings

_CLOSE_S = 10.0  # closing the services when nobody set a deadline (commands, `serve`)
_ENGINE_CLOSE_S = 2.0


def _cipher(settings: Settings) -> TokenCipher:
    try:
        return TokenCipher.from_keys(
            settings.token_key.get_secret_value() if settings.token_key else ""
        )
    except TokenKeyError as exc:
        raise StartupError(str(exc)) from None


# --- each adapter's small frozen config, sliced from the settings ------------------------------


def database(settings: Settings) -> DatabaseConfig:
    return DatabaseConfig(
        url=settings.database_url,
        lock_timeout_s=settings.db_lock_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
    )


def session_conninfo(settings: Settings) -> str:
    """CALSYNC_DATABASE_URL with every session's lock and statement timeouts."""
    return database(settings).session_conninfo()


def calendar_config(settings: Settings) -> CalendarConfig:
    quota_per_min = settings.quota_per_project_per_min * settings.quota_use_share
    return CalendarConfig(
        api_endpoint=settings.calendar_api_endpoint,
        batch_uri=settings.calendar_batch_uri,
        ca_bundle=settings.google_ca_bundle,
        timeout_s=settings.google_timeout_s,
        concurrency=settings.google_concurrency,
        batch_size=settings.google_batch_size,
        project_quota_per_s=quota_per_min / 60 if quota_per_min else None,
    )


def token_config(settings: Settings) -> TokenConfig:
    return TokenConfig(
        token_url=settings.google_token_url,
        client_id=settings.google_client_id,
        client_secret=settings.google_client_secret,
        ca_bundle=settings.google_ca_bundle,
        timeout_s=settings.google_timeout_s,
        refresh_margin_s=settings.token_refresh_margin_s,
    )


def quota_config(settings: Settings) -> QuotaConfig:
    return QuotaConfig(
        project=settings.google_client_id,
        per_account_per_min=settings.quota_per_account_per_min,
        per_project_per_min=settings.quota_per_project_per_min,
        use_share=settings.quota_use_share,
        exceeded_pause_s=settings.quota_exceeded_pause_s,
    )


def oauth_config(settings: Settings) -> OAuthConfig:
    return OAuthConfig(
        client_id=settings.google_client_id,
        client_secret=settings.google_client_secret,
        auth_url=settings.google_auth_url,
        token_url=settings.google_token_url,
        revoke_url=settings.google_revoke_url,
        redirect_uri=settings.oauth_redirect_uri,
        ca_bundle=settings.google_ca_bundle,
        timeout_s=settings.google_timeout_s,
        state_ttl_s=settings.oauth_state_ttl_s,
    )


def google_calendar(settings: Settings, metrics: Metrics) -> GoogleCalendar:
    return GoogleCalendar(calendar_config(settings), metrics)


def token_provider(settings: Settings, grants: GrantStore, metrics: Metrics) -> TokenProvider:
    return TokenProvider(token_config(settings), grants, metrics)


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
    google = google_calendar(settings, metrics)
    tokens = token_provider(settings, token_repository, metrics)
    quota = GroupQuota(quota_config(settings), repository.pool, metrics)
    calls = google_calls(settings, quota, tokens)
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
        RepairStore(pooled(repository)),
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


def pooled(repository: Repository) -> Connect:
    """Connections from the repository's pool, as a `Connect` (a store that runs often, the
    repair loop's, must not open a connection per statement)."""

    def connect(timeout_s: float | None = None) -> AbstractAsyncContextManager[DictConnection]:
        return repository.pool.connection(timeout=timeout_s)

    return connect


def repair_store(settings: Settings) -> RepairStore:
    """The repair queue over short connections of its own (`calsync status`)."""
    return RepairStore(connections(settings))


def repair_loop(svc: Services, member: str | None = None) -> RepairLoop:
    """The repair loop over `svc`'s engine and repair queue, leasing as `member` (a
    consumer's member id; None: this command's own, as `calsync repair` works)."""
    settings = svc.settings
    if member is None:
        member = f"{member_report(settings).member}-repair"
    config = RepairLoopConfig(
        concurrency=settings.repair_concurrency,
        poll_s=settings.repair_poll_s,
        lease_s=settings.repair_lease_s,
        places_per_account=places_per_account(
            settings.quota_per_account_per_min, settings.quota_max_wait_s
        ),
    )
    return RepairLoop(config, svc.engine, svc.repairs, svc.repository, svc.metrics, member)


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
    """The consume loop over the group's Kafka clients, on `svc`'s engine and metrics: the
    dead letters' rows in `svc`'s repository, their copies on CALSYNC_DLQ_TOPIC."""
    return ConsumerRunner(
        runner_config(settings),
        svc.engine,
        GroupConsumer(build_consumer(settings)),
        DeadLetters(
            svc.repository,
            DeadLetterProducer(build_producer(settings), settings.dlq_topic),
            svc.metrics,
            settings.infra_retry_max_s,
        ),
        member_report(settings),
        svc.metrics,
    )


def runner_config(settings: Settings) -> RunnerConfig:
    return RunnerConfig(
        topic=settings.topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.group_id,
        max_in_flight=settings.max_in_flight,
        commit_interval_s=settings.commit_interval_s,
        commit_timeout_s=settings.commit_timeout_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        stall_threshold_s=settings.stall_threshold_s,
        poison_attempts=settings.poison_attempts,
        infra_retry_max_s=settings.infra_retry_max_s,
    )


def member_report(settings: Settings) -> MemberReport:
    """This process as a member of its group (CALSYNC_INSTANCE_ID names it, when set)."""
    return MemberReport(
        session_conninfo(settings), settings.group_id, settings.topic, settings.instance_id
    )


def retention(settings: Settings, metrics: Metrics) -> Retention:
    """The group's retention passes, on connections of their own (a pass holds its lock on
    one for its whole length). A batch may take at most a third of the session's statement
    timeout (10 s when there is none): it is cut short rather than run long."""
    batch_timeout_s = (settings.db_statement_timeout_s or 30.0) / 3
    return Retention(
        RetentionPolicy(
            retention_days=settings.results_retention_days,
            past_days=settings.backfill_past_days,
            login_window_s=settings.http_login_window_s,
        ),
        RetentionStore(connections(settings), batch_timeout_s),
        metrics,
    )


def reconciler(svc: Services) -> Reconciler:
    """Reconcile over the services' Google calls and engine, with its own store (on the
    sync's pool; the schedule's lock on a connection of its own)."""
    return Reconciler(
        ReconcileConfig(deployment=svc.deployment.id, past_days=svc.settings.backfill_past_days),
        ReconcileStore(svc.repository, svc.connect),
        svc.google,
        svc.tokens,
        svc.calls,
        svc.engine,
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
        oauth=OAuthClient(oauth_config(svc.settings), svc.cipher),
        google=svc.google,
        tokens=svc.tokens,
        calls=svc.calls,
        engine=svc.engine,
        repairs=svc.repairs,
        deployment_id=svc.deployment.id,
    )


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
