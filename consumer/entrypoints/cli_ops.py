"""`calsync replay`, `calsync status`, `calsync dlq`: the on-call commands."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING, Any

from consumer.domain.errors import CliError
from consumer.service.answers import DeadLetterMessage
from consumer.settings import Settings

if TYPE_CHECKING:  # imported where a command runs: each command loads only what it needs
    from consumer.service.operations import PartitionPlan


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _dead_letter_json(letter: DeadLetterMessage) -> dict[str, Any]:
    """A dead letter whole, for a person's eyes: key, value and headers as UTF-8 text
    (bytes that are not UTF-8 as backslash escapes)."""
    shown = letter.model_dump()
    for key in ("message_key", "message_value"):
        raw = shown[key]
        shown[key] = raw.decode("utf-8", "backslashreplace") if raw is not None else None
    shown["headers"] = [[k, v.decode("utf-8", "backslashreplace")] for k, v in letter.headers]
    return shown


def replay(args: argparse.Namespace, settings: Settings) -> int:
    from consumer import bootstrap
    from consumer.service import operations as ops

    group, topic = _replay_target(args, settings)
    spec = ops.ResetSpec(
        args.to_datetime, args.by_duration, args.to_offset, args.shift_by, args.to_earliest
    )
    store, admin = bootstrap.ops_store(settings), bootstrap.group_admin(settings)

    async def run() -> tuple[list[ops.PartitionPlan], int | None]:
        await ops.refuse_if_active(store, group)
        plan = await ops.plan_replay(admin, group, topic, args.partitions, spec)
        resynced = None
        if args.execute:
            await ops.execute_replay(admin, group, topic, plan)
            if args.resync:
                resynced = await bootstrap.resync(
                    settings, await ops.affected_bookings(admin, topic, plan)
                )
        await ops.record_replay(
            store, group, topic, spec, plan, args.execute, args.resync, args.by, resynced
        )
        return plan, resynced

    plan, resynced = asyncio.run(run())
    _print_replay(args, group, topic, plan, resynced)
    return 0


def _replay_target(args: argparse.Namespace, settings: Settings) -> tuple[str, str]:
    """The group and topic a replay is about (refusing arguments that do not go together);
    `topic:0,1,2` (kafka-consumer-groups' way) sets the partitions."""
    if args.resync and not args.execute:
        raise CliError("--resync goes with --execute (a dry run changes nothing)")
    if args.dry_run and args.execute:
        raise CliError("--dry-run and --execute exclude each other")
    group, topic = args.group or settings.group_id, args.topic or settings.topic
    if ":" in topic:
        topic, _, listed = topic.partition(":")
        if args.partitions:
            raise CliError("give partitions once: --topic T:0,1 or --partitions 0,1")
        try:
            args.partitions = sorted({int(p) for p in listed.split(",") if p.strip()})
        except ValueError:
            raise CliError(f"not a list of partitions after {topic}: {listed!r}") from None
    return group, topic


def _print_replay(
    args: argparse.Namespace,
    group: str,
    topic: str,
    plan: list[PartitionPlan],
    resynced: int | None,
) -> None:
    if args.json:
        print_json(
            {
                "group": group,
                "topic": topic,
                "executed": args.execute,
                "resynced": resynced,
                "partitions": [
                    {
                        "partition": p.partition,
                        "current": p.current,
                        "new": p.new,
                        "rereads": p.rereads,
                    }
                    for p in plan
                ],
            }
        )
        return
    print(f"{'PARTITION':10} {'CURRENT':>10} {'NEW':>10} {'RE-READ':>8}")
    for p in plan:
        print(f"{p.partition:<10} {p.current:>10} {p.new:>10} {p.rereads:>8}")
    total = sum(p.rereads for p in plan)
    if not args.execute:
        print(
            f"dry run: {total} message(s) would be re-read by group {group}; add --execute to apply"
        )
    else:
        print(
            f"done: group {group} will re-read {total} message(s) on {topic}"
            + (f"; {resynced} event operation(s) re-applied to Google" if args.resync else "")
        )


def status(args: argparse.Namespace, settings: Settings) -> int:
    from consumer import bootstrap
    from consumer.entrypoints.text import status_text
    from consumer.service import status as on_call
    from consumer.service.progress import quota_ceiling

    collected = asyncio.run(
        on_call.collect(
            bootstrap.ops_store(settings),
            bootstrap.group_admin(settings),
            settings.group_id,
            settings.topic,
            quota_ceiling(settings),
            settings.deployment_id,
            bootstrap.repair_store(settings),
        )
    )
    if args.json:
        print_json(collected.model_dump())
    else:
        print(status_text(collected))
    return 0


def repair(args: argparse.Namespace, settings: Settings) -> int:
    """`calsync repair [--link LINK] [--now]`: work the repairs here and now."""
    from consumer import bootstrap
    from consumer.service.status import repair_summary

    async def run() -> dict[str, Any]:
        async with bootstrap.services(settings, pool_size=8) as svc:
            if args.link and await svc.repository.link(args.link) is None:
                raise CliError(f"no link {args.link!r} (see: calsync links list)")
            made_due = lifted = 0
            if args.now:  # an operator's word: backoffs and Google pauses waived
                made_due = await svc.repairs.make_due(args.link)
                account = None
                if args.link:
                    row = await svc.repository.link(args.link)
                    account = row.link.account_email if row else None
                lifted = await svc.calls.quota.lift_pauses(account)
            outcomes = await bootstrap.repair_loop(svc).drain(args.link)
            left = repair_summary(await bootstrap.ops_store(settings).repair_counts())
        return {
            "made_due": made_due,
            "pauses_lifted": lifted,
            "worked": sum(outcomes.values()),
            "outcomes": dict(outcomes),
            "still_waiting": left.model_dump(),
        }

    answer = asyncio.run(run())
    if args.json:
        print_json(answer)
        return 0
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(answer["outcomes"].items())) or "none"
    left = answer["still_waiting"]
    print(
        f"worked {answer['worked']} repair(s): {outcomes}; {left['waiting']} still waiting"
        + (
            f" ({', '.join(f'{k} {v}' for k, v in left['by_reason'].items())})"
            if left["waiting"]
            else ""
        )
    )
    return 0


