"""`calsync status`: what on-call reads first, gathered from the broker and the database
(`consumer.entrypoints.text` renders it as one screen, `--json` dumps it); and the gauges a
consumer refreshes from the same sources, among them the work owed (`outstanding`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog

from consumer.adapters.metrics import OUTSTANDING_TOP_ACCOUNTS, Metrics
from consumer.domain.models import LinkState
from consumer.domain.records import Member, ReconcileRunRecord, RepairCount, RepairsDue
from consumer.service.answers import (
    DeadLetterCounts,
    Outstanding,
    PartitionLag,
    ReconcileRun,
    RepairSummary,
    Status,
)
from consumer.service.ports import GroupAdmin, OpsRecords, RepairQueue
from consumer.service.progress import progress

log = structlog.get_logger(__name__)
# What the status shows of each backfill's progress.
_BACKFILL_FIELDS = {
    "id",
    "link_id",
    "status",
    "done",
    "total",
    "percent",
    "rate_per_s",
    "estimated_end",
    "remaining_s",
}


async def collect(
    store: OpsRecords,
    admin: GroupAdmin,
    group: str,
    topic: str,
    quota_ceiling_per_s: float | None,
    deployment_id: str | None,
    repairs: RepairQueue,
) -> Status:
    """`quota_ceiling_per_s`: the most calls a second one account's quota allows the group,
    which bounds a backfill's estimated end; `deployment_id`: CALSYNC_DEPLOYMENT_ID (None:
    the database's own); `repairs`: the repair queue (what is due, for `outstanding`)."""
    ours = await store.deployment(deployment_id)
    alive = await store.alive_members(group)
    members = [_member(m) for m in alive]
    # What holds a partition back, as its member last reported it: the oldest unrecorded
    # message (topic, partition, offset, key) and why it waits.
    stalls = [{**stall, "member": m.member} for m in alive for stall in m.stalls]
    lag = await partition_lag(admin, group, topic)
    at_broker = await admin.group(group)
    overview = await store.overview()
    backfills = [
        progress(b, quota_ceiling_per_s).model_dump(include=_BACKFILL_FIELDS)
        for b in overview.running_backfills
    ]
    tally = overview.dead_letters
    total_lag = sum(p.lag for p in lag)
    due = await repairs.due(OUTSTANDING_TOP_ACCOUNTS)
    return Status(
        deployment_id=ours.id,
        deployment_id_source=ours.source,
        group=group,
        topic=topic,
        members=members,
        broker_group={"state": at_broker.state, "members": at_broker.members},
        partitions=lag,
        total_lag=total_lag,
        stalls=stalls,
        links=overview.links,
        failures_last_hour=overview.failures_last_hour,
        repairs=repair_summary(overview.repairs),
        reconcile=reconcile_run(overview.latest_reconcile),
        backfills=backfills,
        dead_letters=DeadLetterCounts(
            waiting=tally.waiting, total=tally.total, oldest_waiting=tally.oldest_waiting
        ),
        outstanding=outstanding(total_lag, due),
    )


def outstanding(messages: int, due: RepairsDue) -> Outstanding:
    """The work owed: `messages` not committed (the group's lag) plus the repairs `due`."""
    return Outstanding(
        total=messages + due.total,
        messages=messages,
        repairs_due=due.total,
        by_account=dict(due.by_account),
    )


def _member(member: Member) -> dict[str, Any]:
    return {
        "member": member.member,
        "host": member.host,
        "pid": member.pid,
        "partitions": member.partitions,
        "seen_at": member.seen_at.isoformat(),
    }


async def partition_lag(admin: GroupAdmin, group: str, topic: str) -> list[PartitionLag]:
    """Per partition of `topic`, the messages the group has not committed yet."""
    return [
        PartitionLag(
            partition=p.partition,
            committed=p.committed,
            end=p.latest,
            lag=p.latest - (p.committed or 0),
        )
        for p in await admin.offsets(group, topic)
    ]


async def group_lag(admin: GroupAdmin, group: str, topic: str) -> int:
    """Messages of `topic` the group has not committed yet, on every partition (whichever
    member holds it, or none)."""
    return sum(p.lag for p in await partition_lag(admin, group, topic))


def repair_summary(counts: list[RepairCount]) -> RepairSummary:
    """The repairs waiting: in all, due now, the oldest's age, by reason."""
    oldest = min(counts, key=lambda c: c.oldest, default=None)
    age = round((oldest.now - oldest.oldest).total_seconds(), 1) if oldest else None
    return RepairSummary(
        waiting=sum(c.waiting for c in counts),
        due=sum(c.due for c in counts),
        oldest_age_s=age,
        by_reason={c.reason: c.waiting for c in counts},
    )


def reconcile_run(run: ReconcileRunRecord | None) -> ReconcileRun | None:
    if run is None:
        return None
    return ReconcileRun(
        id=run.id,
        trigger=run.trigger,
        executed=run.executed,
        started_at=run.started_at,
        finished_at=run.finished_at,
        running=run.finished_at is None,
        links_done=run.links_done,
        links_total=run.links_total,
        events_seen=run.events_seen,
        found=run.found,
        repaired=run.repaired,
        progress=run.progress,
        error=run.error,
    )


@dataclass(frozen=True)
class GaugeSources:
    """Where the gauges are read: the database as on-call reads it, the repair queue, and
    the broker (the group's lag)."""

    store: OpsRecords
    repairs: RepairQueue
    admin: GroupAdmin


async def refresh_gauges(
    metrics: Metrics, sources: GaugeSources, group: str, topic: str, every_s: float = 15.0
) -> None:
    """Until cancelled, every `every_s`: links by state and repairs waiting by reason, from
    the database; and the work owed (the group's lag at the broker plus repairs due), the
    group's figure, the same in every process."""
    while True:
        try:
            async with asyncio.timeout(every_s):
                counts = await sources.store.link_state_counts()
                waiting = await sources.store.repair_counts()
            for state in LinkState:
                metrics.links.labels(state.value).set(counts.get(state.value, 0))
            metrics.repairs_waiting.clear()
            for repair in waiting:
                metrics.repairs_waiting.labels(repair.reason).set(repair.waiting)
        except Exception as exc:  # the database: seen elsewhere; the gauges wait for it
            log.debug("gauges_not_refreshed", cause=type(exc).__name__)
        try:
            async with asyncio.timeout(every_s):
                owed = outstanding(
                    await group_lag(sources.admin, group, topic),
                    await sources.repairs.due(OUTSTANDING_TOP_ACCOUNTS),
                )
            metrics.owed(owed.total, owed.by_account.items())
        except Exception as exc:  # the broker or the database: the figure waits for both
            log.debug("outstanding_not_refreshed", cause=type(exc).__name__)
        await asyncio.sleep(every_s)
