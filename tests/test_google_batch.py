"""Google's batch endpoint: calls that wait go together in one request, each still
authenticated, counted and answered on its own."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

from consumer.google_calendar import GoogleApiError, GoogleCalendar
from tests.conftest import Env, booking_event, wait_until


def event_body() -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "summary": "Kayak Tour",
            "start": {"dateTime": "2026-04-15T09:00:00Z"},
            "end": {"dateTime": "2026-04-15T11:00:00Z"}}


async def test_calls_that_wait_go_together_in_batches_each_answered_on_its_own(
        env: Env) -> None:
    a, _ = env.account("a")
    b, _ = env.account("b")
    token_a, token_b = env.sandbox.issue_access_token(a)[0], env.sandbox.issue_access_token(b)[0]
    env.sandbox.add_fault(429, count=1, account=b, retry_after=7)
    since = env.sandbox.calls()["now"]
    google = GoogleCalendar(env.settings.model_copy(
        update={"google_concurrency": 1, "google_batch_size": 10}))
    try:
        calls = [google.insert_event(token_a, a, event_body()) for _ in range(12)]
        calls += [google.insert_event(token_b, b, event_body()) for _ in range(12)]
        calls.append(google.insert_event("not-a-token", a, event_body()))
        answers = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        google.close()
        env.sandbox.clear_faults()

    seen = env.sandbox.calls(since=since, detail=True)["calls"]
    sizes = Counter(c["batch"] for c in seen)
    assert None not in sizes, "calls waited, yet went out one by one"
    assert max(sizes.values()) <= 10
    # 25 calls in batches of 10, 10 and 5; google-api-python-client sends a 401 part again.
    assert sorted(sizes.values()) == [1, 5, 10, 10], sizes
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
    env.sandbox.configure(latency_s=0.1)
    try:
        async with env.consumer(google_concurrency=1):
            await wait_until(lambda: len(env.events(first)) == len(env.events(second)) == 30,
                             timeout_s=60, what="60 events")
            await wait_until(env.all_committed, what="offsets committed")
    finally:
        env.sandbox.configure(latency_s=0.0)
    inserts = [c for c in env.sandbox.calls(since=since, detail=True)["calls"]
               if c["op"] == "events.insert"]
    assert len(inserts) == 60 and all(c["status"] == 200 for c in inserts)
    # One request at a time, 100 ms each: most calls must have gone in batches.
    assert sum(c["batch"] is not None for c in inserts) >= 40
    assert len(env.results()) == 60
    assert not env.query("SELECT 1 FROM sync_results WHERE outcome <> 'applied'")
