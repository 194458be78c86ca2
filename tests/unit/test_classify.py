"""Kafka's own word on retrying: `is_retriable` takes aiokafka's `retriable` for its errors,
except a record too large (never retried) and the client's timeouts and lost connections
(always: an outage passes). Table-driven over every error class aiokafka defines."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import errors as kafka_errors

from consumer.adapters.classify import is_retriable

NEVER = {"MessageSizeTooLargeError", "RecordTooLargeError"}
ALWAYS = {"KafkaTimeoutError", "KafkaUnavailableError", "KafkaConnectionError"}
KAFKA_ERRORS = sorted(
    (cls for cls in vars(kafka_errors).values() if inspect.isclass(cls)),
    key=lambda cls: cls.__name__,
)
KAFKA_ERRORS = [cls for cls in KAFKA_ERRORS if issubclass(cls, kafka_errors.KafkaError)]


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        # What the issue names: a missing ACL on the dead-letter topic is not a fault that
        # passes; retrying it would wedge the partition at its first bad message.
        (kafka_errors.TopicAuthorizationFailedError("calsync.dlq"), False),
        (kafka_errors.ClusterAuthorizationFailedError(), False),
        (kafka_errors.InvalidTopicError(), False),
        (kafka_errors.UnsupportedVersionError(), False),
        (kafka_errors.MessageSizeTooLargeError(), False),
        (kafka_errors.RecordTooLargeError(), False),
        # Infrastructure: the broker away or busy, a leader moving.
        (kafka_errors.KafkaTimeoutError(), True),
        (kafka_errors.KafkaConnectionError(), True),
        (kafka_errors.KafkaUnavailableError(), True),
        (kafka_errors.RequestTimedOutError(), True),
        (kafka_errors.NotLeaderForPartitionError(), True),
        (kafka_errors.LeaderNotAvailableError(), True),
        (kafka_errors.NodeNotReadyError(), True),
        (kafka_errors.NotEnoughReplicasError(), True),
        (kafka_errors.UnknownTopicOrPartitionError(), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_named_kafka_errors(error: Exception, retriable: bool) -> None:
    assert is_retriable(error) is retriable


@pytest.mark.parametrize("cls", KAFKA_ERRORS, ids=lambda cls: cls.__name__)
def test_every_aiokafka_error_follows_its_retriable_flag(cls: type[Exception]) -> None:
    expected = (
        False
        if cls.__name__ in NEVER
        else True
        if cls.__name__ in ALWAYS
        else bool(getattr(cls, "retriable", False))
    )
    assert is_retriable(cls()) is expected


def test_the_table_covers_aiokafka_and_some_say_no() -> None:
    """The sweep above is only worth something if aiokafka marks errors both ways."""
    flags = {bool(getattr(cls, "retriable", False)) for cls in KAFKA_ERRORS}
    assert flags == {True, False} and len(KAFKA_ERRORS) > 50
    assert NEVER | ALWAYS <= {cls.__name__ for cls in KAFKA_ERRORS}
