"""What SREs see: metrics scraped over HTTP, health and readiness, graceful hand-overs."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

from calsync_dev.stack import free_port
from consumer.adapters.kafka import ensure_topics
from consumer.adapters.metrics import OUTSTANDING_TOP_ACCOUNTS
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event
from tests.plugins.ops_http import probe, scrape, value


async def test_metrics_move_as_messages_flow(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    port = free_port()
    async with env.consumer(metrics_port=port):
        await env.publish(booking_event("bk_1", 1))
        await wait_until(lambda: len(env.events(email)) == 1, what="the event")
        await wait_until(env.all_committed, what="offsets committed")
        first = await scrape(port)
        assert value(first, "calsync_messages_total", outcome="synced") == 1
        assert (
            value(first, "calsync_link_operations_total", operation="create", outcome="applied")
            == 1
        )
        assert (
            value(
                first,
                "calsync_google_request_duration_seconds_count",
                method="events.insert",
                status="200",
            )
            == 1
        )
        assert value(first, "calsync_token_refreshes_total", result="ok") == 1
        assert value(first, "calsync_rebalances_total", event="assigned") >= 1
        assert value(first, "calsync_offset_commit_duration_seconds_count") >= 1
        assert value(first, "calsync_in_flight_messages") == 0
        partitions = {
            dict(ls)["partition"] for (n, ls) in first if n == "calsync_consumer_lag_records"
        }
        assert partitions == {"0", "1", "2"}
        assert value(first, "calsync_consumer_lag_records") == 0

        await env.publish(booking_event("bk_1", 2, "booking.updated", customer_name="Ann"))
        await env.publish(b"{not json", key="bk_x")
        await wait_until(lambda: env.query("SELECT 1 FROM dead_letters"), what="dead letter")
        await wait_until(env.all_committed, what="offsets committed")
        second = await scrape(port)
        assert value(second, "calsync_messages_total", outcome="synced") == 2
        assert value(second, "calsync_messages_total", outcome="dead_lettered") == 1
        assert value(second, "calsync_dead_letters_total", error_type="not_json") == 1
        assert (
            value(second, "calsync_link_operations_total", operation="update", outcome="applied")
            == 1
        )
        assert value(second, "calsync_google_request_duration_seconds_count") == 2
        await wait_until(lambda: scrape_links(port), timeout_s=30, what="links gauge")
        # The work owed, refreshed with the other gauges: the group's figure, one series.
        gauges = await scrape(port)
        assert ("calsync_outstanding_work", ()) in gauges
    # Bounded labels only: no booking or link ids, and an account only on the work owed by
    # account, at most OUTSTANDING_TOP_ACCOUNTS series of it.
    by_account = [n for (n, _) in second if n == "calsync_outstanding_work_by_account"]
    assert len(by_account) <= OUTSTANDING_TOP_ACCOUNTS
    labels = {k for (n, ls) in second for k, _ in ls if n != "calsync_outstanding_work_by_account"}
    assert labels <= {
        "outcome",
        "operation",
        "method",
        "status",
        "result",
        "error_type",
        "event",
        "state",
        "topic",
        "partition",
        "quota",
        "le",
    }


async def scrape_links(port: int) -> bool:
    return value(await scrape(port), "calsync_links", state="active") == 1


async def test_health_and_readiness_follow_the_database(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    port = free_port()
    async with env.consumer(metrics_port=port, stall_threshold_s=1.0, infra_retry_max_s=0.5):
        status, body = await wait_until(lambda: ready(port), what="ready")
        assert body["checks"] == {"consumer": "ok", "database": "ok", "broker": "ok"}
        assert (await probe(port, "/healthz"))[0] == 200
        with psycopg.connect(
            env.database_url.replace(f"/{env.name}?", "/postgres?"), autocommit=True
        ) as admin:
            admin.execute(f'ALTER DATABASE "{env.name}" ALLOW_CONNECTIONS false'.encode())
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (env.name,),
            )
            try:
                status, body = await probe(port, "/readyz")
                assert status == 503 and body["checks"]["database"].startswith("unreachable")
                assert body["checks"]["broker"] == "ok"
                assert (await probe(port, "/healthz"))[0] == 200  # alive, just not ready
                # A message that cannot be recorded: its partition stalls, liveness fails.
                await env.publish(booking_event("bk_1", 1))
                status, body = await wait_until(lambda: unhealthy(port), what="a stall")
                assert body["checks"]["partitions"].startswith("stalled")
            finally:
                admin.execute(f'ALTER DATABASE "{env.name}" ALLOW_CONNECTIONS true'.encode())
        await wait_until(lambda: ready(port), what="ready again")
        await wait_until(env.all_committed, what="the message recorded")
        assert (await probe(port, "/healthz"))[0] == 200
        assert len(env.events(email)) == 1


async def unhealthy(port: int) -> tuple[int, dict[str, Any]] | None:
    status, body = await probe(port, "/healthz")
    return (status, body) if status == 503 else None


async def ready(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        status, body = await probe(port, "/readyz")
    except aiohttp.ClientConnectorError:  # not listening yet
        return None
    return (status, body) if status == 200 else None


def google_writes(env: Env, since: float) -> Counter[tuple[str, str | None]]:
    calls = env.sandbox.calls(since=since, detail=True)["calls"]
    return Counter(
        (c["op"], c["event_id"])
        for c in calls
        if c["op"] in ("events.insert", "events.update", "events.delete")
    )


async def test_rebalance_and_shutdown_under_load_repeat_no_google_call(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    env.sandbox.configure(latency_s=0.02)
    since = (env.sandbox.calls())["now"]
    bookings = [f"bk_{i}" for i in range(60)]
    try:
        async with env.consumer() as first_stop:
            for booking in bookings[:20]:
                await env.publish(booking_event(booking, 1))
            async with env.consumer():  # joins mid-stream: a rebalance
                for booking in bookings[20:40]:
                    await env.publish(booking_event(booking, 1))
                first_stop.set()  # the first one shuts down cleanly mid-stream
                for booking in bookings[40:]:
                    await env.publish(booking_event(booking, 1))
                await wait_until(
                    lambda: len(env.events(email)) == 60, timeout_s=60, what="60 events"
                )
                await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.configure(latency_s=0.0)
    writes = google_writes(env, since)
    assert sum(writes.values()) == 60
    repeated = [(key, count) for key, count in writes.items() if count != 1]
    assert not repeated
    assert {op for op, _ in writes} == {"events.insert"}
    assert len(env.results()) == 60


async def test_three_consumers_on_twelve_partitions_with_members_joining_and_leaving(
    env: Env, tmp_path: Path
) -> None:
    env.settings = env.settings.model_copy(update={"topic": f"{env.name}.wide"})
    await ensure_topics(env.settings.kafka_bootstrap, [env.settings.topic], 12)
    owner, owner_refresh = env.account("owner")
    manager, manager_refresh = env.account("manager")
    await env.link(owner, owner_refresh)
    await env.link(manager, manager_refresh)
    bookings = [f"bk_{i}" for i in range(48)]

    async def publish(batch: list[str], version: int = 1) -> None:
        for booking in batch:
            await env.publish(
                booking_event(
                    booking,
                    version,
                    "booking.updated" if version > 1 else "booking.created",
                    customer_name=f"Customer v{version}",
                )
            )

    logs = [tmp_path / f"member-{i}.log" for i in range(3)]
    since = env.sandbox.calls()["now"]
    members = [env.start_process(logs[0])]
    try:
        await publish(bookings[:12])
        members += [env.start_process(logs[1]), env.start_process(logs[2])]  # join
        await publish(bookings[12:24])
        await publish(bookings[:12], version=2)
        await wait_until(
            lambda: "partitions_assigned" in logs[2].read_text(),
            timeout_s=30,
            what="the third member to join",
        )
        members[2].send_signal(signal.SIGTERM)  # a member leaves mid-stream
        await publish(bookings[24:36])
        await asyncio.sleep(3)
        members[0].send_signal(signal.SIGTERM)  # and another
        await publish(bookings[36:])
        await wait_until(
            lambda: len(env.events(manager)) == 48, timeout_s=90, what="48 events on each calendar"
        )
        await wait_until(env.all_committed, timeout_s=60, what="offsets committed")
    finally:
        for member in members:
            member.terminate()
        for member in members:
            assert await asyncio.to_thread(member.wait, 30) == 0
    for email in (owner, manager):
        events = env.events(email)
        assert Counter(e["extendedProperties"]["private"]["booking_id"] for e in events) == (
            Counter({b: 1 for b in bookings})
        )
        updated = {
            e["extendedProperties"]["private"]["booking_id"]
            for e in events
            if e["summary"].endswith("Customer v2")
        }
        assert updated == set(bookings[:12])
    assert not env.query("SELECT 1 FROM sync_results WHERE outcome = 'failed'")
    # Members left with SIGTERM mid-stream: not one Google call was repeated.
    writes = google_writes(env, since)
    assert Counter(op for op, _ in writes.elements()) == {"events.insert": 96, "events.update": 24}
    assert all(count == 1 for count in writes.values())
    # Partitions were spread: every member was assigned some, together all twelve.
    assigned = [assigned_partitions(path) for path in logs]
    assert all(assigned), assigned
    assert set().union(*assigned) == set(range(12))


def assigned_partitions(log_path: Path) -> set[int]:
    partitions: set[int] = set()
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"partitions_assigned"' in line:
            partitions |= set(json.loads(line)["partitions"])
    return partitions


async def test_logs_are_json_with_context_and_quiet_per_message(env: Env, tmp_path: Path) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    env.sandbox.add_fault(500, count=1000, account=email, path_contains="bk-fail")
    log_path = tmp_path / "consumer.log"
    process = env.start_process(log_path, CALSYNC_RETRY_BUDGET_S="0.3")
    try:
        for number in range(10):
            await env.publish(booking_event(f"bk_{number}", 1))
        await wait_until(lambda: len(env.events(email)) == 10, what="10 events")
        env.sandbox.add_fault(500, count=1000, account=email, method="POST")
        await env.publish(booking_event("bk_fail", 1))
        await wait_until(lambda: env.results("bk_fail"), what="the failure recorded")
        await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.clear_faults()
        process.terminate()
        assert await asyncio.to_thread(process.wait, 30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    failures = [line for line in lines if line["event"] == "link_sync_failed"]
    assert len(failures) == 1
    failure = failures[0]
    assert failure["level"] == "warning" and "500" in failure["cause"]
    assert (failure["topic"], failure["booking_id"], failure["link_id"]) == (
        env.settings.topic,
        "bk_fail",
        link_id,
    )
    assert isinstance(failure["partition"], int) and isinstance(failure["offset"], int)
    info = [line for line in lines if line["level"] == "info"]
    assert len(info) < 11  # start-up, assignment, a token refresh: nothing per message
