"""The one error tree, and the one question asked of any failure: is it worth retrying?

Every error of this service derives from `CalsyncError` and says whether it is `retriable`.
Foreign exceptions (psycopg, aiokafka, OS) are classified by `consumer.adapters.classify`.

`retriable` means an infrastructure fault that will pass by itself (a connection lost, a
server restarting, a serialization failure or deadlock, a timeout): the work is retried
without limit and the offset waits for it. Anything else fails the same way for the same
input (data PostgreSQL refuses, an overflow, a recursion, a bug of ours): it is retried a
bounded number of times and then dead-lettered, so that it costs one message, not a partition.
"""

from __future__ import annotations


class CalsyncError(Exception):
    """Base of this service's own errors."""

    retriable: bool = False


def printable(text: str, limit: int | None = None) -> str:
    """Text that PostgreSQL, JSON and Kafka headers all take: NUL and lone surrogates shown
    escaped, and cut short at `limit` characters."""
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def describe(exc: BaseException, limit: int = 500) -> str:
    """`Class: message`, cut short: what a dead letter's `error` says of an exception."""
    return printable(f"{type(exc).__name__}: {exc}".strip(), limit)
