"""On-call tooling on the real broker, database and sandbox: replay, dead letters, status."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from calsync_dev.stack import free_port
from tests.plugins.environment import Env, calsync, wait_until
from tests.plugins.events import booking_event
from tests.plugins.ops_http import scrape, value


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def google_writes(env: Env, since: float) -> list[dict[str, Any]]:
    return [
        c
        for c in env.sandbox.calls(since=since, detail=True)["calls"]
        if c["op"] in ("events.insert", "events.update", "events.delete")
    ]


async def test_replay_by_datetime_changes_nothing_and_resync_repairs(env: Env) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    before = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    async with env.consumer():
        for booking in ("bk_1", "bk_2"):
            await env.publish(booking_event(booking, 1))
        await wait_until(lambda: len(env.events(email)) == 2, what="2 events")
        await wait_until(env.all_committed, what="offsets committed")
    assert await env.committed_total() == 2

    dry = ok_json(calsync(env, "replay", "--to-datetime", before, "--json"))
    assert not dry["executed"]
    assert sum(p["rereads"] for p in dry["partitions"]) == 2
    assert await env.committed_total() == 2  # a dry run changes nothing
    some = ok_json(
        calsync(
            env,
            "replay",
            "--to-earliest",
            "--dry-run",
            "--json",
            "--topic",
            f"{env.settings.topic}:0,2",
        )
    )
    assert [p["partition"] for p in some["partitions"]] == [0, 2]

    done = ok_json(calsync(env, "replay", "--to-datetime", before, "--execute", "--json"))
    assert done["executed"] and await env.committed_total() == 0
    since = time.time()
    async with env.consumer():
        await wait_until(lambda: len(env.results()) == 4, what="2 messages re-read")
        await wait_until(env.all_committed, what="offsets committed")
    assert [r["reason"] for r in env.results()[2:]] == ["version_not_newer"] * 2
    assert google_writes(env, since) == []  # replays are harmless

    gone = env.events(email)[0]
    env.sandbox.delete_by_hand(email, email, gone["id"])  # Google's side drifted
    repaired = calsync(
        env,
        "replay",
        "--to-datetime",
        before,
        "--execute",
        "--resync",
        "--by",
        "oncall@example.com",
    )
    assert repaired.returncode == 0, repaired.stderr
    assert "2 event operation(s) re-applied to Google" in repaired.stdout
    events = env.events(email)
    assert sorted(e["extendedProperties"]["private"]["booking_id"] for e in events) == [
        "bk_1",
        "bk_2",
    ]
    assert gone["id"] not in {e["id"] for e in events}  # recreated under a new id
    replays = env.query("SELECT who, executed, resync, spec, resynced FROM replays ORDER BY id")
    assert [(r["executed"], r["resync"]) for r in replays] == [
        (False, False),
        (False, False),
        (True, False),
        (True, True),
    ]
    assert replays[3]["who"] == "oncall@example.com" and replays[3]["resynced"] == 2
    assert replays[0]["spec"].startswith("--to-datetime ")


async def test_replay_refuses_while_the_group_is_active(env: Env) -> None:
    async with env.consumer():
        await wait_until(lambda: env.query("SELECT 1 FROM consumer_members"), what="member")
        refused = calsync(env, "replay", "--to-earliest", "--execute")
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert f"group '{env.settings.group_id}' has 1 active member(s)" in refused.stderr
    assert env.query("SELECT * FROM consumer_members") == []  # it left on stop
    assert env.query("SELECT * FROM replays") == []


async def test_replay_and_dlq_arguments_are_checked_before_anything(env: Env) -> None:
    await env.publish(booking_event("bk_1", 1))
    async with env.consumer():
        await wait_until(env.all_committed, what="offsets committed")
    cases = {
        ("replay", "--to-earliest", "--topic", "nope"): "calsync: unknown topic 'nope'",
        (
            "replay",
            "--to-earliest",
            "--group",
            "nope",
        ): f"calsync: unknown group 'nope': it has no members and no committed offsets on "
        f"'{env.settings.topic}'",
        (
            "replay",
            "--to-earliest",
            "--partitions",
            "0,7",
        ): f"calsync: topic '{env.settings.topic}' has no partition 7 (it has 0..2)",
        (
            "replay",
            "--to-earliest",
            "--topic",
            f"{env.settings.topic}:0,9",
        ): f"calsync: topic '{env.settings.topic}' has no partition 9 (it has 0..2)",
        (
            "replay",
            "--to-earliest",
            "--dry-run",
            "--execute",
        ): "calsync: --dry-run and --execute exclude each other",
        ("replay", "--to-offset", "99"): "calsync: offset 99 is out of range for partition 0 (0..",
        (
            "replay",
            "--to-datetime",
            "2026-01-01T00:00:00",
        ): "calsync replay: argument --to-datetime: '2026-01-01T00:00:00' has no time zone",
        (
            "replay",
            "--by-duration",
            "2 hours",
        ): "calsync replay: argument --by-duration: not an ISO 8601 duration",
        ("replay",): "calsync replay: one of the arguments --to-datetime",
        ("replay", "--to-earliest", "--resync"): "calsync: --resync goes with --execute",
        ("dlq", "show", "42"): "calsync: no dead letter 42 (see: calsync dlq list)",
        ("dlq", "replay", "42"): "calsync: no dead letter 42",
        ("dlq", "replay", "--rate", "0"): "calsync dlq replay: argument --rate: not a positive",
    }
    for args, start in cases.items():
        result = calsync(env, *args)
        assert result.returncode in (1, 2), (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (args, lines)
    assert await env.committed_total() == 1
    assert env.query("SELECT * FROM replays") == []


async def test_a_dead_letter_fixed_and_replayed_is_processed_once(env: Env, tmp_path: Path) -> None:
    email, refresh = env.account()
    await env.link(email, refresh)
    broken = booking_event("bk_9", 1)
    del broken["booking"]["customer_name"]
    async with env.consumer():
        await env.publish(broken)
        await wait_until(lambda: env.query("SELECT 1 FROM dead_letters"), what="dead letter")
        listed = ok_json(calsync(env, "dlq", "list", "--json"))
        assert [(r["error_type"], r["replayed_at"]) for r in listed] == [("schema_violation", None)]
        letter = listed[0]["id"]
        shown = ok_json(calsync(env, "dlq", "show", str(letter)))
        assert "customer_name" in shown["error"] and json.loads(shown["message_value"]) == broken
        # What the dead letter is known by (with its position), and its copy sent whole.
        assert shown["record_timestamp"] is not None and shown["copy_error"] is None

        fixed = {**broken, "booking": {**broken["booking"], "customer_name": "Jane Smith"}}
        fix = tmp_path / "fixed.json"
        fix.write_text(json.dumps(fixed))
        put_back = calsync(env, "dlq", "replay", str(letter), "--value-file", str(fix))
        assert put_back.returncode == 0, put_back.stderr
        await wait_until(lambda: len(env.events(email)) == 1, what="the fixed booking synced")
        again = calsync(env, "dlq", "replay", str(letter))
        assert again.returncode == 1 and "already replayed" in again.stderr
        # A second copy reaching the topic anyway (two operators, a retried send): skipped.
        producer = AIOKafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                env.settings.topic,
                json.dumps(fixed).encode(),
                key=b"bk_9",
                headers=[("calsync.dlq.replay-of", str(letter).encode())],
            )
        finally:
            await producer.stop()
        await wait_until(env.all_committed, what="offsets committed")
    assert len(env.results("bk_9")) == 1 and len(env.events(email)) == 1
    row = env.query("SELECT replayed_at, replayed_by, reprocessed_at FROM dead_letters")[0]
    assert row["replayed_at"] and row["replayed_by"] and row["reprocessed_at"]
    assert ok_json(calsync(env, "dlq", "list", "--json")) == []


async def test_status_shows_members_lag_links_failures_and_dead_letters(env: Env) -> None:
    email, refresh = env.account()
    revoked, revoked_refresh = env.account("revoked")
    await env.link(email, refresh)
    await env.link(revoked, revoked_refresh)
    env.sandbox.revoke(revoked)
    async with env.consumer():
        await env.publish(booking_event("bk_1", 1))
        await env.publish(b"{oops", key="bk_2")
        await wait_until(env.all_committed, what="offsets committed")
        await wait_until(lambda: env.query("SELECT 1 FROM consumer_members"), what="member")
        status = ok_json(calsync(env, "status", "--json"))
        text = calsync(env, "status")
    assert len(status["members"]) == 1 and status["total_lag"] == 0
    assert {p["partition"] for p in status["partitions"]} == {0, 1, 2}
    links = {r["state"]: r for r in status["links"]}
    assert links["active"]["links"] == 1 and links["reauth_required"]["links"] == 1
    assert "invalid_grant" in links["reauth_required"]["reasons"][0]
    assert [(f["outcome"], f["reason"]) for f in status["failures_last_hour"]] == [
        ("skipped", "token_refresh_failed")
    ]
    assert status["dead_letters"]["waiting"] == 1
    assert status["outstanding"] == {
        "total": 0,
        "messages": 0,
        "repairs_due": 0,
        "by_account": {},
    }
    assert text.returncode == 0 and "dead letters: 1 waiting" in text.stdout
    assert "outstanding: 0 (0 message(s) not committed, 0 repair(s) due)" in text.stdout


async def test_outstanding_work_counts_repairs_due_when_the_lag_is_zero(env: Env) -> None:
    """Offsets move on past work deferred to the repair loop: a burst Google refuses shows
    lag 0 while its bookings wait in `repairs`. The work owed (`outstanding` in `calsync
    status`, `calsync_outstanding_work` on /metrics) says so, and comes back to 0 only once
    the repairs are worked."""
    email, refresh = env.account()
    other, other_refresh = env.account("other")
    link_id = await env.link(email, refresh)
    await env.link(other, other_refresh, activity_id="act_other")
    port = free_port()
    # Every write of the account fails past a short budget; a failed repair is due again
    # almost at once (so it counts as due nearly all the time it is owed).
    env.sandbox.add_fault(500, count=1_000_000, account=email)
    fast = {
        "retry_budget_s": 0.5,
        "repair_initial_backoff_s": 0.05,
        "repair_max_backoff_s": 0.1,
        "repair_poll_s": 0.2,
        "metrics_port": port,
    }
    try:
        async with env.consumer(**fast):
            for n in range(5):
                await env.publish(booking_event(f"bk_{n}", 1))
            await env.publish(booking_event("bk_other", 1, activity_id="act_other"))
            await wait_until(env.all_committed, timeout_s=60, what="offsets committed")
            await wait_until(
                lambda: len(env.query("SELECT 1 FROM repairs")) == 5, what="5 repairs owed"
            )
            status = ok_json(calsync(env, "status", "--json"))
            assert status["total_lag"] == 0
            owed = status["outstanding"]
            assert owed["messages"] == 0 and 0 < owed["repairs_due"] <= 5, owed
            assert owed["total"] == owed["repairs_due"]
            assert set(owed["by_account"]) == {email}
            # (A refresh while the burst was not committed yet counts its messages.)
            owing = await wait_until(
                lambda: scraped(port, "calsync_outstanding_work_by_account", lambda v: v > 0),
                timeout_s=60,
                what="repairs due in the gauge of work owed",
            )
            due = value(owing, "calsync_outstanding_work_by_account", account=email)
            assert 0 < due <= 5 and value(owing, "calsync_outstanding_work") >= due
            assert value(owing, "calsync_outstanding_work_by_account", account=other) == 0
            env.sandbox.clear_faults()  # Google takes them again: the repair loop catches up
            await wait_until(
                lambda: not env.query("SELECT 1 FROM repairs"), timeout_s=60, what="repaired"
            )
            done = await wait_until(
                lambda: scraped(port, "calsync_outstanding_work", lambda v: v == 0),
                timeout_s=60,
                what="the gauge of work owed back to 0",
            )
            assert value(done, "calsync_outstanding_work_by_account") == 0
            after = ok_json(calsync(env, "status", "--json"))
    finally:
        env.sandbox.clear_faults()
    assert after["outstanding"] == {"total": 0, "messages": 0, "repairs_due": 0, "by_account": {}}
    assert len(env.events(email)) == 5 and len(env.events(other)) == 1
    assert {r["link_id"] for r in env.results() if r["source"] == "repair"} == {link_id}


async def scraped(
    port: int, name: str, wanted: Callable[[float], bool]
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """/metrics when the sample `name` is as `wanted` (present, and its value passes)."""
    samples = await scrape(port)
    present = any(n == name for n, _ in samples)
    return samples if present and wanted(value(samples, name)) else None
