"""How long to wait before calling Google again: the sync engine and the link service share it."""

from __future__ import annotations

from collections.abc import Callable

from tenacity import RetryCallState, wait_random_exponential

from consumer.domain.errors import GoogleApiError


def google_backoff(initial: float, maximum: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with full jitter, never shorter than Google's Retry-After."""
    jittered = wait_random_exponential(multiplier=initial, max=maximum)

    def wait(state: RetryCallState) -> float:
        delay = float(jittered(state))
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, GoogleApiError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        return delay

    return wait
