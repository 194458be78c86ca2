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
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg.types.json import Jsonb

from consumer.adapters.postgres.locks import advisory_key
from consumer.domain.drift import REPAIRED_KINDS, Drift, LinkReport, compare
from consumer.domain.models import BookingEvent, LinkRow, LinkState
from consumer.service.answers import ReconcileResult

if TYPE_CHECKING:
    from consumer.service.context import Services
    from consumer.service.sync import SyncEngine

log = structlog.get_logger(__name__)

_RECONCILE_LOCK = advisory_key("calsync.reconcile")
_REPAIR_CONCURRENCY = 8
_STALE_RUN_S = 120.0  # a run without news for this long lost its process: resume it


# --- one run ---------------------------------------------------------------------------------

_ACTIVE_LINKS = (
    "SELECT id FROM calendar_links WHERE state = 'active'"
    " AND (%(link)s::text IS NULL OR id = %(link)s) ORDER BY id"
)
_LINK_STATES = "SELECT id, state, calendar_id FROM calendar_links WHERE id = ANY(%s)"
_RECORDED = (
    "SELECT booking_id, google_event_id FROM link_bookings WHERE link_id = %s"
    " AND google_event_id IS NOT NULL AND calendar_id = %s"
)
_STRANDED = (
    "SELECT booking_id, calendar_id, google_event_id FROM stranded_events WHERE link_id = %s"
)
_UNSTRAND = "DELETE FROM stranded_events WHERE calendar_id = %s AND google_event_id = %s"
_NEW_RUN = (
    "INSERT INTO reconcile_runs (trigger, by_whom, executed, link_filter, links_total)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
_RUN = "SELECT * FROM reconcile_runs WHERE id = %s"
_PROGRESS = (
    "UPDATE reconcile_runs SET links_done = %s, events_seen = %s, found = %s, repaired = %s,"
    " report = %s, updated_at = now() WHERE id = %s"
)
_HEARTBEAT = "UPDATE reconcile_runs SET progress = %s, updated_at = now() WHERE id = %s"
# Stranded events of links not active any more, with an active link of the same account
# whose token can reach them.
_STRANDED_ELSEWHERE = (
    "SELECT s.link_id, s.booking_id, s.calendar_id, s.google_event_id,"
    " (SELECT a.id FROM calendar_links a WHERE a.account_email = cl.account_email"
    "  AND a.state = 'active' ORDER BY a.id LIMIT 1) AS helper_link_id"
    " FROM stranded_events s JOIN calendar_links cl ON cl.id = s.link_id"
    " WHERE cl.state <> 'active'"
)
_FINISH = (
    "UPDATE reconcile_runs SET finished_at = now(), updated_at = now(), error = %s WHERE id = %s"
)
_UNFINISHED = (
    "SELECT id FROM reconcile_runs WHERE finished_at IS NULL AND executed"
    " AND updated_at < now() - make_interval(secs => %s) ORDER BY id DESC LIMIT 1"
)
# The schedule: first due one interval after it is first seen, then one after each run.
_SCHEDULE_DUE = (
    "WITH seen AS (INSERT INTO schedules (name, next_at)"
    " VALUES ('reconcile', now() + make_interval(secs => %(interval)s))"
    " ON CONFLICT (name) DO NOTHING RETURNING next_at)"
    " SELECT coalesce((SELECT next_at FROM seen), (SELECT next_at FROM schedules"
    " WHERE name = 'reconcile')) <= now() AS due"
)
_SCHEDULE_NEXT = (
    "UPDATE schedules SET next_at = now() + make_interval(secs => %s) WHERE name = 'reconcile'"
)


class _NotApplied(Exception):
    """A repair went through the sync path and was not applied (its result says why)."""


@dataclass
class Progress:
    """What a terminal (or `calsync status`) shows of a run while it goes."""

    links_total: int
    links_done: int = 0
    repairs_total: int = 0
    repairs_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict[str, Any]:
        eta = self.eta_s()
        return {
            "links_done": self.links_done,
            "links_total": self.links_total,
            "repairs_done": self.repairs_done,
            "repairs_total": self.repairs_total,
            "eta_s": round(eta) if eta is not None else None,
        }

    def eta_s(self) -> float | None:
        done = self.links_done + self.repairs_done
        left = (self.links_total - self.links_done) + (self.repairs_total - self.repairs_done)
        if done == 0 or left <= 0:
            return None if left > 0 else 0.0
        return (time.monotonic() - self.started) / done * left


class Reconciler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.engine: SyncEngine = svc.engine
        self.repository = svc.repository
        self.metrics = svc.metrics

    # --- runs ---------------------------------------------------------------------------

    async def start(self, trigger: str, who: str, execute: bool, link_id: str | None) -> int:
        async with self.repository.pool.connection() as conn:
            links = await (await conn.execute(_ACTIVE_LINKS, {"link": link_id})).fetchall()
            row = await (
                await conn.execute(_NEW_RUN, (trigger, who, execute, link_id, len(links)))
            ).fetchone()
        assert row is not None
        return int(row["id"])

    async def run(
        self, run_id: int, on_progress: Callable[[Progress], None] | None = None
    ) -> list[LinkReport]:
        """Work a run to its end (resuming after the links it already did). A run cut short
        (its process stopped) stays unfinished, and the group's next look resumes it."""
        async with self.repository.pool.connection() as conn:
            run = await (await conn.execute(_RUN, (run_id,))).fetchone()
            assert run is not None
            links = [
                r["id"]
                for r in await (
                    await conn.execute(_ACTIVE_LINKS, {"link": run["link_filter"]})
                ).fetchall()
            ]
        done: list[str] = list(run["links_done"])
        reports: list[dict[str, Any]] = list(run["report"])
        found: Counter[str] = Counter(run["found"])
        repaired: Counter[str] = Counter(run["repaired"])
        seen = int(run["events_seen"])
        progress = Progress(links_total=len(set(links) | set(done)), links_done=len(done))
        out: list[LinkReport] = []
        heartbeat = asyncio.create_task(self._heartbeat(run_id, progress))
        error: str | None = None
        finished = False

        async def save() -> None:  # what is done so far: a run cut short resumes from it
            async with self.repository.pool.connection() as conn:
                await conn.execute(
                    _PROGRESS,
                    (
                        done,
                        seen,
                        Jsonb(dict(found)),
                        Jsonb(dict(repaired)),
                        Jsonb(reports),
                        run_id,
                    ),
                )

        try:
            for link_id in links:
                if link_id in done:
                    continue
                report = await self.link(link_id, run["executed"], progress, on_progress)
                if report is None:  # left `active` since the run began
                    progress.links_total -= 1
                    continue
                out.append(report)
                done.append(link_id)
                progress.links_done += 1
                found.update(report.found())
                repaired.update(report.repaired)
                seen += report.events_seen
                reports.append(report.as_json())
                await save()
                if on_progress is not None:
                    on_progress(progress)
            if run["executed"] and run["link_filter"] is None:
                stranded = await self.stranded_elsewhere()
                if stranded.found():
                    out.append(stranded)
                    found.update(stranded.found())
                    repaired.update(stranded.repaired)
                    reports.append(stranded.as_json())
                    await save()
            finished = True
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            finished = True
            raise
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            if finished:
                async with self.repository.pool.connection() as conn:
                    await conn.execute(_FINISH, (error, run_id))
        return out

    async def _heartbeat(self, run_id: int, progress: Progress, every_s: float = 5.0) -> None:
        """While a run goes: it is alive (not resumed by another process), and how far."""
        while True:
            await asyncio.sleep(every_s)
            try:
                async with self.repository.pool.connection() as conn:
                    await conn.execute(_HEARTBEAT, (Jsonb(progress.as_json()), run_id))
            except psycopg.Error as exc:
                log.info("reconcile_heartbeat_missed", cause=type(exc).__name__)

    async def stranded_elsewhere(self) -> LinkReport:
        """Events stranded by links that are not active any more (disconnected, or moved
        again), removed with the token of an active link of the same account."""
        report = LinkReport("(stranded)", "", "", "")
        async with self.repository.pool.connection() as conn:
            rows = await (await conn.execute(_STRANDED_ELSEWHERE)).fetchall()
        for r in rows:
            drift = Drift(
                "orphaned",
                r["booking_id"],
                r["google_event_id"],
                "stranded by a link not active any more",
                link_id=r["link_id"],
                calendar_id=r["calendar_id"],
            )
            report.drift.append(drift)
            helper = await self.repository.link(r["helper_link_id"])
            if helper is None:
                continue
            try:
                removed = await self.engine.remove_extra_event(
                    helper, r["link_id"], r["booking_id"], r["calendar_id"], r["google_event_id"]
                )
            except Exception as exc:
                report.unrepaired.append(f"orphaned {r['google_event_id']}: {type(exc).__name__}")
                continue
            if removed:
                report.repaired["orphaned"] += 1
                self.metrics.reconcile_repaired.labels("orphaned").inc()
                async with self.repository.pool.connection() as conn:
                    await conn.execute(_UNSTRAND, (r["calendar_id"], r["google_event_id"]))
        return report

    # --- one link -----------------------------------------------------------------------

    async def link(
        self,
        link_id: str,
        execute: bool,
        progress: Progress | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> LinkReport | None:
        row = await self.repository.link(link_id)
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
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        token = await self._token(row)
        events: list[dict[str, Any]] = []
        page: str | None = None
        while True:
            items, page = await self._google(
                row, self.svc.google.managed_events_page, token, calendar_id, page
            )
            events += items
            if not page:
                break
        bookings = await self.repository.bookings_of_activity(row.link.id, row.link.activity_id)
        latest = {event.booking.id: event for event, _ in bookings}
        named = {
            str(((e.get("extendedProperties") or {}).get("private") or {}).get("link_id"))
            for e in events
        } - {row.link.id}
        async with self.repository.pool.connection() as conn:
            others = {
                r["id"]: (r["state"], r["calendar_id"])
                for r in await (await conn.execute(_LINK_STATES, (list(named),))).fetchall()
            }
            recorded = {
                r["booking_id"]: r["google_event_id"]
                for r in await (
                    await conn.execute(_RECORDED, (row.link.id, calendar_id))
                ).fetchall()
            }
            stranded = await (await conn.execute(_STRANDED, (row.link.id,))).fetchall()
        report.drift = compare(
            row, latest, recorded, events, others, deployment=self.svc.deployment.id
        )
        report.events_seen = len(events) - sum(d.kind == "foreign" for d in report.drift)
        report.drift += [
            Drift(
                "orphaned",
                s["booking_id"],
                s["google_event_id"],
                "stranded on a calendar the link moved away from",
                calendar_id=s["calendar_id"],
            )
            for s in stranded
        ]
        owed = [d for d in report.drift if d.kind in REPAIRED_KINDS]  # never foreign ones
        if not execute or not owed:
            return
        if progress is not None:
            progress.repairs_total += len(owed)
        gate = asyncio.Semaphore(_REPAIR_CONCURRENCY)

        async def repair(drift: Drift) -> None:
            try:
                async with gate:
                    if await self._repair(row, drift, latest, recorded):
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

        await asyncio.gather(*(repair(d) for d in owed))

    async def _repair(
        self, row: LinkRow, drift: Drift, latest: dict[str, BookingEvent], recorded: dict[str, str]
    ) -> bool:
        calendar_id = row.link.calendar_id
        assert calendar_id is not None
        booking = latest.get(drift.booking_id or "")
        held_by_records = (
            drift.link_id is None
            and drift.calendar_id is None
            and drift.event_id is not None
            and recorded.get(drift.booking_id or "") == drift.event_id
        )
        if drift.kind in ("missing", "changed") or (held_by_records and booking is not None):
            # Through the sync path, from the latest state read under the claim: a missing
            # or edited event is put right, one the records hold but the booking no longer
            # wants is deleted, one they lost is taken back.
            assert booking is not None
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
        on = drift.calendar_id or calendar_id
        removed = await self.engine.remove_extra_event(
            row,
            drift.link_id or row.link.id,
            drift.booking_id or f"?{drift.event_id}",
            on,
            drift.event_id,
        )
        if removed and drift.calendar_id is not None:
            async with self.repository.pool.connection() as conn:
                await conn.execute(_UNSTRAND, (drift.calendar_id, drift.event_id))
        return removed

    async def _token(self, row: LinkRow) -> str:
        token: str = await self.svc.tokens.access_token(row.link.account_email, row.tokens)
        return token

    async def _google(self, row: LinkRow, call: Any, *args: Any) -> Any:
        """A listing, through the one call policy: the account's and the project's slots,
        transient failures retried, rate limits slowing the account down group-wide."""
        return await self.svc.calls.operator(row.link.account_email, lambda: call(*args))


# --- the schedule --------------------------------------------------------------------------


async def scheduled(
    svc: Services, interval_s: float, member: str, check_every_s: float = 60.0
) -> None:
    """Until cancelled: every `interval_s`, one process of the group reconciles every active
    link with --execute (the one holding the advisory lock); an unfinished run whose process
    went away is resumed first."""
    while True:
        try:
            await _maybe_run(svc, interval_s, member)
        except psycopg.Error as exc:
            log.info("reconcile_not_scheduled", cause=type(exc).__name__)
        await asyncio.sleep(min(check_every_s, interval_s))


async def _maybe_run(svc: Services, interval_s: float, member: str) -> None:
    # A connection of its own: the lock is held by its session for the whole run.
    async with svc.connect() as conn:
        got = await (
            await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_RECONCILE_LOCK,))
        ).fetchone()
        if not got or not got["ok"]:
            return  # another process of the group reconciles
        try:
            reconciler = Reconciler(svc)
            stale = await (await conn.execute(_UNFINISHED, (_STALE_RUN_S,))).fetchone()
            if stale is not None:
                log.info("reconcile_resumed", run_id=stale["id"])
                await reconciler.run(int(stale["id"]))
                return
            due = await (await conn.execute(_SCHEDULE_DUE, {"interval": interval_s})).fetchone()
            if not due or not due["due"]:
                return
            run_id = await reconciler.start("schedule", member, True, None)
            log.info("reconcile_started", run_id=run_id)
            try:
                reports = await reconciler.run(run_id)
            except asyncio.CancelledError:
                raise  # cut short: the run is resumed (_UNFINISHED), the schedule stays due
            except Exception:
                await conn.execute(_SCHEDULE_NEXT, (interval_s,))
                raise
            await conn.execute(_SCHEDULE_NEXT, (interval_s,))
            found = sum((r.found() for r in reports), Counter())
            log.info(
                "reconcile_finished",
                run_id=run_id,
                links=len(reports),
                found=dict(found),
                repaired=dict(sum((r.repaired for r in reports), Counter())),
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_RECONCILE_LOCK,))


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
