"""`calsync links ...`: connect, import, calendars, select, disconnect, list."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from consumer import bootstrap
from consumer.domain.errors import CliError
from consumer.domain.records import Backfill
from consumer.entrypoints.cli_ops import print_json
from consumer.service import links
from consumer.service.answers import Chosen, Imported, LinkSummary
from consumer.settings import Settings

T = TypeVar("T")


def _with_links(settings: Settings, work: Callable[[links.LinkService], Awaitable[T]]) -> T:
    async def run() -> T:
        async with bootstrap.link_service(settings) as service:
            return await work(service)

    return asyncio.run(run())


def add_links_commands(sub: Any, aware: Callable[[str], datetime]) -> None:
    """The `links` subcommands, on the main parser's subparsers (`aware`: the type of an
    ISO 8601 date-time with its time zone)."""
    link = sub.add_parser("links", help="calendar links").add_subparsers(
        dest="links_command", required=True
    )
    con = link.add_parser(
        "connect",
        help="start connecting a Google account to an activity: "
        "prints the consent URL to open in a browser",
    )
    con.add_argument("activity")
    dis = link.add_parser("disconnect", help="revoke the account's token and stop syncing")
    dis.add_argument("link")
    dis.add_argument(
        "--remove-events",
        action="store_true",
        help="also delete the link's events from the calendar (default: keep)",
    )
    _add_import_command(link, aware)
    cal = link.add_parser("calendars", help="the account's calendars, from Google")
    cal.add_argument("link")
    cal.add_argument("--json", action="store_true")
    sel = link.add_parser("select", help="choose the calendar that receives events")
    sel.add_argument("link")
    sel.add_argument("calendar_id")
    lst = link.add_parser("list", help="all links and their state")
    lst.add_argument("--json", action="store_true")


def _add_import_command(link: Any, aware: Callable[[str], datetime]) -> None:
    imp = link.add_parser("import", help="register a link from tokens obtained elsewhere")
    imp.add_argument("--activity", required=True)
    imp.add_argument("--account", required=True, help="the Google account's email")
    refresh = imp.add_mutually_exclusive_group(required=True)
    refresh.add_argument(
        "--refresh-token-file",
        metavar="PATH",
        help="read the refresh token from this file, or from standard input with '-' "
        "(a trailing newline is ignored; on a terminal it is asked for without echo)",
    )
    refresh.add_argument(
        "--refresh-token",
        metavar="TOKEN",
        help="visible in shell history and ps: the token on the command line is seen by "
        "every user of the machine and stays in the history; prefer --refresh-token-file",
    )
    imp.add_argument(
        "--access-token",
        help="a current access token (on the command line like --refresh-token, but it "
        "expires within the hour); optional, with --expires-at",
    )
    imp.add_argument("--expires-at", type=aware, help="access token expiry, ISO 8601")
    imp.add_argument(
        "--calendar",
        help="calendar id: the link is active and backfilled like a select (waited for); "
        "without it the link is pending",
    )
    imp.add_argument(
        "--no-backfill",
        action="store_true",
        help="with --calendar: activate the link without backfilling the activity's bookings "
        "(the next reconcile writes what is missing, all at once)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`calsync links ...`."""
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "import": _links_import,
        "connect": _links_connect,
        "calendars": _links_calendars,
        "select": _links_select,
        "disconnect": _links_disconnect,
        "list": _links_list,
    }
    return commands[args.links_command](args, settings)


def _links_import(args: argparse.Namespace, settings: Settings) -> int:
    if (args.access_token is None) != (args.expires_at is None):
        raise CliError("--access-token and --expires-at go together")
    if args.no_backfill and not args.calendar:
        raise CliError("--no-backfill goes with --calendar (a pending link backfills nothing)")
    refresh_token = _refresh_token(args)

    async def work(service: links.LinkService) -> tuple[Imported, Backfill | None]:
        imported = await service.imported(
            activity_id=args.activity,
            account_email=args.account,
            refresh_token=refresh_token,
            access_token=args.access_token,
            expires_at=args.expires_at,
            calendar_id=args.calendar,
            backfill=not args.no_backfill,
        )
        ids = [imported.backfill_id] if imported.backfill_id is not None else []
        return imported, next(iter(await service.backfills(ids)), None)

    imported, backfill = _with_links(settings, work)
    state = "active" if args.calendar else "pending (choose a calendar: calsync links select)"
    if args.calendar and args.no_backfill:
        state += ", not backfilled (--no-backfill)"
    print(
        f"imported link for {args.account} on activity {args.activity}: {state}",
        file=sys.stderr,
    )
    if backfill is not None:
        print(_will_write(backfill), file=sys.stderr)
        print(f"backfilled: {_counts(imported.backfill or {})}")
    print(imported.link_id)
    return 0


def _links_connect(args: argparse.Namespace, settings: Settings) -> int:
    started = _with_links(settings, lambda s: s.start_connect(args.activity))
    print(
        f"open this URL in a browser and sign in with the Google account to connect to "
        f"activity {started.activity_id} (valid until {started.expires_at.isoformat()}); "
        f"Google will send the browser back to {started.redirect_uri}",
        file=sys.stderr,
    )
    print(started.authorization_url)
    return 0


