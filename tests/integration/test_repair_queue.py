"""The repair queue on PostgreSQL (consumer/adapters/postgres/repair_store.py): one
statement per poll, driven by an index whatever the size of the queue, and two processes
never lease one row.

The loop's decisions over the queue are tested on fakes (tests/unit/test_repair_loop.py);
fairness between accounts on the whole stack in tests/integration/test_refusals.py
(`test_one_accounts_repairs_never_take_every_place_in_the_loop`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from consumer.adapters.postgres.connections import connector
from consumer.adapters.postgres.repair_store import RepairStore, RepairStoreConfig
from consumer.domain.records import LeaseRequest
from tests.oracle import assert_exact
from tests.plugins.environment import ROOT, Env, calsync, wait_until
from tests.plugins.events import booking_event


def _links(env: Env, accounts: int, links_per_account: int) -> None:
    """Active links written directly: `lnk_<n>` of account `acc<n % accounts>@example.com`."""
    env.query(
        "INSERT INTO calendar_links (id, activity_id, account_email, calendar_id, state)"
        " SELECT 'lnk_' || i, 'act_' || i, 'acc' || (i %% %s) || '@example.com', 'cal_' || i,"
        " 'active' FROM generate_series(0, %s - 1) i RETURNING 1",
        accounts,
        accounts * links_per_account,
    )


def _repairs(env: Env, count: int, links: int) -> None:
    """`count` repairs spread over `links` links (`bk_<i>` on `lnk_<i % links>`), all due,
    the higher `i` the older; their account is left to the table's trigger (as every writer
    does)."""
    env.query(
        "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at)"
        " SELECT 'lnk_' || (i %% %s), 'bk_' || i, 1, 'retries_exhausted',"
        " now() - make_interval(secs => i)"
        " FROM generate_series(1, %s) i RETURNING 1",
        links,
        count,
    )


def test_a_repair_takes_its_links_account_whoever_writes_it(env: Env) -> None:
    _links(env, accounts=3, links_per_account=2)
    _repairs(env, 60, links=6)
    mismatched = env.query(
        "SELECT count(*) AS n FROM repairs r JOIN calendar_links cl ON cl.id = r.link_id"
        " WHERE r.account_email IS DISTINCT FROM cl.account_email"
    )
    assert mismatched == [{"n": 0}]
    # A link that takes another account (revived by an account sharing its calendar).
    env.query(
        "UPDATE calendar_links SET account_email = 'other@example.com' WHERE id = 'lnk_1'"
        " RETURNING 1"
    )
    moved = env.query("SELECT DISTINCT account_email FROM repairs WHERE link_id = 'lnk_1'")
    assert moved == [{"account_email": "other@example.com"}]


# --- one statement, driven by the index -------------------------------------------------------


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in _plan_nodes(child))]


def test_the_lease_is_index_driven_with_100000_repairs_waiting(env: Env) -> None:
    """The plan of the one lease statement, run (EXPLAIN ANALYZE, rolled back) over 100,000
    due repairs of 200 links and 100 accounts: no sequential scan of `repairs`, the
    per-account index used, and the rows it reads from `repairs` bounded by what a poll
    leases, not by the queue. (The statement it replaced ranked every due row with a window
    function: it read all 100,000 through the primary key on each poll.) Counted, not timed."""
    _links(env, accounts=100, links_per_account=2)
    _repairs(env, 100_000, links=200)
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        conn.execute("ANALYZE repairs")
        conn.execute("ANALYZE calendar_links")
    store = RepairStore(connector(env.database_url))
    ask = LeaseRequest(member="m", limit=256, per_account=50, lease_s=300, places=(("x", 1),))
    for walked_from in ("", "acc5@example.com"):  # a walk from the first account, or later
        parameters = store.lease_parameters(dataclasses.replace(ask, after=walked_from))
        with psycopg.connect(env.database_url) as conn:  # one transaction, rolled back
            row = conn.execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {store.lease_statement}", parameters
            ).fetchone()
            conn.rollback()
        assert row is not None
        nodes = _plan_nodes(row[0][0]["Plan"])
        scans = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in nodes]
        assert not [s for s in scans if s[0] == "Seq Scan" and s[1] == "repairs"], scans
        assert any(s[2] == "repairs_due_by_account" for s in scans), scans
        # A poll leases 256 at most, visits 64 accounts: two probes each, its candidates,
        # their row locks and updates. A few thousand rows at most, whatever the queue.
        read = sum(
            n["Actual Rows"] * n["Actual Loops"]
            for n in nodes
            if n.get("Relation Name") == "repairs" and "Scan" in n["Node Type"]
        )
        assert read <= 5_000, (read, scans)
        assert row[0][0]["Plan"]["Actual Rows"] > 0  # it did lease (then rolled back)


def test_one_poll_leases_each_accounts_oldest_within_its_places(env: Env) -> None:
    _links(env, accounts=3, links_per_account=1)
    _repairs(env, 30, links=3)  # 10 per account, all due
    env.query(
        "UPDATE repairs SET due_at = now() + interval '1 hour' WHERE booking_id = 'bk_3'"
        " RETURNING 1"
    )
    oldest_of_acc2 = {
        row["booking_id"]
        for row in env.query(
            "SELECT booking_id FROM repairs WHERE link_id = 'lnk_2' ORDER BY due_at LIMIT 3"
        )
    }
    store = RepairStore(connector(env.database_url))
    places = (("acc0@example.com", 0), ("acc1@example.com", 2))
    got = asyncio.run(
        store.lease(LeaseRequest(member="m", limit=9, per_account=3, lease_s=300, places=places))
    )
    # acc0 has no place left here; acc1 two; acc2 the default three, its oldest.
    assert Counter(r.account for r in got.repairs) == {"acc1@example.com": 2, "acc2@example.com": 3}
    assert {r.booking_id for r in got.repairs if r.link_id == "lnk_2"} == oldest_of_acc2
    assert got.swept_to_end  # three accounts: one window
    again = asyncio.run(
        store.lease(LeaseRequest(member="n", limit=30, per_account=30, lease_s=300))
    )
    first = {(r.link_id, r.booking_id) for r in got.repairs}
    assert not first & {(r.link_id, r.booking_id) for r in again.repairs}  # not leased twice
    assert len(again.repairs) == 29 - 5  # every other due row; bk_3 is not due yet
    assert "bk_3" not in {r.booking_id for r in again.repairs}
    leased = env.query("SELECT leased_by, count(*) AS n FROM repairs GROUP BY leased_by")
    assert {row["leased_by"]: row["n"] for row in leased} == {"m": 5, "n": 24, None: 1}


def test_repairs_of_links_no_longer_active_are_dropped_in_batches(env: Env) -> None:
    _links(env, accounts=2, links_per_account=1)
    _repairs(env, 25, links=2)
    env.query("UPDATE calendar_links SET state = 'reauth_required' WHERE id = 'lnk_1' RETURNING 1")
    store = RepairStore(connector(env.database_url), RepairStoreConfig(drop_batch=5))
    assert asyncio.run(store.drop_inactive()) == 13  # bk_1, bk_3, ... bk_25: three batches
    assert env.query("SELECT DISTINCT link_id FROM repairs") == [{"link_id": "lnk_0"}]


# --- two processes, one queue -------------------------------------------------------------------

# A process that polls the queue as the repair loop does (four pollers on a pool of its own,
# each walking the accounts from where its last poll stopped), never giving a lease back,
# until a whole walk finds nothing; then it prints every pair it leased.
_POLLER = """
import asyncio, json, os, sys
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from consumer.adapters.postgres.repair_store import RepairStore, RepairStoreConfig
from consumer.domain.records import LeaseRequest

