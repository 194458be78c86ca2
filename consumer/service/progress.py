"""A long job's progress, as people read it: done of total, rate, an estimated end. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta

from consumer.domain.records import Backfill
from consumer.service.answers import BackfillProgress
from consumer.settings import Settings

STALLED_AFTER_S = 30.0  # a job without news for this long lost its process (or is stuck)


def progress(backfill: Backfill, ceiling_per_s: float | None = None) -> BackfillProgress:
    """A backfill's progress: status, count done of total, rate and estimated end. The end
    is bound by the quota: `ceiling_per_s` is the most bookings a second the account's
    quota allows (10,000 bookings at 600 calls a minute take 17 minutes, whatever the first
    seconds' pace suggests)."""
    now = backfill.now
    end = backfill.finished_at or now
    elapsed = max((end - backfill.started_at).total_seconds(), 0.001)
    rate = backfill.done / elapsed if backfill.done else None
    if backfill.finished_at is not None:
        status = "failed" if backfill.error else "finished"
    elif (now - backfill.updated_at).total_seconds() > STALLED_AFTER_S:
        status = "stalled"
    else:
        status = "running"
    remaining = None if backfill.total is None else max(backfill.total - backfill.done, 0)
    estimated_end: datetime | None = None
    if status == "running" and remaining is not None:
        if remaining == 0:
            estimated_end = now
        else:
            pace = min(rate, ceiling_per_s) if rate and ceiling_per_s else rate or ceiling_per_s
            if pace:
                estimated_end = now + timedelta(seconds=remaining / pace)
    percent = (
        100
        if backfill.total == 0
        else None
        if backfill.total is None
        else min(100, round(100 * backfill.done / backfill.total))
    )
    outcomes = {k: v for k, v in backfill.counts.items() if k != "bookings"}
    return BackfillProgress(
        id=backfill.id,
        link_id=backfill.link_id,
        calendar_id=backfill.calendar_id,
        calendar_name=backfill.calendar_name,
        trigger=backfill.trigger,
        status=status,
        total=backfill.total,
        done=backfill.done,
        percent=percent,
        counts=backfill.counts,
        outcomes=outcomes,
        rate_per_s=round(rate, 2) if rate is not None else None,
        estimated_end=estimated_end,
        remaining_s=(estimated_end - now).total_seconds() if estimated_end else None,
        started_at=backfill.started_at,
        finished_at=backfill.finished_at,
        elapsed_s=round(elapsed, 1),
        error=backfill.error,
    )


def quota_ceiling(settings: Settings) -> float | None:
    """The most calls a second one account's quota allows the group (None: no limit)."""
    per_min = settings.quota_per_account_per_min
    return per_min * settings.quota_use_share / 60 if per_min else None
