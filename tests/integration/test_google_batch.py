"""Google's batch endpoint: calls that wait go together in one request, each still
authenticated, counted and answered on its own. The sandbox serves a batch's calls one after
another (the default) or side by side, draws each call's latency from a distribution, and
refuses beyond its quotas with Google's answers, a batch of n calls counting n."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httplib2
import pytest
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

from calsync_dev.sandbox import SandboxClient, SandboxHTTPServer, start_in_thread
from calsync_dev.sandbox.state import SandboxState
from consumer.adapters.metrics import Metrics
from consumer.bootstrap import google_calendar
from consumer.domain.errors import GoogleApiError
from tests.plugins.environment import Env, wait_until
from tests.plugins.events import booking_event


def event_body() -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "summary": "Kayak Tour",
        "start": {"dateTime": "2026-04-15T09:00:00Z"},
        "end": {"dateTime": "2026-04-15T11:00:00Z"},
    }


async def test_calls_that_wait_go_together_in_batches_each_answered_on_its_own(env: Env) -> None:
    a, _ = env.account("a")
    b, _ = env.account("b")
    token_a, token_b = env.sandbox.issue_access_token(a)[0], env.sandbox.issue_access_token(b)[0]
    env.sandbox.add_fault(429, count=1, account=b, retry_after=7)
    since = env.sandbox.calls()["now"]
    google = google_calendar(
        env.settings.model_copy(update={"google_concurrency": 1, "google_batch_size": 10}),
        Metrics(),
    )
    try:
        calls = [google.insert_event("not-a-token", a, event_body())]
        calls += [google.insert_event(token_a, a, event_body()) for _ in range(12)]
        calls += [google.insert_event(token_b, b, event_body()) for _ in range(12)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        google.close()
        env.sandbox.clear_faults()

    seen = env.sandbox.calls(since=since, detail=True)["calls"]
    sizes = Counter(c["batch"] for c in seen)
    # 25 calls, each sent once (a 401 is its call's own answer), all but a last odd one in
    # batches: how many in each depends on how the sandbox serves a batch (below).
    assert sum(sizes.values()) == 25, sizes
    assert sizes[None] <= 1, "calls waited, yet went out one by one"
    assert 1 < max(n for batch, n in sizes.items() if batch is not None) <= 10
    refused = [x for x in answers if isinstance(x, GoogleApiError)]
    assert len(refused) == 2, answers
    throttled = next(x for x in refused if x.rate_limited)
    assert throttled.status == 429 and throttled.retry_after == 7
    assert next(x for x in refused if not x.rate_limited).unauthorized
    created = [x for x in answers if isinstance(x, dict)]
    assert len(created) == 23
    assert len(env.events(a)) == 12 and len(env.events(b)) == 11
    assert {x["id"] for x in created} == {e["id"] for e in env.events(a) + env.events(b)}


async def test_the_consumer_batches_its_calls_under_load(env: Env) -> None:
    first, first_refresh = env.account("first")
    second, second_refresh = env.account("second")
    await env.link(first, first_refresh)
    await env.link(second, second_refresh)
    for n in range(30):
        await env.publish(booking_event(f"bk_{n}"))
    since = env.sandbox.calls()["now"]
    env.sandbox.configure(latency_s=0.1)  # twice the spacing of the accounts' quota slots
    try:
        async with env.consumer(google_concurrency=1):
            await wait_until(
                lambda: len(env.events(first)) == len(env.events(second)) == 30,
                timeout_s=60,
                what="60 events",
            )
            await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.configure(latency_s=0.0)
    inserts = [
        c
        for c in env.sandbox.calls(since=since, detail=True)["calls"]
        if c["op"] == "events.insert"
    ]
    assert len(inserts) == 60 and all(c["status"] == 200 for c in inserts)
    # One request at a time, 100 ms a call: most calls must have gone in batches.
    assert sum(c["batch"] is not None for c in inserts) >= 40
    assert len(env.results()) == 60
    assert not env.query("SELECT 1 FROM sync_results WHERE outcome <> 'applied'")


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
async def test_batches_grow_only_as_far_as_google_serves_them_side_by_side(
    env: Env, own_sandbox: tuple[SandboxHTTPServer, SandboxClient], mode: str
) -> None:
    server, client = own_sandbox
    client.configure(batch_mode=mode, latency_s=0.05)
    account, token = new_account(client, "bulk")
    google = google_calendar(
        env.settings.model_copy(
            update={
                "google_api_url": server.url,
                "google_ca_bundle": str(server.ca_file),
                "google_concurrency": 4,
                "quota_per_project_per_min": 0,
            }
        ),
        Metrics(),
    )
    try:
        for _ in range(3):  # rounds of a backlog: the first ones teach how batches are served
            await asyncio.gather(
                *(
                    google.insert_event(token, account, event_body())
                    for _ in range(100 if mode == "sequential" else 300)
                )
            )
    finally:
        google.close()
    calls = client.calls(detail=True)["calls"]
    assert all(c["status"] == 200 for c in calls)
    last_round = [c for c in calls[len(calls) * 2 // 3 :] if c["batch"] is not None]
    sizes = Counter(c["batch"] for c in last_round)
    if mode == "sequential":
        # Batches cost latency: at most what half a second holds (10 calls of 50 ms, plus
        # what a request itself takes), more requests at once instead.
        assert google.flow.serial > 0.6
        assert 1 < max(sizes.values()) <= 11
        for batch in sizes:
            served = [c for c in last_round if c["batch"] == batch]
            assert max(c["ended"] for c in served) - min(c["started"] for c in served) < 0.6
    else:  # side by side: batching costs nothing, batches grow to the bound
        assert google.flow.serial < 0.3
        assert max(sizes.values()) == 50


# --- the sandbox: batch modes, latency, quotas ------------------------------------------------


@pytest.fixture
def own_sandbox() -> Iterator[tuple[SandboxHTTPServer, SandboxClient]]:
    """A sandbox of the test's own: its batch mode, latency and quotas touch no other test."""
    server = start_in_thread()
    yield server, SandboxClient(server.url, server.ca_file)
    server.shutdown()


