"""The one settings object, read from CALSYNC_* environment variables at start-up."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urljoin

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A deployment id lands in Google's private extended properties (values up to 1024
# characters) and in URIs (`ce_source = calendar-sync/<id>`): short, and URI-unreserved
# characters only (RFC 3986), so it needs no escaping anywhere. sql/012 checks the same.
DEPLOYMENT_ID_PATTERN = r"^[A-Za-z0-9._~-]+$"
DEPLOYMENT_ID_MAX = 64


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CALSYNC_", extra="ignore")

    database_url: str = "postgresql://postgres@localhost:5432/calsync"
    kafka_bootstrap: str = "localhost:9092"
    topic: str = "booking-events"
    dlq_topic: str = "booking-events.dlq"
    group_id: str = "calendar-sync"
    instance_id: str | None = Field(
        default=None,
        description="Static group membership (group.instance.id): a restart "
        "within the session timeout keeps its partitions, no rebalance",
    )
    kafka_session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A member silent this long is dropped from the group "
        "and its partitions move (heartbeats every third of it)",
    )

    google_api_url: str = "https://www.googleapis.com/"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_client_id: str = ""
    google_client_secret: SecretStr = SecretStr("")
    google_auth_url: str = "https://accounts.google.com/o/oauth2/auth"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    google_ca_bundle: str | None = Field(
        default=None, description="CA file to trust for Google's endpoints; default: system CAs"
    )

    # Links: the OAuth connect flow, tokens at rest, and the HTTP service (`calsync serve`).
    token_key: SecretStr | None = Field(
        default=None, description="Fernet keys, comma-separated; the first encrypts"
    )
    admin_token: SecretStr | None = Field(default=None, description="Bearer for the HTTP API")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_public_url: str | None = Field(
        default=None, description="How browsers reach `calsync serve`; default http://host:port"
    )
    oauth_state_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="A started connection must come back from Google "
        "within this; so must the calendar choice that follows it",
    )
    http_return_url: str | None = Field(
        default=None,
        description="Embedding: after Google's consent, send the browser here "
        "(with link_id, state, account, activity_id in the query; or error) instead of "
        "showing our pages",
    )
    http_session_ttl_s: float = Field(
        default=28_800.0, gt=0, description="How long a sign-in to the pages lasts"
    )
    http_login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins to the pages from one client address within "
        "CALSYNC_HTTP_LOGIN_WINDOW_S before that address is refused (429) for the same time, "
        "whatever token it sends",
    )
    http_login_window_s: float = Field(
        default=900.0,
        gt=0,
        description="The window failed sign-ins are counted in, and how long an address "
        "that reached CALSYNC_HTTP_LOGIN_MAX_FAILURES is refused",
    )
    http_trusted_proxies: str = Field(
        default="",
        description="Reverse proxies in front of `calsync serve` (IP addresses or networks, "
        "comma-separated) whose X-Forwarded-For names the client address; empty: the client "
        "address is the connection's peer, and X-Forwarded-For is ignored",
    )

    @field_validator("http_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        trusted_networks(value)  # refuses what is not an address or a network
        return value

    # The consumer's /metrics, /healthz and /readyz (on CALSYNC_HTTP_HOST).
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="0: any free port")
    stall_threshold_s: float = Field(
        default=300.0,
        gt=0,
        description="/healthz fails when a partition with lag has not "
        "moved its offset for this long",
    )

    # Concurrency and time budgets.
    max_in_flight: int = Field(
        default=1024,
        ge=1,
        description="Messages in flight per process; beyond it, fetching "
        "pauses. Waiting work holds no connection, so this can be large: it is what lets "
        "other accounts' bookings go on while one account waits for its quota",
    )
    db_pool_size: int = Field(default=16, ge=2)
    db_lock_timeout_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a statement of ours waits for a lock before it fails "
        "(PostgreSQL lock_timeout, on every session the consumer, the CLI and the links API "
        "open; not calsync migrate's): a table locked by someone else (a CREATE INDEX "
        "without CONCURRENTLY, a long transaction) makes the work fail and be retried "
        "instead of hanging, a shutdown included; 0: no limit",
    )
    db_statement_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="The longest one statement of ours may run (PostgreSQL "
        "statement_timeout, on the same sessions); 0: no limit",
    )
    google_concurrency: int = Field(
        default=64,
        ge=1,
        description="Upper bound on HTTP requests to Google at once per "
        "process (kept-alive connections of one pool). The number in use is measured, not "
        "set: it follows Google's latency and the quota (consumer/concurrency.py); this "
        "only caps it",
    )
    google_batch_size: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Upper bound on calls in one request to "
        "Google's batch endpoint (Google takes up to 1000, advises 50); the size in use "
        "follows how Google serves a batch; 1: never batch",
    )
    google_timeout_s: float = Field(default=15.0, gt=0)
    retry_budget_s: float = Field(default=30.0, ge=0, description="Transient-failure retries.")
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=8.0, gt=0)
    token_refresh_margin_s: float = Field(default=300.0, ge=0)
    commit_interval_s: float = Field(default=0.5, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    infra_retry_max_s: float = Field(default=10.0, gt=0)
    poison_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts a message gets when it fails the same way each "
        "time (data PostgreSQL refuses, a bug of ours) before it is dead-lettered as "
        "internal_error; infrastructure faults are retried without limit",
    )
    commit_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="An offset commit not answered in this time is given "
        "up (and tried again at the next interval)",
    )

    # Google's quotas, kept group-wide (coordinated in PostgreSQL); 0: no limit.
    quota_per_account_per_min: int = Field(default=600, ge=0)
    quota_per_project_per_min: int = Field(default=10_000, ge=0)
    quota_use_share: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="Share of each quota the group aims at; the "
        "rest absorbs jitter against Google's sliding windows",
    )
    quota_exceeded_pause_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long an account (quotaExceeded, Calendar usage "
        "limits) or the project (dailyLimitExceeded) is paused when Google says its quota is "
        "spent; its links stay active and its work is deferred to the repair loop",
    )
    quota_max_wait_s: float = Field(
        default=5.0,
        gt=0,
        description="A message whose account's quota queue would keep it "
        "waiting longer than this leaves the in-flight window: its work is deferred to the "
        "repair loop, so one busy account never holds the others",
    )

    deployment_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=DEPLOYMENT_ID_MAX,
        pattern=DEPLOYMENT_ID_PATTERN,
        description="Which deployment this is (production, staging, a region): every "
        "event written carries it (private extended property `deployment`), and reconcile "
        "and disconnect leave events of another deployment alone. 1-64 letters, digits, "
        "'.', '_', '~' or '-'. Default: the id `calsync migrate` made for the database "
        "(`calsync status` shows it); a copy of a database that runs as a deployment of "
        "its own needs its own",
    )

    reconcile_interval_s: float = Field(
        default=86400.0,
        ge=0,
        description="How often the consumer group reconciles every "
        "active link's calendar with --execute (one process at a time); 0: never",
    )
    backfill_past_days: float = Field(
        default=7.0,
        ge=0,
        description="The horizon: a link's backfill, reconcile and any drift repair cover "
        "only bookings that end after now minus this many days (older ones are never "
        "created by them, and their events never touched); live messages are applied "
        "whatever their date",
    )
    results_retention_days: float = Field(
        default=90.0,
        ge=0,
        description="Retention: the consumer group removes (one process at a time, hourly, in "
        "small batches) sync_results recorded longer ago than this many days, settled dead "
        "letters, finished reconcile runs and backfills, replays, and bookings that can no "
        "longer need an event (not live, or ending before the horizon; never one whose event "
        "is still on a calendar or that a repair is owed for) unchanged for as long; 0: never",
    )

    # The repair loop: every (link, booking) left off its calendar is re-driven until applied.
    repair_initial_backoff_s: float = Field(default=30.0, gt=0)
    repair_max_backoff_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest wait between two attempts of a repair "
        "(exponential backoff; never before a pause or Retry-After ends)",
    )
    repair_poll_s: float = Field(
        default=2.0, gt=0, description="How often each consumer looks for repairs due"
    )
    repair_concurrency: int = Field(
        default=256,
        ge=1,
        description="Repairs in flight per process (outside the in-flight "
        "window of messages: they wait for their account's quota slots)",
    )
    repair_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a process holds a repair it took before "
        "another may take it (a process that dies mid-repair)",
    )

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    @property
    def oauth_redirect_uri(self) -> str:
        base = self.http_public_url or f"http://{self.http_host}:{self.http_port}"
        return base.rstrip("/") + "/oauth/callback"

    @property
    def calendar_api_endpoint(self) -> str:
        return urljoin(_with_slash(self.google_api_url), "calendar/v3/")

    @property
    def calendar_batch_uri(self) -> str:
        return urljoin(_with_slash(self.google_api_url), "batch/calendar/v3")


def trusted_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CALSYNC_HTTP_TRUSTED_PROXIES: `10.0.0.5, 10.1.0.0/16, ::1` -> networks."""
    networks = []
    for item in text.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or network: {item.strip()!r}") from None
    return networks


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


