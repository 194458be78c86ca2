"""The concurrency controller (consumer/adapters/google/concurrency.py), on a fake clock and
a simulated Google: no servers, no threads, no sleeps. The limit of requests in flight rises with
Google's latency until the quota is the only ceiling, falls on refusals and on congestion,
and the batch size follows how Google serves a batch."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from consumer.adapters.batching import Batcher
from consumer.adapters.google.concurrency import (
    BATCH_LATENCY_FACTOR,
    BATCH_LATENCY_FLOOR_S,
    FLOOR_RECOVERY_S,
    HEADROOM,
    INITIAL_LIMIT,
    REFUSAL_BACKOFF,
    SINGLE_PROBE_EVERY,
    ConcurrencyController,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lognormal(median: float, p99: float, rng: random.Random) -> Callable[[], float]:
    sigma = math.log(p99 / median) / 2.3263
    return lambda: median * math.exp(sigma * rng.gauss(0, 1))


@dataclass
class SimulatedGoogle:
    """Serves a request of n calls one call after another (n draws added up) or side by
    side (the slowest draw), plus `congestion`: extra seconds per call when more than
    `capacity` calls are in flight (a CPU that is full)."""

    draw: Callable[[], float]
    mode: str = "sequential"
    capacity: int | None = None
    congestion: float = 0.0

    def latency(self, calls: int, in_flight_calls: int) -> float:
        draws = [self.draw() for _ in range(calls)]
        base = sum(draws) if self.mode == "sequential" else max(draws)
        if self.capacity is not None and in_flight_calls > self.capacity:
            base *= in_flight_calls / self.capacity  # queueing: a fixed throughput shared
        return base


@dataclass
class Run:
    done: int = 0
    limits: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


def simulate(
    controller: ConcurrencyController,
    clock: FakeClock,
    google: SimulatedGoogle,
    seconds: float,
    paced_per_s: float | None = None,
) -> Run:
    """Calls arrive evenly at `paced_per_s` (the quota gate's pace) or wait as a backlog;
    requests go out while fewer than `controller.limit` are in flight."""
    run = Run()
    waiting = 0 if paced_per_s else 10**9
    next_arrival = clock.now
    in_flight: list[tuple[float, int, int, float]] = []  # (ends at, seq, calls, latency)
    seq = 0
    end = clock.now + seconds
    while clock.now < end:
        while paced_per_s and next_arrival <= clock.now:
            waiting += 1
            next_arrival += 1 / paced_per_s
        while waiting and len(in_flight) < controller.limit:
            size = min(waiting, controller.take_batch_size())
            waiting -= size
            busy = sum(c for _, _, c, _ in in_flight) + size
            latency = google.latency(size, busy)
            seq += 1
            heapq.heappush(in_flight, (clock.now + latency, seq, size, latency))
            run.sizes.append(size)
        next_answer = in_flight[0][0] if in_flight else end
        clock.now = min(next_arrival if paced_per_s else end, next_answer, end)
        while in_flight and in_flight[0][0] <= clock.now:
            _, _, size, latency = heapq.heappop(in_flight)
            controller.answered(size, latency, waiting=waiting > 0)
            run.done += size
            run.limits.append(controller.limit)
    return run


@pytest.mark.parametrize("median", [0.05, 0.3, 1.0])
def test_the_limit_rises_with_latency_until_the_quota_is_the_only_ceiling(median: float) -> None:
    clock, rng = FakeClock(), random.Random(1)
    quota = 50.0  # calls a second: 3,000 a minute
    controller = ConcurrencyController(
        max_requests=256, max_batch=50, quota_per_s=quota, clock=clock
    )
    google = SimulatedGoogle(lognormal(median, median * 10 / 3, rng))
    simulate(controller, clock, google, 20, paced_per_s=quota)  # settle
    run = simulate(controller, clock, google, 60, paced_per_s=quota)
    # Little's law: the quota's rate x the latency per call, with headroom.
    mean = median * math.exp((math.log(10 / 3) / 2.3263) ** 2 / 2)
    assert controller.limit >= quota * mean * HEADROOM * 0.8, controller.snapshot()
    assert run.done >= 0.97 * quota * 60  # the quota is the ceiling, not the limit
    assert max(run.sizes) == 1  # paced calls never wait for a slot, so never batch


def test_limits_ordered_by_latency() -> None:
    limits = []
    for median in (0.05, 0.3, 1.0):
        clock = FakeClock()
        controller = ConcurrencyController(max_requests=256, quota_per_s=50, clock=clock)
        for _ in range(200):
            clock.now += 0.02
            controller.answered(1, median)
        limits.append(controller.limit)
    assert limits[0] < limits[1] < limits[2], limits
    # Never below where it started: an unused limit costs nothing.
    assert limits == [max(INITIAL_LIMIT, math.ceil(50 * m * HEADROOM)) for m in (0.05, 0.3, 1.0)]


def test_without_a_quota_the_limit_grows_while_calls_wait_until_latency_inflates() -> None:
    clock = FakeClock()
    controller = ConcurrencyController(max_requests=256, max_batch=1, clock=clock)
    assert controller.limit == INITIAL_LIMIT
    # Google (or our CPU) serves 40 calls at once at 50 ms; beyond that, latency grows.
    google = SimulatedGoogle(lambda: 0.05, capacity=40)
    run = simulate(controller, clock, google, 30)
    late = run.limits[len(run.limits) // 2 :]
    assert max(run.limits) >= 40  # grew from 8 to the knee
    assert 30 <= sum(late) / len(late) <= 80, (min(late), max(late))  # and stays near it
    assert run.done >= 0.85 * 40 / 0.05 * 30  # about the capacity, after the climb


def test_a_refusal_cuts_the_limit_and_the_floor_which_then_recover() -> None:
    clock = FakeClock()
    controller = ConcurrencyController(max_requests=256, quota_per_s=50, clock=clock)
    for _ in range(100):
        clock.now += 0.01
        controller.answered(1, 0.4)
    before = controller.limit
    assert before == math.ceil(50 * 0.4 * HEADROOM)
    clock.now += 0.01
    controller.answered(1, 0.4, refused=1)
    assert controller.limit == math.floor(before * REFUSAL_BACKOFF)
    cut_once = controller.limit
    for _ in range(5):  # refusals of the same round trip: one cut
        clock.now += 0.01
        controller.answered(1, 0.4, refused=1)
        assert controller.limit >= cut_once
    clock.now += 0.5  # the next round trip: refused again, cut again
    controller.answered(1, 0.4, refused=1)
    assert controller.limit < cut_once
    assert controller.refusals == 7
    lowest = controller.limit
    for _ in range(int(FLOOR_RECOVERY_S * 2)):  # no more refusals: back within the minute
        clock.now += 0.5
        controller.answered(1, 0.4)
    assert lowest < controller.limit == before


def test_a_backlog_on_a_rate_limited_google_settles_below_the_refusals() -> None:
    """Google allows 20 calls a second though we were told 50: refusals keep the limit near
    what Google takes instead of at the configured quota's floor."""
    clock = FakeClock()
    controller = ConcurrencyController(max_requests=256, max_batch=1, quota_per_s=50, clock=clock)
    allowed_per_s, latency = 20.0, 0.3
    in_flight: list[float] = []
    sent: list[float] = []
    limits = []
    while clock.now < 120:
        while len(in_flight) < controller.limit:
            heapq.heappush(in_flight, clock.now + latency)
        clock.now = heapq.heappop(in_flight)
        sent = [t for t in sent if t > clock.now - 1.0]
        refused = len(sent) >= allowed_per_s
        if not refused:
            sent.append(clock.now)
        controller.answered(1, latency, refused=int(refused), waiting=True)
        limits.append(controller.limit)
    tail = limits[len(limits) // 2 :]
    # 50/s would need ceil(50 x 0.3 x 1.5) = 23 in flight; Google takes 20 x 0.3 = 6.
    assert sum(tail) / len(tail) < 16, (min(tail), max(tail))


@pytest.mark.parametrize(
    ("mode", "latency"),
    [("sequential", 0.05), ("sequential", 0.3), ("parallel", 0.05), ("parallel", 0.3)],
)
def test_the_batch_size_follows_how_google_serves_a_batch(mode: str, latency: float) -> None:
    clock = FakeClock()
    controller = ConcurrencyController(max_requests=16, max_batch=50, clock=clock)
    # Before any batch is seen, Google is taken to serve calls one after another.
    assert controller.batch_size == int(BATCH_LATENCY_FACTOR)
    google = SimulatedGoogle(lambda: latency, mode=mode)
    run = simulate(controller, clock, google, 60)
    if mode == "sequential":
        # A batch takes as long as its calls added up: only as many as the latency budget
        # holds (3 calls' time, or half a second) ...
        assert controller.serial == pytest.approx(1.0, abs=0.1)
        budget = max(BATCH_LATENCY_FACTOR * latency, BATCH_LATENCY_FLOOR_S)
        assert 2 <= controller.batch_size <= budget / latency + 1
        assert controller.batch_size >= budget / latency - 1
        # ... and more requests at once instead: the limit grew to its bound.
        assert controller.limit == 16
    else:
        assert controller.serial < 0.05
        assert controller.batch_size == 50
    # A single call goes now and then, the yardstick for a batch's latency.
    late = run.sizes[len(run.sizes) // 2 :]
    assert 1 / (2 * SINGLE_PROBE_EVERY) <= late.count(1) / len(late) <= 2 / SINGLE_PROBE_EVERY


def test_batching_can_be_switched_off() -> None:
    controller = ConcurrencyController(max_requests=8, max_batch=1)
    for _ in range(40):
        controller.answered(1, 0.05, waiting=True)
    assert controller.batch_size == 1 and controller.take_batch_size() == 1


async def test_the_batcher_follows_bounds_that_change_while_it_runs() -> None:
    """The Google adapter's batcher reads its bounds from the controller at every flush:
    never more flushes out than the bound of the moment, never larger batches."""
    bounds = {"concurrency": 2, "size": 3}
    out, most_out, sizes = 0, 0, []
    release = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        nonlocal out, most_out
        out += 1
        most_out = max(most_out, out)
        sizes.append(len(items))
        assert out <= bounds["concurrency"] and len(items) <= bounds["size"]
        await release.wait()
        out -= 1
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(
        flush, max_size=lambda: bounds["size"], concurrency=lambda: bounds["concurrency"]
    )
    first = [asyncio.create_task(batcher.submit(n)) for n in range(20)]
    await asyncio.sleep(0.01)
    assert (out, batcher.flushing, batcher.waiting) == (2, 2, 14)
    bounds.update(concurrency=5, size=2)  # the controller raised the limit: more go out
    late = [asyncio.create_task(batcher.submit(n)) for n in range(20, 22)]
    await asyncio.sleep(0.01)
    assert out == 5 and sizes[2:] == [2, 2, 2]
    bounds.update(concurrency=1)  # and lowered it: flushes out finish, no new ones go
    release.set()
    assert await asyncio.gather(*first, *late) == [n * 2 for n in range(22)]
    assert most_out == 5 and sum(sizes) == 22 and max(sizes[5:]) <= 2
    await batcher.close()
