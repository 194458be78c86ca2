"""`calsync status`: what on-call reads first, gathered from the broker and the database
(`consumer.entrypoints.text` renders it as one screen, `--json` dumps it)."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.adapters.postgres.connections import Connect, connector, session_conninfo
from consumer.adapters.postgres.link_store import Backfill
from consumer.adapters.postgres.members import alive_members
from consumer.domain.errors import OpsError
from consumer.service.answers import DeadLetterCounts, PartitionLag, Status
from consumer.service.operations import kafka_probe
from consumer.service.progress import progress, quota_ceiling
from consumer.service.reconcile import latest_run as latest_reconcile
from consumer.service.repairs import summary as repair_summary
from consumer.settings import Settings

_LINKS = (
    "SELECT state, count(*) AS links, array_remove(array_agg(DISTINCT state_reason), NULL)"
    " AS reasons FROM calendar_links GROUP BY state ORDER BY state"
)
_FAILURES = (
    "SELECT reason, outcome, count(*) AS results FROM sync_results WHERE outcome IN"
    " ('failed', 'skipped', 'deferred') AND recorded_at > now() - interval '1 hour'"
    " GROUP BY reason, outcome ORDER BY count(*) DESC"
)
# Backfills under way (or whose process stopped: they show as stalled), with their progress.
_RUNNING_BACKFILLS = (
    "SELECT id, link_id, calendar_id, calendar_name, trigger, total, done, counts,"
    " started_at, updated_at, finished_at, error, now() AS now FROM backfills"
    " WHERE finished_at IS NULL AND started_at > now() - interval '1 day' ORDER BY id"
)
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
_DLQ = (
    "SELECT count(*) FILTER (WHERE replayed_at IS NULL) AS waiting, count(*) AS total,"
    " min(recorded_at) FILTER (WHERE replayed_at IS NULL) AS oldest FROM dead_letters"
)


async def collect(settings: Settings, connect: Connect | None = None) -> Status:
    # Bootstrap hands in the process's connection factory; a caller with only the settings
    # (a script written against the earlier collect(settings)) gets one of its own.
    connect = connect or connector(session_conninfo(settings))
    group, topic = settings.group_id, settings.topic
    alive = await alive_members(connect, group)
    members = [
        {
            "member": m.member,
            "host": m.host,
            "pid": m.pid,
            "partitions": m.partitions,
            "seen_at": m.seen_at.isoformat(),
        }
        for m in alive
    ]
    # What holds a partition back, as its member last reported it: the oldest unrecorded
    # message (topic, partition, offset, key) and why it waits.
    stalls = [{**stall, "member": m.member} for m in alive for stall in m.stalls]
    probe = await kafka_probe(settings, group)
    try:
        if topic not in await probe.topics():
            raise OpsError(f"unknown topic {topic!r}")
        tps = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
        ends = await probe.end_offsets(tps)
        lag = []
        for tp in tps:
            committed = await probe.committed(tp)
            lag.append(
                PartitionLag(
                    partition=tp.partition,
                    committed=committed,
                    end=ends[tp],
                    lag=ends[tp] - (committed or 0),
                )
            )
    finally:
        await probe.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = (await admin.describe_consumer_groups([group]))[0].groups[0]
        broker: dict[str, Any] = {"state": described[2], "members": len(described[5])}
    except (KafkaError, IndexError):
        broker = {"state": "unknown", "members": None}
    finally:
        await admin.close()
    async with connect() as conn:
        links = await (await conn.execute(_LINKS)).fetchall()
        failures = await (await conn.execute(_FAILURES)).fetchall()
        dlq = await (await conn.execute(_DLQ)).fetchone()
        repairs = await repair_summary(conn)
        running = await (await conn.execute(_RUNNING_BACKFILLS)).fetchall()
        ceiling = quota_ceiling(settings)
        backfills = [
            progress(Backfill(**row), ceiling).model_dump(include=_BACKFILL_FIELDS)
            for row in running
        ]
        last_reconcile = await latest_reconcile(conn)
    assert dlq is not None
    return Status(
        group=group,
        topic=topic,
        members=members,
        broker_group=broker,
        partitions=lag,
        total_lag=sum(p.lag for p in lag),
        stalls=stalls,
        links=links,
        failures_last_hour=failures,
        repairs=repairs,
        reconcile=last_reconcile,
        backfills=backfills,
        dead_letters=DeadLetterCounts(
            waiting=dlq["waiting"], total=dlq["total"], oldest_waiting=dlq["oldest"]
        ),
    )