def send_batch(
    server: SandboxHTTPServer, tokens: list[tuple[str, str]]
) -> list[tuple[int, str | None]]:
    """One request to the batch endpoint: an insert per (account, token); per call, its
    status and (when refused) Google's reason, in order."""
    http = httplib2.Http(timeout=30, ca_certs=str(server.ca_file))
    service = build(
        "calendar",
        "v3",
        http=http,
        static_discovery=True,
        cache_discovery=False,
        client_options={"api_endpoint": server.url + "calendar/v3/"},
    )
    answers: dict[int, tuple[int, str | None]] = {}

    def answered(request_id: str, response: Any, exception: Exception | None) -> None:
        if isinstance(exception, HttpError):
            reason = json.loads(exception.content)["error"]["errors"][0]["reason"]
            answers[int(request_id)] = (int(exception.resp.status), reason)
        else:
            answers[int(request_id)] = (200, None)

    batch = BatchHttpRequest(callback=answered, batch_uri=server.url + "batch/calendar/v3")
    for n, (account, token) in enumerate(tokens):
        request = service.events().insert(calendarId=account, body=event_body())
        request.headers["authorization"] = f"Bearer {token}"
        batch.add(request, request_id=str(n))
    batch.execute(http=http)
    return [answers[n] for n in range(len(tokens))]


def new_account(client: SandboxClient, name: str) -> tuple[str, str]:
    email = f"{name}@example.com"
    client.add_account(email, f"1//refresh-{name}")
    return email, client.issue_access_token(email)[0]


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_the_sandbox_serves_a_batch_one_call_after_another_or_side_by_side(
    own_sandbox: tuple[SandboxHTTPServer, SandboxClient], mode: str
) -> None:
    server, client = own_sandbox
    assert client.config()["batch_mode"] == "sequential"  # the conservative reading
    client.configure(batch_mode=mode, latency_median_s=0.04, latency_p99_s=0.1, latency_seed=14)
    account, token = new_account(client, "batcher")
    assert send_batch(server, [(account, token)] * 6) == [(200, None)] * 6
    calls = sorted(
        (c for c in client.calls(detail=True)["calls"] if c["batch"] is not None),
        key=lambda c: c["started"],
    )
    assert len(calls) == 6 and len({c["batch"] for c in calls}) == 1
    durations = [c["ended"] - c["started"] for c in calls]
    assert len({round(d, 6) for d in durations}) == 6, "each call draws its own latency"
    span = calls[-1]["ended"] - calls[0]["started"]
    if mode == "sequential":  # each call starts once the one before it has ended
        for before, after in itertools.pairwise(calls):
            assert after["started"] >= before["ended"] - 1e-3, (before, after)
        assert span >= sum(durations) - 1e-3
    else:  # all started together; the batch lasts as long as its slowest call
        assert max(c["started"] for c in calls) < min(c["ended"] for c in calls)
        assert span == pytest.approx(max(durations), abs=0.02)
        assert span < sum(durations) / 2


def test_the_sandbox_refuses_a_batch_beyond_its_quotas_call_by_call(
    own_sandbox: tuple[SandboxHTTPServer, SandboxClient],
) -> None:
    server, client = own_sandbox
    busy, busy_token = new_account(client, "busy")
    other, other_token = new_account(client, "other")
    # The user's quota: 3 a minute, then 403 userRateLimitExceeded (never a 429).
    client.configure(quota_per_account_per_min=3, rate_limit_status=429)
    assert (
        send_batch(server, [(busy, busy_token)] * 5)
        == [(200, None)] * 3 + [(403, "userRateLimitExceeded")] * 2
    )
    # The project's: a batch of n calls counts n. 8 a minute, 3 already used by `busy`.
    client.configure(quota_per_account_per_min=None, quota_per_project_per_min=8)
    assert (
        send_batch(server, [(other, other_token)] * 7)
        == [(200, None)] * 5 + [(429, "rateLimitExceeded")] * 2
    )
    client.configure(rate_limit_status=403)  # Google answers the project's limit both ways
    assert send_batch(server, [(other, other_token)]) == [(403, "rateLimitExceeded")]
    report = client.quota()
    assert report["*project*"]["calls"] == 8 and report["*project*"]["refused"] == 3
    assert report[busy]["refused"] == 2 and report["*project*"]["max_per_minute"] == 8
    client.reset_quota()  # a fresh minute
    assert send_batch(server, [(other, other_token)] * 2) == [(200, None)] * 2


def test_sandbox_latency_is_drawn_from_a_distribution_with_its_median_and_tail() -> None:
    state = SandboxState()
    state.latency_s = 0.05  # fixed: the degenerate case
    assert {state.draw_latency() for _ in range(100)} == {0.05}
    state.set_latency(0.3, 1.0)
    state.seed(7)
    draws = sorted(state.draw_latency() for _ in range(20_000))
    assert statistics.median(draws) == pytest.approx(0.3, rel=0.05)
    assert draws[int(len(draws) * 0.99)] == pytest.approx(1.0, rel=0.1)
    assert min(draws) > 0
    with pytest.raises(ValueError):
        state.set_latency(0.3, 0.2)
    with pytest.raises(ValueError):
        state.set_batch_mode("whenever")