ENV_PREFIX = str(Settings.model_config.get("env_prefix", "CALSYNC_"))


def env_name(field: str) -> str:
    """`retry_budget_s` -> `CALSYNC_RETRY_BUDGET_S`."""
    if field not in Settings.model_fields:
        raise KeyError(f"no setting {field!r}")
    return ENV_PREFIX + field.upper()


def env_value(value: object) -> str:
    """A setting's value as pydantic-settings reads it back from the environment."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list | dict | tuple | set):
        return json.dumps(sorted(value) if isinstance(value, set) else value)
    return str(value)


# What a process started by another (a test, the demo, the bench) must share with it to work
# on the same stack: where each outside system is, the secrets, and which deployment it is.
STACK_SETTINGS = (
    "database_url",
    "kafka_bootstrap",
    "topic",
    "dlq_topic",
    "group_id",
    "google_api_url",
    "google_token_url",
    "google_auth_url",
    "google_revoke_url",
    "google_client_id",
    "google_client_secret",
    "google_ca_bundle",
    "token_key",
    "deployment_id",
)


def settings_env(settings: Settings, fields: Iterable[str] | None = None) -> dict[str, str]:
    """The one Settings -> environment map: `CALSYNC_*` variables for `fields` (default:
    every setting) of `settings`, what a process started with them (`calsync consume`,
    `calsync serve`, a CLI command) must be given; a setting that is None is left out (the
    process takes its default, which is None)."""
    names = Settings.model_fields if fields is None else fields
    answer = {}
    for field in names:
        value = getattr(settings, field)
        if value is not None:
            answer[env_name(field)] = env_value(value)
    return answer
