"""Throughput machinery, shown to work (never timed): group-wide quotas over three
processes, an account throttled by Google not holding up the others, and fetching paused
and resumed under back-pressure."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from consumer.adapters.kafka import ensure_topics
from consumer.bootstrap import consumer_runner, services
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event

SHARE = 0.97  # the default CALSYNC_QUOTA_USE_SHARE


def latest_assignments(logs: list[Path]) -> list[set[int]]:
    """Each member's latest assignment, from its JSON log."""
    latest: list[set[int]] = []
    for path in logs:
        mine: set[int] = set()
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith("{") and '"partitions_assigned"' in line:
                mine = set(json.loads(line)["partitions"])
        latest.append(mine)
    return latest


@pytest.mark.parametrize(
    ("scope", "per_account", "per_project"), [("account", 60, 0), ("project", 0, 120)]
)
async def test_a_quota_holds_for_the_whole_group_of_three_processes(
    env: Env, tmp_path: Path, scope: str, per_account: int, per_project: int
) -> None:
    env.settings = env.settings.model_copy(update={"topic": f"{env.name}.quota"})
    await ensure_topics(env.settings.kafka_bootstrap, [env.settings.topic], 6)
    accounts = [env.account(f"q{n}") for n in range(3)]
    emails = {email for email, _ in accounts}
    for email, refresh in accounts:  # every booking: one call per account
        await env.link(email, refresh)
    for n in range(60):  # a backlog far longer than the test watches
        await env.publish(booking_event(f"bk_{n}"))
    # The sandbox refuses beyond the same quota, per sliding minute, as Google does.
    env.sandbox.configure(
        quota_per_account_per_min=per_account or None, quota_per_project_per_min=per_project or None
    )
    env.sandbox.reset_quota()  # earlier tests' calls do not count
    logs = [tmp_path / f"member-{n}.log" for n in range(3)]
    members = [
        env.start_process(
            path,
            CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN=str(per_account),
            CALSYNC_QUOTA_PER_PROJECT_PER_MIN=str(per_project),
            CALSYNC_SHUTDOWN_GRACE_S="0.5",
        )
        for path in logs
    ]
    try:
        await wait_until(
            lambda: (
                all(latest_assignments(logs))
                and set().union(*latest_assignments(logs)) == set(range(6))
            ),
            timeout_s=90,
            what="three members sharing the six partitions",
        )
        started = env.sandbox.calls()["now"]
        await asyncio.sleep(15)
        ended = env.sandbox.calls()["now"]
    finally:
        for member in members:
            member.terminate()
        for member in members:
            assert await asyncio.to_thread(member.wait, 30) == 0
        env.sandbox.configure(quota_per_account_per_min=None, quota_per_project_per_min=None)
    calls = [c for c in env.sandbox.calls(detail=True)["calls"] if c["account"] in emails]
    assert not [c for c in calls if c["status"] in (403, 429)], "Google refused calls"
    watched = [c for c in calls if started <= c["at"] <= ended]
    window = ended - started
    by_account = Counter(c["account"] for c in watched)
    if scope == "account":
        allowed = per_account * SHARE / 60 * window
        for email in emails:  # three processes, yet one account's rate between them
            assert 0.6 * allowed <= by_account[email] <= allowed + 2, (email, by_account)
    else:
        allowed = per_project * SHARE / 60 * window
        assert 0.6 * allowed <= len(watched) <= allowed + 2, by_account
        assert len(by_account) == 3  # shared out, not one account first
        # Slots go to the oldest messages first: bookings finish one after another, rather
        # than all of them waiting on their last link.
        finished = env.query(
            "SELECT booking_id FROM sync_results WHERE topic = %s "
            "GROUP BY booking_id HAVING count(DISTINCT link_id) = 3",
            env.settings.topic,
        )
        assert len(finished) >= len(watched) // 3 - 2, (len(finished), len(watched))
    # Every member took part.
    assert all(latest_assignments(logs))


