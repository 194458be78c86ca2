"""`calsync` commands, run as a person runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.plugins.environment import ROOT, Env, calsync


async def test_migrate_is_harmless_twice(env: Env) -> None:
    fresh = env.fresh_database("m")
    env.settings = env.settings.model_copy(update={"database_url": fresh})
    first = calsync(env, "migrate")
    assert first.returncode == 0, first.stderr
    assert "001_init.sql" in first.stdout
    second = calsync(env, "migrate")
    assert second.returncode == 0, second.stderr
    assert "applied 0 migration(s)" in second.stdout


async def test_links_import_calendars_select_list(env: Env) -> None:
    email, refresh = env.account(
        calendars=[
            {"id": "work", "summary": "Work", "primary": True},
            {"id": "bookings", "summary": "Bookings", "access_role": "writer"},
            {"id": "holidays", "summary": "Holidays", "access_role": "reader"},
        ]
    )
    imported = calsync(
        env,
        "links",
        "import",
        "--activity",
        "act_9",
        "--account",
        email,
        "--refresh-token",
        refresh,
    )
    assert imported.returncode == 0, imported.stderr
    link_id = imported.stdout.strip().splitlines()[-1]
    assert link_id.startswith("lnk_")
    assert refresh not in imported.stdout + imported.stderr

    listed = json.loads(calsync(env, "links", "list", "--json").stdout)
    assert [(x["id"], x["state"], x["calendar_id"]) for x in listed] == [(link_id, "pending", None)]
    assert not any("token" in key for key in listed[0])

    calendars = json.loads(calsync(env, "links", "calendars", link_id, "--json").stdout)
    assert calendars == [
        {"id": "work", "name": "Work", "primary": True, "writable": True, "taken": False},
        {"id": "bookings", "name": "Bookings", "primary": False, "writable": True, "taken": False},
        {"id": "holidays", "name": "Holidays", "primary": False, "writable": False, "taken": False},
    ]
    table = calsync(env, "links", "calendars", link_id)
    assert "Holidays" in table.stdout and table.returncode == 0

    refused = calsync(env, "links", "select", link_id, "holidays")
    assert refused.returncode != 0
    assert "not writable" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    unknown = calsync(env, "links", "select", link_id, "nope")
    assert unknown.returncode != 0 and "not in the calendar list" in unknown.stderr
    assert json.loads(calsync(env, "links", "list", "--json").stdout)[0]["state"] == "pending"

    chosen = calsync(env, "links", "select", link_id, "bookings")
    assert chosen.returncode == 0, chosen.stderr
    after = json.loads(calsync(env, "links", "list", "--json").stdout)[0]
    assert (after["state"], after["calendar_id"]) == ("active", "bookings")
    assert "active" in calsync(env, "links", "list").stdout


async def test_links_import_with_tokens_and_calendar_is_active(env: Env) -> None:
    email, refresh = env.account()
    token, _ = env.sandbox.issue_access_token(email)
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    result = calsync(
        env,
        "links",
        "import",
        "--activity",
        "act_1",
        "--account",
        email,
        "--refresh-token",
        refresh,
        "--access-token",
        token,
        "--expires-at",
        expires,
        "--calendar",
        email,
    )
    assert result.returncode == 0, result.stderr
    link_id = result.stdout.strip().splitlines()[-1]
    row = env.query("SELECT state FROM calendar_links WHERE id = %s", link_id)[0]
    assert row == {"state": "active"}
    assert env.stored_tokens(link_id)["access_token"] == token


async def test_links_import_reads_the_refresh_token_from_stdin_or_a_file(
    env: Env, tmp_path: Path
) -> None:
    """A secret on the command line ends up in shell history and `ps`: the refresh token
    comes from standard input (`-`) or a file instead, its trailing newline dropped."""
    piped, piped_refresh = env.account("piped")
    filed, filed_refresh = env.account("filed")
    token_file = tmp_path / "refresh-token"
    token_file.write_text(filed_refresh + "\n")
    token_file.chmod(0o600)
    runs = {
        piped: calsync(
            env,
            "links",
            "import",
            "--activity",
            "act_stdin",
            "--account",
            piped,
            "--refresh-token-file",
            "-",
            "--calendar",
            piped,
            stdin=piped_refresh + "\n",
        ),
        filed: calsync(
            env,
            "links",
            "import",
            "--activity",
            "act_stdin",
            "--account",
            filed,
            "--refresh-token-file",
            str(token_file),
        ),
    }
    for email, refresh in ((piped, piped_refresh), (filed, filed_refresh)):
        result = runs[email]
        assert result.returncode == 0, result.stderr
        assert refresh not in result.stdout + result.stderr
        link_id = result.stdout.strip().splitlines()[-1]
        assert env.stored_tokens(link_id)["refresh_token"] == refresh  # no newline kept
    # The token read from standard input works at Google: the link lists its calendars.
    link_id = runs[piped].stdout.strip().splitlines()[-1]
    listed = calsync(env, "links", "calendars", link_id, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)] == [piped]


async def test_links_import_refuses_a_missing_empty_or_doubled_refresh_token(
    env: Env, tmp_path: Path
) -> None:
    base = ["links", "import", "--activity", "a", "--account", "x@example.com"]
    empty_file = tmp_path / "empty"
    empty_file.write_text("\n")
    refusals = {
        # (arguments, standard input): exit status, the one line said
        (("--refresh-token-file", "-"), "\n"): (
            1,
            "calsync: the refresh token is empty (read from standard input)",
        ),
        (("--refresh-token-file", str(empty_file)), None): (
            1,
            f"calsync: the refresh token is empty (read from {empty_file})",
        ),
        (("--refresh-token", ""), None): (
            1,
            "calsync: the refresh token is empty (read from --refresh-token)",
        ),
        (("--refresh-token-file", str(tmp_path / "nope")), None): (
            1,
            f"calsync: cannot read {tmp_path / 'nope'}: No such file or directory",
        ),
        ((), None): (2, "calsync links import: one of the arguments"),
        (("--refresh-token", "r", "--refresh-token-file", "-"), "r"): (
            2,
            "calsync links import: argument --refresh-token-file: not allowed with argument "
            "--refresh-token",
        ),
    }
    for (extra, stdin), (status, line) in refusals.items():
        result = calsync(env, *base, *extra, stdin=stdin)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == status, (extra, result.stderr)
        assert len(lines) == 1 and lines[0].startswith(line), (extra, lines)
    assert env.query("SELECT id FROM calendar_links") == []
    # --refresh-token still works, and its help says what it costs.
    helped = calsync(env, "links", "import", "--help")
    assert "visible in shell history and ps" in helped.stdout
    assert "--refresh-token-file" in helped.stdout


async def test_cli_refusals_are_one_clear_line(env: Env) -> None:
    missing = calsync(env, "links", "calendars", "lnk_nope")
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "calsync: no link 'lnk_nope' (see: calsync links list)"
    )
    naive = calsync(
        env,
        "links",
        "import",
        "--activity",
        "a",
        "--account",
        "x@example.com",
        "--refresh-token",
        "r",
        "--access-token",
        "t",
        "--expires-at",
        "2026-01-01T00:00:00",
    )
    assert naive.returncode == 2 and "no time zone" in naive.stderr
    email, refresh = env.account()
    env.sandbox.revoke(email)
    revoked_link = (
        calsync(
            env,
            "links",
            "import",
            "--activity",
            "a",
            "--account",
            email,
            "--refresh-token",
            refresh,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    revoked = calsync(env, "links", "calendars", revoked_link)
    assert revoked.returncode == 1 and "invalid_grant" in revoked.stderr
    assert "Traceback" not in revoked.stderr


async def test_consume_refuses_to_start_on_an_unmigrated_database(env: Env) -> None:
    env.settings = env.settings.model_copy(update={"database_url": env.fresh_database("empty")})
    result = calsync(env, "consume")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "calsync: the database is not migrated ("
        + ", ".join(sorted(p.name for p in (ROOT / "sql").glob("*.sql")))
        + " pending): "
        "run `calsync migrate` first"
    )


async def test_consume_says_when_kafka_is_unreachable(env: Env) -> None:
    from calsync_dev.stack import free_port

    env.settings = env.settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    result = calsync(env, "consume")
    assert result.returncode == 1
    assert "calsync: cannot reach Kafka at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
