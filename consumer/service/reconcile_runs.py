"""A reconcile run as it goes: its progress as people read it (a terminal, `calsync status`),
and its tally as recorded in `reconcile_runs` (where a run cut short resumes). Pure."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer.domain.drift import LinkReport
from consumer.domain.records import ReconcileRunState

STRANDED_ELSEWHERE = "(stranded)"  # the report of events stranded by links not active


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


OnProgress = Callable[[Progress], None]


@dataclass
class RunTally:
    """What a run has done so far, as recorded: a run cut short resumes from it. Only the
    links with something to say (drift, an error) are kept in its report: a run over every
    link records each link's id, not each exact link's report."""

    done: list[str]
    report: list[dict[str, Any]]
    found: Counter[str]
    repaired: Counter[str]
    seen: int

    @classmethod
    def of(cls, run: ReconcileRunState) -> RunTally:
        return cls(
            list(run.links_done),
            list(run.report),
            Counter(run.found),
            Counter(run.repaired),
            run.events_seen,
        )

    def add(self, report: LinkReport) -> None:
        if report.link_id != STRANDED_ELSEWHERE:
            self.done.append(report.link_id)
        self.found.update(report.found())
        self.repaired.update(report.repaired)
        self.seen += report.events_seen
        if report.drift or report.error or report.unrepaired:
            self.report.append(report.as_json())