def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """`calsync reconcile [--link LINK] [--execute] [--json]`."""
    import getpass
    import socket
    import sys

    from consumer import bootstrap
    from consumer.domain.drift import LinkReport
    from consumer.entrypoints.text import reconcile_text
    from consumer.service import reconcile as drift
    from consumer.service.reconcile_runs import Progress

    def show(progress: Progress) -> None:  # a line that rewrites itself, on a terminal
        eta = progress.eta_s()
        sys.stderr.write(
            f"\rreconciling: {progress.links_done}/{progress.links_total} "
            f"link(s), {progress.repairs_done}/{progress.repairs_total} "
            f"repair(s)" + (f", about {eta:.0f}s left" if eta else "") + "   "
        )
        sys.stderr.flush()

    async def run() -> tuple[int, list[LinkReport]]:
        async with bootstrap.services(settings, pool_size=8) as svc:
            if args.link:
                row = await svc.repository.link(args.link)
                if row is None:
                    raise CliError(f"no link {args.link!r} (see: calsync links list)")
                if row.link.state.value != "active":
                    raise CliError(
                        f"link {args.link} is {row.link.state.value}: only active "
                        "links are reconciled"
                    )
            reconciler = bootstrap.reconciler(svc)
            run_id = await reconciler.start(
                "cli", f"{getpass.getuser()}@{socket.gethostname()}", args.execute, args.link
            )
            on_tty = sys.stderr.isatty() and not args.json
            reports = await reconciler.run(run_id, show if on_tty else None)
            if on_tty:
                sys.stderr.write("\n")
            return run_id, reports

    run_id, reports = asyncio.run(run())
    if args.json:
        print(json.dumps(drift.result(run_id, reports, args.execute).model_dump(), indent=2))
    else:
        print(reconcile_text(reports, args.execute))
    # Exit 1 when a link could not be reconciled, or a repair failed: said in the output.
    return 1 if any(r.error or r.unrepaired for r in reports) else 0


def dlq(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from consumer import bootstrap
    from consumer.service import operations as ops

    store = bootstrap.ops_store(settings)
    if args.dlq_command == "list":
        rows = asyncio.run(ops.dead_letters(store, args.all))
        if args.json:
            print_json([r.model_dump() for r in rows])
            return 0
        print(f"{'ID':>6} {'RECORDED':19} {'SOURCE':28} {'TYPE':24} {'REPLAYED':19} ERROR")
        for r in rows:
            source = f"{r.topic}/{r.kafka_partition}@{r.kafka_offset}"
            replayed = r.replayed_at.isoformat()[:19] if r.replayed_at else "-"
            print(
                f"{r.id:>6} {r.recorded_at.isoformat()[:19]:19} {source[:28]:28} "
                f"{r.error_type[:24]:24} {replayed:19} {r.error[:60]}"
            )
        return 0
    if args.dlq_command == "show":
        print_json(_dead_letter_json(asyncio.run(ops.dead_letter(store, args.id))))
        return 0
    value = None
    if args.value_file:
        try:
            value = Path(args.value_file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.value_file}: {exc.strerror}") from None
    done = asyncio.run(
        ops.replay_dead_letters(
            store, bootstrap.group_admin(settings), args.ids, args.rate, value, args.by
        )
    )
    print(f"put back {len(done)} dead letter(s): {', '.join(map(str, done)) or 'none waiting'}")
    return 0
