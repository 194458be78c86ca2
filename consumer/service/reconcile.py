"""`calsync reconcile`: find, and with --execute repair, what drifted on the calendars.

For each active link, the events of ours on its calendar (found by their private
`managed_by` property, paged) are compared with what should be there: one event per live
booking of the activity, rendered from the booking's latest state. Each difference is one
of four kinds:

- missing: a live booking with no event of this link (deleted by hand, lost by a bug);
- changed: the booking's event with a rendered field (title, times, location, description,
  status, our private properties) that differs, edited by hand in Google;
- orphaned: an event of this link for no live booking of its activity, an event of a link
  that no longer exists or that moved to another calendar, or an event left on a calendar
  a link moved away from (recorded as stranded then);
- duplicated: a second event of the link for the same booking;
- foreign: an event of another deployment (its private `deployment` property names another
  one; or it has none, from before the tag existed, and names a link that is not ours):
  reported, never touched, and not taken for the booking's event.

Events of other links of ours on the calendar are orphaned when their link no longer
exists, moved to another calendar, or no longer syncs this one (pending: a second link of
the activity on a calendar shared between two accounts, demoted); those of a link that
still syncs it (another activity's) are never touched.

Repairs go through the sync engine's claimed, versioned path, as a message would: missing
and changed are re-applied from the latest state read under the pair's claim, extras are
deleted under the claim of the pair they name (never the event the records hold). Google
calls take the account's and the project's quota slots, so a reconcile is paced like
everything else. A run is recorded in `reconcile_runs` as it goes (links done, what was
found and repaired, a heartbeat): `calsync status` shows it, and a run whose process went
away is resumed by the next one. The consumer group runs one every
`CALSYNC_RECONCILE_INTERVAL_S`, one process at a time (an advisory lock).

Bounded by the horizon (CALSYNC_BACKFILL_PAST_DAYS), not by the history: a link's bookings
that end after it are read in keyset pages, Google's events are listed from it on (`timeMin`)
a page at a time and compared as they come (consumer.domain.drift.CalendarDrift keeps event
ids, not events), and what ended before it is neither created, deleted nor reported. Links
are reconciled one after another, and a link's repairs are worked by a few workers fed from
a bounded queue. The records are read and written through the ReconcileRecords port
(consumer.adapters.postgres.reconcile_store).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from consumer.adapters.classify import is_retriable
from consumer.adapters.metrics import Metrics
from consumer.domain.drift import REPAIRED_KINDS, CalendarDrift, Drift, LinkReport
from consumer.domain.horizon import horizon
from consumer.domain.models import BookingEvent, LinkRow, LinkState
from consumer.domain.records import ReconcileRunState
from consumer.service.answers import ReconcileResult
from consumer.service.bounded import each_bounded
from consumer.service.calls import GoogleCalls
from consumer.service.ports import AccessTokens, ManagedEvents, ReconcileRecords
from consumer.service.reconcile_runs import STRANDED_ELSEWHERE, OnProgress, Progress, RunTally
from consumer.service.sync import SyncEngine

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReconcileConfig:
    deployment: str  # whose events are ours
    past_days: float  # the horizon: CALSYNC_BACKFILL_PAST_DAYS
    repair_concurrency: int = 8  # a link's repairs worked at once
    stale_run_s: float = 120.0  # a run without news for this long lost its process
    heartbeat_s: float = 5.0


class _NotApplied(Exception):
    """A repair went through the sync path and was not applied (its result says why)."""


class Reconciler:
    def __init__(
        self,
        config: ReconcileConfig,
        records: ReconcileRecords,
        calendar: ManagedEvents,
        tokens: AccessTokens,
        calls: GoogleCalls,
        engine: SyncEngine,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.records = records
        self.calendar = calendar
        self.tokens = tokens
        self.calls = calls
        self.engine = engine
        self.metrics = metrics
        self.clock = clock

    # --- runs ---------------------------------------------------------------------------

    async def start(self, trigger: str, who: str, execute: bool, link_id: str | None) -> int:
        links = await self.records.active_links(link_id)
        return await self.records.new_run(trigger, who, execute, link_id, len(links))

    async def run(
        self, run_id: int, on_progress: OnProgress | None = None, keep_reports: bool = True
    ) -> list[LinkReport]:
        """Work a run to its end (resuming after the links it already did). A run cut short
        (its process stopped) stays unfinished, and the group's next look resumes it.
        Returns the reports of the links done here (none unless `keep_reports`: a
        scheduled run keeps no link's report once it is recorded)."""
        run = await self.records.run(run_id)
        assert run is not None
        tally = RunTally.of(run)
        links = [link for link in await self.records.active_links(run.link_filter)]
        progress = Progress(len(set(links) | set(tally.done)), len(tally.done))
        heartbeat = asyncio.create_task(self._heartbeat(run_id, progress))
        out: list[LinkReport] = []
        error: str | None = None
        finished = False
        try:
            await self._links(run, links, tally, progress, on_progress, out, keep_reports)
            finished = True
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            finished = True
            raise
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            if finished:
                await self.records.finish(run_id, error)
        return out

    async def _links(
        self,
        run: ReconcileRunState,
        links: list[str],
        tally: RunTally,
        progress: Progress,
        on_progress: OnProgress | None,
        out: list[LinkReport],
        keep_reports: bool,
    ) -> None:
        """The run's links one after another (one link's work in memory at a time)."""
        done = set(tally.done)
        for link_id in links:
            if link_id in done:
                continue
            report = await self.link(link_id, run.executed, progress, on_progress)
            if report is None:  # left `active` since the run began
                progress.links_total -= 1
                continue
            await self._record(run.id, tally, report, out if keep_reports else None)
            progress.links_done += 1
            if on_progress is not None:
                on_progress(progress)
        if run.executed and run.link_filter is None:
            stranded = await self.stranded_elsewhere()
            if stranded.found():
                await self._record(run.id, tally, stranded, out if keep_reports else None)

    async def _record(
        self, run_id: int, tally: RunTally, report: LinkReport, out: list[LinkReport] | None
    ) -> None:
        tally.add(report)
        if out is not None:
            out.append(report)
        await self.records.save_progress(
            run_id, tally.done, tally.seen, tally.found, tally.repaired, tally.report
        )

    async def _heartbeat(self, run_id: int, progress: Progress) -> None:
        """While a run goes: it is alive (not resumed by another process), and how far."""
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.records.heartbeat(run_id, progress.as_json())
            except Exception as exc:  # the next beat tries again; the run goes on
                log.info("reconcile_heartbeat_missed", cause=type(exc).__name__)

    async def stranded_elsewhere(self) -> LinkReport:
        """Events stranded by links that are not active any more (disconnected, or moved
        again), removed with the token of an active link of the same account; from the
        horizon on, a page at a time."""
        report = LinkReport(STRANDED_ELSEWHERE, "", "", "")
        since = horizon(self.clock(), self.config.past_days)
        async for page in self.records.stranded_elsewhere(since):
            for stranded in page:
                drift = Drift(
                    "orphaned",
                    stranded.booking_id,
                    stranded.google_event_id,
                    "stranded by a link not active any more",
                    link_id=stranded.link_id,
                    calendar_id=stranded.calendar_id,
                )
                report.drift.append(drift)
                helper = stranded.helper_link_id and await self.records.link(
                    stranded.helper_link_id
                )
                if helper:
                    await self._repair_one(helper, report, drift, None, None, None)
        return report

    # --- one link -----------------------------------------------------------------------

    async def link(
        self,
        link_id: str,
        execute: bool,
        progress: Progress | None = None,
        on_progress: OnProgress | None = None,
    ) -> LinkReport | None:
        row = await self.records.link(link_id)
        if row is None or row.link.state is not LinkState.ACTIVE or not row.link.calendar_id:
            return None
        report = LinkReport(
            row.link.id, row.link.activity_id, row.link.account_email, row.link.calendar_id
        )
        try:
            await self._link(row, report, execute, progress, on_progress)
        except Exception as exc:  # one link's trouble is its own: the run goes on
            report.error = f"{type(exc).__name__}: {exc}"
            log.warning("reconcile_link_failed", link_id=link_id, cause=report.error)
        for kind, n in report.found().items():
            self.metrics.reconcile_drift.labels(kind).inc(n)
        return report

    async def _link(
        self,
        row: LinkRow,
        report: LinkReport,
        execute: bool,
        progress: Progress | None,
        on_progress: OnProgress | None,
    ) -> None:
        since = horizon(self.clock(), self.config.past_days)
        comparison = await self._compare(row, since)
        report.drift = comparison.finish() + await self._stranded(row, since)
        report.events_seen = comparison.events_seen
        owed = [d for d in report.drift if d.kind in REPAIRED_KINDS]  # never foreign ones
        if not execute or not owed:
            return
        if progress is not None:
            progress.repairs_total += len(owed)

        async def repair(drift: Drift) -> None:
            await self._repair_one(row, report, drift, comparison, progress, on_progress)

        await each_bounded(owed, repair, self.config.repair_concurrency)

    async def _compare(self, row: LinkRow, since: datetime) -> CalendarDrift:
        """The link's calendar compared with its bookings within the horizon: those read a
        keyset page at a time, then Google's events a page at a time, each page compared as
        it comes with what the records say of the bookings and links it names."""
        link, calendar_id = row.link, str(row.link.calendar_id)
        comparison = CalendarDrift(row, deployment=self.config.deployment, since=since)
        pages = self.records.horizon_bookings(link.id, link.activity_id, calendar_id, since)
        async for page in pages:
            for booking in page:
                comparison.want(booking.event, booking.recorded_event_id)
        page_token: str | None = None
        while True:
            token = await self.tokens.access_token(link.account_email, row.tokens)
            events, page_token = await self.calls.operator(
                link.account_email,
                lambda: self.calendar.managed_events_page(token, calendar_id, page_token, since),  # noqa: B023
            )
            bookings, links = comparison.to_look_up(events)
            known = await self.records.known_bookings(link.id, calendar_id, bookings, since)
            comparison.compare_page(events, known, await self.records.link_states(links))
            if not page_token:
                return comparison

    async def _stranded(self, row: LinkRow, since: datetime) -> list[Drift]:
        return [
            Drift(
                "orphaned",
                s.booking_id,
                s.google_event_id,
                "stranded on a calendar the link moved away from",
                calendar_id=s.calendar_id,
            )
            for s in await self.records.stranded(row.link.id, since)
        ]

    # --- repairs ------------------------------------------------------------------------

    async def _repair_one(
        self,
        row: LinkRow,
        report: LinkReport,
        drift: Drift,
        comparison: CalendarDrift | None,
        progress: Progress | None,
        on_progress: OnProgress | None,
    ) -> None:
        """One repair, said in the report: repaired, or unrepaired and why."""
        try:
            if await self._repair(row, drift, comparison):
                report.repaired[drift.kind] += 1
                self.metrics.reconcile_repaired.labels(drift.kind).inc()
                log.info(
                    "reconcile_repaired",
                    link_id=row.link.id,
                    kind=drift.kind,
                    booking_id=drift.booking_id,
                    event_id=drift.event_id,
                    detail=drift.detail or None,
                )
        except Exception as exc:  # one event's trouble (a calendar still read-only...)
            report.unrepaired.append(
                f"{drift.kind} {drift.event_id or drift.booking_id}: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            )
            log.warning(
                "reconcile_repair_failed",
                link_id=row.link.id,
                kind=drift.kind,
                booking_id=drift.booking_id,
                cause=type(exc).__name__,
            )
        if progress is not None:
            progress.repairs_done += 1
            if on_progress is not None:
                on_progress(progress)

    async def _repair(self, row: LinkRow, drift: Drift, comparison: CalendarDrift | None) -> bool:
        booking = await self._sync_path_booking(drift, comparison)
        if booking is not None:
            # Through the sync path, from the latest state read under the claim: a missing
            # or edited event is put right, one the records hold but the booking no longer
            # wants is deleted, one they lost is taken back.
            adopt = drift.event_id if drift.detail == "not recorded" else None
            result = await self.engine.sync_link(
                booking, row, None, source="reconcile", force=True, latest=True, adopt=adopt
            )
            if result.outcome.value != "applied":  # said as unrepaired, never silently lost
                raise _NotApplied(
                    f"{result.outcome.value} ({result.reason}"
                    + (f": {result.error}" if result.error else "")
                    + ")"
                )
            return True
        assert drift.event_id is not None
        on = drift.calendar_id or str(row.link.calendar_id)
        removed = await self.engine.remove_extra_event(
            row,
            drift.link_id or row.link.id,
            drift.booking_id or f"?{drift.event_id}",
            on,
            drift.event_id,
        )
        if removed and drift.calendar_id is not None:
            await self.records.unstrand(drift.calendar_id, drift.event_id)
        return removed

    async def _sync_path_booking(
        self, drift: Drift, comparison: CalendarDrift | None
    ) -> BookingEvent | None:
        """The booking whose latest state repairs `drift` through the sync path; None when
        the event is an extra to delete (a duplicate, an orphan the records do not hold)."""
        if comparison is None:
            return None
        if drift.kind in ("missing", "changed"):
            booking = comparison.wanted(drift.booking_id)
            assert booking is not None
            return booking
        own = drift.link_id is None and drift.calendar_id is None
        if own and drift.event_id in comparison.held_by_records and drift.booking_id:
            return await self.records.latest_booking(drift.booking_id)
        return None

    # --- the schedule -------------------------------------------------------------------

    async def scheduled_turn(self, interval_s: float, member: str) -> None:
        """One look of the group's schedule: if this process holds the group's reconcile
        lock, an unfinished run whose process went away is resumed, else a run is started
        when one is due."""
        async with self.records.schedule_turn() as ours:
            if not ours:
                return  # another process of the group reconciles
            stale = await self.records.unfinished_run(self.config.stale_run_s)
            if stale is not None:
                log.info("reconcile_resumed", run_id=stale)
                await self.run(stale, keep_reports=False)
                return
            if not await self.records.schedule_due(interval_s):
                return
            run_id = await self.start("schedule", member, True, None)
            log.info("reconcile_started", run_id=run_id)
            try:
                await self.run(run_id, keep_reports=False)
            except asyncio.CancelledError:
                raise  # cut short: the run is resumed (unfinished), the schedule stays due
            except Exception:
                await self.records.schedule_next(interval_s)
                raise
            await self.records.schedule_next(interval_s)
            run = await self.records.run(run_id)
            assert run is not None
            log.info(
                "reconcile_finished",
                run_id=run_id,
                links=len(run.links_done),
                found=run.found,
                repaired=run.repaired,
            )


async def scheduled(
    reconciler: Reconciler, interval_s: float, member: str, check_every_s: float = 60.0
) -> None:
    """Until cancelled: every `interval_s`, one process of the group reconciles every active
    link with --execute (the one holding the advisory lock); an unfinished run whose process
    went away is resumed first."""
    while True:
        try:
            await reconciler.scheduled_turn(interval_s, member)
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.info("reconcile_not_scheduled", cause=type(exc).__name__)
        await asyncio.sleep(min(check_every_s, interval_s))


def result(run_id: int, reports: list[LinkReport], executed: bool) -> ReconcileResult:
    """What a run found and repaired, in all and link by link."""
    found: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    for r in reports:
        found.update(r.found())
        repaired.update(r.repaired)
    return ReconcileResult(
        run_id=run_id,
        executed=executed,
        found=dict(found),
        repaired=dict(repaired),
        links=[r.as_json() for r in reports],
    )
