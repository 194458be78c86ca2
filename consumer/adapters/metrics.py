"""Prometheus metrics (prometheus-client), one registry per consumer process.

Names follow Prometheus conventions (`calsync_` prefix, base units, `_total` on counters) and
labels are bounded: operation, outcome, method, status, state, error type, partition. Never
a booking or link id; an account only on `calsync_outstanding_work_by_account`, which carries
at most `OUTSTANDING_TOP_ACCOUNTS` series at a time (the accounts owed the most).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# The accounts `calsync_outstanding_work_by_account` shows at a time: an account label over
# thousands of accounts would be unbounded, and the few owed the most are the ones to see.
OUTSTANDING_TOP_ACCOUNTS = 10
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    records: int  # high watermark minus the next offset to record
    seconds: float  # age of the oldest fetched record not yet recorded (0 when none)


class _LagCollector(Collector):
    def __init__(self, source: Callable[[], list[PartitionLag]]) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        records = GaugeMetricFamily(
            "calsync_consumer_lag_records",
            "Records of an assigned partition not yet recorded",
            labels=["topic", "partition"],
        )
        seconds = GaugeMetricFamily(
            "calsync_consumer_lag_seconds",
            "Age of the oldest fetched record not yet recorded",
            labels=["topic", "partition"],
        )
        for lag in self._source():
            labels = [lag.topic, str(lag.partition)]
            records.add_metric(labels, lag.records)
            seconds.add_metric(labels, lag.seconds)
        yield records
        yield seconds


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "calsync_messages", "Kafka messages handled, by outcome", ["outcome"], registry=r
        )
        self.link_operations = Counter(
            "calsync_link_operations",
            "Per-link results, by operation and outcome",
            ["operation", "outcome"],
            registry=r,
        )
        self.google_requests = Histogram(
            "calsync_google_request_duration_seconds",
            "Google Calendar API calls, by method and status",
            ["method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.token_refreshes = Counter(
            "calsync_token_refreshes",
            "OAuth access token refreshes, by result",
            ["result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "calsync_dead_letters",
            "Messages dead-lettered, by error type",
            ["error_type"],
            registry=r,
        )
        self.in_flight = Gauge(
            "calsync_in_flight_messages", "Messages fetched and not yet recorded", registry=r
        )
        self.commits = Histogram(
            "calsync_offset_commit_duration_seconds",
            "Offset commits to Kafka",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rebalances = Counter(
            "calsync_rebalances", "Partition assignments and revocations", ["event"], registry=r
        )
        self.links = Gauge("calsync_links", "Calendar links, by state", ["state"], registry=r)
        self.fetch_flow = Counter(
            "calsync_fetch_flow",
            "Fetching paused (max_in_flight reached) and resumed",
            ["event"],
            registry=r,
        )
        self.quota_waits = Histogram(
            "calsync_quota_wait_seconds",
            "Time a Google call waited for its quota slot, by quota",
            ["quota"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.google_batches = Histogram(
            "calsync_google_batch_calls",
            "Calls per HTTP request to Google (1: a plain call, "
            "more: one request to the batch endpoint)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 1000),
            registry=r,
        )
        self.quota_pauses = Counter(
            "calsync_quota_pauses",
            "Quotas paused because Google said they were spent "
            "(quotaExceeded, dailyLimitExceeded), by quota",
            ["quota"],
            registry=r,
        )
        self.reconcile_drift = Counter(
            "calsync_reconcile_drift",
            "Drift found by reconciles, by kind (missing, changed, orphaned, duplicated; foreign: "
            "another deployment's events, never repaired)",
            ["kind"],
            registry=r,
        )
        self.reconcile_repaired = Counter(
            "calsync_reconcile_repaired",
            "Drift repaired by reconciles, by kind",
            ["kind"],
            registry=r,
        )
        self.retention_pruned = Counter(
            "calsync_retention_pruned",
            "Rows removed by the retention pass, by table",
            ["table"],
            registry=r,
        )
        self.quota_slowdowns = Counter(
            "calsync_quota_slowdowns",
            "Quotas slowed down after Google refused calls for rate limits, by quota",
            ["quota"],
            registry=r,
        )
        self._repair_gauges(r)

    def _repair_gauges(self, r: CollectorRegistry) -> None:
        self.repairs_waiting = Gauge(
            "calsync_repairs_waiting",
            "(link, booking) pairs left off their calendar, waiting for the repair loop, by reason",
            ["reason"],
            registry=r,
        )
        self.repairs = Counter(
            "calsync_repairs",
            "Repairs attempted by this process, by outcome",
            ["outcome"],
            registry=r,
        )
        # The group's figures: every process reports the same (aggregate with max, not sum).
        self.outstanding_work = Gauge(
            "calsync_outstanding_work",
            "Work the consumer group owes calendars: messages not committed (the group's lag "
            "at the broker) plus repairs due; the same in every process",
            registry=r,
        )
        self.outstanding_by_account = Gauge(
            "calsync_outstanding_work_by_account",
            f"Repairs due per Google account, for the {OUTSTANDING_TOP_ACCOUNTS} accounts owed "
            "the most; the same in every process",
            ["account"],
            registry=r,
        )

    def owed(self, total: int, by_account: Iterable[tuple[str, int]]) -> None:
        """The work owed, as last read: in all, and for the accounts owed the most."""
        self.outstanding_work.set(total)
        self.outstanding_by_account.clear()
        for account, due in by_account:
            self.outstanding_by_account.labels(account).set(due)

    def watch_lag(self, source: Callable[[], list[PartitionLag]]) -> None:
        self.registry.register(_LagCollector(source))

    def google_call(self, method: str, started: float, status: int | None) -> None:
        self.google_requests.labels(method, str(status) if status else "network").observe(
            time.perf_counter() - started
        )
