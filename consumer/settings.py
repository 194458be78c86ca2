"""The one settings object, read from CALSYNC_* environment variables at start-up.

Each field's description is what the README's settings table says of it (`make docs` writes
the table from them; a test fails when the two differ). Bootstrap slices the settings into
the small frozen configs each adapter and service takes.
"""

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

    database_url: str = Field(
        default="postgresql://postgres@localhost:5432/calsync",
        description="PostgreSQL",
    )
    kafka_bootstrap: str = Field(
        default="localhost:9092",
        description="Kafka bootstrap servers",
    )
    topic: str = Field(
        default="booking-events",
        description="booking events",
    )
    dlq_topic: str = Field(
        default="booking-events.dlq",
        description="dead letters",
    )
    group_id: str = Field(
        default="calendar-sync",
        description="consumer group",
    )
    instance_id: str | None = Field(
        default=None,
        description=(
            "static group membership (`group.instance.id`), unique per process: a restart within "
            "the session timeout keeps its partitions"
        ),
    )
    kafka_session_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "a member silent this long leaves the group and its partitions move (heartbeats every "
            "third of it)"
        ),
    )

    google_api_url: str = Field(
        default="https://www.googleapis.com/",
        description="Calendar API under `calendar/v3/`, batches under `batch/calendar/v3`",
    )
    google_token_url: str = Field(
        default="https://oauth2.googleapis.com/token",
        description="OAuth token endpoint",
    )
    google_client_id: str = Field(
        default="",
        description="the OAuth client's id (Google Cloud console)",
    )
    google_client_secret: SecretStr = Field(
        default=SecretStr(""),
        description="the OAuth client's secret",
    )
    google_auth_url: str = Field(
        default="https://accounts.google.com/o/oauth2/auth",
        description="Google's consent page",
    )
    google_revoke_url: str = Field(
        default="https://oauth2.googleapis.com/revoke",
        description="token revocation",
    )
    google_ca_bundle: str | None = Field(
        default=None,
        description=(
            "CA file to trust for Google's endpoints (the sandbox's own CA in tests and `make run`)"
        ),
        json_schema_extra={"readme_default": "system CAs"},
    )

    # Links: the OAuth connect flow, tokens at rest, and the HTTP service (`calsync serve`).
    token_key: SecretStr | None = Field(
        default=None,
        description=(
            "Fernet keys, comma-separated: the first encrypts tokens at rest, all decrypt "
            "(`calsync keys generate`)"
        ),
        json_schema_extra={"readme_default": "none (required)"},
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="bearer credential of the links API",
        json_schema_extra={"readme_default": "none (required by `serve`)"},
    )
    http_host: str = Field(
        default="127.0.0.1",
        description="where `calsync serve` listens (and the consumer's `/metrics`)",
    )
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="the port `calsync serve` listens on",
    )
    http_public_url: str | None = Field(
        default=None,
        description=(
            "how browsers reach `serve`; Google redirects to `<it>/oauth/callback` (register that "
            "URI on the OAuth client)"
        ),
        json_schema_extra={"readme_default": "`http://HOST:PORT`"},
    )
    oauth_state_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description=(
            "how long a started connection may wait for Google's redirect; also how long the "
            "calendar choice page that follows stays valid"
        ),
    )
    http_return_url: str | None = Field(
        default=None,
        description=(
            "embedding: after Google's consent, send the browser to this address (the booking "
            "platform's dashboard) instead of our pages, see [the pages](#the-pages-in-a-browser)"
        ),
    )
    http_session_ttl_s: float = Field(
        default=28_800.0,
        gt=0,
        description="how long a sign-in to the pages lasts (8 h)",
    )
    http_login_max_failures: int = Field(
        default=5,
        ge=1,
        description=(
            "failed sign-ins to the pages from one client address within the window before that "
            "address is refused (429) for a window, whatever it sends"
        ),
    )
    http_login_window_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "the window failed sign-ins are counted in, and how long an address that reached the "
            "limit is refused"
        ),
    )
    http_trusted_proxies: str = Field(
        default="",
        description=(
            "reverse proxies in front of `serve` (IP addresses or networks, comma-separated) "
            "whose `X-Forwarded-For` names the client address; empty: the peer address, "
            "`X-Forwarded-For` ignored"
        ),
    )

    @field_validator("http_trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        trusted_networks(value)  # refuses what is not an address or a network
        return value

    # The consumer's /metrics, /healthz and /readyz (on CALSYNC_HTTP_HOST).
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65535,
        description=(
            "the consumer's `/metrics`, `/healthz`, `/readyz` (on `CALSYNC_HTTP_HOST`); `0`: any "
            "free port"
        ),
    )
    stall_threshold_s: float = Field(
        default=300.0,
        gt=0,
        description=(
            "`/healthz` fails when a partition with lag has not moved its offset for this long"
        ),
    )

    # Concurrency and time budgets.
    max_in_flight: int = Field(
        default=1024,
        ge=1,
        description=(
            "messages in flight per process; beyond it fetching pauses (waiting work holds no "
            "connection)"
        ),
    )
    db_pool_size: int = Field(
        default=16,
        ge=2,
        description="PostgreSQL connections for syncing",
    )
    db_lock_timeout_s: float = Field(
        default=5.0,
        ge=0,
        description=(
            "PostgreSQL `lock_timeout` of every session the consumer, the CLI and the links API "
            "open (not `calsync migrate`'s): a statement waiting longer for a lock (a table "
            "someone locked) fails and is retried instead of hanging, a shutdown included; `0`: "
            "none (then set it on the role)"
        ),
    )
    db_statement_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="PostgreSQL `statement_timeout` of the same sessions; `0`: none",
    )
    google_concurrency: int = Field(
        default=64,
        ge=1,
        description=(
            "an upper bound, not a tuning knob: the most HTTP requests to Google a process has "
            "out at once (kept-alive connections of one pool). How many are out is measured "
            "([throughput](#throughput-and-make-bench))"
        ),
    )
    google_batch_size: int = Field(
        default=50,
        ge=1,
        le=1000,
        description=(
            "an upper bound: the most calls in one request to Google's batch endpoint (Google "
            "takes 1000, advises 50); the size in use follows how Google serves a batch; `1`: "
            "never batch"
        ),
    )
    google_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="per Google call",
    )
    retry_budget_s: float = Field(
        default=30.0,
        ge=0,
        description="time spent retrying a transient Google failure",
    )
    retry_initial_s: float = Field(
        default=0.5,
        gt=0,
        description=(
            "the first backoff of a transient Google failure's retries (full jitter, never below "
            "Retry-After)"
        ),
    )
    retry_max_s: float = Field(
        default=8.0,
        gt=0,
        description="the longest backoff between two of those retries",
    )
    token_refresh_margin_s: float = Field(
        default=300.0,
        ge=0,
        description="refresh tokens this close to expiry",
    )
    commit_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="offset commit cadence",
    )
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description=(
            "time in-flight work gets on shutdown or revocation; the process ends within this + "
            "10 s"
        ),
    )
    infra_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "the longest wait between two attempts at infrastructure work (the database or the "
            "broker away), retried without limit"
        ),
    )
    poison_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "attempts a message gets when it fails the same way each time (not an infrastructure "
            "fault) before it is dead-lettered as `internal_error`"
        ),
    )
    commit_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "an offset commit not answered in this time is given up (tried again at the next "
            "interval); commits never hold the poll loop"
        ),
    )

    # Google's quotas, kept group-wide (coordinated in PostgreSQL); 0: no limit.
    quota_per_account_per_min: int = Field(
        default=600,
        ge=0,
        description=(
            "Google calls per minute per Google account, for the whole consumer group; `0`: no "
            "limit"
        ),
    )
    quota_per_project_per_min: int = Field(
        default=10_000,
        ge=0,
        description=(
            "Google calls per minute for the OAuth client's project, for the whole group; `0`: no "
            "limit"
        ),
    )
    quota_use_share: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description=(
            "share of each quota the group aims at (the rest absorbs jitter against Google's "
            "sliding minute)"
        ),
    )
    quota_exceeded_pause_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "how long an account (`quotaExceeded`) or the project (`dailyLimitExceeded`) is "
            "paused when Google says its quota is spent"
        ),
    )
    quota_max_wait_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "a message whose account's quota queue would keep it longer leaves the in-flight "
            "window (deferred to the repair loop)"
        ),
    )

    deployment_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=DEPLOYMENT_ID_MAX,
        pattern=DEPLOYMENT_ID_PATTERN,
        description=(
            "which [deployment](#deployments) this is (production, staging, a region): every "
            "event written is tagged with it, and events tagged with another one are left alone; "
            "1-64 letters, digits, `.`, `_`, `~`, `-`"
        ),
        json_schema_extra={"readme_default": "the database's own (made by `calsync migrate`)"},
    )

    reconcile_interval_s: float = Field(
        default=86400.0,
        ge=0,
        description=(
            "how often the consumer group reconciles every active link with `--execute` (one "
            "process at a time); `0`: never"
        ),
    )
    backfill_past_days: float = Field(
        default=7.0,
        ge=0,
        description=(
            "the horizon: a link's backfill, reconcile and drift repair cover only bookings that "
            "end after now minus this many days (older ones are never created by them, and their "
            "events never touched); live messages are applied whatever their date"
        ),
    )
    results_retention_days: float = Field(
        default=90.0,
        ge=0,
        description="[retention](#retention): the group (one process at a time, hourly, in "
        "small batches) removes `sync_results` older than this many days, settled dead "
        "letters, finished reconcile runs and backfills, replays, and bookings unchanged for as "
        "long that can no longer need an event (not live, or ending before the horizon; never "
        "one whose event is still on a calendar or that a repair is owed for); `0`: never",
    )

    # The repair loop: every (link, booking) left off its calendar is re-driven until applied.
    repair_initial_backoff_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "the repair loop's first wait after a failure; it doubles with each failure after"
        ),
    )
    repair_max_backoff_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "the repair loop's longest wait between two attempts (never before a pause or Retry-"
            "After ends)"
        ),
    )
    repair_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="the longest a consumer waits before it looks again for repairs due (it "
        "looks again at once while it finds work, and waits longer each time, from 0.05 s up "
        "to this, while it finds none)",
    )
    repair_concurrency: int = Field(
        default=256,
        ge=1,
        description="repairs in flight per process (outside the message window)",
    )
    repair_lease_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a process holds a repair it took before another may take it",
    )

    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`json`, `console`, or `auto` (pretty on a terminal)",
    )
    log_level: str = Field(
        default="INFO",
        description="`DEBUG`, `INFO`, `WARNING`, `ERROR`",
    )

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