def _links_calendars(args: argparse.Namespace, settings: Settings) -> int:
    calendars = _with_links(settings, lambda s: s.calendars(args.link))
    if args.json:
        print_json([c.model_dump() for c in calendars])
    else:
        print(f"{'NAME':30} {'PRIMARY':8} {'WRITABLE':9} {'TAKEN':6} ID")
        for c in calendars:
            print(
                f"{c.name[:30]:30} {'yes' if c.primary else 'no':8} "
                f"{'yes' if c.writable else 'no':9} {'yes' if c.taken else 'no':6} {c.id}"
            )
    return 0


def _links_select(args: argparse.Namespace, settings: Settings) -> int:
    chosen = _with_links(
        settings, lambda s: _select_showing_progress(s, args.link, args.calendar_id)
    )
    merged = f" (folded into earlier link {chosen.link.id})" if chosen.merged_from else ""
    print(
        f"link {args.link} now syncs to calendar {chosen.calendar.name!r} "
        f"({chosen.calendar.id}){merged}; backfilled: {_counts(chosen.backfill or {})}"
    )
    return 0


def _links_disconnect(args: argparse.Namespace, settings: Settings) -> int:
    done = _with_links(settings, lambda s: s.disconnect(args.link, args.remove_events))
    events = (
        f"{done.events_removed} events removed"
        if args.remove_events
        else "events kept on the calendar"
    )
    token = (
        "token revoked at Google"
        if done.token_revoked
        else f"token not revoked at Google (still used by {', '.join(done.token_still_used_by)})"
        if done.token_still_used_by
        else "token was already revoked"
    )
    print(f"link {args.link} disconnected: {events}; {token}")
    return 0


def _links_list(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(_list_links(settings))
    if args.json:
        print_json([r.model_dump() for r in rows])
        return 0
    print(
        f"{'ID':22} {'ACTIVITY':14} {'ACCOUNT':30} {'STATE':21} {'SINCE':20} {'CALENDAR':24} REASON"
    )
    for r in rows:
        print(
            f"{r.id:22} {r.activity_id[:14]:14} {r.account_email[:30]:30} "
            f"{r.state:21} {r.state_changed_at.isoformat()[:19]:20} "
            f"{(r.calendar_id or '-')[:24]:24} {r.state_reason or ''}"
        )
    return 0


def _refresh_token(args: argparse.Namespace) -> str:
    """`links import`'s refresh token: from --refresh-token-file (a file, or standard input
    with `-`), or from --refresh-token. Surrounding whitespace (the file's trailing newline)
    is not part of it; an empty one is refused."""
    token: str
    if args.refresh_token is not None:
        token, source = str(args.refresh_token), "--refresh-token"
    elif args.refresh_token_file == "-":
        source = "standard input"
        if sys.stdin.isatty():
            token = getpass.getpass("refresh token: ")
        else:
            token = sys.stdin.read()
    else:
        source = str(args.refresh_token_file)
        try:
            with open(args.refresh_token_file, encoding="utf-8") as file:
                token = file.read()
        except OSError as exc:
            raise CliError(f"cannot read {args.refresh_token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"{args.refresh_token_file} is not UTF-8 text") from None
    token = token.strip()
    if not token:
        raise CliError(f"the refresh token is empty (read from {source})")
    return token


async def _list_links(settings: Settings) -> list[LinkSummary]:
    """`links list` reads the links table alone (no Google, no sync engine, no quota)."""
    async with bootstrap.link_tables(settings) as store:
        return [LinkSummary.of(row) for row in await store.repository.all_links()]


async def _select_showing_progress(
    service: links.LinkService, link_id: str, calendar_id: str
) -> Chosen:
    """`links select`: how many bookings the backfill will write, on stderr as soon as it
    is counted (before any is written); on a terminal, then, its progress while it runs
    (one line that rewrites itself: done of total, rate, about how long is left)."""
    from consumer.service.progress import progress, quota_ceiling

    before = (await service.latest_backfills([link_id])).get(link_id)
    selecting = asyncio.create_task(service.select(link_id, calendar_id))
    told, shown = False, False
    while True:
        done, _ = await asyncio.wait([selecting], timeout=0.2 if not told else 1.0)
        if done:
            break
        latest = (await service.latest_backfills([link_id])).get(link_id)
        if latest is None or latest.total is None or (before and latest.id == before.id):
            continue
        if not told:
            print(_will_write(latest), file=sys.stderr, flush=True)
            told = True
        if not sys.stderr.isatty() or latest.finished_at is not None:
            continue
        view = progress(latest, quota_ceiling(service.settings))
        left = f", about {view.remaining_s:.0f}s left" if view.remaining_s else ""
        sys.stderr.write(f"\rbackfilling: {view.done}/{view.total or '?'} booking(s){left}   ")
        sys.stderr.flush()
        shown = True
    if shown:
        sys.stderr.write("\n")
    chosen = await selecting
    if not told:  # done before it was seen (or folded into an earlier link)
        ended = await service.backfills([chosen.backfill_id])
        if ended:
            print(_will_write(ended[0]), file=sys.stderr)
    return chosen


def _will_write(backfill: Backfill) -> str:
    """How many bookings a backfill writes, and from when on (the horizon)."""
    total = backfill.total or 0
    since = f" (those ending after {backfill.horizon.isoformat()})" if backfill.horizon else ""
    return f"backfill: {total} booking{'s' if total != 1 else ''} will be written{since}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items()) or "nothing to do"
