"""`calsync`: the command line of calendar-sync."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import NoReturn, TypeVar

import psycopg
from pydantic import ValidationError

from consumer import bootstrap
from consumer.adapters.crypto import TokenCipher
from consumer.adapters.postgres.migrations import migrate
from consumer.domain.errors import CliError, LinkError, OpsError, StartupError, TokenKeyError
from consumer.entrypoints import cli_links, cli_ops
from consumer.entrypoints.problems import INTERRUPTED_EXIT_CODE, REFUSED_EXIT_CODE
from consumer.logs import configure_logging
from consumer.service.operations import parse_duration
from consumer.settings import Settings

T = TypeVar("T")


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
    _add_replay(sub)
    _add_on_call(sub)
    _add_serving_and_keys(sub)
    cli_links.add_links_commands(sub, _aware)
    return parser


def _add_replay(sub: argparse._SubParsersAction[_Parser]) -> None:
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


def _add_on_call(sub: argparse._SubParsersAction[_Parser]) -> None:
    """status, repair, reconcile, dlq"""
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


def _add_serving_and_keys(sub: argparse._SubParsersAction[_Parser]) -> None:
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
        "links": lambda: cli_links.run(args, settings),
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