async def test_an_account_throttled_by_google_does_not_hold_up_the_others(env: Env) -> None:
    slow, slow_refresh = env.account("slow")
    fast, fast_refresh = env.account("fast")
    await env.link(slow, slow_refresh, activity_id="act_slow")
    await env.link(fast, fast_refresh, activity_id="act_fast")
    env.sandbox.add_fault(429, count=1000, account=slow, retry_after=3)
    since = env.sandbox.calls()["now"]
    try:
        async with env.consumer(retry_budget_s=60):
            for n in range(10):
                await env.publish(booking_event(f"bk_slow_{n}", activity_id="act_slow"))
                await env.publish(booking_event(f"bk_fast_{n}", activity_id="act_fast"))
            await wait_until(
                lambda: len(env.events(fast)) == 10,
                timeout_s=30,
                what="the other account's 10 events",
            )
            assert env.events(slow) == []
            refused = [
                c
                for c in env.sandbox.calls(since=since, detail=True)["calls"]
                if c["account"] == slow and c["status"] == 429
            ]
            # Retry-After is honoured by every call of the account, not one by one.
            elapsed = time.time() - refused[0]["at"]
            assert len(refused) <= 2 + elapsed / 3, (len(refused), elapsed)
            env.sandbox.clear_faults()
            await wait_until(
                lambda: len(env.events(slow)) == 10,
                timeout_s=30,
                what="the throttled account caught up",
            )
            await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.clear_faults()
    assert not env.query("SELECT 1 FROM sync_results WHERE outcome <> 'applied'")


async def test_fetching_pauses_at_max_in_flight_and_resumes(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    for n in range(40):
        await env.publish(booking_event(f"bk_{n}"))
    env.sandbox.configure(latency_s=0.2)
    settings = env.settings.model_copy(update={"max_in_flight": 4})
    stop = asyncio.Event()
    paused_samples, oldest_turn_while_paused = 0, 0.0
    try:
        async with services(settings) as svc:
            runner = consumer_runner(settings, svc)
            task = asyncio.create_task(runner.run(stop))
            deadline = time.monotonic() + 60
            while len(env.results()) < 40 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                if runner.started and runner.consumer.paused():
                    paused_samples += 1
                    oldest_turn_while_paused = max(
                        oldest_turn_while_paused, time.monotonic() - runner.loop_turned_at
                    )
            await wait_until(env.all_committed, what="offsets committed")
            stop.set()
            await asyncio.wait_for(task, 30)
            flow = {
                s.labels["event"]: s.value
                for metric in svc.metrics.fetch_flow.collect()
                for s in metric.samples
                if s.name.endswith("_total")
            }
    finally:
        env.sandbox.configure(latency_s=0.0)
    assert len(env.results()) == 40
    assert runner.peak_in_flight == 4  # filled up, never beyond
    assert paused_samples > 0 and flow["paused"] >= 1 and flow["resumed"] >= 1, flow
    # While paused, the poll loop kept turning (heartbeats, commits, rebalances answered).
    assert oldest_turn_while_paused < 0.5
    assert Counter(e["extendedProperties"]["private"]["booking_id"] for e in env.events(email)) == {
        f"bk_{n}": 1 for n in range(40)
    }


async def test_offsets_never_pass_a_message_still_in_flight(env: Env) -> None:
    env.settings = env.settings.model_copy(update={"topic": f"{env.name}.single"})
    await ensure_topics(env.settings.kafka_bootstrap, [env.settings.topic], 1)
    slow, slow_refresh = env.account("slow")
    fast, fast_refresh = env.account("fast")
    await env.link(slow, slow_refresh, activity_id="act_slow")
    await env.link(fast, fast_refresh, activity_id="act_fast")
    # Offset 0 waits 4 s for Google (then a 503, retried); offsets 1-10 go straight through.
    env.sandbox.add_fault(503, count=1, account=slow, delay_s=4)
    await env.publish(booking_event("bk_slow", activity_id="act_slow"))
    for n in range(10):
        await env.publish(booking_event(f"bk_fast_{n}", activity_id="act_fast"))
    seen: list[int | None] = []
    try:
        async with env.consumer(retry_budget_s=30):
            await wait_until(
                lambda: len(env.events(fast)) == 10, timeout_s=30, what="the ten later messages"
            )
            assert env.events(slow) == []  # still in flight
            for _ in range(5):  # the later ones are recorded; commits keep being made
                seen.append((await env.committed())[0])
                await asyncio.sleep(0.2)
            assert env.events(slow) == [], "the fault ended before the check did"
            await wait_until(
                lambda: len(env.events(slow)) == 1, timeout_s=30, what="the slow message"
            )
            await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.clear_faults()
    assert all(offset in (None, 0) for offset in seen), seen
    assert (await env.committed())[0] == 11