url, member, start = sys.argv[1:4]

async def main() -> None:
    pool = AsyncConnectionPool(url, min_size=4, max_size=4, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": True})
    await pool.open(wait=True)
    store = RepairStore(lambda timeout_s=None: pool.connection(timeout_s),
                        RepairStoreConfig(accounts_per_poll=8))
    leased = []

    async def poller() -> None:
        after, found = "", False
        while True:
            lease = await store.lease(LeaseRequest(member=member, limit=25, per_account=5,
                                                   lease_s=600, after=after))
            leased.extend([r.link_id, r.booking_id] for r in lease.repairs)
            found = found or bool(lease.repairs)
            after = "" if lease.swept_to_end else lease.last_account
            if lease.swept_to_end:
                if not found:
                    return
                found = False

    print("ready", flush=True)
    while not os.path.exists(start):
        await asyncio.sleep(0.01)
    await asyncio.gather(*(poller() for _ in range(4)))
    print(json.dumps(leased), flush=True)
    await pool.close()

asyncio.run(main())
"""


def test_two_processes_polling_one_queue_never_lease_one_row(env: Env, tmp_path: Path) -> None:
    _links(env, accounts=20, links_per_account=2)
    _repairs(env, 3000, links=40)
    start = tmp_path / "start"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _POLLER, env.database_url, member, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for member in ("first", "second")
    ]
    try:
        for process in processes:  # both ready: they poll together
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        start.touch()
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    leased = dict(zip(("first", "second"), map(json.loads, outputs), strict=True))
    every = [tuple(pair) for pairs in leased.values() for pair in pairs]
    assert len(every) == 3000 and len(set(every)) == 3000  # each row leased once, all of them
    assert all(leased.values()), "both processes leased rows"
    # The database agrees: each row is held by the process that reported it.
    holders = env.query("SELECT leased_by, count(*) AS n FROM repairs GROUP BY leased_by")
    assert {row["leased_by"]: row["n"] for row in holders} == {
        member: len(pairs) for member, pairs in leased.items()
    }


async def test_two_repair_commands_at_once_work_each_repair_once(env: Env) -> None:
    """Two `calsync repair` processes drain one queue together: every repair is worked by
    one of them, once (one `repair` result per pair in sync_results), and every calendar ends
    exact."""
    owed: dict[str, dict[str, Any]] = {}
    links = {}
    for name in ("a", "b", "c"):
        email, refresh = env.account(name)
        links[email] = await env.link(email, refresh, activity_id=f"act_{name}")
        for n in range(30):
            booking = booking_event(f"bk_{name}{n}", 1, activity_id=f"act_{name}")
            owed[booking["booking"]["id"]] = booking
            env.query(
                "INSERT INTO bookings VALUES (%s, %s, 1, 'booking.created', %s) RETURNING 1",
                booking["booking"]["id"],
                f"act_{name}",
                json.dumps(booking),
            )
            env.query(
                "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at)"
                " VALUES (%s, %s, 1, 'retries_exhausted', now()) RETURNING 1",
                links[email],
                booking["booking"]["id"],
            )
    env.sandbox.configure(latency_s=0.2)  # long enough for the two to work side by side
    try:
        settings = {
            "CALSYNC_REPAIR_CONCURRENCY": "4",
            "CALSYNC_QUOTA_PER_ACCOUNT_PER_MIN": "0",
            "CALSYNC_GOOGLE_BATCH_SIZE": "1",
        }
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumer",
                "repair",
                "--json",
                env={**env.env_vars, **settings},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        answers = []
        for process, (out, err) in zip(
            processes, await asyncio.gather(*(p.communicate() for p in processes)), strict=True
        ):
            assert process.returncode == 0, err.decode()
            answers.append(json.loads(out))
    finally:
        env.sandbox.configure(latency_s=0.0)
    assert sum(a["worked"] for a in answers) == 90
    assert all(a["worked"] > 0 for a in answers), answers
    worked = Counter(
        (r["link_id"], r["booking_id"]) for r in env.results() if r["source"] == "repair"
    )
    assert len(worked) == 90 and set(worked.values()) == {1}
    assert not env.query("SELECT 1 FROM repairs")
    for name, (email, link_id) in zip("abc", links.items(), strict=True):
        mine = {b: e for b, e in owed.items() if b.startswith(f"bk_{name}")}
        assert_exact(env, email, link_id, mine, activity_id=f"act_{name}")


async def test_calsync_repair_answers_what_it_worked(env: Env) -> None:
    email, refresh = env.account()
    link_id = await env.link(email, refresh)
    booking = booking_event("bk_1", 1)
    env.query(
        "INSERT INTO bookings VALUES ('bk_1', 'act_1', 1, 'booking.created', %s) RETURNING 1",
        json.dumps(booking),
    )
    env.query(
        "INSERT INTO repairs (link_id, booking_id, booking_version, reason, due_at)"
        " VALUES (%s, 'bk_1', 1, 'retries_exhausted', now() + interval '1 hour') RETURNING 1",
        link_id,
    )
    waiting = calsync(env, "repair", "--json")
    assert waiting.returncode == 0, waiting.stderr
    assert json.loads(waiting.stdout)["worked"] == 0  # not due yet
    now = calsync(env, "repair", "--link", link_id, "--now", "--json")
    assert now.returncode == 0, now.stderr
    answer = json.loads(now.stdout)
    assert (answer["made_due"], answer["worked"], answer["outcomes"]) == (1, 1, {"applied": 1})
    await wait_until(lambda: env.events(email), what="the event")
    assert_exact(env, email, link_id, {"bk_1": booking})
