"""The one error tree, and the one question asked of any failure: is it worth retrying?

`retriable` means an infrastructure fault that will pass by itself (a connection lost, a
server restarting, a serialization failure or deadlock, a timeout): the work is retried
without limit and the offset waits for it. Anything else fails the same way for the same
input (data PostgreSQL refuses, an overflow, a recursion, a bug of ours): it is retried a
bounded number of times and then dead-lettered, so that it costs one message, not a partition.
"""

from __future__ import annotations

import asyncio

import psycopg
from aiokafka import errors as kafka_errors


class CalsyncError(Exception):
    """Base of this service's own errors."""

    retriable: bool = False


# SQLSTATE classes of faults that pass by themselves: connection exception (08), transaction
# rollback (40: serialization failure, deadlock), insufficient resources (53), operator
# intervention (57: admin shutdown, cannot connect now, query canceled by a timeout),
# system error (58). And single states that say the database is not (yet) what this code
# expects, whatever the message: a lock timeout (55P03), a session ended by an idle or
# transaction timeout (25P03, 25P04), a read-only server after a failover (25006), a table,
# column, function or type missing while a migration is pending (42P01, 42703, 42883,
# 42704): those wait for the database, they are no message's fault. (The last ones mean
# that a query naming a table that is not there holds its partition until a migration
# comes, rather than dead-lettering every message meanwhile.)
_RETRIABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_RETRIABLE_SQLSTATES = frozenset({"55P03", "25P03", "25P04", "25006", "42P01", "42703",
                                  "42883", "42704"})
# Kafka errors that will repeat for the same record, whatever the broker's state.
_DETERMINISTIC_KAFKA = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
)


def is_retriable(exc: BaseException) -> bool:
    """True for an infrastructure fault; False for a failure that repeats for the same input."""
    if isinstance(exc, CalsyncError):
        return exc.retriable
    if isinstance(exc, psycopg.Error):
        if isinstance(exc, psycopg.InterfaceError):  # e.g. the connection is closed
            return True
        state = exc.sqlstate
        if state is None:  # no server answer: the connection failed or a pool timed out
            return isinstance(exc, psycopg.OperationalError)
        return state[:2] in _RETRIABLE_SQLSTATE_CLASSES or state in _RETRIABLE_SQLSTATES
    if isinstance(exc, kafka_errors.KafkaError):
        return not isinstance(exc, _DETERMINISTIC_KAFKA)
    # OSError covers ConnectionError; TimeoutError is an OSError too (asyncio's since 3.11).
    return isinstance(exc, (OSError, asyncio.TimeoutError))


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
