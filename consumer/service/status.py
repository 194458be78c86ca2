"""`calsync status`: one screen for on-call (and `--json` for machines)."""

from __future__ import annotations

from typing import Any

import psycopg
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from psycopg.rows import dict_row

from consumer.adapters.postgres.link_store import Backfill
from consumer.adapters.postgres.members import alive_members
from consumer.domain.errors import OpsError
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
_DLQ = (
    "SELECT count(*) FILTER (WHERE replayed_at IS NULL) AS waiting, count(*) AS total,"
    " min(recorded_at) FILTER (WHERE replayed_at IS NULL) AS oldest FROM dead_letters"
)


async def collect(settings: Settings) -> dict[str, Any]:
    group, topic = settings.group_id, settings.topic
    alive = await alive_members(settings.database_url, group)
    members = [{"member": m.member, "host": m.host, "pid": m.pid, "partitions": m.partitions,
                "seen_at": m.seen_at.isoformat()} for m in alive]
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
            lag.append({"partition": tp.partition, "committed": committed, "end": ends[tp],
                        "lag": ends[tp] - (committed or 0)})
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
    async with await psycopg.AsyncConnection.connect(settings.database_url,
                                                     row_factory=dict_row) as conn:
        links = await (await conn.execute(_LINKS)).fetchall()
        failures = await (await conn.execute(_FAILURES)).fetchall()
        dlq = await (await conn.execute(_DLQ)).fetchone()
        repairs = await repair_summary(conn)
        running = await (await conn.execute(_RUNNING_BACKFILLS)).fetchall()
        ceiling = quota_ceiling(settings)
        backfills = [{k: v for k, v in progress(Backfill(**row), ceiling).items()
                      if k in ("id", "link_id", "status", "done", "total", "percent",
                               "rate_per_s", "estimated_end", "remaining_s")}
                     for row in running]
        last_reconcile = await latest_reconcile(conn)
    assert dlq is not None
    return {
        "group": group, "topic": topic, "members": members, "broker_group": broker,
        "partitions": lag, "total_lag": sum(p["lag"] for p in lag), "stalls": stalls,
        "links": links, "failures_last_hour": failures, "repairs": repairs,
        "reconcile": last_reconcile, "backfills": backfills,
        "dead_letters": {"waiting": dlq["waiting"], "total": dlq["total"],
                         "oldest_waiting": dlq["oldest"].isoformat() if dlq["oldest"] else None},
    }


def render(status: dict[str, Any]) -> str:
    lines = [f"group {status['group']} on topic {status['topic']}: "
             f"{len(status['members'])} live member(s) "
             f"(broker: {status['broker_group']['state']}, "
             f"{status['broker_group']['members']} listed)"]
    for m in status["members"]:
        lines.append(f"  {m['member']:40} partitions {m['partitions']}  seen {m['seen_at'][:19]}")
    lines.append(f"lag: {status['total_lag']} message(s)")
    lines.append("  " + "  ".join(f"p{p['partition']}={p['lag']}" for p in status["partitions"]))
    for stall in status["stalls"]:
        lines.append(f"  STALLED p{stall['partition']} at offset {stall['offset']} "
                     f"(key {stall['key']!r}) for {stall['waiting_s']:.0f}s on "
                     f"{stall['member']}: {stall['cause']}")
    lines.append("links:")
    for row in status["links"]:
        reasons = f"  ({'; '.join(row['reasons'])})" if row["reasons"] else ""
        lines.append(f"  {row['state']:22} {row['links']}{reasons}")
    lines.append("failures in the last hour:" if status["failures_last_hour"]
                 else "failures in the last hour: none")
    for row in status["failures_last_hour"]:
        lines.append(f"  {row['outcome']:8} {row['reason']:28} {row['results']}")
    repairs = status["repairs"]
    if repairs["waiting"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in repairs["by_reason"].items())
        lines.append(f"repairs: {repairs['waiting']} (link, booking) pair(s) not on their "
                     f"calendar yet, {repairs['due']} due now, oldest "
                     f"{repairs['oldest_age_s']:.0f}s ago ({reasons})")
    else:
        lines.append("repairs: none waiting")
    for backfill in status["backfills"]:
        left = (f", about {backfill['remaining_s']:.0f}s left" if backfill["remaining_s"]
                else "")
        lines.append(f"backfill #{backfill['id']} of link {backfill['link_id']}: "
                     f"{backfill['status']}, {backfill['done']}/{backfill['total']}{left}")
    run = status["reconcile"]
    if run is None:
        lines.append("reconcile: never run")
    else:
        found = ", ".join(f"{k} {v}" for k, v in sorted(run["found"].items())) or "no drift"
        fixed = sum(run["repaired"].values())
        when = (f"running since {run['started_at'][:19]}" if run["running"]
                else f"finished {run['finished_at'][:19]}")
        lines.append(f"reconcile #{run['id']} ({run['trigger']}, "
                     f"{'executed' if run['executed'] else 'dry run'}): {when}, "
                     f"{run['links_done']}/{run['links_total']} link(s), {found}"
                     + (f", repaired {fixed}" if run["executed"] else "")
                     + (f"; FAILED: {run['error']}" if run["error"] else ""))
    dlq = status["dead_letters"]
    lines.append(f"dead letters: {dlq['waiting']} waiting (of {dlq['total']})"
                 + (f", oldest {dlq['oldest_waiting'][:19]}" if dlq["oldest_waiting"] else ""))
    return "\n".join(lines)
