"""Foreign exceptions -> the error tree's one question: is this failure worth retrying?

Our own errors answer with `CalsyncError.retriable` (see `consumer.domain.errors`); this
module answers for psycopg's, aiokafka's and the operating system's.
"""

from __future__ import annotations

import asyncio

import psycopg
from aiokafka import errors as kafka_errors

from consumer.domain.errors import CalsyncError

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
_RETRIABLE_SQLSTATES = frozenset(
    {"55P03", "25P03", "25P04", "25006", "42P01", "42703", "42883", "42704"}
)
# aiokafka says of each of its errors whether it is worth retrying (the class attribute
# `retriable`, Kafka's own reading: a leader moving, a coordinator loading, a connection
# lost are; an authorization refused, an invalid topic, a record too large are not), and
# that answer is taken, with two kinds of exceptions:
# - never retried, whatever aiokafka says: a record too large for the broker, which will be
#   just as large next time;
# - always retried: the client's own timeouts and an unreachable cluster. aiokafka marks
#   KafkaTimeoutError and KafkaUnavailableError not retriable (they end a call), but what
#   they say is that the broker did not answer in time or could not be reached: an outage,
#   which passes, and which no message causes. (KafkaConnectionError, a connection lost, is
#   marked retriable by aiokafka already.)
_DETERMINISTIC_KAFKA = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
)
_TRANSIENT_KAFKA = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.KafkaConnectionError,
)
# The broker refuses this client the topic or the cluster (an ACL missing): it will go on
# refusing until an operator grants it, whatever is sent.
KAFKA_AUTHORIZATION = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
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
        if isinstance(exc, _DETERMINISTIC_KAFKA):
            return False
        if isinstance(exc, _TRANSIENT_KAFKA):
            return True
        return bool(getattr(exc, "retriable", False))
    # OSError covers ConnectionError; TimeoutError is an OSError too (asyncio's since 3.11).
    return isinstance(exc, (OSError, asyncio.TimeoutError))
