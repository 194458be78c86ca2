"""`calsync`: the command line of calendar-sync."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from pydantic import ValidationError

from consumer import links
from consumer.db import migrate
from consumer.logs import configure_logging
from consumer.settings import Settings


class CliError(Exception):
    """A refusal the user can act on: printed as one line, exit status 1."""


def _aware(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no time zone; add one, e.g. {value}Z or {value}+02:00")
    return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply sql/ migrations (running it twice is harmless)")
    sub.add_parser("consume", help="run the consumer until SIGTERM or SIGINT")
    schema = sub.add_parser("schema", help="print the booking event JSON Schema")
    schema.add_argument("--write", action="store_true", help="write it into schemas/")

    link = sub.add_parser("links", help="calendar links").add_subparsers(dest="links_command",
                                                                          required=True)
    imp = link.add_parser("import", help="register a link from tokens obtained elsewhere")
    imp.add_argument("--activity", required=True)
    imp.add_argument("--account", required=True, help="the Google account's email")
    imp.add_argument("--refresh-token", required=True)
    imp.add_argument("--access-token")
    imp.add_argument("--expires-at", type=_aware, help="access token expiry, ISO 8601")
    imp.add_argument("--calendar", help="calendar id; without it the link is pending")
    cal = link.add_parser("calendars", help="the account's calendars, from Google")
    cal.add_argument("link")
    cal.add_argument("--json", action="store_true")
    sel = link.add_parser("select", help="choose the calendar that receives events")
    sel.add_argument("link")
    sel.add_argument("calendar_id")
    lst = link.add_parser("list", help="all links and their state")
    lst.add_argument("--json", action="store_true")

    box = sub.add_parser("sandbox", help="run the Google sandbox HTTP server")
    box.add_argument("--host", default="127.0.0.1")
    box.add_argument("--port", type=int, default=8089)
    demo = sub.add_parser("demo", help="the whole story on an embedded stack (make run)")
    demo.add_argument("--state-dir", default=".run")
    demo.add_argument("--pace", type=float, default=1.0, help="seconds between story steps")
    return parser


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _cmd_links(args: argparse.Namespace, settings: Settings) -> int:
    command = args.links_command
    if command == "import":
        if (args.access_token is None) != (args.expires_at is None):
            raise CliError("--access-token and --expires-at go together")
        link_id = asyncio.run(links.import_link(
            settings, activity_id=args.activity, account_email=args.account,
            refresh_token=args.refresh_token, access_token=args.access_token,
            expires_at=args.expires_at, calendar_id=args.calendar,
            link_id="lnk_" + secrets.token_hex(8)))
        state = "active" if args.calendar else "pending (choose a calendar: calsync links select)"
        print(f"imported link for {args.account} on activity {args.activity}: {state}")
        print(link_id)
        return 0
    if command == "calendars":
        calendars = asyncio.run(links.list_calendars(settings, args.link))
        if args.json:
            _print_json([{"id": c.id, "name": c.name, "primary": c.primary,
                          "writable": c.writable} for c in calendars])
        else:
            print(f"{'NAME':30} {'PRIMARY':8} {'WRITABLE':9} ID")
            for c in calendars:
                print(f"{c.name[:30]:30} {'yes' if c.primary else 'no':8} "
                      f"{'yes' if c.writable else 'no':9} {c.id}")
        return 0
    if command == "select":
        chosen = asyncio.run(links.select_calendar(settings, args.link, args.calendar_id))
        print(f"link {args.link} now syncs to calendar {chosen.name!r} ({chosen.id})")
        return 0
    rows = asyncio.run(links.list_links(settings))
    if args.json:
        _print_json(rows)
    else:
        print(f"{'ID':22} {'ACTIVITY':14} {'ACCOUNT':28} {'STATE':20} CALENDAR")
        for r in rows:
            reason = f" ({r['state_reason']})" if r["state_reason"] else ""
            print(f"{r['id']:22} {r['activity_id'][:14]:14} {r['account_email'][:28]:28} "
                  f"{(r['state'] + reason)[:20]:20} {r['calendar_id'] or '-'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"calsync: invalid settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
              file=sys.stderr)
        return 2
    configure_logging(settings)
    handlers: dict[str, Callable[[], int]] = {
        "migrate": lambda: _cmd_migrate(settings),
        "consume": lambda: _cmd_consume(settings),
        "schema": lambda: _cmd_schema(args.write),
        "links": lambda: _cmd_links(args, settings),
        "sandbox": lambda: _cmd_sandbox(args.host, args.port),
        "demo": lambda: _cmd_demo(args),
    }
    try:
        return handlers[args.command]()
    except (CliError, links.LinkError) as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"calsync: cannot reach PostgreSQL: {first_line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _cmd_migrate(settings: Settings) -> int:
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


def _cmd_consume(settings: Settings) -> int:
    from consumer.app import StartupError, consume

    try:
        asyncio.run(consume(settings, install_signal_handlers=True))
    except StartupError as exc:
        raise CliError(str(exc)) from None
    return 0


def _cmd_schema(write: bool) -> int:
    from consumer.schema import SCHEMA_PATH, booking_event_schema_text

    text = booking_event_schema_text()
    if write:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text, end="")
    return 0


def _cmd_sandbox(host: str, port: int) -> int:
    from consumer.sandbox.server import SandboxHTTPServer

    server = SandboxHTTPServer((host, port))
    print(f"google sandbox listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from consumer.demo import run_demo

    return run_demo(args.state_dir, args.pace)


if __name__ == "__main__":
    sys.exit(main())
