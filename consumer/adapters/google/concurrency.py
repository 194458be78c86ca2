"""How many requests to Google at once, and how many calls in each: measured, not configured.

Google's quota is meant to be the only ceiling. With `limit` requests out at once, each
taking R seconds per call, a process makes at most limit / R calls a second (Little's law),
so the limit it needs grows with Google's latency. Nothing about that latency is known in
advance (writes take hundreds of milliseconds, with a long tail), nor whether Google serves
a batch's calls side by side or one after another. So both are measured, and the limit and
the batch size follow:

- **Little's law, when the quota is known.** To use the quota, a process needs the quota's
  rate x the mean latency per call requests out, on average; x `HEADROOM` for the variance
  of both, that is the limit's floor, reached at once, so a slow Google (or a slow start)
  cannot hold the process under its quota. The group's quota gate
  (consumer/adapters/postgres/quota.py) paces the calls, so a floor computed from the whole
  project's rate only leaves some connections
  idle.
- **AIMD on latency and refusals, for the rest.** While calls wait for a free request slot
  and the latency per call is not inflated, the limit grows by one request per round trip
  (doubling every round trip until the first sign of congestion when no quota is known:
  slow start).
  Latency is judged per window of answers (its median, normalised per call) against the
  lowest window median of the last `BASELINE_S` seconds: beyond `TOLERANCE` x that, the
  process is queueing on something (its own CPU, the network, Google), and the limit shrinks
  by `LATENCY_BACKOFF`. A rate-limit refusal from Google shrinks the limit, and the
  Little's-law floor, by `REFUSAL_BACKOFF`, at most once per round trip; the floor then
  recovers over a minute (Google's quota window).
- **Batch size from how Google serves a batch.** Each answer of b calls taking L seconds,
  against the latency of single calls L1, says how serial the serving is:
  s = (L / L1 - 1) / (b - 1), about 1 when the calls run one after another and about 0
  when they run side by side. A batch may take `BATCH_LATENCY_FACTOR` x one call's time
  (or `BATCH_LATENCY_FLOOR_S`, if that is more: below it, the latency a batch adds is small
  next to the 2 s a message may take), so at most 1 + (factor - 1) / s calls go together: a
  few when Google serves them one after another (more requests at once instead), up to
  `max_batch` when it serves them side by side. Batching then costs no parallelism: calls
  only go together when every allowed request is out, and a request of b calls served one
  after another carries as many calls a second as b requests of one. What it saves is CPU
  (here a request costs about 0.45 ms of CPU, a call in a batch 0.07 ms) and connections. Until
  batches have been seen, the serving is taken to be serial (the conservative reading). A
  single call goes out now and then to keep L1 current.

Bounds: `max_requests` (connections: the memory and CPU bound, CALSYNC_GOOGLE_CONCURRENCY)
and `max_batch` (CALSYNC_GOOGLE_BATCH_SIZE).

Pure: no I/O, no event loop; time comes from `clock`. The Google adapter reports every
answer to `answered` and reads `limit` and `take_batch_size()`.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable

HEADROOM = 1.5  # Little's-law floor: in flight = rate x latency x this
INITIAL_LIMIT = 8
TOLERANCE = 2.0  # a window's latency beyond this x the baseline is congestion
LATENCY_BACKOFF = 0.9
REFUSAL_BACKOFF = 0.7
FLOOR_RECOVERY_S = 60.0  # Google counts quotas over a sliding minute
BASELINE_S = 30.0  # the baseline: the lowest window median over this long
WINDOW = 20  # answers per latency window
BATCH_LATENCY_FACTOR = 3.0  # a batch may take this many calls' time ...
BATCH_LATENCY_FLOOR_S = 0.5  # ... or this long, if more: a quarter of the 2 s p99 target
SINGLE_PROBE_EVERY = 16  # every so many requests, a single call: L1 kept current
SETTLED_AFTER = 10  # batches seen before their latency is judged
_EWMA = 0.1
_SERIAL_EWMA = 0.2


class ConcurrencyController:
    def __init__(
        self,
        max_requests: int,
        max_batch: int = 1,
        quota_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial_limit: int = INITIAL_LIMIT,
    ) -> None:
        """`quota_per_s`: the calls a second the quotas allow this process (None: unknown,
        no floor)."""
        self.max_requests = max(1, max_requests)
        self.max_batch = max(1, max_batch)
        self.quota_per_s = quota_per_s
        self._clock = clock
        self._limit = float(min(self.max_requests, max(1, initial_limit)))
        # Without a quota to compute the need from, the limit doubles every round trip until
        # the first sign of congestion; with one, the floor gives the need at once.
        self._slow_start = quota_per_s is None
        self._call_latency: float | None = None  # mean seconds per call (normalised)
        self._single_latency: float | None = None  # mean seconds of a one-call request
        self._round_trip: float | None = None  # mean seconds of a request, whatever its size
        self._serial = 1.0  # how serial Google serves a batch: 1 one after another, 0 side by side
        self._window: list[float] = []
        self._window_saturated = False
        self._medians: deque[tuple[float, float]] = deque()  # (time, window median)
        self._inflated = False
        self._floor_scale = 1.0
        self._floor_at = clock()
        self._last_cut = -math.inf
        self._since_single = 0
        self._batches_seen = 0
        self._singles = 0
        self._baseline_batch = self.batch_size  # the batch size the baseline was made with
        self.refusals = 0  # rate-limit refusals seen (for metrics)

    # --- what the adapter reads -----------------------------------------------------------

    @property
    def limit(self) -> int:
        """Requests to Google allowed in flight now."""
        return max(1, min(self.max_requests, int(self._limit)))

    @property
    def batch_size(self) -> int:
        """Most calls one request should carry: as many as fit in the batch latency budget
        (`BATCH_LATENCY_FACTOR` x a single call's latency, or `BATCH_LATENCY_FLOOR_S` if
        more), given how serially Google serves a batch."""
        if self.max_batch == 1:
            return 1
        factor = BATCH_LATENCY_FACTOR
        if self._single_latency:
            factor = max(factor, BATCH_LATENCY_FLOOR_S / self._single_latency)
        if self._serial * (self.max_batch - 1) <= factor - 1:
            return self.max_batch  # side by side enough for the largest batch
        return max(2, int(1 + (factor - 1) / self._serial))

    def take_batch_size(self) -> int:
        """The size of the request about to go: `batch_size`, or now and then a single call
        (the yardstick a batch's latency is compared with)."""
        if self.max_batch == 1:
            return 1
        self._since_single += 1
        if self._since_single >= SINGLE_PROBE_EVERY:
            self._since_single = 0
            return 1
        return self.batch_size

    @property
    def serial(self) -> float:
        """0: Google serves a batch's calls side by side; 1: one after another."""
        return self._serial

    @property
    def call_latency_s(self) -> float | None:
        return self._call_latency

    @property
    def floor(self) -> int:
        """Little's law: the requests needed in flight to use the quota, with headroom."""
        if self.quota_per_s is None or self._call_latency is None:
            return 1
        return math.ceil(self.quota_per_s * self._call_latency * HEADROOM * self._floor_scale)

    # --- what the adapter tells -------------------------------------------------------------

    def answered(
        self,
        calls: int,
        latency_s: float,
        refused: int = 0,
        waiting: bool = False,
        cold: bool = False,
    ) -> None:
        """One request came back: `calls` calls in `latency_s` seconds, `refused` of them
        refused for rate limits; `waiting`: calls were queued for want of a free slot;
        `cold`: it opened a connection first (its latency says nothing of Google's)."""
        now = self._clock()
        self._recover_floor(now)
        calls = max(1, calls)
        if cold:
            if refused:
                self.refusals += refused
                self._refused(now)
            return
        self._learn_serving(calls, latency_s)
        per_call = latency_s / (1 + self._serial * (calls - 1))
        self._call_latency = (
            per_call
            if self._call_latency is None
            else (self._call_latency + _EWMA * (per_call - self._call_latency))
        )
        self._round_trip = (
            latency_s
            if self._round_trip is None
            else (self._round_trip + _EWMA * (latency_s - self._round_trip))
        )
        if calls == 1 or self._batches_seen >= SETTLED_AFTER:
            self._window.append(per_call)  # a batch's only once the serving is known
        self._window_saturated |= waiting
        if refused:
            self.refusals += refused
            self._refused(now)
        elif waiting and not self._inflated:
            # Slow start doubles the limit each round trip, then one more request per trip.
            self._limit += 1.0 if self._slow_start else 1.0 / max(1.0, self._limit)
        if len(self._window) >= WINDOW:
            self._close_window(now)
        self._limit = min(float(self.max_requests), max(self._limit, float(self.floor), 1.0))

    def _learn_serving(self, calls: int, latency_s: float) -> None:
        if calls == 1:
            self._singles += 1  # a plain mean over the first few, then a moving one
            weight = max(_EWMA, 1 / self._singles)
            self._single_latency = (
                latency_s
                if self._single_latency is None
                else (self._single_latency + weight * (latency_s - self._single_latency))
            )
            return
        if self._single_latency is None or self._single_latency <= 0:
            return
        sample = (latency_s / self._single_latency - 1) / (calls - 1)
        sample = min(2.0, max(0.0, sample))
        self._serial += _SERIAL_EWMA * (sample - self._serial)
        self._batches_seen += 1
        size = self.batch_size
        if not 0.5 < size / self._baseline_batch < 2:
            # Another way of serving: per-call latencies normalised before are not comparable.
            self._medians.clear()
            self._baseline_batch = size

    def _cut_due(self, now: float) -> bool:
        """At most one cut a round trip: a cut shows in the answers a round trip later."""
        if now - self._last_cut < (self._round_trip or 0.0):
            return False
        self._last_cut = now
        return True

    def _refused(self, now: float) -> None:
        """Google refused for rate limits: fewer requests out, and a lower floor."""
        self._slow_start = False
        if not self._cut_due(now):
            return
        self._floor_scale = max(0.1, self._floor_scale * REFUSAL_BACKOFF)
        self._floor_at = now
        self._limit = max(1.0, self._limit * REFUSAL_BACKOFF)

    def _recover_floor(self, now: float) -> None:
        if self._floor_scale < 1.0:
            self._floor_scale = min(
                1.0, self._floor_scale + (now - self._floor_at) / FLOOR_RECOVERY_S
            )
        self._floor_at = now

    def _close_window(self, now: float) -> None:
        median = statistics.median(self._window)
        saturated = self._window_saturated
        self._window.clear()
        self._window_saturated = False
        while self._medians and self._medians[0][0] < now - BASELINE_S:
            self._medians.popleft()
        self._medians.append((now, median))
        baseline = min(m for _, m in self._medians)
        self._inflated = median > baseline * TOLERANCE
        if self._inflated:
            self._slow_start = False
            if saturated and self._cut_due(now):  # only a limit in use loads anything
                self._limit = max(1.0, self._limit * LATENCY_BACKOFF)

    def snapshot(self) -> dict[str, float | int | None]:
        return {
            "limit": self.limit,
            "batch_size": self.batch_size,
            "serial": self._serial,
            "call_latency_s": self._call_latency,
            "floor": self.floor,
            "slow_start": int(self._slow_start),
        }
