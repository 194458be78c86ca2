"""The text a person reads at a terminal, rendered from what the services answer: the
screens of `calsync status` and `calsync reconcile` (their `--json` dumps the same answers)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from consumer.domain.drift import REPAIRED_KINDS, LinkReport
from consumer.service.answers import Status


def outstanding_text(answer: Status) -> str:
    """The work owed in one line: what to wait for before calling an incident over."""
    owed = answer.outstanding
    accounts = ", ".join(f"{account} {due}" for account, due in owed.by_account.items())
    return (
        f"outstanding: {owed.total} ({owed.messages} message(s) not committed, "
        f"{owed.repairs_due} repair(s) due" + (f"; most owed: {accounts}" if accounts else "") + ")"
    )


def _lag_lines(answer: Status, status: dict[str, Any]) -> list[str]:
    """The lag, the work owed, the lag per partition and what stalls a partition."""
    lines = [
        f"lag: {status['total_lag']} message(s)",
        outstanding_text(answer),
        "  " + "  ".join(f"p{p['partition']}={p['lag']}" for p in status["partitions"]),
    ]
    for stall in status["stalls"]:
        lines.append(
            f"  STALLED p{stall['partition']} at offset {stall['offset']} "
            f"(key {stall['key']!r}) for {stall['waiting_s']:.0f}s on "
            f"{stall['member']}: {stall['cause']}"
        )
    return lines


def _repairs_line(repairs: dict[str, Any]) -> str:
    if not repairs["waiting"]:
        return "repairs: none waiting"
    reasons = ", ".join(f"{reason} {n}" for reason, n in repairs["by_reason"].items())
    return (
        f"repairs: {repairs['waiting']} (link, booking) pair(s) not on their "
        f"calendar yet, {repairs['due']} due now, oldest "
        f"{repairs['oldest_age_s']:.0f}s ago ({reasons})"
    )


def status_text(answer: Status) -> str:
    """`calsync status`: one screen for on-call."""
    status = answer.model_dump()
    lines = [
        f"deployment {status['deployment_id']} ("
        + (
            "CALSYNC_DEPLOYMENT_ID"
            if status["deployment_id_source"] == "setting"
            else "the database's, made by calsync migrate"
        )
        + ")",
        f"group {status['group']} on topic {status['topic']}: "
        f"{len(status['members'])} live member(s) "
        f"(broker: {status['broker_group']['state']}, "
        f"{status['broker_group']['members']} listed)",
    ]
    for m in status["members"]:
        lines.append(f"  {m['member']:40} partitions {m['partitions']}  seen {m['seen_at'][:19]}")
    lines += _lag_lines(answer, status)
    lines.append("links:")
    for row in status["links"]:
        reasons = f"  ({'; '.join(row['reasons'])})" if row["reasons"] else ""
        lines.append(f"  {row['state']:22} {row['links']}{reasons}")
    lines.append(
        "failures in the last hour:"
        if status["failures_last_hour"]
        else "failures in the last hour: none"
    )
    for row in status["failures_last_hour"]:
        lines.append(f"  {row['outcome']:8} {row['reason']:28} {row['results']}")
    lines.append(_repairs_line(status["repairs"]))
    for backfill in status["backfills"]:
        left = f", about {backfill['remaining_s']:.0f}s left" if backfill["remaining_s"] else ""
        lines.append(
            f"backfill #{backfill['id']} of link {backfill['link_id']}: "
            f"{backfill['status']}, {backfill['done']}/{backfill['total']}{left}"
        )
    lines.append(reconcile_run_line(status["reconcile"]))
    dlq = status["dead_letters"]
    lines.append(
        f"dead letters: {dlq['waiting']} waiting (of {dlq['total']})"
        + (f", oldest {dlq['oldest_waiting'][:19]}" if dlq["oldest_waiting"] else "")
    )
    return "\n".join(lines)


def reconcile_run_line(run: dict[str, Any] | None) -> str:
    """`calsync status`: the latest reconcile run, in one line."""
    if run is None:
        return "reconcile: never run"
    found = ", ".join(f"{k} {v}" for k, v in sorted(run["found"].items())) or "no drift"
    fixed = sum(run["repaired"].values())
    when = (
        f"running since {run['started_at'][:19]}"
        if run["running"]
        else f"finished {run['finished_at'][:19]}"
    )
    return (
        f"reconcile #{run['id']} ({run['trigger']}, "
        f"{'executed' if run['executed'] else 'dry run'}): {when}, "
        f"{run['links_done']}/{run['links_total']} link(s), {found}"
        + (f", repaired {fixed}" if run["executed"] else "")
        + (f"; FAILED: {run['error']}" if run["error"] else "")
    )


def reconcile_text(reports: list[LinkReport], executed: bool) -> str:
    """`calsync reconcile`: each link's drift, then the sum (a dry run says how to repair)."""
    lines = []
    total: Counter[str] = Counter()
    for r in reports:
        found = r.found()
        total.update(found)
        head = (
            f"link {r.link_id} ({r.account_email}, calendar {r.calendar_id}): "
            f"{r.events_seen} event(s) of ours seen"
        )
        if r.error:
            lines.append(f"{head}; FAILED: {r.error}")
            continue
        if not found:
            lines.append(f"{head}; exact")
            continue
        lines.append(
            f"{head}; "
            + ", ".join(f"{n} {k}" for k, n in sorted(found.items()))
            + (f"; repaired {sum(r.repaired.values())}" if executed else "")
        )
        lines += [f"  NOT REPAIRED {why}" for why in r.unrepaired]
        for d in r.drift:
            what = f"booking {d.booking_id}" if d.booking_id else "no booking"
            event = f" event {d.event_id}" if d.event_id else ""
            detail = f" ({d.detail})" if d.detail else ""
            lines.append(f"  {d.kind:10} {what}{event}{detail}")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(total.items())) or "no drift"
    repairable = any(total[kind] for kind in REPAIRED_KINDS)
    lines.append(
        f"{len(reports)} link(s): {summary}"
        + ("" if executed or not repairable else " (dry run: --execute repairs it)")
        + (" (foreign: another deployment's events, left alone)" if total["foreign"] else "")
    )
    return "\n".join(lines)
