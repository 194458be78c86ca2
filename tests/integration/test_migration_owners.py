"""Migration 011 on a database that already holds what it forbids (issue 20, points 1 and
4): two live links of one activity on one calendar shared by two accounts (every booking on
it twice), and tokens kept per link. The migration must not fail: the link that keeps the
calendar is the active one (the oldest of those), the other goes back to `pending` with a
reason naming `calendar_taken` and the owner; each account's tokens become its one grant
(still encrypted: the freshest of a working link), and a reconcile then takes the
duplicates off the calendar. The content oracle holds at the end."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from consumer.adapters.crypto import TokenCipher
from consumer.adapters.postgres.migrations import migrate
from consumer.domain.models import BookingEvent
from consumer.domain.planning import google_event_id, render_event
from tests.oracle import assert_exact
from tests.plugins.environment import ROOT, TOKEN_KEY, Env, calsync
from tests.plugins.events import booking_event

SHARED = "team-bookings"
_INSERT_LINK = (
    "INSERT INTO calendar_links (id, activity_id, account_email, calendar_id, state,"
    " state_reason, refresh_token_enc, access_token_enc, token_expires_at, created_at,"
    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def before_011(env: Env, tmp_path: Path) -> str:
    """A database migrated up to (not including) 011: what a deployment holds today."""
    older = tmp_path / "sql"
    older.mkdir()
    for path in sorted((ROOT / "sql").glob("*.sql")):
        if path.name < "011":
            shutil.copy(path, older / path.name)
    url = env.fresh_database("pre011")
    migrate(url, older)
    return url


def link_row(
    cipher: TokenCipher,
    link_id: str,
    activity: str,
    account: str,
    calendar: str | None,
    state: str,
    refresh: str | None,
    age_h: float,
    updated_h: float,
    reason: str | None = None,
) -> tuple[Any, ...]:
    now = datetime.now(UTC)
    return (
        link_id,
        activity,
        account,
        calendar,
        state,
        reason,
        cipher.encrypt(refresh) if refresh else None,
        cipher.encrypt("ya29.old-" + link_id) if refresh else None,
        now - timedelta(minutes=10) if refresh else None,
        now - timedelta(hours=age_h),
        now - timedelta(hours=updated_h),
    )


async def test_migration_keeps_one_live_link_per_calendar_and_one_grant_per_account(
    env: Env, tmp_path: Path
) -> None:
    url = before_011(env, tmp_path)
    owner, owner_refresh = env.account(
        "owner",
        calendars=[
            {"id": "owner-primary", "summary": "Owner", "primary": True},
            {"id": SHARED, "summary": "Team bookings"},
        ],
    )
    manager, manager_refresh = env.account("manager")
    lost, lost_refresh = env.account("lost")
    env.sandbox.share_calendar(owner, SHARED, manager, "writer")
    cipher = TokenCipher([TOKEN_KEY])
    rows = [
        # act_1: two accounts' live links on the shared calendar. The older one keeps it.
        link_row(cipher, "lnk_owner", "act_1", owner, SHARED, "active", owner_refresh, 48, 40),
        link_row(cipher, "lnk_manager", "act_1", manager, SHARED, "active", "1//stale", 24, 20),
        # The manager's freshest tokens are another activity's link's: its grant.
        link_row(cipher, "lnk_m2", "act_2", manager, manager, "active", manager_refresh, 10, 1),
        # A refused token of the owner, more recent than its working one: not its grant.
        link_row(
            cipher,
            "lnk_o3",
            "act_3",
            owner,
            "owner-primary",
            "reauth_required",
            "1//dead",
            5,
            0.5,
            "token refresh refused: invalid_grant",
        ),
        # An account whose only link Google refused: its grant is refused too.
        link_row(
            cipher,
            "lnk_lost",
            "act_1",
            lost,
            lost,
            "reauth_required",
            lost_refresh,
            5,
            2,
            "token refresh refused: invalid_grant",
        ),
        # A link disconnected long ago (tokens wiped): its disconnect has finished.
        link_row(cipher, "lnk_gone", "act_1", owner, "owner-primary", "disconnected", None, 90, 80),
    ]
    latest = {f"bk_{n}": booking_event(f"bk_{n}", 1) for n in range(2)}
    with psycopg.connect(url) as conn:
        for row in rows:
            conn.execute(_INSERT_LINK, row)
        # Before the migration, each booking of act_1 is on the shared calendar twice.
        for booking_id, event in latest.items():
            conn.execute(
                "INSERT INTO bookings (booking_id, activity_id, version, event_type, event)"
                " VALUES (%s, 'act_1', 1, 'booking.created', %s)",
                (booking_id, json.dumps(event)),
            )
            booking = BookingEvent.model_validate(event).booking
            for link_id, account in (("lnk_owner", owner), ("lnk_manager", manager)):
                event_id = google_event_id(link_id, booking_id, 0)
                env.sandbox.plant_event(account, SHARED, render_event(booking, link_id, event_id))
                conn.execute(
                    "INSERT INTO link_bookings (link_id, booking_id, applied_version,"
                    " google_event_id, calendar_id) VALUES (%s, %s, 1, %s, %s)",
                    (link_id, booking_id, event_id, SHARED),
                )
    assert len(env.sandbox.events(owner, SHARED)) == 4

    applied = migrate(url)
    assert applied[0].startswith("011_")
    env.database_url = url
    env.settings = env.settings.model_copy(update={"database_url": url})
    links = {r["id"]: r for r in env.query("SELECT * FROM calendar_links")}
    assert (links["lnk_owner"]["state"], links["lnk_owner"]["calendar_id"]) == ("active", SHARED)
    demoted = links["lnk_manager"]
    assert (demoted["state"], demoted["calendar_id"]) == ("pending", None)
    assert "calendar_taken" in demoted["state_reason"] and "lnk_owner" in demoted["state_reason"]
    assert links["lnk_m2"]["state"] == "active" and links["lnk_o3"]["state"] == "reauth_required"
    assert links["lnk_gone"]["disconnect_finished_at"] is not None
    assert all(links[i]["disconnect_finished_at"] is None for i in links if i != "lnk_gone")
    grants = {g["account_email"]: g for g in env.query("SELECT * FROM google_grants")}
    assert set(grants) == {owner, manager, lost}
    chosen = {a: cipher.decrypt(g["refresh_token_enc"]) for a, g in grants.items()}
    assert chosen == {owner: owner_refresh, manager: manager_refresh, lost: lost_refresh}
    assert {a: g["state"] for a, g in grants.items()} == {
        owner: "valid",
        manager: "valid",
        lost: "refused",
    }
    assert "invalid_grant" in grants[lost]["state_reason"]

    # The duplicates stay on the calendar until a reconcile takes them off.
    reconciled = calsync(env, "reconcile", "--execute", "--json")
    assert reconciled.returncode == 0, reconciled.stderr
    assert_exact(env, owner, "lnk_owner", latest, calendar_id=SHARED, activity_id="act_1")
    # The demoted link may choose a calendar of its own: the bookings go there, once.
    chosen_again = calsync(env, "links", "select", "lnk_manager", manager)
    assert chosen_again.returncode == 0, chosen_again.stderr
    assert_exact(env, manager, "lnk_manager", latest, calendar_id=manager, activity_id="act_1")
    assert_exact(env, owner, "lnk_owner", latest, calendar_id=SHARED, activity_id="act_1")
