"""`calsync`: the command line of calendar-sync."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import NoReturn, TypeVar

import psycopg
from pydantic import ValidationError

from consumer import bootstrap
from consumer.adapters.crypto import TokenCipher
from consumer.adapters.postgres.migrations import migrate
from consumer.domain.errors import CliError, LinkError, OpsError, StartupError, TokenKeyError
from consumer.domain.records import Backfill
from consumer.entrypoints import cli_ops
from consumer.entrypoints.cli_ops import print_json
from consumer.entrypoints.problems import INTERRUPTED_EXIT_CODE, REFUSED_EXIT_CODE
from consumer.logs import configure_logging
from consumer.service import links
from consumer.service.answers import Chosen, Imported, LinkSummary
from consumer.service.operations import parse_duration
from consumer.settings import Settings

T = TypeVar("T")


def _with_links(settings: Settings, work: Callable[[links.LinkService], Awaitable[T]]) -> T:
    async def run() -> T:
        async with bootstrap.link_service(settings) as service:
            return await work(service)

    return asyncio.run(run())


def _aware(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no time zone; add one, e.g. {value}Z or {value}+02:00"
        )
    return parsed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def _partitions(value: str) -> list[int]:
    try:
        parts = sorted({int(p) for p in value.split(",") if p.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of partitions: {value!r}"
        ) from None
    if not parts or parts[0] < 0:
        raise argparse.ArgumentTypeError(f"not a list of partition numbers: {value!r}")
    return parts


def _duration(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("migrate", help="apply sql/ migrations (running it twice is harmless)")
    sub.add_parser("consume", help="run the consumer until SIGTERM or SIGINT")
    schema = sub.add_parser("schema", help="print the booking event JSON Schema")
    schema.add_argument("--write", action="store_true", help="write it into schemas/")

    replay = sub.add_parser(
        "replay",
        help="reset the group's offsets to re-read messages "
        "(like kafka-consumer-groups --reset-offsets); dry run by default",
    )
    replay.add_argument("--group", help="consumer group (default: CALSYNC_GROUP_ID)")
    replay.add_argument(
        "--topic",
        help="topic, or topic:0,3 for some partitions as "
        "kafka-consumer-groups takes it (default: CALSYNC_TOPIC)",
    )
    replay.add_argument("--partitions", type=_partitions, help="e.g. 0,3,7 (default: all)")
    replay.add_argument("--dry-run", action="store_true", help="the default: print the plan")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-datetime", type=_aware, help="ISO 8601 with a time zone")
    where.add_argument(
        "--by-duration", type=_duration, help="ISO 8601 duration back from now, e.g. PT2H"
    )
    where.add_argument("--to-offset", type=int)
    where.add_argument("--shift-by", type=int, help="negative: re-read that many")
    where.add_argument("--to-earliest", action="store_true")
    replay.add_argument("--execute", action="store_true", help="apply the plan")
    replay.add_argument(
        "--resync",
        action="store_true",
        help="with --execute: also re-apply the latest state of the affected bookings to Google",
    )
    replay.add_argument("--by", help="who asks (recorded; default: user@host)")
    replay.add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="members, lag, links, failures, repairs, dead letters")
    status.add_argument("--json", action="store_true")
    repair = sub.add_parser(
        "repair",
        help="re-drive (link, booking) pairs left off their "
        "calendar now, instead of at their due time",
    )
    repair.add_argument("--link", help="only this link's")
    repair.add_argument(
        "--now",
        action="store_true",
        help="all of them, not only those due (their backoff is waived)",
    )
    repair.add_argument("--json", action="store_true")
    reconcile = sub.add_parser(
        "reconcile",
        help="compare each active link's calendar with "
        "the bookings: missing, changed by hand, "
        "orphaned, duplicated events (a dry run by "
        "default)",
    )
    reconcile.add_argument("--link", help="only this link")
    reconcile.add_argument(
        "--execute",
        action="store_true",
        help="repair what is found (through the sync's claimed path)",
    )
    reconcile.add_argument("--json", action="store_true")
    dlq = sub.add_parser("dlq", help="dead letters").add_subparsers(
        dest="dlq_command", required=True
    )
    dlq_list = dlq.add_parser("list", help="dead letters waiting (--all: replayed ones too)")
    dlq_list.add_argument("--all", action="store_true")
    dlq_list.add_argument("--json", action="store_true")
    dlq_show = dlq.add_parser("show", help="one dead letter, whole")
    dlq_show.add_argument("id", type=int)
    dlq_replay = dlq.add_parser("replay", help="put dead letters back on their topic, once")
    dlq_replay.add_argument("ids", type=int, nargs="*", help="default: all waiting")
    dlq_replay.add_argument("--rate", type=_positive, default=10.0, help="messages a second")
    dlq_replay.add_argument("--value-file", help="a corrected value for one dead letter")
    dlq_replay.add_argument("--by", help="who asks (recorded; default: user@host)")

    sub.add_parser(
        "serve",
        help="the links HTTP API and Google's OAuth redirect "
        "(CALSYNC_HTTP_HOST, CALSYNC_HTTP_PORT, CALSYNC_ADMIN_TOKEN)",
    )
    keys = sub.add_parser(
        "keys", help="the token encryption key (CALSYNC_TOKEN_KEY)"
    ).add_subparsers(dest="keys_command", required=True)
    keys.add_parser("generate", help="print a new key")
    keys.add_parser("rotate", help="re-encrypt every stored token under the first key")

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
    imp.add_argument("--expires-at", type=_aware, help="access token expiry, ISO 8601")
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
    cal = link.add_parser("calendars", help="the account's calendars, from Google")
    cal.add_argument("link")
    cal.add_argument("--json", action="store_true")
    sel = link.add_parser("select", help="choose the calendar that receives events")
    sel.add_argument("link")
    sel.add_argument("calendar_id")
    lst = link.add_parser("list", help="all links and their state")
    lst.add_argument("--json", action="store_true")
    return parser


def _cmd_links(args: argparse.Namespace, settings: Settings) -> int:
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


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    if args.keys_command == "generate":
        print(TokenCipher.generate_key())
        return 0

    async def rotate() -> tuple[int, int, int]:
        async with bootstrap.link_tables(settings) as store:
            return await store.rotate_key()

    grants_done, links_done, states_done = asyncio.run(rotate())
    print(
        f"re-encrypted the tokens of {links_done} link(s) ({grants_done} Google account "
        f"grant(s)) and {states_done} pending connection(s) under the first key of "
        "CALSYNC_TOKEN_KEY"
    )
    return 0


def _cmd_serve(settings: Settings) -> int:
    from consumer.entrypoints.http_api import serve

    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise CliError("CALSYNC_ADMIN_TOKEN is not set: the API needs a bearer credential")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with bootstrap.link_service(settings) as service:
            await serve(settings, service, stop)

    asyncio.run(run())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(
            f"calsync: invalid settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
            file=sys.stderr,
        )
        return 2
    quiet = args.command not in ("consume", "serve") and settings.log_level.upper() == "INFO"
    # A person running a one-off command reads its answer, not the service's info lines.
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}) if quiet else settings)
    handlers: dict[str, Callable[[], int]] = {
        "migrate": lambda: _cmd_migrate(settings),
        "consume": lambda: _cmd_consume(settings),
        "schema": lambda: _cmd_schema(args.write),
        "links": lambda: _cmd_links(args, settings),
        "keys": lambda: _cmd_keys(args, settings),
        "serve": lambda: _cmd_serve(settings),
        "replay": lambda: cli_ops.replay(args, settings),
        "status": lambda: cli_ops.status(args, settings),
        "repair": lambda: cli_ops.repair(args, settings),
        "reconcile": lambda: cli_ops.reconcile(args, settings),
        "dlq": lambda: cli_ops.dlq(args, settings),
    }
    try:
        return handlers[args.command]()
    except (CliError, LinkError, StartupError, TokenKeyError, OpsError) as exc:
        print(f"calsync: {exc}", file=sys.stderr)
        return REFUSED_EXIT_CODE
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"calsync: cannot reach PostgreSQL: {first_line}", file=sys.stderr)
        return REFUSED_EXIT_CODE
    except KeyboardInterrupt:
        return INTERRUPTED_EXIT_CODE


def _cmd_migrate(settings: Settings) -> int:
    applied = migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
    return 0


def _cmd_consume(settings: Settings) -> int:
    from consumer.entrypoints.worker import run_process

    return run_process(settings)


def _cmd_schema(write: bool) -> int:
    from consumer.entrypoints.schema import SCHEMA_PATH, booking_event_schema_text

    text = booking_event_schema_text()
    if write:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
