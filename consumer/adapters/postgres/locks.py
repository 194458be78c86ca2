"""Advisory lock keys: the names under which processes of the group exclude each other.

A claim (sync_store) takes the (link, booking) pair's lock exclusively and the link's lock
shared; a disconnect (link_store) takes the link's lock exclusively to wait for claims in
flight; one reconcile runs at a time under its own key.
"""

from __future__ import annotations

import hashlib


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock (a collision only adds waiting)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def link_lock_key(link_id: str) -> int:
    return advisory_key("calsync.link", link_id)


def pair_lock_key(link_id: str, booking_id: str) -> int:
    return advisory_key("calsync.pair", link_id, booking_id)
