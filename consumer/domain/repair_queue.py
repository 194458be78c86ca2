"""The repair loop's pure decisions: how many places an account may take in one process,
and when to look again for repairs due.

The loop (consumer.service.repairs) leases due repairs with one statement per poll
(consumer.adapters.postgres.repair_store): accounts in turn, a window of them per poll,
each account's oldest first. While a poll finds work, or the walk over the accounts has
not reached their end, it looks again at once; once a whole walk found nothing, it waits,
a little longer each time (doubling up to CALSYNC_REPAIR_POLL_S), so an idle group costs
the database next to nothing and work that comes due is found within that ceiling.
"""

from __future__ import annotations

import math

DEFAULT_PLACES_PER_ACCOUNT = 32  # when no per-account quota is set
FIRST_WAIT_S = 0.05  # the first wait after a walk found nothing


def places_per_account(quota_per_min: int | None, quota_max_wait_s: float) -> int:
    """Repairs of one account one process works at once: about what its quota allows while
    a message would wait for it (a repair waiting longer is deferred again, so it holds no
    place for nothing); at least 2. Without a quota, a fixed share."""
    if not quota_per_min:
        return DEFAULT_PLACES_PER_ACCOUNT
    return max(2, math.ceil(quota_per_min / 60 * quota_max_wait_s))


class PollPace:
    """When to poll again, from what each poll found."""

    def __init__(self, ceiling_s: float, first_s: float = FIRST_WAIT_S) -> None:
        self.ceiling_s = ceiling_s
        self.first_s = min(first_s, ceiling_s)
        self._wait_s = self.first_s
        self._found_in_walk = False

    def after(self, started: int, swept_to_end: bool) -> float:
        """Seconds to wait before the next poll (0: at once): `started`, the repairs this
        poll started; `swept_to_end`, whether its walk over the accounts reached their end.
        Positive only when a whole walk found nothing."""
        self._found_in_walk = self._found_in_walk or started > 0
        if started > 0 or not swept_to_end:
            if started > 0:
                self._wait_s = self.first_s
            return 0.0
        found, self._found_in_walk = self._found_in_walk, False
        if found:  # the walk found work: the next one starts at once
            self._wait_s = self.first_s
            return 0.0
        wait, self._wait_s = self._wait_s, min(self._wait_s * 2, self.ceiling_s)
        return wait
